//! [`ThinError`]: everything that can go wrong in the thin store, and its mapping onto
//! [`BlockError`] for I/O through a [`super::ThinVolume`].

use std::io;

use crate::BlockError;

pub use crate::uuid_text::format_uuid;

/// Errors of the thin-provisioning layer.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    /// The device holds no Ferrite thin store (no superblock magic in either slot).
    #[error("{device} holds no Ferrite thin store")]
    NotFormatted {
        /// The device's description.
        device: String,
    },

    /// `format` found an existing store and `force` was not set.
    #[error("{device} already holds a Ferrite thin store (format with force to overwrite it)")]
    AlreadyFormatted {
        /// The device's description.
        device: String,
    },

    /// On-disk metadata failed validation (checksums of committed structures, impossible
    /// records, layout inconsistencies).
    #[error("thin store metadata is corrupt: {0}")]
    Corrupt(String),

    /// The store was formatted for a different device geometry (block size, smaller device).
    #[error("thin store does not match the device: {0}")]
    Incompatible(String),

    /// A caller-supplied argument is invalid (volume name, size, cluster size...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The device cannot hold the metadata regions plus at least one cluster.
    #[error(
        "device of {device_bytes} bytes is too small: metadata needs {metadata_bytes} bytes plus at least one {cluster_size}-byte cluster"
    )]
    DeviceTooSmall {
        /// Device size in bytes.
        device_bytes: u64,
        /// Bytes taken by superblocks, checkpoint areas and journal (cluster aligned).
        metadata_bytes: u64,
        /// The requested cluster size.
        cluster_size: u32,
    },

    /// A volume with this UUID exists with a different name, size or provisioning.
    #[error("volume {uuid} already exists with a different spec ({existing})")]
    AlreadyExists {
        /// The volume UUID.
        uuid: String,
        /// The existing volume's spec.
        existing: String,
    },

    /// No volume with this UUID.
    #[error("volume {0} not found")]
    NotFound(String),

    /// The volume was destroyed while this handle was held.
    #[error("volume {0} was destroyed")]
    VolumeGone(String),

    /// Not enough free clusters.
    #[error("not enough space in the thin store: {needed} bytes needed, {available} available")]
    NoSpace {
        /// Bytes the operation needed.
        needed: u64,
        /// Bytes available to it.
        available: u64,
    },

    /// The store already holds its maximum number of volumes.
    #[error("the thin store already holds its limit of {0} volumes")]
    TooManyVolumes(u32),

    /// Volumes can only grow.
    #[error("volume {uuid} cannot shrink from {current} to {requested} bytes")]
    Shrink {
        /// The volume UUID.
        uuid: String,
        /// Current size in bytes.
        current: u64,
        /// Requested size in bytes.
        requested: u64,
    },

    /// A metadata commit failed; the in-memory state may be ahead of the device, so the store
    /// refuses further metadata changes and flushes until it is reopened.
    #[error("the thin store failed a metadata commit and must be reopened: {0}")]
    Failed(String),

    /// The underlying device failed.
    #[error(transparent)]
    Device(#[from] BlockError),
}

impl From<ThinError> for BlockError {
    fn from(e: ThinError) -> BlockError {
        match e {
            ThinError::NoSpace { .. } => BlockError::NoSpace,
            ThinError::Device(e) => e,
            ThinError::VolumeGone(_) | ThinError::NotFound(_) | ThinError::Failed(_) => {
                BlockError::Gone(e.to_string())
            }
            ThinError::InvalidArgument(_)
            | ThinError::Shrink { .. }
            | ThinError::AlreadyExists { .. }
            | ThinError::TooManyVolumes(_)
            | ThinError::DeviceTooSmall { .. } => BlockError::InvalidSpec(e.to_string()),
            ThinError::NotFormatted { .. }
            | ThinError::AlreadyFormatted { .. }
            | ThinError::Corrupt(_)
            | ThinError::Incompatible(_) => BlockError::Io {
                op: "thin metadata",
                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_formatting() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_uuid(&u), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn maps_onto_block_errors() {
        let e: BlockError = ThinError::NoSpace {
            needed: 1,
            available: 0,
        }
        .into();
        assert!(matches!(e, BlockError::NoSpace));
        let e: BlockError = ThinError::Device(BlockError::NoSpace).into();
        assert!(matches!(e, BlockError::NoSpace));
        let e: BlockError = ThinError::VolumeGone("x".into()).into();
        assert!(matches!(e, BlockError::Gone(_)));
        let e: BlockError = ThinError::Corrupt("bad".into()).into();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
