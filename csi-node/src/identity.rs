//! The CSI Identity service.

use std::sync::Arc;

use ferrite_api::csi::v1::identity_server::Identity;
use ferrite_api::csi::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, plugin_capability,
};
use tonic::{Request, Response, Status};

use crate::config::Plugin;

pub struct IdentityService {
    plugin: Arc<Plugin>,
}

impl IdentityService {
    pub fn new(plugin: Arc<Plugin>) -> IdentityService {
        IdentityService { plugin }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.plugin.cfg.driver_name.clone(),
            vendor_version: self.plugin.cfg.version.clone(),
            manifest: [("component".to_string(), "node".to_string())]
                .into_iter()
                .collect(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                PluginCapability {
                    r#type: Some(Type::Service(Service {
                        r#type: service::Type::VolumeAccessibilityConstraints as i32,
                    })),
                },
                PluginCapability {
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let dev = &self.plugin.cfg.fabrics_dev;
        if !dev.exists() {
            return Err(Status::failed_precondition(format!(
                "{} does not exist: load the kernel's NVMe/TCP initiator (modprobe nvme-tcp)",
                dev.display()
            )));
        }
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
