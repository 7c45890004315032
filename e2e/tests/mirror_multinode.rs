//! Mirrored volumes across datapath processes, with real faults: a replica's process killed
//! with SIGKILL, a replica's network link cut, and a replica replaced by a brand-new one. A
//! verifying workload runs through the Rust NVMe/TCP host the whole time and must see zero
//! I/O errors and zero verification failures; afterwards the replicas compare identical.
//!
//! Node A serves the volume (a mirror over its local replica and node B's); node C holds a
//! spare replica. Each test uses its own 127.0.N.x addresses so tests can run in parallel.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_e2e::cluster::{NetNs, Node};
use ferrite_e2e::workload;

const VOLUME: &str = "00000000-0000-4000-8000-00000000f001";
const REPLICA_A: &str = "00000000-0000-4000-8000-0000000000a1";
const REPLICA_B: &str = "00000000-0000-4000-8000-0000000000b1";
const REPLICA_C: &str = "00000000-0000-4000-8000-0000000000c1";
/// Replica size: the 64 MiB volume plus the mirror's 1 MiB label reserve.
const REPLICA_SIZE: &str = "65MiB";
const VOLUME_BYTES: u64 = 64 << 20;
const REGION: u64 = 1 << 20;
/// The workload spreads over the first 32 MiB, then narrows to 8 MiB while a replica is
/// away, so a partial rebuild has at most 8 dirty regions (plus any in flight at the fault).
const WORKLOAD_LBAS: u64 = (32 << 20) / 4096;
const DEGRADED_LBAS: u64 = (8 << 20) / 4096;

fn replica_node_config(node: &Node, replica: &str, mirror_host: &Node) -> String {
    format!(
        "pools:\n  - name: pool-{n}\n    disks: [\"{d0}\", \"{d1}\"]\nreplicas:\n  - uuid: {replica}\n    pool: pool-{n}\n    size: {REPLICA_SIZE}\n    export: {{allow_hosts: [{h}]}}\n",
        n = node.name,
        d0 = node.disk(0, "128MiB"),
        d1 = node.disk(1, "128MiB"),
        h = mirror_host.hostnqn(),
    )
}

fn mirror_node_config(a: &Node, remotes: &[(&str, &Node)]) -> String {
    let mut s = format!(
        "pools:\n  - name: pool-{n}\n    disks: [\"{d0}\"]\nreplicas:\n  - uuid: {REPLICA_A}\n    pool: pool-{n}\n    size: {REPLICA_SIZE}\nvolumes:\n  - uuid: {VOLUME}\n    replicas:\n      - uuid: {REPLICA_A}\n",
        n = a.name,
        d0 = a.disk(0, "256MiB"),
    );
    for (uuid, node) in remotes {
        s.push_str(&format!(
            "      - uuid: {uuid}\n        address: {}\n",
            node.nvme_addr()
        ));
    }
    s
}

struct Cluster {
    a: Node,
    b: Node,
    c: Node,
    _dir: tempfile::TempDir,
}

fn cluster(net: u8) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ip = |h: u8| -> IpAddr { format!("127.0.{net}.{h}").parse().expect("ip") };
    let a = Node::new("a", ip(1), dir.path().to_path_buf());
    let b = Node::new("b", ip(2), dir.path().to_path_buf());
    let c = Node::new("c", ip(3), dir.path().to_path_buf());
    Cluster { a, b, c, _dir: dir }
}

fn replica_state<'a>(vol: &'a serde_json::Value, uuid: &str) -> &'a serde_json::Value {
    vol["replicas"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["uuid"] == uuid))
        .unwrap_or(&serde_json::Value::Null)
}

fn online(v: &serde_json::Value) -> bool {
    v["state"] == "Online"
        && v["replicas"].as_array().is_some_and(|r| {
            r.iter()
                .all(|x| x["in_sync"] == true && x["state"] == "Healthy")
        })
}

fn nqn() -> String {
    format!("nqn.2024-01.dev.ferrite:volume-{VOLUME}")
}

/// Starts the workload on A's volume; returns the stop flag and the join handle.
struct Workload {
    stop: Arc<AtomicBool>,
    range: Arc<AtomicU64>,
    ctrl: Arc<ferrite_host::Controller>,
    handle: tokio::task::JoinHandle<workload::Report>,
}

async fn start_workload(a: &Node) -> Workload {
    let ctrl = workload::connect(a.nvme_addr(), &nqn())
        .await
        .expect("host connects to the volume");
    let stop = Arc::new(AtomicBool::new(false));
    let range = Arc::new(AtomicU64::new(WORKLOAD_LBAS));
    let handle = tokio::spawn(workload::run(
        ctrl.clone(),
        1,
        range.clone(),
        4,
        stop.clone(),
    ));
    Workload {
        stop,
        range,
        ctrl,
        handle,
    }
}

impl Workload {
    fn narrow(&self) {
        self.range.store(DEGRADED_LBAS, Ordering::Relaxed);
    }

    async fn finish(self) -> (Arc<ferrite_host::Controller>, workload::Report) {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.handle.await.expect("workload task");
        println!(
            "workload: {} writes, {} reads, {} flushes",
            report.writes, report.reads, report.flushes
        );
        (self.ctrl, report)
    }
}

fn assert_clean(r: &workload::Report) {
    assert!(r.writes > 100, "workload wrote only {} blocks", r.writes);
    assert!(
        r.io_errors.is_empty(),
        "{} I/O errors seen by the host, first: {:?}",
        r.io_errors.len(),
        r.io_errors.first()
    );
    assert!(
        r.verify_failures.is_empty(),
        "{} verify failures, first: {:?}",
        r.verify_failures.len(),
        r.verify_failures.first()
    );
}

/// A partial rebuild copies exactly the dirty regions: those written since the last flush
/// that completed before the fault (the replica may have lost them) and while it was away.
/// So it is bounded by the regions the workload wrote from that flush on, and is less than
/// the whole volume.
fn assert_partial_bound(rb: &serde_json::Value, report: &workload::Report, fault_at: Instant) {
    let copied = rb["bytes_copied"].as_u64().expect("bytes_copied");
    let since = report.last_flush_before(fault_at).unwrap_or(fault_at);
    let bound = report.regions_written_since(since, REGION).len() as u64 * REGION;
    assert!(copied >= REGION, "a partial rebuild copied {copied} bytes");
    assert!(
        copied <= bound,
        "copied {copied} bytes but only {bound} bytes of regions were written since the last flush before the fault"
    );
    assert!(copied < VOLUME_BYTES, "copied the whole volume");
    println!(
        "partial rebuild copied {copied} bytes (at most {} regions were written since the last flush before the fault)",
        bound / REGION
    );
}

async fn assert_identical(a: &Node) {
    let t = Instant::now();
    let report = a.compare(VOLUME).await.expect("compare");
    assert!(report.identical, "replicas differ: {report:?}");
    println!("compare: identical in {:?}", t.elapsed());
}

async fn final_verify(ctrl: &ferrite_host::Controller, report: &workload::Report) {
    let t = Instant::now();
    // Twice: reads alternate between replicas.
    for _ in 0..2 {
        let failures = workload::verify_all(ctrl, 1, &report.model).await;
        assert!(
            failures.is_empty(),
            "{} blocks wrong after recovery, first: {:?}",
            failures.len(),
            failures.first()
        );
    }
    println!(
        "verified {} blocks twice in {:?}",
        report.model.len(),
        t.elapsed()
    );
}

/// Writes A's and B's configs (a volume on A over A's replica and B's), starts B then A and
/// waits for the volume to be online.
fn start_a_mirroring_b(k: &mut Cluster) {
    k.b.write_config(&replica_node_config(&k.b, REPLICA_B, &k.a))
        .unwrap();
    k.a.write_config(&mirror_node_config(&k.a, &[(REPLICA_B, &k.b)]))
        .unwrap();
    k.b.start().unwrap();
    k.a.start().unwrap();
    k.a.wait_volume(VOLUME, Duration::from_secs(30), "online", online)
        .unwrap();
}

/// After B's fault at `fault_at` was repaired: waits for B's rebuild, stops the workload and
/// checks it saw no error, the rebuild was partial and bounded, every block verifies and the
/// replicas compare identical; then stops both nodes.
async fn expect_partial_recovery(k: &mut Cluster, w: Workload, fault_at: Instant) {
    let v =
        k.a.wait_volume(VOLUME, Duration::from_secs(60), "online again", |v| {
            online(v) && !replica_state(v, REPLICA_B)["last_rebuild"].is_null()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ctrl, report) = w.finish().await;
    assert_clean(&report);
    let rb = &replica_state(&v, REPLICA_B)["last_rebuild"];
    assert_eq!(
        rb["kind"], "Partial",
        "rebuild of the returning replica: {v}"
    );
    assert_partial_bound(rb, &report, fault_at);

    final_verify(&ctrl, &report).await;
    assert_identical(&k.a).await;
    let _ = ctrl.disconnect().await;
    assert_eq!(k.a.stop().unwrap(), 0);
    assert_eq!(k.b.stop().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_with_sigkill_gets_a_partial_rebuild() {
    let mut k = cluster(11);
    start_a_mirroring_b(&mut k);

    let w = start_workload(&k.a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.narrow();
    let killed_at = Instant::now();
    k.b.kill9();
    k.a.wait_volume(VOLUME, Duration::from_secs(20), "degraded", |v| {
        replica_state(v, REPLICA_B)["in_sync"] == false
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    k.b.start().unwrap();
    expect_partial_recovery(&mut k, w, killed_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_link_cut_gets_a_partial_rebuild() {
    let mut k = cluster(12);
    let ns = NetNs::create(&format!("{}", std::process::id() % 100_000), 12)
        .expect("network namespace (needs root and iproute2)");
    k.b.ip = ns.inner;
    k.b.wrapper = ns.wrapper();
    // B sees A coming from the veth's outer address.
    start_a_mirroring_b(&mut k);

    let w = start_workload(&k.a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.narrow();
    let cut_at = Instant::now();
    ns.cut().unwrap();
    k.a.wait_volume(VOLUME, Duration::from_secs(30), "degraded", |v| {
        replica_state(v, REPLICA_B)["in_sync"] == false
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ns.restore().unwrap();
    expect_partial_recovery(&mut k, w, cut_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_replaced_by_a_new_one_gets_a_full_rebuild() {
    let mut k = cluster(13);
    k.b.write_config(&replica_node_config(&k.b, REPLICA_B, &k.a))
        .unwrap();
    k.c.write_config(&replica_node_config(&k.c, REPLICA_C, &k.a))
        .unwrap();
    k.a.write_config(&mirror_node_config(&k.a, &[(REPLICA_B, &k.b)]))
        .unwrap();
    k.b.start().unwrap();
    k.c.start().unwrap();
    k.a.start().unwrap();
    k.a.wait_volume(VOLUME, Duration::from_secs(30), "online", online)
        .unwrap();

    let w = start_workload(&k.a).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // B's node is lost for good: replace its replica with a new one on C.
    k.b.kill9();
    k.a.write_config(&mirror_node_config(&k.a, &[(REPLICA_C, &k.c)]))
        .unwrap();
    k.a.reload().unwrap();
    let v =
        k.a.wait_volume(VOLUME, Duration::from_secs(90), "online on A and C", |v| {
            online(v)
                && !replica_state(v, REPLICA_C)["last_rebuild"].is_null()
                && replica_state(v, REPLICA_B).is_null()
        })
        .unwrap();
    let (ctrl, report) = w.finish().await;
    assert_clean(&report);
    let rc = &replica_state(&v, REPLICA_C)["last_rebuild"];
    assert_eq!(rc["kind"], "Full", "{v}");
    assert_eq!(rc["bytes_total"].as_u64(), Some(VOLUME_BYTES), "{v}");
    println!("full rebuild copied {} bytes", rc["bytes_copied"]);

    final_verify(&ctrl, &report).await;
    assert_identical(&k.a).await;
    let _ = ctrl.disconnect().await;
    assert_eq!(k.a.stop().unwrap(), 0);
    assert_eq!(k.c.stop().unwrap(), 0);
}
