//! FerriteNode: status from the node API (`GetNodeInfo`, `ListPools`). Ready when the node
//! answers; Unreachable (with `Ready` False) when it does not. Looked at again every resync.
//!
//! While the node answers, its replicas and volume targets that no Volume refers to are
//! destroyed once orphaned for the grace period ([`crate::decisions::orphans`]), each with
//! an `OrphanDestroyed` Event on the FerriteNode.

use std::sync::Arc;

use std::collections::BTreeSet;
use std::time::Instant;

use ferrite_api::node::v1::{
    DestroyReplicaRequest, DestroyVolumeRequest, GetNodeInfoRequest, ListPoolsRequest,
    ListReplicasRequest, ListVolumesRequest,
};
use kube::Api;
use kube::runtime::controller::Action;

use super::world::World;
use super::{Context, Error, i64_bytes, now, patch_status};
use crate::conditions::{self, ConditionUpdate, READY, Status};
use crate::crd::{Endpoint, FerriteNode, FerriteNodeStatus, NodePhase};
use crate::decisions::orphans::{NodeObjects, Orphan, References, orphans};
use crate::names::{node_pool_name, volume_nqn};
use crate::node_api::parse_host_port;

/// Reconciles one FerriteNode.
pub async fn reconcile(node: Arc<FerriteNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let old = node.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let t = now();
    let observed = observe(&ctx, &node).await;
    let update = match &observed {
        Ok((info, pools)) => {
            st.phase = Some(NodePhase::Ready);
            st.host_nqn = Some(info.host_nqn.clone()).filter(|s| !s.is_empty());
            st.nvme_endpoints = info
                .nvme_endpoints
                .iter()
                .filter_map(|e| parse_host_port(e))
                .map(|(a, p)| Endpoint::new(a, p))
                .collect();
            st.version = Some(info.version.clone()).filter(|s| !s.is_empty());
            st.capacity_bytes = Some(i64_bytes(
                pools.pools.iter().map(|p| p.capacity_bytes).sum(),
            ));
            st.free_bytes = Some(i64_bytes(pools.pools.iter().map(|p| p.free_bytes).sum()));
            st.last_seen = Some(t.clone());
            ConditionUpdate {
                type_: READY,
                status: Status::True,
                reason: "Reachable",
                message: format!("node API answers; {} pool(s)", pools.pools.len()),
            }
        }
        Err(e) => {
            st.phase = Some(NodePhase::Unreachable);
            ConditionUpdate {
                type_: READY,
                status: Status::False,
                reason: "Unreachable",
                message: e.to_string(),
            }
        }
    };
    conditions::set(&mut st.conditions, &update, node.metadata.generation, &t);
    st.observed_generation = node.metadata.generation;
    if observed.is_ok()
        && let Err(e) = collect_orphans(&ctx, &node, &name).await
    {
        tracing::warn!(node = %name, error = %e, "orphan collection failed");
    }
    if old.phase != st.phase {
        let warn = st.phase != Some(NodePhase::Ready);
        ctx.event(
            &*node,
            warn,
            if warn { "NodeUnreachable" } else { "NodeReady" },
            update.message.clone(),
        )
        .await;
    }
    if strip_time(&old) != strip_time(&st) {
        patch_status(&Api::<FerriteNode>::all(ctx.client.clone()), &name, &st).await?;
    } else if old.last_seen.as_ref().map_or(0, |l| l.0.as_second()) + 30 < t.0.as_second()
        && st.phase == Some(NodePhase::Ready)
    {
        // Keep lastSeen roughly current without writing every resync.
        patch_status(&Api::<FerriteNode>::all(ctx.client.clone()), &name, &st).await?;
    }
    Ok(Action::requeue(ctx.resync / 2))
}

/// The status without `lastSeen`, to write only on real changes.
fn strip_time(s: &FerriteNodeStatus) -> FerriteNodeStatus {
    FerriteNodeStatus {
        last_seen: None,
        ..s.clone()
    }
}

async fn observe(
    ctx: &Context,
    node: &FerriteNode,
) -> Result<
    (
        ferrite_api::node::v1::NodeInfo,
        ferrite_api::node::v1::ListPoolsResponse,
    ),
    tonic::Status,
> {
    let mut c = ctx.nodes.client(&node.spec.api_endpoint)?;
    let info = c.get_node_info(GetNodeInfoRequest {}).await?.into_inner();
    let pools = c.list_pools(ListPoolsRequest {}).await?.into_inner();
    Ok((info, pools))
}

/// Destroys the node's orphans that are due (see [`crate::decisions::orphans`]).
async fn collect_orphans(ctx: &Context, node: &FerriteNode, name: &str) -> Result<(), Error> {
    let mut c = ctx
        .nodes
        .client(&node.spec.api_endpoint)
        .map_err(|s| Error::node(name, "ListReplicas", s))?;
    // The node first, then the Volumes: whatever the node holds now was recorded in a
    // Volume's status before it was created.
    let replicas = c
        .list_replicas(ListReplicasRequest {})
        .await
        .map_err(|s| Error::node(name, "ListReplicas", s))?
        .into_inner()
        .replicas;
    let volumes = c
        .list_volumes(ListVolumesRequest {})
        .await
        .map_err(|s| Error::node(name, "ListVolumes", s))?
        .into_inner()
        .volumes;
    let on_node = NodeObjects {
        replicas: replicas.into_iter().map(|r| (r.uuid, r.pool)).collect(),
        // Only targets the operator made (its NQN form); hand-configured ones are not ours.
        volumes: volumes
            .into_iter()
            .filter(|v| v.nqn == volume_nqn(&v.uuid))
            .map(|v| v.uuid)
            .collect(),
    };
    let world = World::fetch(&ctx.client).await?;
    let refs = References {
        managed_pools: world
            .pools
            .iter()
            .filter(|(_, p)| p.spec.node == name)
            .map(|(n, _)| node_pool_name(n))
            .collect(),
        replicas: world
            .volumes
            .values()
            .filter_map(|v| v.status.as_ref())
            .flat_map(|s| s.replicas.iter().map(|r| r.uuid.clone()))
            .collect(),
        volumes: world
            .volumes
            .values()
            .filter_map(|v| v.metadata.uid.clone())
            .collect::<BTreeSet<_>>(),
    };
    let found = orphans(&on_node, &refs);
    let due = ctx.orphans.lock().unwrap_or_else(|p| p.into_inner()).due(
        name,
        &found,
        Instant::now(),
        ctx.orphan_grace,
    );
    for o in due {
        let r = match &o {
            Orphan::Replica(uuid) => c
                .destroy_replica(DestroyReplicaRequest { uuid: uuid.clone() })
                .await
                .map(|_| ()),
            Orphan::Volume(uuid) => c
                .destroy_volume(DestroyVolumeRequest { uuid: uuid.clone() })
                .await
                .map(|_| ()),
        };
        match r {
            Ok(()) => {
                tracing::info!(node = %name, orphan = %o, "orphan destroyed");
                ctx.event(
                    node,
                    true,
                    "OrphanDestroyed",
                    format!(
                        "{o} was referred to by no Volume for {}s; destroyed",
                        ctx.orphan_grace.as_secs()
                    ),
                )
                .await;
                ctx.orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget(name, &o);
            }
            Err(s) => {
                tracing::warn!(node = %name, orphan = %o, error = %s, "destroying an orphan failed")
            }
        }
    }
    Ok(())
}
