//! Replica placement: which nodes, and which pool on each, get a volume's replicas.
//!
//! Rules, in order:
//! 1. One replica per node: nodes already holding a replica of the volume are skipped.
//! 2. The node must be reachable, schedulable and admitted by the volume's topology
//!    (`allowedNodes`, `requiredNodeLabels`).
//! 3. It must have an Online pool that can hold the replica: the pool's provisioned bytes
//!    plus the replica must stay within its capacity (times the thin over-commit ratio for
//!    thin volumes, which is 100% unless the policy allows more), and a thick replica also
//!    needs that many free bytes now.
//! 4. Least used first: on each node the pool that would be least full (provisioned /
//!    capacity after placement) is chosen, and nodes are ordered by that fill ratio.
//!    Ties go to the pool with more free bytes, then to the smaller node and pool names, so
//!    the same inputs always give the same answer.
//!
//! 5. Locality, then zones: the request's `prefer_node` (the node the CSI consumer was
//!    scheduled on) gets the first replica when it passes rules 1-3, so that reads and half
//!    the writes stay on that node; without room there placement goes on as if there were
//!    no preference. Then replicas go to nodes in zones (label `topology.kubernetes.io/zone`)
//!    that hold none of the volume's replicas yet, as far as the candidates allow; nodes
//!    without a zone label count as zones of their own.
//!
//! When fewer nodes than replicas pass rules 1-2 (or have no Online pool at all) the error is
//! [`PlacementError::NotEnoughNodes`]; when enough nodes qualify but too few have room, it is
//! [`PlacementError::NoSpace`]. Both list why every rejected node was rejected.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use super::model::{NodeView, PoolView, Topology, TopologyMismatch, ZONE_LABEL, human_bytes};

/// Tunables of placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    /// How far thin replicas may over-commit a pool, in percent of its capacity (100: not
    /// at all; 200: up to twice the capacity may be provisioned).
    pub thin_overcommit_percent: u32,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            thin_overcommit_percent: 100,
        }
    }
}

/// What to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest<'a> {
    /// How many replicas to place (each on its own node).
    pub replicas: usize,
    /// Size of each replica (see [`super::model::replica_bytes`]).
    pub replica_bytes: u64,
    /// Thin replicas (may over-commit; need no free space up front).
    pub thin: bool,
    /// Where they may go.
    pub topology: &'a Topology,
    /// Nodes that already hold a replica of this volume.
    pub exclude_nodes: &'a BTreeSet<String>,
    /// A node to put the first replica on if it can take one (data locality).
    pub prefer_node: Option<&'a str>,
}

/// One replica's place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placement {
    /// Node.
    pub node: String,
    /// StoragePool on that node.
    pub pool: String,
}

/// Why a node cannot take a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// It already holds a replica of the volume.
    HoldsReplica,
    /// The node API does not answer.
    Unreachable,
    /// `spec.schedulable` is false.
    Unschedulable,
    /// The volume's topology excludes it.
    Topology(TopologyMismatch),
    /// It has no Online pool.
    NoOnlinePool,
    /// No Online pool has room; `best` is the most any of them could take.
    NoSpace {
        /// Largest replica any of its Online pools could take now.
        best: u64,
    },
}

impl Exclusion {
    /// Whether the node would qualify if it had room.
    fn is_space(&self) -> bool {
        matches!(self, Exclusion::NoSpace { .. })
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::HoldsReplica => write!(f, "already holds a replica"),
            Exclusion::Unreachable => write!(f, "unreachable"),
            Exclusion::Unschedulable => write!(f, "not schedulable"),
            Exclusion::Topology(t) => t.fmt(f),
            Exclusion::NoOnlinePool => write!(f, "no Online pool"),
            Exclusion::NoSpace { best } => {
                write!(f, "pools can take at most {}", human_bytes(*best))
            }
        }
    }
}

/// A node that cannot take a replica, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Node name.
    pub node: String,
    /// Why.
    pub why: Exclusion,
}

/// Renders rejections as `n1: unreachable; n2: not in allowedNodes`.
fn list(rejected: &[Rejected]) -> String {
    if rejected.is_empty() {
        return "no nodes registered".to_string();
    }
    rejected
        .iter()
        .map(|r| format!("{}: {}", r.node, r.why))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why replicas cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Zero replicas were asked for.
    #[error("nothing to place: zero replicas requested")]
    NoReplicas,
    /// Fewer nodes qualify (reachable, schedulable, in topology, without a replica of the
    /// volume, with an Online pool) than replicas are needed.
    #[error("cannot place {wanted} replica(s) on distinct nodes: {eligible} node(s) eligible ({})", list(.rejected))]
    NotEnoughNodes {
        /// Replicas to place.
        wanted: usize,
        /// Nodes that qualify apart from space.
        eligible: usize,
        /// The other nodes and why.
        rejected: Vec<Rejected>,
    },
    /// Enough nodes qualify, but too few have a pool with room.
    #[error(
        "cannot place {wanted} replica(s) of {}: {found} node(s) have a pool with room ({})",
        human_bytes(*.replica_bytes),
        list(.rejected)
    )]
    NoSpace {
        /// Replicas to place.
        wanted: usize,
        /// Nodes with room.
        found: usize,
        /// Size of each replica.
        replica_bytes: u64,
        /// The other nodes and why.
        rejected: Vec<Rejected>,
    },
}

/// Every node that can take a replica, best first, and every node that cannot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ranking {
    /// Places on distinct nodes, best first.
    pub candidates: Vec<Placement>,
    /// Nodes that cannot take one, by name.
    pub rejected: Vec<Rejected>,
}

/// How full a pool would be with the replica: `after / capacity`, compared exactly.
#[derive(Debug, Clone, Copy)]
struct Fill {
    after: u128,
    capacity: u128,
    free: u64,
}

impl Fill {
    fn cmp_ratio(&self, other: &Fill) -> Ordering {
        (self.after * other.capacity).cmp(&(other.after * self.capacity))
    }
}

/// How many more bytes of thin (or thick) replicas `pool` can take under `policy`.
pub fn room(pool: &PoolView, thin: bool, policy: &PlacementPolicy) -> u128 {
    let percent = if thin {
        u128::from(policy.thin_overcommit_percent.max(100))
    } else {
        100
    };
    let limit = u128::from(pool.capacity_bytes) * percent / 100;
    let room = limit.saturating_sub(u128::from(pool.provisioned_bytes));
    if thin {
        room
    } else {
        room.min(u128::from(pool.free_bytes))
    }
}

/// Whether `pool` can take a replica; `Ok` has its fill afterwards, `Err` the largest
/// replica it could take.
fn fits(
    pool: &PoolView,
    req: &PlacementRequest<'_>,
    policy: &PlacementPolicy,
) -> Result<Fill, u64> {
    let room = room(pool, req.thin, policy);
    let provisioned = u128::from(pool.provisioned_bytes);
    let after = provisioned + u128::from(req.replica_bytes);
    if pool.capacity_bytes > 0 && u128::from(req.replica_bytes) <= room {
        Ok(Fill {
            after,
            capacity: u128::from(pool.capacity_bytes),
            free: pool.free_bytes,
        })
    } else {
        Err(u64::try_from(room).unwrap_or(u64::MAX))
    }
}

/// The best pool of a node for the request, or why the node cannot take it.
fn best_pool<'n>(
    node: &'n NodeView,
    req: &PlacementRequest<'_>,
    policy: &PlacementPolicy,
) -> Result<(&'n PoolView, Fill), Exclusion> {
    if req.exclude_nodes.contains(&node.name) {
        return Err(Exclusion::HoldsReplica);
    }
    if !node.reachable {
        return Err(Exclusion::Unreachable);
    }
    if !node.schedulable {
        return Err(Exclusion::Unschedulable);
    }
    req.topology.admits(node).map_err(Exclusion::Topology)?;
    let mut best: Option<(&PoolView, Fill)> = None;
    let mut best_room = None::<u64>;
    for pool in node.pools.iter().filter(|p| p.online) {
        match fits(pool, req, policy) {
            Ok(fill) => {
                let better = match &best {
                    None => true,
                    Some((bp, bf)) => fill
                        .cmp_ratio(bf)
                        .then(bf.free.cmp(&fill.free))
                        .then(pool.name.cmp(&bp.name))
                        .is_lt(),
                };
                if better {
                    best = Some((pool, fill));
                }
            }
            Err(room) => best_room = Some(best_room.map_or(room, |r| r.max(room))),
        }
    }
    match (best, best_room) {
        (Some(found), _) => Ok(found),
        (None, Some(room)) => Err(Exclusion::NoSpace { best: room }),
        (None, None) => Err(Exclusion::NoOnlinePool),
    }
}

/// Ranks every node for the request (ignores `req.replicas`).
pub fn rank(req: &PlacementRequest<'_>, nodes: &[NodeView], policy: &PlacementPolicy) -> Ranking {
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for node in nodes {
        match best_pool(node, req, policy) {
            Ok((pool, fill)) => ok.push((node.name.as_str(), pool.name.as_str(), fill)),
            Err(why) => rejected.push(Rejected {
                node: node.name.clone(),
                why,
            }),
        }
    }
    ok.sort_by(|a, b| {
        a.2.cmp_ratio(&b.2)
            .then(b.2.free.cmp(&a.2.free))
            .then(a.0.cmp(b.0))
            .then(a.1.cmp(b.1))
    });
    // The same node listed twice keeps its best entry only.
    let mut seen = BTreeSet::new();
    let candidates = ok
        .into_iter()
        .filter(|(node, _, _)| seen.insert(*node))
        .map(|(node, pool, _)| Placement {
            node: node.to_string(),
            pool: pool.to_string(),
        })
        .collect();
    rejected.sort_by(|a, b| a.node.cmp(&b.node));
    Ranking {
        candidates,
        rejected,
    }
}

/// Places `req.replicas` replicas on distinct nodes, or says why that is impossible.
pub fn place(
    req: &PlacementRequest<'_>,
    nodes: &[NodeView],
    policy: &PlacementPolicy,
) -> Result<Vec<Placement>, PlacementError> {
    if req.replicas == 0 {
        return Err(PlacementError::NoReplicas);
    }
    let ranking = rank(req, nodes, policy);
    shortfall(req, &ranking).map_or_else(|| Ok(select(req, ranking.candidates, nodes)), Err)
}

/// Orders ranked candidates by rule 5 (the preferred node first, then unused zones) and
/// takes `req.replicas` of them.
pub fn select(
    req: &PlacementRequest<'_>,
    mut candidates: Vec<Placement>,
    nodes: &[NodeView],
) -> Vec<Placement> {
    if let Some(p) = req.prefer_node
        && let Some(i) = candidates.iter().position(|c| c.node == p)
    {
        let c = candidates.remove(i);
        candidates.insert(0, c);
    }
    let zone = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.labels.get(ZONE_LABEL))
            .cloned()
    };
    let mut used: BTreeSet<String> = req.exclude_nodes.iter().filter_map(|n| zone(n)).collect();
    let mut chosen: Vec<Placement> = Vec::with_capacity(req.replicas);
    let mut rest = Vec::new();
    for c in candidates {
        if chosen.len() == req.replicas {
            break;
        }
        match zone(&c.node) {
            Some(z) if used.contains(&z) => rest.push(c),
            Some(z) => {
                used.insert(z);
                chosen.push(c);
            }
            None => chosen.push(c),
        }
    }
    let missing = req.replicas.saturating_sub(chosen.len());
    chosen.extend(rest.into_iter().take(missing));
    chosen
}

/// The error placing `req.replicas` replicas meets with this ranking, if any.
pub fn shortfall(req: &PlacementRequest<'_>, ranking: &Ranking) -> Option<PlacementError> {
    if ranking.candidates.len() >= req.replicas {
        return None;
    }
    let space_only = ranking.rejected.iter().filter(|r| r.why.is_space()).count();
    let eligible = ranking.candidates.len() + space_only;
    Some(if eligible < req.replicas {
        PlacementError::NotEnoughNodes {
            wanted: req.replicas,
            eligible,
            rejected: ranking.rejected.clone(),
        }
    } else {
        PlacementError::NoSpace {
            wanted: req.replicas,
            found: ranking.candidates.len(),
            replica_bytes: req.replica_bytes,
            rejected: ranking.rejected.clone(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn pool(name: &str, capacity: u64, provisioned: u64) -> PoolView {
        PoolView {
            name: name.into(),
            online: true,
            capacity_bytes: capacity,
            free_bytes: capacity - provisioned.min(capacity),
            provisioned_bytes: provisioned,
        }
    }

    fn node(name: &str, pools: Vec<PoolView>) -> NodeView {
        NodeView {
            name: name.into(),
            labels: Default::default(),
            schedulable: true,
            reachable: true,
            pools,
            targets: 0,
        }
    }

    fn req<'a>(
        replicas: usize,
        size: u64,
        topology: &'a Topology,
        exclude: &'a BTreeSet<String>,
    ) -> PlacementRequest<'a> {
        PlacementRequest {
            replicas,
            replica_bytes: size,
            thin: false,
            topology,
            exclude_nodes: exclude,
            prefer_node: None,
        }
    }

    fn names(p: &[Placement]) -> Vec<(&str, &str)> {
        p.iter()
            .map(|p| (p.node.as_str(), p.pool.as_str()))
            .collect()
    }

    #[test]
    fn replicas_go_to_distinct_least_used_nodes() {
        let nodes = [
            node("a", vec![pool("a1", 10 * GIB, 8 * GIB)]),
            node("b", vec![pool("b1", 10 * GIB, 2 * GIB)]),
            node("c", vec![pool("c1", 100 * GIB, 10 * GIB)]),
        ];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let got = place(&req(2, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("c", "c1"), ("b", "b1")]);
    }

    #[test]
    fn the_least_full_pool_of_a_node_is_chosen() {
        let nodes = [node(
            "a",
            vec![
                pool("full", 10 * GIB, 9 * GIB),
                pool("empty", 10 * GIB, 0),
                pool("half", 4 * GIB, 2 * GIB),
            ],
        )];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let got = place(&req(1, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("a", "empty")]);
    }

    #[test]
    fn ties_are_broken_by_free_space_then_name() {
        let nodes = [
            node("b", vec![pool("p", 10 * GIB, 0)]),
            node("a", vec![pool("p", 10 * GIB, 0)]),
            node("c", vec![pool("p", 20 * GIB, GIB)]),
        ];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let r = rank(&req(3, GIB, &t, &ex), &nodes, &PlacementPolicy::default());
        // c: (1+1)/20 = 10%; a and b: 1/10 = 10%, same free space -> by name.
        let order: Vec<&str> = r.candidates.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(order, ["c", "a", "b"]);
        // Same answer whatever the input order.
        let mut reversed = nodes.to_vec();
        reversed.reverse();
        assert_eq!(
            rank(
                &req(3, GIB, &t, &ex),
                &reversed,
                &PlacementPolicy::default()
            ),
            r
        );
    }

    #[test]
    fn topology_and_node_state_are_honoured() {
        let mut unreachable = node("d", vec![pool("p", 10 * GIB, 0)]);
        unreachable.reachable = false;
        let mut cordoned = node("e", vec![pool("p", 10 * GIB, 0)]);
        cordoned.schedulable = false;
        let mut zoned = node("f", vec![pool("p", 10 * GIB, 0)]);
        zoned.labels.insert("zone".into(), "z1".into());
        let nodes = [
            node("a", vec![pool("p", 10 * GIB, 0)]),
            node("b", vec![pool("p", 10 * GIB, 0)]),
            unreachable,
            cordoned,
            zoned,
        ];
        let t = Topology {
            allowed_nodes: None,
            required_labels: [("zone".to_string(), "z1".to_string())].into(),
            terms: vec![],
        };
        let ex = BTreeSet::new();
        let got = place(&req(1, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("f", "p")]);

        let t = Topology {
            allowed_nodes: Some(["a".to_string(), "d".to_string(), "e".to_string()].into()),
            required_labels: Default::default(),
            terms: vec![],
        };
        let err = place(&req(2, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot place 2 replica(s) on distinct nodes: 1 node(s) eligible (b: not in allowedNodes; \
             d: unreachable; e: not schedulable; f: not in allowedNodes)"
        );
    }

    #[test]
    fn the_preferred_node_gets_a_replica_when_it_has_room() {
        let nodes = [
            node("a", vec![pool("p", 10 * GIB, 9 * GIB)]),
            node("b", vec![pool("p", 10 * GIB, 0)]),
            node("c", vec![pool("p", 10 * GIB, 0)]),
        ];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let mut r = req(2, GIB, &t, &ex);
        r.prefer_node = Some("a");
        let got = place(&r, &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("a", "p"), ("b", "p")]);
        // No room on the preferred node: placed as without a preference.
        r.replica_bytes = 2 * GIB;
        let got = place(&r, &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("b", "p"), ("c", "p")]);
        // A preferred node that is not registered changes nothing either.
        r.prefer_node = Some("zz");
        assert_eq!(
            names(&place(&r, &nodes, &PlacementPolicy::default()).unwrap()),
            [("b", "p"), ("c", "p")]
        );
    }

    #[test]
    fn replicas_spread_over_zones() {
        let zoned = |name: &str, zone: &str, used: u64| {
            let mut n = node(name, vec![pool("p", 10 * GIB, used)]);
            n.labels.insert(ZONE_LABEL.into(), zone.into());
            n
        };
        // a and b (z1) are emptier than c (z2), but the second replica goes to z2.
        let nodes = [
            zoned("a", "z1", 0),
            zoned("b", "z1", 0),
            zoned("c", "z2", 5 * GIB),
        ];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let got = place(&req(2, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("a", "p"), ("c", "p")]);
        // Three replicas over two zones: the zones first, then the best remaining node.
        let got = place(&req(3, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("a", "p"), ("c", "p"), ("b", "p")]);
        // A replacement avoids the zones of the replicas that stay.
        let ex: BTreeSet<String> = ["a".to_string()].into();
        let got = place(&req(1, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("c", "p")]);
    }

    #[test]
    fn nodes_holding_a_replica_are_skipped() {
        let nodes = [
            node("a", vec![pool("p", 10 * GIB, 0)]),
            node("b", vec![pool("p", 10 * GIB, 5 * GIB)]),
        ];
        let t = Topology::default();
        let ex: BTreeSet<String> = ["a".to_string()].into();
        let got = place(&req(1, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap();
        assert_eq!(names(&got), [("b", "p")]);
    }

    #[test]
    fn fewer_nodes_than_replicas_is_an_error() {
        let nodes = [node("a", vec![pool("p", 10 * GIB, 0)]), node("b", vec![])];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let err = place(&req(2, GIB, &t, &ex), &nodes, &PlacementPolicy::default()).unwrap_err();
        assert!(
            matches!(
                err,
                PlacementError::NotEnoughNodes {
                    wanted: 2,
                    eligible: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("b: no Online pool"), "{err}");
        let err = place(&req(1, GIB, &t, &ex), &[], &PlacementPolicy::default()).unwrap_err();
        assert!(err.to_string().contains("no nodes registered"), "{err}");
        assert_eq!(
            place(&req(0, GIB, &t, &ex), &nodes, &PlacementPolicy::default()),
            Err(PlacementError::NoReplicas)
        );
    }

    #[test]
    fn no_pool_with_space_is_an_error_that_says_so() {
        let mut offline = pool("big", 100 * GIB, 0);
        offline.online = false;
        let nodes = [
            node("a", vec![pool("p", 10 * GIB, 9 * GIB)]),
            node("b", vec![pool("p", 10 * GIB, 0), offline]),
        ];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let err = place(
            &req(2, 2 * GIB, &t, &ex),
            &nodes,
            &PlacementPolicy::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PlacementError::NoSpace {
                    wanted: 2,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "cannot place 2 replica(s) of 2 GiB: 1 node(s) have a pool with room \
             (a: pools can take at most 1 GiB)"
        );
    }

    #[test]
    fn thick_replicas_need_free_bytes_thin_ones_may_overcommit() {
        // 6 GiB provisioned but only 1 GiB free (thick replicas allocated up front): a thick
        // replica needs the free bytes now, a thin one only provisioning room.
        let mut p = pool("p", 10 * GIB, 6 * GIB);
        p.free_bytes = GIB;
        let nodes = [node("a", vec![p])];
        let (t, ex) = (Topology::default(), BTreeSet::new());
        let mut r = req(1, 2 * GIB, &t, &ex);
        assert!(place(&r, &nodes, &PlacementPolicy::default()).is_err());
        r.thin = true;
        assert!(place(&r, &nodes, &PlacementPolicy::default()).is_ok());
        // Over-commit: 6 + 6 > 10 GiB is refused at 100%, allowed at 150%.
        r.replica_bytes = 6 * GIB;
        assert!(place(&r, &nodes, &PlacementPolicy::default()).is_err());
        let lenient = PlacementPolicy {
            thin_overcommit_percent: 150,
        };
        assert!(place(&r, &nodes, &lenient).is_ok());
        r.thin = false;
        assert!(
            place(&r, &nodes, &lenient).is_err(),
            "thick replicas never over-commit"
        );
    }
}
