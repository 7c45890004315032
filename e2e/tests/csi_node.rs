//! The CSI node plugin (`ferrite-csi-node`) inside the QEMU guest, attaching volumes that a
//! Ferrite target on the host serves, through the Linux 6.1 kernel NVMe/TCP initiator.
//!
//! The target runs in this test process (`ferrite_target::Target`) so that the test can grow
//! a namespace (replace it with a bigger device: the kernel gets a namespace-changed event)
//! and remove one, when the guest asks through a one-line TCP side channel that it reaches
//! at 10.0.2.2. The guest script `e2e/qemu/guest/csi-node.sh` drives the plugin with
//! `ferrite-csi-client` step by step and checks the kernel's view (sysfs, mounts, blkid);
//! see its header for the steps.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_block::BackendSpec;
use ferrite_e2e::csi;
use ferrite_e2e::qemu::{self, GuestOptions};
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};

const NQN_FS: &str = "nqn.2024-01.dev.ferrite:csi-e2e-fs";
const NQN_BLK: &str = "nqn.2024-01.dev.ferrite:csi-e2e-blk";
const NQN_XFS: &str = "nqn.2024-01.dev.ferrite:csi-e2e-xfs";
const BAD_NQN: &str = "nqn.2024-01.dev.ferrite:csi-e2e-does-not-exist";
/// The guest's host NQN: the only host on the volumes' access lists.
const GUEST_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7c0f4f2e-4d5b-4c1e-9a57-2f6f0c3d8e11";
const MIB: u64 = 1 << 20;
const FS_SIZE: u64 = 128 * MIB;
const FS_GROW: u64 = 256 * MIB;
const BLK_SIZE: u64 = 32 * MIB;
const XFS_SIZE: u64 = 320 * MIB;
const XFS_GROW: u64 = 512 * MIB;

async fn open_file(path: &Path) -> Arc<dyn ferrite_block::BlockDevice> {
    BackendSpec::parse(&format!("file:{}", path.display()))
        .expect("backend spec")
        .open(4096)
        .await
        .expect("open the backing file")
}

/// Serves the side channel: one command per connection, one answer line.
fn serve_control(
    listener: TcpListener,
    rt: tokio::runtime::Handle,
    target: Arc<Target>,
    images: Vec<(&'static str, PathBuf)>,
    log: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut line = String::new();
            if BufReader::new(&mut conn).read_line(&mut line).is_err() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["GROW", nqn, bytes] => {
                    match (images.iter().find(|(n, _)| n == nqn), bytes.parse::<u64>()) {
                        (Some((_, path)), Ok(bytes)) => {
                            let grown = std::fs::OpenOptions::new()
                                .write(true)
                                .open(path)
                                .and_then(|f| f.set_len(bytes));
                            match grown {
                                Ok(()) => {
                                    let dev = rt.block_on(open_file(path));
                                    match target.add_namespace(
                                        nqn,
                                        NamespaceConfig {
                                            nsid: 1,
                                            device: dev,
                                        },
                                    ) {
                                        Ok(()) => {
                                            format!("OK {nqn} namespace 1 is now {bytes} bytes")
                                        }
                                        Err(e) => format!("ERR {e}"),
                                    }
                                }
                                Err(e) => format!("ERR growing {}: {e}", path.display()),
                            }
                        }
                        _ => "ERR unknown NQN or bad size".to_string(),
                    }
                }
                ["REMOVE", nqn, nsid] => match nsid
                    .parse::<u32>()
                    .map(|id| target.remove_namespace(nqn, id))
                {
                    Ok(Ok(true)) => format!("OK {nqn} namespace {nsid} removed"),
                    Ok(Ok(false)) => "ERR no such namespace".to_string(),
                    Ok(Err(e)) => format!("ERR {e}"),
                    Err(_) => "ERR bad nsid".to_string(),
                },
                _ => format!("ERR unknown command {line:?}"),
            };
            eprintln!("[side channel] {} -> {answer}", line.trim());
            if let Ok(mut l) = log.lock() {
                l.push(format!("{} -> {answer}", line.trim()));
            }
            let _ = conn.write_all(format!("{answer}\n").as_bytes());
        }
    });
}

/// Debian's default: NVMe multipath on, the usable device is the subsystem's namespace head.
#[test]
fn csi_node_plugin_in_qemu_against_ferrite_target() {
    run_scenario(None);
}

/// `nvme_core.multipath=N`: no heads, the namespace hangs off its controller.
#[test]
fn csi_node_plugin_in_qemu_without_multipath() {
    run_scenario(Some("nvme_core.multipath=N"));
}

fn run_scenario(kernel_append: Option<&str>) {
    let csi_node = csi::node_binary().expect("ferrite-csi-node builds");
    let client = PathBuf::from(env!("CARGO_BIN_EXE_ferrite-csi-client"));
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");

    // The target: three volumes on sparse files, only the guest's host NQN allowed.
    let target = Target::new(TargetOptions::default());
    let mut images = Vec::new();
    for (nqn, size) in [(NQN_FS, FS_SIZE), (NQN_BLK, BLK_SIZE), (NQN_XFS, XFS_SIZE)] {
        let path = dir
            .path()
            .join(format!("{}.img", nqn.rsplit(':').next().unwrap_or("vol")));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("backing file");
        let device = rt.block_on(open_file(&path));
        target
            .add_subsystem(SubsystemConfig {
                nqn: nqn.to_string(),
                hosts: HostAccess::Only(vec![GUEST_HOSTNQN.to_string()]),
                namespaces: vec![NamespaceConfig { nsid: 1, device }],
            })
            .expect("subsystem");
        images.push((nqn, path));
    }
    let addr: SocketAddr = rt
        .block_on(target.listen("127.0.0.1:0".parse().expect("addr")))
        .expect("listen");

    let ctl = TcpListener::bind("127.0.0.1:0").expect("side channel");
    let ctl_port = ctl.local_addr().expect("side channel address").port();
    let ctl_log = Arc::new(Mutex::new(Vec::new()));
    serve_control(
        ctl,
        rt.handle().clone(),
        target.clone(),
        images.clone(),
        ctl_log.clone(),
    );

    let run = qemu::run_guest_with(
        "csi-node.sh",
        900,
        &[
            ("CSI_TARGET", format!("10.0.2.2:{}", addr.port())),
            ("CSI_CTL", format!("10.0.2.2:{ctl_port}")),
            ("CSI_NQN_FS", NQN_FS.into()),
            ("CSI_NQN_BLK", NQN_BLK.into()),
            ("CSI_NQN_XFS", NQN_XFS.into()),
            ("CSI_BAD_NQN", BAD_NQN.into()),
            ("CSI_FS_GROW", FS_GROW.to_string()),
            ("CSI_XFS_GROW", XFS_GROW.to_string()),
        ],
        &GuestOptions {
            bins: vec![csi_node, client],
            hostnqn: Some(GUEST_HOSTNQN.into()),
            kernel_append: kernel_append.map(str::to_string),
            ..Default::default()
        },
    )
    .expect("guest runs");
    println!("{}", run.output);
    rt.block_on(target.shutdown());
    assert!(
        run.passed,
        "the guest script failed; see its console output above"
    );

    // The side channel did what the guest asked.
    let log = ctl_log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("GROW") && l.contains("-> OK"))
            .count(),
        2,
        "{log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("REMOVE") && l.contains("-> OK"))
            .count(),
        1,
        "{log:?}"
    );
    // The plugin formatted through the target: ext4's superblock magic (0xEF53 at byte
    // 1080) and xfs's ("XFSB" at 0) are in the backing files, which have their grown sizes.
    let read_at = |path: &Path, off: u64, n: usize| {
        let mut f = std::fs::File::open(path).expect("image");
        f.seek(SeekFrom::Start(off)).expect("seek");
        let mut b = vec![0u8; n];
        f.read_exact(&mut b).expect("read");
        b
    };
    assert_eq!(
        read_at(&images[0].1, 1080, 2),
        [0x53, 0xEF],
        "no ext4 superblock in the fs volume"
    );
    assert_eq!(
        read_at(&images[2].1, 0, 4),
        *b"XFSB",
        "no xfs superblock in the xfs volume"
    );
    assert_eq!(
        std::fs::metadata(&images[0].1).expect("fs image").len(),
        FS_GROW
    );
    assert_eq!(
        std::fs::metadata(&images[2].1).expect("xfs image").len(),
        XFS_GROW
    );
}
