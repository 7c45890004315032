//! Ferrite's NVMe/TCP target.
//!
//! A [`Target`] holds subsystems (each with an access list and namespaces backed by
//! [`ferrite_block::BlockDevice`]s) and serves them on one or more TCP listeners, together
//! with the discovery subsystem. Per connection it runs the NVMe/TCP state machine
//! (`connection`), binds the queue to a controller (`controller`), and executes admin
//! (`admin`), fabrics (`fabrics`) and I/O (`io`) commands. It reaches storage only through
//! the `BlockDevice` trait.
//!
//! Every listener is reachable by hostile peers, so (limits in [`TargetOptions`], counters in
//! [`stats::TargetStats`], see the crate README): lengths from the wire are checked against
//! MDTS and the negotiated limits before anything is allocated; a queue never has more
//! commands outstanding than its SQSIZE allows; each connection has a memory budget (over it
//! the target stops reading from that host, and a host that does not drain its socket is
//! disconnected); every wait on a peer has a timeout; connections are limited in total and
//! per peer address.
//!
//! Hosts given DH-HMAC-CHAP keys ([`DhchapKeys`], set with [`Target::add_subsystem_with_keys`]
//! or [`Target::set_host_keys`]) must authenticate each queue in band (`auth`) before any
//! other command; hosts without keys are admitted by the access list alone.

mod admin;
mod auth;
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

pub use auth::{DhchapKeys, HostKeys};
pub use error::TargetError;
pub use options::TargetOptions;
pub use registry::{NamespaceInfo, SubsystemInfo, Target};
pub use subsystem::{HostAccess, NamespaceConfig, SubsystemConfig};
