//! Thin store tests: functional behaviour, recovery (torn journal tail, checkpoint rollover,
//! crashes inside checkpoints), concurrency, and a model-checked power-loss test on a
//! simulated device with a volatile write cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::{BlockDevice, BlockError, IoBuf, RamDevice};

// ---------------------------------------------------------------------------------------------
// helpers

/// xorshift64*: deterministic, dependency-free randomness for tests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn ram(size: u64, bs: u32) -> Arc<dyn BlockDevice> {
    Arc::new(RamDevice::new(size, bs).unwrap())
}

fn uuid(n: u8) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = 0xf0;
    u[15] = n;
    u
}

fn opts(cluster: u32) -> FormatOptions {
    FormatOptions {
        cluster_size: cluster,
        ..FormatOptions::default()
    }
}

async fn small_store(size: u64, bs: u32, cluster: u32) -> (Arc<dyn BlockDevice>, Arc<ThinStore>) {
    let dev = ram(size, bs);
    let store = ThinStore::format_with(Arc::clone(&dev), &opts(cluster))
        .await
        .unwrap();
    (dev, store)
}

fn fill(len: usize, seed: u8) -> IoBuf {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect();
    IoBuf::from_slice(&v)
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

// ---------------------------------------------------------------------------------------------
// a device with a volatile write cache that can lose power

struct SimState {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a power loss for sure.
    durable: Vec<u8>,
    /// Writes since the last flush, in order: (byte offset, data).
    unflushed: Vec<(usize, Vec<u8>)>,
    /// Mutating operations (write, write-zeroes, flush) left before the power goes.
    ops_left: Option<u64>,
    dead: bool,
}

/// A RAM device that models a volatile write cache: a flush makes earlier writes durable; on
/// a power cut each unflushed write independently was lost, persisted whole, or torn at block
/// granularity (so unflushed writes are reordered and torn).
struct SimDevice {
    bs: u32,
    st: Mutex<SimState>,
}

impl SimDevice {
    fn new(size: usize, bs: u32) -> Arc<SimDevice> {
        Self::from_image(vec![0; size], bs)
    }

    fn from_image(img: Vec<u8>, bs: u32) -> Arc<SimDevice> {
        Arc::new(SimDevice {
            bs,
            st: Mutex::new(SimState {
                current: img.clone(),
                durable: img,
                unflushed: Vec::new(),
                ops_left: None,
                dead: false,
            }),
        })
    }

    /// The power goes after `n` more mutating operations.
    fn cut_after(&self, n: u64) {
        self.st.lock().unwrap().ops_left = Some(n);
    }

    fn is_dead(&self) -> bool {
        self.st.lock().unwrap().dead
    }

    /// What the media holds after a power cut now.
    fn crash_image(&self, rng: &mut Rng) -> Vec<u8> {
        let st = self.st.lock().unwrap();
        let mut img = st.durable.clone();
        let bs = self.bs as usize;
        for (off, data) in &st.unflushed {
            // Each unflushed write was lost, persisted whole, or torn (a random subset of
            // its blocks persisted).
            match rng.below(3) {
                0 => {}
                1 => img[*off..off + data.len()].copy_from_slice(data),
                _ => {
                    for (i, block) in data.chunks(bs).enumerate() {
                        if rng.chance(50) {
                            let at = off + i * bs;
                            img[at..at + bs].copy_from_slice(block);
                        }
                    }
                }
            }
        }
        img
    }

    /// The current contents (as after a clean shutdown).
    fn image(&self) -> Vec<u8> {
        self.st.lock().unwrap().current.clone()
    }

    fn mutate(&self, off: usize, data: Option<&[u8]>, len: usize) -> Result<(), BlockError> {
        let mut st = self.st.lock().unwrap();
        Self::tick(&mut st)?;
        let bytes = match data {
            Some(d) => d.to_vec(),
            None => vec![0; len],
        };
        st.current[off..off + len].copy_from_slice(&bytes);
        st.unflushed.push((off, bytes));
        Ok(())
    }

    fn tick(st: &mut SimState) -> Result<(), BlockError> {
        if st.dead {
            return Err(BlockError::Gone("power cut".into()));
        }
        if let Some(n) = st.ops_left.as_mut() {
            if *n == 0 {
                st.dead = true;
                return Err(BlockError::Gone("power cut".into()));
            }
            *n -= 1;
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for SimDevice {
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn num_blocks(&self) -> u64 {
        self.st.lock().unwrap().current.len() as u64 / u64::from(self.bs)
    }
    fn describe(&self) -> String {
        "sim".into()
    }
    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        crate::check_range(lba, u64::from(nblocks), self.num_blocks())?;
        let st = self.st.lock().unwrap();
        if st.dead {
            return Err(BlockError::Gone("power cut".into()));
        }
        let off = (lba * u64::from(self.bs)) as usize;
        let len = nblocks as usize * self.bs as usize;
        Ok(IoBuf::from_slice(&st.current[off..off + len]))
    }
    async fn write(&self, lba: u64, data: IoBuf, _fua: bool) -> Result<(), BlockError> {
        let n = crate::blocks_in("write", data.len(), self.bs)?;
        crate::check_range(lba, n, self.num_blocks())?;
        self.mutate((lba * u64::from(self.bs)) as usize, Some(&data), data.len())
    }
    async fn flush(&self) -> Result<(), BlockError> {
        let mut st = self.st.lock().unwrap();
        Self::tick(&mut st)?;
        let pending = std::mem::take(&mut st.unflushed);
        for (off, data) in pending {
            st.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
    async fn write_zeroes(&self, lba: u64, nblocks: u64, _d: bool) -> Result<(), BlockError> {
        crate::check_range(lba, nblocks, self.num_blocks())?;
        let bs = u64::from(self.bs);
        self.mutate((lba * bs) as usize, None, (nblocks * bs) as usize)
    }
    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.write_zeroes(lba, nblocks, true).await
    }
}

// ---------------------------------------------------------------------------------------------
// functional tests

/// The store's futures can be spawned on a multi-threaded runtime (no lock guard is held
/// across an await). Compile-time check; the futures are never polled.
#[test]
fn store_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ThinStore>();
    assert_send_sync::<ThinVolume>();
    let dev = ram(16 << 20, 4096);
    assert_send(&ThinStore::format(Arc::clone(&dev), 1 << 20));
    assert_send(&ThinStore::open(Arc::clone(&dev)));
    assert_send(&ThinStore::is_formatted(dev.as_ref()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = rt
        .block_on(ThinStore::format(Arc::clone(&dev), 1 << 20))
        .unwrap();
    assert_send(&store.create_volume(uuid(1), "a", 4096, true));
    assert_send(&store.destroy(uuid(1)));
    assert_send(&store.resize(uuid(1), 8192));
    assert_send(&store.flush());
    assert_send(&store.checkpoint());
}

#[tokio::test]
async fn format_refuses_existing_store_unless_forced() {
    let dev = ram(64 << 20, 4096);
    assert!(!ThinStore::is_formatted(dev.as_ref()).await.unwrap());
    assert!(matches!(
        ThinStore::open(Arc::clone(&dev)).await,
        Err(ThinError::NotFormatted { .. })
    ));
    let store = ThinStore::format(Arc::clone(&dev), 1 << 20).await.unwrap();
    store
        .create_volume(uuid(1), "a", 4 << 20, true)
        .await
        .unwrap();
    drop(store);
    assert!(ThinStore::is_formatted(dev.as_ref()).await.unwrap());
    assert!(matches!(
        ThinStore::format(Arc::clone(&dev), 1 << 20).await,
        Err(ThinError::AlreadyFormatted { .. })
    ));
    // Still intact after the refusal.
    assert_eq!(
        ThinStore::open(Arc::clone(&dev))
            .await
            .unwrap()
            .list()
            .len(),
        1
    );
    let forced = FormatOptions {
        force: true,
        ..opts(1 << 20)
    };
    let store = ThinStore::format_with(Arc::clone(&dev), &forced)
        .await
        .unwrap();
    assert!(store.list().is_empty());
    drop(store);
    assert!(
        ThinStore::open(Arc::clone(&dev))
            .await
            .unwrap()
            .list()
            .is_empty()
    );
}

#[tokio::test]
async fn bad_format_parameters_and_devices() {
    let dev = ram(64 << 20, 4096);
    for cs in [0u32, 1000, 2048, 3 << 20] {
        assert!(
            matches!(
                ThinStore::format(Arc::clone(&dev), cs).await,
                Err(ThinError::InvalidArgument(_))
            ),
            "cluster size {cs}"
        );
    }
    let tiny = ram(1 << 20, 4096);
    assert!(matches!(
        ThinStore::format(tiny, 1 << 20).await,
        Err(ThinError::DeviceTooSmall { .. })
    ));
    // Garbage with the magic but a broken checksum is reported as corrupt, not as empty.
    let dev = ram(16 << 20, 512);
    let mut page = vec![0u8; 4096];
    page[..8].copy_from_slice(b"FERRTHIN");
    page[100] = 1;
    dev.write(0, IoBuf::from_slice(&page), false).await.unwrap();
    assert!(matches!(
        ThinStore::open(Arc::clone(&dev)).await,
        Err(ThinError::Corrupt(_))
    ));
    // Same store, different block size: incompatible.
    let dev = SimDevice::new(16 << 20, 512);
    ThinStore::format(dev.clone(), 64 << 10).await.unwrap();
    let other = SimDevice::from_image(dev.image(), 4096);
    assert!(matches!(
        ThinStore::open(other).await,
        Err(ThinError::Incompatible(_))
    ));
}

#[tokio::test]
async fn thin_allocates_on_first_write_and_zero_fills() {
    for (bs, cs) in [(512u32, 64u32 << 10), (4096, 1 << 20)] {
        let (_dev, store) = small_store(64 << 20, bs, cs).await;
        let cs = u64::from(cs);
        let vol = store
            .create_volume(uuid(1), "vol-1", 16 << 20, true)
            .await
            .unwrap();
        assert_eq!(vol.block_size(), bs);
        assert_eq!(vol.size_bytes(), 16 << 20);
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(store.free_bytes(), store.capacity_bytes());
        // Unallocated space reads as zeroes.
        let r = vol.read(0, 8).await.unwrap();
        assert!(is_zero(&r));
        // A one-block write in the middle of cluster 2.
        let lba = (2 * cs + cs / 2) / u64::from(bs);
        vol.write(lba, fill(bs as usize, 7), false).await.unwrap();
        assert_eq!(vol.allocated_bytes(), cs);
        assert_eq!(store.used_bytes(), cs);
        assert_eq!(vol.read(lba, 1).await.unwrap(), fill(bs as usize, 7));
        // The rest of the cluster reads as zeroes.
        let whole = vol
            .read(2 * cs / u64::from(bs), (cs / u64::from(bs)) as u32)
            .await
            .unwrap();
        let at = (cs / 2) as usize;
        assert!(is_zero(&whole[..at]));
        assert!(is_zero(&whole[at + bs as usize..]));
        assert_eq!(store.list()[0].allocated_bytes, cs);
    }
}

#[tokio::test]
async fn freed_clusters_never_leak_old_data() {
    // A store of a handful of clusters: every allocation after the destroy reuses one.
    let (_dev, store) = small_store(4 << 20, 4096, 64 << 10).await;
    let cs = 64u64 << 10;
    let n = store.capacity_bytes() / cs;
    let a = store
        .create_volume(uuid(1), "a", n * cs, true)
        .await
        .unwrap();
    for c in 0..n {
        a.write(c * cs / 4096, fill(cs as usize, 0xaa), false)
            .await
            .unwrap();
    }
    assert_eq!(store.free_bytes(), 0);
    store.destroy(uuid(1)).await.unwrap();
    assert_eq!(store.free_bytes(), store.capacity_bytes());
    let b = store
        .create_volume(uuid(2), "b", n * cs, true)
        .await
        .unwrap();
    for c in 0..n {
        // One block in the middle of every cluster: the rest must be zero, not 0xaa.
        b.write(c * cs / 4096 + 3, fill(4096, 1), false)
            .await
            .unwrap();
    }
    for c in 0..n {
        let r = b.read(c * cs / 4096, (cs / 4096) as u32).await.unwrap();
        assert!(is_zero(&r[..3 * 4096]), "cluster {c}");
        assert!(is_zero(&r[4 * 4096..]), "cluster {c}");
    }
    // Also with clusters too big for a single zero-padded write (write_zeroes around data).
    let (_dev, store) = small_store(16 << 20, 4096, 1 << 20).await;
    let n = store.capacity_bytes() >> 20;
    let a = store
        .create_volume(uuid(1), "a", n << 20, true)
        .await
        .unwrap();
    for c in 0..n {
        a.write(c * 256, fill(1 << 20, 0x55), false).await.unwrap();
    }
    store.destroy(uuid(1)).await.unwrap();
    let b = store
        .create_volume(uuid(2), "b", n << 20, true)
        .await
        .unwrap();
    for c in 0..n {
        b.write(c * 256 + 100, fill(8192, 2), false).await.unwrap();
        let r = b.read(c * 256, 256).await.unwrap();
        assert!(is_zero(&r[..100 * 4096]));
        assert!(is_zero(&r[102 * 4096..]));
        assert_eq!(&r[100 * 4096..102 * 4096], &fill(8192, 2)[..]);
    }
}

#[tokio::test]
async fn deallocate_frees_whole_clusters_and_zeroes_partial_ones() {
    let (_dev, store) = small_store(32 << 20, 512, 64 << 10).await;
    let vol = store
        .create_volume(uuid(1), "v", 1 << 20, true)
        .await
        .unwrap();
    let cs_blocks = 128u64; // 64 KiB / 512
    // Fill clusters 0..4 completely.
    vol.write(0, fill(4 * 65536, 3), false).await.unwrap();
    assert_eq!(vol.allocated_bytes(), 4 * 65536);
    // Deallocate from the middle of cluster 0 to the middle of cluster 3: clusters 1 and 2
    // are freed, the partial parts of 0 and 3 are zeroed.
    vol.deallocate(64, 3 * cs_blocks).await.unwrap();
    assert_eq!(vol.allocated_bytes(), 2 * 65536);
    assert_eq!(store.used_bytes(), 2 * 65536);
    let r = vol.read(0, 4 * cs_blocks as u32).await.unwrap();
    let expect = fill(4 * 65536, 3);
    assert_eq!(&r[..64 * 512], &expect[..64 * 512]);
    assert!(is_zero(&r[64 * 512..(64 + 3 * cs_blocks as usize) * 512]));
    assert_eq!(
        &r[(64 + 3 * cs_blocks as usize) * 512..],
        &expect[(64 + 3 * cs_blocks as usize) * 512..]
    );
    // write_zeroes without deallocate keeps the clusters allocated.
    vol.write_zeroes(0, cs_blocks, false).await.unwrap();
    assert_eq!(vol.allocated_bytes(), 2 * 65536);
    assert!(is_zero(&vol.read(0, cs_blocks as u32).await.unwrap()));
    // write_zeroes with deallocate frees them.
    vol.write_zeroes(0, 4 * cs_blocks, true).await.unwrap();
    assert_eq!(vol.allocated_bytes(), 0);
    assert_eq!(store.used_bytes(), 0);
    // The last, partial cluster of a volume counts as whole when deallocated to the end.
    let odd = store
        .create_volume(uuid(2), "odd", 65536 + 4096, true)
        .await
        .unwrap();
    odd.write(128, fill(4096, 9), false).await.unwrap();
    assert_eq!(odd.allocated_bytes(), 65536);
    odd.deallocate(128, 8).await.unwrap();
    assert_eq!(odd.allocated_bytes(), 0);
    // Freed clusters are reusable after a flush, and also without one (allocation commits).
    vol.write(0, fill(4 * 65536, 4), false).await.unwrap();
    vol.flush().await.unwrap();
    assert_eq!(
        vol.read(0, 8).await.unwrap(),
        IoBuf::from_slice(&fill(4 * 65536, 4)[..4096])
    );
}

#[tokio::test]
async fn full_store_fails_writes_with_nospace_and_recovers() {
    let (_dev, store) = small_store(4 << 20, 4096, 64 << 10).await;
    let cs = 64u64 << 10;
    let n = store.capacity_bytes() / cs;
    let a = store
        .create_volume(uuid(1), "a", 4 * n * cs, true)
        .await
        .unwrap();
    let b = store
        .create_volume(uuid(2), "b", 4 * n * cs, true)
        .await
        .unwrap();
    b.write(0, fill(4096, 1), false).await.unwrap();
    for c in 0..n - 1 {
        a.write(c * 16, fill(4096, c as u8), false).await.unwrap();
    }
    assert_eq!(store.free_bytes(), 0);
    let err = a
        .write((n + 5) * 16, fill(4096, 0), false)
        .await
        .unwrap_err();
    assert!(matches!(err, BlockError::NoSpace), "{err}");
    let err = b.write(16, fill(4096, 0), false).await.unwrap_err();
    assert!(matches!(err, BlockError::NoSpace), "{err}");
    // Nothing was corrupted: existing data reads back, allocated clusters stay writable.
    for c in 0..n - 1 {
        assert_eq!(a.read(c * 16, 1).await.unwrap(), fill(4096, c as u8));
    }
    assert!(is_zero(&a.read((n + 5) * 16, 16).await.unwrap()));
    b.write(1, fill(4096, 2), false).await.unwrap();
    assert_eq!(b.read(0, 1).await.unwrap(), fill(4096, 1));
    assert_eq!(b.read(1, 1).await.unwrap(), fill(4096, 2));
    // Thick create that does not fit changes nothing.
    let before = (store.list(), store.used_bytes());
    assert!(matches!(
        store.create_volume(uuid(3), "c", cs, false).await,
        Err(ThinError::NoSpace { .. })
    ));
    assert_eq!((store.list(), store.used_bytes()), before);
    // Free a cluster (no flush): the next allocation commits the unmap and reuses it.
    a.deallocate(0, 16).await.unwrap();
    assert_eq!(store.free_bytes(), cs);
    b.write(16, fill(4096, 3), false).await.unwrap();
    assert_eq!(b.read(16, 1).await.unwrap(), fill(4096, 3));
    assert_eq!(store.free_bytes(), 0);
    // A multi-cluster write that runs out part-way reports NoSpace.
    a.deallocate(16, 16).await.unwrap();
    let err = a
        .write(0, fill(2 * cs as usize, 5), false)
        .await
        .unwrap_err();
    assert!(matches!(err, BlockError::NoSpace));
    assert_eq!(b.read(16, 1).await.unwrap(), fill(4096, 3));
}

#[tokio::test]
async fn thick_volumes_reserve_their_clusters() {
    let (_dev, store) = small_store(8 << 20, 4096, 64 << 10).await;
    let cs = 64u64 << 10;
    let cap = store.capacity_bytes();
    let thick = store
        .create_volume(uuid(1), "thick", 10 * cs, false)
        .await
        .unwrap();
    assert!(!thick.is_thin());
    assert_eq!(store.used_bytes(), 10 * cs);
    assert_eq!(thick.allocated_bytes(), 0);
    assert!(is_zero(&thick.read(0, 16).await.unwrap()));
    // A thin volume can use only what is not reserved.
    let thin = store
        .create_volume(uuid(2), "thin", cap, true)
        .await
        .unwrap();
    let free = cap / cs - 10;
    for c in 0..free {
        thin.write(c * 16, fill(4096, 1), false).await.unwrap();
    }
    assert!(matches!(
        thin.write(free * 16, fill(4096, 1), false).await,
        Err(BlockError::NoSpace)
    ));
    // The thick volume can still fill all of its clusters.
    for c in 0..10 {
        thick.write(c * 16 + 1, fill(4096, 2), false).await.unwrap();
    }
    assert_eq!(thick.allocated_bytes(), 10 * cs);
    assert_eq!(store.free_bytes(), 0);
    // Deallocating a thick volume's cluster keeps it reserved for that volume.
    thick.deallocate(0, 16).await.unwrap();
    assert_eq!(thick.allocated_bytes(), 9 * cs);
    assert_eq!(store.free_bytes(), 0);
    assert!(matches!(
        thin.write(free * 16, fill(4096, 1), false).await,
        Err(BlockError::NoSpace)
    ));
    thick.write(0, fill(4096, 3), false).await.unwrap();
    // Reservations survive a reopen, and destroy returns everything.
    store.flush().await.unwrap();
    let dev = Arc::clone(store.device());
    drop((thick, thin, store));
    let store = ThinStore::open(dev).await.unwrap();
    assert_eq!(store.free_bytes(), 0);
    store.destroy(uuid(2)).await.unwrap();
    assert_eq!(store.used_bytes(), 10 * cs);
    // Growing a thick volume reserves more, or fails without changing anything.
    store.resize(uuid(1), 12 * cs).await.unwrap();
    assert_eq!(store.used_bytes(), 12 * cs);
    assert!(matches!(
        store.resize(uuid(1), 2 * cap).await,
        Err(ThinError::NoSpace { .. })
    ));
    assert_eq!(store.volume(uuid(1)).unwrap().size_bytes(), 12 * cs);
    store.destroy(uuid(1)).await.unwrap();
    assert_eq!(store.used_bytes(), 0);
}

#[tokio::test]
async fn create_and_destroy_are_idempotent() {
    let (_dev, store) = small_store(16 << 20, 4096, 64 << 10).await;
    let a = store
        .create_volume(uuid(1), "a", 1 << 20, true)
        .await
        .unwrap();
    let again = store
        .create_volume(uuid(1), "a", 1 << 20, true)
        .await
        .unwrap();
    a.write(0, fill(4096, 1), false).await.unwrap();
    assert_eq!(again.read(0, 1).await.unwrap(), fill(4096, 1));
    assert_eq!(store.list().len(), 1);
    for (name, size, thin) in [
        ("b", 1 << 20, true),
        ("a", 2 << 20, true),
        ("a", 1 << 20, false),
    ] {
        let e = store
            .create_volume(uuid(1), name, size, thin)
            .await
            .unwrap_err();
        assert!(matches!(e, ThinError::AlreadyExists { .. }), "{e}");
    }
    store.destroy(uuid(1)).await.unwrap();
    store.destroy(uuid(1)).await.unwrap();
    store.destroy(uuid(9)).await.unwrap();
    assert!(store.volume(uuid(1)).is_none());
    // Handles of a destroyed volume fail cleanly.
    assert!(a.is_destroyed());
    assert!(matches!(a.read(0, 1).await, Err(BlockError::Gone(_))));
    assert!(matches!(
        a.write(0, fill(4096, 1), false).await,
        Err(BlockError::Gone(_))
    ));
    // The uuid can be reused for a new volume, which starts empty.
    let b = store
        .create_volume(uuid(1), "a", 1 << 20, true)
        .await
        .unwrap();
    assert!(is_zero(&b.read(0, 1).await.unwrap()));
}

#[tokio::test]
async fn names_sizes_and_limits_are_validated() {
    let dev = ram(16 << 20, 4096);
    let o = FormatOptions {
        max_volumes: Some(3),
        ..opts(64 << 10)
    };
    let store = ThinStore::format_with(dev, &o).await.unwrap();
    let long = "x".repeat(64);
    for bad in ["", "has space", "slash/", "ünï", long.as_str()] {
        assert!(
            matches!(
                store.create_volume(uuid(1), bad, 1 << 20, true).await,
                Err(ThinError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    let ok63 = "a".repeat(63);
    store
        .create_volume(uuid(1), &ok63, 4096, true)
        .await
        .unwrap();
    for size in [0u64, 1000, 4097] {
        assert!(matches!(
            store.create_volume(uuid(2), "b", size, true).await,
            Err(ThinError::InvalidArgument(_))
        ));
    }
    // Over-provisioning a thin volume far beyond the device is fine.
    store
        .create_volume(uuid(2), "Big_1.0-x", 1 << 44, true)
        .await
        .unwrap();
    store.create_volume(uuid(3), "c", 4096, true).await.unwrap();
    assert!(matches!(
        store.create_volume(uuid(4), "d", 4096, true).await,
        Err(ThinError::TooManyVolumes(3))
    ));
    let names: Vec<String> = store.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec!["Big_1.0-x".to_string(), ok63, "c".to_string()]);
}

#[tokio::test]
async fn resize_grows_only_and_keeps_data() {
    let (dev, store) = small_store(32 << 20, 4096, 64 << 10).await;
    // A size that ends mid-cluster: the tail cluster must read zero after growing.
    let vol = store
        .create_volume(uuid(1), "r", 65536 + 8192, true)
        .await
        .unwrap();
    vol.write(16, fill(8192, 4), false).await.unwrap();
    assert!(matches!(
        vol.read(18, 1).await,
        Err(BlockError::OutOfRange { .. })
    ));
    store.resize(uuid(1), 4 << 20).await.unwrap();
    assert_eq!(vol.size_bytes(), 4 << 20);
    assert_eq!(vol.read(16, 2).await.unwrap(), fill(8192, 4));
    assert!(is_zero(&vol.read(18, 14).await.unwrap()));
    vol.write(1000, fill(4096, 5), false).await.unwrap();
    assert!(matches!(
        store.resize(uuid(1), 1 << 20).await,
        Err(ThinError::Shrink { .. })
    ));
    store.resize(uuid(1), 4 << 20).await.unwrap();
    assert!(matches!(
        store.resize(uuid(7), 1 << 20).await,
        Err(ThinError::NotFound(_))
    ));
    assert!(matches!(
        store.resize(uuid(1), (4 << 20) + 1).await,
        Err(ThinError::InvalidArgument(_))
    ));
    // Durable without any flush.
    drop((vol, store));
    let store = ThinStore::open(dev).await.unwrap();
    let vol = store.volume(uuid(1)).unwrap();
    assert_eq!(vol.size_bytes(), 4 << 20);
}

#[tokio::test]
async fn io_spanning_clusters() {
    let (_dev, store) = small_store(32 << 20, 512, 16 << 10).await;
    let vol = store
        .create_volume(uuid(1), "s", 1 << 20, true)
        .await
        .unwrap();
    let mut model = vec![0u8; 1 << 20];
    let mut rng = Rng::new(5);
    for i in 0..200 {
        let lba = rng.below(2048 - 100);
        let n = 1 + rng.below(100);
        match rng.below(5) {
            0 => {
                vol.deallocate(lba, n).await.unwrap();
                model[lba as usize * 512..(lba + n) as usize * 512].fill(0);
            }
            1 => {
                vol.write_zeroes(lba, n, false).await.unwrap();
                model[lba as usize * 512..(lba + n) as usize * 512].fill(0);
            }
            _ => {
                let data = fill(n as usize * 512, i as u8);
                model[lba as usize * 512..(lba + n) as usize * 512].copy_from_slice(&data);
                vol.write(lba, data, rng.chance(10)).await.unwrap();
            }
        }
        let lba = rng.below(2048 - 100);
        let n = 1 + rng.below(100);
        let r = vol.read(lba, n as u32).await.unwrap();
        assert_eq!(
            &r[..],
            &model[lba as usize * 512..(lba + n) as usize * 512],
            "op {i}"
        );
    }
    let r = vol.read(0, 2048).await.unwrap();
    assert_eq!(&r[..], &model[..]);
    assert!(matches!(
        vol.read(2040, 9).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        vol.write(0, IoBuf::zeroed(100), false).await,
        Err(BlockError::Misaligned { .. })
    ));
    assert!(vol.read(0, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn reopen_after_clean_close_keeps_everything() {
    let (dev, store) = small_store(64 << 20, 4096, 64 << 10).await;
    let a = store
        .create_volume(uuid(1), "a", 8 << 20, true)
        .await
        .unwrap();
    let b = store
        .create_volume(uuid(2), "b", 2 << 20, false)
        .await
        .unwrap();
    for i in 0..50u64 {
        a.write(i * 37 % 2048, fill(4096, i as u8), false)
            .await
            .unwrap();
    }
    b.write(5, fill(8192, 9), false).await.unwrap();
    a.deallocate(0, 16).await.unwrap();
    a.flush().await.unwrap();
    let generation = store.stats().generation;
    let (list, used) = (store.list(), store.used_bytes());
    drop((a, b, store));
    let store = ThinStore::open(Arc::clone(&dev)).await.unwrap();
    assert_eq!(store.stats().generation, generation + 1);
    assert_eq!(store.list(), list);
    assert_eq!(store.used_bytes(), used);
    let a = store.volume(uuid(1)).unwrap();
    let b = store.volume(uuid(2)).unwrap();
    let mut last = HashMap::new();
    for i in 0..50u64 {
        last.insert(i * 37 % 2048, i);
    }
    for (lba, i) in last {
        let r = a.read(lba, 1).await.unwrap();
        if lba < 16 {
            assert!(is_zero(&r));
        } else {
            assert_eq!(r, fill(4096, i as u8), "lba {lba}");
        }
    }
    assert_eq!(b.read(5, 2).await.unwrap(), fill(8192, 9));
    // Open twice in a row: the epochs keep old journal pages from being replayed again.
    drop((a, b, store));
    let store = ThinStore::open(Arc::clone(&dev)).await.unwrap();
    drop(store);
    let store = ThinStore::open(dev).await.unwrap();
    assert_eq!(store.list(), list);
}

#[tokio::test]
async fn torn_journal_tail_is_ignored() {
    let dev = SimDevice::new(16 << 20, 512);
    let store = ThinStore::format(dev.clone(), 64 << 10).await.unwrap();
    let vol = store
        .create_volume(uuid(1), "t", 1 << 20, true)
        .await
        .unwrap();
    vol.write(0, fill(512, 1), false).await.unwrap();
    vol.flush().await.unwrap();
    let head = store.stats().journal_pages_used;
    vol.write(128, fill(512, 2), false).await.unwrap();
    vol.flush().await.unwrap();
    assert_eq!(store.stats().journal_pages_used, head + 1);
    let l = store.layout().clone();
    drop((vol, store));
    // Tear the last journal page: its second half still holds what was there before.
    let mut img = dev.image();
    let page_at = (l.journal_off + head * u64::from(l.page_size)) as usize;
    img[page_at + 2048..page_at + 4096].fill(0x77);
    let store = ThinStore::open(SimDevice::from_image(img.clone(), 512))
        .await
        .unwrap();
    let vol = store.volume(uuid(1)).unwrap();
    assert_eq!(vol.read(0, 1).await.unwrap(), fill(512, 1));
    assert!(
        is_zero(&vol.read(128, 1).await.unwrap()),
        "torn record must be ignored"
    );
    assert_eq!(vol.allocated_bytes(), 64 << 10);
    // A torn page followed by garbage, and a page that is pure garbage: same result.
    img[page_at + 4096..page_at + 8192].fill(0x5a);
    let store = ThinStore::open(SimDevice::from_image(img.clone(), 512))
        .await
        .unwrap();
    assert_eq!(store.volume(uuid(1)).unwrap().allocated_bytes(), 64 << 10);
    img[page_at..page_at + 4096].fill(0xa5);
    let store = ThinStore::open(SimDevice::from_image(img, 512))
        .await
        .unwrap();
    assert_eq!(store.volume(uuid(1)).unwrap().allocated_bytes(), 64 << 10);
}

#[tokio::test]
async fn checkpoint_rollover_with_a_tiny_journal() {
    let dev = SimDevice::new(32 << 20, 512);
    let o = FormatOptions {
        journal_bytes: Some(2 * 4096),
        ..opts(16 << 10)
    };
    let store = ThinStore::format_with(dev.clone(), &o).await.unwrap();
    assert_eq!(store.stats().journal_pages, 2);
    let vol = store
        .create_volume(uuid(1), "c", 16 << 20, true)
        .await
        .unwrap();
    let thick = store
        .create_volume(uuid(2), "d", 1 << 20, false)
        .await
        .unwrap();
    let mut expect = HashMap::new();
    for i in 0..600u64 {
        let lba = (i * 97) % 32768;
        vol.write(lba, fill(512, i as u8), false).await.unwrap();
        expect.insert(lba, i);
        if i % 3 == 0 {
            vol.flush().await.unwrap();
        }
        if i % 50 == 0 {
            thick.write(i % 2048, fill(512, 1), false).await.unwrap();
            vol.deallocate(((i * 13) % 1024) * 32, 32).await.unwrap();
            expect.retain(|&l, _| l / 32 != (i * 13) % 1024);
        }
    }
    vol.flush().await.unwrap();
    let s = store.stats();
    assert!(s.checkpoints > 10, "{s:?}");
    let list = store.list();
    drop((vol, thick, store));
    for (image, what) in [
        (dev.image(), "clean"),
        (dev.crash_image(&mut Rng::new(1)), "crash"),
    ] {
        let store = ThinStore::open(SimDevice::from_image(image, 512))
            .await
            .unwrap();
        assert_eq!(store.list(), list, "{what}");
        let vol = store.volume(uuid(1)).unwrap();
        for (&lba, &i) in &expect {
            assert_eq!(
                vol.read(lba, 1).await.unwrap(),
                fill(512, i as u8),
                "{what} lba {lba}"
            );
        }
    }
}

/// Crashes at every device operation of a checkpoint (the one open writes), with random
/// persistence of the unflushed part, and checks nothing acknowledged is lost.
#[tokio::test]
async fn crash_inside_a_checkpoint_loses_nothing() {
    let dev = SimDevice::new(2 << 20, 512);
    let o = FormatOptions {
        journal_bytes: Some(4 * 4096),
        ..opts(16 << 10)
    };
    let store = ThinStore::format_with(dev.clone(), &o).await.unwrap();
    let vol = store
        .create_volume(uuid(1), "v", 1 << 20, true)
        .await
        .unwrap();
    for i in 0..40u64 {
        vol.write(i * 40, fill(512, i as u8), false).await.unwrap();
    }
    vol.flush().await.unwrap();
    let base = dev.image();
    drop((vol, store));
    let mut rng = Rng::new(99);
    // open = reads + checkpoint (flush, checkpoint write, flush, superblock write, flush); a
    // further checkpoint by the reopened store follows.
    for cut in 0..12 {
        for _ in 0..25 {
            let d = SimDevice::from_image(base.clone(), 512);
            d.cut_after(cut);
            let r = match ThinStore::open(d.clone()).await {
                Ok(s) => s.checkpoint().await.map(|_| s),
                Err(e) => Err(e),
            };
            assert_eq!(r.is_err(), d.is_dead(), "cut {cut}");
            let img = d.crash_image(&mut rng);
            let store = ThinStore::open(SimDevice::from_image(img, 512))
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let vol = store.volume(uuid(1)).unwrap();
            for i in 0..40u64 {
                assert_eq!(
                    vol.read(i * 40, 1).await.unwrap(),
                    fill(512, i as u8),
                    "cut {cut}"
                );
            }
            assert_eq!(vol.allocated_bytes(), 40 * (16 << 10));
        }
    }
}

#[tokio::test]
async fn fua_write_and_flush_are_durable_across_power_loss() {
    let mut rng = Rng::new(7);
    for round in 0..20 {
        let dev = SimDevice::new(16 << 20, 512);
        let store = ThinStore::format(dev.clone(), 64 << 10).await.unwrap();
        let vol = store
            .create_volume(uuid(1), "f", 4 << 20, true)
            .await
            .unwrap();
        vol.write(0, fill(512, 1), false).await.unwrap();
        vol.flush().await.unwrap();
        vol.write(1000, fill(1024, 2), true).await.unwrap(); // allocating FUA write
        vol.write(2000, fill(512, 3), false).await.unwrap(); // not flushed
        vol.write(1, fill(512, 4), false).await.unwrap(); // not flushed, allocated cluster
        let img = dev.crash_image(&mut rng);
        let store = ThinStore::open(SimDevice::from_image(img, 512))
            .await
            .unwrap();
        let vol = store.volume(uuid(1)).unwrap();
        assert_eq!(vol.read(0, 1).await.unwrap(), fill(512, 1), "round {round}");
        assert_eq!(
            vol.read(1000, 2).await.unwrap(),
            fill(1024, 2),
            "round {round}"
        );
        let r = vol.read(2000, 1).await.unwrap();
        assert!(is_zero(&r) || r == fill(512, 3), "round {round}");
        let r = vol.read(1, 1).await.unwrap();
        assert!(is_zero(&r) || r == fill(512, 4), "round {round}");
    }
}

/// A cluster freed by one volume and reused by another: whatever part of the new owner's
/// flush (pre-flush, journal page, post-flush) the power cut interrupts, and whatever subset
/// of the unflushed writes survives, the new owner never sees the old owner's data. This fails
/// if a mapping can become durable before the data (and zeroes) it points at.
#[tokio::test]
async fn mapping_is_never_durable_before_its_data() {
    let mut rng = Rng::new(42);
    let mut remapped = 0;
    for cut in 0..4 {
        for trial in 0..60 {
            let dev = SimDevice::new(4 << 20, 512);
            let store = ThinStore::format(dev.clone(), 16 << 10).await.unwrap();
            let a = store
                .create_volume(uuid(1), "a", 16 << 10, true)
                .await
                .unwrap();
            let b = store
                .create_volume(uuid(2), "b", 16 << 10, true)
                .await
                .unwrap();
            a.write(0, IoBuf::from_slice(&[0xaa; 16 << 10]), false)
                .await
                .unwrap();
            a.flush().await.unwrap();
            store.destroy(uuid(1)).await.unwrap();
            // Reuses the cluster A had (allocation is next-fit from the lowest free bit).
            b.write(5, fill(512, 1), false).await.unwrap();
            dev.cut_after(cut);
            let flushed = b.flush().await.is_ok();
            let img = dev.crash_image(&mut rng);
            let store = ThinStore::open(SimDevice::from_image(img, 512))
                .await
                .unwrap();
            assert!(store.volume(uuid(1)).is_none());
            let b = store.volume(uuid(2)).unwrap();
            let r = b.read(0, 32).await.unwrap();
            for (i, blk) in r.chunks(512).enumerate() {
                let ok = is_zero(blk) || (i == 5 && blk == &fill(512, 1)[..]);
                assert!(ok, "cut {cut} trial {trial}: block {i} shows stale data");
            }
            if flushed {
                assert_eq!(&r[5 * 512..6 * 512], &fill(512, 1)[..]);
            }
            remapped += usize::from(b.allocated_bytes() > 0);
        }
    }
    assert!(remapped > 20, "the mapping survived only {remapped} times");
}

// ---------------------------------------------------------------------------------------------
// concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_writes_allocate_a_cluster_once() {
    let (_dev, store) = small_store(32 << 20, 512, 64 << 10).await;
    let vol = store
        .create_volume(uuid(1), "c", 4 << 20, true)
        .await
        .unwrap();
    for round in 0..10u64 {
        let base = round * 128;
        let mut tasks = Vec::new();
        for b in 0..64u64 {
            let vol = Arc::clone(&vol);
            tasks.push(tokio::spawn(async move {
                vol.write(base + b * 2, fill(512, b as u8), false)
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(vol.allocated_bytes(), (round + 1) * 65536, "round {round}");
        for b in 0..64u64 {
            assert_eq!(vol.read(base + b * 2, 1).await.unwrap(), fill(512, b as u8));
            assert!(is_zero(&vol.read(base + b * 2 + 1, 1).await.unwrap()));
        }
    }
    assert_eq!(store.used_bytes(), 10 * 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_io_metadata_and_flushes() {
    let dev = SimDevice::new(48 << 20, 512);
    let o = FormatOptions {
        journal_bytes: Some(4 * 4096),
        ..opts(16 << 10)
    };
    let store = ThinStore::format_with(dev.clone(), &o).await.unwrap();
    let nvol = 4u8;
    let mut tasks = Vec::new();
    for v in 0..nvol {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let vol = store
                .create_volume(uuid(v), &format!("v{v}"), 2 << 20, v % 2 == 0)
                .await
                .unwrap();
            let mut rng = Rng::new(u64::from(v) + 100);
            // lba -> last byte seed written (0 = zero)
            let mut model: HashMap<u64, u8> = HashMap::new();
            for i in 0..400u32 {
                let lba = rng.below(4096);
                match rng.below(10) {
                    0 => {
                        let first = lba & !31;
                        vol.deallocate(first, 32).await.unwrap();
                        for l in first..first + 32 {
                            model.insert(l, 0);
                        }
                    }
                    1 => vol.flush().await.unwrap(),
                    _ => {
                        let seed = (i % 250) as u8 + 1;
                        vol.write(lba, fill(512, seed), false).await.unwrap();
                        model.insert(lba, seed);
                    }
                }
                if i % 40 == 0 {
                    // Churn: a temporary volume that comes and goes.
                    let t = uuid(200 + v);
                    let tmp = store.create_volume(t, "tmp", 1 << 20, true).await.unwrap();
                    tmp.write(rng.below(2048), fill(4096, 0xee), false)
                        .await
                        .unwrap();
                    store.destroy(t).await.unwrap();
                }
            }
            vol.flush().await.unwrap();
            (v, model)
        }));
    }
    let mut models = Vec::new();
    for t in tasks {
        models.push(t.await.unwrap());
    }
    assert!(store.stats().checkpoints > 1);
    let check = |store: Arc<ThinStore>, models: Vec<(u8, HashMap<u64, u8>)>| async move {
        for (v, model) in models {
            let vol = store.volume(uuid(v)).unwrap();
            for (lba, seed) in model {
                let r = vol.read(lba, 1).await.unwrap();
                if seed == 0 {
                    assert!(is_zero(&r), "vol {v} lba {lba}");
                } else {
                    assert_eq!(r, fill(512, seed), "vol {v} lba {lba}");
                }
            }
        }
        assert_eq!(store.list().len(), nvol as usize);
        let allocated: u64 = store.list().iter().map(|v| v.allocated_bytes).sum();
        let reserved: u64 = store
            .list()
            .iter()
            .filter(|v| !v.thin)
            .map(|v| v.size - v.allocated_bytes)
            .sum();
        assert_eq!(store.used_bytes(), allocated + reserved);
    };
    check(Arc::clone(&store), models.clone()).await;
    drop(store);
    // Everything was flushed: a power cut now loses nothing.
    let img = dev.crash_image(&mut Rng::new(3));
    check(
        ThinStore::open(SimDevice::from_image(img, 512))
            .await
            .unwrap(),
        models,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// model-checked power loss

/// Content of a block written by the power-loss workload: identifies the volume, the block
/// and the operation, with a checksum over the whole block.
fn tagged_block(bs: usize, tag: u32, lba: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    b[0..4].copy_from_slice(b"TAGD");
    b[4..8].copy_from_slice(&tag.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    let mut r = Rng::new(seq ^ (lba << 20) ^ u64::from(tag));
    for x in b[28..].iter_mut() {
        *x = r.next() as u8;
    }
    let crc = crc32c::crc32c(&b[..24]);
    let crc = crc32c::crc32c_append(crc, &b[28..]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a block: `Ok(None)` for zeroes, `Ok(Some((tag, lba, seq)))` for a valid tagged
/// block, `Err` for anything else.
fn parse_block(b: &[u8]) -> Result<Option<(u32, u64, u64)>, String> {
    if is_zero(b) {
        return Ok(None);
    }
    if &b[0..4] != b"TAGD" {
        return Err("garbage block".into());
    }
    let crc = crc32c::crc32c(&b[..24]);
    let crc = crc32c::crc32c_append(crc, &b[28..]);
    if b[24..28] != crc.to_le_bytes() {
        return Err("torn or corrupt block".into());
    }
    let tag = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let lba = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let seq = u64::from_le_bytes(b[16..24].try_into().unwrap());
    Ok(Some((tag, lba, seq)))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BlockOp {
    Write(u64),
    Zero(u64),
}

impl BlockOp {
    fn seq(self) -> u64 {
        match self {
            BlockOp::Write(s) | BlockOp::Zero(s) => s,
        }
    }
}

#[derive(Default, Debug)]
struct VolModel {
    tag: u32,
    size_acked: u64,
    size_max: u64,
    created_acked: bool,
    destroy_issued: bool,
    destroy_acked: bool,
    flushed_upto: u64,
    ops: HashMap<u64, Vec<BlockOp>>,
}

impl VolModel {
    /// Checks one block read after the crash.
    fn check(&self, lba: u64, data: &[u8]) -> Result<(), String> {
        let ops: &[BlockOp] = self.ops.get(&lba).map(|v| &v[..]).unwrap_or(&[]);
        let req = ops.iter().rev().find(|o| o.seq() <= self.flushed_upto);
        let allowed: Vec<BlockOp> = match req {
            Some(r) => ops.iter().copied().filter(|o| o.seq() >= r.seq()).collect(),
            None => ops.to_vec(),
        };
        let zero_ok = req.is_none() || allowed.iter().any(|o| matches!(o, BlockOp::Zero(_)));
        match parse_block(data)? {
            None if zero_ok => Ok(()),
            None => Err(format!("reads zero, expected one of {allowed:?}")),
            Some((tag, l, seq)) => {
                if tag != self.tag || l != lba {
                    return Err(format!("holds block {l} of volume tag {tag}"));
                }
                if allowed.contains(&BlockOp::Write(seq)) {
                    Ok(())
                } else {
                    Err(format!("holds write {seq}, expected one of {allowed:?}"))
                }
            }
        }
    }
}

/// Runs a random workload on `store` until the simulated power cut stops it, keeping a model
/// of what must survive.
async fn power_loss_workload(
    store: &Arc<ThinStore>,
    rng: &mut Rng,
    models: &mut HashMap<[u8; 16], VolModel>,
    seq: &mut u64,
    next_tag: &mut u32,
) {
    let bs = 512u64;
    let cs_blocks = u64::from(store.cluster_size()) / bs;
    let base = [uuid(1), uuid(2)];
    for u in base {
        let m = models.entry(u).or_insert_with(|| {
            *next_tag += 1;
            VolModel {
                tag: *next_tag,
                size_max: 256 << 10,
                ..VolModel::default()
            }
        });
        let size = m.size_acked.max(256 << 10);
        match store
            .create_volume(u, &format!("base{}", u[15]), size, true)
            .await
        {
            Ok(_) => m.created_acked = true,
            Err(_) => return,
        }
        m.size_acked = m.size_acked.max(size);
    }
    for _ in 0..1000 {
        *seq += 1;
        let s = *seq;
        let which = if rng.chance(85) {
            base[rng.below(2) as usize]
        } else {
            // a temporary volume: create (or reuse) one
            let t = uuid(100 + rng.below(3) as u8);
            let exists = models.get(&t).is_some_and(|m| !m.destroy_issued);
            if !exists {
                *next_tag += 1;
                models.insert(
                    t,
                    VolModel {
                        tag: *next_tag,
                        size_max: 128 << 10,
                        ..VolModel::default()
                    },
                );
                if store
                    .create_volume(t, "tmp", 128 << 10, rng.chance(70))
                    .await
                    .is_err()
                {
                    return;
                }
                models.get_mut(&t).unwrap().created_acked = true;
                models.get_mut(&t).unwrap().size_acked = 128 << 10;
            }
            t
        };
        let Some(vol) = store.volume(which) else {
            return;
        };
        let m = models.get_mut(&which).unwrap();
        let nblocks = m.size_acked / bs;
        let r = rng.below(100);
        let ok = if r < 60 {
            // write 1..=8 blocks (sometimes crossing a cluster boundary)
            let n = 1 + rng.below(8).min(nblocks - 1);
            let lba = rng.below(nblocks - n + 1);
            let mut data = Vec::new();
            for l in lba..lba + n {
                data.extend(tagged_block(bs as usize, m.tag, l, s));
                m.ops.entry(l).or_default().push(BlockOp::Write(s));
            }
            vol.write(lba, IoBuf::from_slice(&data), rng.chance(5))
                .await
                .is_ok()
        } else if r < 70 {
            // deallocate a range (whole clusters get unmapped, edges zeroed)
            let n = 1 + rng.below(3 * cs_blocks).min(nblocks - 1);
            let lba = rng.below(nblocks - n + 1);
            for l in lba..lba + n {
                m.ops.entry(l).or_default().push(BlockOp::Zero(s));
            }
            vol.deallocate(lba, n).await.is_ok()
        } else if r < 85 {
            let ok = vol.flush().await.is_ok();
            if ok {
                m.flushed_upto = s;
            }
            ok
        } else if r < 90 {
            // grow
            let new = m.size_acked + 64 * bs * (1 + rng.below(4));
            m.size_max = m.size_max.max(new);
            let ok = store.resize(which, new).await.is_ok();
            if ok {
                m.size_acked = new;
            }
            ok
        } else if which[15] >= 100 && !m.destroy_issued {
            m.destroy_issued = true;
            let ok = store.destroy(which).await.is_ok();
            if ok {
                m.destroy_acked = true;
            }
            ok
        } else {
            // a flush of the whole store covers every volume
            let ok = store.flush().await.is_ok();
            if ok {
                for m in models.values_mut() {
                    m.flushed_upto = s;
                }
            }
            ok
        };
        if !ok {
            return;
        }
    }
}

async fn verify_after_power_loss(
    store: &Arc<ThinStore>,
    models: &mut HashMap<[u8; 16], VolModel>,
    context: &str,
) {
    let bs = 512u64;
    let listed: HashMap<[u8; 16], VolumeInfo> =
        store.list().into_iter().map(|v| (v.uuid, v)).collect();
    for (u, m) in models.iter() {
        let exists = listed.contains_key(u);
        if m.destroy_acked {
            assert!(!exists, "{context}: destroyed volume {u:?} is back");
            continue;
        }
        if m.created_acked && !m.destroy_issued {
            assert!(exists, "{context}: created volume {u:?} is missing");
        }
        let Some(info) = listed.get(u) else { continue };
        assert!(
            info.size <= m.size_max.max(m.size_acked),
            "{context}: volume {u:?} size {} (acked {}, max {})",
            info.size,
            m.size_acked,
            m.size_max
        );
        if m.created_acked {
            assert!(info.size >= m.size_acked, "{context}: acked resize lost");
        }
        let vol = store.volume(*u).unwrap();
        let n = info.size / bs;
        let data = vol.read(0, n as u32).await.unwrap();
        for lba in 0..n {
            let b = &data[(lba * bs) as usize..((lba + 1) * bs) as usize];
            if let Err(e) = m.check(lba, b) {
                panic!("{context}: volume {} lba {lba}: {e}", m.tag);
            }
        }
    }
    // Every listed volume is one the workload created.
    for u in listed.keys() {
        assert!(models.contains_key(u), "{context}: unknown volume {u:?}");
    }
    // Accounting is consistent.
    let allocated: u64 = listed.values().map(|v| v.allocated_bytes).sum();
    let cs = u64::from(store.cluster_size());
    let reserved: u64 = listed
        .values()
        .filter(|v| !v.thin)
        .map(|v| v.size.div_ceil(cs) * cs - v.allocated_bytes)
        .sum();
    assert_eq!(
        store.used_bytes(),
        allocated + reserved,
        "{context}: accounting"
    );
}

/// Random workloads cut by a power loss at a random device operation; the image that
/// survives keeps a random subset of the unflushed writes (torn at 512-byte granularity). Each
/// recovered store is verified against the model, then the next round continues on it, so
/// recovery is also exercised on top of previous recoveries.
#[tokio::test]
async fn power_loss_model_check() {
    let rounds_per_seed = 6;
    let seeds = 12u64;
    let mut cuts = 0;
    for seed in 0..seeds {
        let mut rng = Rng::new(seed + 1000);
        let dev = SimDevice::new(4 << 20, 512);
        let o = FormatOptions {
            journal_bytes: Some((2 + rng.below(6)) * 4096),
            max_volumes: Some(8),
            ..opts(16 << 10)
        };
        ThinStore::format_with(dev.clone(), &o).await.unwrap();
        let mut image = dev.image();
        let mut models: HashMap<[u8; 16], VolModel> = HashMap::new();
        let mut seq = 0u64;
        let mut next_tag = 0u32;
        for round in 0..rounds_per_seed {
            let context = format!("seed {seed} round {round}");
            let d = SimDevice::from_image(image.clone(), 512);
            let store = ThinStore::open(d.clone())
                .await
                .unwrap_or_else(|e| panic!("{context}: open: {e}"));
            // Everything recovered is the new baseline: it was all made durable by open.
            d.cut_after(20 + rng.below(700));
            power_loss_workload(&store, &mut rng, &mut models, &mut seq, &mut next_tag).await;
            if d.is_dead() {
                cuts += 1;
            }
            drop(store);
            image = d.crash_image(&mut rng);
            let recovered = ThinStore::open(SimDevice::from_image(image.clone(), 512))
                .await
                .unwrap_or_else(|e| panic!("{context}: recovery: {e}"));
            verify_after_power_loss(&recovered, &mut models, &context).await;
            // The recovered state becomes the new baseline of the model: each block's
            // surviving content is now its only allowed version.
            rebase_models(&recovered, &mut models, &mut seq).await;
        }
    }
    assert!(
        cuts >= seeds * rounds_per_seed / 2,
        "only {cuts} workloads hit the power cut"
    );
}

/// After a verified recovery, resets each model to what the store now holds.
async fn rebase_models(
    store: &Arc<ThinStore>,
    models: &mut HashMap<[u8; 16], VolModel>,
    seq: &mut u64,
) {
    let bs = 512u64;
    let listed: HashMap<[u8; 16], VolumeInfo> =
        store.list().into_iter().map(|v| (v.uuid, v)).collect();
    models.retain(|u, _| listed.contains_key(u));
    *seq += 1;
    let s = *seq;
    for (u, m) in models.iter_mut() {
        let info = &listed[u];
        let vol = store.volume(*u).unwrap();
        let n = info.size / bs;
        let data = vol.read(0, n as u32).await.unwrap();
        m.ops.clear();
        for lba in 0..n {
            let b = &data[(lba * bs) as usize..((lba + 1) * bs) as usize];
            let op = match parse_block(b).unwrap() {
                None => BlockOp::Zero(s),
                Some((_, _, wseq)) => BlockOp::Write(wseq),
            };
            m.ops.insert(lba, vec![op]);
        }
        m.flushed_upto = s;
        m.size_acked = info.size;
        m.size_max = info.size;
        m.created_acked = true;
        m.destroy_issued = false;
        m.destroy_acked = false;
    }
}
