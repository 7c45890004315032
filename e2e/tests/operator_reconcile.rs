//! The operator binary against a real Kubernetes 1.20 API server (the `e2e/kube` bed) and
//! two real `ferrite-datapath` processes driven through their node API (pools on sparse files):
//! StoragePools come Online with the capacity the nodes report; a Volume gets two replicas on
//! distinct nodes (the remote one exported to the target node's host NQN), a target, and goes
//! Online; the replica node killed with SIGKILL makes it Degraded (with an Event; the mirror
//! notices the closed connection without host I/O) and restarted brings it back Online;
//! deleting a pool in use is blocked with a condition; the operator restarted converges
//! without re-placing; deleting the Volume destroys the target and replicas on the nodes,
//! after which the pool deletion completes; the leader Lease is held. The operators run with
//! `--metrics`: `/metrics` counts pool reconciles, StoragePools by phase and Volumes by
//! state, says who leads (1 on the leader, 0 on a standby) and counts CSI requests by method
//! and gRPC code. Fails when the bed is not prepared.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use ferrite_e2e::api_node::ApiNode;
use ferrite_e2e::kube::{KubeBed, OperatorProcess};

/// Builds (or finds) the operator and datapath binaries and starts a bed with the CRDs.
fn setup() -> (KubeBed, PathBuf, PathBuf) {
    let bin = operator_binary();
    let dp = ferrite_e2e::datapath::binary().expect("datapath binary");
    let bed = KubeBed::start().expect("start bed");
    bed.install_crds().expect("crds");
    (bed, bin, dp)
}

fn operator_binary() -> std::path::PathBuf {
    ferrite_e2e::kube::operator_binary().expect("operator binary")
}

fn start_operator(bed: &KubeBed, bin: &std::path::Path, n: u32) -> OperatorProcess {
    start_operator_with(bed, bin, n, &[])
}

fn start_operator_with(
    bed: &KubeBed,
    bin: &std::path::Path,
    n: u32,
    extra: &[String],
) -> OperatorProcess {
    OperatorProcess::start(bed, bin, n, extra).expect("start operator")
}

/// `--metrics 127.0.0.1:PORT` on a free port: the arguments and the address.
fn metrics_args() -> (Vec<String>, std::net::SocketAddr) {
    let port = ferrite_e2e::free_port().expect("port");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    (vec!["--metrics".into(), addr.to_string()], addr)
}

/// The value of the sample `name{labels}` (exactly those labels, in any order) in a
/// Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let pairs: Vec<&str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
            .collect();
        let same = pairs.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
        (n == name && same).then(|| value.parse().ok())?
    })
}

/// Waits until `GET /metrics` on `addr` has `name{labels}` satisfying `ok`; returns the value.
fn wait_metric(
    addr: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
    secs: u64,
) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let last = match ferrite_e2e::cluster::http_get(addr, "/metrics") {
            Ok((200, body)) => {
                if let Some(v) = sample(&body, name, labels).filter(|v| ok(*v)) {
                    return v;
                }
                body
            }
            Ok((code, body)) => format!("HTTP {code}: {body}"),
            Err(e) => e,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{labels:?} not as expected after {secs} s; last /metrics:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn jsonpath(bed: &KubeBed, kind: &str, name: &str, path: &str) -> String {
    bed.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
        .ok()
        .filter(|r| r.ok)
        .map(|r| r.stdout)
        .unwrap_or_default()
}

fn wait_eq(bed: &KubeBed, kind: &str, name: &str, path: &str, want: &str, secs: u64) {
    let mut last = String::new();
    let r = bed.wait_for(
        &format!("{kind}/{name} {path} = {want}"),
        Duration::from_secs(secs),
        || {
            last = jsonpath(bed, kind, name, path);
            (last == want).then_some(())
        },
    );
    if let Err(e) = r {
        let log = std::fs::read_to_string(bed.dir().join("operator-1.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{e}; last value {last:?}\noperator log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_pools_and_volumes() {
    KubeBed::require();
    let (bed, bin, dp) = tokio::task::spawn_blocking(setup).await.expect("setup");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut a = ApiNode::start(&dp, "a", "127.0.37.1", tmp.path()).expect("node a");
    let mut b = ApiNode::start(&dp, "b", "127.0.37.2", tmp.path()).expect("node b");
    a.client().await;
    b.client().await;
    let bed = Arc::new(bed);
    let rt = tokio::runtime::Handle::current();
    let dir = tmp.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        register_nodes(&bed, &a.url(), &b.url(), &dir);
        let (margs, maddr) = metrics_args();
        let op = start_operator_with(&bed, &bin, 1, &margs);

        // Nodes and pools: the capacity is what the node reports for its pool.
        wait_eq(&bed, "fnode", "a", "{.status.phase}", "Ready", 60);
        wait_eq(&bed, "fnode", "b", "{.status.hostNqn}", "nqn.2024-01.dev.ferrite:node-b", 30);
        wait_eq(&bed, "storagepool", "pa", "{.status.phase}", "Online", 30);
        wait_eq(&bed, "storagepool", "pb", "{.status.phase}", "Online", 30);
        let pools = rt.block_on(a.pools());
        assert_eq!(pools.len(), 1, "{pools:?}");
        assert!(pools[0].capacity_bytes > 200 << 20 && pools[0].capacity_bytes <= 256 << 20, "{pools:?}");
        wait_eq(&bed, "storagepool", "pa", "{.status.capacityBytes}", &pools[0].capacity_bytes.to_string(), 10);
        wait_eq(&bed, "storagepool", "pa", "{.metadata.finalizers[0]}", "ferrite.dev/pool-protection", 10);

        // The metrics endpoint: pool reconciles counted, this instance leads, both pools
        // Online.
        assert_eq!(ferrite_e2e::cluster::http_get(maddr, "/healthz").expect("healthz"), (200, "ok\n".to_string()));
        wait_metric(maddr, "ferrite_operator_reconciles_total", &[("controller", "pool"), ("result", "ok")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_reconciles_total", &[("controller", "node"), ("result", "ok")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_reconcile_duration_seconds_count", &[("controller", "pool")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_leader", &[], |v| v == 1.0, 10);
        wait_metric(maddr, "ferrite_operator_storage_pools", &[("phase", "Online")], |v| v == 2.0, 10);
        wait_metric(maddr, "ferrite_operator_storage_pools", &[("phase", "Pending")], |v| v == 0.0, 10);

        // A volume.
        let vol = "apiVersion: ferrite.dev/v1alpha1\nkind: Volume\nmetadata: {name: vol-1}\nspec: {sizeBytes: 67108864}\n";
        let r = bed.kubectl_stdin(&["apply", "-f", "-"], vol).expect("kubectl");
        assert!(r.ok, "{}", r.stderr);
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 60);
        wait_metric(maddr, "ferrite_operator_volumes", &[("state", "Online")], |v| v == 1.0, 20);
        let nodes = jsonpath(&bed, "volume", "vol-1", "{.status.replicas[*].node}");
        let mut ns: Vec<&str> = nodes.split_whitespace().collect();
        ns.sort();
        assert_eq!(ns, ["a", "b"], "replicas on distinct nodes");
        let uuids = jsonpath(&bed, "volume", "vol-1", "{.status.replicas[*].uuid}");
        let target = jsonpath(&bed, "volume", "vol-1", "{.status.targetNode}");
        let uid = jsonpath(&bed, "volume", "vol-1", "{.metadata.uid}");
        assert_eq!(jsonpath(&bed, "volume", "vol-1", "{.status.nqn}"), format!("nqn.2024-01.dev.ferrite:volume-{uid}"));
        assert!(!jsonpath(&bed, "volume", "vol-1", "{.status.endpoints[0].port}").is_empty());
        let (tn, other) = if target == "a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
        assert!(rt.block_on(tn.volumes()).iter().any(|v| v.uuid == uid), "target created on {target}");
        let remote = rt.block_on(other.replicas());
        let target_host = format!("nqn.2024-01.dev.ferrite:node-{target}");
        assert!(
            remote.iter().any(|r| uuids.contains(&r.uuid) && r.allowed_hosts == [target_host.clone()]),
            "remote replica exported to the target's host NQN only: {remote:?}"
        );
        wait_eq(&bed, "storagepool", "pa", "{.status.provisionedBytes}", &((64u64 << 20) + (1 << 20)).to_string(), 20);

        // The replica node killed: Degraded, with an Event; restarted: Online.
        other.kill9();
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Degraded", 60);
        let events = bed.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "jsonpath={.items[*].reason}"]).expect("events");
        assert!(events.contains("VolumeDegraded"), "events: {events}");
        other.restart().expect("restart");
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 90);

        // Deleting a pool in use is blocked with a condition.
        let r = bed.kubectl(&["delete", "storagepool", "pa", "--wait=false"]).expect("kubectl");
        assert!(r.ok, "{}", r.stderr);
        wait_eq(&bed, "storagepool", "pa", "{.status.conditions[?(@.type==\"DeletionBlocked\")].status}", "True", 30);
        let msg = jsonpath(&bed, "storagepool", "pa", "{.status.conditions[?(@.type==\"DeletionBlocked\")].message}");
        assert!(msg.contains("vol-1"), "{msg}");

        // The operator restarted converges without re-placing.
        drop(op);
        // The new instance takes the Lease once op-1's expires (15 s); a standby started
        // next to it does not.
        let op = start_operator(&bed, &bin, 2);
        wait_eq(&bed, "lease", "ferrite-operator", "{.spec.holderIdentity}", "op-2", 45);
        let (standby_args, standby_metrics) = metrics_args();
        let standby = start_operator_with(&bed, &bin, 3, &standby_args);
        std::thread::sleep(Duration::from_secs(7));
        assert_eq!(jsonpath(&bed, "lease", "ferrite-operator", "{.spec.holderIdentity}"), "op-2");
        // The standby serves its metrics too: not the leader, no reconciles.
        wait_metric(standby_metrics, "ferrite_operator_leader", &[], |v| v == 0.0, 10);
        wait_metric(standby_metrics, "ferrite_operator_reconciles_total", &[("controller", "pool"), ("result", "ok")], |v| v == 0.0, 10);
        drop(standby);
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 60);
        assert_eq!(jsonpath(&bed, "volume", "vol-1", "{.status.replicas[*].uuid}"), uuids);
        // ... and reconciles: a lost replica shows up again.
        other.kill9();
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Degraded", 60);
        other.restart().expect("restart");
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 90);

        // Deleting the volume removes everything from the nodes; then the pool goes too.
        let r = bed.kubectl(&["delete", "volume", "vol-1", "--timeout=60s"]).expect("kubectl");
        assert!(r.ok, "{}", r.stderr);
        for n in [&a, &b] {
            let (vols, reps) = (rt.block_on(n.volumes()), rt.block_on(n.replicas()));
            assert!(vols.is_empty() && reps.is_empty(), "left on {}: {vols:?} {reps:?}", n.name);
        }
        bed.wait_for("pool pa deleted", Duration::from_secs(60), || {
            bed.kubectl(&["get", "storagepool", "pa"]).ok().filter(|r| !r.ok)
        })
        .expect("pool deletion");
        assert!(rt.block_on(a.pools()).is_empty(), "pool pa destroyed on node a");
        drop(op);
    })
    .await
    .expect("test body");
}

/// Registers nodes `a` and `b` (their node API URLs) with a pool each on a sparse file in
/// `dir`.
fn register_nodes(bed: &KubeBed, a_url: &str, b_url: &str, dir: &std::path::Path) {
    let d = dir.display();
    let objects = format!(
        "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: a}}\nspec: {{apiEndpoint: '{a_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: b}}\nspec: {{apiEndpoint: '{b_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pa}}\nspec: {{node: a, disks: ['file:{d}/a0.img:256MiB']}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pb}}\nspec: {{node: b, disks: ['file:{d}/b0.img:256MiB']}}\n"
    );
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], &objects)
        .expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
}

/// The CSI Identity and Controller services of the operator over TCP, against the bed and
/// two real nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_controller_service() {
    use ferrite_api::csi::v1 as csi;
    use ferrite_api::csi::v1::controller_client::ControllerClient;
    use ferrite_api::csi::v1::identity_client::IdentityClient;
    use ferrite_api::csi::v1::volume_capability::{
        AccessMode, AccessType, BlockVolume, access_mode::Mode,
    };

    KubeBed::require();
    let (bed, bin, dp) = tokio::task::spawn_blocking(setup).await.expect("setup");
    let tmp = tempfile::tempdir().expect("tmp");
    let a = ApiNode::start(&dp, "a", "127.0.38.1", tmp.path()).expect("node a");
    let b = ApiNode::start(&dp, "b", "127.0.38.2", tmp.path()).expect("node b");
    a.client().await;
    b.client().await;
    let (a_url, b_url, dir) = (a.url(), b.url(), tmp.path().to_path_buf());
    let port = ferrite_e2e::free_port().expect("port");
    let (mut args, maddr) = metrics_args();
    args.extend([
        "--csi-endpoint".into(),
        format!("tcp://127.0.0.1:{port}"),
        "--csi-wait-secs".into(),
        "20".into(),
    ]);
    let bed = Arc::new(bed);
    let bed2 = bed.clone();
    let op = tokio::task::spawn_blocking(move || {
        register_nodes(&bed2, &a_url, &b_url, &dir);
        let op = start_operator_with(&bed2, &bin, 1, &args);
        wait_eq(&bed2, "storagepool", "pa", "{.status.phase}", "Online", 60);
        wait_eq(&bed2, "storagepool", "pb", "{.status.phase}", "Online", 30);
        op
    })
    .await
    .expect("operator");
    let url = format!("http://127.0.0.1:{port}");
    let mut id = IdentityClient::connect(url.clone())
        .await
        .expect("identity");
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "csi.ferrite.dev");
    assert_eq!(
        id.probe(csi::ProbeRequest {})
            .await
            .expect("probe")
            .into_inner()
            .ready,
        Some(true)
    );
    let mut c = ControllerClient::connect(url).await.expect("controller");
    let caps = c
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    let types: Vec<String> = caps
        .capabilities
        .iter()
        .map(|c| format!("{:?}", c.r#type))
        .collect();
    assert_eq!(types.len(), 5, "{types:?}");
    assert!(
        types.iter().any(|t| t.contains("ExpandVolume")),
        "EXPAND_VOLUME must be advertised: {types:?}"
    );

    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let create = |name: &str, bytes: i64, replicas: &str| csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap.clone()],
        parameters: [("replicas".to_string(), replicas.to_string())].into(),
        ..Default::default()
    };
    // The consumer's node (first preferred segment) gets the target.
    let mut first = create("pvc-0001", 64 << 20, "2");
    first.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![],
        preferred: vec![csi::Topology {
            segments: [("topology.ferrite.dev/node".to_string(), "b".to_string())].into(),
        }],
    });
    let v = c
        .create_volume(first)
        .await
        .expect("CreateVolume")
        .into_inner();
    let bed3 = bed.clone();
    let target = tokio::task::spawn_blocking(move || {
        jsonpath(&bed3, "volume", "pvc-0001", "{.status.targetNode}")
    })
    .await
    .expect("target");
    assert_eq!(target, "b");
    let vol = v.volume.expect("volume");
    assert_eq!(vol.volume_id, "pvc-0001");
    assert_eq!(vol.capacity_bytes, 64 << 20);
    let ctx = vol.volume_context.clone();
    assert!(
        ctx["nqn"].starts_with("nqn.2024-01.dev.ferrite:volume-"),
        "{ctx:?}"
    );
    assert!(!ctx["targets"].is_empty() && ctx["nsid"] == "1", "{ctx:?}");
    // Idempotent; a different size under the same name is refused.
    let again = c
        .create_volume(create("pvc-0001", 64 << 20, "2"))
        .await
        .expect("again")
        .into_inner();
    assert_eq!(again.volume.map(|v| v.volume_context), Some(ctx.clone()));
    let e = c
        .create_volume(create("pvc-0001", 128 << 20, "2"))
        .await
        .expect_err("size change");
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    // Three replicas on two nodes cannot be placed, and nothing is left behind.
    let e = c
        .create_volume(create("pvc-0002", 4096, "3"))
        .await
        .expect_err("3 replicas");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let bed5 = bed.clone();
    let left = tokio::task::spawn_blocking(move || {
        jsonpath(&bed5, "volume", "pvc-0002", "{.metadata.name}")
    })
    .await
    .expect("get");
    assert_eq!(left, "", "the unplaceable Volume was left behind");
    let e = c
        .create_volume(create("pvc-0003", 4096, "7"))
        .await
        .expect_err("7 replicas");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Publish / unpublish set the target's hosts.
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let p = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "pvc-0001".into(),
            node_id: host.into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(p.publish_context["nqn"], ctx["nqn"]);
    // The target (on b) allows exactly that host; the Volume records it.
    let hosts = |vols: Vec<ferrite_api::node::v1::Volume>| {
        vols.into_iter()
            .flat_map(|v| v.allowed_hosts)
            .collect::<Vec<_>>()
    };
    assert_eq!(hosts(b.volumes().await), vec![host.to_string()]);
    assert!(hosts(a.volumes().await).is_empty());
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "pvc-0001".into(),
        node_id: host.into(),
        ..Default::default()
    })
    .await
    .expect("unpublish");
    assert!(hosts(a.volumes().await).is_empty() && hosts(b.volumes().await).is_empty());
    // A node_id that is not a host NQN is not a node.
    let e = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: "pvc-0001".into(),
            node_id: "not an nqn".into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect_err("bad node id");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Validate, list, capacity, expand.
    let ok = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "pvc-0001".into(),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(ok.confirmed.is_some());
    let e = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "nope".into(),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await
        .expect_err("unknown volume");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let l = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((l.entries.len(), l.next_token.as_str()), (1, ""));
    // Capacity: the free bytes the pools report (no data written, so they hold still).
    let bed4 = bed.clone();
    let free: i64 = tokio::task::spawn_blocking(move || {
        ["pa", "pb"]
            .iter()
            .map(|p| {
                jsonpath(&bed4, "storagepool", p, "{.status.freeBytes}")
                    .parse::<i64>()
                    .unwrap_or(-1)
            })
            .sum()
    })
    .await
    .expect("free bytes");
    let cap_resp = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .expect("capacity")
        .into_inner();
    assert!(free > 400 << 20, "free {free}");
    assert_eq!(cap_resp.available_capacity, free);
    let e = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "pvc-0001".into(),
            ..Default::default()
        })
        .await
        .expect_err("expand");
    assert_eq!(
        e.code(),
        tonic::Code::InvalidArgument,
        "no capacity range: {e:?}"
    );

    // Paging: a second volume, listed one per page.
    c.create_volume(create("pvc-0004", 4096, "1"))
        .await
        .expect("second volume");
    let l = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((l.entries.len(), l.next_token.as_str()), (1, "1"));
    let l = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 1,
            starting_token: "1".into(),
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!((l.entries.len(), l.next_token.as_str()), (1, ""));
    // Delete: the nodes are emptied; deleting again succeeds.
    for name in ["pvc-0001", "pvc-0002", "pvc-0004"] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: name.into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "pvc-0001".into(),
        ..Default::default()
    })
    .await
    .expect("delete again");
    for n in [&a, &b] {
        let (vols, reps) = (n.volumes().await, n.replicas().await);
        assert!(
            vols.is_empty() && reps.is_empty(),
            "left on {}: {vols:?} {reps:?}",
            n.name
        );
    }

    // Every CSI request was counted by method and gRPC code.
    tokio::task::spawn_blocking(move || {
        let csi = "ferrite_operator_csi_requests_total";
        wait_metric(
            maddr,
            csi,
            &[("method", "CreateVolume"), ("code", "OK")],
            |v| v >= 2.0,
            5,
        );
        wait_metric(
            maddr,
            csi,
            &[("method", "CreateVolume"), ("code", "AlreadyExists")],
            |v| v == 1.0,
            5,
        );
        wait_metric(
            maddr,
            csi,
            &[("method", "CreateVolume"), ("code", "InvalidArgument")],
            |v| v == 1.0,
            5,
        );
        wait_metric(
            maddr,
            csi,
            &[
                ("method", "ValidateVolumeCapabilities"),
                ("code", "NotFound"),
            ],
            |v| v == 1.0,
            5,
        );
        wait_metric(
            maddr,
            csi,
            &[("method", "DeleteVolume"), ("code", "OK")],
            |v| v >= 3.0,
            5,
        );
        wait_metric(
            maddr,
            csi,
            &[("method", "Probe"), ("code", "OK")],
            |v| v == 1.0,
            5,
        );
    })
    .await
    .expect("CSI metrics");
    drop(op);
    drop(bed);
}
