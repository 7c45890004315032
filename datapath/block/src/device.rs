//! The `BlockDevice` trait: the one interface between the NVMe/TCP target (or any other
//! consumer) and storage.

use async_trait::async_trait;

use crate::{BlockError, IoBuf};

/// A block device addressed in logical blocks of [`BlockDevice::block_size`] bytes.
///
/// Implementations must be safe to call concurrently from many tasks. Ranges are checked by
/// the implementation: an I/O that does not fit returns [`BlockError::OutOfRange`] and touches
/// nothing.
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Logical block size in bytes: a power of two, at least 512.
    fn block_size(&self) -> u32;

    /// Capacity in logical blocks.
    fn num_blocks(&self) -> u64;

    /// Capacity in bytes.
    fn size_bytes(&self) -> u64 {
        self.num_blocks() * u64::from(self.block_size())
    }

    /// Whether the device has a volatile cache that [`BlockDevice::flush`] makes durable.
    fn volatile_cache(&self) -> bool {
        true
    }

    /// A short human-readable description (backend kind and location) for logs.
    fn describe(&self) -> String;

    /// Reads `nblocks` blocks starting at `lba` into a new buffer of exactly
    /// `nblocks * block_size` bytes.
    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError>;

    /// Writes `data` (a whole number of blocks) at `lba`. With `fua`, the data is durable when
    /// this returns.
    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError>;

    /// Makes every write that completed before this call durable.
    async fn flush(&self) -> Result<(), BlockError>;

    /// Makes `nblocks` blocks at `lba` read back as zeroes. With `deallocate`, the device may
    /// also release the space behind them.
    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError>;

    /// Releases the space behind `nblocks` blocks at `lba`; afterwards they read as zeroes.
    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError>;

    /// Why the device is known to be unusable without trying I/O (a remote device whose
    /// connection closed or stopped answering keep-alives), if it is. Default: never known.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Re-reads the capacity from wherever it lives (a remote controller's Identify data,
    /// for instance) after the device may have grown, and returns it in bytes. Devices
    /// whose [`BlockDevice::num_blocks`] is always current need not override it.
    async fn refresh_size(&self) -> Result<u64, BlockError> {
        Ok(self.size_bytes())
    }
}
