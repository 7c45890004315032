//! The plugin's gRPC surface over TCP, without a kernel initiator: identity, NodeGetInfo,
//! capabilities, argument validation and the gRPC codes of calls that need nothing
//! connected. A fake sysfs/dev tree and a missing fabrics device stand in for the kernel;
//! the kernel path itself is tested in QEMU (e2e/tests/csi_node.rs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrite_api::csi::v1::identity_client::IdentityClient;
use ferrite_api::csi::v1::node_client::NodeClient;
use ferrite_api::csi::v1::*;
use ferrite_csi_node::config::{Config, ConnectDefaults, Plugin};
use ferrite_csi_node::fabrics::HostIdentity;
use ferrite_csi_node::format::Tools;
use ferrite_csi_node::sysfs::Sysfs;
use ferrite_csi_node::{Endpoint, serve};
use tonic::Code;

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";

struct Harness {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    node: NodeClient<tonic::transport::Channel>,
    identity: IdentityClient<tonic::transport::Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("sys/class/nvme")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("mountinfo"), "").unwrap();
    let cfg = Config {
        driver_name: "csi.ferrite.dev".into(),
        version: "test".into(),
        node_id: HOSTNQN.into(),
        node_name: "node-a".into(),
        max_volumes: 7,
        topology: BTreeMap::from([("topology.kubernetes.io/zone".to_string(), "z1".to_string())]),
        host: HostIdentity {
            nqn: HOSTNQN.into(),
            id: "11111111-2222-4333-8444-555555555555".into(),
        },
        sysfs: Sysfs::new(root.join("sys")),
        dev_dir: root.join("dev"),
        fabrics_dev: root.join("dev/nvme-fabrics"),
        mountinfo: root.join("mountinfo"),
        state_dir: root.join("state"),
        tools: Tools::default(),
        device_timeout: Duration::from_secs(1),
        disconnect_timeout: Duration::from_secs(1),
        lock_timeout: Duration::from_secs(5),
        connect: ConnectDefaults::default(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let plugin = Arc::new(Plugin::new(cfg));
    tokio::spawn(async move {
        serve(&ep, plugin, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let url = format!("http://127.0.0.1:{port}");
    let mut tries = 0;
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    Harness {
        _dir: dir,
        root,
        node: NodeClient::new(channel.clone()),
        identity: IdentityClient::new(channel),
        _stop: tx,
    }
}

fn mount_cap() -> VolumeCapability {
    use volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            mount_flags: vec![],
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn stage_req(ctx: &[(&str, &str)]) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: "pv-1".into(),
        staging_target_path: "/tmp/ferrite-test-staging/pv-1".into(),
        volume_capability: Some(mount_cap()),
        volume_context: ctx
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn identity_and_info() {
    let mut h = start().await;
    let info = h
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.ferrite.dev");
    assert_eq!(info.vendor_version, "test");
    let caps = h
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 2);
    // No /dev/nvme-fabrics in the fake tree: not ready, with the fix in the message.
    let e = h.identity.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("modprobe nvme-tcp"), "{}", e.message());
    std::fs::write(h.root.join("dev/nvme-fabrics"), "").unwrap();
    assert_eq!(
        h.identity
            .probe(ProbeRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready,
        Some(true)
    );

    let info = h
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, HOSTNQN);
    assert_eq!(info.max_volumes_per_node, 7);
    let seg = info.accessible_topology.unwrap().segments;
    assert_eq!(
        seg.get("topology.ferrite.dev/node").map(String::as_str),
        Some("node-a")
    );
    assert_eq!(
        seg.get("topology.kubernetes.io/zone").map(String::as_str),
        Some("z1")
    );
    let caps = h
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use node_service_capability::rpc::Type;
    for t in [
        Type::StageUnstageVolume,
        Type::GetVolumeStats,
        Type::ExpandVolume,
    ] {
        assert!(types.contains(&(t as i32)), "{t:?} missing");
    }
}

#[tokio::test]
async fn argument_validation() {
    let mut h = start().await;
    let code =
        |r: Result<tonic::Response<NodeStageVolumeResponse>, tonic::Status>| r.unwrap_err().code();
    let mut r = stage_req(&[
        ("nqn", "nqn.2024-01.dev.ferrite:v"),
        ("targets", "127.0.0.1:4420"),
    ]);
    r.volume_id.clear();
    assert_eq!(
        code(h.node.node_stage_volume(r).await),
        Code::InvalidArgument
    );
    let mut r = stage_req(&[
        ("nqn", "nqn.2024-01.dev.ferrite:v"),
        ("targets", "127.0.0.1:4420"),
    ]);
    r.staging_target_path = "relative".into();
    assert_eq!(
        code(h.node.node_stage_volume(r).await),
        Code::InvalidArgument
    );
    let mut r = stage_req(&[
        ("nqn", "nqn.2024-01.dev.ferrite:v"),
        ("targets", "127.0.0.1:4420"),
    ]);
    r.volume_capability = None;
    assert_eq!(
        code(h.node.node_stage_volume(r).await),
        Code::InvalidArgument
    );
    let e = h
        .node
        .node_stage_volume(stage_req(&[("targets", "127.0.0.1:4420")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"nqn\""), "{}", e.message());
    let e = h
        .node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: "pv-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An impossible range on a staged volume: OUT_OF_RANGE (on an unknown one: NOT_FOUND,
    // the existence check comes first).
    ferrite_csi_node::state::StateDir::new(h.root.join("state"))
        .save(&ferrite_csi_node::state::StagedVolume {
            volume_id: "pv-staged".into(),
            nqn: "nqn.2024-01.dev.ferrite:volume-x".into(),
            nsid: 1,
            portals: vec!["127.0.0.1:4420".into()],
            block: false,
            staging_path: "/x".into(),
            fs_type: None,
        })
        .unwrap();
    for (id, code) in [("pv-staged", Code::OutOfRange), ("pv-1", Code::NotFound)] {
        let e = h
            .node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id.into(),
                volume_path: "/x".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 10,
                    limit_bytes: 5,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{id}: {}", e.message());
    }
}

#[tokio::test]
async fn calls_without_a_kernel() {
    let mut h = start().await;
    // The kernel has no NVMe-oF support (no /dev/nvme-fabrics): a clear FailedPrecondition,
    // and nothing recorded.
    let e = h
        .node
        .node_stage_volume(stage_req(&[
            ("nqn", "nqn.2024-01.dev.ferrite:v"),
            ("targets", "127.0.0.1:4420"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("nvme-tcp"), "{}", e.message());
    assert!(
        std::fs::read_dir(h.root.join("state"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    // Undoing what was never done succeeds (idempotent).
    h.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: "pv-1".into(),
            staging_target_path: "/tmp/ferrite-test-nothing".into(),
        })
        .await
        .unwrap();
    h.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "pv-1".into(),
            target_path: "/tmp/ferrite-test-nothing/t".into(),
        })
        .await
        .unwrap();
    // Publishing an unstaged volume: FailedPrecondition.
    let e = h
        .node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: "pv-1".into(),
            staging_target_path: "/tmp/ferrite-test-nothing".into(),
            target_path: "/tmp/ferrite-test-nothing/t".into(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    // Stats and expansion of a path that does not exist: NotFound.
    let e = h
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "pv-1".into(),
            volume_path: "/nonexistent/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = h
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "pv-1".into(),
            volume_path: "/nonexistent/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The CSI spec's order: required fields first, then the volume's existence, then the
    // rest. An unknown volume with a relative path is NOT_FOUND, a missing path is
    // INVALID_ARGUMENT whatever the volume.
    let e = h
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "pv-unknown".into(),
            volume_path: "relative/path".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = h
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "pv-unknown".into(),
            volume_path: "relative/path".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 10,
                limit_bytes: 5,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    for path in ["", "relative"] {
        let e = h
            .node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: String::new(),
                volume_path: path.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
    let e = h
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "pv-unknown".into(),
            volume_path: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
}
