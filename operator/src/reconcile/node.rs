//! FerriteNode: status from the node API (`GetNodeInfo`, `ListPools`). Ready when the node
//! answers; Unreachable (with `Ready` False) when it does not. Looked at again every resync.

use std::sync::Arc;

use ferrite_api::node::v1::{GetNodeInfoRequest, ListPoolsRequest};
use kube::Api;
use kube::runtime::controller::Action;

use super::{Context, Error, i64_bytes, now, patch_status};
use crate::conditions::{self, ConditionUpdate, READY, Status};
use crate::crd::{Endpoint, FerriteNode, FerriteNodeStatus, NodePhase};
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
