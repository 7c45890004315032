//! [`BlockError`]: the one error type of the block layer, plus the range and alignment checks
//! every backend applies before touching storage.

use std::io;

/// Everything that can go wrong in a block-layer operation.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The I/O does not fit in the device (or `lba + nblocks` overflows).
    #[error(
        "I/O out of range: {nblocks} block(s) at LBA {lba} do not fit in a device of {capacity} blocks"
    )]
    OutOfRange {
        /// First block of the rejected I/O.
        lba: u64,
        /// Length of the rejected I/O in blocks.
        nblocks: u64,
        /// Device capacity in blocks.
        capacity: u64,
    },

    /// A length or size is not a whole number of blocks.
    #[error("{what} of {value} bytes is not a multiple of the {block_size}-byte block size")]
    Misaligned {
        /// What was misaligned, e.g. "write buffer length" or "file size".
        what: &'static str,
        /// The offending value in bytes.
        value: u64,
        /// The block size it should be a multiple of.
        block_size: u32,
    },

    /// The operating system reported an error.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation that failed, e.g. "read" or "fdatasync".
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A backend spec, size or option is invalid.
    #[error("invalid backend spec: {0}")]
    InvalidSpec(String),

    /// The backing store is out of space.
    #[error("no space left on the backing store")]
    NoSpace,

    /// The device vanished or was closed.
    #[error("device gone: {0}")]
    Gone(String),
}

impl BlockError {
    /// Wraps an OS error from `op`, mapping "out of space" to [`BlockError::NoSpace`] and
    /// "device vanished" errnos (`ENODEV`, `ENXIO`) to [`BlockError::Gone`].
    pub fn io(op: &'static str, source: io::Error) -> BlockError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => BlockError::NoSpace,
            Some(libc::ENODEV) | Some(libc::ENXIO) => {
                BlockError::Gone(format!("{op} failed: {source}"))
            }
            _ => BlockError::Io { op, source },
        }
    }
}

/// Checks that `nblocks` blocks at `lba` fit in a device of `capacity` blocks (a zero-length
/// range must start at or before the end). Returns [`BlockError::OutOfRange`] otherwise,
/// including when `lba + nblocks` overflows.
pub fn check_range(lba: u64, nblocks: u64, capacity: u64) -> Result<(), BlockError> {
    match lba.checked_add(nblocks) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BlockError::OutOfRange {
            lba,
            nblocks,
            capacity,
        }),
    }
}

/// Checks that a buffer of `len` bytes holds a whole number of `block_size` blocks and returns
/// that number; `what` names the buffer in the error.
pub fn blocks_in(what: &'static str, len: usize, block_size: u32) -> Result<u64, BlockError> {
    let len = len as u64;
    let bs = u64::from(block_size);
    if bs == 0 || !len.is_multiple_of(bs) {
        return Err(BlockError::Misaligned {
            what,
            value: len,
            block_size,
        });
    }
    Ok(len / bs)
}

/// Validates a logical block size: a power of two between 512 bytes and 64 KiB.
pub fn check_block_size(block_size: u32) -> Result<(), BlockError> {
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(BlockError::InvalidSpec(format!(
            "block size {block_size} must be a power of two between 512 and 65536"
        )));
    }
    Ok(())
}

/// Validates a device size against a block size: non-zero and a whole number of blocks.
/// `what` names the size in the error (e.g. "RAM device size").
pub fn check_size(what: &'static str, size_bytes: u64, block_size: u32) -> Result<u64, BlockError> {
    check_block_size(block_size)?;
    if size_bytes == 0 {
        return Err(BlockError::InvalidSpec(format!("{what} must not be zero")));
    }
    if !size_bytes.is_multiple_of(u64::from(block_size)) {
        return Err(BlockError::Misaligned {
            what,
            value: size_bytes,
            block_size,
        });
    }
    Ok(size_bytes / u64::from(block_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(10, 0, 10).is_ok());
        assert!(check_range(9, 1, 10).is_ok());
        assert!(matches!(
            check_range(9, 2, 10),
            Err(BlockError::OutOfRange {
                lba: 9,
                nblocks: 2,
                capacity: 10
            })
        ));
        assert!(check_range(11, 0, 10).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn alignment_and_sizes() {
        assert_eq!(blocks_in("buf", 8192, 4096).unwrap(), 2);
        assert_eq!(blocks_in("buf", 0, 512).unwrap(), 0);
        assert!(matches!(
            blocks_in("buf", 100, 512),
            Err(BlockError::Misaligned {
                value: 100,
                block_size: 512,
                ..
            })
        ));
        assert!(check_block_size(512).is_ok());
        assert!(check_block_size(4096).is_ok());
        assert!(check_block_size(1000).is_err());
        assert!(check_block_size(256).is_err());
        assert_eq!(check_size("size", 1 << 20, 4096).unwrap(), 256);
        assert!(check_size("size", 0, 4096).is_err());
        assert!(check_size("size", 4097, 4096).is_err());
    }

    #[test]
    fn messages_are_clear() {
        let e = BlockError::OutOfRange {
            lba: 5,
            nblocks: 3,
            capacity: 6,
        };
        assert_eq!(
            e.to_string(),
            "I/O out of range: 3 block(s) at LBA 5 do not fit in a device of 6 blocks"
        );
        let e = BlockError::Misaligned {
            what: "write buffer length",
            value: 100,
            block_size: 512,
        };
        assert_eq!(
            e.to_string(),
            "write buffer length of 100 bytes is not a multiple of the 512-byte block size"
        );
        let e = BlockError::io("read", io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().starts_with("read failed: "), "{e}");
        assert!(matches!(
            BlockError::io("write", io::Error::from_raw_os_error(libc::ENOSPC)),
            BlockError::NoSpace
        ));
        assert!(matches!(
            BlockError::io("write", io::Error::from_raw_os_error(libc::ENODEV)),
            BlockError::Gone(_)
        ));
    }
}
