//! [`NodeError`]: why a storage operation was refused, in categories that map one to one onto
//! the node API's gRPC codes (see `api/proto/ferrite/node/v1/node.proto`).

use ferrite_block::mirror::MirrorError;
use ferrite_block::raid0::PoolError;
use ferrite_block::thin::ThinError;

/// A refused or failed storage operation.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Malformed request: bad UUID, NQN, size, disk spec.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named pool, replica or volume does not exist on this node.
    #[error("{0}")]
    NotFound(String),
    /// The key exists with a different spec.
    #[error("{0}")]
    AlreadyExists(String),
    /// No space for the replica.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The object is in use, or the disks belong to another pool.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A device or a remote replica cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (a metadata or state-file write failed...).
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    /// Classifies a RAID0 pool error, prefixed with `what`.
    pub fn pool(what: &str, e: PoolError) -> NodeError {
        let msg = format!("{what}: {e}");
        match e {
            PoolError::InvalidName { .. }
            | PoolError::InvalidStripeSize { .. }
            | PoolError::NilUuid
            | PoolError::NoMembers
            | PoolError::TooManyMembers { .. }
            | PoolError::BlockSizeMismatch { .. }
            | PoolError::MemberTooSmall { .. }
            | PoolError::DuplicateMember { .. } => NodeError::InvalidArgument(msg),
            PoolError::Io { .. } => NodeError::Unavailable(msg),
            PoolError::Label { .. } => NodeError::Internal(msg),
            _ => NodeError::FailedPrecondition(msg),
        }
    }

    /// Classifies a thin-store error, prefixed with `what`.
    pub fn thin(what: &str, e: ThinError) -> NodeError {
        let msg = format!("{what}: {e}");
        match e {
            ThinError::NoSpace { .. } | ThinError::TooManyVolumes(_) => {
                NodeError::ResourceExhausted(msg)
            }
            ThinError::AlreadyExists { .. } => NodeError::AlreadyExists(msg),
            ThinError::NotFound(_) | ThinError::VolumeGone(_) => NodeError::NotFound(msg),
            ThinError::InvalidArgument(_)
            | ThinError::Shrink { .. }
            | ThinError::DeviceTooSmall { .. } => NodeError::InvalidArgument(msg),
            ThinError::Device(_) => NodeError::Unavailable(msg),
            _ => NodeError::Internal(msg),
        }
    }

    /// Classifies a mirror error, prefixed with `what`.
    pub fn mirror(what: &str, e: MirrorError) -> NodeError {
        let msg = format!("{what}: {e}");
        match e {
            MirrorError::Block(_) | MirrorError::Connect { .. } | MirrorError::Closed { .. } => {
                NodeError::Unavailable(msg)
            }
            MirrorError::Invalid(_)
            | MirrorError::TooManyReplicas(_)
            | MirrorError::DuplicateReplica(_) => NodeError::InvalidArgument(msg),
            MirrorError::UnknownReplica(_) => NodeError::NotFound(msg),
            _ => NodeError::FailedPrecondition(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_store_errors() {
        assert!(matches!(
            NodeError::thin("r", ThinError::NoSpace { needed: 2, available: 1 }),
            NodeError::ResourceExhausted(m) if m.starts_with("r: ")
        ));
        assert!(matches!(
            NodeError::thin(
                "r",
                ThinError::AlreadyExists {
                    uuid: "u".into(),
                    existing: "x".into()
                }
            ),
            NodeError::AlreadyExists(_)
        ));
        assert!(matches!(
            NodeError::pool("p", PoolError::NoMembers),
            NodeError::InvalidArgument(_)
        ));
        assert!(matches!(
            NodeError::pool(
                "p",
                PoolError::NotAMember {
                    position: 0,
                    device: "d".into()
                }
            ),
            NodeError::FailedPrecondition(_)
        ));
    }
}
