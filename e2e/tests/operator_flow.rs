//! The whole control plane against a real Kubernetes 1.20 API server (the `e2e/kube` bed)
//! and two real `ferrite-datapath` processes (node API on `--grpc`, state in
//! `--state-dir`): StoragePools come Online with capacity; CSI CreateVolume over the
//! operator's CSI endpoint gives a Volume with 2 replicas on different nodes, Online; the
//! returned context, published to this host's NQN, connects with the Rust NVMe/TCP host
//! and does I/O; the replica node killed with SIGKILL makes the Volume Degraded (with an
//! Event) and restarted brings it back Online; the operator restarted converges; DeleteVolume
//! removes the target and replicas from the nodes. In between, CSI ControllerExpandVolume
//! grows the volume online (both replicas, then the mirror) while the host stays connected,
//! and a target destroyed behind the operator's back is re-created with the published host
//! (kept in `spec.allowedHosts`) and the data. Fails when the bed is not prepared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_api::csi::v1 as csi;
use ferrite_api::csi::v1::controller_service_capability::rpc;
use ferrite_api::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, access_mode::Mode,
};
use ferrite_api::node::v1 as pb;
use ferrite_block::{BlockDevice, IoBuf};
use ferrite_e2e::api_node::ApiNode;
use ferrite_e2e::csi::controller_client as csi_client;
use ferrite_e2e::kube::{KubeBed, OperatorProcess, operator_binary};
use ferrite_host::{Controller, HostOptions, RemoteNamespace};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5a1e0b7c-0c3f-4d6a-9b1e-0f1e2d3c4b5a";

fn jsonpath(bed: &KubeBed, kind: &str, name: &str, path: &str) -> String {
    bed.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
        .ok()
        .filter(|r| r.ok)
        .map(|r| r.stdout)
        .unwrap_or_default()
}

async fn wait_eq(bed: &Arc<KubeBed>, kind: &str, name: &str, path: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (b, k, n, p) = (
            bed.clone(),
            kind.to_string(),
            name.to_string(),
            path.to_string(),
        );
        let got = tokio::task::spawn_blocking(move || jsonpath(&b, &k, &n, &p))
            .await
            .unwrap_or_default();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let logs: String = std::fs::read_dir(bed.dir())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("operator-"))
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(25).collect();
                    format!(
                        "--- {:?}\n{}",
                        e.file_name(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("{kind}/{name} {path}: want {want:?}, got {got:?} after {secs}s\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..64 * 1024)
        .map(|i: usize| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

async fn connect(
    ctx: &std::collections::HashMap<String, String>,
) -> (Arc<Controller>, RemoteNamespace) {
    let target = ctx["targets"].split(',').next().unwrap_or_default();
    let addr: SocketAddr = target.parse().expect("target address");
    let opts = HostOptions {
        hostnqn: HOST.into(),
        ..HostOptions::default()
    };
    let ctrl = Arc::new(
        Controller::connect(addr, &ctx["nqn"], opts)
            .await
            .expect("connect to the volume"),
    );
    let ns = RemoteNamespace::new(ctrl.clone(), ctx["nsid"].parse().unwrap_or(1))
        .await
        .expect("namespace");
    (ctrl, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_with_real_datapaths() {
    KubeBed::require();
    let (bed, op_bin, dp_bin) = tokio::task::spawn_blocking(|| {
        let dp = ferrite_e2e::datapath::binary().expect("datapath binary");
        let op = operator_binary().expect("operator binary");
        let bed = KubeBed::start().expect("start bed");
        bed.install_crds().expect("crds");
        (Arc::new(bed), op, dp)
    })
    .await
    .expect("setup");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut a = ApiNode::start(&dp_bin, "a", "127.0.35.1", dir).expect("node a");
    let mut b = ApiNode::start(&dp_bin, "b", "127.0.35.2", dir).expect("node b");
    a.client().await;
    b.client().await;

    let objects = format!(
        "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: a}}\nspec: {{apiEndpoint: '{}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: b}}\nspec: {{apiEndpoint: '{}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pa}}\nspec: {{node: a, disks: ['file:{}/a0.img:256MiB']}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pb}}\nspec: {{node: b, disks: ['file:{}/b0.img:256MiB']}}\n",
        a.url(),
        b.url(),
        dir.display(),
        dir.display()
    );
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], &objects)
        .expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
    let port = ferrite_e2e::free_port().expect("port");
    let csi_args = vec![
        "--csi-endpoint".to_string(),
        format!("tcp://127.0.0.1:{port}"),
        "--csi-wait-secs".into(),
        "60".into(),
    ];
    let mut op = OperatorProcess::start(&bed, &op_bin, 1, &csi_args).expect("operator");

    wait_eq(&bed, "storagepool", "pa", "{.status.phase}", "Online", 90).await;
    wait_eq(&bed, "storagepool", "pb", "{.status.phase}", "Online", 30).await;
    let cap: u64 = jsonpath(&bed, "storagepool", "pa", "{.status.capacityBytes}")
        .parse()
        .unwrap_or(0);
    assert!(cap > 200 << 20, "capacity {cap}");
    wait_eq(&bed, "fnode", "b", "{.status.phase}", "Ready", 30).await;

    // CSI CreateVolume over the operator's endpoint.
    let mut c = csi_client(port).await;
    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let vol = c
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-flow".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            parameters: [("replicas".to_string(), "2".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(vol.volume_id, "pvc-flow");
    wait_eq(&bed, "volume", "pvc-flow", "{.status.state}", "Online", 60).await;
    let nodes = jsonpath(&bed, "volume", "pvc-flow", "{.status.replicas[*].node}");
    let mut ns: Vec<&str> = nodes.split_whitespace().collect();
    ns.sort();
    assert_eq!(ns, ["a", "b"]);
    let uuids = jsonpath(&bed, "volume", "pvc-flow", "{.status.replicas[*].uuid}");
    let target = jsonpath(&bed, "volume", "pvc-flow", "{.status.targetNode}");

    // Publish to this host and do I/O through the Rust host.
    let p = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "pvc-flow".into(),
            node_id: HOST.into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner();
    let (ctrl, nsp) = connect(&p.publish_context).await;
    nsp.write(8, IoBuf::from_slice(&pattern(1)), false)
        .await
        .expect("write");
    let back = nsp.read(8, 16).await.expect("read");
    assert!(back[..] == pattern(1)[..], "read back differs");

    // SIGKILL the replica node (not the target): Degraded + Event; restarted: Online.
    let (victim, other) = if target == "a" {
        (&mut b, &a)
    } else {
        (&mut a, &b)
    };
    let _ = other;
    victim.kill9();
    // Writes make the target's mirror notice the lost leg.
    for i in 0..20u64 {
        let _ = nsp
            .write(64 + i * 16, IoBuf::from_slice(&pattern(2)), false)
            .await;
    }
    wait_eq(
        &bed,
        "volume",
        "pvc-flow",
        "{.status.state}",
        "Degraded",
        60,
    )
    .await;
    let events = bed
        .kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap_or_default();
    assert!(events.contains("VolumeDegraded"), "events: {events}");
    victim.restart().expect("restart the victim");
    wait_eq(&bed, "volume", "pvc-flow", "{.status.state}", "Online", 120).await;

    // The operator restarted converges to the same placement.
    op.kill();
    let op2 = OperatorProcess::start(&bed, &op_bin, 2, &csi_args).expect("operator again");
    wait_eq(
        &bed,
        "lease",
        "ferrite-operator",
        "{.spec.holderIdentity}",
        "op-2",
        45,
    )
    .await;
    wait_eq(&bed, "volume", "pvc-flow", "{.status.state}", "Online", 60).await;
    assert_eq!(
        jsonpath(&bed, "volume", "pvc-flow", "{.status.replicas[*].uuid}"),
        uuids
    );
    let back = nsp.read(64, 16).await.expect("read after repair");
    assert!(
        back[..] == pattern(2)[..],
        "data written while degraded lost"
    );

    // Online expansion: CSI ControllerExpandVolume grows both replicas and the mirror while
    // the host stays connected; the host sees the new size and uses the new blocks.
    let mut c = csi_client(port).await;
    let caps = c
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    let advertised = caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(csi::controller_service_capability::Type::Rpc(r)) if r.r#type == rpc::Type::ExpandVolume as i32)
    });
    assert!(advertised, "EXPAND_VOLUME not advertised: {caps:?}");
    let expand = |bytes: i64| csi::ControllerExpandVolumeRequest {
        volume_id: "pvc-flow".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    // More than the pools hold: refused, nothing changes.
    let e = c
        .controller_expand_volume(expand(10 << 30))
        .await
        .expect_err("beyond the pools");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert_eq!(
        jsonpath(&bed, "volume", "pvc-flow", "{.spec.sizeBytes}"),
        (64u64 << 20).to_string()
    );
    let grown = c
        .controller_expand_volume(expand(96 << 20))
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (96 << 20, false),
        "block volume"
    );
    let again = c
        .controller_expand_volume(expand(64 << 20))
        .await
        .expect("smaller than served")
        .into_inner();
    assert_eq!(again.capacity_bytes, 96 << 20);
    let missing = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "nope".into(),
            ..expand(1 << 30)
        })
        .await;
    assert_eq!(
        missing.map(|_| ()).unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        jsonpath(&bed, "volume", "pvc-flow", "{.status.sizeBytes}"),
        (96u64 << 20).to_string()
    );
    assert_eq!(
        jsonpath(
            &bed,
            "volume",
            "pvc-flow",
            "{.status.conditions[?(@.type==\"Resized\")].status}"
        ),
        "True"
    );
    let events = bed
        .kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap_or_default();
    assert!(events.contains("VolumeExpanded"), "events: {events}");
    assert_eq!(nsp.refresh_size().await.expect("re-identify"), 96 << 20);
    let tail = nsp.num_blocks() - 16;
    nsp.write(tail, IoBuf::from_slice(&pattern(3)), true)
        .await
        .expect("write past the old end");
    assert!(nsp.read(tail, 16).await.expect("read")[..] == pattern(3)[..]);
    assert!(
        nsp.read(64, 16).await.expect("read")[..] == pattern(2)[..],
        "old data intact"
    );
    let uid = jsonpath(&bed, "volume", "pvc-flow", "{.metadata.uid}");
    let target_ip = if target == "a" {
        "127.0.35.1"
    } else {
        "127.0.35.2"
    };
    let report = ferrite_e2e::tls::compare(&format!("https://{target_ip}:9500"), &uid)
        .await
        .expect("compare");
    assert!(report.identical, "{report:?}");
    assert_eq!(report.pairs[0].bytes_compared, 96u64 << 20, "{report:?}");
    drop(nsp);
    drop(ctrl);

    // The published host is recorded in the Volume: a target node that loses the volume
    // (destroyed under the operator's feet) gets it back with the same access list, and the
    // host reconnects to its data.
    assert_eq!(
        jsonpath(&bed, "volume", "pvc-flow", "{.spec.allowedHosts[*]}"),
        HOST
    );
    let target_node = if target == "a" { &a } else { &b };
    let mut tn = target_node.client().await;
    tn.destroy_volume(pb::DestroyVolumeRequest { uuid: uid.clone() })
        .await
        .expect("destroy the target");
    let deadline = Instant::now() + Duration::from_secs(60);
    let back = loop {
        if let Ok(v) = tn
            .get_volume(pb::GetVolumeRequest { uuid: uid.clone() })
            .await
        {
            let v = v.into_inner();
            if v.state == pb::VolumeState::Online as i32 {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not re-create the target"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(back.allowed_hosts, vec![HOST.to_string()], "{back:?}");
    assert_eq!(back.size_bytes, 96 << 20, "the grown size is in the labels");
    let (ctrl, nsp) = connect(&p.publish_context).await;
    assert!(nsp.read(tail, 16).await.expect("read")[..] == pattern(3)[..]);
    assert!(nsp.read(64, 16).await.expect("read")[..] == pattern(2)[..]);
    drop(nsp);
    drop(ctrl);

    // DeleteVolume removes everything from the nodes.
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "pvc-flow".into(),
        node_id: HOST.into(),
        ..Default::default()
    })
    .await
    .expect("unpublish");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "pvc-flow".into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
    for n in [&a, &b] {
        let mut nc = n.client().await;
        let vols = nc
            .list_volumes(pb::ListVolumesRequest {})
            .await
            .expect("ListVolumes")
            .into_inner();
        let reps = nc
            .list_replicas(pb::ListReplicasRequest {})
            .await
            .expect("ListReplicas")
            .into_inner();
        assert!(
            vols.volumes.is_empty() && reps.replicas.is_empty(),
            "left on {}: {vols:?} {reps:?}",
            n.name
        );
    }
    drop(op2);
}
