//! [`RamDevice`]: a sparse in-memory block device for tests and benchmarks.
//!
//! The address space is cut into fixed chunks of [`RamDevice::CHUNK_SIZE`] bytes, each behind
//! its own reader-writer lock, so I/O to different chunks never contends. A chunk's memory is
//! allocated on the first write that stores non-zero data in it and freed again when a
//! write-zeroes or deallocate covers the whole chunk; never-written space reads as zeroes. A
//! 4 GiB device therefore costs a few kilobytes of bookkeeping until it is written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;

use crate::error::{blocks_in, check_range, check_size};
use crate::{BlockDevice, BlockError, IoBuf};

/// One chunk of the device: `None` until something non-zero is written into it.
type Chunk = RwLock<Option<Box<[u8]>>>;

/// A sparse, thread-safe block device held in memory. Contents are lost when it is dropped.
pub struct RamDevice {
    block_size: u32,
    num_blocks: u64,
    size_bytes: u64,
    chunks: Box<[Chunk]>,
    /// Bytes currently allocated to chunks.
    allocated: AtomicU64,
}

/// A piece of an I/O that falls into one chunk.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Chunk index.
    chunk: usize,
    /// Byte offset inside the chunk.
    offset: usize,
    /// Length in bytes.
    len: usize,
    /// Byte offset inside the caller's buffer.
    buf_offset: usize,
}

impl RamDevice {
    /// Size of one independently allocated and locked chunk.
    pub const CHUNK_SIZE: u64 = 1 << 20;

    /// A new all-zero device of `size_bytes` bytes in blocks of `block_size` bytes.
    ///
    /// `block_size` must be a power of two between 512 and 65536 and `size_bytes` a non-zero
    /// multiple of it. Allocates no data memory until written.
    pub fn new(size_bytes: u64, block_size: u32) -> Result<RamDevice, BlockError> {
        let num_blocks = check_size("RAM device size", size_bytes, block_size)?;
        let nchunks = usize::try_from(size_bytes.div_ceil(Self::CHUNK_SIZE)).map_err(|_| {
            BlockError::InvalidSpec(format!("RAM device size {size_bytes} is too large"))
        })?;
        let chunks = (0..nchunks).map(|_| RwLock::new(None)).collect();
        Ok(RamDevice {
            block_size,
            num_blocks,
            size_bytes,
            chunks,
            allocated: AtomicU64::new(0),
        })
    }

    /// Bytes of data memory currently allocated (a multiple of the chunk size, except for a
    /// short last chunk).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Length of chunk `idx` (only the last one may be short).
    fn chunk_len(&self, idx: usize) -> usize {
        let start = idx as u64 * Self::CHUNK_SIZE;
        // Fits in usize: at most CHUNK_SIZE.
        (self.size_bytes - start).min(Self::CHUNK_SIZE) as usize
    }

    /// Splits the byte range `[offset, offset + len)` (already range-checked) into segments.
    fn segments(&self, offset: u64, len: u64) -> impl Iterator<Item = Segment> + '_ {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = (pos / Self::CHUNK_SIZE) as usize;
            let in_chunk = pos % Self::CHUNK_SIZE;
            let n = (Self::CHUNK_SIZE - in_chunk).min(end - pos);
            let seg = Segment {
                chunk,
                offset: in_chunk as usize,
                len: n as usize,
                buf_offset: (pos - offset) as usize,
            };
            pos += n;
            Some(seg)
        })
    }

    fn byte_range(&self, lba: u64, nblocks: u64) -> Result<(u64, u64), BlockError> {
        check_range(lba, nblocks, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        Ok((lba * bs, nblocks * bs))
    }

    fn zero_range(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        let (offset, len) = self.byte_range(lba, nblocks)?;
        for seg in self.segments(offset, len) {
            let mut chunk = self.chunks[seg.chunk]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if seg.len == self.chunk_len(seg.chunk) {
                if let Some(mem) = chunk.take() {
                    self.allocated
                        .fetch_sub(mem.len() as u64, Ordering::Relaxed);
                }
            } else if let Some(mem) = chunk.as_mut() {
                mem[seg.offset..seg.offset + seg.len].fill(0);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for RamDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamDevice")
            .field("size_bytes", &self.size_bytes)
            .field("block_size", &self.block_size)
            .field("allocated", &self.allocated_bytes())
            .finish()
    }
}

#[async_trait]
impl BlockDevice for RamDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn volatile_cache(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!(
            "ram ({} bytes, {}-byte blocks)",
            self.size_bytes, self.block_size
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        let (offset, len) = self.byte_range(lba, u64::from(nblocks))?;
        // Fits in usize: bounded by the device size, whose chunk table fits in memory.
        let mut buf = IoBuf::zeroed(len as usize);
        for seg in self.segments(offset, len) {
            let chunk = self.chunks[seg.chunk]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(mem) = chunk.as_ref() {
                buf[seg.buf_offset..seg.buf_offset + seg.len]
                    .copy_from_slice(&mem[seg.offset..seg.offset + seg.len]);
            }
        }
        Ok(buf)
    }

    async fn write(&self, lba: u64, data: IoBuf, _fua: bool) -> Result<(), BlockError> {
        let nblocks = blocks_in("write buffer length", data.len(), self.block_size)?;
        let (offset, len) = self.byte_range(lba, nblocks)?;
        for seg in self.segments(offset, len) {
            let src = &data[seg.buf_offset..seg.buf_offset + seg.len];
            let mut chunk = self.chunks[seg.chunk]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mem = match chunk.as_mut() {
                Some(mem) => mem,
                // Writing zeroes into a never-written chunk changes nothing: stay sparse.
                None if src.iter().all(|&b| b == 0) => continue,
                None => {
                    let n = self.chunk_len(seg.chunk);
                    self.allocated.fetch_add(n as u64, Ordering::Relaxed);
                    chunk.insert(vec![0u8; n].into_boxed_slice())
                }
            };
            mem[seg.offset..seg.offset + seg.len].copy_from_slice(src);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        _deallocate: bool,
    ) -> Result<(), BlockError> {
        // Freeing whole chunks is always allowed: they read back as zeroes either way.
        self.zero_range(lba, nblocks)
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.zero_range(lba, nblocks)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn pattern(len: usize, seed: u8) -> IoBuf {
        let v: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        IoBuf::from_slice(&v)
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(matches!(
            RamDevice::new(0, 512),
            Err(BlockError::InvalidSpec(_))
        ));
        assert!(matches!(
            RamDevice::new(1000, 512),
            Err(BlockError::Misaligned { .. })
        ));
        assert!(matches!(
            RamDevice::new(4096, 1000),
            Err(BlockError::InvalidSpec(_))
        ));
        let d = RamDevice::new(MIB + 512, 512).unwrap();
        assert_eq!(d.num_blocks(), 2049);
        assert_eq!(d.size_bytes(), MIB + 512);
        assert!(!d.volatile_cache());
    }

    #[tokio::test]
    async fn large_device_is_free_until_written() {
        let d = RamDevice::new(4 << 30, 4096).unwrap();
        assert_eq!(d.allocated_bytes(), 0);
        let r = d.read(1000, 4).await.unwrap();
        assert!(r.iter().all(|&b| b == 0));
        d.write(0, IoBuf::zeroed(8192), false).await.unwrap();
        assert_eq!(
            d.allocated_bytes(),
            0,
            "zero writes to empty chunks stay sparse"
        );
        d.write(1, pattern(4096, 1), false).await.unwrap();
        assert_eq!(d.allocated_bytes(), MIB);
    }

    #[tokio::test]
    async fn read_write_round_trip_across_chunks() {
        let d = RamDevice::new(4 * MIB, 512).unwrap();
        // Straddles the boundary between chunk 0 and chunk 1 and ends inside chunk 2.
        let lba = (MIB - 4096) / 512;
        let data = pattern((MIB + 8192) as usize, 3);
        d.write(lba, data.clone(), false).await.unwrap();
        let back = d.read(lba, (data.len() / 512) as u32).await.unwrap();
        assert_eq!(back, data);
        // Neighbours untouched.
        assert!(d.read(lba - 1, 1).await.unwrap().iter().all(|&b| b == 0));
        let after = lba + (data.len() / 512) as u64;
        assert!(d.read(after, 1).await.unwrap().iter().all(|&b| b == 0));
        // Last block of the device.
        d.write(d.num_blocks() - 1, pattern(512, 9), true)
            .await
            .unwrap();
        assert_eq!(
            d.read(d.num_blocks() - 1, 1).await.unwrap(),
            pattern(512, 9)
        );
        d.flush().await.unwrap();
    }

    #[tokio::test]
    async fn zeroes_and_deallocate() {
        let d = RamDevice::new(4 * MIB, 4096).unwrap();
        d.write(0, pattern((4 * MIB) as usize, 5), false)
            .await
            .unwrap();
        assert_eq!(d.allocated_bytes(), 4 * MIB);

        // Partial chunk: zeroed in place, memory kept.
        d.write_zeroes(1, 2, false).await.unwrap();
        let r = d.read(0, 4).await.unwrap();
        assert_eq!(&r[..4096], &pattern(4096, 5)[..]);
        assert!(r[4096..12288].iter().all(|&b| b == 0));
        assert_ne!(&r[12288..], &[0u8; 4096][..]);
        assert_eq!(d.allocated_bytes(), 4 * MIB);

        // Whole chunk 1 plus a bit of chunk 2: chunk 1 freed.
        let per_chunk = MIB / 4096;
        d.deallocate(per_chunk, per_chunk + 1).await.unwrap();
        assert_eq!(d.allocated_bytes(), 3 * MIB);
        let r = d.read(per_chunk, (per_chunk + 1) as u32).await.unwrap();
        assert!(r.iter().all(|&b| b == 0));
        let r = d.read(2 * per_chunk + 1, 1).await.unwrap();
        assert_ne!(&r[..], &[0u8; 4096][..]);

        d.write_zeroes(0, d.num_blocks(), true).await.unwrap();
        assert_eq!(d.allocated_bytes(), 0);
        assert!(d.read(0, 1024).await.unwrap().iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn out_of_range_and_misaligned_touch_nothing() {
        let d = RamDevice::new(MIB, 512).unwrap();
        let n = d.num_blocks();
        assert!(matches!(
            d.read(n, 1).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read(u64::MAX, 2).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write(n - 1, pattern(1024, 1), false).await,
            Err(BlockError::OutOfRange { lba, nblocks: 2, capacity }) if lba == n - 1 && capacity == n
        ));
        assert_eq!(d.allocated_bytes(), 0);
        assert!(d.read(n - 1, 1).await.unwrap().iter().all(|&b| b == 0));
        assert!(matches!(
            d.write(0, pattern(100, 1), false).await,
            Err(BlockError::Misaligned {
                value: 100,
                block_size: 512,
                ..
            })
        ));
        assert!(matches!(
            d.write_zeroes(n, 1, false).await,
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.deallocate(0, n + 1).await,
            Err(BlockError::OutOfRange { .. })
        ));
        // Zero-length I/O inside the device is a no-op.
        assert!(d.read(n, 0).await.unwrap().is_empty());
        d.write(0, IoBuf::zeroed(0), false).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_and_readers() {
        let d = Arc::new(RamDevice::new(8 * MIB, 4096).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u8 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                // Each task owns an interleaved set of 64 KiB extents spread across chunks.
                for i in 0..8u64 {
                    let lba = (i * 16 + u64::from(t)) * 16;
                    let data = pattern(65536, t.wrapping_add(i as u8));
                    d.write(lba, data.clone(), false).await.unwrap();
                    tokio::task::yield_now().await;
                    assert_eq!(d.read(lba, 16).await.unwrap(), data);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for t in 0..16u8 {
            for i in 0..8u64 {
                let lba = (i * 16 + u64::from(t)) * 16;
                assert_eq!(
                    d.read(lba, 16).await.unwrap(),
                    pattern(65536, t.wrapping_add(i as u8))
                );
            }
        }
    }
}
