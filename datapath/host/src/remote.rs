//! [`RemoteNamespace`]: a namespace of a remote controller seen as a
//! [`ferrite_block::BlockDevice`], so that the block layer (the mirror) can use a replica on
//! another node exactly like a local one.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ferrite_block::error::{blocks_in, check_range};
use ferrite_block::{BlockDevice, BlockError, IoBuf};
use ferrite_protocol::Status;

use crate::controller::{Controller, NamespaceGeometry};
use crate::error::HostError;

/// Namespace `nsid` of a connected [`Controller`], as a block device.
///
/// The capacity is read at creation and again by [`BlockDevice::refresh_size`] (after the
/// remote namespace grew); clones share it.
#[derive(Debug, Clone)]
pub struct RemoteNamespace {
    ctrl: Arc<Controller>,
    nsid: u32,
    block_size: u32,
    num_blocks: Arc<AtomicU64>,
}

impl RemoteNamespace {
    /// Reads the namespace's geometry (Identify Namespace: LBADS and NSZE).
    pub async fn new(ctrl: Arc<Controller>, nsid: u32) -> Result<RemoteNamespace, HostError> {
        ctrl.identify_namespace(nsid).await?;
        let NamespaceGeometry {
            block_size,
            num_blocks,
        } = ctrl.namespace_geometry(nsid).await?;
        Ok(RemoteNamespace {
            ctrl,
            nsid,
            block_size,
            num_blocks: Arc::new(AtomicU64::new(num_blocks)),
        })
    }

    /// The controller this namespace is reached through.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrl
    }

    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    fn check(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        check_range(lba, nblocks, self.num_blocks())
    }

    fn map(&self, op: &'static str, lba: u64, nblocks: u64, e: HostError) -> BlockError {
        to_block_error(op, lba, nblocks, self.num_blocks(), e)
    }
}

/// Maps a host error to the block layer's: LBA range errors stay range errors, a dead
/// connection means the device is gone, the rest are I/O errors carrying the host error.
fn to_block_error(
    op: &'static str,
    lba: u64,
    nblocks: u64,
    capacity: u64,
    e: HostError,
) -> BlockError {
    match &e {
        HostError::Nvme { status, .. } if *status == Status::LBA_OUT_OF_RANGE => {
            BlockError::OutOfRange {
                lba,
                nblocks,
                capacity,
            }
        }
        HostError::Nvme { status, .. } if *status == Status::CAPACITY_EXCEEDED => {
            BlockError::NoSpace
        }
        _ if e.is_connection_error() => BlockError::Gone(format!("{op}: {e}")),
        HostError::Timeout(_) => BlockError::Io {
            op,
            source: io::Error::new(io::ErrorKind::TimedOut, e),
        },
        _ => BlockError::Io {
            op,
            source: io::Error::other(e),
        },
    }
}

#[async_trait]
impl BlockDevice for RemoteNamespace {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn volatile_cache(&self) -> bool {
        self.ctrl.identify().vwc
    }

    /// The controller's connection failure (closed, reset, keep-alive timeout), if any.
    fn failure(&self) -> Option<String> {
        self.ctrl.failure().map(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!(
            "nvme-tcp {} {} nsid {}",
            self.ctrl.addr(),
            self.ctrl.subnqn(),
            self.nsid
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        self.check(lba, u64::from(nblocks))?;
        self.ctrl
            .read(self.nsid, lba, nblocks)
            .await
            .map_err(|e| self.map("read", lba, u64::from(nblocks), e))
    }

    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        let nblocks = blocks_in("write buffer length", data.len(), self.block_size)?;
        self.check(lba, nblocks)?;
        self.ctrl
            .write_buf(self.nsid, lba, data, fua)
            .await
            .map_err(|e| self.map("write", lba, nblocks, e))
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.ctrl
            .flush(self.nsid)
            .await
            .map_err(|e| self.map("flush", 0, 0, e))
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError> {
        self.check(lba, nblocks)?;
        self.ctrl
            .write_zeroes(self.nsid, lba, nblocks, deallocate)
            .await
            .map_err(|e| self.map("write zeroes", lba, nblocks, e))
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.check(lba, nblocks)?;
        if nblocks == 0 {
            return Ok(());
        }
        self.ctrl
            .deallocate(self.nsid, &[(lba, nblocks)])
            .await
            .map_err(|e| self.map("deallocate", lba, nblocks, e))
    }

    /// Re-reads NSZE with Identify Namespace (the block size must not have changed).
    async fn refresh_size(&self) -> Result<u64, BlockError> {
        let ns = self
            .ctrl
            .identify_namespace(self.nsid)
            .await
            .map_err(|e| self.map("identify namespace", 0, 0, e))?;
        if ns.nsze == 0 || (1u64 << ns.lbads.min(63)) != u64::from(self.block_size) {
            return Err(BlockError::Gone(format!(
                "{}: namespace changed: NSZE {} LBADS {} (block size was {})",
                self.describe(),
                ns.nsze,
                ns.lbads,
                self.block_size
            )));
        }
        self.num_blocks.store(ns.nsze, Ordering::Release);
        Ok(self.size_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let nvme = |status| HostError::Nvme { op: "read", status };
        assert!(matches!(
            to_block_error("read", 5, 2, 6, nvme(Status::LBA_OUT_OF_RANGE)),
            BlockError::OutOfRange {
                lba: 5,
                nblocks: 2,
                capacity: 6
            }
        ));
        assert!(matches!(
            to_block_error("write", 0, 1, 6, nvme(Status::CAPACITY_EXCEEDED)),
            BlockError::NoSpace
        ));
        assert!(matches!(
            to_block_error("read", 0, 1, 6, HostError::Closed),
            BlockError::Gone(_)
        ));
        assert!(matches!(
            to_block_error("read", 0, 1, 6, HostError::Terminated { fes: 1, fei: 0 }),
            BlockError::Gone(_)
        ));
        match to_block_error("read", 0, 1, 6, HostError::Timeout("read")) {
            BlockError::Io { op: "read", source } => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            to_block_error("read", 0, 1, 6, nvme(Status::INTERNAL_ERROR)),
            BlockError::Io { .. }
        ));
    }
}
