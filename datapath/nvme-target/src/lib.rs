//! Ferrite's NVMe/TCP target.
//!
//! A [`Target`] holds subsystems (each with an access list and namespaces backed by
//! [`ferrite_block::BlockDevice`]s) and serves them on one or more TCP listeners, together
//! with the discovery subsystem. Per connection it runs the NVMe/TCP state machine
//! (`connection`), binds the queue to a controller (`controller`), and executes admin
//! (`admin`), fabrics (`fabrics`) and I/O (`io`) commands. It reaches storage only through
//! the `BlockDevice` trait.

mod admin;
mod connection;
mod controller;
mod discovery;
mod error;
mod fabrics;
mod identity;
mod io;
mod options;
mod registry;
mod running;
pub mod stats;
mod subsystem;

pub use error::TargetError;
pub use options::TargetOptions;
pub use registry::{NamespaceInfo, SubsystemInfo, Target};
pub use subsystem::{HostAccess, NamespaceConfig, SubsystemConfig};
