//! Integration tests of the host library against Ferrite's own target over loopback TCP, with
//! RAM-backed namespaces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_block::{BlockDevice, BlockError, IoBuf, RamDevice};
use ferrite_host::{Controller, HostError, HostOptions, RemoteNamespace, discover};
use ferrite_protocol::command::{RwCommand, io_opcode};
use ferrite_protocol::identify::ControllerType;
use ferrite_protocol::log_page::subtype;
use ferrite_protocol::nqn::DISCOVERY_NQN;
use ferrite_protocol::{Sqe, Status};
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};

const NQN: &str = "nqn.2024-01.dev.ferrite:loopback";
const MIB: u64 = 1 << 20;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Bed {
    target: Arc<Target>,
    addr: SocketAddr,
    devices: Vec<Arc<RamDevice>>,
}

/// A target with subsystem `NQN` holding namespaces of the given (size, block size).
async fn bed_with(opts: TargetOptions, hosts: HostAccess, namespaces: &[(u64, u32)]) -> Bed {
    init_tracing();
    let target = Target::new(opts);
    let devices: Vec<Arc<RamDevice>> = namespaces
        .iter()
        .map(|&(size, bs)| Arc::new(RamDevice::new(size, bs).unwrap()))
        .collect();
    let ns = devices
        .iter()
        .enumerate()
        .map(|(i, d)| NamespaceConfig {
            nsid: i as u32 + 1,
            device: d.clone() as Arc<dyn BlockDevice>,
        })
        .collect();
    target
        .add_subsystem(SubsystemConfig {
            nqn: NQN.into(),
            hosts,
            namespaces: ns,
        })
        .unwrap();
    let addr = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Bed {
        target,
        addr,
        devices,
    }
}

async fn bed() -> Bed {
    bed_with(
        TargetOptions::default(),
        HostAccess::Any,
        &[(64 * MIB, 4096), (8 * MIB, 512)],
    )
    .await
}

fn opts() -> HostOptions {
    HostOptions {
        timeout: Duration::from_secs(5),
        ..HostOptions::default()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_identify_and_disconnect() {
    let bed = bed().await;
    let ctrl = Controller::connect(bed.addr, NQN, opts()).await.unwrap();
    let id = ctrl.identify();
    assert_eq!(id.cntrltype, ControllerType::Io);
    assert_eq!(id.subnqn, NQN);
    assert_eq!(id.cntlid, ctrl.cntlid());
    assert!(id.ioccsz >= 4, "IOCCSZ {}", id.ioccsz);
    assert_eq!(ctrl.io_queue_count(), 2);
    assert!(ctrl.version() >= 0x0001_0300);
    assert!(ctrl.is_connected());
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);

    let ns1 = ctrl.identify_namespace(1).await.unwrap();
    assert_eq!((ns1.nsze, ns1.lbads), (64 * MIB / 4096, 12));
    let g2 = ctrl.namespace_geometry(2).await.unwrap();
    assert_eq!((g2.block_size, g2.num_blocks), (512, 8 * MIB / 512));
    // An inactive namespace: either an error status or an all-zero structure.
    // An inactive namespace reads as zeroes; one beyond NN is an invalid namespace.
    assert_eq!(ctrl.identify_namespace(7).await.unwrap().nsze, 0);
    let err = ctrl
        .identify_namespace(ctrl.identify().nn + 1)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::INVALID_NAMESPACE));
    assert!(ctrl.namespace_geometry(7).await.is_err());
    assert_eq!(bed.target.controller_count(NQN), 1);

    ctrl.keep_alive().await.unwrap();
    ctrl.disconnect().await.unwrap();
    assert!(!ctrl.is_connected());
    assert!(matches!(ctrl.read(1, 0, 1).await, Err(HostError::Closed)));
    ctrl.disconnect().await.unwrap(); // idempotent
    wait_until(
        "the target to drop the controller",
        Duration::from_secs(3),
        || bed.target.controller_count(NQN) == 0,
    )
    .await;
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_io_over_several_queues() {
    let bed = bed().await;
    let ctrl = Arc::new(
        Controller::connect(
            bed.addr,
            NQN,
            HostOptions {
                io_queues: 4,
                queue_depth: 8,
                ..opts()
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(ctrl.io_queue_count(), 4);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let ctrl = ctrl.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..4u64 {
                let lba = t * 16 + round * 4;
                let data = pattern(t * 100 + round, 4 * 4096);
                ctrl.write(1, lba, &data, false).await.unwrap();
                let back = ctrl.read(1, lba, 4).await.unwrap();
                assert_eq!(&back[..], &data[..], "task {t} round {round}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The data really is on the device.
    let dev = &bed.devices[0];
    for t in [0u64, 17, 63] {
        let got = dev.read(t * 16 + 12, 4).await.unwrap();
        assert_eq!(&got[..], &pattern(t * 100 + 3, 4 * 4096)[..]);
    }
    // 512-byte namespace too.
    let data = pattern(9, 3 * 512);
    ctrl.write(2, 5, &data, true).await.unwrap();
    assert_eq!(&ctrl.read(2, 5, 3).await.unwrap()[..], &data[..]);
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_r2t_and_mdts() {
    // MDTS 1 MiB, but H2CData PDUs of at most 32 KiB and C2HData of 64 KiB.
    let topts = TargetOptions {
        max_data_transfer: MIB as u32,
        max_h2c_data: 32 * 1024,
        max_c2h_data: 64 * 1024,
        ..Default::default()
    };
    let bed = bed_with(topts, HostAccess::Any, &[(64 * MIB, 4096)]).await;
    let ctrl = Controller::connect(bed.addr, NQN, opts()).await.unwrap();
    assert_eq!(ctrl.identify().mdts, 8);
    assert_eq!(ctrl.max_transfer(), MIB as usize);

    // One command, 32 H2CData PDUs.
    let one = pattern(1, MIB as usize);
    ctrl.write(1, 0, &one, false).await.unwrap();
    assert_eq!(&ctrl.read(1, 0, 256).await.unwrap()[..], &one[..]);
    assert_eq!(&bed.devices[0].read(0, 256).await.unwrap()[..], &one[..]);

    // Larger than MDTS: split into several commands by the host.
    let four = pattern(2, 4 * MIB as usize + 8192);
    ctrl.write(1, 1000, &four, true).await.unwrap();
    let back = ctrl
        .read(1, 1000, (four.len() / 4096) as u32)
        .await
        .unwrap();
    assert_eq!(&back[..], &four[..]);

    // A raw command over MDTS is refused with a status, and the queue keeps working.
    let over = 256 + 1;
    let mut sqe = Sqe {
        opcode: io_opcode::WRITE,
        nsid: 1,
        ..Default::default()
    };
    RwCommand {
        slba: 0,
        nlb: over,
        fua: false,
    }
    .apply(&mut sqe);
    let (cqe, _) = ctrl
        .io_command(0, sqe, Some(&vec![7u8; over as usize * 4096]), 0)
        .await
        .unwrap();
    // The target answers the R2T-path write with Data SGL Length Invalid (the spec's MDTS
    // rule says Invalid Field in Command); either is a clean refusal.
    assert!(
        cqe.status == Status::INVALID_FIELD || cqe.status == Status::DATA_SGL_LENGTH_INVALID,
        "write over MDTS: {}",
        cqe.status
    );
    let mut sqe = Sqe {
        opcode: io_opcode::READ,
        nsid: 1,
        ..Default::default()
    };
    RwCommand {
        slba: 0,
        nlb: over,
        fua: false,
    }
    .apply(&mut sqe);
    let (cqe, _) = ctrl
        .io_command(0, sqe, None, over as usize * 4096)
        .await
        .unwrap();
    assert_eq!(cqe.status, Status::INVALID_FIELD, "read over MDTS");
    assert!(ctrl.is_connected());
    assert_eq!(&ctrl.read(1, 0, 1).await.unwrap()[..], &one[..4096]);
    assert!(ctrl.io_command(9, Sqe::default(), None, 0).await.is_err());

    // The device was not touched by the refused write.
    assert_eq!(&bed.devices[0].read(0, 1).await.unwrap()[..], &one[..4096]);
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_all_combinations() {
    let bed = bed().await;
    for (header_digest, data_digest) in [(false, false), (true, false), (false, true), (true, true)]
    {
        let o = HostOptions {
            header_digest,
            data_digest,
            ..opts()
        };
        let ctrl = Controller::connect(bed.addr, NQN, o).await.unwrap();
        let seed = u64::from(header_digest) * 2 + u64::from(data_digest);
        // In-capsule (4 KiB) and R2T (256 KiB) writes; multi-PDU reads.
        let small = pattern(seed, 4096);
        let big = pattern(seed + 10, 256 * 1024);
        ctrl.write(1, 0, &small, false).await.unwrap();
        ctrl.write(1, 100, &big, false).await.unwrap();
        assert_eq!(&ctrl.read(1, 0, 1).await.unwrap()[..], &small[..]);
        assert_eq!(&ctrl.read(1, 100, 64).await.unwrap()[..], &big[..]);
        ctrl.deallocate(1, &[(0, 1)]).await.unwrap();
        assert!(ctrl.read(1, 0, 1).await.unwrap().iter().all(|&b| b == 0));
        ctrl.disconnect().await.unwrap();
    }
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_write_zeroes_and_deallocate() {
    let bed = bed().await;
    let ctrl = Controller::connect(bed.addr, NQN, opts()).await.unwrap();
    let data = pattern(5, 64 * 4096);
    ctrl.write(1, 0, &data, false).await.unwrap();
    ctrl.flush(1).await.unwrap();

    ctrl.write_zeroes(1, 4, 4, false).await.unwrap();
    ctrl.write_zeroes(1, 12, 4, true).await.unwrap();
    ctrl.deallocate(1, &[(20, 4), (30, 2)]).await.unwrap();
    let back = ctrl.read(1, 0, 64).await.unwrap();
    for blk in 0..64usize {
        let got = &back[blk * 4096..(blk + 1) * 4096];
        let zeroed = (4..8).contains(&blk)
            || (12..16).contains(&blk)
            || (20..24).contains(&blk)
            || (30..32).contains(&blk);
        if zeroed {
            assert!(
                got.iter().all(|&b| b == 0),
                "block {blk} should read as zeroes"
            );
        } else {
            assert_eq!(
                got,
                &data[blk * 4096..(blk + 1) * 4096],
                "block {blk} should be intact"
            );
        }
    }
    // Write zeroes larger than one command (65536 blocks per command).
    let g = ctrl.namespace_geometry(2).await.unwrap();
    ctrl.write(2, g.num_blocks - 1, &[0xAB; 512], false)
        .await
        .unwrap();
    ctrl.write_zeroes(2, 0, g.num_blocks, false).await.unwrap();
    assert!(
        ctrl.read(2, g.num_blocks - 1, 1)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );

    // Out-of-range requests are refused before they are sent.
    assert!(matches!(
        ctrl.read(1, 64 * MIB / 4096, 1).await,
        Err(HostError::InvalidRequest(_))
    ));
    assert!(matches!(
        ctrl.write(1, 0, &[0u8; 100], false).await,
        Err(HostError::InvalidRequest(_))
    ));
    // ... and by the controller when sent raw.
    let mut sqe = Sqe {
        opcode: io_opcode::READ,
        nsid: 1,
        ..Default::default()
    };
    RwCommand {
        slba: 64 * MIB / 4096,
        nlb: 1,
        fua: false,
    }
    .apply(&mut sqe);
    let (cqe, _) = ctrl.io_command(1, sqe, None, 4096).await.unwrap();
    assert_eq!(cqe.status, Status::LBA_OUT_OF_RANGE);
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_logs_and_features() {
    let bed = bed().await;
    let ctrl = Controller::connect(bed.addr, NQN, opts()).await.unwrap();
    let smart = ctrl.get_log_page(0x02, 0, 512).await.unwrap();
    assert_eq!(smart.len(), 512);
    assert!(matches!(
        ctrl.get_log_page(0x02, 0, 7).await,
        Err(HostError::InvalidRequest(_))
    ));
    let err = ctrl.get_log_page(0xEE, 0, 512).await.unwrap_err();
    assert!(err.status().is_some(), "unknown log page: {err}");

    // Number of queues as granted.
    let nq = ctrl.get_features(0x07, 0).await.unwrap();
    assert!((nq & 0xffff) + 1 >= 2, "{nq:#x}");
    // Volatile write cache: toggle and read back.
    if ctrl.identify().vwc {
        ctrl.set_features(0x06, 0, false).await.unwrap();
        assert_eq!(ctrl.get_features(0x06, 0).await.unwrap() & 1, 0);
        ctrl.set_features(0x06, 1, false).await.unwrap();
        assert_eq!(ctrl.get_features(0x06, 0).await.unwrap() & 1, 1);
    }
    // Raw admin: Identify Controller.
    let sqe = Sqe {
        opcode: 0x06,
        cdw10: 1,
        ..Default::default()
    };
    let (cqe, data) = ctrl.admin_command(sqe, None, 4096).await.unwrap();
    assert!(cqe.status.is_success());
    assert_eq!(
        ferrite_protocol::identify::IdentifyController::decode(&data)
            .unwrap()
            .subnqn,
        NQN
    );
    // Unknown admin opcode: a status, not a transport error.
    let (cqe, _) = ctrl
        .admin_command(
            Sqe {
                opcode: 0xC5,
                ..Default::default()
            },
            None,
            0,
        )
        .await
        .unwrap();
    assert_eq!(cqe.status, Status::INVALID_OPCODE);
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sq_flow_control_disabled_uses_the_success_flag() {
    let bed = bed().await;
    let ctrl = Controller::connect(
        bed.addr,
        NQN,
        HostOptions {
            disable_sqflow: true,
            data_digest: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    let data = pattern(77, 300 * 1024);
    ctrl.write(1, 0, &data[..128 * 1024], false).await.unwrap();
    ctrl.write(1, 32, &data[128 * 1024..256 * 1024], false)
        .await
        .unwrap();
    assert_eq!(&ctrl.read(1, 0, 64).await.unwrap()[..], &data[..256 * 1024]);
    // Error completions still come as response capsules.
    let mut sqe = Sqe {
        opcode: io_opcode::READ,
        nsid: 1,
        ..Default::default()
    };
    RwCommand {
        slba: u64::MAX - 1,
        nlb: 1,
        fua: false,
    }
    .apply(&mut sqe);
    let (cqe, _) = ctrl.io_command(0, sqe, None, 4096).await.unwrap();
    assert_eq!(cqe.status, Status::LBA_OUT_OF_RANGE);
    assert_eq!(ctrl.active_namespaces().await.unwrap(), vec![1, 2]);
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_one_serializes_but_works() {
    let bed = bed().await;
    let ctrl = Arc::new(
        Controller::connect(
            bed.addr,
            NQN,
            HostOptions {
                io_queues: 1,
                queue_depth: 1,
                ..opts()
            },
        )
        .await
        .unwrap(),
    );
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let ctrl = ctrl.clone();
            tokio::spawn(async move {
                let data = pattern(t, 8192);
                ctrl.write(1, t * 2, &data, false).await.unwrap();
                assert_eq!(&ctrl.read(1, t * 2, 2).await.unwrap()[..], &data[..]);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    ctrl.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_subsystem_is_rejected() {
    let bed = bed().await;
    let err = Controller::connect(bed.addr, "nqn.2024-01.dev.ferrite:nope", opts())
        .await
        .unwrap_err();
    match err {
        HostError::ConnectRejected { status, detail } => {
            assert_eq!(status, Status::CONNECT_INVALID_PARAMETERS);
            assert!(detail.contains("SUBNQN"), "{detail}");
        }
        other => panic!("expected ConnectRejected, got {other:?}"),
    }
    assert!(matches!(
        Controller::connect(bed.addr, "not an nqn", opts()).await,
        Err(HostError::InvalidRequest(_))
    ));
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_access_list_is_enforced() {
    let allowed = opts();
    let bed = bed_with(
        TargetOptions::default(),
        HostAccess::Only(vec![allowed.hostnqn.clone()]),
        &[(8 * MIB, 4096)],
    )
    .await;
    let err = Controller::connect(bed.addr, NQN, opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HostError::ConnectRejected { status, .. } if status == Status::CONNECT_INVALID_HOST),
        "{err:?}"
    );
    let ctrl = Controller::connect(bed.addr, NQN, allowed.clone())
        .await
        .unwrap();
    ctrl.write(1, 0, &[1u8; 4096], false).await.unwrap();
    ctrl.disconnect().await.unwrap();
    // Discovery hides the subsystem from a host that may not use it.
    let hidden = discover(bed.addr, opts()).await.unwrap();
    assert!(hidden.iter().all(|e| e.subnqn != NQN));
    let shown = discover(bed.addr, allowed).await.unwrap();
    assert!(shown.iter().any(|e| e.subnqn == NQN));
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_mid_io_then_reconnect() {
    let bed = bed().await;
    let o = HostOptions {
        io_queues: 2,
        queue_depth: 16,
        ..opts()
    };
    let ctrl = Arc::new(Controller::connect(bed.addr, NQN, o.clone()).await.unwrap());
    let known = pattern(3, 4096);
    ctrl.write(1, 5000, &known, true).await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let ctrl = ctrl.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(t, 256 * 1024);
            let mut errors = 0;
            for _ in 0..50 {
                match ctrl.write(1, t * 64, &data, false).await {
                    Ok(()) => {}
                    Err(e) => {
                        assert!(e.is_connection_error(), "unexpected error kind: {e:?}");
                        errors += 1;
                        break;
                    }
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    ctrl.abort();
    let started = tokio::time::Instant::now();
    let mut failed = 0;
    for t in tasks {
        failed += tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("an I/O hung after abort")
            .unwrap();
    }
    assert!(
        failed > 0,
        "no I/O was in flight when the connection dropped"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!ctrl.is_connected());
    assert!(matches!(ctrl.read(1, 0, 1).await, Err(HostError::Closed)));

    // The target notices and drops the dead controller; a fresh association works.
    wait_until(
        "the target to drop the controller",
        Duration::from_secs(5),
        || bed.target.controller_count(NQN) == 0,
    )
    .await;
    let fresh = Controller::connect(bed.addr, NQN, o).await.unwrap();
    assert_eq!(&fresh.read(1, 5000, 1).await.unwrap()[..], &known[..]);
    let data = pattern(99, 64 * 1024);
    fresh.write(1, 0, &data, false).await.unwrap();
    assert_eq!(&fresh.read(1, 0, 16).await.unwrap()[..], &data[..]);
    fresh.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_the_association_and_its_absence_ends_it() {
    let bed = bed().await;
    let o = HostOptions {
        kato_ms: 1000,
        ..opts()
    };
    let kept = Controller::connect(bed.addr, NQN, o.clone()).await.unwrap();
    let idle = Controller::connect(bed.addr, NQN, o).await.unwrap();
    idle.stop_keep_alive();
    assert_eq!(bed.target.controller_count(NQN), 2);

    // KATO 1 s + the target's grace: the silent controller must be gone within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while idle.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "target did not tear down a controller without keep-alives"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = idle.read(1, 0, 1).await.unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(
        kept.is_connected(),
        "the controller sending keep-alives was torn down too"
    );
    assert_eq!(bed.target.controller_count(NQN), 1);
    kept.read(1, 0, 1).await.unwrap();
    kept.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

/// A TCP proxy in front of the target that can freeze (stop forwarding in both directions
/// without closing anything), like a network partition.
struct FreezableProxy {
    addr: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    async fn start(upstream: SocketAddr) -> FreezableProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(dr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur), Box::new(dw)),
                ] {
                    let f = f.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            while f.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let n = match r.read(&mut buf).await {
                                Ok(n) if n > 0 => n,
                                _ => {
                                    // A partition is silent: an end seen while frozen is not
                                    // passed on (the other side keeps its socket open).
                                    while f.load(Ordering::SeqCst) {
                                        tokio::time::sleep(Duration::from_millis(10)).await;
                                    }
                                    return;
                                }
                            };
                            while f.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezableProxy { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partition_is_detected_by_keep_alive() {
    let bed = bed().await;
    let proxy = FreezableProxy::start(bed.addr).await;
    let o = HostOptions {
        kato_ms: 1000,
        timeout: Duration::from_secs(1),
        ..opts()
    };
    let ctrl = Arc::new(Controller::connect(proxy.addr, NQN, o).await.unwrap());
    ctrl.write(1, 0, &[5u8; 4096], false).await.unwrap();
    proxy.freeze();

    // An I/O issued into the partition fails with a timeout instead of hanging.
    let started = tokio::time::Instant::now();
    let err = ctrl.read(1, 0, 1).await.unwrap_err();
    assert!(matches!(err, HostError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The unanswered keep-alive fails the whole association; later I/O fails at once.
    wait_until(
        "the keep-alive to fail the association",
        Duration::from_secs(4),
        || !ctrl.is_connected(),
    )
    .await;
    assert!(
        matches!(ctrl.failure(), Some(HostError::Timeout(_))),
        "{:?}",
        ctrl.failure()
    );
    let started = tokio::time::Instant::now();
    assert!(ctrl.read(1, 0, 1).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a failed association must fail fast"
    );
    // The target, hearing nothing, drops its controller too.
    wait_until(
        "the target to expire the controller",
        Duration::from_secs(5),
        || bed.target.controller_count(NQN) == 0,
    )
    .await;
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_the_subsystem() {
    let bed = bed().await;
    let entries = discover(bed.addr, opts()).await.unwrap();
    let e = entries
        .iter()
        .find(|e| e.subnqn == NQN)
        .expect("subsystem listed");
    assert_eq!(e.subtype, subtype::NVME);
    assert_eq!(e.traddr, "127.0.0.1");
    assert_eq!(e.trsvcid, bed.addr.port().to_string());
    assert_eq!(e.trtype, ferrite_protocol::log_page::TRTYPE_TCP);
    assert!(
        entries
            .iter()
            .any(|e| e.subnqn == DISCOVERY_NQN || e.subtype == subtype::CURRENT_DISCOVERY)
    );

    // Direct discovery controller: no I/O queues even if asked for.
    let d = Controller::connect(
        bed.addr,
        DISCOVERY_NQN,
        HostOptions {
            kato_ms: 0,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(d.identify().cntrltype, ControllerType::Discovery);
    assert_eq!(d.io_queue_count(), 0);
    assert_eq!(ferrite_host::read_discovery_log(&d).await.unwrap(), entries);
    assert!(d.read(1, 0, 1).await.is_err());

    // A second subsystem shows up in a fresh read.
    let ram: Arc<dyn BlockDevice> = Arc::new(RamDevice::new(MIB, 512).unwrap());
    let nqn2 = "nqn.2024-01.dev.ferrite:second";
    bed.target
        .add_subsystem(SubsystemConfig {
            nqn: nqn2.into(),
            hosts: HostAccess::Any,
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                device: ram,
            }],
        })
        .unwrap();
    let again = ferrite_host::read_discovery_log(&d).await.unwrap();
    assert!(again.iter().any(|e| e.subnqn == nqn2));
    d.disconnect().await.unwrap();
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_namespace_is_a_block_device() {
    let bed = bed().await;
    let ctrl = Arc::new(Controller::connect(bed.addr, NQN, opts()).await.unwrap());
    let dev = RemoteNamespace::new(ctrl.clone(), 2).await.unwrap();
    assert_eq!(dev.block_size(), 512);
    assert_eq!(dev.num_blocks(), 8 * MIB / 512);
    assert_eq!(dev.size_bytes(), 8 * MIB);
    assert!(dev.describe().contains(NQN), "{}", dev.describe());

    let data = pattern(11, 16 * 512);
    dev.write(100, IoBuf::from_slice(&data), false)
        .await
        .unwrap();
    assert_eq!(&dev.read(100, 16).await.unwrap()[..], &data[..]);
    dev.flush().await.unwrap();
    dev.write_zeroes(100, 4, false).await.unwrap();
    dev.deallocate(108, 4).await.unwrap();
    let back = dev.read(100, 16).await.unwrap();
    assert!(back[..4 * 512].iter().all(|&b| b == 0));
    assert_eq!(&back[4 * 512..8 * 512], &data[4 * 512..8 * 512]);
    assert!(back[8 * 512..12 * 512].iter().all(|&b| b == 0));
    assert_eq!(&back[12 * 512..], &data[12 * 512..]);

    assert!(matches!(
        dev.read(dev.num_blocks(), 1).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write(0, IoBuf::zeroed(100), false).await,
        Err(BlockError::Misaligned { .. })
    ));
    assert!(matches!(
        dev.write_zeroes(dev.num_blocks() - 1, 2, false).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(RemoteNamespace::new(ctrl.clone(), 9).await.is_err());

    // A dead connection means the device is gone.
    ctrl.abort();
    assert!(matches!(dev.read(0, 1).await, Err(BlockError::Gone(_))));
    bed.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_shutdown_fails_outstanding_and_later_io() {
    let bed = bed().await;
    let ctrl = Controller::connect(bed.addr, NQN, opts()).await.unwrap();
    ctrl.write(1, 0, &[1u8; 4096], false).await.unwrap();
    bed.target.shutdown().await;
    wait_until(
        "the host to see the connections close",
        Duration::from_secs(5),
        || !ctrl.is_connected(),
    )
    .await;
    let err = ctrl.read(1, 0, 1).await.unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    // Connecting to a stopped target fails quickly rather than hanging.
    let err = Controller::connect(bed.addr, NQN, opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HostError::Io(_) | HostError::Closed | HostError::Timeout(_)
        ),
        "{err:?}"
    );
}
