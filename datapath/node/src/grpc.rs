//! The node API (`ferrite.node.v1.Node`, see `api/proto/ferrite/node/v1/node.proto`) over
//! gRPC: a thin translation between protobuf messages and [`Storage`], which does the work
//! and decides the error codes ([`NodeError`] has one variant per code).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrite_api::node::v1 as pb;
use ferrite_api::node::v1::node_server::{Node, NodeServer};
use ferrite_block::mirror::{RebuildKind, RebuildProgress, ReplicaState};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{ExportSpec, PoolSpec, ReplicaSpec, VolumeReplicaSpec, VolumeSpec};
use crate::storage::{NodeError, Pool, Replica, Storage, VolumeState, VolumeView};

/// Starts serving the node API on `addr` until `shutdown` completes; returns the bound
/// address.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<tonic::transport::ServerTlsConfig>,
    storage: Arc<Storage>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the node API on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the node API address")?;
    let mut builder = tonic::transport::Server::builder().timeout(REQUEST_TIMEOUT);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("the node API's TLS configuration")?;
        info!(%bound, "serving the node API (gRPC, mutual TLS)");
    } else {
        warn!(%bound, "serving the node API WITHOUT authentication (--grpc-insecure)");
    }
    let router = builder.add_service(NodeServer::new(NodeService {
        storage,
        comparing: Default::default(),
    }));
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
        {
            warn!(error = %e, "the node API stopped");
        }
    });
    Ok(bound)
}

/// How long one node API call may run before it is answered DEADLINE_EXCEEDED (a volume
/// comparison reads whole replicas: minutes for large ones).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `Node` service over this node's storage.
pub struct NodeService {
    storage: Arc<Storage>,
    /// Volumes being compared now (one comparison per volume at a time).
    comparing: Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
}

/// Holds a volume's place in [`NodeService::comparing`] until dropped.
struct ComparingGuard(Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>, Uuid);

impl Drop for ComparingGuard {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// The comparison report `Storage::compare` makes, as the node API's message.
fn comparison_msg(v: &serde_json::Value) -> pb::CompareVolumeResponse {
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    pb::CompareVolumeResponse {
        uuid: s(&v["volume"]),
        identical: v["identical"].as_bool().unwrap_or(false),
        pairs: v["pairs"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| pb::ReplicaComparison {
                        a: s(&p["a"]),
                        b: s(&p["b"]),
                        bytes_compared: u(&p["bytes_compared"]),
                        identical: p["identical"].as_bool().unwrap_or(false),
                        differing_bytes: u(&p["differing_bytes"]),
                        differing: p["differing"]
                            .as_array()
                            .map(|ds| {
                                ds.iter()
                                    .map(|d| pb::ByteRange {
                                        start: u(&d[0]),
                                        end: u(&d[1]),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::InvalidArgument(m) => Status::invalid_argument(m),
            NodeError::NotFound(m) => Status::not_found(m),
            NodeError::AlreadyExists(m) => Status::already_exists(m),
            NodeError::ResourceExhausted(m) => Status::resource_exhausted(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::Internal(m) => Status::internal(m),
        }
    }
}

fn uuid(what: &str, s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| Status::invalid_argument(format!("{what} {s:?} is not a UUID")))
}

fn pool_msg(p: &Pool) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        uuid: Uuid::from_bytes(p.raid.uuid()).to_string(),
        disks: p.disks.clone(),
        stripe_size: p.raid.stripe_size(),
        capacity_bytes: p.store.capacity_bytes(),
        used_bytes: p.store.used_bytes(),
        free_bytes: p.store.free_bytes(),
        state: pb::PoolState::Online as i32,
        members: p
            .disks
            .iter()
            .map(|d| pb::PoolMember {
                disk: d.clone(),
                state: "online".into(),
            })
            .collect(),
    }
}

fn replica_msg(r: &Replica) -> pb::Replica {
    let info = r.volume.info();
    pb::Replica {
        uuid: r.uuid.to_string(),
        pool: r.pool.clone(),
        size_bytes: info.size,
        thin: info.thin,
        allocated_bytes: info.allocated_bytes,
        nqn: r.nqn().unwrap_or_default(),
        allowed_hosts: r.allowed_hosts(),
    }
}

fn progress(p: &RebuildProgress) -> pb::RebuildProgress {
    let kind = match p.kind {
        RebuildKind::Full => "full",
        RebuildKind::Partial => "partial",
        RebuildKind::Resync => "resync",
    };
    pb::RebuildProgress {
        kind: kind.into(),
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        bytes_per_sec: p.bytes_per_sec,
    }
}

/// The API's name for a replica state.
pub fn replica_state(s: ReplicaState) -> pb::ReplicaState {
    match s {
        ReplicaState::Healthy => pb::ReplicaState::Healthy,
        ReplicaState::Faulted => pb::ReplicaState::Faulted,
        ReplicaState::Rebuilding => pb::ReplicaState::Rebuilding,
        ReplicaState::Stale => pb::ReplicaState::Stale,
        ReplicaState::Connecting => pb::ReplicaState::Connecting,
    }
}

/// The API's name for a volume state.
pub fn volume_state(v: &VolumeView) -> pb::VolumeState {
    match v.state() {
        VolumeState::Pending => pb::VolumeState::Pending,
        VolumeState::Online => pb::VolumeState::Online,
        VolumeState::Degraded => pb::VolumeState::Degraded,
        VolumeState::Rebuilding => pb::VolumeState::Rebuilding,
        VolumeState::Faulted => pb::VolumeState::Faulted,
    }
}

fn volume_msg(v: &VolumeView, endpoints: &[SocketAddr]) -> pb::Volume {
    let replicas = match &v.status {
        Some(st) => st
            .replicas
            .iter()
            .map(|r| pb::VolumeReplicaStatus {
                uuid: Uuid::from_bytes(r.id).to_string(),
                description: r.description.clone(),
                state: replica_state(r.state) as i32,
                in_sync: r.in_sync,
                rebuild: r.rebuild.as_ref().map(progress),
                last_rebuild: r.last_rebuild.as_ref().map(progress),
                last_error: r.last_error.clone().unwrap_or_default(),
            })
            .collect(),
        None => v
            .spec
            .replicas
            .iter()
            .map(|r| pb::VolumeReplicaStatus {
                uuid: r.uuid.clone(),
                description: r
                    .address
                    .map(|a| format!("remote at {a}"))
                    .unwrap_or_else(|| "local".into()),
                state: pb::ReplicaState::Connecting as i32,
                ..Default::default()
            })
            .collect(),
    };
    pb::Volume {
        uuid: v.uuid.to_string(),
        nqn: v.nqn.clone(),
        size_bytes: v.status.as_ref().map(|s| s.size).unwrap_or(0),
        state: volume_state(v) as i32,
        generation: v.status.as_ref().map(|s| s.generation).unwrap_or(0),
        replicas,
        allowed_hosts: v.spec.allow_hosts.clone(),
        endpoints: endpoints.iter().map(|a| a.to_string()).collect(),
        message: v.pending.clone().unwrap_or_default(),
    }
}

fn volume_replica(r: pb::VolumeReplica) -> Result<VolumeReplicaSpec, Status> {
    uuid("replica uuid", &r.uuid)?;
    let address = if r.address.is_empty() {
        None
    } else {
        Some(r.address.parse::<SocketAddr>().map_err(|_| {
            Status::invalid_argument(format!(
                "replica {}: address {:?} is not IP:PORT",
                r.uuid, r.address
            ))
        })?)
    };
    Ok(VolumeReplicaSpec {
        uuid: r.uuid,
        address,
        nqn: (!r.nqn.is_empty()).then_some(r.nqn),
    })
}

impl NodeService {
    fn volume(&self, v: VolumeView) -> pb::Volume {
        volume_msg(&v, &self.storage.target.listen_addrs())
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn get_node_info(&self, _: Request<pb::GetNodeInfoRequest>) -> Reply<pb::NodeInfo> {
        Ok(Response::new(pb::NodeInfo {
            name: self.storage.node.clone(),
            host_nqn: self.storage.host.hostnqn.clone(),
            nvme_endpoints: self
                .storage
                .target
                .listen_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn create_pool(&self, req: Request<pb::CreatePoolRequest>) -> Reply<pb::Pool> {
        let r = req.into_inner();
        let spec = PoolSpec {
            name: r.name,
            disks: r.disks,
            stripe_size: (r.stripe_size != 0).then(|| r.stripe_size.to_string()),
            block_size: (r.block_size != 0).then_some(r.block_size),
        };
        let pool = self.storage.create_pool(spec).await?;
        Ok(Response::new(pool_msg(&pool)))
    }

    async fn destroy_pool(
        &self,
        req: Request<pb::DestroyPoolRequest>,
    ) -> Reply<pb::DestroyPoolResponse> {
        self.storage.destroy_pool(&req.into_inner().name).await?;
        Ok(Response::new(pb::DestroyPoolResponse {}))
    }

    async fn list_pools(&self, _: Request<pb::ListPoolsRequest>) -> Reply<pb::ListPoolsResponse> {
        Ok(Response::new(pb::ListPoolsResponse {
            pools: self.storage.pools().iter().map(|p| pool_msg(p)).collect(),
        }))
    }

    async fn create_replica(&self, req: Request<pb::CreateReplicaRequest>) -> Reply<pb::Replica> {
        let r = req.into_inner();
        uuid("replica uuid", &r.uuid)?;
        let export = (!r.allowed_hosts.is_empty()).then_some(ExportSpec {
            nqn: None,
            allow_hosts: r.allowed_hosts,
            allow_any_host: false,
        });
        let spec = ReplicaSpec {
            uuid: r.uuid,
            pool: r.pool,
            size: r.size_bytes.to_string(),
            thin: r.thin,
            export,
        };
        let replica = self.storage.create_replica(spec).await?;
        Ok(Response::new(replica_msg(&replica)))
    }

    async fn destroy_replica(
        &self,
        req: Request<pb::DestroyReplicaRequest>,
    ) -> Reply<pb::DestroyReplicaResponse> {
        self.storage
            .destroy_replica(uuid("replica uuid", &req.into_inner().uuid)?)
            .await?;
        Ok(Response::new(pb::DestroyReplicaResponse {}))
    }

    async fn resize_replica(&self, req: Request<pb::ResizeReplicaRequest>) -> Reply<pb::Replica> {
        let r = req.into_inner();
        let replica = self
            .storage
            .resize_replica(uuid("replica uuid", &r.uuid)?, r.size_bytes)
            .await?;
        Ok(Response::new(replica_msg(&replica)))
    }

    async fn export_replica(&self, req: Request<pb::ExportReplicaRequest>) -> Reply<pb::Replica> {
        let r = req.into_inner();
        let replica = self
            .storage
            .export_replica(uuid("replica uuid", &r.uuid)?, r.allowed_hosts)
            .await?;
        Ok(Response::new(replica_msg(&replica)))
    }

    async fn list_replicas(
        &self,
        _: Request<pb::ListReplicasRequest>,
    ) -> Reply<pb::ListReplicasResponse> {
        Ok(Response::new(pb::ListReplicasResponse {
            replicas: self
                .storage
                .replicas()
                .iter()
                .map(|r| replica_msg(r))
                .collect(),
        }))
    }

    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> Reply<pb::Volume> {
        let r = req.into_inner();
        uuid("volume uuid", &r.uuid)?;
        let spec = VolumeSpec {
            uuid: r.uuid,
            nqn: (!r.nqn.is_empty()).then_some(r.nqn),
            allow_hosts: r.allowed_hosts,
            allow_any_host: false,
            replicas: r
                .replicas
                .into_iter()
                .map(volume_replica)
                .collect::<Result<_, _>>()?,
        };
        let v = self.storage.create_volume(spec).await?;
        Ok(Response::new(self.volume(v)))
    }

    async fn destroy_volume(
        &self,
        req: Request<pb::DestroyVolumeRequest>,
    ) -> Reply<pb::DestroyVolumeResponse> {
        self.storage
            .destroy_volume(uuid("volume uuid", &req.into_inner().uuid)?)
            .await?;
        Ok(Response::new(pb::DestroyVolumeResponse {}))
    }

    async fn add_volume_replica(
        &self,
        req: Request<pb::AddVolumeReplicaRequest>,
    ) -> Reply<pb::Volume> {
        let r = req.into_inner();
        let id = uuid("volume uuid", &r.uuid)?;
        let replica = volume_replica(
            r.replica
                .ok_or_else(|| Status::invalid_argument("replica is required"))?,
        )?;
        Ok(Response::new(self.volume(
            self.storage.add_volume_replica(id, replica).await?,
        )))
    }

    async fn remove_volume_replica(
        &self,
        req: Request<pb::RemoveVolumeReplicaRequest>,
    ) -> Reply<pb::Volume> {
        let r = req.into_inner();
        let v = self
            .storage
            .remove_volume_replica(
                uuid("volume uuid", &r.uuid)?,
                uuid("replica uuid", &r.replica_uuid)?,
            )
            .await?;
        Ok(Response::new(self.volume(v)))
    }

    async fn set_volume_hosts(&self, req: Request<pb::SetVolumeHostsRequest>) -> Reply<pb::Volume> {
        let r = req.into_inner();
        let v = self
            .storage
            .set_volume_hosts(uuid("volume uuid", &r.uuid)?, r.allowed_hosts)
            .await?;
        Ok(Response::new(self.volume(v)))
    }

    async fn resize_volume(&self, req: Request<pb::ResizeVolumeRequest>) -> Reply<pb::Volume> {
        let r = req.into_inner();
        let v = self
            .storage
            .resize_volume(uuid("volume uuid", &r.uuid)?, r.size_bytes)
            .await?;
        Ok(Response::new(self.volume(v)))
    }

    async fn get_volume(&self, req: Request<pb::GetVolumeRequest>) -> Reply<pb::Volume> {
        let id = uuid("volume uuid", &req.into_inner().uuid)?;
        let v = self
            .storage
            .volume_view(id)
            .ok_or_else(|| Status::not_found(format!("volume {id} is not served by this node")))?;
        Ok(Response::new(self.volume(v)))
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Reply<pb::ListVolumesResponse> {
        let volumes = self
            .storage
            .volume_records()
            .iter()
            .filter_map(|r| self.storage.volume_view(r.uuid))
            .map(|v| self.volume(v))
            .collect();
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn compare_volume(
        &self,
        req: Request<pb::CompareVolumeRequest>,
    ) -> Reply<pb::CompareVolumeResponse> {
        let id = uuid("volume uuid", &req.into_inner().uuid)?;
        if self.storage.volume_view(id).is_none() {
            return Err(Status::not_found(format!("volume {id} is not served here")));
        }
        let _guard = {
            let mut running = self.comparing.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(id) {
                return Err(Status::aborted(format!(
                    "volume {id} is being compared already; retry when it is done"
                )));
            }
            ComparingGuard(self.comparing.clone(), id)
        };
        info!(volume = %id, "comparing replicas");
        let report = self
            .storage
            .compare(id)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        Ok(Response::new(comparison_msg(&report)))
    }
}
