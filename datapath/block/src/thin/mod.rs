//! Thin-provisioned volumes carved from one [`BlockDevice`](crate::BlockDevice) (in
//! production a RAID0 pool), with crash-safe metadata.
//!
//! A [`ThinStore`] owns the device; each [`ThinVolume`] is itself a `BlockDevice`. Space is
//! handed out in clusters (default 1 MiB). A thin volume gets a cluster on the first write into
//! it; a thick volume reserves all its clusters at create (and still maps them lazily, so a
//! never-written region reads as zeroes on both kinds).
//!
//! # On-disk format (version 1)
//!
//! All integers are little-endian. `P` is the metadata page size, `max(4096, block size)`;
//! every metadata write is whole pages at page-aligned offsets.
//!
//! | Region              | Offset              | Size      | Contents                                   |
//! |---------------------|---------------------|-----------|--------------------------------------------|
//! | superblock slot 0   | 0                   | `P`       | superblock of even generations             |
//! | superblock slot 1   | `P`                 | `P`       | superblock of odd generations              |
//! | checkpoint area 0   | `2P`                | `C`       | checkpoint of even generations             |
//! | checkpoint area 1   | `2P + C`            | `C`       | checkpoint of odd generations              |
//! | journal             | `2P + 2C`           | `J`       | journal pages of the current epoch         |
//! | data                | `D` (cluster aligned)| `N * cluster` | clusters `0..N`                        |
//!
//! `C = roundup(64 + 128 * max_volumes + 8 * (device / cluster), P)` is enough for a checkpoint
//! of the fullest possible store; `J` defaults to device/512 clamped to 256 KiB..=64 MiB;
//! `D = roundup(2P + 2C + J, cluster)`. For a 1 TiB device with 1 MiB clusters that is about
//! 80 MiB of metadata (0.008%).
//!
//! **Superblock** (first 256 bytes of its slot, the rest zero; CRC32C over those 256 bytes
//! with the CRC field zeroed):
//!
//! | Bytes   | Field                                                                 |
//! |---------|-----------------------------------------------------------------------|
//! | 0..8    | magic `FERRTHIN`                                                      |
//! | 8..12   | format version (1)                                                    |
//! | 12..16  | CRC32C                                                                |
//! | 16..32  | store UUID (random at format)                                         |
//! | 32..40  | generation `g` (slot and checkpoint area = `g % 2`)                    |
//! | 40..56  | block size, page size, cluster size, max volumes (u32 each)           |
//! | 56..120 | device bytes, checkpoint offsets (two), checkpoint capacity, journal offset, journal bytes, data offset, cluster count (u64 each) |
//! | 120..128| length of the checkpoint in area `g % 2`                              |
//! | 128..132| CRC32C of that checkpoint                                             |
//! | 136..144| sequence number of the first journal page of epoch `g`                |
//!
//! **Checkpoint** (a full snapshot; its CRC lives in the superblock that names it): a 64-byte
//! header (magic `FTCKPT01`, store UUID, generation, last folded journal sequence, next volume
//! id, volume count, total length), then per volume a 128-byte entry (id u32, thin u8, name
//! length u8, uuid, size u64, mapped-cluster count u64, name padded to 64 bytes) followed by
//! its `(virtual cluster u32, physical cluster u32)` pairs.
//!
//! **Journal page** (`P` bytes; CRC32C over the whole page with the CRC field zeroed):
//!
//! | Bytes   | Field                                                   |
//! |---------|---------------------------------------------------------|
//! | 0..4    | magic `FTJP`                                            |
//! | 4..8    | CRC32C                                                  |
//! | 8..24   | store UUID                                              |
//! | 24..32  | epoch (= the generation of the superblock it belongs to)|
//! | 32..40  | sequence number (epoch start + page index)              |
//! | 40..44  | bytes of records                                        |
//! | 44..48  | record count                                            |
//! | 48..    | records: kind u8, payload length u8, payload            |
//!
//! | Record  | Payload                                                     |
//! |---------|-------------------------------------------------------------|
//! | Create  | id u32, uuid (16 bytes), size u64, thin u8, name length u8, name  |
//! | Destroy | id u32 (all its clusters become free)                       |
//! | Resize  | id u32, new size u64 (grow only)                            |
//! | Map     | id u32, virtual cluster u32, physical cluster u32           |
//! | Unmap   | id u32, first virtual cluster u32, count u32                |
//!
//! # How metadata is made durable
//!
//! Changes are applied in memory and queued as records. A *commit* (volume `flush`, every
//! `create_volume`/`destroy`/`resize`, FUA writes that allocated) takes every queued record
//! (group commit: concurrent committers share one commit) and
//!
//! 1. if the batch maps clusters, flushes the device (the data goes down before the mapping
//!    that points at it);
//! 2. writes the batch as new whole journal pages after the last ones (a page holding
//!    acknowledged records is never rewritten), then flushes the device.
//!
//! When the batch does not fit in the rest of the journal, a *checkpoint* is written instead:
//! the snapshot (taken atomically with the batch, so it is exactly "durable state + batch")
//! goes to the checkpoint area *not* named by the current superblock, the device is flushed,
//! then the superblock of generation `g + 1` is written to the other slot and flushed. Until
//! that last write is durable the old superblock, its checkpoint and its journal are untouched,
//! so a crash anywhere in a checkpoint loses nothing; after it, the old journal is dead (its
//! pages carry epoch `g`).
//!
//! Open picks the valid superblock with the highest generation, loads its checkpoint (CRC
//! checked), and replays journal pages in order while they carry the right magic, CRC, store
//! UUID, epoch and consecutive sequence number; the first page that does not is the end (a
//! torn or never-written tail is ignored). Every record is validated (no cluster mapped twice,
//! no out-of-range index). Open then writes a checkpoint, so the store continues in a fresh
//! epoch and no page written before the crash can be mistaken for a new one.
//!
//! Freed clusters (deallocate, destroy) become reusable only after the record that freed them
//! is durable (and after I/O that may still target them has drained), and they are deallocated
//! on the device first. A newly allocated cluster is always written whole (data plus zeroes),
//! so no data of a previous owner is ever visible.
//!
//! # Guarantees
//!
//! - When `create_volume`, `destroy` or `resize` returns, the change survives a crash.
//! - When [`BlockDevice::flush`](crate::BlockDevice::flush) on a volume returns, every write
//!   (and deallocate) that completed before it is durable, mappings included. Writes not
//!   covered by a flush read back after a crash as either their old or their new contents
//!   (per block), never as another volume's data.
//! - A crash at any point (torn journal tail, half-written checkpoint or superblock) recovers
//!   to a consistent state containing everything acknowledged as durable.
//! - A first write that covers part of a new cluster leaves the rest of it reading as zeroes.
//! - A full store fails writes that need a new cluster with `BlockError::NoSpace`, without
//!   touching other volumes or already-written data.
//!
//! # Limits
//!
//! - At most 2^32 - 2 clusters per store and per volume (4 PiB with 1 MiB clusters).
//! - Volumes per store: `max_volumes` chosen at format (default 1024, at most 2^20).
//! - Volume names: 1..=63 characters of `[A-Za-z0-9._-]`; sizes a non-zero multiple of the
//!   block size; volumes can grow but not shrink.
//! - Memory: 4 bytes per written virtual cluster (in 16 KiB leaves) plus one bit per physical
//!   cluster.
//! - Open rewrites a checkpoint (at most `C` bytes); a checkpoint is written under the metadata
//!   lock's snapshot, so its cost grows with the number of mapped clusters.
//! - One `ThinStore` per device at a time (no on-disk locking between processes).
//! - A failed metadata commit (device I/O error) poisons the store: further metadata changes
//!   and flushes fail with [`ThinError::Failed`] until it is reopened.

mod error;
mod format;
mod map;
mod store;
mod volume;

#[cfg(test)]
mod tests;

pub use error::{ThinError, format_uuid};
pub use store::{FormatOptions, ThinStats, ThinStore, VolumeInfo};
pub use volume::ThinVolume;
