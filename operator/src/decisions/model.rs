//! What the decisions look at: nodes with their pools, a volume's replicas, topology, sizes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::crd::ReplicaState;
use crate::crd::volume::{TopologyTerm, ValidVolumeSpec};

/// Block size of volumes: sizes are rounded up to whole blocks.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes at the start of every replica that the mirror keeps for its labels and dirty-region
/// log (the datapath's mirror label reserve, 1 MiB).
pub const MIRROR_RESERVE_BYTES: u64 = 1 << 20;

/// Size of each replica of a volume of `volume_bytes`: the size rounded up to whole blocks,
/// plus the mirror's reserve. `None` if that overflows.
pub fn replica_bytes(volume_bytes: u64) -> Option<u64> {
    volume_bytes
        .checked_next_multiple_of(BLOCK_SIZE)?
        .checked_add(MIRROR_RESERVE_BYTES)
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name (its FerriteNode's name).
    pub name: String,
    /// Its topology labels (the FerriteNode's labels).
    pub labels: BTreeMap<String, String>,
    /// `spec.schedulable`: new replicas and targets may go there.
    pub schedulable: bool,
    /// The node API answers.
    pub reachable: bool,
    /// Its pools.
    pub pools: Vec<PoolView>,
    /// Volume targets it serves now (spreads targets).
    pub targets: usize,
}

/// A pool as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// StoragePool name.
    pub name: String,
    /// Phase is Online (Pending, Degraded and Failed pools get no new replicas).
    pub online: bool,
    /// Usable bytes.
    pub capacity_bytes: u64,
    /// Unallocated bytes.
    pub free_bytes: u64,
    /// Sum of the sizes of the replicas in the pool (thin ones at their full size).
    pub provisioned_bytes: u64,
}

/// Where a volume's replicas may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Nodes allowed; `None` means any.
    pub allowed_nodes: Option<BTreeSet<String>>,
    /// Labels a node must carry, with these values.
    pub required_labels: BTreeMap<String, String>,
    /// `allowedTopologies` terms: a node must match one (empty: no restriction).
    pub terms: Vec<TopologyTerm>,
}

/// Keys whose value is the node's name rather than one of its labels.
pub const NODE_NAME_KEYS: [&str; 2] = ["topology.ferrite.dev/node", "kubernetes.io/hostname"];

/// The label that says which zone a node is in; replicas are spread over zones.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's value for a topology key: its name for [`NODE_NAME_KEYS`], else its label.
pub fn topology_value<'n>(node: &'n NodeView, key: &str) -> Option<&'n str> {
    if NODE_NAME_KEYS.contains(&key) {
        Some(node.name.as_str())
    } else {
        node.labels.get(key).map(String::as_str)
    }
}

/// Whether `node` matches every expression of `term`.
fn matches_term(node: &NodeView, term: &TopologyTerm) -> bool {
    term.match_label_expressions
        .iter()
        .all(|e| topology_value(node, &e.key).is_some_and(|v| e.values.iter().any(|w| w == v)))
}

/// Why a node does not satisfy a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyMismatch {
    /// Not in `allowedNodes`.
    NotAllowed,
    /// It matches none of the `allowedTopologies` terms.
    NoTerm,
    /// A required label is absent or has another value.
    Label {
        /// The label key.
        key: String,
        /// The value required.
        want: String,
    },
}

impl fmt::Display for TopologyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyMismatch::NotAllowed => write!(f, "not in allowedNodes"),
            TopologyMismatch::NoTerm => write!(f, "matches no allowedTopologies term"),
            TopologyMismatch::Label { key, want } => write!(f, "lacks label {key}={want}"),
        }
    }
}

impl Topology {
    /// Checks a node against the topology.
    pub fn admits(&self, node: &NodeView) -> Result<(), TopologyMismatch> {
        if let Some(allowed) = &self.allowed_nodes
            && !allowed.contains(&node.name)
        {
            return Err(TopologyMismatch::NotAllowed);
        }
        for (key, want) in &self.required_labels {
            if node.labels.get(key) != Some(want) {
                return Err(TopologyMismatch::Label {
                    key: key.clone(),
                    want: want.clone(),
                });
            }
        }
        if !self.terms.is_empty() && !self.terms.iter().any(|t| matches_term(node, t)) {
            return Err(TopologyMismatch::NoTerm);
        }
        Ok(())
    }
}

impl From<&ValidVolumeSpec> for Topology {
    fn from(spec: &ValidVolumeSpec) -> Topology {
        Topology {
            allowed_nodes: spec.allowed_nodes.clone(),
            required_labels: spec.required_node_labels.clone(),
            terms: spec.allowed_topologies.clone(),
        }
    }
}

/// A replica of a volume as repair and target choice see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// Replica UUID.
    pub uuid: String,
    /// Node holding it.
    pub node: String,
    /// Pool holding it.
    pub pool: String,
    /// State in the volume's mirror (from `status.replicas`).
    pub state: ReplicaState,
    /// How long it has been in `state` (now minus its `lastTransitionTime`).
    pub in_state_for: Duration,
    /// Its node is reachable and lists the replica as intact. A Faulted replica with this
    /// set has come back and gets a partial rebuild.
    pub present_on_node: bool,
}

/// Formats a byte count for messages: `512 B`, `4 KiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut scaled = bytes;
    while scaled >= 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    let base = 1u64 << (10 * unit);
    if bytes.is_multiple_of(base) {
        format!("{} {}", bytes / base, UNITS[unit])
    } else {
        // One decimal, rounded down; precision is fine for a message.
        let tenths = (u128::from(bytes) * 10 / u128::from(base)) % 10;
        format!("{scaled}.{tenths} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            schedulable: true,
            reachable: true,
            pools: vec![],
            targets: 0,
        }
    }

    #[test]
    fn replica_size_adds_the_mirror_reserve_to_whole_blocks() {
        assert_eq!(replica_bytes(1), Some(4096 + (1 << 20)));
        assert_eq!(replica_bytes(1 << 30), Some((1 << 30) + (1 << 20)));
        assert_eq!(replica_bytes(u64::MAX), None);
    }

    #[test]
    fn topology_checks_names_and_labels() {
        let t = Topology {
            allowed_nodes: Some(["a".to_string(), "b".to_string()].into()),
            required_labels: [("zone".to_string(), "z1".to_string())].into(),
            terms: vec![],
        };
        assert_eq!(t.admits(&node("a", &[("zone", "z1")])), Ok(()));
        assert_eq!(
            t.admits(&node("c", &[("zone", "z1")])),
            Err(TopologyMismatch::NotAllowed)
        );
        let err = t.admits(&node("b", &[("zone", "z2")])).unwrap_err();
        assert_eq!(err.to_string(), "lacks label zone=z1");
        assert_eq!(Topology::default().admits(&node("x", &[])), Ok(()));
        // allowedTopologies: any term, every expression of it; node keys name the node.
        let term = |exprs: &[(&str, &[&str])]| TopologyTerm {
            match_label_expressions: exprs
                .iter()
                .map(|(k, vs)| crate::crd::volume::TopologyExpression {
                    key: k.to_string(),
                    values: vs.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
        };
        let t = Topology {
            terms: vec![
                term(&[(ZONE_LABEL, &["z1", "z2"])]),
                term(&[("topology.ferrite.dev/node", &["x"])]),
            ],
            ..Topology::default()
        };
        assert_eq!(t.admits(&node("a", &[(ZONE_LABEL, "z2")])), Ok(()));
        assert_eq!(t.admits(&node("x", &[])), Ok(()));
        assert_eq!(
            t.admits(&node("b", &[(ZONE_LABEL, "z3")])),
            Err(TopologyMismatch::NoTerm)
        );
        assert_eq!(
            TopologyMismatch::NoTerm.to_string(),
            "matches no allowedTopologies term"
        );
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes((1 << 30) + (1 << 20)), "1.0 GiB");
    }
}
