//! StoragePool: created (or imported) on its node with `CreatePool`, status from
//! `ListPools`; the finalizer [`POOL_FINALIZER`] refuses deletion while any Volume has a
//! replica in the pool (condition `DeletionBlocked` True, a Warning Event, retried), then runs
//! `DestroyPool` on the node.

use std::sync::Arc;

use ferrite_api::node::v1 as api;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Fin, finalizer};

use super::world::{World, name_of, volumes_using};
use super::{Context, Error, finalizer_error, i64_bytes, now, patch_status};
use crate::conditions::{self, ConditionUpdate, DELETION_BLOCKED, POOL_FINALIZER, Status};
use crate::crd::{FerriteNode, MemberState, MemberStatus, StoragePool, StoragePoolStatus};
use crate::decisions::status::{PoolObservation, pool_health};
use crate::names::node_pool_name;
use crate::node_api::is_unreachable;

/// Block size pools are created with.
pub const POOL_BLOCK_SIZE: u32 = 4096;

/// Reconciles one StoragePool (with its finalizer).
pub async fn reconcile(pool: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<StoragePool>::all(ctx.client.clone());
    finalizer(&api, POOL_FINALIZER, pool, |ev| async {
        match ev {
            Fin::Apply(p) => apply(p, ctx.clone()).await,
            Fin::Cleanup(p) => cleanup(p, ctx.clone()).await,
        }
    })
    .await
    .map_err(finalizer_error)
}

/// What the node said about the pool.
struct Observed {
    reachable: bool,
    pool: Option<api::Pool>,
    create_error: Option<String>,
}

async fn observe(
    ctx: &Context,
    endpoint: &str,
    name: &str,
    disks: Vec<String>,
    stripe: u32,
) -> Observed {
    let mut c = match ctx.nodes.client(endpoint) {
        Ok(c) => c,
        Err(e) => {
            return Observed {
                reachable: false,
                pool: None,
                create_error: Some(e.message().into()),
            };
        }
    };
    let listed = match c.list_pools(api::ListPoolsRequest {}).await {
        Ok(r) => r.into_inner().pools.into_iter().find(|p| p.name == name),
        Err(e) => {
            tracing::debug!(pool = name, error = %e, "ListPools failed");
            return Observed {
                reachable: false,
                pool: None,
                create_error: None,
            };
        }
    };
    if listed.is_some() {
        return Observed {
            reachable: true,
            pool: listed,
            create_error: None,
        };
    }
    let req = api::CreatePoolRequest {
        name: name.into(),
        disks,
        stripe_size: stripe,
        block_size: POOL_BLOCK_SIZE,
    };
    match c.create_pool(req).await {
        Ok(p) => Observed {
            reachable: true,
            pool: Some(p.into_inner()),
            create_error: None,
        },
        Err(e) if is_unreachable(&e) => Observed {
            reachable: false,
            pool: None,
            create_error: None,
        },
        Err(e) => Observed {
            reachable: true,
            pool: None,
            create_error: Some(format!("{:?}: {}", e.code(), e.message())),
        },
    }
}

/// A member's health from the node's word for it.
pub fn member_state(s: &str) -> MemberState {
    match s.to_ascii_lowercase().as_str() {
        "online" | "healthy" | "ok" => MemberState::Online,
        "faulted" | "degraded" | "error" => MemberState::Faulted,
        "missing" => MemberState::Missing,
        _ => MemberState::Unknown,
    }
}

/// The new status from what was observed (pure: unit-tested).
#[allow(clippy::too_many_arguments)]
pub fn pool_status(
    old: &StoragePoolStatus,
    node_known: bool,
    reachable: bool,
    pool: Option<&api::Pool>,
    create_error: Option<&str>,
    provisioned: u64,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> StoragePoolStatus {
    let mut st = old.clone();
    let members: Vec<MemberStatus> = pool
        .map(|p| {
            p.members
                .iter()
                .map(|m| MemberStatus {
                    disk: m.disk.clone(),
                    state: member_state(&m.state),
                })
                .collect()
        })
        .unwrap_or_default();
    let states: Vec<MemberState> = members.iter().map(|m| m.state).collect();
    let mut health = pool_health(&PoolObservation {
        node_reachable: reachable,
        exists: pool.is_some(),
        create_error,
        members: &states,
        previous: old.phase,
    });
    if !node_known {
        health.ready.reason = "NodeNotFound";
        health.ready.status = Status::False;
        health.ready.message = "no FerriteNode of that name".into();
    }
    st.phase = Some(health.phase);
    if let Some(p) = pool {
        st.capacity_bytes = Some(i64_bytes(p.capacity_bytes));
        st.used_bytes = Some(i64_bytes(p.used_bytes));
        st.free_bytes = Some(i64_bytes(p.free_bytes));
        st.members = members;
    }
    st.provisioned_bytes = Some(i64_bytes(provisioned));
    conditions::set(&mut st.conditions, &health.ready, generation, now);
    st.conditions.retain(|c| c.type_ != DELETION_BLOCKED);
    st.observed_generation = generation;
    st
}

async fn apply(p: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = name_of(&p.metadata);
    let disks = p.spec.validate().map_err(|e| Error::Spec(e.to_string()))?;
    let world = World::load(&ctx).await?;
    let node: Option<&FerriteNode> = world.nodes.get(&p.spec.node);
    let provisioned = world.provisioned().get(&name).copied().unwrap_or(0);
    let old = p.status.clone().unwrap_or_default();
    let obs = match node {
        Some(n) => {
            observe(
                &ctx,
                &n.spec.api_endpoint,
                &node_pool_name(&name),
                disks,
                p.spec.stripe_size.bytes(),
            )
            .await
        }
        None => Observed {
            reachable: false,
            pool: None,
            create_error: None,
        },
    };
    let st = pool_status(
        &old,
        node.is_some(),
        obs.reachable,
        obs.pool.as_ref(),
        obs.create_error.as_deref(),
        provisioned,
        p.metadata.generation,
        &now(),
    );
    ctx.metrics.pool_phase(&name, st.phase);
    if st.phase != old.phase {
        let warn = !matches!(st.phase, Some(crate::crd::PoolPhase::Online));
        let msg = conditions_message(&st);
        ctx.event(
            &*p,
            warn,
            &format!(
                "Pool{:?}",
                st.phase.unwrap_or(crate::crd::PoolPhase::Pending)
            ),
            msg,
        )
        .await;
    }
    if st != old {
        patch_status(&Api::<StoragePool>::all(ctx.client.clone()), &name, &st).await?;
    }
    Ok(Action::requeue(ctx.resync))
}

fn conditions_message(st: &StoragePoolStatus) -> String {
    st.conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn cleanup(p: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = name_of(&p.metadata);
    let world = World::load(&ctx).await?;
    let users = volumes_using(world.volumes.values(), &name);
    if !users.is_empty() {
        let volumes = users.join(", ");
        let mut st = p.status.clone().unwrap_or_default();
        let changed = conditions::set(
            &mut st.conditions,
            &ConditionUpdate {
                type_: DELETION_BLOCKED,
                status: Status::True,
                reason: "VolumesUsePool",
                message: format!("deletion waits: volume(s) {volumes} have replicas in this pool"),
            },
            p.metadata.generation,
            &now(),
        );
        if changed {
            patch_status(&Api::<StoragePool>::all(ctx.client.clone()), &name, &st).await?;
            ctx.event(
                &*p,
                true,
                "DeletionBlocked",
                format!("volume(s) {volumes} still use the pool"),
            )
            .await;
        }
        return Err(Error::PoolInUse {
            pool: name,
            volumes,
        });
    }
    if let Some(n) = world.nodes.get(&p.spec.node) {
        let mut c = ctx
            .nodes
            .client(&n.spec.api_endpoint)
            .map_err(|s| Error::node(&p.spec.node, "DestroyPool", s))?;
        match c
            .destroy_pool(api::DestroyPoolRequest {
                name: node_pool_name(&name),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(Error::node(&p.spec.node, "DestroyPool", s)),
        }
    }
    ctx.event(
        &*p,
        false,
        "PoolDestroyed",
        format!("pool destroyed on node {}", p.spec.node),
    )
    .await;
    ctx.metrics.forget_pool(&name);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PoolPhase;

    fn pool(states: &[&str]) -> api::Pool {
        api::Pool {
            name: "p".into(),
            capacity_bytes: 100,
            used_bytes: 10,
            free_bytes: 90,
            members: states
                .iter()
                .map(|s| api::PoolMember {
                    disk: "ram:1M".into(),
                    state: s.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn online_pool_fills_capacity() {
        let t = now();
        let st = pool_status(
            &Default::default(),
            true,
            true,
            Some(&pool(&["online"])),
            None,
            7,
            Some(1),
            &t,
        );
        assert_eq!(st.phase, Some(PoolPhase::Online));
        assert_eq!(
            (st.capacity_bytes, st.used_bytes, st.free_bytes),
            (Some(100), Some(10), Some(90))
        );
        assert_eq!(st.provisioned_bytes, Some(7));
        assert_eq!(st.members[0].state, MemberState::Online);
        assert_eq!(st.conditions[0].status, "True");
        assert!(!st.conditions[0].message.is_empty());
    }

    #[test]
    fn missing_member_fails_and_create_error_reported() {
        let t = now();
        let st = pool_status(
            &Default::default(),
            true,
            true,
            Some(&pool(&["online", "missing"])),
            None,
            0,
            None,
            &t,
        );
        assert_eq!(st.phase, Some(PoolPhase::Failed));
        let st = pool_status(
            &Default::default(),
            true,
            true,
            None,
            Some("disk gone"),
            0,
            None,
            &t,
        );
        assert_eq!(st.phase, Some(PoolPhase::Failed));
        assert!(st.conditions[0].message.contains("disk gone"));
    }

    #[test]
    fn unknown_node_is_pending_not_ready() {
        let t = now();
        let st = pool_status(&Default::default(), false, false, None, None, 0, None, &t);
        assert_eq!(st.phase, Some(PoolPhase::Pending));
        assert_eq!(st.conditions[0].reason, "NodeNotFound");
        assert_eq!(st.conditions[0].status, "False");
    }

    #[test]
    fn member_words() {
        assert_eq!(member_state("ONLINE"), MemberState::Online);
        assert_eq!(member_state("faulted"), MemberState::Faulted);
        assert_eq!(member_state("missing"), MemberState::Missing);
        assert_eq!(member_state("?"), MemberState::Unknown);
    }
}
