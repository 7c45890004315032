//! `FerriteNode`: a node's datapath registration.
//!
//! The object's name is the node's name (what `StoragePool.spec.node`, replica placement and
//! the CSI topology key `topology.ferrite.dev/node` use). The spec says where the node API
//! (gRPC) listens, which is all the operator needs to reach the node; the status is what the
//! node reports through that API (host NQN, NVMe/TCP listeners, version) plus the operator's
//! view of reachability and capacity. Its labels are the node's topology labels, matched by
//! `Volume.spec.topology.requiredNodeLabels`.
//!
//! Cluster-scoped, like the Node it describes. A separate kind rather than annotations on
//! core Nodes because the operator must work where Ferrite's nodes are not kubelets (the API
//! server test bed has none), and the name avoids `kubectl get node` ambiguity.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Endpoint;

/// How a node registers.
// Several printcolumn(...) share `type_ = "string"` and the like, which clippy takes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "FerriteNode",
    plural = "ferritenodes",
    shortname = "fnode",
    category = "ferrite",
    status = "FerriteNodeStatus",
    doc = "A node running the Ferrite datapath: where its node API listens and what it reports.",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.apiEndpoint",
        description = "Node API (gRPC) URL"
    )
)]
#[kube(printcolumn(
    name = "Phase",
    type_ = "string",
    json_path = ".status.phase",
    description = "Pending, Ready or Unreachable"
))]
#[kube(printcolumn(
    name = "Schedulable",
    type_ = "boolean",
    json_path = ".spec.schedulable",
    description = "Whether new replicas may be placed here"
))]
#[kube(printcolumn(
    name = "Free",
    type_ = "integer",
    format = "int64",
    json_path = ".status.freeBytes",
    description = "Free bytes over the node's pools"
))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct FerriteNodeSpec {
    /// URL of the node API (gRPC), e.g. `http://10.0.0.11:9500`.
    #[schemars(regex(pattern = r"^https?://[^/\s]+(/.*)?$"))]
    pub api_endpoint: String,
    /// Whether new replicas and targets may be placed on this node. Existing ones stay
    /// (like `kubectl cordon`).
    #[serde(default = "default_schedulable")]
    pub schedulable: bool,
}

fn default_schedulable() -> bool {
    true
}

/// Whether the operator can reach the node: Pending (not contacted yet), Ready or Unreachable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    /// Registered, not contacted yet.
    Pending,
    /// The node API answers.
    Ready,
    /// The node API does not answer.
    Unreachable,
}

/// What the node reports, and the operator's view of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FerriteNodeStatus {
    /// Reachability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// Host NQN the node's datapath uses to connect to remote replicas (allowed on their
    /// exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_nqn: Option<String>,
    /// NVMe/TCP listeners of the node's datapath.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvme_endpoints: Vec<Endpoint>,
    /// Datapath version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Sum of the capacities of the node's Online pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub capacity_bytes: Option<i64>,
    /// Sum of the free bytes of the node's Online pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub free_bytes: Option<i64>,
    /// Last time the node API answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Conditions: `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
