//! Condition types and reasons the operator writes, and the upsert that keeps
//! `lastTransitionTime` meaningful.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready` (all kinds): the object is usable (pool online, volume served, node reachable).
pub const READY: &str = "Ready";
/// `FullyReplicated` (Volume): every desired replica is in sync.
pub const FULLY_REPLICATED: &str = "FullyReplicated";
/// `Scheduled` (Volume): every desired replica has a place; False says why not.
pub const SCHEDULED: &str = "Scheduled";
/// `Resized` (Volume): the target serves the spec's size; False says why not yet (waiting
/// for replicas to be in sync, a node refused) or never (shrinking is refused).
pub const RESIZED: &str = "Resized";
/// `DeletionBlocked` (StoragePool): deletion waits because volumes still use the pool.
pub const DELETION_BLOCKED: &str = "DeletionBlocked";

/// Finalizer on StoragePools: removed only once no replica uses the pool and the pool is
/// destroyed on its node.
pub const POOL_FINALIZER: &str = "ferrite.dev/pool-protection";
/// Finalizer on Volumes: removed once the target and every replica are gone from the nodes.
pub const VOLUME_FINALIZER: &str = "ferrite.dev/volume-cleanup";

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// The operator cannot tell (e.g. the node is unreachable).
    Unknown,
}

impl Status {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    /// `True` or `False`.
    pub fn from_bool(b: bool) -> Status {
        if b { Status::True } else { Status::False }
    }
}

/// What a decision says a condition should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// Condition type, e.g. [`READY`].
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// Sets a condition in `conditions`, returning whether anything changed.
///
/// `lastTransitionTime` moves to `now` only when the status changes (or the condition is
/// new); a changed reason or message alone keeps it. An empty message is replaced by the
/// reason: conditions always carry a message (the Kubernetes 1.20 API-server test bed turns
/// empty strings inside lists into nulls and then rejects them).
pub fn set(
    conditions: &mut Vec<Condition>,
    update: &ConditionUpdate,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let message = if update.message.is_empty() {
        update.reason.to_string()
    } else {
        update.message.clone()
    };
    let status = update.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != update.reason
                || c.message != message
                || c.observed_generation != generation;
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status.to_string();
            c.reason = update.reason.to_string();
            c.message = message;
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: update.type_.to_string(),
                status: status.to_string(),
                reason: update.reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: Status, reason: &'static str, message: &str) -> ConditionUpdate {
        ConditionUpdate {
            type_: READY,
            status,
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = Vec::new();
        assert!(set(
            &mut cs,
            &ready(Status::False, "Creating", ""),
            Some(1),
            &at(10)
        ));
        assert_eq!(cs[0].message, "Creating");
        assert!(set(
            &mut cs,
            &ready(Status::False, "Creating", "2 of 3"),
            Some(1),
            &at(20)
        ));
        assert_eq!(cs[0].last_transition_time, at(10));
        assert!(!set(
            &mut cs,
            &ready(Status::False, "Creating", "2 of 3"),
            Some(1),
            &at(30)
        ));
        assert!(set(
            &mut cs,
            &ready(Status::True, "Online", "ok"),
            Some(2),
            &at(40)
        ));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, at(40));
        assert_eq!(
            (cs[0].status.as_str(), cs[0].observed_generation),
            ("True", Some(2))
        );
    }
}
