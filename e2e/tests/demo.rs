//! The README's main command: `ferrite-datapath --demo` serves a mirrored volume over
//! NVMe/TCP from pools on sparse files. A host connects, writes and reads back verified blocks;
//! SIGTERM stops the demo cleanly.

use std::time::Duration;

use ferrite_e2e::cluster::http_get;
use ferrite_e2e::datapath::Datapath;
use ferrite_e2e::workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_mirrored_volume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = "127.0.0.1:4420".parse().expect("addr");
    let dp = Datapath::start(addr, &["--demo".into(), dir.path().display().to_string()])
        .expect("demo starts");
    let http = "127.0.0.1:9420".parse().expect("addr");
    let mut online = false;
    for _ in 0..100 {
        if let Ok((200, body)) = http_get(http, "/v1/status")
            && body.contains("\"state\":\"Online\"")
        {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online, "the demo volume did not come online");
    let ctrl = workload::connect(addr, "nqn.2024-01.dev.ferrite:demo")
        .await
        .expect("connect");
    for lba in 0..64u64 {
        ctrl.write(1, lba * 97, &workload::block(lba * 97, lba), false)
            .await
            .expect("write");
    }
    ctrl.flush(1).await.expect("flush");
    for lba in 0..64u64 {
        let b = ctrl.read(1, lba * 97, 1).await.expect("read");
        assert_eq!(workload::check(lba * 97, &b), Ok(lba));
    }
    ctrl.disconnect().await.expect("disconnect");
    let log = dp.log();
    assert!(
        log.iter().any(|l| l
            .contains("nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2024-01.dev.ferrite:demo")),
        "connect line printed"
    );
    assert_eq!(dp.stop().expect("stops"), 0);
}
