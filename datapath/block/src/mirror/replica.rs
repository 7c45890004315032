//! Replicas as the mirror sees them: the [`ReplicaConnector`] that (re)opens one, the
//! [`LocalReplica`] connector for an in-process device, and the mapping of the volume's data
//! space onto a replica device (everything shifted past the 1 MiB label reserve, in the
//! replica's own block size, each I/O bounded by the I/O timeout).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{BlockDevice, BlockError, IoBuf};

use super::label::{RESERVE_BYTES, ReplicaId};

/// Opens a replica. The mirror calls [`ReplicaConnector::connect`] at assembly and again, with
/// backoff, for a faulted replica until it comes back; each call must return a fresh handle to
/// the same replica (same data, same label), or fail.
///
/// A replica is any [`BlockDevice`]: a local thin volume, or a remote replica reached over
/// NVMe/TCP (the node agent wraps the host library's remote namespace in a connector). The
/// mirror knows nothing about how the device is reached.
#[async_trait]
pub trait ReplicaConnector: Send + Sync {
    /// The replica's UUID, also recorded in its label.
    fn replica_id(&self) -> ReplicaId;

    /// A short human-readable description (node, address or backend) for logs and status.
    fn describe(&self) -> String;

    /// Opens (or reopens) the replica device.
    async fn connect(&self) -> Result<Arc<dyn BlockDevice>, BlockError>;
}

/// A connector for a device that lives in this process (for example a local thin volume):
/// `connect` hands out the same device every time.
pub struct LocalReplica {
    id: ReplicaId,
    dev: Arc<dyn BlockDevice>,
}

impl LocalReplica {
    /// A connector for `dev`, known to the mirror as replica `id`.
    pub fn new(id: ReplicaId, dev: Arc<dyn BlockDevice>) -> LocalReplica {
        LocalReplica { id, dev }
    }
}

#[async_trait]
impl ReplicaConnector for LocalReplica {
    fn replica_id(&self) -> ReplicaId {
        self.id
    }

    fn describe(&self) -> String {
        format!("local {}", self.dev.describe())
    }

    async fn connect(&self) -> Result<Arc<dyn BlockDevice>, BlockError> {
        Ok(Arc::clone(&self.dev))
    }
}

/// Runs a replica operation under the optional I/O timeout.
pub(crate) async fn timed<T>(
    timeout: Option<Duration>,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, BlockError>>,
) -> Result<T, BlockError> {
    match timeout {
        None => fut.await,
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => Err(BlockError::Io {
                op,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("replica {op} timed out after {t:?}"),
                ),
            }),
        },
    }
}

/// Converts a data-space byte range into the replica's LBA and block count.
fn map(dev: &dyn BlockDevice, off: u64, len: u64) -> Result<(u64, u64), BlockError> {
    let bs = u64::from(dev.block_size());
    let dev_off = off + RESERVE_BYTES;
    if !dev_off.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(BlockError::Misaligned {
            what: "mirror I/O on replica",
            value: if dev_off.is_multiple_of(bs) {
                len
            } else {
                dev_off
            },
            block_size: dev.block_size(),
        });
    }
    Ok((dev_off / bs, len / bs))
}

/// Reads `len` bytes at data offset `off` of a replica.
pub(crate) async fn read_data(
    dev: &dyn BlockDevice,
    off: u64,
    len: u64,
    timeout: Option<Duration>,
) -> Result<IoBuf, BlockError> {
    let (lba, n) = map(dev, off, len)?;
    let n = u32::try_from(n).map_err(|_| {
        BlockError::InvalidSpec(format!("read of {len} bytes too large for a replica"))
    })?;
    timed(timeout, "read", dev.read(lba, n)).await
}

/// Writes `data` at data offset `off` of a replica.
pub(crate) async fn write_data(
    dev: &dyn BlockDevice,
    off: u64,
    data: IoBuf,
    fua: bool,
    timeout: Option<Duration>,
) -> Result<(), BlockError> {
    let (lba, _) = map(dev, off, data.len() as u64)?;
    timed(timeout, "write", dev.write(lba, data, fua)).await
}

/// Zeroes or deallocates `len` bytes at data offset `off` of a replica.
pub(crate) async fn zero_data(
    dev: &dyn BlockDevice,
    off: u64,
    len: u64,
    kind: ZeroKind,
    timeout: Option<Duration>,
) -> Result<(), BlockError> {
    let (lba, n) = map(dev, off, len)?;
    match kind {
        ZeroKind::WriteZeroes { deallocate } => {
            timed(
                timeout,
                "write zeroes",
                dev.write_zeroes(lba, n, deallocate),
            )
            .await
        }
        ZeroKind::Deallocate => timed(timeout, "deallocate", dev.deallocate(lba, n)).await,
    }
}

/// Asks a replica device to re-read its capacity (after it grew); returns it in bytes.
pub(crate) async fn refresh_size(
    dev: &dyn BlockDevice,
    timeout: Option<Duration>,
) -> Result<u64, BlockError> {
    timed(timeout, "size refresh", dev.refresh_size()).await
}

/// Flushes a replica.
pub(crate) async fn flush(
    dev: &dyn BlockDevice,
    timeout: Option<Duration>,
) -> Result<(), BlockError> {
    timed(timeout, "flush", dev.flush()).await
}

/// Which zeroing operation a mutation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroKind {
    /// `write_zeroes`, with its deallocate hint.
    WriteZeroes {
        /// The deallocate hint.
        deallocate: bool,
    },
    /// `deallocate`.
    Deallocate,
}

/// Connects with the connect timeout.
pub(crate) async fn connect(
    c: &dyn ReplicaConnector,
    timeout: Duration,
) -> Result<Arc<dyn BlockDevice>, BlockError> {
    match tokio::time::timeout(timeout, c.connect()).await {
        Ok(r) => r,
        Err(_) => Err(BlockError::Gone(format!(
            "connect to {} timed out after {timeout:?}",
            c.describe()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RamDevice;

    #[tokio::test]
    async fn data_space_is_shifted_past_the_reserve() {
        let ram = Arc::new(RamDevice::new(4 << 20, 512).unwrap());
        let c = LocalReplica::new([9; 16], ram.clone());
        assert_eq!(c.replica_id(), [9; 16]);
        assert!(c.describe().starts_with("local ram"));
        let dev = c.connect().await.unwrap();
        write_data(&*dev, 4096, IoBuf::from_slice(&[7u8; 4096]), false, None)
            .await
            .unwrap();
        let raw = ram.read((RESERVE_BYTES + 4096) / 512, 8).await.unwrap();
        assert!(raw.iter().all(|&b| b == 7));
        let back = read_data(&*dev, 4096, 4096, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(back.iter().all(|&b| b == 7));
        zero_data(&*dev, 4096, 512, ZeroKind::Deallocate, None)
            .await
            .unwrap();
        assert!(
            read_data(&*dev, 4096, 512, None)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
        assert!(
            read_data(&*dev, 100, 512, None).await.is_err(),
            "misaligned"
        );
    }
}
