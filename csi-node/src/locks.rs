//! Per-volume serialisation: one call at a time on a volume; a call that waits too long
//! gives up with ABORTED (the CO retries), as the CSI spec recommends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::error::NodeError;

#[derive(Default)]
pub struct VolumeLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl VolumeLocks {
    /// Waits up to `timeout` for the lock of `volume_id`.
    pub async fn lock(
        &self,
        volume_id: &str,
        timeout: Duration,
    ) -> Result<OwnedMutexGuard<()>, NodeError> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(volume_id.to_string()).or_default().clone()
        };
        match tokio::time::timeout(timeout, m.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => Err(NodeError::Aborted(format!(
                "another operation on volume {volume_id} is still in progress; retry later"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serialises_per_volume() {
        let l = VolumeLocks::default();
        let a = l.lock("v1", Duration::from_secs(1)).await.unwrap();
        // Another volume is independent.
        let _b = l.lock("v2", Duration::from_secs(1)).await.unwrap();
        // The same volume waits, then gives up.
        let e = l.lock("v1", Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted);
        drop(a);
        let _a2 = l.lock("v1", Duration::from_millis(50)).await.unwrap();
    }
}
