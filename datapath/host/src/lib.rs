//! Ferrite's NVMe/TCP host (initiator) library.
//!
//! [`Controller::connect`] opens an association with a remote NVMe/TCP controller: an admin
//! queue and a set of I/O queues, each on its own TCP connection, with pipelined commands,
//! in-capsule or R2T-driven writes, C2HData reads, optional CRC32C digests and a keep-alive
//! task. [`discover`] reads a target's discovery log. [`RemoteNamespace`] turns a namespace of
//! a connected controller into a [`ferrite_block::BlockDevice`], which is how a mirror reaches
//! replicas on other nodes.
//!
//! A controller that asks for in-band authentication (ATR in the Connect response) gets the
//! DH-HMAC-CHAP transaction on every queue (`auth`), with [`HostOptions::dhchap_secret`] and,
//! for bidirectional authentication, [`HostOptions::dhchap_ctrl_secret`].
//!
//! Layout: `connection` (TCP + ICReq/ICResp), `queue` (one connection's command engine; its
//! reader and writer tasks in `queue::wire`), `transfer` (pure bookkeeping: CIDs, R2T
//! splitting, read reassembly), `controller` (state, bring-up, queue choice, shutdown),
//! `admin` (admin and fabrics commands, keep-alive), `nvm` (Read/Write/Flush/Write
//! Zeroes/Deallocate), `discovery`, `remote` (the `BlockDevice`), `options`, `error`,
//! `join` (run a split I/O's commands together).

mod admin;
mod auth;
mod connection;
mod controller;
mod discovery;
mod error;
mod join;
mod nvm;
mod options;
mod queue;
mod remote;
mod replica;
mod transfer;

pub use controller::{Controller, NamespaceGeometry};
pub use discovery::{discover, read_discovery_log};
pub use error::HostError;
pub use ferrite_protocol::dhchap::{DhGroup, HashId, Secret as DhchapSecret};
pub use ferrite_protocol::identify::{IdentifyController, IdentifyNamespace};
pub use ferrite_protocol::log_page::DiscoveryEntry;
pub use options::{HostOptions, format_uuid, random_uuid, uuid_hostnqn};
pub use remote::RemoteNamespace;
pub use replica::RemoteReplica;
