//! [`FileDevice`]: a [`BlockDevice`] backed by a regular file or a raw block device, opened with
//! `O_DIRECT` and driven by io_uring (or, where io_uring is unavailable or disabled, by
//! positioned syscalls on tokio's blocking pool).
//!
//! This module owns opening (creating sparse files, sizing block devices, the `O_DIRECT`
//! fallback), engine selection, and the mapping of block operations onto file operations:
//!
//! | block operation            | file operation                                            |
//! |----------------------------|-----------------------------------------------------------|
//! | read / write               | `read` / `write` at `lba * block_size`                    |
//! | write with FUA             | write with `RWF_DSYNC` (io_uring) or write + `fdatasync`  |
//! | flush                      | `fdatasync`                                               |
//! | deallocate                 | `fallocate(PUNCH_HOLE \| KEEP_SIZE)`                      |
//! | write zeroes               | `fallocate(ZERO_RANGE \| KEEP_SIZE)` (punch with dealloc) |
//!
//! On block devices the kernel implements `PUNCH_HOLE` as "write zeroes, unmapping allowed" and
//! `ZERO_RANGE` as `BLKZEROOUT`; both guarantee zeroes on read-back, which `BLKDISCARD` does not,
//! so the trait's contract holds on any device. Where a mode is unsupported (`EOPNOTSUPP`), the
//! next one in the chain `PUNCH_HOLE -> ZERO_RANGE -> writing zero buffers` is used and the
//! failure remembered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::engine::{Engine, Op, is_unsupported};
use crate::error::{blocks_in, check_block_size, check_range, check_size};
use crate::uring::UringEngine;
use crate::{BlockDevice, BlockError, IoBuf};

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` in the generic ioctl encoding (x86, arm, riscv).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Size of each zero buffer written when the filesystem cannot zero a range itself.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// How a [`FileDevice`] executes I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// io_uring, falling back to [`IoEngine::Blocking`] (with a warning) if io_uring cannot be
    /// set up. The environment variable [`IoEngine::ENV_VAR`] (`io_uring`, `blocking` or
    /// `auto`) overrides this choice.
    #[default]
    Auto,
    /// io_uring only: opening fails if it cannot be set up.
    IoUring,
    /// `pread`/`pwrite` on tokio's blocking thread pool.
    Blocking,
}

impl IoEngine {
    /// Environment variable consulted by [`IoEngine::Auto`].
    pub const ENV_VAR: &'static str = "FERRITE_IO_ENGINE";

    /// Resolves `Auto` through [`IoEngine::ENV_VAR`]; other values are returned unchanged.
    fn resolve(self) -> Result<IoEngine, BlockError> {
        if self != IoEngine::Auto {
            return Ok(self);
        }
        match std::env::var(Self::ENV_VAR) {
            Ok(v) => v.parse(),
            Err(_) => Ok(IoEngine::Auto),
        }
    }
}

impl FromStr for IoEngine {
    type Err = BlockError;

    fn from_str(s: &str) -> Result<IoEngine, BlockError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(IoEngine::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoEngine::IoUring),
            "blocking" | "sync" | "pread" => Ok(IoEngine::Blocking),
            other => Err(BlockError::InvalidSpec(format!(
                "unknown I/O engine {other:?} (expected auto, io_uring or blocking)"
            ))),
        }
    }
}

/// Options for [`FileDevice::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    /// Logical block size in bytes (a power of two, 512..=65536).
    pub block_size: u32,
    /// If the path does not exist, create a sparse file of this many bytes. If it exists, its
    /// size must equal this.
    pub create_size: Option<u64>,
    /// I/O engine.
    pub engine: IoEngine,
    /// io_uring submission-queue depth (maximum operations in flight per device).
    pub queue_depth: u32,
}

impl FileOptions {
    /// Options with the given block size and defaults otherwise.
    pub fn new(block_size: u32) -> FileOptions {
        FileOptions {
            block_size,
            ..FileOptions::default()
        }
    }
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            block_size: 4096,
            create_size: None,
            engine: IoEngine::Auto,
            queue_depth: 256,
        }
    }
}

/// A block device backed by a regular file or a raw block device.
pub struct FileDevice {
    path: PathBuf,
    file: Arc<File>,
    block_size: u32,
    num_blocks: u64,
    is_block_device: bool,
    direct: bool,
    engine: Engine,
    punch_unsupported: AtomicBool,
    zero_range_unsupported: AtomicBool,
}

impl FileDevice {
    /// Opens (or, with `create_size`, creates as a sparse file) the file or block device at
    /// `path`.
    ///
    /// The file is opened with `O_DIRECT`; if the filesystem refuses it (`EINVAL`), or cannot
    /// do direct I/O at `block_size` granularity, buffered I/O is used with a warning. The size
    /// (file length, or `BLKGETSIZE64` for a block device) must be a non-zero multiple of the
    /// block size.
    ///
    /// This is a blocking call (it opens files and may start a thread): from async code run it
    /// with `tokio::task::spawn_blocking`, or use [`crate::spec::BackendSpec::open`].
    pub fn open(path: impl AsRef<Path>, opts: FileOptions) -> Result<FileDevice, BlockError> {
        let path = path.as_ref();
        check_block_size(opts.block_size)?;
        let engine_kind = opts.engine.resolve()?;
        let shown = path.display();

        let (file, is_block_device, created) = match std::fs::metadata(path) {
            Ok(meta) => {
                let ft = meta.file_type();
                if !ft.is_file() && !ft.is_block_device() {
                    return Err(BlockError::InvalidSpec(format!(
                        "{shown} is neither a regular file nor a block device"
                    )));
                }
                (open_file(path, false)?, ft.is_block_device(), false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match opts.create_size {
                Some(size) => {
                    check_size("file size", size, opts.block_size)?;
                    (create_sparse(path, size)?, false, true)
                }
                None => {
                    return Err(BlockError::InvalidSpec(format!(
                        "{shown} does not exist and no size was given to create it"
                    )));
                }
            },
            Err(e) => return Err(BlockError::io("stat", e)),
        };
        let (mut file, mut direct) = file;

        let size = if is_block_device {
            block_device_size(&file)?
        } else {
            file.metadata()
                .map_err(|e| BlockError::io("stat", e))?
                .len()
        };
        if let Some(want) = opts.create_size
            && !created
            && want != size
        {
            return Err(BlockError::InvalidSpec(format!(
                "{shown} exists with a size of {size} bytes, not the requested {want}"
            )));
        }
        let num_blocks = check_size("file size", size, opts.block_size)?;

        if direct
            && let Some(align) = dio_alignment(&file, is_block_device)
            && align > opts.block_size
        {
            tracing::warn!(
                path = %shown,
                block_size = opts.block_size,
                dio_alignment = align,
                "direct I/O needs larger alignment than the block size; using buffered I/O"
            );
            file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| BlockError::io("open", e))?;
            direct = false;
        }

        let file = Arc::new(file);
        let engine = match engine_kind {
            IoEngine::Blocking => Engine::Blocking,
            IoEngine::IoUring => Engine::Uring(
                UringEngine::start(Arc::clone(&file), opts.queue_depth, shown.to_string())
                    .map_err(|e| BlockError::io("io_uring setup", e))?,
            ),
            IoEngine::Auto => {
                match UringEngine::start(Arc::clone(&file), opts.queue_depth, shown.to_string()) {
                    Ok(ring) => Engine::Uring(ring),
                    Err(e) => {
                        tracing::warn!(
                            path = %shown,
                            error = %e,
                            "io_uring unavailable; using blocking pread/pwrite"
                        );
                        Engine::Blocking
                    }
                }
            }
        };

        let dev = FileDevice {
            path: path.to_path_buf(),
            file,
            block_size: opts.block_size,
            num_blocks,
            is_block_device,
            direct,
            engine,
            punch_unsupported: AtomicBool::new(false),
            zero_range_unsupported: AtomicBool::new(false),
        };
        tracing::info!(device = %dev.describe(), created, "opened file backend");
        Ok(dev)
    }

    /// The path the device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path is a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Whether I/O bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The engine actually in use: [`IoEngine::IoUring`] or [`IoEngine::Blocking`].
    pub fn engine(&self) -> IoEngine {
        match self.engine {
            Engine::Uring(_) => IoEngine::IoUring,
            Engine::Blocking => IoEngine::Blocking,
        }
    }

    async fn run(&self, op: Op) -> Result<Option<IoBuf>, BlockError> {
        self.engine.run(&self.file, op).await
    }

    fn byte_range(&self, lba: u64, nblocks: u64) -> Result<(u64, u64), BlockError> {
        check_range(lba, nblocks, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        Ok((lba * bs, nblocks * bs))
    }

    /// Tries `fallocate(mode)` unless `unsupported` says it is known not to work; returns
    /// whether it did the job.
    async fn try_fallocate(
        &self,
        mode: i32,
        unsupported: &AtomicBool,
        offset: u64,
        len: u64,
    ) -> Result<bool, BlockError> {
        if unsupported.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.run(Op::Fallocate { offset, len, mode }).await {
            Ok(_) => Ok(true),
            Err(e) if is_unsupported(&e) => {
                tracing::warn!(
                    device = %self.path.display(),
                    mode,
                    error = %e,
                    "fallocate mode unsupported; using a fallback from now on"
                );
                unsupported.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Zeroes `[offset, offset + len)` by writing zero buffers.
    async fn write_zero_buffers(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK_BYTES);
            // `n` is at most 1 MiB, so the cast is lossless.
            let buf = IoBuf::zeroed(n as usize);
            self.run(Op::Write {
                offset: pos,
                buf,
                dsync: false,
            })
            .await?;
            pos += n;
        }
        Ok(())
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks)
            .field("is_block_device", &self.is_block_device)
            .field("direct", &self.direct)
            .field("engine", &self.engine())
            .finish()
    }
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    fn describe(&self) -> String {
        format!(
            "{} {} ({} bytes, {}-byte blocks, {}, {})",
            if self.is_block_device {
                "block device"
            } else {
                "file"
            },
            self.path.display(),
            self.size_bytes(),
            self.block_size,
            if self.direct { "O_DIRECT" } else { "buffered" },
            match self.engine() {
                IoEngine::IoUring => "io_uring",
                _ => "blocking",
            }
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        let (offset, len) = self.byte_range(lba, u64::from(nblocks))?;
        let len = usize::try_from(len)
            .map_err(|_| BlockError::InvalidSpec(format!("read of {len} bytes is too large")))?;
        if len == 0 {
            return Ok(IoBuf::zeroed(0));
        }
        let buf = IoBuf::zeroed(len);
        match self.run(Op::Read { offset, buf }).await? {
            Some(buf) => Ok(buf),
            None => Err(BlockError::Gone("read completed without its buffer".into())),
        }
    }

    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        let nblocks = blocks_in("write buffer length", data.len(), self.block_size)?;
        let (offset, _) = self.byte_range(lba, nblocks)?;
        if data.is_empty() {
            return Ok(());
        }
        self.run(Op::Write {
            offset,
            buf: data,
            dsync: fua,
        })
        .await
        .map(drop)
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.run(Op::Fdatasync).await.map(drop)
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError> {
        let (offset, len) = self.byte_range(lba, nblocks)?;
        if len == 0 {
            return Ok(());
        }
        if deallocate {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            if self
                .try_fallocate(mode, &self.punch_unsupported, offset, len)
                .await?
            {
                return Ok(());
            }
        }
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self
            .try_fallocate(mode, &self.zero_range_unsupported, offset, len)
            .await?
        {
            return Ok(());
        }
        self.write_zero_buffers(offset, len).await
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.write_zeroes(lba, nblocks, true).await
    }
}

/// Opens an existing path read-write with `O_DIRECT`, falling back to buffered I/O if the
/// filesystem refuses `O_DIRECT` with `EINVAL`. Returns the file and whether it is direct.
fn open_file(path: &Path, create_new: bool) -> Result<(File, bool), BlockError> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create_new {
            o.create_new(true).mode(0o600);
        }
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                path = %path.display(),
                "filesystem refuses O_DIRECT; falling back to buffered I/O"
            );
            if create_new {
                // The failed attempt may have created the file before O_DIRECT was refused.
                let _ = std::fs::remove_file(path);
            }
            open(false)
                .map(|f| (f, false))
                .map_err(|e| BlockError::io("open", e))
        }
        Err(e) => Err(BlockError::io("open", e)),
    }
}

/// Creates a new sparse file of `size` bytes and makes its existence durable.
fn create_sparse(path: &Path, size: u64) -> Result<(File, bool), BlockError> {
    let (file, direct) = open_file(path, true)?;
    let result = file
        .set_len(size)
        .map_err(|e| BlockError::io("set file length", e))
        .and_then(|()| file.sync_all().map_err(|e| BlockError::io("fsync", e)));
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(parent).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %path.display(), error = %e, "could not fsync parent directory");
    }
    tracing::info!(path = %path.display(), size, "created sparse backing file");
    Ok((file, direct))
}

/// Size in bytes of a block device (`BLKGETSIZE64`).
fn block_device_size(file: &File) -> Result<u64, BlockError> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &raw mut size) };
    if rc < 0 {
        return Err(BlockError::io(
            "ioctl(BLKGETSIZE64)",
            io::Error::last_os_error(),
        ));
    }
    Ok(size)
}

/// The offset alignment direct I/O needs on this file, if the kernel can tell: the logical
/// sector size for block devices, `STATX_DIOALIGN` for files.
fn dio_alignment(file: &File, is_block_device: bool) -> Option<u32> {
    if is_block_device {
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET as _, &raw mut sector) };
        return if rc == 0 {
            u32::try_from(sector).ok().filter(|&s| s > 0)
        } else {
            None
        };
    }
    // SAFETY: `statx` is plain old data for which all-zero bytes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, AT_EMPTY_PATH makes statx use
    // the descriptor `file` keeps open, and `stx` is a live, writable statx buffer.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &raw mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align > 0 {
        Some(stx.stx_dio_offset_align)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const ENGINES: [IoEngine; 2] = [IoEngine::IoUring, IoEngine::Blocking];

    fn pattern(len: usize, seed: u8) -> IoBuf {
        let v: Vec<u8> = (0..len)
            .map(|i| ((i / 512) as u8).wrapping_mul(7) ^ (i as u8) ^ seed)
            .collect();
        IoBuf::from_slice(&v)
    }

    fn opts(block_size: u32, create_size: Option<u64>, engine: IoEngine) -> FileOptions {
        FileOptions {
            block_size,
            create_size,
            engine,
            queue_depth: 64,
        }
    }

    fn create(dir: &tempfile::TempDir, size: u64, bs: u32, engine: IoEngine) -> FileDevice {
        FileDevice::open(dir.path().join("dev.img"), opts(bs, Some(size), engine)).unwrap()
    }

    #[tokio::test]
    async fn round_trip_at_various_offsets() {
        for engine in ENGINES {
            for bs in [512u32, 4096] {
                let dir = tempfile::tempdir().unwrap();
                let dev = create(&dir, 8 << 20, bs, engine);
                assert_eq!(dev.engine(), engine);
                assert_eq!(dev.num_blocks(), (8 << 20) / u64::from(bs));
                let last = dev.num_blocks() - 1;
                let cases: [(u64, u32); 5] =
                    [(0, 1), (1, 3), (77, 16), (last, 1), (last - 300, 300)];
                for (i, &(lba, n)) in cases.iter().enumerate() {
                    let data = pattern((n * bs) as usize, i as u8);
                    dev.write(lba, data.clone(), false).await.unwrap();
                    let back = dev.read(lba, n).await.unwrap();
                    assert_eq!(back, data, "{engine:?} bs {bs} lba {lba}");
                    assert_eq!(back.as_ptr() as usize % IoBuf::ALIGN, 0);
                }
                dev.flush().await.unwrap();
                // Never-written space reads as zeroes.
                assert!(
                    dev.read(5000 / (bs as u64 / 512), 2)
                        .await
                        .unwrap()
                        .iter()
                        .all(|&b| b == 0)
                );
                // Zero-length I/O is a no-op.
                assert!(dev.read(0, 0).await.unwrap().is_empty());
                dev.write(0, IoBuf::zeroed(0), false).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn fua_write_is_readable_and_persisted() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let dev = create(&dir, 1 << 20, 4096, engine);
            let data = pattern(8192, 42);
            dev.write(10, data.clone(), true).await.unwrap();
            assert_eq!(dev.read(10, 2).await.unwrap(), data);
            drop(dev);
            // Reopen the existing file (its size is taken from the file).
            let path = dir.path().join("dev.img");
            let dev = FileDevice::open(&path, opts(4096, None, engine)).unwrap();
            assert_eq!(dev.read(10, 2).await.unwrap(), data);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[40960..49152], &data[..]);
        }
    }

    #[tokio::test]
    async fn deallocate_punches_holes_and_reads_zeroes() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let dev = create(&dir, 4 << 20, 4096, engine);
            let path = dir.path().join("dev.img");
            let blocks_of = |p: &Path| std::fs::metadata(p).unwrap().blocks();
            assert_eq!(blocks_of(&path), 0, "created sparse");
            dev.write(0, pattern(2 << 20, 1), false).await.unwrap();
            dev.flush().await.unwrap();
            let full = blocks_of(&path);
            assert!(full >= (2 << 20) / 512, "{full}");

            dev.deallocate(0, 256).await.unwrap(); // first MiB
            assert!(dev.read(0, 256).await.unwrap().iter().all(|&b| b == 0));
            assert_eq!(dev.read(256, 256).await.unwrap(), {
                let p = pattern(2 << 20, 1);
                IoBuf::from_slice(&p[1 << 20..])
            });
            let after = blocks_of(&path);
            assert!(after < full, "st_blocks {after} should shrink from {full}");

            // write_zeroes, with and without deallocate.
            dev.write_zeroes(256, 16, false).await.unwrap();
            assert!(dev.read(256, 16).await.unwrap().iter().all(|&b| b == 0));
            assert_ne!(&dev.read(272, 1).await.unwrap()[..], &[0u8; 4096][..]);
            dev.write_zeroes(300, 10, true).await.unwrap();
            assert!(dev.read(300, 10).await.unwrap().iter().all(|&b| b == 0));
            dev.write_zeroes(0, 0, true).await.unwrap();
        }
    }

    #[tokio::test]
    async fn zero_buffer_fallback_zeroes() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let dev = create(&dir, 4 << 20, 512, engine);
            dev.write(0, pattern(3 << 20, 9), false).await.unwrap();
            // Pretend the filesystem supports neither fallocate mode.
            dev.punch_unsupported.store(true, Ordering::Relaxed);
            dev.zero_range_unsupported.store(true, Ordering::Relaxed);
            // Spans more than one zero chunk.
            dev.deallocate(1, 2100 * 2).await.unwrap();
            dev.write_zeroes(5000, 7, false).await.unwrap();
            let back = dev.read(0, 6 << 10).await.unwrap();
            let expect: Vec<u8> = pattern(3 << 20, 9)[..]
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let blk = i / 512;
                    if (1..1 + 4200).contains(&blk) || (5000..5007).contains(&blk) {
                        0
                    } else {
                        b
                    }
                })
                .collect();
            assert!(back[..] == expect[..], "{engine:?}");
        }
    }

    #[tokio::test]
    async fn out_of_range_and_misaligned_write_nothing() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let dev = create(&dir, 64 << 10, 4096, engine);
            let n = dev.num_blocks();
            assert_eq!(n, 16);
            assert!(matches!(
                dev.write(n - 1, pattern(8192, 1), false).await,
                Err(BlockError::OutOfRange {
                    nblocks: 2,
                    capacity: 16,
                    ..
                })
            ));
            assert!(matches!(
                dev.read(n, 1).await,
                Err(BlockError::OutOfRange { .. })
            ));
            assert!(matches!(
                dev.read(u64::MAX, 1).await,
                Err(BlockError::OutOfRange { .. })
            ));
            assert!(matches!(
                dev.write_zeroes(1, n, false).await,
                Err(BlockError::OutOfRange { .. })
            ));
            assert!(matches!(
                dev.deallocate(n + 1, 0).await,
                Err(BlockError::OutOfRange { .. })
            ));
            assert!(matches!(
                dev.write(0, pattern(1000, 1), false).await,
                Err(BlockError::Misaligned {
                    value: 1000,
                    block_size: 4096,
                    ..
                })
            ));
            let on_disk = std::fs::read(dir.path().join("dev.img")).unwrap();
            assert_eq!(on_disk.len(), 64 << 10, "file must not grow");
            assert!(on_disk.iter().all(|&b| b == 0), "nothing written");
        }
    }

    #[tokio::test]
    async fn read_past_a_truncated_end_fails_cleanly() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let dev = create(&dir, 1 << 20, 4096, engine);
            dev.write(100, pattern(4096, 1), false).await.unwrap();
            // Someone shrinks the file behind our back.
            let f = OpenOptions::new()
                .write(true)
                .open(dir.path().join("dev.img"))
                .unwrap();
            f.set_len(512 << 10).unwrap();
            // Entirely past the new end, and straddling it (short read, then EOF).
            for (lba, n) in [(200u64, 1u32), (120, 16)] {
                let err = dev.read(lba, n).await.unwrap_err();
                assert!(
                    matches!(&err, BlockError::Io { op: "read", source }
                        if source.kind() == io::ErrorKind::UnexpectedEof),
                    "{engine:?}: {err}"
                );
            }
            // The device keeps working.
            assert_eq!(dev.read(100, 1).await.unwrap(), pattern(4096, 1));
        }
    }

    #[test]
    fn bad_sizes_and_paths_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        let err = FileDevice::open(&p, opts(4096, Some(10_000), IoEngine::Blocking)).unwrap_err();
        assert!(
            matches!(
                err,
                BlockError::Misaligned {
                    value: 10_000,
                    block_size: 4096,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!p.exists(), "nothing created on error");
        let err = FileDevice::open(&p, opts(4096, Some(0), IoEngine::Blocking)).unwrap_err();
        assert!(matches!(err, BlockError::InvalidSpec(_)), "{err}");
        let err = FileDevice::open(&p, opts(4096, None, IoEngine::Blocking)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");

        // Existing file whose size is not a whole number of blocks.
        std::fs::write(&p, vec![0u8; 6000]).unwrap();
        let err = FileDevice::open(&p, opts(4096, None, IoEngine::Blocking)).unwrap_err();
        assert!(
            matches!(
                err,
                BlockError::Misaligned {
                    what: "file size",
                    value: 6000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not a multiple"), "{err}");
        // Existing file whose size differs from the requested one.
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let err = FileDevice::open(&p, opts(4096, Some(16384), IoEngine::Blocking)).unwrap_err();
        assert!(
            err.to_string().contains("exists with a size of 8192"),
            "{err}"
        );
        assert!(FileDevice::open(&p, opts(4096, Some(8192), IoEngine::Blocking)).is_ok());
        // Bad block size, directory.
        assert!(FileDevice::open(&p, opts(3000, None, IoEngine::Blocking)).is_err());
        let err = FileDevice::open(dir.path(), opts(4096, None, IoEngine::Blocking)).unwrap_err();
        assert!(err.to_string().contains("neither a regular file"), "{err}");
    }

    #[test]
    fn engine_names_parse() {
        assert_eq!("io_uring".parse::<IoEngine>().unwrap(), IoEngine::IoUring);
        assert_eq!("Blocking".parse::<IoEngine>().unwrap(), IoEngine::Blocking);
        assert_eq!("auto".parse::<IoEngine>().unwrap(), IoEngine::Auto);
        assert!("spdk".parse::<IoEngine>().is_err());
    }

    #[test]
    fn uses_direct_io_on_this_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let dev = create(&dir, 1 << 20, 4096, IoEngine::Blocking);
        // ext4/xfs/btrfs/tmpfs (>= 6.6) all accept O_DIRECT at 4 KiB.
        assert!(dev.is_direct(), "{}", dev.describe());
        assert!(dev.describe().contains("O_DIRECT"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_ios_through_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Arc::new(create(&dir, 16 << 20, 4096, IoEngine::IoUring));
        // More concurrent requests than the ring's queue depth (64 in tests).
        let mut tasks = Vec::new();
        for t in 0..200u64 {
            let dev = Arc::clone(&dev);
            tasks.push(tokio::spawn(async move {
                let lba = t * 16;
                let data = pattern(16 * 4096, t as u8);
                dev.write(lba, data.clone(), t % 7 == 0).await.unwrap();
                assert_eq!(dev.read(lba, 16).await.unwrap(), data);
                if t % 50 == 0 {
                    dev.flush().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[test]
    fn ring_thread_shuts_down_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dev = rt.block_on(async {
            let dev = create(&dir, 1 << 20, 4096, IoEngine::IoUring);
            dev.write(0, pattern(4096, 3), false).await.unwrap();
            dev
        });
        // Outside the runtime the drop joins the ring thread; it must not hang.
        drop(dev);
        // A request abandoned mid-flight must not keep a device from shutting down either.
        let dev = create(&dir, 1 << 20, 4096, IoEngine::IoUring);
        rt.block_on(async {
            // Polled once (so the request reaches the ring), then dropped.
            let _ = tokio::time::timeout(std::time::Duration::ZERO, dev.read(0, 256)).await;
        });
        drop(dev);
    }
}
