//! `ferrite-csi-client`: calls one CSI Identity/Node RPC and prints the answer as
//! `key=value` lines, for shell scripts (the QEMU guest script `csi-node.sh`).
//!
//! Exit status: 0 on success; 1 if the call failed (prints `code=... message=...`). With
//! `--expect CODE` the roles swap: 0 only if the call failed with that gRPC code (e.g.
//! `NotFound`), 3 if it succeeded, 1 on another code.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferrite_api::csi::v1::identity_client::IdentityClient;
use ferrite_api::csi::v1::node_client::NodeClient;
use ferrite_api::csi::v1::*;

#[derive(Parser)]
struct Cli {
    /// unix:///PATH or tcp://IP:PORT
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Succeed only if the call fails with this gRPC code (e.g. NotFound, InvalidArgument).
    #[arg(long)]
    expect: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Cap {
    /// Raw block volume (default: filesystem).
    #[arg(long)]
    block: bool,
    /// Filesystem type (ext4, xfs).
    #[arg(long, default_value = "")]
    fs: String,
    /// Mount flag (repeatable).
    #[arg(long = "mount-flag")]
    mount_flags: Vec<String>,
    /// Access mode: SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, ...
    #[arg(long, default_value = "SINGLE_NODE_WRITER")]
    mode: String,
}

impl Cap {
    fn to_proto(&self) -> Result<VolumeCapability, String> {
        use volume_capability::{
            AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
        };
        let mode = Mode::from_str_name(&self.mode)
            .ok_or_else(|| format!("unknown access mode {}", self.mode))?;
        Ok(VolumeCapability {
            access_type: Some(if self.block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: self.fs.clone(),
                    mount_flags: self.mount_flags.clone(),
                    volume_mount_group: String::new(),
                })
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        })
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Subcommand)]
enum Cmd {
    /// GetPluginInfo + GetPluginCapabilities + Probe.
    Identity,
    /// NodeGetInfo.
    Info,
    /// NodeGetCapabilities.
    Caps,
    /// NodeStageVolume.
    Stage {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        staging: String,
        #[command(flatten)]
        cap: Cap,
        /// Volume context entry KEY=VALUE (repeatable).
        #[arg(long = "ctx", value_parser = parse_kv)]
        ctx: Vec<(String, String)>,
        /// Publish context entry KEY=VALUE (repeatable).
        #[arg(long = "pctx", value_parser = parse_kv)]
        pctx: Vec<(String, String)>,
    },
    /// NodeUnstageVolume.
    Unstage {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        staging: String,
    },
    /// NodePublishVolume.
    Publish {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        staging: String,
        #[arg(long)]
        target: String,
        #[command(flatten)]
        cap: Cap,
        #[arg(long)]
        readonly: bool,
        #[arg(long = "ctx", value_parser = parse_kv)]
        ctx: Vec<(String, String)>,
    },
    /// NodeUnpublishVolume.
    Unpublish {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        target: String,
    },
    /// NodeGetVolumeStats.
    Stats {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        path: String,
    },
    /// NodeExpandVolume.
    Expand {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 0)]
        required_bytes: i64,
        #[arg(long)]
        staging: Option<String>,
    },
}

async fn call(endpoint: &str, cmd: Cmd) -> Result<Vec<(String, String)>, tonic::Status> {
    let ch = ferrite_e2e::csi::connect(endpoint)
        .await
        .map_err(tonic::Status::unavailable)?;
    let mut node = NodeClient::new(ch.clone());
    let mut out = Vec::new();
    let mut kv = |k: &str, v: String| out.push((k.to_string(), v));
    let map = |v: Vec<(String, String)>| v.into_iter().collect::<HashMap<_, _>>();
    match cmd {
        Cmd::Identity => {
            let mut id = IdentityClient::new(ch);
            let info = id
                .get_plugin_info(GetPluginInfoRequest {})
                .await?
                .into_inner();
            kv("name", info.name);
            kv("vendor_version", info.vendor_version);
            let caps = id
                .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
                .await?
                .into_inner();
            for c in caps.capabilities {
                kv("plugin_capability", format!("{:?}", c.r#type));
            }
            let probe = id.probe(ProbeRequest {}).await?.into_inner();
            kv("ready", format!("{}", probe.ready.unwrap_or(false)));
        }
        Cmd::Info => {
            let r = node
                .node_get_info(NodeGetInfoRequest {})
                .await?
                .into_inner();
            kv("node_id", r.node_id);
            kv("max_volumes_per_node", r.max_volumes_per_node.to_string());
            let mut segs: Vec<_> = r
                .accessible_topology
                .map(|t| t.segments.into_iter().collect())
                .unwrap_or_default();
            segs.sort();
            for (k, v) in segs {
                kv(&format!("topology.{k}"), v);
            }
        }
        Cmd::Caps => {
            let r = node
                .node_get_capabilities(NodeGetCapabilitiesRequest {})
                .await?
                .into_inner();
            for c in r.capabilities {
                if let Some(node_service_capability::Type::Rpc(rpc)) = c.r#type {
                    let name = node_service_capability::rpc::Type::try_from(rpc.r#type)
                        .map(|t| t.as_str_name().to_string())
                        .unwrap_or_else(|_| rpc.r#type.to_string());
                    kv("capability", name);
                }
            }
        }
        Cmd::Stage {
            volume_id,
            staging,
            cap,
            ctx,
            pctx,
        } => {
            let cap = cap.to_proto().map_err(tonic::Status::invalid_argument)?;
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id,
                publish_context: map(pctx),
                staging_target_path: staging,
                volume_capability: Some(cap),
                secrets: HashMap::new(),
                volume_context: map(ctx),
            })
            .await?;
            kv("staged", "true".into());
        }
        Cmd::Unstage { volume_id, staging } => {
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id,
                staging_target_path: staging,
            })
            .await?;
            kv("unstaged", "true".into());
        }
        Cmd::Publish {
            volume_id,
            staging,
            target,
            cap,
            readonly,
            ctx,
        } => {
            let cap = cap.to_proto().map_err(tonic::Status::invalid_argument)?;
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id,
                publish_context: HashMap::new(),
                staging_target_path: staging,
                target_path: target,
                volume_capability: Some(cap),
                readonly,
                secrets: HashMap::new(),
                volume_context: map(ctx),
            })
            .await?;
            kv("published", "true".into());
        }
        Cmd::Unpublish { volume_id, target } => {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id,
                target_path: target,
            })
            .await?;
            kv("unpublished", "true".into());
        }
        Cmd::Stats { volume_id, path } => {
            let r = node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id,
                    volume_path: path,
                    staging_target_path: String::new(),
                })
                .await?
                .into_inner();
            for u in r.usage {
                let unit = match volume_usage::Unit::try_from(u.unit) {
                    Ok(volume_usage::Unit::Bytes) => "bytes",
                    Ok(volume_usage::Unit::Inodes) => "inodes",
                    _ => "unknown",
                };
                kv(&format!("{unit}_total"), u.total.to_string());
                kv(&format!("{unit}_available"), u.available.to_string());
                kv(&format!("{unit}_used"), u.used.to_string());
            }
            if let Some(c) = r.volume_condition {
                kv("abnormal", c.abnormal.to_string());
                kv("message", c.message);
            }
        }
        Cmd::Expand {
            volume_id,
            path,
            required_bytes,
            staging,
        } => {
            let r = node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id,
                    volume_path: path,
                    capacity_range: Some(CapacityRange {
                        required_bytes,
                        limit_bytes: 0,
                    }),
                    staging_target_path: staging.unwrap_or_default(),
                    volume_capability: None,
                    secrets: HashMap::new(),
                })
                .await?
                .into_inner();
            kv("capacity_bytes", r.capacity_bytes.to_string());
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match (call(&cli.endpoint, cli.cmd).await, cli.expect) {
        (Ok(out), None) => {
            for (k, v) in out {
                println!("{k}={v}");
            }
            ExitCode::SUCCESS
        }
        (Ok(_), Some(want)) => {
            println!("unexpected success (expected code {want})");
            ExitCode::from(3)
        }
        (Err(s), expect) => {
            let code = format!("{:?}", s.code());
            println!("code={code}");
            println!("message={}", s.message());
            match expect {
                Some(want) if want.eq_ignore_ascii_case(&code) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
    }
}
