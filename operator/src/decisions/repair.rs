//! Repair: what to do about a volume's faulted, missing and surplus replicas.
//!
//! Each Faulted replica is judged on its own:
//! - its node is back and still holds it (`present_on_node`): **partial rebuild**, i.e. it
//!   rejoins the mirror and only the regions written while it was away are copied;
//! - its node answers but no longer holds it, or it has been Faulted for at least the grace
//!   period: it is **lost**, and gets replaced by a new replica on another node (full
//!   rebuild), unless the volume already has enough other replicas, in which case it is
//!   just removed;
//! - otherwise (node away, grace not over): **wait**, and look again when the grace ends.
//!
//! Then the count is settled. Kept replicas (Online, Rebuilding, Pending, returning and
//! waiting ones) below `desired`: new replicas are **added**, placed by
//! [`super::placement`] away from the kept replicas' nodes. Above `desired` (the spec was
//! lowered, or a replaced replica came back): the surplus is **removed**, worst first:
//! waiting, then returning, Pending, Rebuilding, and Online replicas last (the one on the
//! target node very last), so an in-sync copy is never dropped while a worse one is kept.
//!
//! A new replica copies its data from an Online one; while a volume that has ever held data
//! has no Online replica, replacements and additions are **blocked** (rebuilding from
//! nothing would lose the data) and returning replicas are the way back.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use super::model::{NodeView, ReplicaView, Topology};
use super::placement::{
    Placement, PlacementError, PlacementPolicy, PlacementRequest, rank, select, shortfall,
};
use crate::crd::ReplicaState;

/// Tunables of repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairPolicy {
    /// How long a Faulted replica whose node is away is waited for before it is replaced.
    pub grace: Duration,
}

impl Default for RepairPolicy {
    fn default() -> Self {
        RepairPolicy {
            grace: Duration::from_secs(300),
        }
    }
}

/// The volume being repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairInput<'a> {
    /// Desired replica count (`spec.replicas`).
    pub desired: usize,
    /// Size of each replica.
    pub replica_bytes: u64,
    /// Thin replicas.
    pub thin: bool,
    /// Where replicas may go.
    pub topology: &'a Topology,
    /// The replicas in `status.replicas`.
    pub replicas: &'a [ReplicaView],
    /// Current target node.
    pub target_node: Option<&'a str>,
}

/// Why a replacement or addition cannot happen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// No Online replica to copy from.
    NoInSyncReplica,
    /// No node or pool can take the new replica.
    NoPlacement(PlacementError),
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::NoInSyncReplica => write!(
                f,
                "no Online replica to rebuild from; waiting for a faulted replica to return"
            ),
            Blocked::NoPlacement(e) => e.fmt(f),
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairAction {
    /// Leave this Faulted replica alone for `remaining`, then look again.
    Wait {
        /// Replica UUID.
        replica: String,
        /// Until the grace period ends.
        remaining: Duration,
    },
    /// Re-add this returning replica to the mirror and resync its dirty regions.
    PartialRebuild {
        /// Replica UUID.
        replica: String,
    },
    /// Drop this replica and create a new one at `with`, fully rebuilt.
    Replace {
        /// UUID of the replica given up.
        replica: String,
        /// Where the new one goes.
        with: Placement,
    },
    /// Create a new replica at `with`, fully rebuilt.
    Add {
        /// Where it goes.
        with: Placement,
    },
    /// Take this replica out of the mirror and destroy it.
    Remove {
        /// Replica UUID.
        replica: String,
    },
    /// A replacement (`replica` is the one to replace) or addition (`None`) cannot happen now.
    Blocked {
        /// The replica that should have been replaced, if any.
        replica: Option<String>,
        /// Why.
        reason: Blocked,
    },
}

/// Everything to do for a volume, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairPlan {
    /// Actions, in the order: removals, partial rebuilds, replacements, additions, waits,
    /// blocked.
    pub actions: Vec<RepairAction>,
    /// The shortest wait: reconcile again after it even if nothing else happens.
    pub requeue_after: Option<Duration>,
}

impl RepairPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// What happens to one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Online, Rebuilding or Pending.
    Keep,
    /// Faulted and back on its node.
    Returning,
    /// Faulted, node away, grace running.
    Waiting(Duration),
    /// Faulted for good.
    Lost,
}

fn fate(r: &ReplicaView, nodes: &[NodeView], grace: Duration) -> Fate {
    if r.state != ReplicaState::Faulted {
        return Fate::Keep;
    }
    if r.present_on_node {
        return Fate::Returning;
    }
    let node_answers = nodes.iter().any(|n| n.name == r.node && n.reachable);
    match grace.checked_sub(r.in_state_for) {
        Some(remaining) if !remaining.is_zero() && !node_answers => Fate::Waiting(remaining),
        _ => Fate::Lost,
    }
}

/// Removal order of surplus replicas: lower goes first.
fn removal_rank(r: &ReplicaView, f: Fate, target: Option<&str>) -> (u8, Duration) {
    match (f, r.state) {
        // Longest-waiting first (least remaining).
        (Fate::Waiting(remaining), _) => (0, remaining),
        (Fate::Returning, _) => (1, Duration::ZERO),
        (_, ReplicaState::Pending) => (2, Duration::ZERO),
        (_, ReplicaState::Rebuilding) => (3, Duration::ZERO),
        _ if Some(r.node.as_str()) == target => (5, Duration::ZERO),
        _ => (4, Duration::ZERO),
    }
}

/// Plans the repair of one volume.
pub fn plan_repair(
    input: &RepairInput<'_>,
    nodes: &[NodeView],
    policy: &RepairPolicy,
    placement: &PlacementPolicy,
) -> RepairPlan {
    let mut replicas: Vec<(&ReplicaView, Fate)> = input
        .replicas
        .iter()
        .map(|r| (r, fate(r, nodes, policy.grace)))
        .collect();
    replicas.sort_by(|a, b| a.0.uuid.cmp(&b.0.uuid));
    let (lost, mut kept): (Vec<_>, Vec<_>) =
        replicas.into_iter().partition(|(_, f)| *f == Fate::Lost);

    let mut plan = RepairPlan::default();

    // Surplus: remove the worst kept replicas.
    if kept.len() > input.desired {
        kept.sort_by(|a, b| {
            removal_rank(a.0, a.1, input.target_node)
                .cmp(&removal_rank(b.0, b.1, input.target_node))
                .then(a.0.uuid.cmp(&b.0.uuid))
        });
        let surplus = kept.len() - input.desired;
        for (r, _) in kept.drain(..surplus) {
            plan.actions.push(RepairAction::Remove {
                replica: r.uuid.clone(),
            });
        }
        kept.sort_by(|a, b| a.0.uuid.cmp(&b.0.uuid));
    }
    let missing = input.desired.saturating_sub(kept.len());
    let (to_replace, extra_lost) = lost.split_at(missing.min(lost.len()));
    for (r, _) in extra_lost {
        plan.actions.push(RepairAction::Remove {
            replica: r.uuid.clone(),
        });
    }

    for (r, f) in &kept {
        if *f == Fate::Returning {
            plan.actions.push(RepairAction::PartialRebuild {
                replica: r.uuid.clone(),
            });
        }
    }

    // Replacements first, then additions, share one ranking so they land on distinct nodes.
    let mut slots: Vec<Option<&ReplicaView>> = to_replace.iter().map(|(r, _)| Some(*r)).collect();
    slots.extend(std::iter::repeat_n(None, missing - to_replace.len()));
    if !slots.is_empty() {
        plan_new_replicas(input, nodes, placement, &slots, &mut plan);
    }

    for (r, f) in &kept {
        if let Fate::Waiting(remaining) = f {
            plan.actions.push(RepairAction::Wait {
                replica: r.uuid.clone(),
                remaining: *remaining,
            });
            plan.requeue_after = Some(plan.requeue_after.map_or(*remaining, |d| d.min(*remaining)));
        }
    }
    // Blocked actions were pushed by plan_new_replicas; keep them last.
    plan.actions
        .sort_by_key(|a| matches!(a, RepairAction::Blocked { .. }));
    plan
}

/// Places the new replicas for `slots` (a replica to replace, or `None` for an addition).
fn plan_new_replicas(
    input: &RepairInput<'_>,
    nodes: &[NodeView],
    placement: &PlacementPolicy,
    slots: &[Option<&ReplicaView>],
    plan: &mut RepairPlan,
) {
    let block = |plan: &mut RepairPlan, slot: Option<&ReplicaView>, reason: Blocked| {
        plan.actions.push(RepairAction::Blocked {
            replica: slot.map(|r| r.uuid.clone()),
            reason,
        });
    };
    let has_data = input
        .replicas
        .iter()
        .any(|r| r.state != ReplicaState::Pending);
    let has_source = input
        .replicas
        .iter()
        .any(|r| r.state == ReplicaState::Online);
    if has_data && !has_source {
        for slot in slots {
            block(plan, *slot, Blocked::NoInSyncReplica);
        }
        return;
    }
    // Nodes of the replicas that stay (not those being replaced).
    let replaced: BTreeSet<&str> = slots.iter().flatten().map(|r| r.uuid.as_str()).collect();
    let exclude: BTreeSet<String> = input
        .replicas
        .iter()
        .filter(|r| !replaced.contains(r.uuid.as_str()))
        .map(|r| r.node.clone())
        .collect();
    let request = PlacementRequest {
        replicas: slots.len(),
        replica_bytes: input.replica_bytes,
        thin: input.thin,
        topology: input.topology,
        exclude_nodes: &exclude,
        prefer_node: None,
    };
    let ranking = rank(&request, nodes, placement);
    let error = shortfall(&request, &ranking);
    let mut places = select(&request, ranking.candidates, nodes).into_iter();
    for slot in slots {
        match (places.next(), slot, &error) {
            (Some(with), Some(r), _) => plan.actions.push(RepairAction::Replace {
                replica: r.uuid.clone(),
                with,
            }),
            (Some(with), None, _) => plan.actions.push(RepairAction::Add { with }),
            (None, _, Some(e)) => block(plan, *slot, Blocked::NoPlacement(e.clone())),
            (None, _, None) => block(
                plan,
                *slot,
                Blocked::NoPlacement(PlacementError::NoReplicas),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::model::PoolView;

    const GIB: u64 = 1 << 30;
    const GRACE: Duration = Duration::from_secs(300);

    fn node(name: &str, reachable: bool) -> NodeView {
        NodeView {
            name: name.into(),
            labels: Default::default(),
            schedulable: true,
            reachable,
            pools: vec![PoolView {
                name: format!("{name}-pool"),
                online: true,
                capacity_bytes: 100 * GIB,
                free_bytes: 100 * GIB,
                provisioned_bytes: 0,
            }],
            targets: 0,
        }
    }

    fn replica(
        uuid: &str,
        node: &str,
        state: ReplicaState,
        secs: u64,
        present: bool,
    ) -> ReplicaView {
        ReplicaView {
            uuid: uuid.into(),
            node: node.into(),
            pool: format!("{node}-pool"),
            state,
            in_state_for: Duration::from_secs(secs),
            present_on_node: present,
        }
    }

    fn plan(desired: usize, replicas: &[ReplicaView], nodes: &[NodeView]) -> RepairPlan {
        let topology = Topology::default();
        let input = RepairInput {
            desired,
            replica_bytes: GIB,
            thin: true,
            topology: &topology,
            replicas,
            target_node: Some("a"),
        };
        plan_repair(
            &input,
            nodes,
            &RepairPolicy { grace: GRACE },
            &PlacementPolicy::default(),
        )
    }

    fn at(node: &str) -> Placement {
        Placement {
            node: node.into(),
            pool: format!("{node}-pool"),
        }
    }

    use ReplicaState::{Faulted, Online, Pending, Rebuilding};

    #[test]
    fn healthy_volumes_need_nothing() {
        let nodes = [node("a", true), node("b", true), node("c", true)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Rebuilding, 5, true),
        ];
        assert!(plan(2, &rs, &nodes).is_empty());
    }

    #[test]
    fn a_faulted_replica_is_waited_for_during_the_grace_period() {
        let nodes = [node("a", true), node("b", false), node("c", true)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Faulted, 60, false),
        ];
        let p = plan(2, &rs, &nodes);
        assert_eq!(
            p.actions,
            [RepairAction::Wait {
                replica: "r2".into(),
                remaining: Duration::from_secs(240)
            }]
        );
        assert_eq!(p.requeue_after, Some(Duration::from_secs(240)));
    }

    #[test]
    fn a_returning_node_gets_a_partial_rebuild() {
        // Even after the grace period, a replica that is back is cheaper to resync.
        let nodes = [node("a", true), node("b", true), node("c", true)];
        for secs in [10, 10_000] {
            let rs = [
                replica("r1", "a", Online, 9999, true),
                replica("r2", "b", Faulted, secs, true),
            ];
            assert_eq!(
                plan(2, &rs, &nodes).actions,
                [RepairAction::PartialRebuild {
                    replica: "r2".into()
                }]
            );
        }
    }

    #[test]
    fn after_the_grace_period_a_replica_is_replaced_on_another_node() {
        let nodes = [node("a", true), node("b", false), node("c", true)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Faulted, 300, false),
        ];
        assert_eq!(
            plan(2, &rs, &nodes).actions,
            [RepairAction::Replace {
                replica: "r2".into(),
                with: at("c")
            }]
        );
    }

    #[test]
    fn a_node_that_answers_without_the_replica_gets_it_replaced_at_once() {
        // b lost its pool: no point waiting; b itself may take the new replica.
        let nodes = [node("a", true), node("b", true)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Faulted, 1, false),
        ];
        assert_eq!(
            plan(2, &rs, &nodes).actions,
            [RepairAction::Replace {
                replica: "r2".into(),
                with: at("b")
            }]
        );
    }

    #[test]
    fn no_replacement_without_an_in_sync_source() {
        let nodes = [
            node("a", false),
            node("b", false),
            node("c", true),
            node("d", true),
        ];
        let rs = [
            replica("r1", "a", Faulted, 9999, false),
            replica("r2", "b", Faulted, 9999, false),
        ];
        let p = plan(2, &rs, &nodes);
        assert_eq!(p.actions.len(), 2);
        assert!(p.actions.iter().all(|a| matches!(
            a,
            RepairAction::Blocked {
                reason: Blocked::NoInSyncReplica,
                ..
            }
        )));
    }

    #[test]
    fn missing_replicas_are_added_and_a_new_volume_is_placed() {
        let nodes = [node("a", true), node("b", true), node("c", true)];
        let rs = [replica("r1", "a", Online, 9999, true)];
        assert_eq!(
            plan(3, &rs, &nodes).actions,
            [
                RepairAction::Add { with: at("b") },
                RepairAction::Add { with: at("c") }
            ]
        );
        assert_eq!(
            plan(1, &[], &nodes).actions,
            [RepairAction::Add { with: at("a") }]
        );
    }

    #[test]
    fn replacement_blocked_by_placement_says_why() {
        let nodes = [node("a", true), node("b", false)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Faulted, 9999, false),
        ];
        let p = plan(2, &rs, &nodes);
        let [RepairAction::Blocked { replica, reason }] = p.actions.as_slice() else {
            panic!("{p:?}");
        };
        assert_eq!(replica.as_deref(), Some("r2"));
        assert!(
            reason
                .to_string()
                .contains("a: already holds a replica; b: unreachable"),
            "{reason}"
        );
    }

    #[test]
    fn surplus_replicas_are_removed_worst_first() {
        let nodes = [
            node("a", true),
            node("b", true),
            node("c", true),
            node("d", false),
        ];
        // The spec went from 3 to 1: the waiting one goes first, then the Pending one.
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Pending, 1, true),
            replica("r3", "d", Faulted, 10, false),
        ];
        assert_eq!(
            plan(1, &rs, &nodes).actions,
            [
                RepairAction::Remove {
                    replica: "r3".into()
                },
                RepairAction::Remove {
                    replica: "r2".into()
                }
            ]
        );
        // Of two Online replicas, the one off the target node goes.
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Online, 9999, true),
        ];
        assert_eq!(
            plan(1, &rs, &nodes).actions,
            [RepairAction::Remove {
                replica: "r2".into()
            }]
        );
        // A replaced replica that comes back after its replacement is in sync is dropped.
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Faulted, 9999, true),
            replica("r3", "c", Online, 10, true),
        ];
        assert_eq!(
            plan(2, &rs, &nodes).actions,
            [RepairAction::Remove {
                replica: "r2".into()
            }]
        );
    }

    #[test]
    fn a_replaced_replica_still_listed_is_removed_not_replaced_again() {
        // Its node did not answer DestroyReplica, so it stays listed until it can be
        // destroyed; its replacement may not even be created yet.
        let nodes = [node("a", true), node("b", false), node("c", true)];
        for new in [Pending, Rebuilding] {
            let rs = [
                replica("r1", "a", Online, 9999, true),
                replica("r2", "b", Faulted, 9999, false),
                replica("r3", "c", new, 1, new != Pending),
            ];
            assert_eq!(
                plan(2, &rs, &nodes).actions,
                [RepairAction::Remove {
                    replica: "r2".into()
                }]
            );
        }
    }

    #[test]
    fn lost_replicas_beyond_the_desired_count_are_removed_not_replaced() {
        let nodes = [node("a", true), node("b", true), node("c", false)];
        let rs = [
            replica("r1", "a", Online, 9999, true),
            replica("r2", "b", Online, 9999, true),
            replica("r3", "c", Faulted, 9999, false),
        ];
        assert_eq!(
            plan(2, &rs, &nodes).actions,
            [RepairAction::Remove {
                replica: "r3".into()
            }]
        );
    }
}
