//! Building a mirror: [`Mirror::create`] for a new volume and [`Mirror::assemble`] for an
//! existing one. Assembly reads every reachable replica's label and decides, in the pure
//! function [`plan`], which replicas are healthy, which need a partial or full rebuild or a
//! resync, and whether the labels show a split brain.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::BlockDevice;

use super::MirrorError;
use super::bitmap::Bitmap;
use super::label::{
    self, Geometry, Label, LabelState, MAX_MEMBERS, MirrorId, RESERVE_BYTES, ReplicaId, format_id,
};
use super::locks::RegionLocks;
use super::mirror::{Inner, Mirror, MirrorOptions, check_geometry};
use super::replica::{self, ReplicaConnector};
use super::state::{Member, State};
use super::status::{RebuildKind, RebuildTracker, ReplicaState};

/// What assembly learned about one replica.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub id: ReplicaId,
    pub description: String,
    pub reachable: bool,
    /// Its valid label of this mirror (blank or corrupt: `None`).
    pub label: Option<Label>,
}

/// The role assembly gives a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Healthy,
    Rebuild(RebuildKind),
    Unreachable,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedMember {
    pub id: ReplicaId,
    pub in_sync: bool,
    pub last_in_sync_gen: u64,
    pub role: Role,
}

/// The outcome of reading the labels.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub geometry: Geometry,
    /// The generation the assembled mirror starts at (newest label's + 1).
    pub generation: u64,
    pub tracking: Option<u64>,
    pub dirty: Bitmap,
    /// In the order of `seen`.
    pub members: Vec<PlannedMember>,
}

fn ids(v: &[ReplicaId]) -> String {
    let names: Vec<String> = v.iter().map(format_id).collect();
    format!("{{{}}}", names.join(", "))
}

/// Decides the assembly from the labels (see docs/mirror.md, "Assembly").
pub(crate) fn plan(
    mirror_id: &MirrorId,
    seen: &[Seen],
    allow_missing: bool,
) -> Result<Plan, MirrorError> {
    let ms = format_id(mirror_id);
    let split = |detail: String| MirrorError::SplitBrain {
        mirror: ms.clone(),
        detail,
    };
    let labeled: Vec<(&Seen, &Label)> = seen
        .iter()
        .filter(|s| s.reachable)
        .filter_map(|s| s.label.as_ref().map(|l| (s, l)))
        .collect();
    if labeled.is_empty() {
        return Err(MirrorError::NoLabel { mirror: ms });
    }
    let claims: Vec<&(&Seen, &Label)> = labeled.iter().filter(|(_, l)| l.self_in_sync()).collect();
    let Some(top) = claims.iter().map(|(_, l)| l.generation).max() else {
        return Err(MirrorError::NoHealthyReplica { mirror: ms });
    };
    let tops: Vec<&Label> = claims
        .iter()
        .filter(|(_, l)| l.generation == top)
        .map(|(_, l)| *l)
        .collect();
    let newest = tops[0];
    let set = newest.in_sync_set();
    for l in &tops[1..] {
        if l.in_sync_set() != set {
            return Err(split(format!(
                "at generation {top}, replica {} lists in sync {} but replica {} lists {}",
                format_id(&newest.replica_id),
                ids(&set),
                format_id(&l.replica_id),
                ids(&l.in_sync_set())
            )));
        }
    }
    // A grow interrupted between label writes leaves labels of two sizes at the newest
    // generation; nothing past the smaller size was written yet, so the larger one stands.
    let geometry = tops
        .iter()
        .map(|l| l.geometry)
        .max_by_key(|g| g.data_bytes)
        .unwrap_or(newest.geometry);
    for (s, l) in &labeled {
        if !l.geometry.same_layout(&geometry) || l.geometry.data_bytes > geometry.data_bytes {
            return Err(MirrorError::BadLabel {
                replica: s.description.clone(),
                reason: format!(
                    "geometry {:?} does not fit the newest labels' {:?}",
                    l.geometry, geometry
                ),
            });
        }
    }
    // A replica that claims to be in sync at a generation later than the one at which the
    // newest label dropped it has taken writes on its own: the two sides diverged.
    for (s, l) in &claims {
        if let Some(e) = newest.member(&s.id)
            && !e.in_sync
            && e.last_in_sync_gen > 0
            && l.generation > e.last_in_sync_gen
        {
            return Err(split(format!(
                "replica {} claims in sync {} at generation {}, but replica {} (generation {top}, in sync {}) dropped it at generation {}",
                format_id(&s.id),
                ids(&l.in_sync_set()),
                l.generation,
                format_id(&newest.replica_id),
                ids(&set),
                e.last_in_sync_gen
            )));
        }
    }
    let mut dirty = newest.bitmap.clone();
    dirty.grow(geometry.nregions);
    let mut tracking = newest.bitmap_base;
    for l in &tops[1..] {
        dirty.union_with(&l.bitmap);
        tracking = match (tracking, l.bitmap_base) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    let mut members = Vec::new();
    let mut missing = Vec::new();
    let mut healthy = 0;
    let mut dropped_in_sync = false;
    for s in seen {
        let entry = newest.member(&s.id);
        let pm = |in_sync, last, role| PlannedMember {
            id: s.id,
            in_sync,
            last_in_sync_gen: last,
            role,
        };
        members.push(match (entry, s.reachable) {
            (Some(e), true) if e.in_sync => {
                if s.label.is_some() {
                    healthy += 1;
                    pm(true, top, Role::Healthy)
                } else {
                    warn!(mirror = %ms, replica = %format_id(&s.id), "listed in sync but its label is gone (replaced device?): full rebuild");
                    dropped_in_sync = true;
                    pm(false, 0, Role::Rebuild(RebuildKind::Full))
                }
            }
            (Some(e), false) if e.in_sync => {
                missing.push(format!("{} ({})", format_id(&s.id), s.description));
                dropped_in_sync = true;
                pm(false, top, Role::Unreachable)
            }
            (Some(e), true) => {
                let partial = s.label.as_ref().is_some_and(|l| {
                    l.self_in_sync()
                        && e.last_in_sync_gen > 0
                        && tracking.is_some_and(|b| b <= l.generation.min(e.last_in_sync_gen))
                });
                let kind = if partial {
                    RebuildKind::Partial
                } else {
                    RebuildKind::Full
                };
                pm(false, e.last_in_sync_gen, Role::Rebuild(kind))
            }
            (Some(e), false) => pm(false, e.last_in_sync_gen, Role::Unreachable),
            (None, true) => pm(false, 0, Role::Rebuild(RebuildKind::Full)),
            (None, false) => pm(false, 0, Role::Unreachable),
        });
    }
    // In-sync members of the newest label that the caller did not pass at all.
    for e in newest.members.iter().filter(|e| e.in_sync) {
        if !seen.iter().any(|s| s.id == e.id) {
            missing.push(format!("{} (no connector)", format_id(&e.id)));
            dropped_in_sync = true;
        }
    }
    if !missing.is_empty() && !allow_missing {
        return Err(MirrorError::InSyncReplicaMissing {
            mirror: ms,
            missing,
        });
    }
    if healthy == 0 {
        return Err(MirrorError::NoHealthyReplica { mirror: ms });
    }
    if dropped_in_sync {
        // They hold everything up to `top`: track from there.
        tracking = Some(tracking.map_or(top, |b| b.min(top)));
    }
    if members.iter().any(|m| !m.in_sync) {
        tracking.get_or_insert(top + 1);
    } else {
        tracking = None;
        dirty.clear();
    }
    // After an unclean shutdown, writes in flight at the crash may have reached some in-sync
    // replicas and not others: verify all but one (the newest label's owner) against it.
    if !tops.iter().all(|l| l.clean) && healthy >= 2 {
        for m in members.iter_mut() {
            if m.role == Role::Healthy && m.id != newest.replica_id {
                m.role = Role::Rebuild(RebuildKind::Resync);
            }
        }
    }
    Ok(Plan {
        geometry,
        generation: top + 1,
        tracking,
        dirty,
        members,
    })
}

/// Reads a replica's label for this mirror: `(seq, label)`; blank or corrupt gives
/// `(0, None)`; another mirror's or another replica's label is an error.
pub(crate) async fn probe_label(
    mirror_id: &MirrorId,
    replica_id: &ReplicaId,
    desc: &str,
    dev: &dyn BlockDevice,
) -> Result<(u64, Option<Label>), MirrorError> {
    match label::read_label(dev).await? {
        LabelState::Blank => Ok((0, None)),
        LabelState::Corrupt(why) => {
            warn!(replica = desc, %why, "ignoring a corrupt mirror label");
            Ok((0, None))
        }
        LabelState::Valid(l) if &l.mirror_id != mirror_id => Err(MirrorError::ForeignLabel {
            replica: desc.to_string(),
            found: format_id(&l.mirror_id),
            expected: format_id(mirror_id),
        }),
        LabelState::Valid(l) if &l.replica_id != replica_id => Err(MirrorError::ReplicaMismatch {
            replica: desc.to_string(),
            found: format_id(&l.replica_id),
            expected: format_id(replica_id),
        }),
        LabelState::Valid(l) => Ok((l.seq, Some(l))),
    }
}

fn validate(
    connectors: &[Arc<dyn ReplicaConnector>],
    opts: &MirrorOptions,
) -> Result<(), MirrorError> {
    if connectors.is_empty() {
        return Err(MirrorError::Invalid(
            "a mirror needs at least one replica".into(),
        ));
    }
    if connectors.len() > MAX_MEMBERS {
        return Err(MirrorError::TooManyReplicas(connectors.len()));
    }
    let mut seen = HashSet::new();
    for c in connectors {
        if !seen.insert(c.replica_id()) {
            return Err(MirrorError::DuplicateReplica(format_id(&c.replica_id())));
        }
    }
    if opts.reconnect_initial.is_zero() || opts.reconnect_max < opts.reconnect_initial {
        return Err(MirrorError::Invalid(
            "reconnect delays must be non-zero and initial <= max".into(),
        ));
    }
    Ok(())
}

/// A member under construction.
struct Draft {
    connector: Arc<dyn ReplicaConnector>,
    description: String,
    dev: Option<Arc<dyn BlockDevice>>,
    label_seq: u64,
    in_sync: bool,
    last_in_sync_gen: u64,
    role: Role,
    error: Option<String>,
}

/// Everything [`start`] needs.
struct Start {
    mirror_id: MirrorId,
    geometry: Geometry,
    generation: u64,
    tracking: Option<u64>,
    dirty: Bitmap,
    drafts: Vec<Draft>,
    opts: MirrorOptions,
    /// How many label writes to do before returning (2 fills both slots).
    label_writes: usize,
}

/// Builds the mirror, persists its first labels and starts rebuilds and reconnects.
async fn start(s: Start) -> Result<Mirror, MirrorError> {
    let Start {
        mirror_id,
        geometry,
        generation,
        tracking,
        dirty,
        drafts,
        opts,
        label_writes,
    } = s;
    let mut members = Vec::new();
    let mut rebuilds = Vec::new();
    let mut reconnects = Vec::new();
    for d in drafts {
        let id = d.connector.replica_id();
        let (state, tracker) = match d.role {
            Role::Healthy => (ReplicaState::Healthy, None),
            Role::Rebuild(kind) => {
                let t = Arc::new(RebuildTracker::new(kind));
                rebuilds.push((id, Arc::clone(&t)));
                (ReplicaState::Rebuilding, Some(t))
            }
            Role::Unreachable => {
                reconnects.push(id);
                (ReplicaState::Faulted, None)
            }
        };
        members.push(Member {
            id,
            connector: d.connector,
            description: d.description,
            dev: if d.role == Role::Unreachable {
                None
            } else {
                d.dev
            },
            state,
            in_sync: d.in_sync,
            last_in_sync_gen: d.last_in_sync_gen,
            epoch: 1,
            label_seq: d.label_seq,
            rebuild: tracker,
            last_rebuild: None,
            last_error: d.error,
        });
    }
    let state = State {
        mirror_id,
        geometry,
        generation,
        members,
        tracking,
        persisted_dirty: Bitmap::new(geometry.nregions),
        dirty,
        unflushed: Bitmap::new(geometry.nregions),
        flushing: Vec::new(),
        next_flush: 0,
        clean: false,
        closed: false,
        version: 1,
        persisted_version: 0,
        rebuilds_completed: 0,
    };
    let inner = Arc::new(Inner {
        id: mirror_id,
        id_str: format_id(&mirror_id),
        block_size: geometry.block_size,
        region_size: geometry.region_size,
        data_bytes: AtomicU64::new(geometry.data_bytes),
        opts,
        state: Mutex::new(state),
        label_lock: tokio::sync::Mutex::new(()),
        grow_lock: tokio::sync::Mutex::new(()),
        locks: RegionLocks::new(),
        rr: AtomicUsize::new(0),
        tasks: Mutex::new(JoinSet::new()),
        shutdown: AtomicBool::new(false),
        rebuilt_bytes: AtomicU64::new(0),
    });
    let mirror = Mirror {
        inner: Arc::clone(&inner),
    };
    for i in 0..label_writes {
        let want = {
            let mut st = inner.lock();
            if i > 0 {
                st.changed();
            }
            st.version
        };
        inner.persist_to(want).await?;
    }
    for (id, t) in rebuilds {
        inner.spawn_rebuild(id, 1, t);
    }
    for id in reconnects {
        inner.spawn_reconnect(id, 1);
    }
    inner.spawn_health_watch();
    Ok(mirror)
}

impl Mirror {
    /// Creates a new mirror over `connectors` (every replica must be reachable and carry no
    /// mirror label). The volume size is the smallest replica minus the 1 MiB label reserve,
    /// rounded down to the largest replica block size (the volume's block size). All replicas
    /// start in sync (generation 1) unless `opts.sync_on_create`.
    pub async fn create(
        mirror_id: MirrorId,
        connectors: Vec<Arc<dyn ReplicaConnector>>,
        opts: MirrorOptions,
    ) -> Result<Mirror, MirrorError> {
        validate(&connectors, &opts)?;
        let devs = join_all(
            connectors
                .iter()
                .map(|c| replica::connect(&**c, opts.connect_timeout)),
        )
        .await;
        let mut opened = Vec::new();
        for (c, d) in connectors.iter().zip(devs) {
            let dev = d.map_err(|source| MirrorError::Connect {
                replica: c.describe(),
                source,
            })?;
            opened.push(dev);
        }
        let block_size = opened.iter().map(|d| d.block_size()).max().unwrap_or(512);
        let min_size = opened.iter().map(|d| d.size_bytes()).min().unwrap_or(0);
        let bs = u64::from(block_size);
        let data_bytes = min_size.saturating_sub(RESERVE_BYTES) / bs * bs;
        if data_bytes == 0 {
            return Err(MirrorError::TooSmall {
                replica: "smallest replica".into(),
                size: min_size,
                need: RESERVE_BYTES + bs,
            });
        }
        let geometry = Geometry::new(block_size, data_bytes, opts.region_size)
            .map_err(MirrorError::Invalid)?;
        let mut drafts = Vec::new();
        for (i, (c, dev)) in connectors.iter().zip(opened).enumerate() {
            let desc = c.describe();
            check_geometry(&geometry, &desc, &*dev)?;
            if let LabelState::Valid(l) = label::read_label(&*dev).await? {
                return Err(MirrorError::AlreadyLabeled {
                    replica: desc,
                    mirror: format_id(&l.mirror_id),
                });
            }
            let in_sync = i == 0 || !opts.sync_on_create;
            drafts.push(Draft {
                connector: Arc::clone(c),
                description: desc,
                dev: Some(dev),
                label_seq: 0,
                in_sync,
                last_in_sync_gen: 0,
                role: if in_sync {
                    Role::Healthy
                } else {
                    Role::Rebuild(RebuildKind::Full)
                },
                error: None,
            });
        }
        let tracking = drafts.iter().any(|d| !d.in_sync).then_some(1);
        info!(
            mirror = %format_id(&mirror_id), replicas = drafts.len(), bytes = data_bytes,
            block_size, region_size = geometry.region_size, "creating mirror"
        );
        // Two label writes so both slots hold a valid label from the start.
        start(Start {
            mirror_id,
            geometry,
            generation: 1,
            tracking,
            dirty: Bitmap::new(geometry.nregions),
            drafts,
            opts,
            label_writes: 2,
        })
        .await
    }

    /// Assembles an existing mirror from its replicas' labels (see docs/mirror.md,
    /// "Assembly"): the newest in-sync set is healthy, stale replicas get a partial or full
    /// rebuild, new ones a full rebuild, unreachable ones are retried in the background. A
    /// split brain, a foreign label, or unreachable in-sync replicas (unless
    /// `opts.allow_missing_in_sync`) refuse assembly.
    pub async fn assemble(
        mirror_id: MirrorId,
        connectors: Vec<Arc<dyn ReplicaConnector>>,
        opts: MirrorOptions,
    ) -> Result<Mirror, MirrorError> {
        validate(&connectors, &opts)?;
        let devs = join_all(
            connectors
                .iter()
                .map(|c| replica::connect(&**c, opts.connect_timeout)),
        )
        .await;
        let mut seen = Vec::new();
        let mut drafts = Vec::new();
        for (c, d) in connectors.iter().zip(devs) {
            let id = c.replica_id();
            let desc = c.describe();
            let (dev, label, seq, error) = match d {
                Ok(dev) => {
                    let (seq, label) = probe_label(&mirror_id, &id, &desc, &*dev).await?;
                    (Some(dev), label, seq, None)
                }
                Err(e) => {
                    warn!(mirror = %format_id(&mirror_id), replica = %desc, error = %e, "replica unreachable at assembly");
                    (None, None, 0, Some(format!("connect failed: {e}")))
                }
            };
            seen.push(Seen {
                id,
                description: desc.clone(),
                reachable: dev.is_some(),
                label,
            });
            drafts.push(Draft {
                connector: Arc::clone(c),
                description: desc,
                dev,
                label_seq: seq,
                in_sync: false,
                last_in_sync_gen: 0,
                role: Role::Unreachable,
                error,
            });
        }
        let plan = plan(&mirror_id, &seen, opts.allow_missing_in_sync)?;
        for (d, pm) in drafts.iter_mut().zip(&plan.members) {
            if let Some(dev) = &d.dev {
                check_geometry(&plan.geometry, &d.description, &**dev)?;
            }
            d.in_sync = pm.in_sync;
            d.last_in_sync_gen = pm.last_in_sync_gen;
            d.role = pm.role;
            info!(
                mirror = %format_id(&mirror_id), replica = %format_id(&pm.id), desc = %d.description,
                role = ?pm.role, in_sync = pm.in_sync, "assembly"
            );
        }
        info!(
            mirror = %format_id(&mirror_id), generation = plan.generation, tracking = ?plan.tracking,
            dirty = plan.dirty.count(), "assembling mirror"
        );
        start(Start {
            mirror_id,
            geometry: plan.geometry,
            generation: plan.generation,
            tracking: plan.tracking,
            dirty: plan.dirty,
            drafts,
            opts,
            label_writes: 1,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::label::MemberEntry;

    const M: MirrorId = [0xaa; 16];
    const A: ReplicaId = [1; 16];
    const B: ReplicaId = [2; 16];
    const C: ReplicaId = [3; 16];

    fn geo() -> Geometry {
        Geometry::new(4096, 16 << 20, 1 << 20).unwrap()
    }

    fn label(
        owner: ReplicaId,
        generation: u64,
        members: &[(ReplicaId, bool, u64)],
        base: Option<u64>,
        clean: bool,
    ) -> Label {
        Label {
            seq: 1,
            mirror_id: M,
            replica_id: owner,
            generation,
            geometry: geo(),
            clean,
            bitmap_base: base,
            members: members
                .iter()
                .map(|&(id, in_sync, last)| MemberEntry {
                    id,
                    in_sync,
                    last_in_sync_gen: last,
                })
                .collect(),
            bitmap: Bitmap::new(geo().nregions),
        }
    }

    fn seen(id: ReplicaId, label: Option<Label>) -> Seen {
        Seen {
            id,
            description: format!("r{}", id[0]),
            reachable: true,
            label,
        }
    }

    #[test]
    fn an_interrupted_grow_assembles_at_the_larger_size() {
        let a = label(A, 4, &[(A, true, 4), (B, true, 4)], None, false);
        let mut b = label(B, 4, &[(A, true, 4), (B, true, 4)], None, false);
        b.geometry = geo().grown_to(48 << 20).unwrap();
        b.bitmap = Bitmap::new(b.geometry.nregions);
        let p = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap();
        assert_eq!(p.geometry.data_bytes, 48 << 20);
        assert_eq!(p.dirty.len(), 48);
        assert_eq!(p.members[0].role, Role::Healthy);
        // An older label larger than the newest ones, or another region size, is refused.
        let a = label(A, 5, &[(A, true, 5), (B, false, 4)], Some(4), true);
        let mut b = label(B, 4, &[(A, true, 4), (B, true, 4)], None, true);
        b.geometry = geo().grown_to(48 << 20).unwrap();
        let e = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap_err();
        assert!(matches!(e, MirrorError::BadLabel { .. }), "{e}");
        let a = label(A, 4, &[(A, true, 4), (B, true, 4)], None, true);
        let mut b = label(B, 4, &[(A, true, 4), (B, true, 4)], None, true);
        b.geometry = Geometry::new(4096, 16 << 20, 2 << 20).unwrap();
        let e = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap_err();
        assert!(matches!(e, MirrorError::BadLabel { .. }), "{e}");
    }

    #[test]
    fn degraded_history_gives_partial_rebuild() {
        // B was dropped at generation 5; A went on to 6 with the bitmap tracking since 5.
        let a = label(A, 6, &[(A, true, 6), (B, false, 5)], Some(5), true);
        let b = label(B, 5, &[(A, true, 5), (B, true, 5)], None, true);
        let p = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap();
        assert_eq!(p.generation, 7);
        assert_eq!(p.tracking, Some(5));
        assert_eq!(p.members[0].role, Role::Healthy);
        assert_eq!(p.members[1].role, Role::Rebuild(RebuildKind::Partial));
    }

    #[test]
    fn stale_older_than_the_bitmap_base_gets_full_and_new_gets_full() {
        let a = label(A, 9, &[(A, true, 9), (B, false, 3)], Some(5), true);
        let b = label(B, 3, &[(A, true, 3), (B, true, 3)], None, true);
        let p = plan(
            &M,
            &[seen(A, Some(a)), seen(B, Some(b)), seen(C, None)],
            false,
        )
        .unwrap();
        assert_eq!(p.members[1].role, Role::Rebuild(RebuildKind::Full));
        assert_eq!(p.members[2].role, Role::Rebuild(RebuildKind::Full));
        assert_eq!(p.members[2].last_in_sync_gen, 0);
    }

    #[test]
    fn split_brain_same_generation_is_refused() {
        let a = label(A, 6, &[(A, true, 6), (B, false, 5)], Some(5), false);
        let b = label(B, 6, &[(A, false, 5), (B, true, 6)], Some(5), false);
        let e = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap_err();
        assert!(matches!(e, MirrorError::SplitBrain { .. }), "{e}");
    }

    #[test]
    fn split_brain_diverging_generations_is_refused() {
        // A dropped B at 5 and went to 8; B dropped A at 5 and went to 7 on its own.
        let a = label(A, 8, &[(A, true, 8), (B, false, 5)], Some(5), false);
        let b = label(B, 7, &[(A, false, 5), (B, true, 7)], Some(5), false);
        let e = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap_err();
        assert!(e.to_string().contains("dropped it at generation 5"), "{e}");
    }

    #[test]
    fn a_legitimately_stale_replica_is_not_split_brain() {
        // B dropped at 5, C added and rebuilt, A dropped at 8: C alone at 9.
        let c = label(
            C,
            9,
            &[(A, false, 8), (B, false, 5), (C, true, 9)],
            Some(5),
            true,
        );
        let a = label(
            A,
            8,
            &[(A, true, 8), (B, false, 5), (C, true, 8)],
            Some(5),
            true,
        );
        let b = label(B, 5, &[(A, true, 5), (B, true, 5)], None, true);
        let p = plan(
            &M,
            &[seen(A, Some(a)), seen(B, Some(b)), seen(C, Some(c))],
            false,
        )
        .unwrap();
        assert_eq!(p.members[0].role, Role::Rebuild(RebuildKind::Partial));
        assert_eq!(p.members[1].role, Role::Rebuild(RebuildKind::Partial));
        assert_eq!(p.members[2].role, Role::Healthy);
    }

    #[test]
    fn missing_in_sync_replica_refused_unless_allowed() {
        let a = label(A, 5, &[(A, true, 5), (B, true, 5)], None, true);
        let mut b = seen(B, None);
        b.reachable = false;
        let s = [seen(A, Some(a)), b];
        assert!(matches!(
            plan(&M, &s, false),
            Err(MirrorError::InSyncReplicaMissing { .. })
        ));
        let p = plan(&M, &s, true).unwrap();
        assert_eq!(p.members[1].role, Role::Unreachable);
        assert!(!p.members[1].in_sync);
        assert_eq!(p.tracking, Some(5), "tracks from the last generation B saw");
    }

    #[test]
    fn unclean_shutdown_resyncs_all_but_the_primary() {
        let a = label(A, 5, &[(A, true, 5), (B, true, 5)], None, false);
        let b = label(B, 5, &[(A, true, 5), (B, true, 5)], None, false);
        let p = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], false).unwrap();
        assert_eq!(p.members[0].role, Role::Healthy);
        assert_eq!(p.members[1].role, Role::Rebuild(RebuildKind::Resync));
        assert!(p.members[1].in_sync);
        assert_eq!(p.tracking, None);
    }

    #[test]
    fn lagging_label_of_an_in_sync_replica_is_healthy() {
        // A crash between the label writes of generation 6: B still has 5.
        let a = label(
            A,
            6,
            &[(A, true, 6), (B, true, 6), (C, false, 5)],
            Some(5),
            true,
        );
        let b = label(
            B,
            5,
            &[(A, true, 5), (B, true, 5), (C, true, 5)],
            None,
            true,
        );
        let p = plan(&M, &[seen(A, Some(a)), seen(B, Some(b))], true).unwrap();
        assert_eq!(p.members[1].role, Role::Healthy);
        let e = plan(&M, &[seen(A, None)], false).unwrap_err();
        assert!(matches!(e, MirrorError::NoLabel { .. }));
    }
}
