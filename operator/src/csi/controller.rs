//! The CSI Identity and Controller services. Volumes are `Volume` objects (the reconcilers
//! do the work); publish/unpublish set the target's allowed hosts through the node API.
//!
//! Every RPC checks in the CSI spec's order: required fields (INVALID_ARGUMENT), then the
//! existence of the objects named (NOT_FOUND), then everything else.
//!
//! - `CreateVolume`: idempotent by name (Volume named by [`volume_name`], with the CSI name
//!   in an annotation; same name with another size or replica count: ALREADY_EXISTS). The
//!   request's topology restricts nothing (a Ferrite volume is reachable from every node):
//!   its first preferred node is recorded as a locality hint (a replica and the target go
//!   there when it has room); only the StorageClass's `allowedTopologies` (found through
//!   the `--extra-create-metadata` PVC parameters) and the `allowedNodes` / `nodeSelector`
//!   parameters restrict where replicas go. Waits up to `wait` for the Volume to be Ready;
//!   still not: UNAVAILABLE (the provisioner retries). Unplaceable: the Volume is deleted
//!   again (nothing was created on a node) and the answer is RESOURCE_EXHAUSTED with
//!   placement's reason, so a failed CreateVolume leaves nothing behind. The volume context
//!   holds `nqn`, `targets` and `nsid`.
//! - `DeleteVolume`: deletes the Volume and waits for its finalizer (target and replicas
//!   destroyed); still there after `wait`: UNAVAILABLE.
//! - `ControllerPublishVolume` / `Unpublish`: adds or removes `node_id` (the node's host NQN;
//!   anything else is an unknown node, NOT_FOUND; published to another node already:
//!   FAILED_PRECONDITION, every access mode is single-node)
//!   in the Volume's `spec.allowedHosts` and applies the list with `SetVolumeHosts` on the
//!   target node (the reconciler keeps enforcing it, so a target created again gets it
//!   back); the publish context repeats the location.
//! - `ControllerExpandVolume`: refuses (OUT_OF_RANGE) a size a replica's pool has no room for
//!   (placement's rules), else raises the Volume's `spec.sizeBytes` (never lowers it) and
//!   waits up to `wait` for the target to serve the new size (the reconciler grows the
//!   replicas, then the mirror, online; hosts get a namespace change event). Not there yet:
//!   UNAVAILABLE with the `Resized` condition's message (the resizer retries). A filesystem
//!   volume needs node expansion (the CSI node plugin grows the filesystem); a block one not.
//!   Advertised as EXPAND_VOLUME and plugin capability VolumeExpansion ONLINE.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_api::csi::v1 as csi;
use ferrite_api::csi::v1::controller_server::Controller;
use ferrite_api::csi::v1::identity_server::Identity;
use ferrite_api::node::v1 as node;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tonic::{Request, Response, Status};

use super::params::{
    CSI_NAME_ANNOTATION, PARAM_PVC_NAME, PARAM_PVC_NAMESPACE, PREFERRED_TARGET_ANNOTATION,
    check_capabilities, class_terms, preferred_node, size_for, volume_name, volume_spec,
};
use crate::conditions::{RESIZED, SCHEDULED};
use crate::crd::{FerriteNode, PoolPhase, ReplicaState, StoragePool, Volume, VolumeState};
use crate::decisions::PoolView;
use crate::decisions::growth::check_room;
use crate::decisions::model::replica_bytes;
use crate::decisions::placement::PlacementPolicy;
use crate::node_api::NodeClients;
use crate::reconcile::world::World;

/// The controller's state.
pub struct ControllerService {
    client: Client,
    /// Clients of the nodes' API (set TLS with [`NodeClients::new`]).
    pub nodes: NodeClients,
    driver_name: String,
    /// How long CreateVolume / DeleteVolume wait before asking the sidecar to retry.
    pub wait: Duration,
}

impl ControllerService {
    /// A controller for `driver_name` using `client`.
    pub fn new(client: Client, driver_name: &str) -> Arc<ControllerService> {
        Arc::new(ControllerService {
            client,
            nodes: NodeClients::default(),
            driver_name: driver_name.into(),
            wait: Duration::from_secs(8),
        })
    }

    fn volumes(&self) -> Api<Volume> {
        Api::all(self.client.clone())
    }
}

/// Identity and Controller as one tonic service pair sharing the state.
#[derive(Clone)]
pub struct Csi(pub Arc<ControllerService>);

fn kube_err(e: kube::Error) -> Status {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Status::not_found(e.to_string()),
        kube::Error::Api(s) if s.code == 409 => Status::aborted(e.to_string()),
        _ => Status::unavailable(format!("Kubernetes API: {e}")),
    }
}

/// Whether hosts can do I/O on the volume.
fn ready(v: &Volume) -> bool {
    matches!(
        v.status.as_ref().and_then(|s| s.state),
        Some(VolumeState::Online | VolumeState::Degraded | VolumeState::Rebuilding)
    )
}

/// The volume/publish context: `nqn`, `targets`, `nsid`.
pub fn context(v: &Volume) -> Option<HashMap<String, String>> {
    let st = v.status.as_ref()?;
    let nqn = st.nqn.clone()?;
    if st.endpoints.is_empty() {
        return None;
    }
    let targets = st
        .endpoints
        .iter()
        .map(|e| {
            if e.address.contains(':') {
                format!("[{}]:{}", e.address, e.port)
            } else {
                format!("{}:{}", e.address, e.port)
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    Some(HashMap::from([
        (ferrite_api::context::NQN.to_string(), nqn),
        (ferrite_api::context::TARGETS.to_string(), targets),
        (ferrite_api::context::NSID.to_string(), "1".to_string()),
    ]))
}

fn csi_volume(v: &Volume) -> csi::Volume {
    csi::Volume {
        capacity_bytes: v.spec.size_bytes,
        volume_id: v.metadata.name.clone().unwrap_or_default(),
        volume_context: context(v).unwrap_or_default(),
        content_source: None,
        accessible_topology: vec![],
    }
}

#[tonic::async_trait]
impl Identity for Csi {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.0.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: [("component".to_string(), "controller".to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::{Service, Type, service};
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![
                svc(service::Type::ControllerService),
                svc(service::Type::VolumeAccessibilityConstraints),
                csi::PluginCapability {
                    r#type: Some(Type::VolumeExpansion(
                        csi::plugin_capability::VolumeExpansion {
                            r#type: csi::plugin_capability::volume_expansion::Type::Online as i32,
                        },
                    )),
                },
            ],
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        self.0.client.apiserver_version().await.map_err(kube_err)?;
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

impl Csi {
    /// The target node's API client and the volume's uid.
    async fn target(
        &self,
        v: &Volume,
    ) -> Result<
        (
            node::node_client::NodeClient<tonic::transport::Channel>,
            String,
        ),
        Status,
    > {
        let st = v.status.clone().unwrap_or_default();
        let target = st
            .target_node
            .ok_or_else(|| Status::unavailable("volume has no target node yet"))?;
        let n = Api::<FerriteNode>::all(self.0.client.clone())
            .get(&target)
            .await
            .map_err(kube_err)?;
        let c = self.0.nodes.client(&n.spec.api_endpoint)?;
        let uid = v.metadata.uid.clone().unwrap_or_default();
        Ok((c, uid))
    }

    /// Adds (publish) or removes (unpublish) `host` in the Volume's `spec.allowedHosts`,
    /// the record the reconciler enforces on the target, then applies the list to the
    /// target now. The spec update is guarded by the resourceVersion and retried on a
    /// conflict. An unpublish whose target does not answer succeeds: the reconciler applies
    /// the list when the target is back.
    /// Refuses (OUT_OF_RANGE, nothing changed) growth to `size` bytes that a pool holding
    /// one of the volume's replicas has no room for.
    async fn check_room_to_grow(&self, v: &Volume, size: u64) -> Result<(), Status> {
        let old = u64::try_from(v.spec.size_bytes).unwrap_or(0);
        let (Some(new_r), Some(old_r)) = (replica_bytes(size), replica_bytes(old)) else {
            return Err(Status::out_of_range(format!("{size} bytes is too large")));
        };
        let world = World::fetch(&self.0.client).await.map_err(kube_err)?;
        let views = world.node_views();
        let status = v.status.clone().unwrap_or_default();
        let pools: Vec<&PoolView> = status
            .replicas
            .iter()
            .filter(|r| r.state != ReplicaState::Faulted)
            .filter_map(|r| {
                views
                    .iter()
                    .find(|n| n.name == r.node)?
                    .pools
                    .iter()
                    .find(|p| p.name == r.pool)
            })
            .collect();
        check_room(
            new_r.saturating_sub(old_r),
            v.spec.thin,
            &pools,
            &PlacementPolicy::default(),
        )
        .map_err(|m| {
            Status::out_of_range(format!(
                "cannot grow volume {} to {size} bytes: {m}",
                v.metadata.name.as_deref().unwrap_or_default()
            ))
        })
    }

    /// The `allowedTopologies` of the StorageClass of the PVC named by external-provisioner's
    /// `--extra-create-metadata` parameters; none without them or without a class.
    async fn class_terms(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<Vec<crate::crd::volume::TopologyTerm>, Status> {
        let (Some(pvc), Some(ns)) = (params.get(PARAM_PVC_NAME), params.get(PARAM_PVC_NAMESPACE))
        else {
            return Ok(Vec::new());
        };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.0.client.clone(), ns);
        let Some(claim) = claims.get_opt(pvc).await.map_err(kube_err)? else {
            return Err(Status::failed_precondition(format!(
                "PersistentVolumeClaim {ns}/{pvc} does not exist (deleted while provisioning)"
            )));
        };
        let Some(class) = claim.spec.and_then(|s| s.storage_class_name) else {
            return Ok(Vec::new());
        };
        let sc = Api::<StorageClass>::all(self.0.client.clone())
            .get_opt(&class)
            .await
            .map_err(kube_err)?
            .ok_or_else(|| {
                Status::failed_precondition(format!("StorageClass {class} does not exist"))
            })?;
        Ok(class_terms(sc.allowed_topologies.as_deref()))
    }

    /// Deletes a Volume that could not be placed and waits (bounded) until its finalizer has
    /// run, so that CreateVolume leaves nothing behind when it fails.
    async fn withdraw(&self, v: &Volume) -> Result<(), Status> {
        let api = self.0.volumes();
        let name = v.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: v.metadata.uid.clone().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
            Err(e) => return Err(kube_err(e)),
        }
        tracing::info!(volume = %name, "unplaceable Volume withdrawn");
        let deadline = Instant::now() + self.0.wait;
        while let Some(left) = api.get_opt(&name).await.map_err(kube_err)? {
            if left.metadata.uid != v.metadata.uid {
                break;
            }
            if Instant::now() >= deadline {
                // The finalizer has nothing to destroy (no replica was placed); it runs on
                // the next pass and a retried CreateVolume waits for it (ABORTED).
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn set_host(&self, v: &Volume, host: &str, add: bool) -> Result<(), Status> {
        let api = self.0.volumes();
        let name = v.metadata.name.clone().unwrap_or_default();
        let mut v = v.clone();
        let mut attempts = 0;
        loop {
            let mut hosts = v.spec.allowed_hosts.clone();
            if add == hosts.iter().any(|h| h == host) {
                break;
            }
            if add {
                hosts.push(host.to_string());
            } else {
                hosts.retain(|h| h != host);
            }
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": v.metadata.resource_version },
                "spec": { "allowedHosts": hosts },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => v = updated,
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => {
                    attempts += 1;
                    v = api.get(&name).await.map_err(kube_err)?;
                }
                Err(e) => return Err(kube_err(e)),
            }
        }
        let applied = async {
            let (mut c, uid) = self.target(&v).await?;
            c.set_volume_hosts(node::SetVolumeHostsRequest {
                uuid: uid,
                allowed_hosts: v.spec.allowed_hosts.clone(),
            })
            .await
            .map_err(|s| Status::unavailable(format!("SetVolumeHosts: {}", s.message())))
        }
        .await;
        match applied {
            Ok(_) => Ok(()),
            Err(s) if !add => {
                tracing::warn!(volume = %name, %host, error = %s.message(), "target not updated; the reconciler will");
                Ok(())
            }
            Err(s) => Err(s),
        }
    }
}

#[tonic::async_trait]
impl Controller for Csi {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name missing"));
        }
        check_capabilities(&req.volume_capabilities).map_err(Status::invalid_argument)?;
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume content sources (clones, snapshots) are not supported",
            ));
        }
        let size = size_for(req.capacity_range.as_ref())?;
        let class = self.class_terms(&req.parameters).await?;
        let spec = volume_spec(size, &req.parameters, &class)?;
        let name = volume_name(&req.name);
        let api = self.0.volumes();
        match api.get_opt(&name).await.map_err(kube_err)? {
            Some(v) if v.metadata.deletion_timestamp.is_some() => {
                return Err(Status::aborted(format!(
                    "volume {name} is being deleted (an earlier attempt failed); retry"
                )));
            }
            Some(v) => {
                let same_name = v
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CSI_NAME_ANNOTATION))
                    .is_none_or(|n| *n == req.name);
                if !same_name
                    || v.spec.size_bytes != spec.size_bytes
                    || v.spec.replicas != spec.replicas
                {
                    return Err(Status::already_exists(format!(
                        "volume {name} exists with another name, size or replica count"
                    )));
                }
            }
            None => {
                let v = Volume {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        annotations: Some(
                            [(CSI_NAME_ANNOTATION.to_string(), req.name.clone())]
                                .into_iter()
                                .chain(
                                    preferred_node(req.accessibility_requirements.as_ref())
                                        .map(|n| (PREFERRED_TARGET_ANNOTATION.to_string(), n)),
                                )
                                .collect(),
                        ),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                };
                match api.create(&PostParams::default(), &v).await {
                    Ok(_) => tracing::info!(volume = %name, csi_name = %req.name, "Volume created"),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(kube_err(e)),
                }
            }
        }
        let deadline = Instant::now() + self.0.wait;
        loop {
            let v = api.get(&name).await.map_err(kube_err)?;
            if ready(&v) && context(&v).is_some() {
                return Ok(Response::new(csi::CreateVolumeResponse {
                    volume: Some(csi_volume(&v)),
                }));
            }
            let st = v.status.clone().unwrap_or_default();
            if let Some(c) = st
                .conditions
                .iter()
                .find(|c| c.type_ == SCHEDULED && c.status == "False")
                && st.replicas.is_empty()
            {
                // Nothing was created on any node: take the Volume back so that no object is
                // left behind to be placed later, owned by no PV.
                let why = c.message.clone();
                self.withdraw(&v).await?;
                return Err(Status::resource_exhausted(format!(
                    "cannot place volume {name}: {why}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "volume {name} is not ready yet (state {:?}); retry",
                    st.state
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let id = req.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("volume_id missing"));
        }
        let api = self.0.volumes();
        match api.delete(&id, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Response::new(csi::DeleteVolumeResponse {}));
            }
            Err(e) => return Err(kube_err(e)),
        }
        let deadline = Instant::now() + self.0.wait;
        while api.get_opt(&id).await.map_err(kube_err)?.is_some() {
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "volume {id} is still being destroyed; retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = req.into_inner();
        // The spec's order: required fields, then existence (volume, node), then the rest.
        if req.volume_id.is_empty() || req.node_id.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and node_id are required",
            ));
        }
        let caps: Vec<csi::VolumeCapability> = req.volume_capability.into_iter().collect();
        if caps.is_empty() {
            return Err(Status::invalid_argument("volume_capability is required"));
        }
        let v = self
            .0
            .volumes()
            .get_opt(&req.volume_id)
            .await
            .map_err(kube_err)?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        ferrite_protocol::nqn::validate(&req.node_id).map_err(|e| {
            Status::not_found(format!("node_id {:?} is not a host NQN: {e}", req.node_id))
        })?;
        check_capabilities(&caps).map_err(Status::invalid_argument)?;
        // Single-node access modes only (see check_capabilities): one node at a time.
        if let Some(other) = v.spec.allowed_hosts.iter().find(|h| **h != req.node_id) {
            return Err(Status::failed_precondition(format!(
                "volume {} is published to {other}; unpublish it there first",
                req.volume_id
            )));
        }
        let ctx = context(&v).ok_or_else(|| Status::unavailable("volume not served yet"))?;
        self.set_host(&v, &req.node_id, true).await?;
        Ok(Response::new(csi::ControllerPublishVolumeResponse {
            publish_context: ctx,
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id missing"));
        }
        let Some(v) = self
            .0
            .volumes()
            .get_opt(&req.volume_id)
            .await
            .map_err(kube_err)?
        else {
            return Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}));
        };
        if !req.node_id.is_empty() {
            self.set_host(&v, &req.node_id, false).await?;
        }
        Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() || req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and volume_capabilities are required",
            ));
        }
        self.0
            .volumes()
            .get_opt(&req.volume_id)
            .await
            .map_err(kube_err)?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        let resp = match check_capabilities(&req.volume_capabilities) {
            Ok(()) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            },
            Err(m) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: m,
            },
        };
        Ok(Response::new(resp))
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let mut vols = self
            .0
            .volumes()
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?
            .items;
        vols.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let start: usize = if req.starting_token.is_empty() {
            0
        } else {
            req.starting_token
                .parse()
                .ok()
                .filter(|s| *s <= vols.len())
                .ok_or_else(|| {
                    Status::aborted(format!("bad starting_token {:?}", req.starting_token))
                })?
        };
        let max = usize::try_from(req.max_entries)
            .ok()
            .filter(|m| *m > 0)
            .unwrap_or(usize::MAX);
        let page: Vec<_> = vols.iter().skip(start).take(max).collect();
        let next = start + page.len();
        Ok(Response::new(csi::ListVolumesResponse {
            entries: page
                .into_iter()
                .map(|v| csi::list_volumes_response::Entry {
                    volume: Some(csi_volume(v)),
                    status: None,
                })
                .collect(),
            next_token: if next < vols.len() {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        let node = req
            .accessible_topology
            .as_ref()
            .and_then(|t| t.segments.get(super::params::TOPOLOGY_NODE_KEY).cloned());
        let pools = Api::<StoragePool>::all(self.0.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?;
        let mut total: i64 = 0;
        let mut largest: i64 = 0;
        for p in pools.items {
            let st = p.status.unwrap_or_default();
            if st.phase != Some(PoolPhase::Online)
                || node.as_ref().is_some_and(|n| *n != p.spec.node)
            {
                continue;
            }
            let free = st.free_bytes.unwrap_or(0).max(0);
            total = total.saturating_add(free);
            largest = largest.max(free);
        }
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: total,
            maximum_volume_size: Some(largest),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| csi::ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::CreateDeleteVolume),
                cap(rpc::Type::PublishUnpublishVolume),
                cap(rpc::Type::ListVolumes),
                cap(rpc::Type::GetCapacity),
                cap(rpc::Type::ExpandVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        _: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn delete_snapshot(
        &self,
        _: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn list_snapshots(
        &self,
        _: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported"))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id missing"));
        }
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range missing"))?;
        let api = self.0.volumes();
        let v = api
            .get_opt(&req.volume_id)
            .await
            .map_err(kube_err)?
            .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        let size = size_for(Some(range))?;
        let wanted = i64::try_from(size)
            .map_err(|_| Status::out_of_range(format!("{size} bytes is too large")))?;
        let block = req.volume_capability.as_ref().is_some_and(|c| {
            matches!(
                c.access_type,
                Some(csi::volume_capability::AccessType::Block(_))
            )
        });
        if v.spec.size_bytes < wanted {
            self.check_room_to_grow(&v, size).await?;
            let patch = serde_json::json!({ "spec": { "sizeBytes": wanted } });
            api.patch(
                &req.volume_id,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kube_err)?;
            tracing::info!(volume = %req.volume_id, bytes = wanted, "Volume expansion requested");
        }
        let deadline = Instant::now() + self.0.wait;
        loop {
            let v = api.get(&req.volume_id).await.map_err(kube_err)?;
            let st = v.status.clone().unwrap_or_default();
            let served = st.size_bytes.unwrap_or(0);
            if served >= wanted {
                return Ok(Response::new(csi::ControllerExpandVolumeResponse {
                    capacity_bytes: served,
                    node_expansion_required: !block,
                }));
            }
            if Instant::now() >= deadline {
                let why = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == RESIZED && c.status == "False")
                    .map_or_else(|| "in progress".to_string(), |c| c.message.clone());
                return Err(Status::unavailable(format!(
                    "volume {} serves {served} bytes, growing to {wanted}: {why}; retry",
                    req.volume_id
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn controller_get_volume(
        &self,
        _: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerGetVolume is not supported",
        ))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not supported",
        ))
    }
}
