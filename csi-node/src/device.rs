//! Device numbers of files and device nodes.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Splits a `dev_t` into (major, minor).
pub fn split(dev: u64) -> (u32, u32) {
    (
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t),
    )
}

/// The (major, minor) of block device node `path`; `None` if it does not exist or is not a
/// block device.
pub fn block_devno(path: &Path) -> io::Result<Option<(u32, u32)>> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Ok(Some(split(m.rdev()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Flushes a block device's dirty buffers (fsync on the device node), best effort.
pub fn flush(path: &Path) {
    match std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|f| f.sync_all())
    {
        Ok(()) => tracing::debug!(device = %path.display(), "flushed"),
        Err(e) => {
            tracing::warn!(device = %path.display(), error = %e, "flushing the device failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(split(libc::makedev(259, 3) as u64), (259, 3));
        assert_eq!(split(libc::makedev(8, 300) as u64), (8, 300));
        // /dev/null is a character device, not a block device.
        assert_eq!(block_devno(Path::new("/dev/null")).unwrap(), None);
        assert_eq!(block_devno(Path::new("/nonexistent")).unwrap(), None);
    }
}
