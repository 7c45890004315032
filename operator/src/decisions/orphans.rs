//! Orphans: replicas and volume targets on a node that no Volume object refers to any more
//! (a Volume deleted while its node was away, a finalizer removed by hand, a FerriteNode
//! registered again, a crash between a node call and the status write).
//!
//! Rules:
//! 1. A replica is the operator's when it lives in a pool of one of the node's StoragePools
//!    (pools from the node's own configuration are never touched). It is an orphan when no
//!    Volume lists its UUID in `status.replicas`, whatever node that entry names.
//! 2. A volume target is an orphan when its UUID is no Volume's `metadata.uid`.
//! 3. An orphan is destroyed only once it has been seen orphaned, continuously, for the grace
//!    period ([`OrphanClock`]); one that is referenced again in between starts over. The
//!    node's objects are listed *before* the Volumes, and the reconciler records a replica in
//!    the status before creating it, so a replica being created is never taken for an orphan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// What a node holds, as the orphan rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeObjects {
    /// Replicas: (UUID, pool name on the node).
    pub replicas: Vec<(String, String)>,
    /// Volume targets by UUID.
    pub volumes: Vec<String>,
}

/// What the cluster refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Pool names (on the node) of the node's StoragePools.
    pub managed_pools: BTreeSet<String>,
    /// Every replica UUID any Volume lists.
    pub replicas: BTreeSet<String>,
    /// Every Volume's uid.
    pub volumes: BTreeSet<String>,
}

/// An object that no Volume refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Orphan {
    /// A replica, by UUID.
    Replica(String),
    /// A volume target, by UUID.
    Volume(String),
}

impl std::fmt::Display for Orphan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Orphan::Replica(u) => write!(f, "replica {u}"),
            Orphan::Volume(u) => write!(f, "volume target {u}"),
        }
    }
}

/// The orphans among a node's objects (rules 1 and 2).
pub fn orphans(on_node: &NodeObjects, refs: &References) -> BTreeSet<Orphan> {
    let replicas = on_node
        .replicas
        .iter()
        .filter(|(uuid, pool)| refs.managed_pools.contains(pool) && !refs.replicas.contains(uuid))
        .map(|(uuid, _)| Orphan::Replica(uuid.clone()));
    let volumes = on_node
        .volumes
        .iter()
        .filter(|uuid| !refs.volumes.contains(*uuid))
        .map(|uuid| Orphan::Volume(uuid.clone()));
    replicas.chain(volumes).collect()
}

/// When each orphan of each node was first seen (rule 3). Kept in memory: an operator that
/// restarts waits a whole grace period again, which errs on the side of keeping data.
#[derive(Debug, Default)]
pub struct OrphanClock {
    seen: BTreeMap<String, BTreeMap<Orphan, Instant>>,
}

impl OrphanClock {
    /// Records `node`'s orphans now and returns those orphaned for at least `grace`.
    /// Objects of the node that are no longer orphans are forgotten.
    pub fn due(
        &mut self,
        node: &str,
        now_orphans: &BTreeSet<Orphan>,
        now: Instant,
        grace: Duration,
    ) -> Vec<Orphan> {
        let seen = self.seen.entry(node.to_string()).or_default();
        seen.retain(|o, _| now_orphans.contains(o));
        let mut due = Vec::new();
        for o in now_orphans {
            let first = *seen.entry(o.clone()).or_insert(now);
            if now.saturating_duration_since(first) >= grace {
                due.push(o.clone());
            }
        }
        due
    }

    /// Forgets an orphan once it is destroyed.
    pub fn forget(&mut self, node: &str, o: &Orphan) {
        if let Some(seen) = self.seen.get_mut(node) {
            seen.remove(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_unreferenced_objects_in_managed_pools_are_orphans() {
        let on_node = NodeObjects {
            replicas: vec![
                ("r1".into(), "pool-a".into()),
                ("r2".into(), "pool-a".into()),
                ("r3".into(), "from-config".into()),
            ],
            volumes: vec!["v1".into(), "v2".into()],
        };
        let refs = References {
            managed_pools: set(&["pool-a"]),
            replicas: set(&["r1"]),
            volumes: set(&["v1"]),
        };
        let got: Vec<Orphan> = orphans(&on_node, &refs).into_iter().collect();
        assert_eq!(
            got,
            [Orphan::Replica("r2".into()), Orphan::Volume("v2".into())]
        );
    }

    #[test]
    fn orphans_are_due_after_a_continuous_grace_period() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut clock = OrphanClock::default();
        let o: BTreeSet<Orphan> = [Orphan::Replica("r".into())].into();
        assert!(clock.due("n", &o, t0, grace).is_empty());
        assert!(
            clock
                .due("n", &o, t0 + Duration::from_secs(59), grace)
                .is_empty()
        );
        assert_eq!(
            clock.due("n", &o, t0 + grace, grace),
            [Orphan::Replica("r".into())]
        );
        // Referenced again in between: the clock starts over.
        let mut clock = OrphanClock::default();
        clock.due("n", &o, t0, grace);
        clock.due("n", &BTreeSet::new(), t0 + Duration::from_secs(30), grace);
        assert!(clock.due("n", &o, t0 + grace, grace).is_empty());
        // Other nodes keep their own clocks; a destroyed orphan is forgotten.
        assert!(clock.due("m", &o, t0 + grace, grace).is_empty());
        clock.forget("n", &Orphan::Replica("r".into()));
        assert!(clock.due("n", &o, t0 + 2 * grace, grace).is_empty());
    }
}
