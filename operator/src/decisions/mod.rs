//! The operator's decisions as plain functions of plain data: no API server, no node API, no
//! clock. The reconcilers fill the [`model`] types from StoragePool, FerriteNode and Volume
//! objects (and the nodes' answers), call these functions, and carry out what they return.
//!
//! - [`placement`]: which nodes and pools get a volume's replicas.
//! - [`target`]: which node serves a volume's NVMe/TCP target.
//! - [`repair`]: what to do about faulted, missing and surplus replicas.
//! - [`status`]: a volume's state and a pool's phase from what was observed.
//! - [`growth`]: whether a volume's served size must and can grow to its spec.
//! - [`orphans`]: which replicas and targets on a node no Volume refers to, and when they go.

pub mod growth;
pub mod model;
pub mod orphans;
pub mod placement;
pub mod repair;
pub mod status;
pub mod target;

pub use model::{NodeView, PoolView, ReplicaView, Topology};
