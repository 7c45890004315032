//! Errors the target's management API returns (adding subsystems, listening).

use thiserror::Error;

/// A management operation on the target failed; nothing was changed.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error("invalid NQN: {0}")]
    InvalidNqn(#[from] ferrite_protocol::nqn::NqnError),
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    #[error("subsystem {0} not found")]
    SubsystemNotFound(String),
    #[error("{0} is reserved for the discovery subsystem")]
    ReservedNqn(String),
    #[error("invalid namespace configuration for {nqn}: {reason}")]
    InvalidNamespace { nqn: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
