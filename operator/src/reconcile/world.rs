//! A snapshot of the cluster as the decisions see it: FerriteNodes, StoragePools and Volumes
//! turned into [`NodeView`]s, with each pool's provisioned bytes summed from the volumes'
//! placed replicas. Each listing also refreshes the metrics' Volume and StoragePool counts.

use std::collections::BTreeMap;

use kube::Api;
use kube::api::ListParams;

use super::{Context, Error, u64_bytes};
use crate::crd::{FerriteNode, NodePhase, PoolPhase, StoragePool, Volume};
use crate::decisions::model::replica_bytes;
use crate::decisions::{NodeView, PoolView};

/// Everything listed at one moment.
pub struct World {
    /// FerriteNodes by name.
    pub nodes: BTreeMap<String, FerriteNode>,
    /// StoragePools by name.
    pub pools: BTreeMap<String, StoragePool>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, Volume>,
}

impl World {
    /// Lists the three kinds and counts pools and volumes in the metrics.
    pub async fn load(ctx: &Context) -> Result<World, Error> {
        let world = World::fetch(&ctx.client).await?;
        ctx.metrics.observe_pools(
            world
                .pools
                .iter()
                .map(|(name, p)| (name.as_str(), p.status.as_ref().and_then(|s| s.phase))),
        );
        ctx.metrics.observe_volumes(
            world
                .volumes
                .iter()
                .map(|(name, v)| (name.as_str(), v.status.as_ref().and_then(|s| s.state))),
        );
        Ok(world)
    }

    /// Lists the three kinds.
    pub async fn fetch(client: &kube::Client) -> Result<World, kube::Error> {
        let lp = ListParams::default();
        let nodes = Api::<FerriteNode>::all(client.clone()).list(&lp).await?;
        let pools = Api::<StoragePool>::all(client.clone()).list(&lp).await?;
        let volumes = Api::<Volume>::all(client.clone()).list(&lp).await?;
        Ok(World {
            nodes: nodes
                .items
                .into_iter()
                .map(|o| (name_of(&o.metadata), o))
                .collect(),
            pools: pools
                .items
                .into_iter()
                .map(|o| (name_of(&o.metadata), o))
                .collect(),
            volumes: volumes
                .items
                .into_iter()
                .map(|o| (name_of(&o.metadata), o))
                .collect(),
        })
    }

    /// Bytes committed to placed replicas, per StoragePool.
    pub fn provisioned(&self) -> BTreeMap<String, u64> {
        provisioned(self.volumes.values())
    }

    /// The decisions' view of every node.
    pub fn node_views(&self) -> Vec<NodeView> {
        let provisioned = self.provisioned();
        let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
        for v in self.volumes.values() {
            if let Some(t) = v.status.as_ref().and_then(|s| s.target_node.as_deref()) {
                *targets.entry(t).or_default() += 1;
            }
        }
        self.nodes
            .iter()
            .map(|(name, n)| NodeView {
                name: name.clone(),
                labels: n.metadata.labels.clone().unwrap_or_default(),
                schedulable: n.spec.schedulable && n.metadata.deletion_timestamp.is_none(),
                reachable: n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Ready),
                pools: self
                    .pools
                    .iter()
                    .filter(|(_, p)| p.spec.node == *name)
                    .map(|(pname, p)| {
                        let st = p.status.clone().unwrap_or_default();
                        PoolView {
                            name: pname.clone(),
                            online: st.phase == Some(PoolPhase::Online)
                                && p.metadata.deletion_timestamp.is_none(),
                            capacity_bytes: u64_bytes(st.capacity_bytes),
                            free_bytes: u64_bytes(st.free_bytes),
                            provisioned_bytes: provisioned.get(pname).copied().unwrap_or(0),
                        }
                    })
                    .collect(),
                targets: targets.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// Name of an object (empty if unset).
pub fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Bytes committed to the replicas placed in each pool by `volumes`.
pub fn provisioned<'a>(volumes: impl Iterator<Item = &'a Volume>) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for v in volumes {
        let size = u64::try_from(v.spec.size_bytes)
            .ok()
            .and_then(replica_bytes)
            .unwrap_or(0);
        for r in v.status.iter().flat_map(|s| s.replicas.iter()) {
            *out.entry(r.pool.clone()).or_default() += size;
        }
    }
    out
}

/// Names of the volumes with a replica in `pool`.
pub fn volumes_using<'a>(volumes: impl Iterator<Item = &'a Volume>, pool: &str) -> Vec<String> {
    volumes
        .filter(|v| {
            v.status
                .iter()
                .flat_map(|s| s.replicas.iter())
                .any(|r| r.pool == pool)
        })
        .map(|v| name_of(&v.metadata))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ReplicaState, ReplicaStatus, VolumeSpec, VolumeStatus};

    fn vol(name: &str, size: i64, pools: &[&str]) -> Volume {
        let mut v = Volume::new(
            name,
            VolumeSpec {
                size_bytes: size,
                replicas: 2,
                thin: true,
                topology: None,
                fs_type: None,
                allowed_hosts: Vec::new(),
            },
        );
        v.status = Some(VolumeStatus {
            replicas: pools
                .iter()
                .enumerate()
                .map(|(i, p)| ReplicaStatus {
                    uuid: format!("u{i}"),
                    node: format!("n{i}"),
                    pool: p.to_string(),
                    state: ReplicaState::Online,
                    last_transition_time: None,
                    rebuild_progress: None,
                })
                .collect(),
            ..Default::default()
        });
        v
    }

    #[test]
    fn provisioned_sums_replica_sizes() {
        let vols = [vol("a", 4096, &["p1", "p2"]), vol("b", 1, &["p1"])];
        let p = provisioned(vols.iter());
        assert_eq!(p["p1"], 2 * (4096 + (1 << 20)));
        assert_eq!(p["p2"], 4096 + (1 << 20));
        assert_eq!(volumes_using(vols.iter(), "p1"), vec!["a", "b"]);
        assert!(volumes_using(vols.iter(), "p3").is_empty());
    }
}
