//! The CSI Node service: request validation, per-volume serialisation, and the blocking
//! work (sysfs, mount, mkfs) moved off the async executor.

use std::sync::Arc;

use ferrite_api::csi::v1::node_server::Node;
use ferrite_api::csi::v1::*;
use tonic::{Request, Response, Status};

use crate::config::{Plugin, TOPOLOGY_NODE_KEY};
use crate::error::Result;
use crate::locks::VolumeLocks;
use crate::publish::{self, PublishArgs};
use crate::stage::{self, StageArgs};
use crate::volume::{VolumeTarget, check_path, check_volume_id, parse_capability, require};
use crate::{expand, stats};

pub struct NodeService {
    plugin: Arc<Plugin>,
    locks: VolumeLocks,
}

impl NodeService {
    pub fn new(plugin: Arc<Plugin>) -> NodeService {
        NodeService {
            plugin,
            locks: VolumeLocks::default(),
        }
    }

    /// Runs `f` on the blocking pool while holding the lock of `volume_id`.
    async fn locked<T: Send + 'static>(
        &self,
        rpc: &'static str,
        volume_id: &str,
        f: impl FnOnce(&Plugin) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let _g = self
            .locks
            .lock(volume_id, self.plugin.cfg.lock_timeout)
            .await?;
        let p = self.plugin.clone();
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| Status::internal(format!("{rpc} worker failed: {e}")))?;
        match &r {
            Ok(_) => tracing::info!(
                rpc,
                volume = volume_id,
                ms = started.elapsed().as_millis() as u64,
                "ok"
            ),
            Err(e) => {
                tracing::warn!(rpc, volume = volume_id, code = ?e.code(), error = %e, "failed")
            }
        }
        r.map_err(Status::from)
    }
}

/// NOT_FOUND unless `volume_id` is staged on this node (its record exists): the CSI spec's
/// "volume does not exist" for calls on a staged or published volume.
fn check_staged(p: &Plugin, volume_id: &str) -> Result<()> {
    match p.state.load(volume_id)? {
        Some(_) => Ok(()),
        None => Err(crate::error::NodeError::NotFound(format!(
            "volume {volume_id} is not staged on this node"
        ))),
    }
}

fn rpc_cap(t: node_service_capability::rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let staging_path = check_path("staging_target_path", &r.staging_target_path)?;
        let (access, read_only) = parse_capability(r.volume_capability.as_ref())?;
        let target = VolumeTarget::from_contexts(
            &r.volume_context,
            &r.publish_context,
            &self.plugin.cfg.connect,
        )?;
        let args = StageArgs {
            volume_id: r.volume_id.clone(),
            staging_path,
            target,
            access,
            read_only,
        };
        self.locked("NodeStageVolume", &r.volume_id, move |p| {
            stage::stage(p, &args)
        })
        .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let staging_path = check_path("staging_target_path", &r.staging_target_path)?;
        let id = r.volume_id.clone();
        self.locked("NodeUnstageVolume", &r.volume_id, move |p| {
            stage::unstage(p, &id, &staging_path)
        })
        .await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let staging_path = check_path("staging_target_path", &r.staging_target_path)?;
        let target_path = check_path("target_path", &r.target_path)?;
        let (access, mode_read_only) = parse_capability(r.volume_capability.as_ref())?;
        let args = PublishArgs {
            volume_id: r.volume_id.clone(),
            staging_path,
            target_path,
            access,
            read_only: r.readonly || mode_read_only,
        };
        self.locked("NodePublishVolume", &r.volume_id, move |p| {
            publish::publish(p, &args)
        })
        .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let target_path = check_path("target_path", &r.target_path)?;
        let id = r.volume_id.clone();
        self.locked("NodeUnpublishVolume", &r.volume_id, move |p| {
            publish::unpublish(p, &id, &target_path)
        })
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = req.into_inner();
        // The spec's order: required fields, then the volume's existence, then the rest.
        check_volume_id(&r.volume_id)?;
        require("volume_path", &r.volume_path)?;
        let id = r.volume_id.clone();
        // Stats only read: no volume lock, so that a slow stage never blocks monitoring.
        let p = self.plugin.clone();
        let s = tokio::task::spawn_blocking(move || {
            check_staged(&p, &id)?;
            let path = check_path("volume_path", &r.volume_path)?;
            stats::volume_stats(&p, &id, &path)
        })
        .await
        .map_err(|e| Status::internal(format!("NodeGetVolumeStats worker failed: {e}")))??;
        let mut usage = vec![VolumeUsage {
            available: s.bytes.available,
            total: s.bytes.total,
            used: s.bytes.used,
            unit: volume_usage::Unit::Bytes as i32,
        }];
        if let Some(i) = s.inodes {
            usage.push(VolumeUsage {
                available: i.available,
                total: i.total,
                used: i.used,
                unit: volume_usage::Unit::Inodes as i32,
            });
        }
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(VolumeCondition {
                abnormal: s.abnormal,
                message: s.message,
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        require("volume_path", &r.volume_path)?;
        let required = r
            .capacity_range
            .as_ref()
            .map_or(0, |c| c.required_bytes.max(0) as u64);
        let range = r.capacity_range;
        let id = r.volume_id.clone();
        let volume_path = r.volume_path.clone();
        let bytes = self
            .locked("NodeExpandVolume", &r.volume_id, move |p| {
                check_staged(p, &id)?;
                let path = check_path("volume_path", &volume_path)?;
                if let Some(c) = range
                    && c.limit_bytes > 0
                    && c.required_bytes > c.limit_bytes
                {
                    return Err(crate::error::NodeError::OutOfRange(format!(
                        "required_bytes {} is more than limit_bytes {}",
                        c.required_bytes, c.limit_bytes
                    )));
                }
                expand::expand(p, &id, &path, required)
            })
            .await?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: bytes as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc_cap(Type::StageUnstageVolume),
                rpc_cap(Type::GetVolumeStats),
                rpc_cap(Type::ExpandVolume),
                rpc_cap(Type::VolumeCondition),
                rpc_cap(Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let cfg = &self.plugin.cfg;
        let mut segments: std::collections::HashMap<String, String> = cfg
            .topology
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        segments.insert(TOPOLOGY_NODE_KEY.to_string(), cfg.node_name.clone());
        Ok(Response::new(NodeGetInfoResponse {
            node_id: cfg.node_id.clone(),
            max_volumes_per_node: cfg.max_volumes,
            accessible_topology: Some(Topology { segments }),
        }))
    }
}
