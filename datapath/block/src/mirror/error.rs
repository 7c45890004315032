//! [`MirrorError`]: what can go wrong assembling, running or reconfiguring a mirror.

use std::io;

use crate::BlockError;

/// Errors of the mirror layer. Host I/O through the mirror's [`crate::BlockDevice`] impl sees
/// them converted into [`BlockError`] (see the `From` impl).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A replica's I/O failed (and nothing could hide it from the caller).
    #[error(transparent)]
    Block(#[from] BlockError),

    /// No healthy, in-sync replica is left to serve the request.
    #[error("mirror {mirror}: no healthy replica")]
    NoHealthyReplica {
        /// The mirror UUID.
        mirror: String,
    },

    /// The labels show that two sets of replicas each went on taking writes without the other.
    #[error("mirror {mirror}: split brain, refusing to pick a side: {detail}")]
    SplitBrain {
        /// The mirror UUID.
        mirror: String,
        /// Which labels disagree and how.
        detail: String,
    },

    /// A replica carries the label of another mirror; it is never overwritten.
    #[error("replica {replica} belongs to mirror {found}, not {expected}")]
    ForeignLabel {
        /// The replica (its description).
        replica: String,
        /// Mirror UUID found in its label.
        found: String,
        /// Mirror UUID the caller asked for.
        expected: String,
    },

    /// A replica's label names another replica UUID than its connector.
    #[error("replica {replica}: label says replica {found}, connector says {expected}")]
    ReplicaMismatch {
        /// The replica (its description).
        replica: String,
        /// Replica UUID in the label.
        found: String,
        /// Replica UUID of the connector.
        expected: String,
    },

    /// `create` found an existing mirror label on a replica.
    #[error("replica {replica} already carries a mirror label (mirror {mirror})")]
    AlreadyLabeled {
        /// The replica (its description).
        replica: String,
        /// The mirror UUID in the label.
        mirror: String,
    },

    /// `assemble` found no replica with a valid label of this mirror.
    #[error("mirror {mirror}: no reachable replica carries a label of this mirror")]
    NoLabel {
        /// The mirror UUID.
        mirror: String,
    },

    /// Replicas the newest label lists as in sync are unreachable (they may hold newer data).
    #[error(
        "mirror {mirror}: in-sync replica(s) unreachable: {missing:?} (they may hold the newest data; set allow_missing_in_sync to assemble without them)"
    )]
    InSyncReplicaMissing {
        /// The mirror UUID.
        mirror: String,
        /// The missing replicas (UUID and description or reason).
        missing: Vec<String>,
    },

    /// A replica device is too small for the mirror.
    #[error("replica {replica}: {size} bytes is too small, need at least {need}")]
    TooSmall {
        /// The replica (its description).
        replica: String,
        /// Its size in bytes.
        size: u64,
        /// Bytes needed (1 MiB reserve plus the volume).
        need: u64,
    },

    /// A replica's block size does not divide the mirror's block size.
    #[error(
        "replica {replica}: block size {replica_bs} is incompatible with the mirror's {mirror_bs}"
    )]
    BlockSize {
        /// The replica (its description).
        replica: String,
        /// The replica's block size.
        replica_bs: u32,
        /// The mirror's block size.
        mirror_bs: u32,
    },

    /// Two connectors carry the same replica UUID, or a replica is added twice.
    #[error("duplicate replica {0}")]
    DuplicateReplica(String),

    /// No replica with this UUID is a member.
    #[error("unknown replica {0}")]
    UnknownReplica(String),

    /// The operation would leave the mirror without an in-sync replica.
    #[error("replica {0} is the last in-sync replica")]
    LastReplica(String),

    /// More replicas than a label can list.
    #[error("too many replicas: {0} (at most {max})", max = super::label::MAX_MEMBERS)]
    TooManyReplicas(usize),

    /// A replica's label is unreadable or inconsistent with the mirror.
    #[error("replica {replica}: bad label: {reason}")]
    BadLabel {
        /// The replica (its description).
        replica: String,
        /// What is wrong.
        reason: String,
    },

    /// Connecting to a replica failed.
    #[error("replica {replica}: connect failed: {source}")]
    Connect {
        /// The replica (its description).
        replica: String,
        /// The error.
        #[source]
        source: BlockError,
    },

    /// A grow was refused (nothing changed).
    #[error("mirror {mirror}: cannot grow: {reason}")]
    Grow {
        /// The mirror UUID.
        mirror: String,
        /// Why.
        reason: String,
    },

    /// Invalid arguments or options.
    #[error("invalid mirror configuration: {0}")]
    Invalid(String),

    /// The mirror was closed.
    #[error("mirror {mirror} is closed")]
    Closed {
        /// The mirror UUID.
        mirror: String,
    },
}

impl From<MirrorError> for BlockError {
    fn from(e: MirrorError) -> BlockError {
        match e {
            MirrorError::Block(e) => e,
            e @ (MirrorError::NoHealthyReplica { .. } | MirrorError::Closed { .. }) => {
                BlockError::Gone(e.to_string())
            }
            MirrorError::Invalid(msg) => BlockError::InvalidSpec(msg),
            e => BlockError::Io {
                op: "mirror",
                source: io::Error::other(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_block_errors() {
        let e: BlockError = MirrorError::NoHealthyReplica { mirror: "m".into() }.into();
        assert!(matches!(e, BlockError::Gone(ref s) if s.contains("no healthy replica")));
        let e: BlockError = MirrorError::Block(BlockError::NoSpace).into();
        assert!(matches!(e, BlockError::NoSpace));
        let e: BlockError = MirrorError::SplitBrain {
            mirror: "m".into(),
            detail: "x".into(),
        }
        .into();
        assert!(matches!(e, BlockError::Io { op: "mirror", .. }));
        assert!(e.to_string().contains("split brain"));
    }
}
