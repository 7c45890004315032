//! Running guest scripts in the QEMU kernel-initiator bed (see `e2e/qemu/README.md`).

use std::path::PathBuf;
use std::process::Command;

use crate::workspace_root;

/// The result of one guest run.
pub struct GuestRun {
    pub passed: bool,
    /// Everything run-guest.sh printed (the guest console included).
    pub output: String,
}

/// Extra settings of a guest run (see `e2e/qemu/run-guest.sh`).
#[derive(Clone, Debug, Default)]
pub struct GuestOptions {
    /// Host binaries to add to the guest as `/usr/local/bin/NAME`, with their libraries
    /// (`FERRITE_GUEST_BINS`).
    pub bins: Vec<PathBuf>,
    /// The guest's host NQN (`FERRITE_GUEST_HOSTNQN`); the host ID is its `uuid:` part.
    pub hostnqn: Option<String>,
    /// Extra QEMU `-netdev user` options (`FERRITE_QEMU_NETDEV_OPTS`), e.g. a hostfwd.
    pub netdev_opts: Option<String>,
    /// Extra kernel command-line arguments (`FERRITE_QEMU_APPEND`).
    pub kernel_append: Option<String>,
    /// The kernel to boot (`FERRITE_QEMU_BED`): `6.1` (the default) or `6.12` (Debian 13,
    /// with NVMe in-band authentication; prepared by `e2e/qemu/prepare.sh` beside 6.1).
    pub bed: Option<String>,
}

/// Prepares the bed (a no-op when cached) and runs `script` (relative to `e2e/qemu/guest`)
/// in a fresh guest with `env` as its test.env.
pub fn run_guest(script: &str, timeout_s: u32, env: &[(&str, String)]) -> Result<GuestRun, String> {
    run_guest_with(script, timeout_s, env, &GuestOptions::default())
}

/// [`run_guest`] with extra binaries, a host NQN, network or kernel options.
pub fn run_guest_with(
    script: &str,
    timeout_s: u32,
    env: &[(&str, String)],
    opts: &GuestOptions,
) -> Result<GuestRun, String> {
    let qemu = workspace_root().join("e2e").join("qemu");
    let prep = Command::new("bash")
        .arg(qemu.join("prepare.sh"))
        .output()
        .map_err(|e| format!("running prepare.sh: {e}"))?;
    if !prep.status.success() {
        return Err(format!(
            "e2e/qemu/prepare.sh failed ({}); it needs root and Debian's apt:\n{}{}",
            prep.status,
            String::from_utf8_lossy(&prep.stdout),
            String::from_utf8_lossy(&prep.stderr)
        ));
    }
    let script_path: PathBuf = qemu.join("guest").join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(qemu.join("run-guest.sh"))
        .arg(&script_path)
        .arg(timeout_s.to_string());
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    if !opts.bins.is_empty() {
        let bins: Vec<String> = opts.bins.iter().map(|b| b.display().to_string()).collect();
        cmd.env("FERRITE_GUEST_BINS", bins.join(" "));
    }
    if let Some(n) = &opts.hostnqn {
        cmd.env("FERRITE_GUEST_HOSTNQN", n);
    }
    if let Some(n) = &opts.netdev_opts {
        cmd.env("FERRITE_QEMU_NETDEV_OPTS", n);
    }
    if let Some(a) = &opts.kernel_append {
        cmd.env("FERRITE_QEMU_APPEND", a);
    }
    if let Some(b) = &opts.bed {
        cmd.env("FERRITE_QEMU_BED", b);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running run-guest.sh: {e}"))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(GuestRun {
        passed: out.status.success() && output.contains("FERRITE-GUEST-RESULT: PASS"),
        output,
    })
}
