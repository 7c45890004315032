//! Growing a served volume to its spec size ([`plan_growth`] decides): `ResizeReplica` on
//! every replica's node, then `ResizeVolume` on the target node, which grows the mirror and
//! tells connected hosts. The `Resized` condition says where it stands.

use std::time::Duration;

use ferrite_api::node::v1 as api;
use ferrite_api::node::v1::node_client::NodeClient;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tonic::transport::Channel;

use super::Context;
use super::world::World;
use crate::conditions::{self, ConditionUpdate, RESIZED, Status};
use crate::crd::{ReplicaState, ReplicaStatus, Volume, VolumeStatus};
use crate::decisions::growth::{Growth, plan_growth};
use crate::decisions::model::human_bytes;

/// What one growth step needs.
pub(super) struct GrowInput<'a> {
    pub volume: &'a Volume,
    pub uid: &'a str,
    pub spec_bytes: u64,
    pub generation: Option<i64>,
    pub now: &'a Time,
}

/// Brings the served size (`served`, as `GetVolume` reported it) to the spec's, updating
/// `served` and the `Resized` condition in `st`. Returns how soon to look again when the
/// growth must wait or failed.
pub(super) async fn reconcile_size(
    ctx: &Context,
    world: &World,
    input: &GrowInput<'_>,
    st: &mut VolumeStatus,
    target: &mut NodeClient<Channel>,
    served: &mut api::Volume,
) -> Option<Duration> {
    // A Faulted replica already out of the mirror is on its way out (repair destroys it
    // once its node answers): it neither blocks nor takes part in the growth.
    let members: Vec<&ReplicaStatus> = st
        .replicas
        .iter()
        .filter(|r| {
            r.state != ReplicaState::Faulted || served.replicas.iter().any(|m| m.uuid == r.uuid)
        })
        .collect();
    let states: Vec<_> = members.iter().map(|r| r.state).collect();
    let plan = plan_growth(input.spec_bytes, Some(served.size_bytes), &states);
    let (status, reason, message, retry) = match plan {
        Growth::Done => (
            Status::True,
            "AtSpecSize",
            format!("serving {}", human_bytes(served.size_bytes)),
            None,
        ),
        Growth::Refused(m) => (Status::False, "ShrinkRefused", m, None),
        Growth::Wait(m) => (
            Status::False,
            "WaitingForSync",
            m,
            Some(Duration::from_secs(5)),
        ),
        Growth::Grow {
            volume_bytes,
            replica_bytes,
        } => match grow(
            ctx,
            world,
            input,
            &members,
            target,
            volume_bytes,
            replica_bytes,
        )
        .await
        {
            Ok(vol) => {
                let from = served.size_bytes;
                *served = vol;
                ctx.event(
                    input.volume,
                    false,
                    "VolumeExpanded",
                    format!(
                        "grown from {} to {}",
                        human_bytes(from),
                        human_bytes(served.size_bytes)
                    ),
                )
                .await;
                (
                    Status::True,
                    "AtSpecSize",
                    format!("serving {}", human_bytes(served.size_bytes)),
                    None,
                )
            }
            Err(m) => (
                Status::False,
                "ResizeFailed",
                m,
                Some(Duration::from_secs(5)),
            ),
        },
    };
    let changed = conditions::set(
        &mut st.conditions,
        &ConditionUpdate {
            type_: RESIZED,
            status,
            reason,
            message: message.clone(),
        },
        input.generation,
        input.now,
    );
    if changed && status == Status::False {
        ctx.event(input.volume, true, reason, message).await;
    }
    st.size_bytes = i64::try_from(served.size_bytes).ok();
    retry
}

/// Grows every replica, then the mirror. Errors are messages for the condition.
async fn grow(
    ctx: &Context,
    world: &World,
    input: &GrowInput<'_>,
    replicas: &[&ReplicaStatus],
    target: &mut NodeClient<Channel>,
    volume_bytes: u64,
    replica_bytes: u64,
) -> Result<api::Volume, String> {
    for r in replicas {
        let node = world
            .nodes
            .get(&r.node)
            .ok_or_else(|| format!("node {} of replica {} has no FerriteNode", r.node, r.uuid))?;
        let mut c = ctx
            .nodes
            .client(&node.spec.api_endpoint)
            .map_err(|s| format!("node {}: {}", r.node, s.message()))?;
        c.resize_replica(api::ResizeReplicaRequest {
            uuid: r.uuid.clone(),
            size_bytes: replica_bytes,
        })
        .await
        .map_err(|s| format!("growing replica {} on {}: {}", r.uuid, r.node, s.message()))?;
        tracing::info!(replica = %r.uuid, node = %r.node, bytes = replica_bytes, "replica grown");
    }
    let vol = target
        .resize_volume(api::ResizeVolumeRequest {
            uuid: input.uid.to_string(),
            size_bytes: volume_bytes,
        })
        .await
        .map_err(|s| format!("growing the volume on its target: {}", s.message()))?
        .into_inner();
    tracing::info!(volume = %input.uid, bytes = vol.size_bytes, "volume grown");
    Ok(vol)
}
