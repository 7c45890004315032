//! [`HostError`]: the one error type of the host library, and the conversions that attach an
//! operation name to NVMe statuses and timeouts.

use std::io;
use std::sync::Arc;

use ferrite_protocol::{PduError, Status};

/// Everything that can go wrong talking to a remote NVMe/TCP controller.
///
/// The type is `Clone` so that one connection failure can be reported to every command that
/// was outstanding on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    /// The controller completed the command with a non-success status.
    #[error("{op} failed: {status}")]
    Nvme {
        /// The command, e.g. "read" or "identify controller".
        op: &'static str,
        /// The completion status.
        status: Status,
    },

    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),

    /// The controller sent a malformed PDU or violated the transport protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] PduError),

    /// The Fabrics Connect command was rejected.
    #[error("connect rejected: {status} ({detail})")]
    ConnectRejected {
        /// The Connect completion status.
        status: Status,
        /// What the controller pointed at (the invalid parameter), in words.
        detail: String,
    },

    /// No answer arrived within the configured timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),

    /// The connection is closed (by us or by the controller).
    #[error("connection closed")]
    Closed,

    /// The controller answered, but with something the host cannot use.
    #[error("invalid response: {0}")]
    InvalidResponse(String),

    /// The controller terminated the connection with a C2HTermReq.
    #[error("connection terminated by the controller: fatal error status {fes:#x}, field {fei:#x}")]
    Terminated {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information (offset of the offending field).
        fei: u32,
    },

    /// In-band authentication (DH-HMAC-CHAP) failed or could not be run.
    #[error("authentication of queue {qid} failed: {reason}")]
    Authentication {
        /// The queue being authenticated.
        qid: u16,
        /// What went wrong, in words.
        reason: String,
    },

    /// The caller asked for something the host cannot send (bad length, unknown queue, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl From<io::Error> for HostError {
    fn from(e: io::Error) -> Self {
        HostError::Io(Arc::new(e))
    }
}

impl HostError {
    /// The NVMe status, for errors that carry one.
    pub fn status(&self) -> Option<Status> {
        match self {
            HostError::Nvme { status, .. } | HostError::ConnectRejected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Whether the error means the connection is unusable (as opposed to one failed command).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            HostError::Io(_)
                | HostError::Protocol(_)
                | HostError::Closed
                | HostError::Terminated { .. }
        )
    }
}

/// Turns a completion status into `Ok(())` or [`HostError::Nvme`].
pub(crate) fn check_status(op: &'static str, status: Status) -> Result<(), HostError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(HostError::Nvme { op, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert!(check_status("read", Status::SUCCESS).is_ok());
        let e = check_status("read", Status::LBA_OUT_OF_RANGE).unwrap_err();
        assert_eq!(e.status(), Some(Status::LBA_OUT_OF_RANGE));
        assert!(!e.is_connection_error());
        assert!(
            e.to_string().starts_with("read failed: lba out of range"),
            "{e}"
        );
        assert!(HostError::Closed.is_connection_error());
        let io: HostError = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert!(io.is_connection_error());
        assert!(
            HostError::Terminated { fes: 3, fei: 0 }
                .to_string()
                .contains("0x3")
        );
    }
}
