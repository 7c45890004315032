//! The Linux kernel initiator (QEMU guest) on a mirrored volume that grows online: two
//! `ferrite-datapath` processes set up through the node API (pools, a replica on each, node
//! a's volume mirroring its replica and b's, exported to the guest's host NQN). The guest
//! mounts ext4 and prints a marker; the test grows both replicas (`ResizeReplica`) and then
//! the volume (`ResizeVolume`). The guest must see the larger device (the target's namespace
//! change event), grow ext4 online with resize2fs and store more than the old filesystem
//! could hold (`e2e/qemu/guest/ferrite-grow.sh`). Afterwards the replicas compare identical
//! over the new size.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_api::node::v1 as pb;
use ferrite_e2e::api_node::node_api_client;
use ferrite_e2e::cluster::Node;
use ferrite_e2e::{free_port, workspace_root};

const VOLUME: &str = "00000000-0000-4000-8000-00000000f001";
const REPLICA_A: &str = "00000000-0000-4000-8000-0000000000fa";
const REPLICA_B: &str = "00000000-0000-4000-8000-0000000000fb";
const GUEST_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6b0c1d4e-8f3a-4c2b-9e5d-7a1f0c3b2d4e";
const MIB: u64 = 1 << 20;
/// The volume before and after growing (each replica holds 1 MiB more: the mirror's labels).
const OLD_SIZE: u64 = 64 * MIB;
const NEW_SIZE: u64 = 192 * MIB;

fn pool(name: &str, disk: String) -> pb::CreatePoolRequest {
    pb::CreatePoolRequest {
        name: name.into(),
        disks: vec![disk],
        stripe_size: 0,
        block_size: 0,
    }
}

fn replica(uuid: &str, pool: &str, hosts: Vec<String>) -> pb::CreateReplicaRequest {
    pb::CreateReplicaRequest {
        uuid: uuid.into(),
        pool: pool.into(),
        size_bytes: OLD_SIZE + MIB,
        thin: true,
        allowed_hosts: hosts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_initiator_sees_a_mirrored_volume_grow_online() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = Node::new(
        "a",
        "127.0.0.1".parse().expect("ip"),
        dir.path().to_path_buf(),
    );
    a.nvme_port = free_port().expect("port");
    a.http_port = free_port().expect("port");
    a.grpc_port = free_port().expect("port");
    let mut b = Node::new(
        "b",
        "127.0.22.2".parse().expect("ip"),
        dir.path().to_path_buf(),
    );
    for n in [&a, &b] {
        n.write_config("").expect("config");
    }
    a.start().expect("start a");
    b.start().expect("start b");
    let (mut ca, mut cb) = (
        node_api_client(&a.api_url()).await,
        node_api_client(&b.api_url()).await,
    );

    ca.create_pool(pool("pa", a.disk(0, "512MiB")))
        .await
        .expect("pool a");
    cb.create_pool(pool("pb", b.disk(0, "512MiB")))
        .await
        .expect("pool b");
    ca.create_replica(replica(REPLICA_A, "pa", vec![]))
        .await
        .expect("replica a");
    cb.create_replica(replica(REPLICA_B, "pb", vec![a.hostnqn()]))
        .await
        .expect("replica b");
    ca.create_volume(pb::CreateVolumeRequest {
        uuid: VOLUME.into(),
        nqn: String::new(),
        replicas: vec![
            pb::VolumeReplica {
                uuid: REPLICA_A.into(),
                address: String::new(),
                nqn: String::new(),
            },
            pb::VolumeReplica {
                uuid: REPLICA_B.into(),
                address: b.nvme_addr().to_string(),
                nqn: String::new(),
            },
        ],
        allowed_hosts: vec![GUEST_HOSTNQN.into()],
    })
    .await
    .expect("volume");
    // (Blocking the test's runtime briefly is fine: the nodes are other processes.)
    a.wait_volume(VOLUME, Duration::from_secs(30), "online", |v| {
        v["state"] == "Online"
    })
    .expect("volume online");

    // Boot the guest; watch its console for the marker, then grow the volume.
    let log = dir.path().join("guest.log");
    let qemu = workspace_root().join("e2e").join("qemu");
    let prep = Command::new("bash")
        .arg(qemu.join("prepare.sh"))
        .status()
        .expect("prepare.sh runs");
    assert!(prep.success(), "e2e/qemu/prepare.sh failed");
    let mut guest = Command::new("bash")
        .arg(qemu.join("run-guest.sh"))
        .arg(qemu.join("guest").join("ferrite-grow.sh"))
        .arg("600")
        .arg("FERRITE_ADDR=10.0.2.2")
        .arg(format!("FERRITE_PORT={}", a.nvme_port))
        .arg(format!(
            "FERRITE_NQN=nqn.2024-01.dev.ferrite:volume-{VOLUME}"
        ))
        .env("FERRITE_QEMU_LOG", &log)
        .env("FERRITE_GUEST_HOSTNQN", GUEST_HOSTNQN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-guest.sh starts");

    let deadline = Instant::now() + Duration::from_secs(400);
    let mut grown = None;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!("FERRITE-GROW: READY {OLD_SIZE}")) {
            ca.resize_replica(pb::ResizeReplicaRequest {
                uuid: REPLICA_A.into(),
                size_bytes: NEW_SIZE + MIB,
            })
            .await
            .expect("grow replica a");
            cb.resize_replica(pb::ResizeReplicaRequest {
                uuid: REPLICA_B.into(),
                size_bytes: NEW_SIZE + MIB,
            })
            .await
            .expect("grow replica b");
            let v = ca
                .resize_volume(pb::ResizeVolumeRequest {
                    uuid: VOLUME.into(),
                    size_bytes: NEW_SIZE,
                })
                .await
                .expect("grow the volume")
                .into_inner();
            grown = Some(v.size_bytes);
            break;
        }
        if text.contains("FERRITE-GUEST-RESULT") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = guest.wait().expect("guest finishes");
        let mut out = String::new();
        if let Some(mut o) = guest.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        (status, out)
    })
    .await
    .expect("join");
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{}\n--- console ---\n{console}", status.1);
    assert_eq!(
        grown,
        Some(NEW_SIZE),
        "the guest never got ready, or the volume did not grow"
    );
    assert!(
        console.contains("FERRITE-GROW: WROTE"),
        "the guest did not use the new space"
    );
    assert!(
        status.0.success() && console.contains("FERRITE-GUEST-RESULT: PASS"),
        "the guest script failed"
    );

    let report = a.compare(VOLUME).await.expect("compare");
    assert!(report.identical, "{report:?}");
    assert_eq!(report.pairs[0].bytes_compared, NEW_SIZE, "{report:?}");
    drop((ca, cb));
    assert_eq!(a.stop().expect("stop a"), 0);
    assert_eq!(b.stop().expect("stop b"), 0);
}
