//! Target choice: which node serves a volume's NVMe/TCP target (the mirror over its
//! replicas).
//!
//! Rules, in order:
//! 1. Keep the current target node while it is reachable: moving the target makes every
//!    host reconnect to a new address.
//! 2. Otherwise the `preferred` node (the CSI consumer's node from the topology request), if
//!    it is reachable, schedulable and holds an Online replica.
//! 3. Otherwise a reachable, schedulable node holding an Online replica (one local leg; reads
//!    can stay local), then one holding a Rebuilding or Pending replica.
//! 4. Otherwise any reachable, schedulable node the volume's topology admits (every replica
//!    is then remote).
//!
//! Within a rule, the node serving the fewest targets wins, then the smaller name.

use super::model::{NodeView, ReplicaView, Topology};
use crate::crd::ReplicaState;

/// Why a node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetReason {
    /// It is the current target node and is reachable.
    Current,
    /// It is the preferred node and holds an Online replica.
    Preferred,
    /// It holds an Online replica.
    OnlineReplica,
    /// It holds a replica that is not in sync yet.
    Replica,
    /// No node holding a replica can serve; this one holds none.
    NoLocalReplica,
}

/// The chosen target node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetChoice {
    /// Node name.
    pub node: String,
    /// Why.
    pub reason: TargetReason,
}

/// No node can serve the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no reachable, schedulable node (admitted by the volume's topology) can serve the target")]
pub struct NoTargetNode;

/// Chooses the target node of a volume.
pub fn choose_target(
    replicas: &[ReplicaView],
    nodes: &[NodeView],
    topology: &Topology,
    current: Option<&str>,
    preferred: Option<&str>,
) -> Result<TargetChoice, NoTargetNode> {
    let usable = |n: &&NodeView| n.reachable && n.schedulable;
    let pick = |reason: TargetReason, filter: &dyn Fn(&NodeView) -> bool| {
        nodes
            .iter()
            .filter(usable)
            .filter(|n| filter(n))
            .min_by(|a, b| a.targets.cmp(&b.targets).then(a.name.cmp(&b.name)))
            .map(|n| TargetChoice {
                node: n.name.clone(),
                reason,
            })
    };
    let holds = |n: &NodeView, states: &[ReplicaState]| {
        replicas
            .iter()
            .any(|r| r.node == n.name && states.contains(&r.state))
    };

    if let Some(cur) = current
        && nodes.iter().any(|n| n.name == cur && n.reachable)
    {
        return Ok(TargetChoice {
            node: cur.to_string(),
            reason: TargetReason::Current,
        });
    }
    if let Some(pref) = preferred
        && let Some(choice) = pick(TargetReason::Preferred, &|n| {
            n.name == pref && holds(n, &[ReplicaState::Online])
        })
    {
        return Ok(choice);
    }
    pick(TargetReason::OnlineReplica, &|n| {
        holds(n, &[ReplicaState::Online])
    })
    .or_else(|| {
        pick(TargetReason::Replica, &|n| {
            holds(n, &[ReplicaState::Rebuilding, ReplicaState::Pending])
        })
    })
    .or_else(|| {
        pick(TargetReason::NoLocalReplica, &|n| {
            topology.admits(n).is_ok()
        })
    })
    .ok_or(NoTargetNode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn node(name: &str, targets: usize) -> NodeView {
        NodeView {
            name: name.into(),
            labels: Default::default(),
            schedulable: true,
            reachable: true,
            pools: vec![],
            targets,
        }
    }

    fn replica(node: &str, state: ReplicaState) -> ReplicaView {
        ReplicaView {
            uuid: format!("r-{node}"),
            node: node.into(),
            pool: "p".into(),
            state,
            in_state_for: Duration::ZERO,
            present_on_node: true,
        }
    }

    fn choose(
        replicas: &[ReplicaView],
        nodes: &[NodeView],
        current: Option<&str>,
        preferred: Option<&str>,
    ) -> (String, TargetReason) {
        let c = choose_target(replicas, nodes, &Topology::default(), current, preferred).unwrap();
        (c.node, c.reason)
    }

    #[test]
    fn a_reachable_current_target_stays() {
        let nodes = [node("a", 5), node("b", 0)];
        let replicas = [replica("b", ReplicaState::Online)];
        assert_eq!(
            choose(&replicas, &nodes, Some("a"), Some("b")),
            ("a".into(), TargetReason::Current)
        );
    }

    #[test]
    fn a_node_holding_an_online_replica_is_preferred() {
        let mut down = node("a", 0);
        down.reachable = false;
        let nodes = [down, node("b", 3), node("c", 1), node("d", 0)];
        let replicas = [
            replica("a", ReplicaState::Online),
            replica("b", ReplicaState::Online),
            replica("c", ReplicaState::Rebuilding),
        ];
        // a is gone; b holds the only reachable Online replica even though it is busiest.
        assert_eq!(
            choose(&replicas, &nodes, Some("a"), None),
            ("b".into(), TargetReason::OnlineReplica)
        );
        // The consumer's node wins only when it holds an Online replica.
        assert_eq!(
            choose(&replicas, &nodes, None, Some("c")),
            ("b".into(), TargetReason::OnlineReplica)
        );
        assert_eq!(
            choose(&replicas, &nodes, None, Some("b")),
            ("b".into(), TargetReason::Preferred)
        );
    }

    #[test]
    fn ties_go_to_the_least_loaded_then_smallest_name() {
        let nodes = [node("c", 1), node("b", 1), node("a", 2)];
        let replicas = [
            replica("a", ReplicaState::Online),
            replica("b", ReplicaState::Online),
            replica("c", ReplicaState::Online),
        ];
        assert_eq!(
            choose(&replicas, &nodes, None, None),
            ("b".into(), TargetReason::OnlineReplica)
        );
    }

    #[test]
    fn falls_back_to_unsynced_replicas_then_to_any_admitted_node() {
        let mut cordoned = node("a", 0);
        cordoned.schedulable = false;
        let nodes = [cordoned, node("b", 0), node("c", 0)];
        let replicas = [
            replica("a", ReplicaState::Online),
            replica("c", ReplicaState::Pending),
        ];
        assert_eq!(
            choose(&replicas, &nodes, None, None),
            ("c".into(), TargetReason::Replica)
        );
        assert_eq!(
            choose(&[], &nodes, None, None),
            ("b".into(), TargetReason::NoLocalReplica)
        );
        let only_c = Topology {
            allowed_nodes: Some(["c".to_string()].into()),
            required_labels: Default::default(),
            terms: vec![],
        };
        let got = choose_target(&[], &nodes, &only_c, None, None).unwrap();
        assert_eq!(got.node, "c");
        assert_eq!(
            choose_target(&[], &nodes[..1], &only_c, None, None),
            Err(NoTargetNode)
        );
    }
}
