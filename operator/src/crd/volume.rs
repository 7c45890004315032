//! `Volume`: a replicated block volume served over NVMe/TCP.
//!
//! Cluster-scoped, like the PersistentVolume it backs: the CSI controller creates it from a
//! CreateVolume call (which carries no namespace), its name is the PV name, and its replicas
//! live in cluster-scoped pools on cluster-scoped nodes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Endpoint, SpecError};

/// Fewest replicas a volume may have.
pub const MIN_REPLICAS: i32 = 1;
/// Most replicas a volume may have.
pub const MAX_REPLICAS: i32 = 3;
/// Replicas of a volume whose spec does not say.
pub const DEFAULT_REPLICAS: i32 = 2;

/// Desired state of a volume.
// Several printcolumn(...) share `type_ = "string"` and the like, which clippy takes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "Volume",
    plural = "volumes",
    shortname = "fvol",
    category = "ferrite",
    status = "VolumeStatus",
    doc = "A block volume mirrored over replicas in StoragePools on distinct nodes and served over NVMe/TCP."
)]
#[kube(printcolumn(
    name = "Size",
    type_ = "integer",
    format = "int64",
    json_path = ".spec.sizeBytes",
    description = "Size in bytes"
))]
#[kube(printcolumn(
    name = "Replicas",
    type_ = "integer",
    format = "int32",
    json_path = ".spec.replicas",
    description = "Desired replica count"
))]
#[kube(printcolumn(
    name = "State",
    type_ = "string",
    json_path = ".status.state",
    description = "Pending, Online, Degraded, Rebuilding or Faulted"
))]
#[kube(printcolumn(
    name = "Node",
    type_ = "string",
    json_path = ".status.targetNode",
    description = "Node serving the NVMe/TCP target"
))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Size in bytes as seen by hosts (rounded up to whole 4 KiB blocks). Must be at least 1.
    #[schemars(range(min = 1))]
    pub size_bytes: i64,
    /// Number of replicas, each on a different node: 1 to 3.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 3))]
    pub replicas: i32,
    /// Thin provisioning: replicas allocate space on first write instead of up front.
    #[serde(default = "default_thin")]
    pub thin: bool,
    /// Where replicas (and the target) may be placed. Absent: any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<VolumeTopology>,
    /// Filesystem hint for the CSI node plugin (see [`FsType`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FsType>,
    /// Host NQNs allowed to connect to the volume's NVMe/TCP target. The CSI controller adds
    /// a node's host NQN on ControllerPublishVolume and removes it on Unpublish; the
    /// reconciler keeps the target's access list equal to this one, also when it has to
    /// create the target again (a node that lost its state). Empty: no host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "set",
        "items" = {"type": "string", "pattern": "^nqn\\.[0-9]{4}-[0-9]{2}\\..+", "maxLength": 223}
    ))]
    pub allowed_hosts: Vec<String>,
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

fn default_thin() -> bool {
    true
}

/// Placement constraints of a volume. All given constraints must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeTopology {
    /// Names of the nodes (FerriteNodes) that may hold replicas. Empty: any node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_nodes: Vec<String>,
    /// Labels a node's FerriteNode must carry (all of them, with these values) to hold a
    /// replica, e.g. `topology.kubernetes.io/zone: a`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_node_labels: BTreeMap<String, String>,
    /// Topology terms as a StorageClass's `allowedTopologies` has them: a node may hold a
    /// replica if it matches any term (every expression of the term). Empty: any node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_topologies: Vec<TopologyTerm>,
}

/// One `allowedTopologies` term: all its expressions must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyTerm {
    /// Label requirements.
    #[serde(default)]
    pub match_label_expressions: Vec<TopologyExpression>,
}

/// A node's value for `key` must be one of `values`. The keys `topology.ferrite.dev/node`
/// and `kubernetes.io/hostname` name the node; any other key is a label of its FerriteNode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyExpression {
    /// Label key.
    #[schemars(length(min = 1))]
    pub key: String,
    /// Values allowed.
    #[schemars(length(min = 1))]
    pub values: Vec<String>,
}

/// Filesystem the CSI node plugin formats the volume with when it is mounted: a hint, the
/// StorageClass's `csi.storage.k8s.io/fstype` wins.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4 (the default when nothing says otherwise).
    Ext4,
    /// XFS.
    Xfs,
}

/// Overall state of the volume: Pending, Online, Degraded, Rebuilding or Faulted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeState {
    /// Replicas or the target are still being created.
    Pending,
    /// Served, with every desired replica in sync.
    Online,
    /// Served, but fewer in-sync replicas than desired and none being rebuilt.
    Degraded,
    /// Served, and at least one replica is being rebuilt.
    Rebuilding,
    /// Not served: no in-sync replica is reachable, or the target is down.
    Faulted,
}

/// State of one replica as the volume's mirror sees it.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum ReplicaState {
    /// Placed (recorded here) but not created, exported or attached yet.
    Pending,
    /// In sync: takes writes and serves reads.
    Online,
    /// Takes writes while the missing data is copied in.
    Rebuilding,
    /// Unreachable or failed; out of the mirror.
    Faulted,
}

/// How far a rebuild has got.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildProgress {
    /// Bytes copied so far.
    #[schemars(range(min = 0))]
    pub bytes_done: i64,
    /// Bytes to copy in all (a partial rebuild copies only the dirty regions).
    #[schemars(range(min = 0))]
    pub bytes_total: i64,
}

/// One replica of a volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replica UUID on its node (also its NVMe/TCP export name).
    #[schemars(length(min = 1))]
    pub uuid: String,
    /// Node holding it.
    pub node: String,
    /// StoragePool holding it.
    pub pool: String,
    /// Its state.
    pub state: ReplicaState,
    /// When `state` last changed (the repair grace period counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Progress of the rebuild while `state` is Rebuilding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_progress: Option<RebuildProgress>,
}

/// Observed state of a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Overall state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VolumeState>,
    /// Node serving the volume's NVMe/TCP target (the mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Subsystem NQN hosts connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
    /// Size in bytes the target serves (grows to `spec.sizeBytes` after an expansion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// NVMe/TCP addresses of the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Replicas: placed, being built, in sync or faulted. Recorded before they are created,
    /// so that placement survives an operator restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["uuid"]))]
    pub replicas: Vec<ReplicaStatus>,
    /// Conditions: `Ready`, `FullyReplicated`, `Scheduled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A volume spec checked and converted to the types the decisions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidVolumeSpec {
    /// Size in bytes (> 0).
    pub size_bytes: u64,
    /// Replica count (1..=3).
    pub replicas: usize,
    /// Thin provisioning.
    pub thin: bool,
    /// Allowed nodes; `None` means any.
    pub allowed_nodes: Option<BTreeSet<String>>,
    /// Labels a node must carry.
    pub required_node_labels: BTreeMap<String, String>,
    /// `allowedTopologies` terms (any one must match); empty: no restriction.
    pub allowed_topologies: Vec<TopologyTerm>,
}

impl VolumeSpec {
    /// Checks what admission should have rejected.
    pub fn validate(&self) -> Result<ValidVolumeSpec, SpecError> {
        let size_bytes = u64::try_from(self.size_bytes)
            .ok()
            .filter(|s| *s > 0)
            .ok_or(SpecError::OutOfRange {
                field: "spec.sizeBytes",
                value: self.size_bytes,
                min: 1,
                max: i64::MAX,
            })?;
        if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(SpecError::OutOfRange {
                field: "spec.replicas",
                value: i64::from(self.replicas),
                min: i64::from(MIN_REPLICAS),
                max: i64::from(MAX_REPLICAS),
            });
        }
        for h in &self.allowed_hosts {
            ferrite_protocol::nqn::validate(h).map_err(|e| SpecError::BadHostNqn {
                value: h.clone(),
                reason: e.to_string(),
            })?;
        }
        let replicas = usize::try_from(self.replicas).unwrap_or(1);
        let topology = self.topology.clone().unwrap_or_default();
        let allowed_nodes = if topology.allowed_nodes.is_empty() {
            None
        } else {
            Some(topology.allowed_nodes.into_iter().collect())
        };
        Ok(ValidVolumeSpec {
            size_bytes,
            replicas,
            thin: self.thin,
            allowed_nodes,
            required_node_labels: topology.required_node_labels,
            allowed_topologies: topology.allowed_topologies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let s: VolumeSpec = serde_json::from_value(json!({ "sizeBytes": 1048576 })).unwrap();
        assert_eq!(s.replicas, 2);
        assert!(s.thin);
        assert_eq!(s.topology, None);
        let v = s.validate().unwrap();
        assert_eq!(
            (v.size_bytes, v.replicas, v.allowed_nodes),
            (1 << 20, 2, None)
        );
    }

    #[test]
    fn out_of_range_specs_are_refused() {
        let spec = |size: i64, replicas: i32| VolumeSpec {
            size_bytes: size,
            replicas,
            thin: true,
            topology: None,
            fs_type: None,
            allowed_hosts: Vec::new(),
        };
        assert!(matches!(
            spec(0, 2).validate(),
            Err(SpecError::OutOfRange {
                field: "spec.sizeBytes",
                ..
            })
        ));
        assert!(matches!(
            spec(-5, 2).validate(),
            Err(SpecError::OutOfRange {
                field: "spec.sizeBytes",
                ..
            })
        ));
        assert!(matches!(
            spec(1, 0).validate(),
            Err(SpecError::OutOfRange {
                field: "spec.replicas",
                ..
            })
        ));
        let err = spec(1, 4).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.replicas is 4; it must be between 1 and 3"
        );
        let mut hosts = spec(4096, 2);
        hosts.allowed_hosts =
            vec!["nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e".into()];
        assert!(hosts.validate().is_ok());
        hosts.allowed_hosts.push("node-1".into());
        let err = hosts.validate().unwrap_err();
        assert!(matches!(err, SpecError::BadHostNqn { .. }), "{err}");
        assert!(err.to_string().contains("\"node-1\""), "{err}");
    }

    #[test]
    fn topology_converts_to_sets() {
        let s: VolumeSpec = serde_json::from_value(json!({
            "sizeBytes": 4096, "replicas": 1, "fsType": "xfs",
            "topology": { "allowedNodes": ["b", "a"], "requiredNodeLabels": { "zone": "z1" } }
        }))
        .unwrap();
        assert_eq!(s.fs_type, Some(FsType::Xfs));
        let v = s.validate().unwrap();
        assert_eq!(
            v.allowed_nodes.unwrap().into_iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(v.required_node_labels["zone"], "z1");
    }
}
