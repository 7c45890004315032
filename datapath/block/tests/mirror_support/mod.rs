//! Shared test support for the mirror tests: a fault-injecting wrapper around a real device
//! (not a mock: data goes to the wrapped RAM or file device) and its connector, plus helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferrite_block::mirror::{
    Mirror, MirrorOptions, MirrorStatus, RESERVE_BYTES, ReplicaConnector, ReplicaId, ReplicaState,
};
use ferrite_block::{BlockDevice, BlockError, IoBuf, RamDevice};

pub const MIB: u64 = 1 << 20;

/// How a [`Faulty`] device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Pass everything through.
    Ok = 0,
    /// Every I/O fails with EIO; connect still succeeds.
    FailIo = 1,
    /// Every I/O fails as "device gone" and connect fails (a lost remote replica).
    Disconnected = 2,
    /// Every I/O hangs forever (a stuck replica).
    Hang = 3,
    /// Writes to the label reserve (the first MiB) fail with EIO; everything else passes.
    FailLabelWrites = 4,
}

/// A fault-injecting wrapper around a real device.
pub struct Faulty {
    inner: Arc<dyn BlockDevice>,
    mode: AtomicU8,
    /// Data-area reads (outside the label reserve) that reached the device.
    pub data_reads: AtomicU64,
    /// Bytes of data-area writes that reached the device.
    pub data_write_bytes: AtomicU64,
    /// Extra delay added to every write, in milliseconds.
    pub write_delay_ms: AtomicU64,
    /// Flushes that reached the device.
    pub flushes: AtomicU64,
    /// Data-area FUA writes that reached the device.
    pub fua_writes: AtomicU64,
    /// While `Disconnected`, also report the loss through `BlockDevice::failure` (as a remote
    /// device whose connection closed does) instead of only failing I/O.
    pub announces_loss: std::sync::atomic::AtomicBool,
    /// Data-area writes in progress now, and the most seen at once.
    pub writes_in_flight: AtomicU64,
    pub max_writes_in_flight: AtomicU64,
}

impl Faulty {
    pub fn wrap(inner: Arc<dyn BlockDevice>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            mode: AtomicU8::new(Mode::Ok as u8),
            data_reads: AtomicU64::new(0),
            data_write_bytes: AtomicU64::new(0),
            write_delay_ms: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
            announces_loss: std::sync::atomic::AtomicBool::new(false),
            writes_in_flight: AtomicU64::new(0),
            max_writes_in_flight: AtomicU64::new(0),
        })
    }

    pub fn ram(size: u64) -> Arc<Faulty> {
        Faulty::wrap(Arc::new(RamDevice::new(size, 4096).expect("ram device")))
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::FailIo,
            2 => Mode::Disconnected,
            3 => Mode::Hang,
            4 => Mode::FailLabelWrites,
            _ => Mode::Ok,
        }
    }

    pub fn inner(&self) -> &Arc<dyn BlockDevice> {
        &self.inner
    }

    pub fn reads(&self) -> u64 {
        self.data_reads.load(Ordering::SeqCst)
    }

    async fn gate(&self, op: &'static str) -> Result<(), BlockError> {
        match self.mode() {
            Mode::Ok | Mode::FailLabelWrites => Ok(()),
            Mode::FailIo => Err(BlockError::Io {
                op,
                source: std::io::Error::from_raw_os_error(5),
            }),
            Mode::Disconnected => Err(BlockError::Gone(format!("{op}: injected disconnect"))),
            Mode::Hang => std::future::pending().await,
        }
    }

    fn in_data(&self, lba: u64) -> bool {
        lba * u64::from(self.inner.block_size()) >= RESERVE_BYTES
    }
}

#[async_trait]
impl BlockDevice for Faulty {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    fn failure(&self) -> Option<String> {
        (self.mode() == Mode::Disconnected && self.announces_loss.load(Ordering::SeqCst))
            .then(|| "injected: connection closed".to_string())
    }
    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        self.gate("read").await?;
        if self.in_data(lba) {
            self.data_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.read(lba, nblocks).await
    }
    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        self.gate("write").await?;
        let in_data = self.in_data(lba);
        if !in_data && self.mode() == Mode::FailLabelWrites {
            return Err(BlockError::Io {
                op: "write",
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        if in_data {
            let now = self.writes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_writes_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if in_data {
            self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if delay > 0 {
            self.gate("write").await?;
        }
        if self.in_data(lba) {
            self.data_write_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            if fua {
                self.fua_writes.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.inner.write(lba, data, fua).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.gate("flush").await?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, n: u64, dealloc: bool) -> Result<(), BlockError> {
        self.gate("write zeroes").await?;
        self.inner.write_zeroes(lba, n, dealloc).await
    }
    async fn deallocate(&self, lba: u64, n: u64) -> Result<(), BlockError> {
        self.gate("deallocate").await?;
        self.inner.deallocate(lba, n).await
    }
}

/// A connector to a [`Faulty`] device: connect fails while it is `Disconnected`.
pub struct FaultyConnector {
    pub id: ReplicaId,
    pub dev: Arc<Faulty>,
}

/// A connector for replica `[id; 16]` on `dev`.
pub fn connector(id: u8, dev: &Arc<Faulty>) -> Arc<dyn ReplicaConnector> {
    Arc::new(FaultyConnector {
        id: [id; 16],
        dev: Arc::clone(dev),
    })
}

#[async_trait]
impl ReplicaConnector for FaultyConnector {
    fn replica_id(&self) -> ReplicaId {
        self.id
    }
    fn describe(&self) -> String {
        format!("replica-{}", self.id[0])
    }
    async fn connect(&self) -> Result<Arc<dyn BlockDevice>, BlockError> {
        if self.dev.mode() == Mode::Disconnected {
            return Err(BlockError::Gone("injected: unreachable".into()));
        }
        Ok(Arc::clone(&self.dev) as Arc<dyn BlockDevice>)
    }
}

/// Options with fast reconnects for tests.
pub fn fast_opts() -> MirrorOptions {
    MirrorOptions {
        reconnect_initial: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        io_timeout: Some(Duration::from_secs(5)),
        connect_timeout: Duration::from_secs(2),
        ..MirrorOptions::default()
    }
}

/// A deterministic block pattern.
pub fn pattern(len: usize, seed: u64) -> IoBuf {
    let v: Vec<u8> = (0..len)
        .map(|i| ((i as u64 / 7).wrapping_mul(31) ^ seed.wrapping_mul(131) ^ (i as u64)) as u8)
        .collect();
    IoBuf::from_slice(&v)
}

/// Polls the mirror status until `pred` holds, failing the test after `secs` seconds.
pub async fn wait_for(
    m: &Mirror,
    secs: u64,
    what: &str,
    pred: impl Fn(&MirrorStatus) -> bool,
) -> MirrorStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = m.status();
        if pred(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every replica healthy and no rebuild running.
pub fn all_healthy(s: &MirrorStatus) -> bool {
    s.replicas
        .iter()
        .all(|r| r.state == ReplicaState::Healthy && r.in_sync && r.rebuild.is_none())
}

/// Runs `fut` with a time bound so a hang fails the test instead of stalling it.
pub async fn bounded<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs} s"),
    }
}
