//! Status reporting: [`MirrorStatus`] and its parts, and the live [`RebuildTracker`] a rebuild
//! task updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::label::{MirrorId, ReplicaId};

/// The state of one replica as the mirror sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// In sync; receives writes and serves reads.
    Healthy,
    /// Dropped after an I/O or connect error; a reconnect is scheduled.
    Faulted,
    /// Being copied to (it receives host writes but serves no reads until done).
    Rebuilding,
    /// Reachable but out of date and not being rebuilt (for example refused after a
    /// split-brain check); never serves reads.
    Stale,
    /// A connect attempt is in progress.
    Connecting,
}

/// What a rebuild copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildKind {
    /// Every region (a new, wiped or too-stale replica).
    Full,
    /// Only the regions set in the dirty bitmap.
    Partial,
    /// After an unclean shutdown: compare an in-sync replica with the primary region by region
    /// (the dirty regions if the bitmap was tracking, else all) and copy those that differ.
    Resync,
}

/// Progress of a running rebuild.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    /// What is being copied.
    pub kind: RebuildKind,
    /// Bytes processed so far (copied, or compared for a resync).
    pub bytes_done: u64,
    /// Bytes to process in total.
    pub bytes_total: u64,
    /// Bytes actually written to the target so far.
    pub bytes_copied: u64,
    /// Average processing rate since the rebuild started.
    pub bytes_per_sec: u64,
}

/// One replica in [`MirrorStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Replica UUID.
    pub id: ReplicaId,
    /// The connector's description.
    pub description: String,
    /// Current state.
    pub state: ReplicaState,
    /// Whether the labels list it as in sync.
    pub in_sync: bool,
    /// The running rebuild, if any.
    pub rebuild: Option<RebuildProgress>,
    /// The final progress of the last rebuild that ended (finished or aborted).
    pub last_rebuild: Option<RebuildProgress>,
    /// The last error seen on this replica, if any.
    pub last_error: Option<String>,
}

/// A snapshot of a mirror's state.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorStatus {
    /// Mirror UUID.
    pub mirror_id: MirrorId,
    /// Current generation (epoch).
    pub generation: u64,
    /// Volume size in bytes.
    pub size: u64,
    /// Volume block size.
    pub block_size: u32,
    /// Dirty-bitmap region size in bytes.
    pub region_size: u64,
    /// Regions currently set in the dirty bitmap.
    pub dirty_regions: u64,
    /// `Some(base)` while the bitmap tracks writes since generation `base`.
    pub bitmap_base: Option<u64>,
    /// Every member replica.
    pub replicas: Vec<ReplicaStatus>,
    /// Bytes written to rebuild targets by finished and running rebuilds.
    pub rebuilt_bytes_total: u64,
    /// Rebuilds that finished (the target joined or was verified).
    pub rebuilds_completed: u64,
}

impl MirrorStatus {
    /// Number of healthy replicas.
    pub fn healthy(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Healthy)
            .count()
    }

    /// The status of replica `id`.
    pub fn replica(&self, id: &ReplicaId) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|r| &r.id == id)
    }
}

/// Live counters of a running rebuild.
#[derive(Debug)]
pub(crate) struct RebuildTracker {
    pub kind: RebuildKind,
    pub started: Instant,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub bytes_copied: AtomicU64,
}

impl RebuildTracker {
    pub(crate) fn new(kind: RebuildKind) -> RebuildTracker {
        RebuildTracker {
            kind,
            started: Instant::now(),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
        }
    }

    pub(crate) fn progress(&self) -> RebuildProgress {
        let done = self.bytes_done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        RebuildProgress {
            kind: self.kind,
            bytes_done: done,
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            bytes_per_sec: if secs > 0.0 {
                (done as f64 / secs) as u64
            } else {
                0
            },
        }
    }
}
