//! [`RegionLocks`]: keeps a rebuild's copy of a region and host writes to that region apart.
//!
//! Regions hash onto a fixed array of reader-writer locks (stripes). A host mutation holds the
//! read side of every stripe it touches for its whole fan-out (so many host writes run in
//! parallel); a rebuild holds the write side of one stripe while it reads the region from the
//! source and writes it to the target. A copy therefore happens entirely before or entirely
//! after any host write to that region on every replica: it can neither overwrite newer host
//! data with an older copy nor miss a host write that reached the source but not the target.
//!
//! Deadlock freedom: host writes take stripes in ascending order and never wait for anything
//! but I/O and the label lock while holding them; a rebuild holds at most one stripe and
//! waits only for replica I/O while holding it.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of lock stripes.
const STRIPES: u64 = 1024;

/// Striped per-region locks.
pub(crate) struct RegionLocks {
    stripes: Vec<RwLock<()>>,
}

impl RegionLocks {
    pub(crate) fn new() -> RegionLocks {
        RegionLocks {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Shared locks on every stripe of regions `[first, end)`, taken in ascending order.
    pub(crate) async fn shared(&self, first: u64, end: u64) -> Vec<RwLockReadGuard<'_, ()>> {
        let mut idx: Vec<u64> = if end - first >= STRIPES {
            (0..STRIPES).collect()
        } else {
            (first..end).map(|r| r % STRIPES).collect()
        };
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i as usize].read().await);
        }
        guards
    }

    /// Every stripe exclusively (waits for all in-flight host mutations and copies).
    pub(crate) async fn exclusive_all(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.stripes.len());
        for s in &self.stripes {
            guards.push(s.write().await);
        }
        guards
    }

    /// The exclusive lock of region `r`'s stripe.
    pub(crate) async fn exclusive(&self, r: u64) -> RwLockWriteGuard<'_, ()> {
        self.stripes[(r % STRIPES) as usize].write().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn exclusive_waits_for_shared_and_vice_versa() {
        let locks = RegionLocks::new();
        let g = locks.shared(3, 5).await;
        assert_eq!(g.len(), 2);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), locks.exclusive(4))
                .await
                .is_err()
        );
        drop(g);
        let x = locks.exclusive(4).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), locks.shared(0, 10))
                .await
                .is_err()
        );
        drop(x);
        assert_eq!(locks.shared(0, 5000).await.len(), STRIPES as usize);
    }
}
