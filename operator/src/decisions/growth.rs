//! Volume growth: whether a volume's served size must grow to its spec, and whether it can
//! now. The reconciler then grows every replica on its node and the mirror on the target
//! node (`ResizeReplica`, then `ResizeVolume`).

use super::model::{BLOCK_SIZE, PoolView, human_bytes, replica_bytes};
use super::placement::{PlacementPolicy, room};
use crate::crd::ReplicaState;

/// What to do about a volume's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Growth {
    /// The served size is the spec's (or nothing is served yet).
    Done,
    /// The spec is smaller than what is served: volumes never shrink.
    Refused(String),
    /// It must grow, but not now (a replica is not in sync): retry later.
    Wait(String),
    /// Grow every replica to `replica_bytes`, then the volume to `volume_bytes`.
    Grow {
        /// New size hosts see.
        volume_bytes: u64,
        /// New size of each replica (the volume plus the mirror's reserve).
        replica_bytes: u64,
    },
}

/// Decides growth from the spec size, the size the target serves (`None` when it is not
/// served or does not answer) and the replicas' states as recorded in the status.
pub fn plan_growth(
    spec_bytes: u64,
    served_bytes: Option<u64>,
    replicas: &[ReplicaState],
) -> Growth {
    let Some(served) = served_bytes.filter(|b| *b > 0) else {
        return Growth::Done;
    };
    let Some(want) = spec_bytes.checked_next_multiple_of(BLOCK_SIZE) else {
        return Growth::Refused(format!("size {spec_bytes} overflows"));
    };
    if want == served {
        return Growth::Done;
    }
    if want < served {
        return Growth::Refused(format!(
            "volumes cannot shrink: spec asks for {} but {} is served",
            human_bytes(want),
            human_bytes(served)
        ));
    }
    let not_online = replicas
        .iter()
        .filter(|s| **s != ReplicaState::Online)
        .count();
    if replicas.is_empty() || not_online > 0 {
        return Growth::Wait(format!(
            "growing to {} once every replica is in sync ({not_online} of {} not Online)",
            human_bytes(want),
            replicas.len()
        ));
    }
    match replica_bytes(want) {
        Some(replica_bytes) => Growth::Grow {
            volume_bytes: want,
            replica_bytes,
        },
        None => Growth::Refused(format!("size {want} overflows")),
    }
}

/// Whether each pool holding one of the volume's replicas has room for that replica to grow
/// by `extra` bytes, by placement's rules (thin replicas count at their full size up to the
/// overcommit limit; thick ones also need free bytes). `Err` says which pool is short.
pub fn check_room(
    extra: u64,
    thin: bool,
    pools: &[&PoolView],
    policy: &PlacementPolicy,
) -> Result<(), String> {
    for p in pools {
        let room = room(p, thin, policy);
        if u128::from(extra) > room {
            return Err(format!(
                "pool {} has room for {} more, the replica needs {} more",
                p.name,
                human_bytes(u64::try_from(room).unwrap_or(u64::MAX)),
                human_bytes(extra)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::model::MIRROR_RESERVE_BYTES;
    use ReplicaState::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn grows_only_when_every_replica_is_online() {
        assert_eq!(
            plan_growth(96 * MIB, Some(64 * MIB), &[Online, Online]),
            Growth::Grow {
                volume_bytes: 96 * MIB,
                replica_bytes: 96 * MIB + MIRROR_RESERVE_BYTES
            }
        );
        // Rounded up to whole blocks like creation.
        assert_eq!(
            plan_growth(96 * MIB + 1, Some(64 * MIB), &[Online]),
            Growth::Grow {
                volume_bytes: 96 * MIB + 4096,
                replica_bytes: 96 * MIB + 4096 + MIRROR_RESERVE_BYTES
            }
        );
        for states in [
            &[Online, Faulted][..],
            &[Rebuilding, Online],
            &[Online, Pending],
            &[],
        ] {
            match plan_growth(96 * MIB, Some(64 * MIB), states) {
                Growth::Wait(m) => assert!(m.contains("96 MiB"), "{m}"),
                other => panic!("{states:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn room_follows_placement_rules() {
        let pool = |name: &str, capacity: u64, free: u64, provisioned: u64| PoolView {
            name: name.into(),
            online: true,
            capacity_bytes: capacity,
            free_bytes: free,
            provisioned_bytes: provisioned,
        };
        let policy = PlacementPolicy::default();
        let roomy = pool("a", 256 * MIB, 250 * MIB, 65 * MIB);
        let full = pool("b", 256 * MIB, 250 * MIB, 200 * MIB);
        assert_eq!(check_room(128 * MIB, true, &[&roomy], &policy), Ok(()));
        let e = check_room(128 * MIB, true, &[&roomy, &full], &policy).unwrap_err();
        assert!(e.contains("pool b") && e.contains("56 MiB"), "{e}");
        // Thick replicas also need free bytes.
        let used = pool("c", 256 * MIB, 10 * MIB, 65 * MIB);
        assert!(check_room(64 * MIB, true, &[&used], &policy).is_ok());
        assert!(check_room(64 * MIB, false, &[&used], &policy).is_err());
    }

    #[test]
    fn same_size_unserved_and_shrink() {
        assert_eq!(
            plan_growth(64 * MIB, Some(64 * MIB), &[Online]),
            Growth::Done
        );
        assert_eq!(
            plan_growth(64 * MIB - 100, Some(64 * MIB), &[Online]),
            Growth::Done
        );
        assert_eq!(plan_growth(96 * MIB, None, &[Online]), Growth::Done);
        assert_eq!(plan_growth(96 * MIB, Some(0), &[Online]), Growth::Done);
        match plan_growth(32 * MIB, Some(64 * MIB), &[Online]) {
            Growth::Refused(m) => assert!(m.contains("cannot shrink"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_growth(u64::MAX, Some(64 * MIB), &[Online]),
            Growth::Refused(_)
        ));
    }
}
