//! Mirrors: the volume a host sees, over 1..N replicas. Fan-out writes, balanced reads,
//! generations (epochs), a persisted write-intent / dirty-region bitmap, split-brain
//! detection, and background rebuild. The full rules are in `docs/mirror.md`; this is the
//! summary.
//!
//! # Replicas
//! A replica is any [`BlockDevice`](crate::BlockDevice), opened through a
//! [`ReplicaConnector`] (a local thin volume via [`LocalReplica`], or a remote one over
//! NVMe/TCP wrapped by the node agent: the mirror knows nothing about NVMe/TCP). The mirror
//! calls `connect()` at assembly and again, with backoff (200 ms doubling to 5 s), for a
//! faulted replica until it comes back.
//!
//! # Label
//! The first 1 MiB of every replica is reserved; the volume is `min(replica sizes) - 1 MiB`.
//! The reserve holds two 512 KiB label slots written alternately (slot `seq % 2`), each a
//! CRC32C-protected header (mirror UUID, replica UUID, generation, volume geometry, clean
//! flag, member table with in-sync flags and each out-of-sync member's last in-sync
//! generation, bitmap base generation) followed by the dirty bitmap, one bit per region
//! (1 MiB by default, scaled up to keep the bitmap within the slot: 1 MiB regions cover
//! about 4 TiB). See `label.rs` (or docs/mirror.md) for the byte layout; [`inspect`] reads a label.
//!
//! # Rules
//! - **Writes** (and write-zeroes, deallocate) go to every healthy replica and to every
//!   replica being rebuilt (all writes, so a region copied earlier never goes stale), and
//!   complete when all of them completed. The host sees success while at least one in-sync
//!   replica completed the write.
//! - **Faults**: a replica whose I/O fails (or times out) is dropped from I/O; if another
//!   in-sync replica is alive, a new generation listing only the survivors as in sync — and
//!   the failed write's regions as dirty — is persisted to the survivors' labels *before* the
//!   failed write is acknowledged. The last in-sync replica is never dropped: the mirror goes
//!   offline (host I/O fails fast) until it returns.
//! - **Write intent**: while any member is out of sync, the first write to each region sets
//!   the region's bit in the persisted bitmap before the write is sent.
//! - **Liveness**: every `health_interval` (1 s) the replica devices are asked whether they
//!   know they failed (a remote replica's connection closed or missed keep-alives); such a
//!   replica is faulted as if an I/O had failed, so an idle volume reports a lost replica.
//! - **Reads** go round-robin over healthy in-sync replicas only; a failed read is retried on
//!   another and the failing replica is faulted. Stale and rebuilding replicas never serve
//!   reads and are never rebuild sources.
//! - **Flush and FUA** reach every write target.
//! - **Assembly** ([`Mirror::assemble`]): the healthy set is the in-sync set of the newest
//!   label that claims its own replica in sync. Labels at the newest generation that disagree
//!   on the in-sync set, or a replica claiming in-sync at a generation later than the one at
//!   which the newest label dropped it, are a split brain: refused. A blank replica gets a full
//!   rebuild; a stale one whose generation is covered by the bitmap's base a partial rebuild
//!   (dirty regions only), else full. In-sync replicas that are unreachable refuse assembly
//!   unless [`MirrorOptions::allow_missing_in_sync`]. After an unclean shutdown the other
//!   in-sync replicas are resynced against the primary (compare and copy differing regions).
//! - **Rebuild** copies regions (up to [`MirrorOptions::rebuild_parallelism`] at once, 4 by
//!   default) each under its region lock that host writes also take (shared), so a copy is
//!   never interleaved with a host write to that region; when done the
//!   target joins the in-sync set (new generation) and the bitmap is cleared once every member
//!   is in sync.
//! - **Grow** ([`Mirror::grow`]): with every replica healthy and in sync and every replica
//!   device already grown, the new size goes into every label first; only then may the host
//!   address the new blocks. A grow interrupted between label writes leaves labels of two
//!   sizes at one generation: assembly takes the larger (nothing beyond the smaller was ever
//!   written).
//! - **Close** ([`Mirror::close`]) waits for in-flight writes, flushes and marks labels clean.
//!   Dropping a mirror without closing it behaves like a crash.

mod assemble;
mod bitmap;
mod compare;
mod error;
mod grow;
mod health;
mod label;
mod locks;
#[allow(clippy::module_inception)]
mod mirror;
mod rebuild;
mod replica;
mod state;
mod status;

pub use compare::{CompareReport, compare, compare_replicas};
pub use error::MirrorError;
pub use label::{LabelSummary, MirrorId, RESERVE_BYTES, ReplicaId, format_id, inspect};
pub use mirror::{Mirror, MirrorOptions};
pub use replica::{LocalReplica, ReplicaConnector};
pub use status::{MirrorStatus, RebuildKind, RebuildProgress, ReplicaState, ReplicaStatus};
