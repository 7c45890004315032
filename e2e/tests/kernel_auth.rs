//! NVMe in-band authentication with the Linux kernel: the Debian 13 6.12 kernel (QEMU bed
//! `6.12`, prepared by `e2e/qemu/prepare.sh`) connects to a `ferrite-datapath` process
//! whose YAML gives the guest's host NQN DH-HMAC-CHAP secrets (`node.dhchap_hosts`), with
//! `nvme connect --dhchap-secret` and then also `--dhchap-ctrl-secret`, does I/O, and a
//! wrong host secret, a missing secret and a wrong controller secret are refused (see
//! `e2e/qemu/guest/ferrite-auth.sh`). The bed missing fails the test: it is never skipped.

use std::net::SocketAddr;

use ferrite_e2e::datapath::Datapath;
use ferrite_e2e::free_port;
use ferrite_e2e::qemu::{self, GuestOptions};

const NQN: &str = "nqn.2024-01.dev.ferrite:e2e-auth";
const GUEST_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5c0a7d4e-8f1b-4d2a-9e3c-6b7a8c9d0e1f";
/// Test secrets (CRC-checked `DHHC-1` form): the host's (SHA-256 transformed), the
/// controller's (48 bytes, untransformed), and one the target does not hold.
const HOST_KEY: &str = "DHHC-1:01:QOb355/Bs1/ygebMWwZgK4bHJdHkBtBkzcUure1wxP432OpE:";
const CTRL_KEY: &str =
    "DHHC-1:00:gp90B/vePQUfKmCK+wmD1HLXgSlv0GXEYRwqO9iO5ZjJemhgyCEXXKgYOgFeSyId83Jd5w==:";
const WRONG_KEY: &str = "DHHC-1:01:fbJ6jvjLNf3+UPWtKGHsWd9fQtNSXYWAbrTKl6Uh3olDR0M3:";

#[test]
fn linux_6_12_authenticates_with_dh_hmac_chap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let image = dir.path().join("vol.img");
    let config = dir.path().join("datapath.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [\"{addr}\"]\n\
             node:\n\
             \x20 dhchap_hosts:\n\
             \x20   - nqn: {GUEST_HOSTNQN}\n\
             \x20     dhchap_secret: \"{HOST_KEY}\"\n\
             \x20     dhchap_ctrl_secret: \"{CTRL_KEY}\"\n\
             subsystems:\n\
             \x20 - nqn: {NQN}\n\
             \x20   allow_hosts: [{GUEST_HOSTNQN}]\n\
             \x20   namespaces:\n\
             \x20     - backend: file:{}:64MiB\n",
            image.display()
        ),
    )
    .expect("config written");
    let dp = Datapath::start(addr, &["--config".into(), config.display().to_string()])
        .expect("datapath starts");

    let run = qemu::run_guest_with(
        "ferrite-auth.sh",
        600,
        &[
            ("FERRITE_ADDR", "10.0.2.2".into()),
            ("FERRITE_PORT", port.to_string()),
            ("FERRITE_NQN", NQN.into()),
            ("FERRITE_HOST_KEY", HOST_KEY.into()),
            ("FERRITE_CTRL_KEY", CTRL_KEY.into()),
            ("FERRITE_WRONG_KEY", WRONG_KEY.into()),
        ],
        &GuestOptions {
            hostnqn: Some(GUEST_HOSTNQN.into()),
            bed: Some("6.12".into()),
            ..Default::default()
        },
    )
    .expect("guest runs (the 6.12 bed must be prepared: e2e/qemu/prepare.sh)");
    println!("{}", run.output);
    let log = dp.log();
    let code = dp.stop().expect("datapath stops on SIGTERM");
    assert!(
        run.output.contains("6.12"),
        "the guest did not boot the 6.12 kernel"
    );
    assert!(
        run.passed,
        "the guest script failed; see its console output above"
    );
    assert_eq!(code, 0, "datapath exit code after SIGTERM");
    let authenticated = log
        .iter()
        .filter(|l| l.contains("queue authenticated"))
        .count();
    assert!(
        authenticated >= 4,
        "the target authenticated {authenticated} queues (admin + I/O, twice)"
    );
    assert!(
        log.iter().any(|l| l.contains("host response mismatch")),
        "the wrong secret was not seen by the target"
    );
    assert!(
        !log.iter().any(|l| l.contains("protocol error")),
        "the target saw protocol errors"
    );
}
