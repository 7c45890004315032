//! The Linux kernel initiator (QEMU guest) on a mirrored volume: node A serves a mirror over
//! its local replica and node B's; while the guest writes and fsyncs a file, the test kills
//! B's process with SIGKILL. The guest must see no I/O error and the file must verify after a
//! remount (`e2e/qemu/guest/ferrite-mirror.sh`). Then B comes back and is rebuilt.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_e2e::cluster::Node;
use ferrite_e2e::{free_port, workspace_root};

const VOLUME: &str = "00000000-0000-4000-8000-00000000e001";
const REPLICA_A: &str = "00000000-0000-4000-8000-0000000000ea";
const REPLICA_B: &str = "00000000-0000-4000-8000-0000000000eb";

#[test]
fn kernel_initiator_survives_a_replica_killed_mid_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = Node::new(
        "a",
        "127.0.0.1".parse().expect("ip"),
        dir.path().to_path_buf(),
    );
    a.nvme_port = free_port().expect("port");
    a.http_port = free_port().expect("port");
    let mut b = Node::new(
        "b",
        "127.0.21.2".parse().expect("ip"),
        dir.path().to_path_buf(),
    );
    b.write_config(&format!(
        "pools:\n  - name: pool-b\n    disks: [\"{}\"]\nreplicas:\n  - uuid: {REPLICA_B}\n    pool: pool-b\n    size: 129MiB\n    export: {{allow_hosts: [{}]}}\n",
        b.disk(0, "256MiB"),
        a.hostnqn()
    ))
    .unwrap();
    a.write_config(&format!(
        "pools:\n  - name: pool-a\n    disks: [\"{}\"]\nreplicas:\n  - uuid: {REPLICA_A}\n    pool: pool-a\n    size: 129MiB\nvolumes:\n  - uuid: {VOLUME}\n    replicas:\n      - uuid: {REPLICA_A}\n      - uuid: {REPLICA_B}\n        address: {}\n",
        a.disk(0, "256MiB"),
        b.nvme_addr()
    ))
    .unwrap();
    b.start().unwrap();
    a.start().unwrap();
    a.wait_volume(VOLUME, Duration::from_secs(30), "online", |v| {
        v["state"] == "Online"
    })
    .unwrap();

    // Boot the guest; watch its console log for the marker printed right before the big write.
    let log = dir.path().join("guest.log");
    let qemu = workspace_root().join("e2e").join("qemu");
    let prep = Command::new("bash")
        .arg(qemu.join("prepare.sh"))
        .status()
        .expect("prepare.sh runs");
    assert!(prep.success(), "e2e/qemu/prepare.sh failed");
    let mut guest = Command::new("bash")
        .arg(qemu.join("run-guest.sh"))
        .arg(qemu.join("guest").join("ferrite-mirror.sh"))
        .arg("600")
        .arg("FERRITE_ADDR=10.0.2.2")
        .arg(format!("FERRITE_PORT={}", a.nvme_port))
        .arg(format!(
            "FERRITE_NQN=nqn.2024-01.dev.ferrite:volume-{VOLUME}"
        ))
        .env("FERRITE_QEMU_LOG", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-guest.sh starts");

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut killed = false;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("FERRITE-MIRROR: BIG WRITE") {
            // Let the write get going, then take the replica away.
            std::thread::sleep(Duration::from_millis(1500));
            b.kill9();
            killed = true;
            break;
        }
        if text.contains("FERRITE-GUEST-RESULT") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = guest.wait().expect("guest finishes");
    let mut out = String::new();
    if let Some(mut o) = guest.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{out}\n--- console ---\n{console}");
    assert!(killed, "the guest never reached the big write");
    assert!(
        console.contains("FERRITE-MIRROR: WRITE DONE"),
        "the big write did not complete"
    );
    assert!(
        status.success() && console.contains("FERRITE-GUEST-RESULT: PASS"),
        "the guest script failed"
    );
    let v = a.volume(VOLUME).expect("volume status");
    assert!(
        v["replicas"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x["uuid"] == REPLICA_B && x["in_sync"] == false)),
        "B should be out of sync after its kill: {v}"
    );

    // B returns and catches up with a partial rebuild.
    b.start().unwrap();
    let v = a
        .wait_volume(VOLUME, Duration::from_secs(90), "online again", |v| {
            v["state"] == "Online"
                && v["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|x| x["in_sync"] == true))
        })
        .unwrap();
    println!("after rebuild: {v}");
    let report = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(a.compare(VOLUME))
        .expect("compare");
    assert!(report.identical, "replicas differ: {report:?}");
    assert_eq!(a.stop().unwrap(), 0);
    assert_eq!(b.stop().unwrap(), 0);
}
