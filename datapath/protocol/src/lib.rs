//! Sans-I/O NVMe/TCP and NVMe over Fabrics protocol structures for Ferrite.
//!
//! This crate owns the wire formats: NVMe/TCP PDUs (framing, header and data digests),
//! NVMe submission and completion queue entries, fabrics commands (Connect, Property Get/Set,
//! Authentication Send/Receive with the DH-HMAC-CHAP messages and computations), status
//! codes, Identify data structures and log pages. It performs no I/O, spawns nothing and
//! imports no other Ferrite crate, so the target, the host library, the tests and the
//! fuzzer all share one parser.

pub mod auth;
pub mod bytes;
pub mod command;
pub mod completion;
pub mod dhchap;
pub mod digest;
pub mod fabrics;
pub mod ffdhe;
pub mod identify;
pub mod log_page;
pub mod nqn;
pub mod pdu;
pub mod status;

pub use command::{SglDescriptor, Sqe};
pub use completion::Cqe;
pub use pdu::{CommonHeader, Digests, Pdu, PduError, PduType};
pub use status::Status;
