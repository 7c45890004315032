//! Volume: placement, replicas, target, status and repair; the finalizer
//! [`VOLUME_FINALIZER`] destroys the target and every replica on the nodes.
//!
//! One pass, each step idempotent:
//! 1. No replicas in the status: place them ([`placement::place`], the first on the
//!    `ferrite.dev/preferred-target` node when it has room: data locality) and write them
//!    into the status (state Pending) **before** creating anything, so a restarted operator
//!    finds them. Unplaceable: `Scheduled` False with the reason, a Warning Event, retried.
//! 2. Choose the target node ([`choose_target`]) once (preferring the node named by the
//!    `ferrite.dev/preferred-target` annotation the CSI controller sets from the request's
//!    preferred topology), and record it with the volume NQN.
//! 3. `CreateReplica` on each Pending replica's node, exported to the target node's host NQN
//!    (a replica on the target node itself is not exported).
//! 4. `GetVolume` on the target node; absent: `CreateVolume` over the replicas (local ones
//!    with an empty address, remote ones at their node's first NVMe/TCP endpoint); a status
//!    replica missing from the mirror (added by repair) is added with `AddVolumeReplica`.
//!    Then growth: a spec size above the served one grows every replica (`ResizeReplica`)
//!    and then the mirror (`ResizeVolume`) once every replica is in sync (`Resized`
//!    condition; see [`crate::decisions::growth`]). And the target's access list is set to
//!    `spec.allowedHosts` when it differs (a target created again gets its hosts back).
//! 5. Replica states, endpoints and the volume state ([`volume_health`]) into the status,
//!    with Events on state changes.
//! 6. Repair ([`plan_repair`]): additions and replacements become new Pending replicas
//!    (created on the next pass), removals leave the mirror and are destroyed (one whose
//!    node does not answer stays in the status, out of the mirror, until it is); returning
//!    replicas are re-connected by the target's mirror itself (partial rebuild), or added
//!    back (in full) if repair had taken them out of it. Requeued after the shortest wait.
//!
//! Not done: moving a target off an unreachable node (the volume stays Faulted until the
//! node returns).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferrite_api::node::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Fin, finalizer};

use super::expand;
use super::world::{World, name_of};
use super::{Context, Error, finalizer_error, now, patch_status};
use crate::conditions::{self, ConditionUpdate, SCHEDULED, Status, VOLUME_FINALIZER};
use crate::crd::{
    Endpoint, FerriteNode, RebuildProgress, ReplicaState, ReplicaStatus, Volume, VolumeState,
    VolumeStatus,
};
use crate::decisions::model::replica_bytes;
use crate::decisions::placement::{self, PlacementPolicy, PlacementRequest};
use crate::decisions::repair::{RepairAction, RepairInput, RepairPolicy, plan_repair};
use crate::decisions::status::{TargetHealth, volume_conditions, volume_health};
use crate::decisions::target::choose_target;
use crate::decisions::{ReplicaView, Topology};
use crate::names::{node_pool_name, volume_nqn};
use crate::node_api::{is_unreachable, parse_host_port};

/// Reconciles one Volume (with its finalizer).
pub async fn reconcile(v: Arc<Volume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<Volume>::all(ctx.client.clone());
    finalizer(&api, VOLUME_FINALIZER, v, |ev| async {
        match ev {
            Fin::Apply(v) => apply(v, ctx.clone()).await,
            Fin::Cleanup(v) => cleanup(v, ctx.clone()).await,
        }
    })
    .await
    .map_err(finalizer_error)
}

/// A new random (version 4) UUID for a replica.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A replica's state in the status from the target's mirror (`previous` when it says
/// nothing conclusive).
pub fn replica_state(vr: &api::VolumeReplicaStatus, previous: ReplicaState) -> ReplicaState {
    match api::ReplicaState::try_from(vr.state).unwrap_or(api::ReplicaState::Unknown) {
        api::ReplicaState::Healthy => ReplicaState::Online,
        api::ReplicaState::Rebuilding => ReplicaState::Rebuilding,
        api::ReplicaState::Faulted | api::ReplicaState::Stale => ReplicaState::Faulted,
        api::ReplicaState::Connecting | api::ReplicaState::Unknown => {
            if previous == ReplicaState::Pending {
                ReplicaState::Pending
            } else {
                ReplicaState::Faulted
            }
        }
    }
}

/// Folds the target's view of its mirror into the status replicas (pure: unit-tested).
/// Returns whether any replica changed state.
pub fn apply_mirror_states(
    replicas: &mut [ReplicaStatus],
    volume: &api::Volume,
    now: &Time,
) -> bool {
    let mut changed = false;
    for r in replicas.iter_mut() {
        let Some(vr) = volume.replicas.iter().find(|x| x.uuid == r.uuid) else {
            continue;
        };
        let state = replica_state(vr, r.state);
        if state != r.state {
            r.state = state;
            r.last_transition_time = Some(now.clone());
            changed = true;
        }
        r.rebuild_progress = vr
            .rebuild
            .as_ref()
            .filter(|_| state == ReplicaState::Rebuilding)
            .map(|p| RebuildProgress {
                bytes_done: super::i64_bytes(p.bytes_done),
                bytes_total: super::i64_bytes(p.bytes_total),
            });
    }
    changed
}

/// The decisions' view of the status replicas. `present`: per node, the replica UUIDs it
/// lists (absent: the node did not answer).
pub fn replica_views(
    replicas: &[ReplicaStatus],
    present: &BTreeMap<String, BTreeSet<String>>,
    now: &Time,
) -> Vec<ReplicaView> {
    replicas
        .iter()
        .map(|r| ReplicaView {
            uuid: r.uuid.clone(),
            node: r.node.clone(),
            pool: r.pool.clone(),
            state: r.state,
            in_state_for: r
                .last_transition_time
                .as_ref()
                .map(|t| {
                    let secs = now.0.as_second().saturating_sub(t.0.as_second());
                    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
                })
                .unwrap_or_default(),
            present_on_node: present.get(&r.node).is_some_and(|s| s.contains(&r.uuid)),
        })
        .collect()
}

/// Whether the preferred node can take a new volume's target: it is reachable, schedulable
/// and holds one of its replicas. At creation no replica is Online yet, so
/// [`choose_target`]'s preferred rule (which wants an Online replica) cannot apply; holding a
/// replica is the best a new volume can offer.
pub fn preferred_holds_replica(
    preferred: &str,
    replicas: &[ReplicaStatus],
    views: &[crate::decisions::NodeView],
) -> bool {
    replicas.iter().any(|r| r.node == preferred)
        && views
            .iter()
            .any(|v| v.name == preferred && v.reachable && v.schedulable)
}

/// Marks nodes holding one of `replicas` but missing from `present` as unreachable.
pub fn mark_unanswered(
    views: &mut [crate::decisions::NodeView],
    replicas: &[ReplicaStatus],
    present: &BTreeMap<String, BTreeSet<String>>,
) {
    for v in views.iter_mut() {
        if replicas.iter().any(|r| r.node == v.name) && !present.contains_key(&v.name) {
            v.reachable = false;
        }
    }
}

fn first_endpoint(n: &FerriteNode) -> Option<String> {
    n.status
        .as_ref()
        .and_then(|s| s.nvme_endpoints.first())
        .map(|e| format!("{}:{}", e.address, e.port))
}

fn pending_replica(p: &placement::Placement, t: &Time) -> ReplicaStatus {
    ReplicaStatus {
        uuid: new_uuid(),
        node: p.node.clone(),
        pool: p.pool.clone(),
        state: ReplicaState::Pending,
        last_transition_time: Some(t.clone()),
        rebuild_progress: None,
    }
}

async fn apply(v: Arc<Volume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = name_of(&v.metadata);
    let uid = v
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::Waiting("volume has no uid".into()))?;
    let spec = v.spec.validate().map_err(|e| Error::Spec(e.to_string()))?;
    let rbytes =
        replica_bytes(spec.size_bytes).ok_or_else(|| Error::Spec("size overflows".into()))?;
    let topology = Topology::from(&spec);
    let world = World::load(&ctx).await?;
    let mut views = world.node_views();
    let api_v = Api::<Volume>::all(ctx.client.clone());
    let generation = v.metadata.generation;
    let t = now();
    let old = v.status.clone().unwrap_or_default();
    let mut st = old.clone();

    let preferred = v
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::csi::params::PREFERRED_TARGET_ANNOTATION))
        .map(String::as_str);

    // 1. Placement, persisted before anything is created.
    if st.replicas.is_empty() {
        let none = BTreeSet::new();
        let req = PlacementRequest {
            replicas: spec.replicas,
            replica_bytes: rbytes,
            thin: spec.thin,
            topology: &topology,
            exclude_nodes: &none,
            prefer_node: preferred,
        };
        match placement::place(&req, &views, &PlacementPolicy::default()) {
            Err(e) => {
                st.state = Some(VolumeState::Pending);
                let changed = conditions::set(
                    &mut st.conditions,
                    &ConditionUpdate {
                        type_: SCHEDULED,
                        status: Status::False,
                        reason: "Unschedulable",
                        message: e.to_string(),
                    },
                    generation,
                    &t,
                );
                if changed || st != old {
                    patch_status(&api_v, &name, &st).await?;
                    ctx.event(&*v, true, "Unschedulable", e.to_string()).await;
                }
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            Ok(places) => {
                st.replicas = places.iter().map(|p| pending_replica(p, &t)).collect();
                let msg = places
                    .iter()
                    .map(|p| format!("{}/{}", p.node, p.pool))
                    .collect::<Vec<_>>()
                    .join(", ");
                conditions::set(
                    &mut st.conditions,
                    &ConditionUpdate {
                        type_: SCHEDULED,
                        status: Status::True,
                        reason: "Placed",
                        message: format!("replicas on {msg}"),
                    },
                    generation,
                    &t,
                );
                st.state = Some(VolumeState::Pending);
                ctx.event(&*v, false, "Scheduled", format!("replicas placed on {msg}"))
                    .await;
            }
        }
    }

    // Which replicas each replica node holds (nodes that do not answer are left out).
    let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in st
        .replicas
        .iter()
        .map(|r| r.node.clone())
        .collect::<BTreeSet<_>>()
    {
        let Some(n) = world.nodes.get(&node) else {
            continue;
        };
        let Ok(mut c) = ctx.nodes.client(&n.spec.api_endpoint) else {
            continue;
        };
        if let Ok(r) = c.list_replicas(api::ListReplicasRequest {}).await {
            present.insert(
                node,
                r.into_inner()
                    .replicas
                    .into_iter()
                    .map(|r| r.uuid)
                    .collect(),
            );
        }
    }
    // A replica node that did not answer just now counts as unreachable, whatever its
    // FerriteNode status (refreshed on its own schedule) says: repair must not take a
    // replica for lost because its node's status lags behind.
    mark_unanswered(&mut views, &st.replicas, &present);

    // 2. Target node.
    if st.target_node.is_none() {
        let rv = replica_views(&st.replicas, &present, &t);
        let first = preferred.filter(|p| preferred_holds_replica(p, &st.replicas, &views));
        let choice = match first {
            Some(p) => Ok(p.to_string()),
            None => choose_target(&rv, &views, &topology, None, preferred).map(|c| c.node),
        };
        match choice {
            Ok(node) => {
                st.target_node = Some(node);
                st.nqn = Some(volume_nqn(&uid));
            }
            Err(e) => {
                if st != old {
                    patch_status(&api_v, &name, &st).await?;
                }
                return Err(Error::Waiting(e.to_string()));
            }
        }
    }
    if st != old {
        patch_status(&api_v, &name, &st).await?;
    }
    let target = st.target_node.clone().unwrap_or_default();
    let nqn = st.nqn.clone().unwrap_or_else(|| volume_nqn(&uid));
    let target_node = world
        .nodes
        .get(&target)
        .ok_or_else(|| Error::Waiting(format!("target node {target} has no FerriteNode")))?;
    let host_nqn = target_node
        .status
        .as_ref()
        .and_then(|s| s.host_nqn.clone())
        .ok_or_else(|| Error::Waiting(format!("node {target} has not reported its host NQN")))?;

    // 3. Pending replicas on their nodes.
    for r in st
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Pending)
    {
        if present.get(&r.node).is_some_and(|s| s.contains(&r.uuid)) {
            continue;
        }
        let Some(n) = world.nodes.get(&r.node) else {
            continue;
        };
        let mut c = ctx
            .nodes
            .client(&n.spec.api_endpoint)
            .map_err(|s| Error::node(&r.node, "CreateReplica", s))?;
        let req = api::CreateReplicaRequest {
            uuid: r.uuid.clone(),
            pool: node_pool_name(&r.pool),
            size_bytes: rbytes,
            thin: spec.thin,
            allowed_hosts: if r.node == target {
                vec![]
            } else {
                vec![host_nqn.clone()]
            },
        };
        match c.create_replica(req).await {
            Ok(_) => {
                present
                    .entry(r.node.clone())
                    .or_default()
                    .insert(r.uuid.clone());
                tracing::info!(volume = %name, replica = %r.uuid, node = %r.node, "replica created");
            }
            Err(s) if is_unreachable(&s) => {
                tracing::warn!(volume = %name, node = %r.node, error = %s, "replica node unreachable");
            }
            Err(s) => return Err(Error::node(&r.node, "CreateReplica", s)),
        }
    }

    // 4. The target.
    let volume_replica = |r: &ReplicaStatus| -> Option<api::VolumeReplica> {
        let address = if r.node == target {
            String::new()
        } else {
            first_endpoint(world.nodes.get(&r.node)?)?
        };
        Some(api::VolumeReplica {
            uuid: r.uuid.clone(),
            address,
            nqn: String::new(),
        })
    };
    let mut tc = ctx
        .nodes
        .client(&target_node.spec.api_endpoint)
        .map_err(|s| Error::node(&target, "GetVolume", s))?;
    let served = match tc
        .get_volume(api::GetVolumeRequest { uuid: uid.clone() })
        .await
    {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => {
            let replicas: Vec<api::VolumeReplica> = st
                .replicas
                .iter()
                .filter(|r| present.get(&r.node).is_some_and(|p| p.contains(&r.uuid)))
                .filter_map(volume_replica)
                .collect();
            if replicas.is_empty() {
                return Err(Error::Waiting("no replica created yet".into()));
            }
            let req = api::CreateVolumeRequest {
                uuid: uid.clone(),
                nqn: nqn.clone(),
                replicas,
                allowed_hosts: v.spec.allowed_hosts.clone(),
            };
            let vol = tc
                .create_volume(req)
                .await
                .map_err(|s| Error::node(&target, "CreateVolume", s))?;
            ctx.event(
                &*v,
                false,
                "TargetCreated",
                format!("target {nqn} on node {target}"),
            )
            .await;
            Some(vol.into_inner())
        }
        Err(s) if is_unreachable(&s) => None,
        Err(s) => return Err(Error::node(&target, "GetVolume", s)),
    };
    let mut served = served;
    if let Some(vol) = served.as_mut() {
        for r in &st.replicas {
            let in_mirror = vol.replicas.iter().any(|x| x.uuid == r.uuid);
            let created = present.get(&r.node).is_some_and(|p| p.contains(&r.uuid));
            // A Faulted replica missing from the mirror was taken out by repair (its node did
            // not answer DestroyReplica): it is destroyed, or re-added as a returning
            // replica, by step 6, never re-added here.
            if in_mirror || !created || r.state == ReplicaState::Faulted {
                continue;
            }
            if let Some(replica) = volume_replica(r) {
                match tc
                    .add_volume_replica(api::AddVolumeReplicaRequest {
                        uuid: uid.clone(),
                        replica: Some(replica),
                    })
                    .await
                {
                    Ok(nv) => *vol = nv.into_inner(),
                    Err(s) => {
                        tracing::warn!(volume = %name, replica = %r.uuid, error = %s, "AddVolumeReplica failed")
                    }
                }
            }
        }
    }

    // 4b. Growth to the spec's size (CSI ControllerExpandVolume raises spec.sizeBytes).
    let mut grow_retry = None;
    if let Some(vol) = served.as_mut() {
        let input = expand::GrowInput {
            volume: &v,
            uid: &uid,
            spec_bytes: spec.size_bytes,
            generation,
            now: &t,
        };
        grow_retry = expand::reconcile_size(&ctx, &world, &input, &mut st, &mut tc, vol).await;
    }

    // 4c. The target's access list is the spec's (the CSI controller maintains it).
    if let Some(vol) = served.as_mut() {
        let want: BTreeSet<&String> = v.spec.allowed_hosts.iter().collect();
        let have: BTreeSet<&String> = vol.allowed_hosts.iter().collect();
        if want != have {
            match tc
                .set_volume_hosts(api::SetVolumeHostsRequest {
                    uuid: uid.clone(),
                    allowed_hosts: v.spec.allowed_hosts.clone(),
                })
                .await
            {
                Ok(nv) => {
                    tracing::info!(volume = %name, hosts = ?v.spec.allowed_hosts, "target access list applied");
                    *vol = nv.into_inner();
                }
                Err(s) => {
                    tracing::warn!(volume = %name, error = %s, "SetVolumeHosts failed");
                }
            }
        }
    }

    // 5. Status.
    let target_health = match &served {
        Some(vol) => {
            apply_mirror_states(&mut st.replicas, vol, &t);
            st.endpoints = vol
                .endpoints
                .iter()
                .filter_map(|e| parse_host_port(e))
                .map(|(a, p)| Endpoint::new(a, p))
                .collect();
            if !vol.nqn.is_empty() {
                st.nqn = Some(vol.nqn.clone());
            }
            TargetHealth::Serving
        }
        None => TargetHealth::Down,
    };
    let states: Vec<ReplicaState> = st.replicas.iter().map(|r| r.state).collect();
    let health = volume_health(spec.replicas, &states, target_health);
    for c in volume_conditions(&health) {
        conditions::set(&mut st.conditions, &c, generation, &t);
    }
    if st.state != Some(health.state) {
        let warn = matches!(health.state, VolumeState::Degraded | VolumeState::Faulted);
        ctx.event(
            &*v,
            warn,
            &format!("Volume{:?}", health.state),
            health.message.clone(),
        )
        .await;
    }
    st.state = Some(health.state);
    ctx.metrics.volume_state(&name, st.state);
    st.observed_generation = generation;

    // 6. Repair (only with a view of the mirror).
    let mut requeue = grow_retry.map_or(ctx.resync, |d| ctx.resync.min(d));
    if served.is_some() {
        let rv = replica_views(&st.replicas, &present, &t);
        let plan = plan_repair(
            &RepairInput {
                desired: spec.replicas,
                replica_bytes: rbytes,
                thin: spec.thin,
                topology: &topology,
                replicas: &rv,
                target_node: Some(&target),
            },
            &views,
            &RepairPolicy {
                grace: ctx.repair_grace,
            },
            &PlacementPolicy::default(),
        );
        if let Some(after) = plan.requeue_after {
            requeue = requeue.min(after.max(Duration::from_secs(1)));
        }
        for action in plan.actions {
            match action {
                RepairAction::Add { with } => {
                    st.replicas.push(pending_replica(&with, &t));
                    ctx.event(
                        &*v,
                        false,
                        "ReplicaAdded",
                        format!("new replica on {}/{}", with.node, with.pool),
                    )
                    .await;
                }
                RepairAction::Replace { replica, with } => {
                    drop_replica(&ctx, &world, &mut tc, &uid, &mut st, &replica).await;
                    st.replicas.push(pending_replica(&with, &t));
                    ctx.event(
                        &*v,
                        true,
                        "ReplicaReplaced",
                        format!(
                            "replica {replica} lost; new one on {}/{}",
                            with.node, with.pool
                        ),
                    )
                    .await;
                }
                RepairAction::Remove { replica } => {
                    if drop_replica(&ctx, &world, &mut tc, &uid, &mut st, &replica).await {
                        ctx.event(
                            &*v,
                            false,
                            "ReplicaRemoved",
                            format!("replica {replica} removed"),
                        )
                        .await;
                    }
                }
                RepairAction::Blocked { reason, .. } => {
                    tracing::warn!(volume = %name, %reason, "repair blocked");
                }
                RepairAction::PartialRebuild { replica } => {
                    let in_mirror = served
                        .as_ref()
                        .is_some_and(|vol| vol.replicas.iter().any(|x| x.uuid == replica));
                    if in_mirror {
                        tracing::info!(volume = %name, %replica, "replica returned; the mirror resyncs it");
                    } else if let Some(r) = st.replicas.iter().find(|r| r.uuid == replica)
                        && let Some(vr) = volume_replica(r)
                    {
                        // Taken out of the mirror earlier and still needed: back in, in full.
                        if let Err(s) = tc
                            .add_volume_replica(api::AddVolumeReplicaRequest {
                                uuid: uid.clone(),
                                replica: Some(vr),
                            })
                            .await
                        {
                            tracing::warn!(volume = %name, %replica, error = %s, "AddVolumeReplica failed");
                        }
                    }
                }
                RepairAction::Wait { .. } => {}
            }
        }
    }
    if st != old {
        patch_status(&api_v, &name, &st).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Takes a replica out of the mirror and off its node, then out of the status; returns
/// whether it is gone. A replica whose node does not answer (or refuses) DestroyReplica stays
/// in the status, out of the mirror, so that it is not orphaned: repair finds it lost or
/// surplus again on later passes and destroys it once its node is back.
async fn drop_replica(
    ctx: &Context,
    world: &World,
    tc: &mut api::node_client::NodeClient<tonic::transport::Channel>,
    uid: &str,
    st: &mut VolumeStatus,
    replica: &str,
) -> bool {
    if let Err(s) = tc
        .remove_volume_replica(api::RemoveVolumeReplicaRequest {
            uuid: uid.into(),
            replica_uuid: replica.into(),
        })
        .await
        && s.code() != tonic::Code::NotFound
    {
        tracing::warn!(%replica, error = %s, "RemoveVolumeReplica failed");
    }
    let Some(node) = st
        .replicas
        .iter()
        .find(|r| r.uuid == replica)
        .map(|r| r.node.clone())
    else {
        return true;
    };
    // Without a FerriteNode there is nobody left to ask.
    if let Some(n) = world.nodes.get(&node) {
        let destroyed = match ctx.nodes.client(&n.spec.api_endpoint) {
            Ok(mut c) => c
                .destroy_replica(api::DestroyReplicaRequest {
                    uuid: replica.into(),
                })
                .await
                .map(|_| ()),
            Err(s) => Err(s),
        };
        if let Err(s) = destroyed
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(%replica, %node, error = %s, "DestroyReplica failed; kept in the status until its node destroys it");
            return false;
        }
    }
    st.replicas.retain(|r| r.uuid != replica);
    true
}

async fn cleanup(v: Arc<Volume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(uid) = v.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    let st = v.status.clone().unwrap_or_default();
    let world = World::load(&ctx).await?;
    let ignore_missing = |r: Result<(), tonic::Status>| match r {
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        other => other,
    };
    if let Some(target) = &st.target_node
        && let Some(n) = world.nodes.get(target)
    {
        let mut c = ctx
            .nodes
            .client(&n.spec.api_endpoint)
            .map_err(|s| Error::node(target, "DestroyVolume", s))?;
        ignore_missing(
            c.destroy_volume(api::DestroyVolumeRequest { uuid: uid.clone() })
                .await
                .map(|_| ()),
        )
        .map_err(|s| Error::node(target, "DestroyVolume", s))?;
    }
    for r in &st.replicas {
        let Some(n) = world.nodes.get(&r.node) else {
            continue;
        };
        let mut c = ctx
            .nodes
            .client(&n.spec.api_endpoint)
            .map_err(|s| Error::node(&r.node, "DestroyReplica", s))?;
        ignore_missing(
            c.destroy_replica(api::DestroyReplicaRequest {
                uuid: r.uuid.clone(),
            })
            .await
            .map(|_| ()),
        )
        .map_err(|s| Error::node(&r.node, "DestroyReplica", s))?;
    }
    ctx.event(
        &*v,
        false,
        "VolumeDestroyed",
        "target and replicas destroyed on the nodes".into(),
    )
    .await;
    ctx.metrics.forget_volume(&name_of(&v.metadata));
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(uuid: &str, state: ReplicaState) -> ReplicaStatus {
        ReplicaStatus {
            uuid: uuid.into(),
            node: "n".into(),
            pool: "p".into(),
            state,
            last_transition_time: None,
            rebuild_progress: None,
        }
    }

    #[test]
    fn uuid_is_v4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }

    #[test]
    fn mirror_states_map_and_stamp_transitions() {
        let t = now();
        let mut reps = vec![
            rs("a", ReplicaState::Pending),
            rs("b", ReplicaState::Online),
            rs("c", ReplicaState::Pending),
        ];
        let vol = api::Volume {
            replicas: vec![
                api::VolumeReplicaStatus {
                    uuid: "a".into(),
                    state: api::ReplicaState::Healthy as i32,
                    ..Default::default()
                },
                api::VolumeReplicaStatus {
                    uuid: "b".into(),
                    state: api::ReplicaState::Connecting as i32,
                    ..Default::default()
                },
                api::VolumeReplicaStatus {
                    uuid: "c".into(),
                    state: api::ReplicaState::Rebuilding as i32,
                    rebuild: Some(api::RebuildProgress {
                        bytes_done: 5,
                        bytes_total: 10,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(apply_mirror_states(&mut reps, &vol, &t));
        assert_eq!(reps[0].state, ReplicaState::Online);
        assert_eq!(reps[1].state, ReplicaState::Faulted);
        assert_eq!(reps[2].state, ReplicaState::Rebuilding);
        assert_eq!(reps[2].rebuild_progress.map(|p| p.bytes_done), Some(5));
        assert!(reps[1].last_transition_time.is_some());
        assert!(!apply_mirror_states(&mut reps, &vol, &t));
    }

    #[test]
    fn silent_replica_nodes_are_unreachable() {
        let view = |name: &str| crate::decisions::NodeView {
            name: name.into(),
            labels: Default::default(),
            schedulable: true,
            reachable: true,
            pools: vec![],
            targets: 0,
        };
        let mut views = vec![view("n"), view("m"), view("o")];
        let mut r2 = rs("b", ReplicaState::Online);
        r2.node = "m".into();
        let present = BTreeMap::from([("m".to_string(), BTreeSet::new())]);
        mark_unanswered(&mut views, &[rs("a", ReplicaState::Faulted), r2], &present);
        assert_eq!(
            views.iter().map(|v| v.reachable).collect::<Vec<_>>(),
            [false, true, true]
        );
    }

    #[test]
    fn preferred_target_needs_a_replica_and_a_usable_node() {
        let view = |name: &str, reachable: bool| crate::decisions::NodeView {
            name: name.into(),
            labels: Default::default(),
            schedulable: true,
            reachable,
            pools: vec![],
            targets: 0,
        };
        let views = [view("n", true), view("m", false), view("o", true)];
        let mut r2 = rs("b", ReplicaState::Pending);
        r2.node = "m".into();
        let reps = [rs("a", ReplicaState::Pending), r2];
        assert!(preferred_holds_replica("n", &reps, &views));
        assert!(!preferred_holds_replica("m", &reps, &views));
        assert!(!preferred_holds_replica("o", &reps, &views));
    }

    #[test]
    fn connecting_pending_stays_pending() {
        let vr = api::VolumeReplicaStatus {
            state: api::ReplicaState::Connecting as i32,
            ..Default::default()
        };
        assert_eq!(
            replica_state(&vr, ReplicaState::Pending),
            ReplicaState::Pending
        );
    }

    #[test]
    fn views_measure_time_in_state_and_presence() {
        let t = now();
        let mut r = rs("a", ReplicaState::Faulted);
        r.last_transition_time = Some(Time(t.0 - k8s_openapi::jiff::SignedDuration::from_secs(42)));
        let present = BTreeMap::from([("n".to_string(), BTreeSet::from(["a".to_string()]))]);
        let v = replica_views(&[r], &present, &t);
        assert_eq!(v[0].in_state_for, Duration::from_secs(42));
        assert!(v[0].present_on_node);
    }
}
