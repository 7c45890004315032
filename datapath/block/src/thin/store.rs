//! [`ThinStore`]: volume management, cluster allocation, and the metadata commit machinery
//! (group-committed journal, checkpoints, recovery). See the module documentation of
//! [`crate::thin`] for the on-disk format and the guarantees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{debug, error, info, warn};

use super::format::{
    self, CheckpointWriter, Epoch, Image, Layout, MAX_CLUSTERS, MAX_NAME, Record, SbSlot,
    Superblock, VolumeEntryRef, vclusters,
};
use super::map::{ClusterBitmap, ClusterMap};
use super::volume::{ThinVolume, VolumeState};
use super::{ThinError, format_uuid};
use crate::BlockDevice;

/// Largest single metadata read or write, so huge checkpoints do not need huge buffers.
const MAX_META_IO: u64 = 8 << 20;
/// Queued records that make the allocating writer commit them (bounds memory, and the work
/// lost to a crash, for workloads that never flush).
const AUTO_COMMIT_RECORDS: usize = 4096;

/// Options for [`ThinStore::format_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatOptions {
    /// Allocation unit in bytes: a power of two, at least `max(4096, block size)`, at most
    /// 1 GiB. Default 1 MiB.
    pub cluster_size: u32,
    /// Overwrite an existing Ferrite thin store (its volumes are lost).
    pub force: bool,
    /// Metadata journal size in bytes (rounded up to whole metadata pages). Default: device
    /// size / 512, clamped to 256 KiB..=64 MiB.
    pub journal_bytes: Option<u64>,
    /// Maximum number of volumes (sizes the checkpoint areas). Default 1024.
    pub max_volumes: Option<u32>,
}

impl Default for FormatOptions {
    fn default() -> FormatOptions {
        FormatOptions {
            cluster_size: ThinStore::DEFAULT_CLUSTER_SIZE,
            force: false,
            journal_bytes: None,
            max_volumes: None,
        }
    }
}

/// A volume as listed by [`ThinStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Identity of the volume.
    pub uuid: [u8; 16],
    /// Human-readable name (1..=63 of `[A-Za-z0-9._-]`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Thin (allocate on write) or thick (all clusters reserved at create).
    pub thin: bool,
    /// Bytes of clusters currently mapped to the volume.
    pub allocated_bytes: u64,
}

/// Counters and state of the metadata machinery, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinStats {
    /// Current superblock generation (incremented by every checkpoint).
    pub generation: u64,
    /// Checkpoints written since open (including the one written by open/format).
    pub checkpoints: u64,
    /// Journal commits (batches written to the journal) since open.
    pub journal_commits: u64,
    /// Journal pages written since open.
    pub journal_pages_written: u64,
    /// Pages used in the current journal epoch.
    pub journal_pages_used: u64,
    /// Pages in the journal.
    pub journal_pages: u64,
}

/// A volume's bookkeeping entry in the store (guarded by the metadata lock).
struct VolEntry {
    state: Arc<VolumeState>,
    /// Thick volumes: clusters reserved but not yet allocated.
    reserved_left: u64,
}

/// Mutable metadata, guarded by one short-held mutex (never held across `.await`).
struct Meta {
    vols: HashMap<[u8; 16], VolEntry>,
    next_vol_id: u32,
    /// Physical clusters in use: mapped, being filled by a first write, or freed but not yet
    /// durably so.
    bitmap: ClusterBitmap,
    /// Clusters whose unmap/destroy record is pending; reusable once it is durable.
    pending_free: Vec<u32>,
    /// Clusters taken by a running commit, released when it is durable.
    in_commit_free: u64,
    /// Clusters reserved by thick volumes and not yet allocated.
    reserved: u64,
    /// Records not yet handed to a commit.
    pending: Vec<Record>,
    /// Whether `pending` holds a `Map` record (so data must be flushed before the journal).
    pending_has_map: bool,
    /// Commit tickets issued.
    ticket: u64,
}

impl Meta {
    /// Clusters that are free or will be once pending frees commit.
    fn effective_free(&self) -> u64 {
        self.bitmap.len() - self.bitmap.used()
            + self.pending_free.len() as u64
            + self.in_commit_free
    }

    /// Clusters available to new thin allocations and reservations.
    fn available(&self) -> u64 {
        self.effective_free().saturating_sub(self.reserved)
    }
}

/// State owned by whoever commits (guarded by an async mutex held across the commit's I/O).
struct CommitState {
    /// The durable superblock.
    sb: Superblock,
    /// Pages used in the current journal epoch.
    head: u64,
}

/// What one commit writes.
enum Work {
    /// Nothing to journal: just flush the device.
    Flush,
    /// Append these pages to the journal.
    Journal { records: Vec<Record>, has_map: bool },
    /// Write this checkpoint and switch the superblock to it.
    Checkpoint { bytes: Vec<u8> },
}

#[derive(Default)]
struct Counters {
    generation: AtomicU64,
    checkpoints: AtomicU64,
    journal_commits: AtomicU64,
    journal_pages: AtomicU64,
    journal_head: AtomicU64,
}

/// Thin-provisioned volumes carved out of one block device, with crash-safe metadata.
///
/// Create one with [`ThinStore::format`] (new device) or [`ThinStore::open`] (existing store).
/// Only one `ThinStore` may have a device open at a time.
pub struct ThinStore {
    dev: Arc<dyn BlockDevice>,
    layout: Layout,
    store_uuid: [u8; 16],
    meta: Mutex<Meta>,
    commit: tokio::sync::Mutex<CommitState>,
    /// Highest ticket whose commit is durable.
    durable_ticket: AtomicU64,
    /// Set when a commit failed; see [`ThinError::Failed`].
    failed: Mutex<Option<String>>,
    failed_flag: AtomicBool,
    counters: Counters,
}

impl std::fmt::Debug for ThinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinStore")
            .field("device", &self.dev.describe())
            .field("store_uuid", &format_uuid(&self.store_uuid))
            .field("cluster_size", &self.layout.cluster_size)
            .field("nclusters", &self.layout.nclusters)
            .finish_non_exhaustive()
    }
}

/// Checks a volume name: 1..=63 characters of `[A-Za-z0-9._-]`.
fn validate_name(name: &str) -> Result<(), ThinError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ThinError::InvalidArgument(format!(
            "volume name {name:?} must be 1 to {MAX_NAME} characters of [A-Za-z0-9._-]"
        )))
    }
}

/// A random 128-bit identifier, from the standard library's randomly keyed hasher (seeded from
/// the OS), mixed with the time and process id. No blocking I/O.
fn random_uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Reads `len` bytes at byte offset `off` (both multiples of the block size).
async fn read_bytes(dev: &dyn BlockDevice, off: u64, len: u64) -> Result<Vec<u8>, ThinError> {
    let bs = u64::from(dev.block_size());
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MAX_META_IO);
        // n <= 8 MiB, so the block count fits a u32.
        let buf = dev.read((off + pos) / bs, (n / bs) as u32).await?;
        out.extend_from_slice(&buf);
        pos += n;
    }
    Ok(out)
}

/// Writes `data` (a multiple of the block size) at byte offset `off`.
async fn write_bytes(dev: &dyn BlockDevice, off: u64, data: &[u8]) -> Result<(), ThinError> {
    let bs = u64::from(dev.block_size());
    for (i, chunk) in data.chunks(MAX_META_IO as usize).enumerate() {
        let at = off + i as u64 * MAX_META_IO;
        dev.write(at / bs, crate::IoBuf::from_slice(chunk), false)
            .await?;
    }
    Ok(())
}

impl ThinStore {
    /// Default cluster size: 1 MiB.
    pub const DEFAULT_CLUSTER_SIZE: u32 = 1 << 20;

    /// Formats `dev` as an empty thin store with clusters of `cluster_size` bytes and default
    /// options. Refuses a device that already holds a Ferrite thin store
    /// ([`ThinError::AlreadyFormatted`]); use [`ThinStore::format_with`] with `force` to
    /// overwrite one.
    pub async fn format(
        dev: Arc<dyn BlockDevice>,
        cluster_size: u32,
    ) -> Result<Arc<ThinStore>, ThinError> {
        let opts = FormatOptions {
            cluster_size,
            ..FormatOptions::default()
        };
        Self::format_with(dev, &opts).await
    }

    /// Formats `dev` as an empty thin store.
    pub async fn format_with(
        dev: Arc<dyn BlockDevice>,
        opts: &FormatOptions,
    ) -> Result<Arc<ThinStore>, ThinError> {
        let layout = Layout::compute(
            dev.size_bytes(),
            dev.block_size(),
            opts.cluster_size,
            opts.journal_bytes,
            opts.max_volumes,
        )?;
        let page = u64::from(layout.page_size);
        let slots = read_bytes(dev.as_ref(), 0, 2 * page).await?;
        let existing = slots
            .chunks(page as usize)
            .any(|s| !matches!(Superblock::decode(s), SbSlot::Empty));
        if existing && !opts.force {
            return Err(ThinError::AlreadyFormatted {
                device: dev.describe(),
            });
        }
        // Wipe both superblock slots first: until the new superblock is durable the device
        // holds no store at all (never a mix of old and new).
        write_bytes(dev.as_ref(), 0, &vec![0u8; 2 * page as usize]).await?;
        dev.flush().await?;
        // Release the data region on thin-provisioned backing devices. Best effort: clusters
        // are always zero-filled on first use, so stale data is never exposed anyway.
        let bs = u64::from(layout.block_size);
        let data_blocks = layout.nclusters * u64::from(layout.cluster_size) / bs;
        if let Err(e) = dev.deallocate(layout.data_off / bs, data_blocks).await {
            warn!(device = %dev.describe(), error = %e, "could not deallocate the data region");
        }
        let store_uuid = random_uuid();
        let sb = Superblock {
            store_uuid,
            generation: 0,
            layout: layout.clone(),
            ckpt_len: 0,
            ckpt_crc: 0,
            journal_start_seq: 1,
        };
        let store = Self::build(dev, sb, Image::empty(&layout), 0)?;
        store.checkpoint().await?;
        info!(
            device = %store.dev.describe(),
            store = %format_uuid(&store_uuid),
            cluster_size = layout.cluster_size,
            clusters = layout.nclusters,
            metadata_bytes = layout.data_off,
            journal_bytes = layout.journal_bytes,
            "formatted thin store"
        );
        Ok(store)
    }

    /// Whether `dev` holds a Ferrite thin store (a superblock magic in either slot).
    pub async fn is_formatted(dev: &dyn BlockDevice) -> Result<bool, ThinError> {
        let page = u64::from(format::MIN_PAGE.max(dev.block_size()));
        if dev.size_bytes() < 2 * page {
            return Ok(false);
        }
        let slots = read_bytes(dev, 0, 2 * page).await?;
        Ok(slots
            .chunks(page as usize)
            .any(|s| !matches!(Superblock::decode(s), SbSlot::Empty)))
    }

    /// Opens the thin store on `dev`: loads the newest valid superblock and its checkpoint,
    /// replays the journal up to its first invalid page (a torn tail is ignored), then writes
    /// a fresh checkpoint so the store continues in a new journal epoch.
    pub async fn open(dev: Arc<dyn BlockDevice>) -> Result<Arc<ThinStore>, ThinError> {
        let page = u64::from(format::MIN_PAGE.max(dev.block_size()));
        if dev.size_bytes() < 2 * page {
            return Err(ThinError::NotFormatted {
                device: dev.describe(),
            });
        }
        let slots = read_bytes(dev.as_ref(), 0, 2 * page).await?;
        let mut best: Option<Superblock> = None;
        let mut invalid = Vec::new();
        for (i, slot) in slots.chunks(page as usize).enumerate() {
            match Superblock::decode(slot) {
                SbSlot::Empty => {}
                SbSlot::Invalid(why) => invalid.push(format!("slot {i}: {why}")),
                SbSlot::Valid(sb) if sb.generation % 2 != i as u64 => invalid.push(format!(
                    "slot {i}: generation {} belongs in the other slot",
                    sb.generation
                )),
                SbSlot::Valid(sb) => {
                    if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                        best = Some(sb);
                    }
                }
            }
        }
        let Some(sb) = best else {
            if invalid.is_empty() {
                return Err(ThinError::NotFormatted {
                    device: dev.describe(),
                });
            }
            return Err(ThinError::Corrupt(format!(
                "no valid superblock ({})",
                invalid.join("; ")
            )));
        };
        if !invalid.is_empty() {
            // Normal after a crash during a superblock write: the other slot is the fallback.
            debug!(problems = %invalid.join("; "), "ignoring an invalid superblock slot");
        }
        let layout = sb.layout.clone();
        if layout.block_size != dev.block_size() {
            return Err(ThinError::Incompatible(format!(
                "store formatted with {}-byte blocks, device has {}-byte blocks",
                layout.block_size,
                dev.block_size()
            )));
        }
        if layout.device_bytes > dev.size_bytes() {
            return Err(ThinError::Incompatible(format!(
                "store formatted for {} bytes, device has only {}",
                layout.device_bytes,
                dev.size_bytes()
            )));
        }
        // The checkpoint.
        let area = (sb.generation % 2) as usize;
        let bs = u64::from(layout.block_size);
        let mut ckpt = read_bytes(
            dev.as_ref(),
            layout.ckpt_off[area],
            sb.ckpt_len.div_ceil(bs) * bs,
        )
        .await?;
        // ckpt_len <= ckpt_cap was validated and the buffer holds at least that much.
        ckpt.truncate(sb.ckpt_len as usize);
        if crc32c::crc32c(&ckpt) != sb.ckpt_crc {
            return Err(ThinError::Corrupt(format!(
                "checkpoint of generation {} fails its checksum",
                sb.generation
            )));
        }
        let mut image = Image::decode_checkpoint(&ckpt, &layout, &sb.store_uuid, sb.generation)
            .map_err(ThinError::Corrupt)?;
        drop(ckpt);
        // The journal.
        let epoch = Epoch {
            store_uuid: sb.store_uuid,
            generation: sb.generation,
        };
        let pages = layout.journal_pages();
        let per_read = (MAX_META_IO / page).max(1);
        let mut replayed = 0u64;
        let mut records = 0u64;
        'replay: while replayed < pages {
            let n = per_read.min(pages - replayed);
            let chunk =
                read_bytes(dev.as_ref(), layout.journal_off + replayed * page, n * page).await?;
            for pg in chunk.chunks(page as usize) {
                let seq = sb.journal_start_seq + replayed;
                match format::decode_page(pg, epoch, seq).map_err(ThinError::Corrupt)? {
                    None => break 'replay,
                    Some(recs) => {
                        for rec in recs {
                            image.apply(rec).map_err(|e| {
                                ThinError::Corrupt(format!("journal page {seq}: {e}"))
                            })?;
                            records += 1;
                        }
                        replayed += 1;
                    }
                }
            }
        }
        info!(
            device = %dev.describe(),
            store = %format_uuid(&sb.store_uuid),
            generation = sb.generation,
            journal_pages = replayed,
            records,
            volumes = image.volumes.len(),
            "opened thin store"
        );
        let store = Self::build(dev, sb, image, replayed)?;
        // Start a new epoch: the replayed state becomes a checkpoint, and no page left over
        // from before the crash can ever be mistaken for a page of the new epoch.
        store.checkpoint().await?;
        Ok(store)
    }

    /// Builds the in-memory store from a metadata image.
    fn build(
        dev: Arc<dyn BlockDevice>,
        sb: Superblock,
        image: Image,
        head: u64,
    ) -> Result<Arc<ThinStore>, ThinError> {
        let layout = sb.layout.clone();
        let mut vols = HashMap::new();
        let mut reserved = 0u64;
        for (id, v) in image.volumes {
            let reserved_left = if v.thin {
                0
            } else {
                vclusters(v.size, layout.cluster_size) - v.map.mapped()
            };
            reserved += reserved_left;
            let state = Arc::new(VolumeState::new(id, v.uuid, v.name, v.thin, v.size, v.map));
            vols.insert(
                v.uuid,
                VolEntry {
                    state,
                    reserved_left,
                },
            );
        }
        let bitmap = image.used;
        if bitmap.used() + reserved > bitmap.len() {
            warn!(
                used = bitmap.used(),
                reserved,
                clusters = bitmap.len(),
                "thick reservations exceed the free clusters"
            );
        }
        let counters = Counters::default();
        counters.generation.store(sb.generation, Ordering::Relaxed);
        counters.journal_head.store(head, Ordering::Relaxed);
        Ok(Arc::new(ThinStore {
            dev,
            store_uuid: sb.store_uuid,
            layout,
            meta: Mutex::new(Meta {
                vols,
                next_vol_id: image.next_vol_id,
                bitmap,
                pending_free: Vec::new(),
                in_commit_free: 0,
                reserved,
                pending: Vec::new(),
                pending_has_map: false,
                ticket: 0,
            }),
            commit: tokio::sync::Mutex::new(CommitState { sb, head }),
            durable_ticket: AtomicU64::new(0),
            failed: Mutex::new(None),
            failed_flag: AtomicBool::new(false),
            counters,
        }))
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The device's logical block size (also the block size of every volume).
    pub fn block_size(&self) -> u32 {
        self.layout.block_size
    }

    /// The allocation unit in bytes.
    pub fn cluster_size(&self) -> u32 {
        self.layout.cluster_size
    }

    /// This store's identity (random, chosen at format).
    pub fn store_uuid(&self) -> [u8; 16] {
        self.store_uuid
    }

    /// The underlying device's description.
    pub fn describe(&self) -> String {
        self.dev.describe()
    }

    /// Bytes of data clusters (device size minus metadata, rounded down to clusters).
    pub fn capacity_bytes(&self) -> u64 {
        self.layout.nclusters * u64::from(self.layout.cluster_size)
    }

    /// Bytes in use: clusters mapped to volumes (or being filled by a first write) plus
    /// clusters reserved by thick volumes. Clusters freed by a deallocate or destroy count as
    /// free immediately (they become reusable when their unmap is durable).
    pub fn used_bytes(&self) -> u64 {
        let m = self.meta();
        let used = m.bitmap.len() - m.effective_free() + m.reserved;
        used.min(m.bitmap.len()) * u64::from(self.layout.cluster_size)
    }

    /// `capacity_bytes() - used_bytes()`.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes() - self.used_bytes()
    }

    /// Metadata counters.
    pub fn stats(&self) -> ThinStats {
        let c = &self.counters;
        ThinStats {
            generation: c.generation.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            journal_commits: c.journal_commits.load(Ordering::Relaxed),
            journal_pages_written: c.journal_pages.load(Ordering::Relaxed),
            journal_pages_used: c.journal_head.load(Ordering::Relaxed),
            journal_pages: self.layout.journal_pages(),
        }
    }

    fn check_failed(&self) -> Result<(), ThinError> {
        if self.failed_flag.load(Ordering::Acquire) {
            let why = self
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            return Err(ThinError::Failed(why));
        }
        Ok(())
    }

    /// Validates a volume size; returns its number of clusters.
    fn check_volume_size(&self, size: u64) -> Result<u64, ThinError> {
        let bs = u64::from(self.layout.block_size);
        if size == 0 || !size.is_multiple_of(bs) {
            return Err(ThinError::InvalidArgument(format!(
                "volume size {size} must be a non-zero multiple of the {bs}-byte block size"
            )));
        }
        let vc = vclusters(size, self.layout.cluster_size);
        if vc > MAX_CLUSTERS {
            return Err(ThinError::InvalidArgument(format!(
                "volume size {size} exceeds {MAX_CLUSTERS} clusters"
            )));
        }
        Ok(vc)
    }

    fn handle(self: &Arc<Self>, state: Arc<VolumeState>) -> Arc<ThinVolume> {
        Arc::new(ThinVolume::new(Arc::clone(self), state))
    }

    /// Creates a volume, durably. Idempotent: if a volume with this UUID exists with the same
    /// name, size and provisioning it is returned; with a different spec the call fails with
    /// [`ThinError::AlreadyExists`]. A thick volume reserves all its clusters now and fails
    /// with [`ThinError::NoSpace`] (changing nothing) if they are not available.
    pub async fn create_volume(
        self: &Arc<Self>,
        uuid: [u8; 16],
        name: &str,
        size_bytes: u64,
        thin: bool,
    ) -> Result<Arc<ThinVolume>, ThinError> {
        validate_name(name)?;
        let vcs = self.check_volume_size(size_bytes)?;
        self.check_failed()?;
        let cs = u64::from(self.layout.cluster_size);
        let (state, created) = {
            let mut m = self.meta();
            if let Some(e) = m.vols.get(&uuid) {
                let s = &e.state;
                if s.name != name || s.size() != size_bytes || s.thin != thin {
                    return Err(ThinError::AlreadyExists {
                        uuid: format_uuid(&uuid),
                        existing: format!(
                            "name {:?}, {} bytes, {}",
                            s.name,
                            s.size(),
                            if s.thin { "thin" } else { "thick" }
                        ),
                    });
                }
                (Arc::clone(s), false)
            } else {
                if m.vols.len() >= self.layout.max_volumes as usize {
                    return Err(ThinError::TooManyVolumes(self.layout.max_volumes));
                }
                if !thin && m.available() < vcs {
                    return Err(ThinError::NoSpace {
                        needed: vcs * cs,
                        available: m.available() * cs,
                    });
                }
                let id = m.next_vol_id;
                m.next_vol_id = id.checked_add(1).ok_or_else(|| {
                    ThinError::InvalidArgument("volume id space exhausted".into())
                })?;
                let state = Arc::new(VolumeState::new(
                    id,
                    uuid,
                    name.to_string(),
                    thin,
                    size_bytes,
                    ClusterMap::new(vcs),
                ));
                let reserved_left = if thin { 0 } else { vcs };
                m.reserved += reserved_left;
                m.vols.insert(
                    uuid,
                    VolEntry {
                        state: Arc::clone(&state),
                        reserved_left,
                    },
                );
                m.pending.push(Record::Create {
                    id,
                    uuid,
                    size: size_bytes,
                    thin,
                    name: name.to_string(),
                });
                (state, true)
            }
        };
        // Also when the volume existed: its create may still be in a concurrent commit.
        self.commit().await?;
        if created {
            info!(
                volume = %format_uuid(&uuid),
                name,
                size = size_bytes,
                thin,
                "created thin-store volume"
            );
        }
        Ok(self.handle(state))
    }

    /// A handle to an existing volume.
    pub fn volume(self: &Arc<Self>, uuid: [u8; 16]) -> Option<Arc<ThinVolume>> {
        let state = self.meta().vols.get(&uuid).map(|e| Arc::clone(&e.state))?;
        Some(self.handle(state))
    }

    /// All volumes, ordered by name then UUID.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let cs = u64::from(self.layout.cluster_size);
        let mut out: Vec<VolumeInfo> = self
            .meta()
            .vols
            .values()
            .map(|e| e.state.info(cs))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        out
    }

    /// Destroys a volume, durably, and frees its clusters (deallocating them on the device).
    /// Idempotent: destroying an unknown volume succeeds. Open handles to the volume fail
    /// their I/O with [`crate::BlockError::Gone`] afterwards; I/O in flight is waited for.
    pub async fn destroy(&self, uuid: [u8; 16]) -> Result<(), ThinError> {
        self.check_failed()?;
        let removed = {
            let mut m = self.meta();
            match m.vols.remove(&uuid) {
                None => None,
                Some(e) => {
                    e.state.destroyed.store(true, Ordering::Release);
                    let clusters = e.state.write_map().take_all();
                    m.reserved -= e.reserved_left;
                    m.pending.push(Record::Destroy { id: e.state.id });
                    Some((e.state, clusters))
                }
            }
        };
        if let Some((state, clusters)) = &removed {
            // Wait for I/O that looked up a mapping before the map was cleared.
            drop(state.gate.write().await);
            self.meta().pending_free.extend_from_slice(clusters);
        }
        self.commit().await?;
        if let Some((_, clusters)) = removed {
            info!(
                volume = %format_uuid(&uuid),
                freed_clusters = clusters.len(),
                "destroyed thin-store volume"
            );
        }
        Ok(())
    }

    /// Grows a volume to `new_size` bytes, durably. Shrinking fails with
    /// [`ThinError::Shrink`]; the same size is a no-op. A thick volume reserves the added
    /// clusters (or fails with [`ThinError::NoSpace`], changing nothing).
    pub async fn resize(&self, uuid: [u8; 16], new_size: u64) -> Result<(), ThinError> {
        let vcs = self.check_volume_size(new_size)?;
        self.check_failed()?;
        let cs = u64::from(self.layout.cluster_size);
        {
            let mut guard = self.meta();
            let m = &mut *guard;
            let available = m.available();
            let e = m
                .vols
                .get_mut(&uuid)
                .ok_or_else(|| ThinError::NotFound(format_uuid(&uuid)))?;
            let current = e.state.size();
            if new_size < current {
                return Err(ThinError::Shrink {
                    uuid: format_uuid(&uuid),
                    current,
                    requested: new_size,
                });
            }
            if new_size > current {
                let added = vcs - vclusters(current, self.layout.cluster_size);
                if !e.state.thin && added > available {
                    return Err(ThinError::NoSpace {
                        needed: added * cs,
                        available: available * cs,
                    });
                }
                e.state.write_map().grow(vcs);
                e.state.set_size(new_size);
                let id = e.state.id;
                if !e.state.thin {
                    e.reserved_left += added;
                    m.reserved += added;
                }
                m.pending.push(Record::Resize { id, size: new_size });
                info!(volume = %format_uuid(&uuid), from = current, to = new_size, "resized thin-store volume");
            }
        }
        self.commit().await
    }

    /// Makes every metadata change made so far durable and flushes the device.
    pub async fn flush(&self) -> Result<(), ThinError> {
        self.commit().await
    }

    // ---- allocation (used by ThinVolume) ----

    /// Allocates a physical cluster for `vol` (from its reservation if thick).
    pub(crate) async fn allocate(&self, vol: &VolumeState) -> Result<u32, ThinError> {
        let cs = u64::from(self.layout.cluster_size);
        for _ in 0..8 {
            {
                let mut guard = self.meta();
                let m = &mut *guard;
                if vol.destroyed.load(Ordering::Acquire) {
                    return Err(ThinError::VolumeGone(format_uuid(&vol.uuid)));
                }
                let from_reservation = m.vols.get(&vol.uuid).is_some_and(|e| e.reserved_left > 0);
                if !from_reservation && m.available() == 0 {
                    return Err(ThinError::NoSpace {
                        needed: cs,
                        available: 0,
                    });
                }
                if let Some(pc) = m.bitmap.alloc() {
                    if from_reservation {
                        if let Some(e) = m.vols.get_mut(&vol.uuid) {
                            e.reserved_left -= 1;
                        }
                        m.reserved -= 1;
                    }
                    return Ok(pc);
                }
                if m.pending_free.is_empty() && m.in_commit_free == 0 {
                    return Err(ThinError::NoSpace {
                        needed: cs,
                        available: 0,
                    });
                }
            }
            // Every free cluster is waiting for its unmap to become durable: commit, retry.
            self.commit().await?;
        }
        Err(ThinError::NoSpace {
            needed: cs,
            available: 0,
        })
    }

    /// Returns a cluster from [`ThinStore::allocate`] that was never installed (its first
    /// write failed).
    pub(crate) fn release(&self, vol: &VolumeState, pc: u32) {
        let mut guard = self.meta();
        let m = &mut *guard;
        m.bitmap.clear(pc);
        if !vol.thin
            && !vol.destroyed.load(Ordering::Acquire)
            && let Some(e) = m.vols.get_mut(&vol.uuid)
        {
            e.reserved_left += 1;
            m.reserved += 1;
        }
    }

    /// Installs a filled cluster into `vol`'s map and queues its `Map` record. Returns whether
    /// so many records are queued that the caller should commit them.
    pub(crate) fn install(&self, vol: &VolumeState, vc: u64, pc: u32) -> Result<bool, ThinError> {
        let mut m = self.meta();
        if vol.destroyed.load(Ordering::Acquire) {
            // Never mapped, nothing recorded, its I/O is complete: reusable at once.
            m.bitmap.clear(pc);
            return Err(ThinError::VolumeGone(format_uuid(&vol.uuid)));
        }
        {
            let mut map = vol.write_map();
            if map.get(vc).is_some() {
                // The per-cluster allocation lock makes this impossible.
                drop(map);
                m.bitmap.clear(pc);
                error!(volume = %format_uuid(&vol.uuid), vc, "cluster allocated twice");
                return Err(ThinError::Corrupt(format!(
                    "virtual cluster {vc} of volume {} allocated twice",
                    format_uuid(&vol.uuid)
                )));
            }
            map.set(vc, pc);
        }
        m.pending.push(Record::Map {
            id: vol.id,
            // vc < the volume's cluster count <= MAX_CLUSTERS.
            vc: vc as u32,
            pc,
        });
        m.pending_has_map = true;
        Ok(m.pending.len() >= AUTO_COMMIT_RECORDS)
    }

    /// Unmaps virtual clusters `first..first + count` of `vol` and frees their clusters. The
    /// caller must not hold the volume's I/O gate.
    pub(crate) async fn unmap(
        &self,
        vol: &VolumeState,
        first: u64,
        count: u64,
    ) -> Result<(), ThinError> {
        let freed: Vec<u32> = {
            let mut m = self.meta();
            if vol.destroyed.load(Ordering::Acquire) {
                return Err(ThinError::VolumeGone(format_uuid(&vol.uuid)));
            }
            let freed: Vec<u32> = {
                let mut map = vol.write_map();
                (first..first + count)
                    .filter_map(|vc| map.clear(vc))
                    .collect()
            };
            if freed.is_empty() {
                return Ok(());
            }
            m.pending.push(Record::Unmap {
                id: vol.id,
                // Both bounded by the volume's cluster count <= MAX_CLUSTERS.
                first: first as u32,
                count: count as u32,
            });
            freed
        };
        // I/O that looked the clusters up before the unmap must finish before they can be
        // handed to anyone else.
        drop(vol.gate.write().await);
        let mut guard = self.meta();
        let m = &mut *guard;
        let n = freed.len() as u64;
        m.pending_free.extend(freed);
        if !vol.thin
            && !vol.destroyed.load(Ordering::Acquire)
            && let Some(e) = m.vols.get_mut(&vol.uuid)
        {
            e.reserved_left += n;
            m.reserved += n;
        }
        Ok(())
    }

    // ---- commit machinery ----

    /// Group commit: makes every record queued before this call durable, and flushes the
    /// device so that every write completed before this call is durable too.
    pub(crate) async fn commit(&self) -> Result<(), ThinError> {
        self.check_failed()?;
        let ticket = {
            let mut m = self.meta();
            m.ticket += 1;
            m.ticket
        };
        let mut cs = self.commit.lock().await;
        // A commit that started after our ticket was issued covered us.
        if self.durable_ticket.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        self.check_failed()?;
        self.run_commit(&mut cs, false).await
    }

    /// Writes a checkpoint now (folding in every queued record) and starts a new journal
    /// epoch. Normally this happens by itself when the journal fills, and at open.
    pub async fn checkpoint(&self) -> Result<(), ThinError> {
        self.check_failed()?;
        let mut cs = self.commit.lock().await;
        self.check_failed()?;
        self.run_commit(&mut cs, true).await
    }

    async fn run_commit(&self, cs: &mut CommitState, checkpoint: bool) -> Result<(), ThinError> {
        let r = self.commit_locked(cs, checkpoint).await;
        if let Err(e) = &r {
            error!(device = %self.dev.describe(), error = %e, "thin metadata commit failed; the store must be reopened");
            *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
            self.failed_flag.store(true, Ordering::Release);
        }
        r
    }

    async fn commit_locked(
        &self,
        cs: &mut CommitState,
        force_checkpoint: bool,
    ) -> Result<(), ThinError> {
        let page = self.layout.page_size;
        let next_seq = cs.sb.journal_start_seq + cs.head;
        let generation = cs.sb.generation + 1;
        // Take the batch and, if needed, the snapshot in one critical section: the snapshot is
        // then exactly "the durable state plus this batch".
        let (work, frees, upto) = {
            let mut m = self.meta();
            let records = std::mem::take(&mut m.pending);
            let has_map = std::mem::take(&mut m.pending_has_map);
            let frees = std::mem::take(&mut m.pending_free);
            m.in_commit_free += frees.len() as u64;
            let upto = m.ticket;
            let pages = format::pages_needed(&records, page);
            let work = if force_checkpoint || pages > self.layout.journal_pages() - cs.head {
                Work::Checkpoint {
                    bytes: self.snapshot(&m, generation, next_seq - 1),
                }
            } else if records.is_empty() {
                Work::Flush
            } else {
                Work::Journal { records, has_map }
            };
            (work, frees, upto)
        };
        match work {
            Work::Flush => self.dev.flush().await?,
            Work::Journal { records, has_map } => {
                let epoch = Epoch {
                    store_uuid: self.store_uuid,
                    generation: cs.sb.generation,
                };
                let (bytes, n) = format::encode_pages(&records, epoch, next_seq, page);
                if has_map {
                    // Data before the mappings that point at it.
                    self.dev.flush().await?;
                }
                let off = self.layout.journal_off + cs.head * u64::from(page);
                write_bytes(self.dev.as_ref(), off, &bytes).await?;
                self.dev.flush().await?;
                cs.head += n;
                self.counters
                    .journal_commits
                    .fetch_add(1, Ordering::Relaxed);
                self.counters.journal_pages.fetch_add(n, Ordering::Relaxed);
                self.counters.journal_head.store(cs.head, Ordering::Relaxed);
            }
            Work::Checkpoint { mut bytes } => {
                let len = bytes.len() as u64;
                if len > self.layout.ckpt_cap {
                    return Err(ThinError::Corrupt(format!(
                        "checkpoint of {len} bytes exceeds its {}-byte area",
                        self.layout.ckpt_cap
                    )));
                }
                let crc = crc32c::crc32c(&bytes);
                let p = u64::from(page);
                bytes.resize((len.div_ceil(p) * p) as usize, 0);
                let area = (generation % 2) as usize;
                // Data before the mappings; the checkpoint before the superblock naming it.
                self.dev.flush().await?;
                write_bytes(self.dev.as_ref(), self.layout.ckpt_off[area], &bytes).await?;
                self.dev.flush().await?;
                let sb = Superblock {
                    generation,
                    ckpt_len: len,
                    ckpt_crc: crc,
                    journal_start_seq: next_seq,
                    ..cs.sb.clone()
                };
                write_bytes(self.dev.as_ref(), area as u64 * p, &sb.encode()).await?;
                self.dev.flush().await?;
                debug!(
                    generation,
                    bytes = len,
                    replaced_journal_pages = cs.head,
                    "thin store checkpoint"
                );
                cs.sb = sb;
                cs.head = 0;
                self.counters
                    .generation
                    .store(generation, Ordering::Relaxed);
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.counters.journal_head.store(0, Ordering::Relaxed);
            }
        }
        if !frees.is_empty() {
            self.release_frees(frees).await;
        }
        self.durable_ticket.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Deallocates durably freed clusters on the device, then makes them allocatable.
    async fn release_frees(&self, mut frees: Vec<u32>) {
        frees.sort_unstable();
        let cs = u64::from(self.layout.cluster_size);
        let bs = u64::from(self.layout.block_size);
        let mut i = 0;
        while i < frees.len() {
            let mut j = i + 1;
            while j < frees.len() && u64::from(frees[j]) == u64::from(frees[i]) + (j - i) as u64 {
                j += 1;
            }
            let lba = (self.layout.data_off + u64::from(frees[i]) * cs) / bs;
            let nblocks = (j - i) as u64 * cs / bs;
            // Best effort: a reused cluster is zero-filled or fully overwritten on first write.
            if let Err(e) = self.dev.deallocate(lba, nblocks).await {
                warn!(device = %self.dev.describe(), lba, nblocks, error = %e, "could not deallocate freed clusters");
            }
            i = j;
        }
        let mut m = self.meta();
        for &pc in &frees {
            m.bitmap.clear(pc);
        }
        m.in_commit_free -= frees.len() as u64;
    }

    /// Serialises the current state (metadata lock held).
    fn snapshot(&self, m: &Meta, generation: u64, last_seq: u64) -> Vec<u8> {
        let mut w = CheckpointWriter::new(&self.store_uuid, generation, last_seq, m.next_vol_id);
        let mut entries: Vec<&VolEntry> = m.vols.values().collect();
        entries.sort_by_key(|e| e.state.id);
        for e in entries {
            let s = &e.state;
            let map = s.read_map();
            w.volume(
                s.id,
                &VolumeEntryRef {
                    uuid: &s.uuid,
                    name: &s.name,
                    size: s.size(),
                    thin: s.thin,
                    map: &map,
                },
            );
        }
        w.finish()
    }
}
