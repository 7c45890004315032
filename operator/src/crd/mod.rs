//! The custom resources: Rust types from which the CRDs in `manifests/crds.yaml` are generated.
//!
//! - [`StoragePool`] (`storagepools.ferrite.dev`, cluster-scoped): a RAID0 pool over one
//!   node's disks.
//! - [`Volume`] (`volumes.ferrite.dev`, cluster-scoped): a replicated block volume served
//!   over NVMe/TCP.
//! - [`FerriteNode`] (`ferritenodes.ferrite.dev`, cluster-scoped): a node's datapath
//!   registration (where its node API listens) and what the node reports about itself.
//!
//! Every schema must be accepted by `apiextensions.k8s.io/v1` on Kubernetes 1.20: structural,
//! validated with `minimum`/`maximum`/`minItems`/`pattern`/`enum` only (no CEL), signed
//! integers only (`int32`/`int64`, as the API conventions require). [`generate`] builds the
//! CRDs and [`structural`] checks those rules.

pub mod common;
pub mod generate;
pub mod node;
pub mod pool;
pub mod structural;
pub mod volume;

pub use common::{Endpoint, SpecError};
pub use node::{FerriteNode, FerriteNodeSpec, FerriteNodeStatus, NodePhase};
pub use pool::{
    MemberState, MemberStatus, PoolPhase, StoragePool, StoragePoolSpec, StoragePoolStatus,
    StripeSize,
};
pub use volume::{
    RebuildProgress, ReplicaState, ReplicaStatus, Volume, VolumeSpec, VolumeState, VolumeStatus,
    VolumeTopology,
};

/// API group of every Ferrite resource.
pub const GROUP: &str = "ferrite.dev";
/// API version of the resources defined here.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get ferrite` category every Ferrite resource belongs to.
pub const CATEGORY: &str = "ferrite";
