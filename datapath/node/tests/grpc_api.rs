//! The node API end to end: two real `ferrite-datapath` processes driven through the
//! generated tonic client. Pools on sparse files, replicas (one exported to the other node),
//! a mirrored volume over a local and a remote replica, error codes, a restart from the state
//! file, clean-up, and the metrics families. The node API runs with mutual TLS, as the chart
//! runs it; clients without the CA's certificate get nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use ferrite_api::node::v1 as pb;
use ferrite_api::node::v1::node_client::NodeClient;
use ferrite_block::{BlockDevice, IoBuf};
use ferrite_host::{Controller, HostOptions, RemoteNamespace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

const RA: &str = "3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11";
const RB: &str = "0d3c2b1a-5e4f-4a6b-9c8d-7e6f5a4b3c2d";
const RX: &str = "11111111-2222-4333-8444-555555555555";
const RC: &str = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d";
const VOL: &str = "9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e";

/// The node API's TLS files (one CA per test process), written once into a folder.
fn tls_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferrite-grpc-api-tls-{}", std::process::id()));
        ferrite_api::tls::Pki::generate()
            .unwrap()
            .write_dir(&dir)
            .unwrap();
        dir
    })
}

/// A channel to the node API at `ip` with the test CA's client certificate.
async fn tls_channel(ip: &str) -> Result<Channel, tonic::transport::Error> {
    let pem = ferrite_api::tls::ClientPem::from_dir(tls_dir()).unwrap();
    tonic::transport::Endpoint::from_shared(format!("https://{ip}:9500"))?
        .tls_config(pem.tls())?
        .connect()
        .await
}

/// One datapath process; killed when dropped.
struct Datapath {
    child: Child,
    ip: &'static str,
}

impl Datapath {
    fn start(name: &str, ip: &'static str, dir: &Path) -> Datapath {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, format!("node: {{name: {name}}}\n")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferrite-datapath"))
            .args(["--config", config.to_str().unwrap()])
            .args(["--listen", &format!("{ip}:4420")])
            .args(["--grpc", &format!("{ip}:9500")])
            .args(["--grpc-tls-dir", tls_dir().to_str().unwrap()])
            .args(["--http", &format!("{ip}:9420")])
            .args([
                "--state-dir",
                dir.join(format!("{name}-state")).to_str().unwrap(),
            ])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Datapath { child, ip }
    }

    async fn client(&self) -> NodeClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tls_channel(self.ip).await {
                Ok(c) => return NodeClient::new(c),
                Err(e) if Instant::now() > deadline => {
                    panic!("node API on {} not up: {e}", self.ip)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "datapath exited with {s}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "datapath did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn metrics(&self) -> String {
        let addr: SocketAddr = format!("{}:9420", self.ip).parse().unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn disk(dir: &Path, name: &str) -> String {
    format!("file:{}:256MiB", dir.join(name).display())
}

fn pool_req(name: &str, disks: Vec<String>) -> pb::CreatePoolRequest {
    pb::CreatePoolRequest {
        name: name.into(),
        disks,
        stripe_size: 0,
        block_size: 0,
    }
}

fn replica_req(
    uuid: &str,
    pool: &str,
    size: u64,
    thin: bool,
    hosts: &[&str],
) -> pb::CreateReplicaRequest {
    pb::CreateReplicaRequest {
        uuid: uuid.into(),
        pool: pool.into(),
        size_bytes: size,
        thin,
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
    }
}

async fn wait_online(c: &mut NodeClient<Channel>, uuid: &str) -> pb::Volume {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c
            .get_volume(pb::GetVolumeRequest { uuid: uuid.into() })
            .await
            .unwrap()
            .into_inner();
        if v.state == pb::VolumeState::Online as i32 {
            return v;
        }
        assert!(Instant::now() < deadline, "volume never came online: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Connects to the volume as `HOST` and returns its namespace.
async fn open_volume(ip: &str) -> (Arc<Controller>, RemoteNamespace) {
    let opts = HostOptions {
        hostnqn: HOST.into(),
        ..HostOptions::default()
    };
    let addr: SocketAddr = format!("{ip}:4420").parse().unwrap();
    let ctrl = Arc::new(
        Controller::connect(addr, &format!("nqn.2024-01.dev.ferrite:volume-{VOL}"), opts)
            .await
            .unwrap(),
    );
    let ns = RemoteNamespace::new(ctrl.clone(), 1).await.unwrap();
    (ctrl, ns)
}

fn pattern() -> Vec<u8> {
    (0..64 * 1024).map(|i| (i * 7 + 3) as u8).collect()
}

fn state_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-state")).join("node-state.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_pools_replicas_volumes_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Datapath::start("a", "127.0.91.1", dir);
    let b = Datapath::start("b", "127.0.91.2", dir);
    let mut ca = a.client().await;
    let mut cb = b.client().await;

    let info = ca
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "a");
    assert_eq!(info.host_nqn, "nqn.2024-01.dev.ferrite:node-a");
    assert_eq!(info.nvme_endpoints, vec!["127.0.91.1:4420".to_string()]);
    assert!(!info.version.is_empty());

    // Pools: idempotent by name; another spec under the same name is refused.
    let disks_a = vec![disk(dir, "a0.img"), disk(dir, "a1.img")];
    let pa = ca
        .create_pool(pool_req("pa", disks_a.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(pa.capacity_bytes > 400 << 20, "{pa:?}");
    assert_eq!(pa.state, pb::PoolState::Online as i32);
    let again = ca
        .create_pool(pool_req("pa", disks_a.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.uuid, pa.uuid);
    assert_eq!(
        code(
            ca.create_pool(pool_req("pa", vec![disk(dir, "other.img")]))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            ca.create_pool(pool_req("Bad_Name", vec![disk(dir, "x.img")]))
                .await
        ),
        Code::InvalidArgument
    );
    cb.create_pool(pool_req("pb", vec![disk(dir, "b0.img")]))
        .await
        .unwrap();

    // Replicas: idempotent by UUID; no space, unknown pool, other spec.
    let size = 65 << 20;
    let ra = ca
        .create_replica(replica_req(RA, "pa", size, true, &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ra.size_bytes, ra.nqn.as_str()), (size, ""));
    ca.create_replica(replica_req(RA, "pa", size, true, &[]))
        .await
        .unwrap();
    assert_eq!(
        code(
            ca.create_replica(replica_req(RA, "pa", 2 * size, true, &[]))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            ca.create_replica(replica_req(RX, "pa", 10 << 30, false, &[]))
                .await
        ),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(
            ca.create_replica(replica_req(RX, "pa", 10 << 30, true, &[]))
                .await
        ),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(
            ca.create_replica(replica_req(RX, "nope", size, true, &[]))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ca.create_replica(replica_req("not-a-uuid", "pa", size, true, &[]))
                .await
        ),
        Code::InvalidArgument
    );

    let rb = cb
        .create_replica(replica_req(
            RB,
            "pb",
            size,
            true,
            &["nqn.2024-01.dev.ferrite:node-x"],
        ))
        .await
        .unwrap();
    assert_eq!(
        rb.into_inner().nqn,
        format!("nqn.2024-01.dev.ferrite:replica-{RB}")
    );
    let rb = cb
        .export_replica(pb::ExportReplicaRequest {
            uuid: RB.into(),
            allowed_hosts: vec![info.host_nqn.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rb.allowed_hosts, vec![info.host_nqn.clone()]);

    // A volume on a over its local replica and b's.
    let create = pb::CreateVolumeRequest {
        uuid: VOL.into(),
        nqn: String::new(),
        replicas: vec![
            pb::VolumeReplica {
                uuid: RA.into(),
                address: String::new(),
                nqn: String::new(),
            },
            pb::VolumeReplica {
                uuid: RB.into(),
                address: "127.0.91.2:4420".into(),
                nqn: String::new(),
            },
        ],
        allowed_hosts: vec![],
    };
    let v = ca.create_volume(create.clone()).await.unwrap().into_inner();
    assert_eq!(v.nqn, format!("nqn.2024-01.dev.ferrite:volume-{VOL}"));
    let v = wait_online(&mut ca, VOL).await;
    assert_eq!(v.size_bytes, 64 << 20);
    assert_eq!(v.endpoints, vec!["127.0.91.1:4420".to_string()]);
    ca.create_volume(create.clone()).await.unwrap();
    let mut other = create.clone();
    other.replicas.truncate(1);
    assert_eq!(code(ca.create_volume(other).await), Code::AlreadyExists);

    let v = ca
        .set_volume_hosts(pb::SetVolumeHostsRequest {
            uuid: VOL.into(),
            allowed_hosts: vec![HOST.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.allowed_hosts, vec![HOST.to_string()]);
    let list = ca
        .list_volumes(pb::ListVolumesRequest {})
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].replicas.len(), 2);
    assert!(
        list[0]
            .replicas
            .iter()
            .all(|r| r.state == pb::ReplicaState::Healthy as i32 && r.in_sync),
        "{list:?}"
    );

    // Data written through the volume survives the restart below.
    let (ctrl, ns) = open_volume("127.0.91.1").await;
    ns.write(100, IoBuf::from_slice(&pattern()), false)
        .await
        .unwrap();
    ns.flush().await.unwrap();
    drop(ns);
    let _ = ctrl.disconnect().await;

    // The replicas compared through the node API (the HTTP endpoint no longer offers it).
    let cmp = ca
        .compare_volume(pb::CompareVolumeRequest { uuid: VOL.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(cmp.identical, "{cmp:?}");
    assert_eq!(cmp.pairs.len(), 1);
    assert!(
        cmp.pairs[0].bytes_compared > 0 && cmp.pairs[0].differing.is_empty(),
        "{cmp:?}"
    );
    assert_eq!(
        code(
            ca.compare_volume(pb::CompareVolumeRequest { uuid: RX.into() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ca.compare_volume(pb::CompareVolumeRequest { uuid: "x".into() })
                .await
        ),
        Code::InvalidArgument
    );

    // In use: refused.
    assert_eq!(
        code(
            ca.destroy_pool(pb::DestroyPoolRequest { name: "pa".into() })
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            ca.destroy_replica(pb::DestroyReplicaRequest { uuid: RA.into() })
                .await
        ),
        Code::FailedPrecondition
    );

    let m = a.metrics().await;
    for family in [
        "ferrite_pool_capacity_bytes{pool=\"pa\"}",
        "ferrite_pool_used_bytes",
        "ferrite_pool_free_bytes",
        "ferrite_replica_allocated_bytes",
        &format!("ferrite_volume_state{{volume=\"{VOL}\",state=\"online\"}} 1"),
        &format!(
            "ferrite_volume_replica_state{{volume=\"{VOL}\",replica=\"{RB}\",state=\"healthy\"}} 1"
        ),
        "ferrite_volume_replica_rebuild_bytes_done",
        "ferrite_volume_replica_rebuild_bytes_total",
        "ferrite_volume_rebuilt_bytes_total",
        "ferrite_volume_ops_total",
    ] {
        assert!(m.contains(family), "{family} missing from\n{m}");
    }

    // Restart a: everything comes back from the state file.
    assert!(
        std::fs::read_to_string(state_file(dir, "a"))
            .unwrap()
            .contains(VOL)
    );
    drop(ca);
    a.stop();
    let a = Datapath::start("a", "127.0.91.1", dir);
    let mut ca = a.client().await;
    let pools = ca
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(
        pools.iter().map(|p| p.uuid.as_str()).collect::<Vec<_>>(),
        vec![pa.uuid.as_str()]
    );
    let replicas = ca
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .unwrap()
        .into_inner()
        .replicas;
    assert_eq!(
        replicas.iter().map(|r| r.uuid.as_str()).collect::<Vec<_>>(),
        vec![RA]
    );
    let v = wait_online(&mut ca, VOL).await;
    assert_eq!(v.allowed_hosts, vec![HOST.to_string()]);
    assert_eq!(v.replicas.len(), 2);
    let (ctrl, ns) = open_volume("127.0.91.1").await;
    let back = ns.read(100, 16).await.unwrap();
    assert!(back[..] == pattern()[..], "data lost across the restart");
    drop(ns);
    let _ = ctrl.disconnect().await;

    // A third replica joins (full rebuild) and leaves again; both idempotent.
    cb.create_replica(replica_req(RC, "pb", size, true, &[info.host_nqn.as_str()]))
        .await
        .unwrap();
    let third = pb::VolumeReplica {
        uuid: RC.into(),
        address: "127.0.91.2:4420".into(),
        nqn: String::new(),
    };
    for _ in 0..2 {
        let add = pb::AddVolumeReplicaRequest {
            uuid: VOL.into(),
            replica: Some(third.clone()),
        };
        ca.add_volume_replica(add).await.unwrap();
    }
    let v = wait_online(&mut ca, VOL).await;
    assert_eq!(v.replicas.len(), 3, "{v:?}");
    let rc = v.replicas.iter().find(|r| r.uuid == RC).unwrap();
    let last = rc
        .last_rebuild
        .as_ref()
        .expect("the new replica was rebuilt");
    assert_eq!((last.kind.as_str(), last.bytes_done), ("full", 64 << 20));
    let m = a.metrics().await;
    assert!(
        m.contains(&format!(
            "ferrite_volume_rebuilt_bytes_total{{volume=\"{VOL}\"}} {}",
            64 << 20
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "ferrite_volume_replica_rebuild_bytes_done{{volume=\"{VOL}\",replica=\"{RC}\"}} {}",
            64 << 20
        )),
        "{m}"
    );
    for _ in 0..2 {
        let rm = pb::RemoveVolumeReplicaRequest {
            uuid: VOL.into(),
            replica_uuid: RC.into(),
        };
        let v = ca.remove_volume_replica(rm).await.unwrap().into_inner();
        assert_eq!(v.replicas.len(), 2);
    }
    assert!(
        !std::fs::read_to_string(state_file(dir, "a"))
            .unwrap()
            .contains(RC)
    );
    cb.destroy_replica(pb::DestroyReplicaRequest { uuid: RC.into() })
        .await
        .unwrap();

    // Volume growth: the replicas grow first (on their own nodes), then the volume; a host
    // that re-reads Identify sees the new size and can use the new blocks.
    let (ctrl, ns) = open_volume("127.0.91.1").await;
    assert_eq!(ns.size_bytes(), 64 << 20);
    let grow = |size: u64| pb::ResizeVolumeRequest {
        uuid: VOL.into(),
        size_bytes: size,
    };
    assert_eq!(
        code(ca.resize_volume(grow(96 << 20)).await),
        Code::FailedPrecondition,
        "replicas not grown yet"
    );
    ca.resize_replica(pb::ResizeReplicaRequest {
        uuid: RA.into(),
        size_bytes: 97 << 20,
    })
    .await
    .unwrap();
    assert_eq!(
        code(ca.resize_volume(grow(96 << 20)).await),
        Code::FailedPrecondition,
        "b's replica not grown yet"
    );
    cb.resize_replica(pb::ResizeReplicaRequest {
        uuid: RB.into(),
        size_bytes: 97 << 20,
    })
    .await
    .unwrap();
    assert_eq!(
        code(ca.resize_volume(grow(32 << 20)).await),
        Code::InvalidArgument,
        "shrink"
    );
    assert_eq!(
        code(ca.resize_volume(grow((96 << 20) + 512)).await),
        Code::InvalidArgument,
        "misaligned"
    );
    for _ in 0..2 {
        let v = ca.resize_volume(grow(96 << 20)).await.unwrap().into_inner();
        assert_eq!(v.size_bytes, 96 << 20);
    }
    assert_eq!(ns.refresh_size().await.unwrap(), 96 << 20);
    let tail = ns.num_blocks() - 16;
    ns.write(tail, IoBuf::from_slice(&pattern()), true)
        .await
        .unwrap();
    assert!(ns.read(tail, 16).await.unwrap()[..] == pattern()[..]);
    assert!(
        ns.read(100, 16).await.unwrap()[..] == pattern()[..],
        "old data intact"
    );
    drop(ns);
    let _ = ctrl.disconnect().await;

    // Resize: grows, never shrinks.
    ca.create_replica(replica_req(RX, "pa", 8 << 20, true, &[]))
        .await
        .unwrap();
    let r = ca
        .resize_replica(pb::ResizeReplicaRequest {
            uuid: RX.into(),
            size_bytes: 16 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.size_bytes, 16 << 20);
    assert_eq!(
        code(
            ca.resize_replica(pb::ResizeReplicaRequest {
                uuid: RX.into(),
                size_bytes: 4 << 20
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ca.resize_replica(pb::ResizeReplicaRequest {
                uuid: RC.into(),
                size_bytes: 4 << 20
            })
            .await
        ),
        Code::NotFound
    );
    ca.destroy_replica(pb::DestroyReplicaRequest { uuid: RX.into() })
        .await
        .unwrap();
    // A thick replica cannot grow past the pool's free space; nothing changes.
    ca.create_replica(replica_req(RX, "pa", 8 << 20, false, &[]))
        .await
        .unwrap();
    assert_eq!(
        code(
            ca.resize_replica(pb::ResizeReplicaRequest {
                uuid: RX.into(),
                size_bytes: 10 << 30
            })
            .await
        ),
        Code::ResourceExhausted
    );
    let rx = ca
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .unwrap()
        .into_inner()
        .replicas;
    assert_eq!(
        rx.iter().find(|r| r.uuid == RX).map(|r| r.size_bytes),
        Some(8 << 20),
        "{rx:?}"
    );
    ca.destroy_replica(pb::DestroyReplicaRequest { uuid: RX.into() })
        .await
        .unwrap();

    // Clean-up, each call twice (idempotent).
    for _ in 0..2 {
        ca.destroy_volume(pb::DestroyVolumeRequest { uuid: VOL.into() })
            .await
            .unwrap();
    }
    assert_eq!(
        code(
            ca.get_volume(pb::GetVolumeRequest { uuid: VOL.into() })
                .await
        ),
        Code::NotFound
    );
    for _ in 0..2 {
        ca.destroy_replica(pb::DestroyReplicaRequest { uuid: RA.into() })
            .await
            .unwrap();
        ca.destroy_pool(pb::DestroyPoolRequest { name: "pa".into() })
            .await
            .unwrap();
        cb.destroy_replica(pb::DestroyReplicaRequest { uuid: RB.into() })
            .await
            .unwrap();
        cb.destroy_pool(pb::DestroyPoolRequest { name: "pb".into() })
            .await
            .unwrap();
    }
    assert!(
        ca.list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pools
            .is_empty()
    );
    assert!(
        !std::fs::read_to_string(state_file(dir, "a"))
            .unwrap()
            .contains("pa")
    );
    // The disks are blank again: a new pool can be created on them.
    let again = ca
        .create_pool(pool_req("pa2", disks_a))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.uuid, pa.uuid);
    assert!(
        ca.list_replicas(pb::ListReplicasRequest {})
            .await
            .unwrap()
            .into_inner()
            .replicas
            .is_empty()
    );
    drop(ca);
    drop(cb);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_is_pending_until_its_remote_replica_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Datapath::start("a", "127.0.92.1", dir);
    let mut ca = a.client().await;
    ca.create_pool(pool_req("pa", vec![disk(dir, "a0.img")]))
        .await
        .unwrap();
    ca.create_replica(replica_req(RA, "pa", 65 << 20, true, &[]))
        .await
        .unwrap();
    let create = pb::CreateVolumeRequest {
        uuid: VOL.into(),
        nqn: String::new(),
        replicas: vec![
            pb::VolumeReplica {
                uuid: RA.into(),
                address: String::new(),
                nqn: String::new(),
            },
            pb::VolumeReplica {
                uuid: RB.into(),
                address: "127.0.92.2:4420".into(),
                nqn: String::new(),
            },
        ],
        allowed_hosts: vec![],
    };
    let started = Instant::now();
    let v = ca.create_volume(create).await.unwrap().into_inner();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(v.state, pb::VolumeState::Pending as i32, "{v:?}");
    assert!(!v.message.is_empty());

    // Node b appears with the replica: the volume comes online by itself.
    let b = Datapath::start("b", "127.0.92.2", dir);
    let mut cb = b.client().await;
    cb.create_pool(pool_req("pb", vec![disk(dir, "b0.img")]))
        .await
        .unwrap();
    cb.create_replica(replica_req(
        RB,
        "pb",
        65 << 20,
        true,
        &["nqn.2024-01.dev.ferrite:node-a"],
    ))
    .await
    .unwrap();
    wait_online(&mut ca, VOL).await;
    ca.destroy_volume(pb::DestroyVolumeRequest { uuid: VOL.into() })
        .await
        .unwrap();
    drop((ca, cb));
    a.stop();
    b.stop();
}

#[test]
fn conflicting_state_file_is_a_clear_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "node: {{name: a}}\npools:\n  - name: pa\n    disks: [\"{}\"]\n",
            disk(dir, "a0.img")
        ),
    )
    .unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("node-state.yaml"),
        format!(
            "pools:\n  - name: pa\n    disks: [\"{}\"]\n",
            disk(dir, "x.img")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite-datapath"))
        .args(["--config", config.to_str().unwrap()])
        .args([
            "--listen",
            "127.0.93.7:4420",
            "--grpc",
            "127.0.93.7:9500",
            "--grpc-insecure",
        ])
        .args(["--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool \"pa\" is in both the configuration and the state file"),
        "{err}"
    );
}

/// Whether ListPools is answered over TLS with `tls` (the node of
/// `node_api_refuses_unauthenticated_clients`).
async fn served_over(tls: tonic::transport::ClientTlsConfig) -> bool {
    let call = async {
        let ch = tonic::transport::Endpoint::from_static("https://127.0.93.11:9500")
            .tls_config(tls)?
            .connect()
            .await?;
        NodeClient::new(ch)
            .list_pools(pb::ListPoolsRequest {})
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    call.await.is_ok()
}

/// The node API refuses every client that does not hold a certificate of its CA: plain
/// HTTP/2, TLS without a client certificate, and a certificate of another CA. Without TLS
/// files the datapath does not start unless told to serve without authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_refuses_unauthenticated_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Datapath::start("a", "127.0.93.11", tmp.path());
    let mut c = a.client().await;
    c.list_pools(pb::ListPoolsRequest {})
        .await
        .expect("the CA's client is served");

    // Plain HTTP/2: the handshake never completes, no call is served.
    let plain = NodeClient::connect("http://127.0.93.11:9500".to_string()).await;
    if let Ok(mut p) = plain {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            p.list_pools(pb::ListPoolsRequest {}),
        )
        .await;
        assert!(!matches!(r, Ok(Ok(_))), "a plaintext client was served");
    }
    // TLS that trusts the node but presents no client certificate.
    let pem = ferrite_api::tls::ClientPem::from_dir(tls_dir()).unwrap();
    let anonymous = tonic::transport::ClientTlsConfig::new()
        .domain_name(ferrite_api::tls::NODE_SERVER_NAME)
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem.ca_cert));
    assert!(
        !served_over(anonymous).await,
        "a client without a certificate was served"
    );
    // A certificate of another CA (which also does not trust this node's certificate).
    let rogue = ferrite_api::tls::Pki::generate().unwrap().client();
    assert!(
        !served_over(rogue.tls()).await,
        "a client of another CA was served"
    );
    // A client that trusts the node's CA but holds another CA's certificate.
    let forged = ferrite_api::tls::ClientPem {
        ca_cert: pem.ca_cert.clone(),
        ..rogue
    };
    assert!(
        !served_over(forged.tls()).await,
        "a client certificate of another CA was accepted"
    );
    c.list_pools(pb::ListPoolsRequest {})
        .await
        .expect("still serving");

    // --grpc without TLS files or --grpc-insecure: refused at start, nothing served.
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite-datapath"))
        .args([
            "--grpc",
            "127.0.93.12:9500",
            "--state-dir",
            tmp.path().join("s").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--grpc-tls-dir"), "{err}");
}
