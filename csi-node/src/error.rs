//! The node plugin's error type and its mapping to gRPC status codes.
//!
//! Every failure is one of a few kinds that decide the code the CO sees (the CSI spec's
//! table for each RPC); the message says what happened and what to do about it.

use tonic::{Code, Status};

/// What went wrong, by the gRPC code the CO should see.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A missing or malformed request field or context key.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, its namespace or a path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A requested size the volume cannot have (required above the limit).
    #[error("{0}")]
    OutOfRange(String),
    /// The volume is already staged/published with other, incompatible parameters.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call cannot proceed in the current state (not staged, device busy, a foreign
    /// filesystem on the device).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The target cannot be reached right now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Another call on the same volume is in progress.
    #[error("{0}")]
    Aborted(String),
    /// Something did not happen within its time limit.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The node does not support what was asked.
    #[error("{0}")]
    Unimplemented(String),
    /// An unexpected failure of the host (a tool, a syscall).
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    pub fn code(&self) -> Code {
        match self {
            NodeError::InvalidArgument(_) => Code::InvalidArgument,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::OutOfRange(_) => Code::OutOfRange,
            NodeError::AlreadyExists(_) => Code::AlreadyExists,
            NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
            NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::Aborted(_) => Code::Aborted,
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::Unimplemented(_) => Code::Unimplemented,
            NodeError::Internal(_) => Code::Internal,
        }
    }

    /// Prefixes the message with what was being done (`"volume v1: " + message`).
    pub fn context(self, what: impl std::fmt::Display) -> NodeError {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            NodeError::InvalidArgument(m) => NodeError::InvalidArgument(wrap(m)),
            NodeError::NotFound(m) => NodeError::NotFound(wrap(m)),
            NodeError::OutOfRange(m) => NodeError::OutOfRange(wrap(m)),
            NodeError::AlreadyExists(m) => NodeError::AlreadyExists(wrap(m)),
            NodeError::FailedPrecondition(m) => NodeError::FailedPrecondition(wrap(m)),
            NodeError::Unavailable(m) => NodeError::Unavailable(wrap(m)),
            NodeError::Aborted(m) => NodeError::Aborted(wrap(m)),
            NodeError::DeadlineExceeded(m) => NodeError::DeadlineExceeded(wrap(m)),
            NodeError::Unimplemented(m) => NodeError::Unimplemented(wrap(m)),
            NodeError::Internal(m) => NodeError::Internal(wrap(m)),
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// An I/O error on `path` while doing `what`, as an internal error.
pub fn io_err(what: &str, path: &std::path::Path, e: std::io::Error) -> NodeError {
    NodeError::Internal(format!("{what} {}: {e}", path.display()))
}
