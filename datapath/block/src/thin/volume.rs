//! [`ThinVolume`]: one volume of a [`ThinStore`], served as a [`BlockDevice`].
//!
//! Hot path: an I/O to allocated clusters takes the volume's I/O gate shared (an uncontended
//! semaphore permit), looks its clusters up under a briefly held read lock, and goes straight
//! to the device. Only first writes to a cluster take a per-cluster allocation lock (striped)
//! and the store's metadata mutex.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use tracing::trace;

use super::map::ClusterMap;
use super::store::{ThinStore, VolumeInfo};
use super::{ThinError, format_uuid};
use crate::error::{blocks_in, check_range};
use crate::{BlockDevice, BlockError, IoBuf};

/// Number of allocation-lock stripes per volume.
const STRIPES: usize = 64;
/// Clusters up to this size are zero-filled by writing one full-cluster buffer on first write;
/// larger ones get `write_zeroes` around the data.
const FULL_FILL_MAX: u64 = 256 << 10;

/// Shared state of one volume (the store's table and every handle point at it).
pub(crate) struct VolumeState {
    pub(crate) id: u32,
    pub(crate) uuid: [u8; 16],
    pub(crate) name: String,
    pub(crate) thin: bool,
    size: AtomicU64,
    map: RwLock<ClusterMap>,
    /// Held shared by every I/O for its whole duration, exclusively (briefly) by unmap and
    /// destroy to wait until no I/O can still use a cluster they are about to free.
    pub(crate) gate: tokio::sync::RwLock<()>,
    /// Serialises first writes to the same virtual cluster.
    stripes: Box<[tokio::sync::Mutex<()>]>,
    pub(crate) destroyed: AtomicBool,
}

impl VolumeState {
    pub(crate) fn new(
        id: u32,
        uuid: [u8; 16],
        name: String,
        thin: bool,
        size: u64,
        map: ClusterMap,
    ) -> VolumeState {
        VolumeState {
            id,
            uuid,
            name,
            thin,
            size: AtomicU64::new(size),
            map: RwLock::new(map),
            gate: tokio::sync::RwLock::new(()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            destroyed: AtomicBool::new(false),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release);
    }

    pub(crate) fn read_map(&self) -> RwLockReadGuard<'_, ClusterMap> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_map(&self) -> RwLockWriteGuard<'_, ClusterMap> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn info(&self, cluster_size: u64) -> VolumeInfo {
        VolumeInfo {
            uuid: self.uuid,
            name: self.name.clone(),
            size: self.size(),
            thin: self.thin,
            allocated_bytes: self.read_map().mapped() * cluster_size,
        }
    }
}

/// The part of an I/O that falls into one virtual cluster.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Virtual cluster.
    vc: u64,
    /// Byte offset inside the cluster.
    off: u64,
    /// Length in bytes.
    len: u64,
    /// Byte offset inside the I/O.
    buf_off: usize,
}

fn segments(start: u64, len: u64, cs: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(((len / cs) + 2) as usize);
    let mut pos = start;
    let end = start + len;
    while pos < end {
        let off = pos % cs;
        let n = (cs - off).min(end - pos);
        out.push(Seg {
            vc: pos / cs,
            off,
            len: n,
            // Bounded by the I/O buffer length.
            buf_off: (pos - start) as usize,
        });
        pos += n;
    }
    out
}

/// A thin-provisioned (or thick) volume of a [`ThinStore`].
///
/// Thin volumes allocate a cluster on the first write to it; unallocated space reads as
/// zeroes. Whole clusters that are deallocated (or write-zeroed with `deallocate`) are freed.
/// [`BlockDevice::flush`] makes completed writes and the mappings they created durable.
pub struct ThinVolume {
    store: Arc<ThinStore>,
    st: Arc<VolumeState>,
    cs: u64,
    bs: u64,
    data_off: u64,
}

impl std::fmt::Debug for ThinVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThinVolume")
            .field("uuid", &format_uuid(&self.st.uuid))
            .field("name", &self.st.name)
            .field("size", &self.st.size())
            .field("thin", &self.st.thin)
            .finish()
    }
}

impl ThinVolume {
    pub(crate) fn new(store: Arc<ThinStore>, st: Arc<VolumeState>) -> ThinVolume {
        let l = store.layout();
        let (cs, bs, data_off) = (
            u64::from(l.cluster_size),
            u64::from(l.block_size),
            l.data_off,
        );
        ThinVolume {
            store,
            st,
            cs,
            bs,
            data_off,
        }
    }

    /// The volume's UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.st.uuid
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.st.name
    }

    /// Whether the volume is thin (allocate on write) rather than thick (reserved).
    pub fn is_thin(&self) -> bool {
        self.st.thin
    }

    /// Whether the volume has been destroyed (its I/O fails with `Gone`).
    pub fn is_destroyed(&self) -> bool {
        self.st.destroyed.load(Ordering::Acquire)
    }

    /// Name, size, provisioning and allocation of the volume.
    pub fn info(&self) -> VolumeInfo {
        self.st.info(self.cs)
    }

    /// Bytes of clusters currently mapped to the volume.
    pub fn allocated_bytes(&self) -> u64 {
        self.st.read_map().mapped() * self.cs
    }

    /// The store this volume belongs to.
    pub fn store(&self) -> &Arc<ThinStore> {
        &self.store
    }

    fn check_live(&self) -> Result<(), BlockError> {
        if self.is_destroyed() {
            return Err(ThinError::VolumeGone(format_uuid(&self.st.uuid)).into());
        }
        Ok(())
    }

    fn dev(&self) -> &dyn BlockDevice {
        self.store.device().as_ref()
    }

    fn lookup(&self, vc: u64) -> Option<u32> {
        self.st.read_map().get(vc)
    }

    /// Device LBA of byte `off` inside physical cluster `pc`.
    fn phys_lba(&self, pc: u32, off: u64) -> u64 {
        (self.data_off + u64::from(pc) * self.cs + off) / self.bs
    }

    /// Block count of `len` bytes (part of one I/O, whose block count fits a `u32`).
    fn nblocks(&self, len: u64) -> u32 {
        (len / self.bs) as u32
    }

    /// Writes into a segment whose cluster may be unallocated: allocates it (under the
    /// segment's allocation lock), zero-fills the rest of it and installs the mapping.
    /// Returns whether a cluster was allocated.
    async fn write_new(&self, seg: Seg, data: IoBuf, fua: bool) -> Result<bool, BlockError> {
        let _alloc = self.st.stripes[(seg.vc % STRIPES as u64) as usize]
            .lock()
            .await;
        if let Some(pc) = self.lookup(seg.vc) {
            // Someone else allocated it while we waited.
            self.dev()
                .write(self.phys_lba(pc, seg.off), data, fua)
                .await?;
            return Ok(false);
        }
        let pc = self.store.allocate(&self.st).await?;
        if let Err(e) = self.fill_new_cluster(pc, seg, data).await {
            self.store.release(&self.st, pc);
            return Err(e);
        }
        let commit_now = self.store.install(&self.st, seg.vc, pc)?;
        trace!(volume = %format_uuid(&self.st.uuid), vc = seg.vc, pc, "allocated cluster");
        if commit_now {
            self.store.flush().await?;
        }
        Ok(true)
    }

    /// First write into physical cluster `pc`: `data` at `seg.off`, zeroes everywhere else,
    /// so nothing a previous owner left there can ever be read.
    async fn fill_new_cluster(&self, pc: u32, seg: Seg, data: IoBuf) -> Result<(), BlockError> {
        let dev = self.dev();
        if seg.off == 0 && seg.len == self.cs {
            return dev.write(self.phys_lba(pc, 0), data, false).await;
        }
        if self.cs <= FULL_FILL_MAX {
            // cs <= 256 KiB.
            let mut buf = IoBuf::zeroed(self.cs as usize);
            let off = seg.off as usize;
            buf[off..off + data.len()].copy_from_slice(&data);
            return dev.write(self.phys_lba(pc, 0), buf, false).await;
        }
        let tail_off = seg.off + seg.len;
        let zero = |off: u64, len: u64| async move {
            if len == 0 {
                Ok(())
            } else {
                dev.write_zeroes(self.phys_lba(pc, off), len / self.bs, false)
                    .await
            }
        };
        let (a, b, c) = tokio::join!(
            zero(0, seg.off),
            zero(tail_off, self.cs - tail_off),
            dev.write(self.phys_lba(pc, seg.off), data, false)
        );
        a.and(b).and(c)
    }
}

#[async_trait]
impl BlockDevice for ThinVolume {
    fn block_size(&self) -> u32 {
        self.store.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.st.size() / self.bs
    }

    fn describe(&self) -> String {
        format!(
            "{} volume {} ({}) of {} bytes on {}",
            if self.st.thin { "thin" } else { "thick" },
            self.st.name,
            format_uuid(&self.st.uuid),
            self.st.size(),
            self.store.describe()
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        self.check_live()?;
        check_range(lba, u64::from(nblocks), self.num_blocks())?;
        let len = u64::from(nblocks) * self.bs;
        let total = usize::try_from(len)
            .map_err(|_| BlockError::InvalidSpec(format!("read of {len} bytes is too large")))?;
        if nblocks == 0 {
            return Ok(IoBuf::zeroed(0));
        }
        let _io = self.st.gate.read().await;
        let segs = segments(lba * self.bs, len, self.cs);
        let pcs: Vec<Option<u32>> = {
            let map = self.st.read_map();
            segs.iter().map(|s| map.get(s.vc)).collect()
        };
        if let ([seg], [pc]) = (&segs[..], &pcs[..]) {
            return match pc {
                Some(pc) => self.dev().read(self.phys_lba(*pc, seg.off), nblocks).await,
                None => Ok(IoBuf::zeroed(total)),
            };
        }
        let mut out = IoBuf::zeroed(total);
        let mut i = 0;
        while i < segs.len() {
            let Some(pc) = pcs[i] else {
                i += 1;
                continue;
            };
            // Merge segments whose clusters are physically consecutive.
            let mut j = i + 1;
            let mut run = segs[i].len;
            while j < segs.len()
                && pcs[j].is_some_and(|p| u64::from(p) == u64::from(pc) + (j - i) as u64)
            {
                run += segs[j].len;
                j += 1;
            }
            let buf = self
                .dev()
                .read(self.phys_lba(pc, segs[i].off), self.nblocks(run))
                .await?;
            let at = segs[i].buf_off;
            out[at..at + buf.len()].copy_from_slice(&buf);
            i = j;
        }
        Ok(out)
    }

    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        self.check_live()?;
        let nblocks = blocks_in("write buffer length", data.len(), self.store.block_size())?;
        check_range(lba, nblocks, self.num_blocks())?;
        if nblocks == 0 {
            return Ok(());
        }
        let io = self.st.gate.read().await;
        let segs = segments(lba * self.bs, nblocks * self.bs, self.cs);
        let allocated = if let [seg] = segs[..] {
            // Fast path: one cluster, no copy.
            match self.lookup(seg.vc) {
                Some(pc) => {
                    return self
                        .dev()
                        .write(self.phys_lba(pc, seg.off), data, fua)
                        .await;
                }
                None => self.write_new(seg, data, fua).await?,
            }
        } else {
            let mut allocated = false;
            for seg in &segs {
                // Segment lengths are bounded by the buffer length.
                let part = IoBuf::from_slice(&data[seg.buf_off..seg.buf_off + seg.len as usize]);
                match self.lookup(seg.vc) {
                    Some(pc) => {
                        self.dev()
                            .write(self.phys_lba(pc, seg.off), part, fua)
                            .await?
                    }
                    None => allocated |= self.write_new(*seg, part, fua).await?,
                }
            }
            allocated
        };
        drop(io);
        if allocated && fua {
            // The data is written; FUA also needs the new mapping to be durable.
            self.store.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.store.flush().await.map_err(BlockError::from)
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError> {
        self.check_live()?;
        check_range(lba, nblocks, self.num_blocks())?;
        if nblocks == 0 {
            return Ok(());
        }
        let size = self.st.size();
        let segs = segments(lba * self.bs, nblocks * self.bs, self.cs);
        // Whole clusters to free: only the first and last segment can be partial, so they
        // form one consecutive run.
        let mut unmap: Option<(u64, u64)> = None;
        {
            let _io = self.st.gate.read().await;
            for seg in &segs {
                let extent = self.cs.min(size - seg.vc * self.cs);
                if deallocate && seg.off == 0 && seg.len == extent {
                    unmap = Some(match unmap {
                        None => (seg.vc, 1),
                        Some((first, n)) => (first, n + 1),
                    });
                    continue;
                }
                if let Some(pc) = self.lookup(seg.vc) {
                    self.dev()
                        .write_zeroes(self.phys_lba(pc, seg.off), seg.len / self.bs, deallocate)
                        .await?;
                }
                // Unallocated: already reads as zeroes.
            }
        }
        if let Some((first, count)) = unmap {
            self.store.unmap(&self.st, first, count).await?;
        }
        Ok(())
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.write_zeroes(lba, nblocks, true).await
    }
}
