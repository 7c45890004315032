//! The operator binary against a real Kubernetes 1.20 API server (the `e2e/kube` bed) and
//! two in-process **fake** node API servers (in-memory `ferrite.node.v1.Node`, recording
//! every call): StoragePools come Online with capacity; a Volume gets two replicas on
//! distinct nodes, a target, and goes Online; a replica reported faulted makes it Degraded
//! (with an Event) and back Online; deleting a pool in use is blocked with a condition; the
//! operator restarted converges without re-placing; deleting the Volume destroys the target
//! and replicas on the nodes, after which the pool deletion completes (DestroyPool); the
//! leader Lease is held. The operators run with `--metrics`: `/metrics` counts pool
//! reconciles, StoragePools by phase and Volumes by state, says who leads (1 on the leader, 0
//! on a standby) and counts CSI requests by method and gRPC code. Skipped when the bed is not
//! prepared.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_api::node::v1 as api;
use ferrite_api::node::v1::node_server::{Node, NodeServer};
use ferrite_e2e::kube::KubeBed;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    pools: BTreeMap<String, api::Pool>,
    replicas: BTreeMap<String, api::Replica>,
    volumes: BTreeMap<String, api::Volume>,
    faulted: BTreeSet<String>,
    calls: Vec<String>,
}

#[derive(Clone)]
struct FakeNode {
    name: String,
    nvme: String,
    state: Arc<Mutex<State>>,
}

impl FakeNode {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn with_states(&self, mut v: api::Volume) -> api::Volume {
        let st = self.st();
        for r in &mut v.replicas {
            r.state = if st.faulted.contains(&r.uuid) {
                api::ReplicaState::Faulted as i32
            } else {
                api::ReplicaState::Healthy as i32
            };
        }
        v.state = if v.replicas.iter().all(|r| r.state == api::ReplicaState::Healthy as i32) {
            api::VolumeState::Online as i32
        } else {
            api::VolumeState::Degraded as i32
        };
        v
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn get_node_info(&self, _: Request<api::GetNodeInfoRequest>) -> R<api::NodeInfo> {
        Ok(Response::new(api::NodeInfo {
            name: self.name.clone(),
            host_nqn: format!("nqn.2024-01.dev.ferrite:node-{}", self.name),
            nvme_endpoints: vec![self.nvme.clone()],
            version: "fake".into(),
        }))
    }
    async fn create_pool(&self, r: Request<api::CreatePoolRequest>) -> R<api::Pool> {
        let r = r.into_inner();
        let mut st = self.st();
        st.calls.push(format!("CreatePool {}", r.name));
        let pool = api::Pool {
            name: r.name.clone(),
            uuid: "p".into(),
            disks: r.disks.clone(),
            stripe_size: r.stripe_size,
            capacity_bytes: 256 << 20,
            used_bytes: 0,
            free_bytes: 256 << 20,
            state: api::PoolState::Online as i32,
            members: r.disks.iter().map(|d| api::PoolMember { disk: d.clone(), state: "online".into() }).collect(),
        };
        st.pools.insert(r.name, pool.clone());
        Ok(Response::new(pool))
    }
    async fn destroy_pool(&self, r: Request<api::DestroyPoolRequest>) -> R<api::DestroyPoolResponse> {
        let r = r.into_inner();
        let mut st = self.st();
        st.calls.push(format!("DestroyPool {}", r.name));
        if st.replicas.values().any(|x| x.pool == r.name) {
            return Err(Status::failed_precondition("pool holds replicas"));
        }
        st.pools.remove(&r.name).map(|_| Response::new(api::DestroyPoolResponse {})).ok_or_else(|| Status::not_found("no pool"))
    }
    async fn list_pools(&self, _: Request<api::ListPoolsRequest>) -> R<api::ListPoolsResponse> {
        Ok(Response::new(api::ListPoolsResponse { pools: self.st().pools.values().cloned().collect() }))
    }
    async fn create_replica(&self, r: Request<api::CreateReplicaRequest>) -> R<api::Replica> {
        let r = r.into_inner();
        let mut st = self.st();
        st.calls.push(format!("CreateReplica {} hosts={:?}", r.uuid, r.allowed_hosts));
        if !st.pools.contains_key(&r.pool) {
            return Err(Status::not_found("no pool"));
        }
        let rep = api::Replica {
            uuid: r.uuid.clone(),
            pool: r.pool,
            size_bytes: r.size_bytes,
            thin: r.thin,
            allocated_bytes: 0,
            nqn: format!("nqn.2024-01.dev.ferrite:replica-{}", r.uuid),
            allowed_hosts: r.allowed_hosts,
        };
        st.replicas.insert(r.uuid, rep.clone());
        Ok(Response::new(rep))
    }
    async fn destroy_replica(&self, r: Request<api::DestroyReplicaRequest>) -> R<api::DestroyReplicaResponse> {
        let r = r.into_inner();
        let mut st = self.st();
        st.calls.push(format!("DestroyReplica {}", r.uuid));
        st.replicas.remove(&r.uuid).map(|_| Response::new(api::DestroyReplicaResponse {})).ok_or_else(|| Status::not_found("no replica"))
    }
    async fn resize_replica(&self, _: Request<api::ResizeReplicaRequest>) -> R<api::Replica> {
        Err(Status::unimplemented("fake"))
    }
    async fn export_replica(&self, _: Request<api::ExportReplicaRequest>) -> R<api::Replica> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_replicas(&self, _: Request<api::ListReplicasRequest>) -> R<api::ListReplicasResponse> {
        Ok(Response::new(api::ListReplicasResponse { replicas: self.st().replicas.values().cloned().collect() }))
    }
    async fn create_volume(&self, r: Request<api::CreateVolumeRequest>) -> R<api::Volume> {
        let r = r.into_inner();
        let v = {
            let mut st = self.st();
            st.calls.push(format!(
                "CreateVolume {} {}",
                r.uuid,
                r.replicas.iter().map(|x| format!("{}@{}", x.uuid, x.address)).collect::<Vec<_>>().join(",")
            ));
            let v = api::Volume {
                uuid: r.uuid.clone(),
                nqn: r.nqn,
                size_bytes: 64 << 20,
                replicas: r.replicas.iter().map(|x| api::VolumeReplicaStatus { uuid: x.uuid.clone(), ..Default::default() }).collect(),
                allowed_hosts: r.allowed_hosts,
                endpoints: vec![self.nvme.clone()],
                ..Default::default()
            };
            st.volumes.insert(r.uuid, v.clone());
            v
        };
        Ok(Response::new(self.with_states(v)))
    }
    async fn destroy_volume(&self, r: Request<api::DestroyVolumeRequest>) -> R<api::DestroyVolumeResponse> {
        let r = r.into_inner();
        let mut st = self.st();
        st.calls.push(format!("DestroyVolume {}", r.uuid));
        st.volumes.remove(&r.uuid).map(|_| Response::new(api::DestroyVolumeResponse {})).ok_or_else(|| Status::not_found("no volume"))
    }
    async fn add_volume_replica(&self, _: Request<api::AddVolumeReplicaRequest>) -> R<api::Volume> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_volume_replica(&self, _: Request<api::RemoveVolumeReplicaRequest>) -> R<api::Volume> {
        Err(Status::unimplemented("fake"))
    }
    async fn resize_volume(&self, _: Request<api::ResizeVolumeRequest>) -> R<api::Volume> {
        Err(Status::unimplemented("fake"))
    }
    async fn set_volume_hosts(&self, r: Request<api::SetVolumeHostsRequest>) -> R<api::Volume> {
        let r = r.into_inner();
        let v = {
            let mut st = self.st();
            st.calls.push(format!("SetVolumeHosts {} {:?}", r.uuid, r.allowed_hosts));
            let v = st.volumes.get_mut(&r.uuid).ok_or_else(|| Status::not_found("no volume"))?;
            v.allowed_hosts = r.allowed_hosts;
            v.clone()
        };
        Ok(Response::new(self.with_states(v)))
    }
    async fn get_volume(&self, r: Request<api::GetVolumeRequest>) -> R<api::Volume> {
        let uuid = r.into_inner().uuid;
        let v = self.st().volumes.get(&uuid).cloned().ok_or_else(|| Status::not_found("no volume"))?;
        Ok(Response::new(self.with_states(v)))
    }
    async fn list_volumes(&self, _: Request<api::ListVolumesRequest>) -> R<api::ListVolumesResponse> {
        let vols: Vec<api::Volume> = self.st().volumes.values().cloned().collect();
        Ok(Response::new(api::ListVolumesResponse { volumes: vols.into_iter().map(|v| self.with_states(v)).collect() }))
    }
}

/// Starts a fake node on a free port; returns it and its API URL.
async fn fake_node(name: &str) -> (FakeNode, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = FakeNode { name: name.into(), nvme: format!("127.0.0.1:{}", 4420 + addr.port() % 1000), state: Default::default() };
    let svc = NodeServer::new(node.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream_listener(listener);
        let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
    });
    (node, format!("http://{addr}"))
}

fn tokio_stream_listener(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

fn operator_binary() -> std::path::PathBuf {
    let root = ferrite_e2e::workspace_root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "ferrite-operator", "--bin", "ferrite-operator"])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building ferrite-operator failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join("debug/ferrite-operator")
}

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(bed: &KubeBed, bin: &std::path::Path, n: u32) -> Operator {
    start_operator_with(bed, bin, n, &[])
}

fn start_operator_with(bed: &KubeBed, bin: &std::path::Path, n: u32, extra: &[String]) -> Operator {
    let log = std::fs::File::create(bed.dir().join(format!("operator-{n}.log"))).expect("log file");
    let child = Command::new(bin)
        .args(["--resync-secs", "1", "--lease-namespace", "default", "--identity"])
        .arg(format!("op-{n}"))
        .args(extra)
        .env("KUBECONFIG", bed.kubeconfig())
        .env("RUST_LOG", "info,ferrite_operator=debug,kube=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start operator");
    Operator(child)
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
        let pairs: Vec<&str> = rest.trim_end_matches('}').split(',').filter(|p| !p.is_empty()).collect();
        let same = pairs.len() == labels.len() && labels.iter().all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
        (n == name && same).then(|| value.parse().ok())?
    })
}

/// Waits until `GET /metrics` on `addr` has `name{labels}` satisfying `ok`; returns the value.
fn wait_metric(addr: std::net::SocketAddr, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool, secs: u64) -> f64 {
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
        assert!(std::time::Instant::now() < deadline, "{name}{labels:?} not as expected after {secs} s; last /metrics:\n{last}");
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
    let r = bed.wait_for(&format!("{kind}/{name} {path} = {want}"), Duration::from_secs(secs), || {
        last = jsonpath(bed, kind, name, path);
        (last == want).then_some(())
    });
    if let Err(e) = r {
        let log = std::fs::read_to_string(bed.dir().join("operator-1.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("{e}; last value {last:?}\noperator log tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_pools_and_volumes() {
    if !KubeBed::available() {
        eprintln!("skipped: the kube bed is not prepared (e2e/kube/prepare.sh)");
        return;
    }
    let (bed, bin) = tokio::task::spawn_blocking(|| {
        let bin = operator_binary();
        let bed = KubeBed::start().expect("start bed");
        bed.install_crds().expect("crds");
        (bed, bin)
    })
    .await
    .expect("setup");
    let (a, a_url) = fake_node("a").await;
    let (b, b_url) = fake_node("b").await;
    let bed = Arc::new(bed);
    let objects = format!(
        "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: a}}\nspec: {{apiEndpoint: '{a_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: b}}\nspec: {{apiEndpoint: '{b_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pa}}\nspec: {{node: a, disks: ['ram:256MiB']}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pb}}\nspec: {{node: b, disks: ['ram:256MiB']}}\n"
    );
    let bed2 = bed.clone();
    let a2 = a.clone();
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || {
        let bed = bed2;
        let r = bed.kubectl_stdin(&["apply", "-f", "-"], &objects).expect("kubectl");
        assert!(r.ok, "{}", r.stderr);
        let (margs, maddr) = metrics_args();
        let op = start_operator_with(&bed, &bin, 1, &margs);

        // Nodes and pools.
        wait_eq(&bed, "fnode", "a", "{.status.phase}", "Ready", 60);
        wait_eq(&bed, "fnode", "b", "{.status.hostNqn}", "nqn.2024-01.dev.ferrite:node-b", 30);
        wait_eq(&bed, "storagepool", "pa", "{.status.phase}", "Online", 30);
        wait_eq(&bed, "storagepool", "pb", "{.status.phase}", "Online", 30);

        // The metrics endpoint: pool reconciles counted, this instance leads, both pools
        // Online.
        assert_eq!(ferrite_e2e::cluster::http_get(maddr, "/healthz").expect("healthz"), (200, "ok\n".to_string()));
        wait_metric(maddr, "ferrite_operator_reconciles_total", &[("controller", "pool"), ("result", "ok")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_reconciles_total", &[("controller", "node"), ("result", "ok")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_reconcile_duration_seconds_count", &[("controller", "pool")], |v| v > 0.0, 10);
        wait_metric(maddr, "ferrite_operator_leader", &[], |v| v == 1.0, 10);
        wait_metric(maddr, "ferrite_operator_storage_pools", &[("phase", "Online")], |v| v == 2.0, 10);
        wait_metric(maddr, "ferrite_operator_storage_pools", &[("phase", "Pending")], |v| v == 0.0, 10);
        wait_eq(&bed, "storagepool", "pa", "{.status.capacityBytes}", &(256u64 << 20).to_string(), 10);
        wait_eq(&bed, "storagepool", "pa", "{.metadata.finalizers[0]}", "ferrite.dev/pool-protection", 10);

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
        let (tn, other) = if target == "a" { (&a2, &b2) } else { (&b2, &a2) };
        assert!(tn.st().volumes.contains_key(&uid), "target created on {target}");
        let other_calls = other.st().calls.join("\n");
        assert!(
            other_calls.contains(&format!("hosts=[\"nqn.2024-01.dev.ferrite:node-{target}\"]")),
            "remote replica exported to the target's host NQN:\n{other_calls}"
        );
        wait_eq(&bed, "storagepool", "pa", "{.status.provisionedBytes}", &((64u64 << 20) + (1 << 20)).to_string(), 20);

        // A replica faulted: Degraded, with an Event; healthy again: Online.
        let remote_uuid = uuids.split_whitespace().find(|u| other.st().replicas.contains_key(*u)).expect("remote replica").to_string();
        tn.st().faulted.insert(remote_uuid.clone());
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Degraded", 30);
        let events = bed.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "jsonpath={.items[*].reason}"]).expect("events");
        assert!(events.contains("VolumeDegraded"), "events: {events}");
        tn.st().faulted.clear();
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 30);

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
        // ... and reconciles: a fault shows up again.
        tn.st().faulted.insert(remote_uuid.clone());
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Degraded", 30);
        tn.st().faulted.clear();
        wait_eq(&bed, "volume", "vol-1", "{.status.state}", "Online", 30);

        // Deleting the volume removes everything from the nodes; then the pool goes too.
        let r = bed.kubectl(&["delete", "volume", "vol-1", "--timeout=60s"]).expect("kubectl");
        assert!(r.ok, "{}", r.stderr);
        for n in [&a2, &b2] {
            let st = n.st();
            assert!(st.volumes.is_empty() && st.replicas.is_empty(), "left on {}: {:?}", n.name, st.calls);
        }
        bed.wait_for("pool pa deleted", Duration::from_secs(60), || {
            bed.kubectl(&["get", "storagepool", "pa"]).ok().filter(|r| !r.ok)
        })
        .expect("pool deletion");
        assert!(a2.st().calls.iter().any(|c| c == "DestroyPool pa"));
        assert!(a2.st().pools.is_empty());
        drop(op);
    })
    .await
    .expect("test body");
}

/// Registers fake nodes `a` and `b` with a pool each and waits until the pools are Online.
fn register_nodes(bed: &KubeBed, a_url: &str, b_url: &str) {
    let objects = format!(
        "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: a}}\nspec: {{apiEndpoint: '{a_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: b}}\nspec: {{apiEndpoint: '{b_url}'}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pa}}\nspec: {{node: a, disks: ['ram:256MiB']}}\n---\n\
         apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: pb}}\nspec: {{node: b, disks: ['ram:256MiB']}}\n"
    );
    let r = bed.kubectl_stdin(&["apply", "-f", "-"], &objects).expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
}

/// The CSI Identity and Controller services of the operator over TCP, against the bed and
/// two fake nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_controller_service() {
    use ferrite_api::csi::v1 as csi;
    use ferrite_api::csi::v1::controller_client::ControllerClient;
    use ferrite_api::csi::v1::identity_client::IdentityClient;
    use ferrite_api::csi::v1::volume_capability::{AccessMode, AccessType, BlockVolume, access_mode::Mode};

    if !KubeBed::available() {
        eprintln!("skipped: the kube bed is not prepared (e2e/kube/prepare.sh)");
        return;
    }
    let (bed, bin) = tokio::task::spawn_blocking(|| {
        let bin = operator_binary();
        let bed = KubeBed::start().expect("start bed");
        bed.install_crds().expect("crds");
        (bed, bin)
    })
    .await
    .expect("setup");
    let (a, a_url) = fake_node("a").await;
    let (b, b_url) = fake_node("b").await;
    let port = ferrite_e2e::free_port().expect("port");
    let (mut args, maddr) = metrics_args();
    args.extend(["--csi-endpoint".into(), format!("tcp://127.0.0.1:{port}"), "--csi-wait-secs".into(), "20".into()]);
    let bed = Arc::new(bed);
    let bed2 = bed.clone();
    let op = tokio::task::spawn_blocking(move || {
        register_nodes(&bed2, &a_url, &b_url);
        let op = start_operator_with(&bed2, &bin, 1, &args);
        wait_eq(&bed2, "storagepool", "pa", "{.status.phase}", "Online", 60);
        wait_eq(&bed2, "storagepool", "pb", "{.status.phase}", "Online", 30);
        op
    })
    .await
    .expect("operator");
    let url = format!("http://127.0.0.1:{port}");
    let mut id = IdentityClient::connect(url.clone()).await.expect("identity");
    let info = id.get_plugin_info(csi::GetPluginInfoRequest {}).await.expect("info").into_inner();
    assert_eq!(info.name, "csi.ferrite.dev");
    assert_eq!(id.probe(csi::ProbeRequest {}).await.expect("probe").into_inner().ready, Some(true));
    let mut c = ControllerClient::connect(url).await.expect("controller");
    let caps = c.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.expect("caps").into_inner();
    let types: Vec<String> = caps.capabilities.iter().map(|c| format!("{:?}", c.r#type)).collect();
    assert_eq!(types.len(), 5, "{types:?}");
    assert!(types.iter().any(|t| t.contains("ExpandVolume")), "EXPAND_VOLUME must be advertised: {types:?}");

    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let create = |name: &str, bytes: i64, replicas: &str| csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![cap.clone()],
        parameters: [("replicas".to_string(), replicas.to_string())].into(),
        ..Default::default()
    };
    // The consumer's node (first preferred segment) gets the target.
    let mut first = create("pvc-0001", 64 << 20, "2");
    first.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![],
        preferred: vec![csi::Topology { segments: [("topology.ferrite.dev/node".to_string(), "b".to_string())].into() }],
    });
    let v = c.create_volume(first).await.expect("CreateVolume").into_inner();
    let bed3 = bed.clone();
    let target = tokio::task::spawn_blocking(move || jsonpath(&bed3, "volume", "pvc-0001", "{.status.targetNode}")).await.expect("target");
    assert_eq!(target, "b");
    let vol = v.volume.expect("volume");
    assert_eq!(vol.volume_id, "pvc-0001");
    assert_eq!(vol.capacity_bytes, 64 << 20);
    let ctx = vol.volume_context.clone();
    assert!(ctx["nqn"].starts_with("nqn.2024-01.dev.ferrite:volume-"), "{ctx:?}");
    assert!(!ctx["targets"].is_empty() && ctx["nsid"] == "1", "{ctx:?}");
    // Idempotent; a different size under the same name is refused.
    let again = c.create_volume(create("pvc-0001", 64 << 20, "2")).await.expect("again").into_inner();
    assert_eq!(again.volume.map(|v| v.volume_context), Some(ctx.clone()));
    let e = c.create_volume(create("pvc-0001", 128 << 20, "2")).await.expect_err("size change");
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    // Three replicas on two nodes cannot be placed.
    let e = c.create_volume(create("pvc-0002", 4096, "3")).await.expect_err("3 replicas");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let e = c.create_volume(create("pvc-0003", 4096, "7")).await.expect_err("7 replicas");
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
    let hosts = |n: &FakeNode| n.st().volumes.values().flat_map(|v| v.allowed_hosts.clone()).collect::<Vec<_>>();
    let mut all = hosts(&a);
    all.extend(hosts(&b));
    assert_eq!(all, vec![host.to_string()]);
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "pvc-0001".into(),
        node_id: host.into(),
        ..Default::default()
    })
    .await
    .expect("unpublish");
    assert!(hosts(&a).is_empty() && hosts(&b).is_empty());

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
    let l = c.list_volumes(csi::ListVolumesRequest { max_entries: 1, starting_token: String::new() }).await.expect("list").into_inner();
    assert_eq!((l.entries.len(), l.next_token.as_str()), (1, "1"));
    let cap_resp = c.get_capacity(csi::GetCapacityRequest::default()).await.expect("capacity").into_inner();
    assert_eq!(cap_resp.available_capacity, 512 << 20);
    let e = c.controller_expand_volume(csi::ControllerExpandVolumeRequest { volume_id: "pvc-0001".into(), ..Default::default() }).await.expect_err("expand");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "no capacity range: {e:?}");

    // Delete: the nodes are emptied; deleting again succeeds.
    for name in ["pvc-0001", "pvc-0002"] {
        c.delete_volume(csi::DeleteVolumeRequest { volume_id: name.into(), ..Default::default() }).await.expect("delete");
    }
    c.delete_volume(csi::DeleteVolumeRequest { volume_id: "pvc-0001".into(), ..Default::default() }).await.expect("delete again");
    for n in [&a, &b] {
        let st = n.st();
        assert!(st.volumes.is_empty() && st.replicas.is_empty(), "left on {}: {:?}", n.name, st.calls);
    }

    // Every CSI request was counted by method and gRPC code.
    tokio::task::spawn_blocking(move || {
        let csi = "ferrite_operator_csi_requests_total";
        wait_metric(maddr, csi, &[("method", "CreateVolume"), ("code", "OK")], |v| v >= 2.0, 5);
        wait_metric(maddr, csi, &[("method", "CreateVolume"), ("code", "AlreadyExists")], |v| v == 1.0, 5);
        wait_metric(maddr, csi, &[("method", "CreateVolume"), ("code", "InvalidArgument")], |v| v == 1.0, 5);
        wait_metric(maddr, csi, &[("method", "ValidateVolumeCapabilities"), ("code", "NotFound")], |v| v == 1.0, 5);
        wait_metric(maddr, csi, &[("method", "DeleteVolume"), ("code", "OK")], |v| v >= 3.0, 5);
        wait_metric(maddr, csi, &[("method", "Probe"), ("code", "OK")], |v| v == 1.0, 5);
    })
    .await
    .expect("CSI metrics");
    drop(op);
    drop(bed);
}
