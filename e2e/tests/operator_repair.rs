//! The Volume reconciler's repair path end to end, against a real Kubernetes 1.20 API server
//! (the `e2e/kube` bed), three real `ferrite-datapath` processes (node API on `--grpc`, state
//! in `--state-dir`, pools on sparse files) and the operator with a short repair grace
//! (`--repair-grace-secs`).
//!
//! A 2-replica volume made by CSI CreateVolume is published to this host and written through
//! the Rust NVMe/TCP host. The node holding the replica that is not on the target node is
//! SIGKILLed and kept down: the Volume goes Degraded (Event), is left alone for the grace
//! period, then the operator places a new replica on the third node, adds it to the mirror,
//! which rebuilds it in full, and the Volume goes Online over the target's replica and the
//! new one (status and a `ReplicaReplaced` Event say so). The data reads back identical
//! through the host during and after the repair, and the target's CompareVolume reports
//! the replicas identical. The killed node restarted still holds its old replica: the
//! operator destroys it (nothing of the volume left there) and the Volume stays Online.
//! DeleteVolume removes everything from the nodes. Fails when the bed is not prepared.
//!
//! Out of scope: losing the target node (target failover is not implemented).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_api::csi::v1 as csi;
use ferrite_api::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, access_mode::Mode,
};
use ferrite_api::node::v1 as pb;
use ferrite_block::{BlockDevice, IoBuf};
use ferrite_e2e::api_node::ApiNode;
use ferrite_e2e::csi::controller_client as csi_client;
use ferrite_e2e::kube::{KubeBed, OperatorProcess, operator_binary};
use ferrite_host::{Controller, HostOptions, RemoteNamespace};
use serde_json::Value;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:7d4c2a91-3b6e-4f0a-8c5d-1e2f3a4b5c6d";
const VOLUME: &str = "pvc-repair";
const VOLUME_BYTES: u64 = 64 << 20;
const GRACE_SECS: u64 = 4;
const MIB: u64 = 1 << 20;
/// Written before the fault: (offset MiB, length MiB, seed).
const BEFORE: [(u64, u64, u8); 3] = [(1, 2, 11), (20, 4, 23), (44, 3, 37)];
/// Written while the victim is down (only the target's replica takes them).
const DURING: [(u64, u64, u8); 2] = [(8, 2, 51), (56, 3, 67)];
/// Node names and addresses (127.0.36.x belongs to this test).
const NODES: [(&str, &str); 3] = [
    ("a", "127.0.36.1"),
    ("b", "127.0.36.2"),
    ("c", "127.0.36.3"),
];

/// An Event about the volume.
#[derive(Debug)]
struct Ev {
    reason: String,
    note: String,
    /// `eventTime`.
    time: String,
    /// Occurrences (`series.count`; 1 without a series).
    count: u64,
}

/// The bed and the test's folder, for queries and failure reports.
struct Env {
    bed: Arc<KubeBed>,
    dir: PathBuf,
}

impl Env {
    /// Runs kubectl on a blocking thread; `None` when it fails.
    async fn kubectl(&self, args: &[&str]) -> Option<String> {
        let bed = self.bed.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bed.kubectl(&args).ok().filter(|r| r.ok).map(|r| r.stdout)
        })
        .await
        .ok()
        .flatten()
    }

    async fn get_json(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", kind, name, "-o", "json"]).await?;
        serde_json::from_str(&out).ok()
    }

    async fn volume(&self) -> Value {
        self.get_json("volume", VOLUME).await.unwrap_or(Value::Null)
    }

    /// The Events about the volume.
    async fn events(&self) -> Vec<Ev> {
        let out = self
            .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "json"])
            .await
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["kind"] == "Volume" && e["regarding"]["name"] == VOLUME)
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                Ev {
                    reason: s("reason"),
                    note: s("note"),
                    time: s("eventTime"),
                    count: e["series"]["count"].as_u64().unwrap_or(1),
                }
            })
            .collect()
    }

    /// Tails of the operator's and the nodes' logs, and the volume, for failure messages.
    async fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.bed.dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("operator-"))
            })
            .collect();
        logs.extend(NODES.iter().map(|(n, _)| self.dir.join(format!("{n}.log"))));
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            out += &format!("--- {}\n{}\n", p.display(), tail.join("\n"));
        }
        out += &format!("--- volume\n{:#}\n", self.volume().await["status"]);
        out += &format!("--- events\n{:?}\n", self.events().await);
        out
    }

    /// Polls the Volume every 300 ms until `pred` holds; panics after `secs`.
    async fn wait_volume(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.volume().await;
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "volume {VOLUME}: {what}: not after {secs}s\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until an Event about the volume with `reason` exists.
    async fn wait_event(&self, reason: &str, secs: u64) -> Ev {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.events().await.into_iter().find(|e| e.reason == reason) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {reason} Event about {VOLUME} after {secs}s\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn state(v: &Value) -> &str {
    v["status"]["state"].as_str().unwrap_or_default()
}

/// (uuid, node, state) of the status replicas.
fn replicas(v: &Value) -> Vec<(String, String, String)> {
    v["status"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("uuid"), s("node"), s("state"))
        })
        .collect()
}

/// Nodes of the Online status replicas, sorted.
fn online_nodes(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = replicas(v)
        .into_iter()
        .filter(|(_, _, s)| s == "Online")
        .map(|(_, n, _)| n)
        .collect();
    n.sort();
    n
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2024-05-01T10:00:00.123456Z`).
fn unix_secs(ts: &str) -> Option<f64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 12) as u8))
        .collect()
}

async fn write_all(ns: &RemoteNamespace, writes: &[(u64, u64, u8)]) {
    let bs = u64::from(ns.block_size());
    for &(off, len, seed) in writes {
        let data = IoBuf::from_slice(&pattern(len * MIB, seed));
        ns.write(off * MIB / bs, data, false)
            .await
            .unwrap_or_else(|e| panic!("write {len} MiB at {off} MiB: {e}"));
    }
    ns.flush().await.expect("flush");
}

/// Reads every written range back; returns the ranges that differ.
async fn verify(ns: &RemoteNamespace, writes: &[(u64, u64, u8)]) -> Result<Vec<u64>, String> {
    let bs = u64::from(ns.block_size());
    let mut bad = Vec::new();
    for &(off, len, seed) in writes {
        let nblocks = u32::try_from(len * MIB / bs).map_err(|e| e.to_string())?;
        let back = ns
            .read(off * MIB / bs, nblocks)
            .await
            .map_err(|e| format!("read {len} MiB at {off} MiB: {e}"))?;
        if back[..] != pattern(len * MIB, seed)[..] {
            bad.push(off);
        }
    }
    Ok(bad)
}

async fn connect(ctx: &HashMap<String, String>) -> (Arc<Controller>, RemoteNamespace) {
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
async fn a_lost_replica_is_replaced_and_the_returning_one_removed() {
    KubeBed::require();
    let t0 = Instant::now();
    let (bed, op_bin, dp_bin) = tokio::task::spawn_blocking(|| {
        let dp = ferrite_e2e::datapath::binary().expect("datapath binary");
        let op = operator_binary().expect("operator binary");
        let bed = KubeBed::start().expect("start bed");
        bed.install_crds().expect("crds");
        (Arc::new(bed), op, dp)
    })
    .await
    .expect("setup");
    let tmp = tempfile::Builder::new()
        .prefix("ferrite-repair-")
        .tempdir()
        .expect("tmp");
    let dir = tmp.path();
    let env = Env {
        bed: bed.clone(),
        dir: dir.to_path_buf(),
    };

    // 1. Three nodes with a pool each; the operator with a short grace.
    let mut nodes: Vec<ApiNode> = NODES
        .iter()
        .map(|(name, ip)| ApiNode::start(&dp_bin, name, ip, dir).expect("start node"))
        .collect();
    for n in &nodes {
        n.client().await;
    }
    let mut objects = String::new();
    for n in &nodes {
        objects += &format!(
            "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: {0}}}\n\
             spec: {{apiEndpoint: '{1}'}}\n---\n\
             apiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: p{0}}}\n\
             spec: {{node: {0}, disks: ['file:{2}/{0}0.img:256MiB']}}\n---\n",
            n.name,
            n.url(),
            dir.display()
        );
    }
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], &objects)
        .expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
    let port = ferrite_e2e::free_port().expect("port");
    let op_args: Vec<String> = [
        "--csi-endpoint",
        &format!("tcp://127.0.0.1:{port}"),
        "--csi-wait-secs",
        "60",
        "--repair-grace-secs",
        &GRACE_SECS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let op = OperatorProcess::start(&bed, &op_bin, 1, &op_args).expect("operator");
    for (name, _) in NODES {
        let pool = format!("p{name}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while env
            .get_json("storagepool", &pool)
            .await
            .map(|p| p["status"]["phase"].clone())
            != Some(Value::from("Online"))
        {
            assert!(
                Instant::now() < deadline,
                "pool {pool} not Online\n{}",
                env.diagnostics().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while env
            .get_json("fnode", name)
            .await
            .map(|p| p["status"]["phase"].clone())
            != Some(Value::from("Ready"))
        {
            assert!(
                Instant::now() < deadline,
                "node {name} not Ready\n{}",
                env.diagnostics().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    println!("[{:?}] bed, nodes, pools and operator up", t0.elapsed());

    // 2. A 2-replica volume, Online; published to this host and written.
    let mut c = csi_client(port).await;
    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    c.create_volume(csi::CreateVolumeRequest {
        name: VOLUME.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: VOLUME_BYTES as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap.clone()],
        parameters: [("replicas".to_string(), "2".to_string())].into(),
        ..Default::default()
    })
    .await
    .expect("CreateVolume");
    let v = env
        .wait_volume("Online", 60, |v| state(v) == "Online")
        .await;
    let uid = v["metadata"]["uid"].as_str().expect("uid").to_string();
    let target = v["status"]["targetNode"]
        .as_str()
        .expect("target node")
        .to_string();
    let first = replicas(&v);
    assert_eq!(first.len(), 2, "{first:?}");
    let placed: BTreeSet<&str> = first.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(placed.len(), 2, "replicas on one node: {first:?}");
    assert!(
        placed.contains(target.as_str()),
        "target {target} holds no replica"
    );
    let (victim_uuid, victim) = first
        .iter()
        .find(|(_, n, _)| *n != target)
        .map(|(u, n, _)| (u.clone(), n.clone()))
        .expect("a replica off the target node");
    let target_uuid = first
        .iter()
        .find(|(_, n, _)| *n == target)
        .map(|(u, _, _)| u.clone())
        .expect("target replica");
    let spare = NODES
        .iter()
        .map(|(n, _)| n.to_string())
        .find(|n| !placed.contains(n.as_str()))
        .expect("a node without a replica");
    let idx = |name: &str| NODES.iter().position(|(n, _)| *n == name).expect("node");
    let (vi, ti) = (idx(&victim), idx(&target));
    println!(
        "[{:?}] volume Online: target {target}, victim {victim}, spare {spare}",
        t0.elapsed()
    );

    let p = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: VOLUME.into(),
            node_id: HOST.into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner();
    let (ctrl, ns) = connect(&p.publish_context).await;
    let ns = Arc::new(ns);
    write_all(&ns, &BEFORE).await;
    assert_eq!(verify(&ns, &BEFORE).await, Ok(vec![]), "read back differs");

    // 3. The victim killed and kept down: Degraded, then replaced after the grace period.
    nodes[vi].kill9();
    let killed = Instant::now();
    write_all(&ns, &DURING).await;
    let all: Vec<(u64, u64, u8)> = BEFORE.iter().chain(DURING.iter()).copied().collect();

    // Readers check the data all through the repair.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let reader = {
        let (ns, stop, rounds, all) = (ns.clone(), stop.clone(), rounds.clone(), all.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match verify(&ns, &all).await {
                    Ok(bad) if bad.is_empty() => {}
                    Ok(bad) => failures.push(format!("ranges at MiB {bad:?} differ")),
                    Err(e) => failures.push(e),
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            failures
        })
    };

    env.wait_event("VolumeDegraded", 30).await;
    // The victim's replica Faulted; no replacement while the grace period runs.
    let v = env
        .wait_volume("victim replica Faulted", 30, |v| {
            replicas(v)
                .iter()
                .any(|(u, _, s)| *u == victim_uuid && s == "Faulted")
        })
        .await;
    let faulted_at = v["status"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["uuid"] == victim_uuid.as_str())
        .and_then(|r| r["lastTransitionTime"].as_str())
        .and_then(unix_secs)
        .expect("the Faulted replica's lastTransitionTime");
    let v = env
        .wait_volume("a replica placed on the spare node", 60, |v| {
            replicas(v).iter().any(|(_, n, _)| *n == spare)
        })
        .await;
    let new_uuid = replicas(&v)
        .into_iter()
        .find(|(_, n, _)| *n == spare)
        .map(|(u, _, _)| u)
        .expect("new replica");
    assert!(new_uuid != victim_uuid && new_uuid != target_uuid);
    println!(
        "[{:?}] replacement {new_uuid} on {spare}, {:?} after the kill",
        t0.elapsed(),
        killed.elapsed()
    );

    let mut want_online = vec![target.clone(), spare.clone()];
    want_online.sort();
    let v = env
        .wait_volume("Online on the target and the spare node", 90, |v| {
            state(v) == "Online" && online_nodes(v) == want_online
        })
        .await;
    println!("[{:?}] Online again after the replacement", t0.elapsed());
    assert!(
        replicas(&v)
            .iter()
            .all(|(u, _, s)| *u != victim_uuid || s == "Faulted"),
        "the lost replica is still in use: {:?}",
        replicas(&v)
    );
    let replaced = env.wait_event("ReplicaReplaced", 10).await;
    assert!(
        replaced.note.contains(&victim_uuid) && replaced.note.contains(&spare),
        "{replaced:?}"
    );
    // Timestamps in whole seconds: the grace may look up to 1 s shorter.
    let replaced_at = unix_secs(&replaced.time).expect("ReplicaReplaced eventTime");
    assert!(
        replaced_at - faulted_at >= (GRACE_SECS - 1) as f64,
        "replaced {:.1}s after the replica faulted (grace {GRACE_SECS}s)",
        replaced_at - faulted_at
    );

    // The target's mirror: exactly the target's replica and the new one, both in sync, the
    // new one fully rebuilt.
    let mut tc = nodes[ti].client().await;
    let served = tc
        .get_volume(pb::GetVolumeRequest { uuid: uid.clone() })
        .await
        .expect("GetVolume")
        .into_inner();
    let mut members: Vec<&str> = served.replicas.iter().map(|r| r.uuid.as_str()).collect();
    members.sort();
    let mut want_members = vec![target_uuid.as_str(), new_uuid.as_str()];
    want_members.sort();
    assert_eq!(members, want_members, "mirror members: {served:?}");
    for r in &served.replicas {
        assert_eq!(r.state, pb::ReplicaState::Healthy as i32, "{r:?}");
        assert!(r.in_sync, "{r:?}");
    }
    let rebuilt = served
        .replicas
        .iter()
        .find(|r| r.uuid == new_uuid)
        .and_then(|r| r.last_rebuild.clone())
        .expect("the new replica's rebuild");
    assert_eq!(rebuilt.kind, "full", "{rebuilt:?}");
    assert!(
        rebuilt.bytes_done >= VOLUME_BYTES,
        "full rebuild copied {rebuilt:?}"
    );

    // 4. The data, through the host (twice: reads alternate between the replicas), and the
    // replicas compared by the target.
    stop.store(true, Ordering::Relaxed);
    let failures = reader.await.expect("reader task");
    assert!(failures.is_empty(), "reads during the repair: {failures:?}");
    let rounds = rounds.load(Ordering::Relaxed);
    assert!(rounds > 0, "no read round completed during the repair");
    for _ in 0..2 {
        assert_eq!(
            verify(&ns, &all).await,
            Ok(vec![]),
            "read back after the repair"
        );
    }
    let cmp = nodes[ti].compare(&uid).await;
    assert!(cmp.identical, "replicas differ: {cmp:?}");
    assert_eq!(cmp.pairs.len(), 1, "{cmp:?}");
    assert!(cmp.pairs[0].bytes_compared >= VOLUME_BYTES, "{cmp:?}");
    println!(
        "[{:?}] data verified ({rounds} read rounds during the repair), replicas identical",
        t0.elapsed()
    );

    // 5. The victim back: its stale replica is destroyed, the volume stays Online.
    nodes[vi].restart().expect("restart the victim");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = nodes[vi]
            .replicas()
            .await
            .into_iter()
            .map(|r| r.uuid)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale replica(s) {left:?} left on {victim}\n{}",
            env.diagnostics().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(nodes[vi].volumes().await.is_empty());
    let v = env
        .wait_volume("only the target's and the new replica listed", 30, |v| {
            let mut u: Vec<String> = replicas(v).into_iter().map(|(u, _, _)| u).collect();
            u.sort();
            u == want_members
        })
        .await;
    assert_eq!(state(&v), "Online", "{:#}", v["status"]);
    assert_eq!(online_nodes(&v), want_online);
    let removed = env.wait_event("ReplicaRemoved", 10).await;
    assert!(removed.note.contains(&victim_uuid), "{removed:?}");
    // Once each: not repeated while the victim was away.
    let events = env.events().await;
    for reason in ["ReplicaReplaced", "ReplicaRemoved"] {
        let n: u64 = events
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.count)
            .sum();
        assert_eq!(n, 1, "{reason} Events: {events:?}");
    }
    println!("[{:?}] stale replica removed from {victim}", t0.elapsed());
    // Still Online a little later, and the data still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = env.volume().await;
    assert_eq!(state(&v), "Online", "{:#}", v["status"]);
    assert_eq!(verify(&ns, &all).await, Ok(vec![]), "read back at the end");
    drop(ns);
    drop(ctrl);

    // DeleteVolume removes everything from the nodes.
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: VOLUME.into(),
        node_id: HOST.into(),
        ..Default::default()
    })
    .await
    .expect("unpublish");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: VOLUME.into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
    for n in &nodes {
        let (vols, reps) = (n.volumes().await, n.replicas().await);
        assert!(
            vols.is_empty() && reps.is_empty(),
            "left on {}: {vols:?} {reps:?}",
            n.name
        );
    }
    drop(op);
    println!("[{:?}] done", t0.elapsed());
}

#[test]
fn timestamps_parse() {
    assert_eq!(unix_secs("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(unix_secs("2000-03-01T00:00:01Z"), Some(951_868_801.0));
    assert_eq!(unix_secs("2024-12-31T23:59:59.5Z"), Some(1_735_689_599.5));
    assert_eq!(unix_secs("yesterday"), None);
}
