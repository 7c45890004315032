//! The Linux 6.1 kernel NVMe/TCP initiator, booted in QEMU, against a `ferrite-datapath`
//! process on the host: discovery, connect with default queues / two queues / digests,
//! mkfs.ext4, mount, write, remount and verify, random direct reads, disconnect, a rejected
//! unknown NQN, and a clean dmesg (see `e2e/qemu/guest/ferrite-target.sh`).

use std::net::SocketAddr;

use ferrite_e2e::datapath::Datapath;
use ferrite_e2e::{free_port, qemu};

const NQN: &str = "nqn.2024-01.dev.ferrite:e2e-kernel";

#[test]
fn linux_initiator_against_ferrite_target() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let image = dir.path().join("vol.img");
    let dp = Datapath::start(
        addr,
        &[
            "--listen".into(),
            addr.to_string(),
            "--export".into(),
            format!("{NQN}=file:{}:256MiB", image.display()),
        ],
    )
    .expect("datapath starts");

    let run = qemu::run_guest(
        "ferrite-target.sh",
        600,
        &[
            ("FERRITE_ADDR", "10.0.2.2".into()),
            ("FERRITE_PORT", port.to_string()),
            ("FERRITE_NQN", NQN.into()),
            (
                "FERRITE_BAD_NQN",
                "nqn.2024-01.dev.ferrite:does-not-exist".into(),
            ),
        ],
    )
    .expect("guest runs");
    println!("{}", run.output);
    let log = dp.log();
    let code = dp.stop().expect("datapath stops on SIGTERM");
    assert!(
        run.passed,
        "the guest script failed; see its console output above"
    );
    assert_eq!(code, 0, "datapath exit code after SIGTERM");
    let protocol_errors: Vec<_> = log
        .iter()
        .filter(|l| l.contains("protocol error"))
        .collect();
    assert!(
        protocol_errors.is_empty(),
        "the target saw protocol errors: {protocol_errors:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("connect rejected")),
        "the unknown-NQN connect was not seen by the target"
    );
    // The file backend holds what the guest wrote: the sparse image now has blocks allocated.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&image).expect("image exists");
    assert_eq!(meta.len(), 256 << 20);
    assert!(
        meta.blocks() * 512 >= 8 << 20,
        "only {} bytes allocated in the image",
        meta.blocks() * 512
    );
}
