//! Status aggregation: a volume's state from its replicas and target, a pool's phase from
//! its node and members, and the conditions that go with them.
//!
//! Volume state, first rule that matches:
//! 1. no replica placed, or every replica Pending (and none Faulted): **Pending**;
//! 2. no Online replica: **Faulted** (nothing in sync to serve from);
//! 3. target not created yet: **Pending**; target down: **Faulted**;
//! 4. a replica Rebuilding: **Rebuilding**;
//! 5. fewer Online replicas than desired: **Degraded**;
//! 6. otherwise **Online**.
//!
//! `Ready` is True for Online, Degraded and Rebuilding (hosts can do I/O); `FullyReplicated`
//! is True for Online only.
//!
//! Pool phase: node unreachable: the last phase stays and `Ready` is Unknown; creation
//! failed: **Failed**; not on the node yet: **Pending**; a member Missing: **Failed** (RAID0
//! has no redundancy); a member Faulted or Unknown: **Degraded**; otherwise **Online**.

use crate::conditions::{ConditionUpdate, FULLY_REPLICATED, READY, Status};
use crate::crd::{MemberState, PoolPhase, RebuildProgress, ReplicaState, VolumeState};

/// What the volume's target is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHealth {
    /// Not created yet.
    Absent,
    /// Serving on its node.
    Serving,
    /// Its node is unreachable or reports it failed.
    Down,
}

/// A volume's aggregated state and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHealth {
    /// The state.
    pub state: VolumeState,
    /// CamelCase reason (for conditions and Events).
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// Aggregates a volume's state.
pub fn volume_health(
    desired: usize,
    replicas: &[ReplicaState],
    target: TargetHealth,
) -> VolumeHealth {
    let count = |s: ReplicaState| replicas.iter().filter(|r| **r == s).count();
    let (online, rebuilding, pending, faulted) = (
        count(ReplicaState::Online),
        count(ReplicaState::Rebuilding),
        count(ReplicaState::Pending),
        count(ReplicaState::Faulted),
    );
    let summary = format!(
        "{online} of {desired} replica(s) in sync{}{}{}",
        if rebuilding > 0 {
            format!(", {rebuilding} rebuilding")
        } else {
            String::new()
        },
        if pending > 0 {
            format!(", {pending} pending")
        } else {
            String::new()
        },
        if faulted > 0 {
            format!(", {faulted} faulted")
        } else {
            String::new()
        },
    );
    let health = |state, reason, message: String| VolumeHealth {
        state,
        reason,
        message,
    };
    if replicas.is_empty() {
        return health(
            VolumeState::Pending,
            "NotPlaced",
            "no replica placed yet".into(),
        );
    }
    if pending == replicas.len() {
        return health(VolumeState::Pending, "CreatingReplicas", summary);
    }
    if online == 0 {
        return health(VolumeState::Faulted, "NoInSyncReplica", summary);
    }
    match target {
        TargetHealth::Absent => return health(VolumeState::Pending, "CreatingTarget", summary),
        TargetHealth::Down => {
            return health(
                VolumeState::Faulted,
                "TargetDown",
                format!("target down; {summary}"),
            );
        }
        TargetHealth::Serving => {}
    }
    if rebuilding > 0 {
        health(VolumeState::Rebuilding, "Rebuilding", summary)
    } else if online < desired {
        health(VolumeState::Degraded, "ReplicasMissing", summary)
    } else {
        health(VolumeState::Online, "Online", summary)
    }
}

/// The `Ready` and `FullyReplicated` conditions for a volume's health.
pub fn volume_conditions(h: &VolumeHealth) -> [ConditionUpdate; 2] {
    let serving = matches!(
        h.state,
        VolumeState::Online | VolumeState::Degraded | VolumeState::Rebuilding
    );
    [
        ConditionUpdate {
            type_: READY,
            status: Status::from_bool(serving),
            reason: h.reason,
            message: h.message.clone(),
        },
        ConditionUpdate {
            type_: FULLY_REPLICATED,
            status: Status::from_bool(h.state == VolumeState::Online),
            reason: h.reason,
            message: h.message.clone(),
        },
    ]
}

/// Rebuild progress in whole percent (0 when the total is unknown or zero).
pub fn rebuild_percent(p: &RebuildProgress) -> u8 {
    if p.bytes_total <= 0 {
        return 0;
    }
    let done = i128::from(p.bytes_done.clamp(0, p.bytes_total));
    u8::try_from(done * 100 / i128::from(p.bytes_total)).unwrap_or(100)
}

/// What the operator knows about a pool on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolObservation<'a> {
    /// The node API answered.
    pub node_reachable: bool,
    /// The node lists the pool.
    pub exists: bool,
    /// Why creating or importing the pool failed, if it did.
    pub create_error: Option<&'a str>,
    /// Member health, in stripe order.
    pub members: &'a [MemberState],
    /// The phase in the current status.
    pub previous: Option<PoolPhase>,
}

/// A pool's phase and its `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolHealth {
    /// The phase.
    pub phase: PoolPhase,
    /// The `Ready` condition.
    pub ready: ConditionUpdate,
}

/// Aggregates a pool's phase.
pub fn pool_health(o: &PoolObservation<'_>) -> PoolHealth {
    let out = |phase, status, reason, message: String| PoolHealth {
        phase,
        ready: ConditionUpdate {
            type_: READY,
            status,
            reason,
            message,
        },
    };
    let count = |s: MemberState| o.members.iter().filter(|m| **m == s).count();
    if !o.node_reachable {
        return out(
            o.previous.unwrap_or(PoolPhase::Pending),
            Status::Unknown,
            "NodeUnreachable",
            "the node API does not answer".into(),
        );
    }
    if let Some(e) = o.create_error {
        return out(
            PoolPhase::Failed,
            Status::False,
            "CreateFailed",
            e.to_string(),
        );
    }
    if !o.exists {
        return out(
            PoolPhase::Pending,
            Status::False,
            "Creating",
            "the pool is being created on its node".into(),
        );
    }
    let (missing, faulted, unknown) = (
        count(MemberState::Missing),
        count(MemberState::Faulted),
        count(MemberState::Unknown),
    );
    let n = o.members.len();
    if missing > 0 {
        out(
            PoolPhase::Failed,
            Status::False,
            "MemberMissing",
            format!("{missing} of {n} member disk(s) missing"),
        )
    } else if faulted + unknown > 0 {
        out(
            PoolPhase::Degraded,
            Status::True,
            "MemberFaulted",
            format!("{faulted} of {n} member disk(s) faulted, {unknown} unknown"),
        )
    } else {
        out(
            PoolPhase::Online,
            Status::True,
            "Online",
            format!("{n} member disk(s) online"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplicaState::{Faulted, Online, Pending, Rebuilding};

    fn state(desired: usize, rs: &[ReplicaState], t: TargetHealth) -> VolumeState {
        volume_health(desired, rs, t).state
    }

    #[test]
    fn volume_state_follows_the_rules_in_order() {
        use TargetHealth::{Absent, Down, Serving};
        assert_eq!(state(2, &[], Absent), VolumeState::Pending);
        assert_eq!(state(2, &[Pending, Pending], Absent), VolumeState::Pending);
        assert_eq!(state(2, &[Online, Pending], Absent), VolumeState::Pending);
        assert_eq!(state(2, &[Faulted, Pending], Serving), VolumeState::Faulted);
        assert_eq!(
            state(2, &[Faulted, Rebuilding], Serving),
            VolumeState::Faulted
        );
        assert_eq!(state(2, &[Online, Online], Down), VolumeState::Faulted);
        assert_eq!(
            state(2, &[Online, Rebuilding], Serving),
            VolumeState::Rebuilding
        );
        assert_eq!(
            state(3, &[Online, Rebuilding, Faulted], Serving),
            VolumeState::Rebuilding
        );
        assert_eq!(state(2, &[Online, Faulted], Serving), VolumeState::Degraded);
        assert_eq!(state(2, &[Online], Serving), VolumeState::Degraded);
        assert_eq!(state(2, &[Online, Pending], Serving), VolumeState::Degraded);
        assert_eq!(state(2, &[Online, Online], Serving), VolumeState::Online);
        // More replicas than desired (a scale-down in progress) is still Online.
        assert_eq!(state(1, &[Online, Online], Serving), VolumeState::Online);
    }

    #[test]
    fn messages_and_conditions_say_what_is_wrong() {
        let h = volume_health(3, &[Online, Rebuilding, Faulted], TargetHealth::Serving);
        assert_eq!(
            h.message,
            "1 of 3 replica(s) in sync, 1 rebuilding, 1 faulted"
        );
        let [ready, full] = volume_conditions(&h);
        assert_eq!((ready.status, full.status), (Status::True, Status::False));
        let h = volume_health(2, &[Online, Online], TargetHealth::Down);
        assert_eq!(
            (h.reason, h.message.as_str()),
            ("TargetDown", "target down; 2 of 2 replica(s) in sync")
        );
        let [ready, _] = volume_conditions(&h);
        assert_eq!(ready.status, Status::False);
    }

    #[test]
    fn rebuild_percent_is_clamped() {
        let p = |done, total| {
            rebuild_percent(&RebuildProgress {
                bytes_done: done,
                bytes_total: total,
            })
        };
        assert_eq!(p(50, 200), 25);
        assert_eq!(p(300, 200), 100);
        assert_eq!(p(-1, 200), 0);
        assert_eq!(p(5, 0), 0);
        assert_eq!(p(i64::MAX - 1, i64::MAX), 99);
    }

    #[test]
    fn pool_phase_from_node_and_members() {
        use MemberState::{Faulted as F, Missing as M, Online as O, Unknown as U};
        let obs = |reachable, exists, err, members: &'static [MemberState]| PoolObservation {
            node_reachable: reachable,
            exists,
            create_error: err,
            members,
            previous: Some(PoolPhase::Online),
        };
        let h = pool_health(&obs(false, true, None, &[O]));
        assert_eq!(
            (h.phase, h.ready.status),
            (PoolPhase::Online, Status::Unknown)
        );
        let h = pool_health(&obs(true, false, Some("disk /dev/sdz not found"), &[]));
        assert_eq!(
            (h.phase, h.ready.message.as_str()),
            (PoolPhase::Failed, "disk /dev/sdz not found")
        );
        assert_eq!(
            pool_health(&obs(true, false, None, &[])).phase,
            PoolPhase::Pending
        );
        assert_eq!(
            pool_health(&obs(true, true, None, &[O, M])).phase,
            PoolPhase::Failed
        );
        assert_eq!(
            pool_health(&obs(true, true, None, &[O, F])).phase,
            PoolPhase::Degraded
        );
        assert_eq!(
            pool_health(&obs(true, true, None, &[U, O])).phase,
            PoolPhase::Degraded
        );
        let h = pool_health(&obs(true, true, None, &[O, O]));
        assert_eq!(
            (h.phase, h.ready.status, h.ready.message.as_str()),
            (PoolPhase::Online, Status::True, "2 member disk(s) online")
        );
    }
}
