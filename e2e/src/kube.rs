//! A throwaway kube-apiserver test bed (`e2e/kube/start.sh`) for operator tests.
//!
//! [`KubeBed::start`] runs `e2e/kube/start.sh` into a fresh temporary folder, reads the
//! `DIR/env` it writes, and hands out the admin `KUBECONFIG` path and the bed's `kubectl`.
//! Dropping the bed runs `e2e/kube/stop.sh` and removes the folder (kept, with its logs, when
//! `FERRITE_KEEP_KUBE_BED` is set). [`KubeBed::available`] says whether the bed can run here
//! (the prepared binary cache exists), so tests can skip cleanly elsewhere.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// A running etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.
pub struct KubeBed {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    env: BTreeMap<String, String>,
}

/// The cache folder `prepare.sh` fills (`FERRITE_KUBE_CACHE`, else `FERRITE_CACHE/kube`, else
/// `~/.cache/ferrite/kube`).
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("FERRITE_KUBE_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("FERRITE_CACHE") {
        return PathBuf::from(p).join("kube");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/ferrite/kube")
}

/// Result of a `kubectl` run: its exit status and output as text.
#[derive(Debug)]
pub struct Kubectl {
    /// Whether kubectl exited with 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Kubectl {
    fn from(o: Output) -> Self {
        Kubectl {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl KubeBed {
    /// Whether the bed's binaries are cached on this machine (start.sh would otherwise build
    /// them for ~15 minutes, as root).
    pub fn available() -> bool {
        cache_dir().join("bed.env").exists()
    }

    /// Panics unless [`KubeBed::available`]: a test that needs the bed fails without it, so
    /// that CI can never pass without running it.
    pub fn require() {
        assert!(
            Self::available(),
            "the kube bed is not prepared: run e2e/kube/prepare.sh (scripts/test does)"
        );
    }

    /// Starts a bed in a new temporary folder and waits until it is fully ready.
    pub fn start() -> Result<KubeBed, String> {
        let dir = tempfile::Builder::new()
            .prefix("ferrite-kube-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?;
        let path = dir.path().to_path_buf();
        let script = workspace_root().join("e2e/kube/start.sh");
        let out = Command::new(&script)
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        let mut bed = KubeBed {
            dir: Some(dir),
            path,
            env: BTreeMap::new(),
        };
        if !out.status.success() {
            return Err(format!(
                "start.sh failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = std::fs::read_to_string(bed.path.join("env"))
            .map_err(|e| format!("reading {}/env: {e}", bed.path.display()))?;
        bed.env = parse_env(&text);
        for key in ["KUBECONFIG", "FERRITE_KUBECTL", "FERRITE_APISERVER"] {
            if !bed.env.contains_key(key) {
                return Err(format!("{key} missing from {}/env", bed.path.display()));
            }
        }
        Ok(bed)
    }

    /// The bed's folder (logs, pki, env).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// A value from `DIR/env`.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.env("KUBECONFIG").unwrap_or_default())
    }

    /// The bed's kubectl binary.
    pub fn kubectl_path(&self) -> PathBuf {
        PathBuf::from(self.env("FERRITE_KUBECTL").unwrap_or("kubectl"))
    }

    /// The API server URL.
    pub fn apiserver(&self) -> &str {
        self.env("FERRITE_APISERVER").unwrap_or_default()
    }

    /// A `kubectl` command with `--kubeconfig` set (version-skew warnings silenced).
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(self.kubectl_path());
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--warnings-as-errors=false");
        c.stdin(Stdio::null());
        c
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Result<Kubectl, String> {
        self.kubectl_cmd()
            .args(args)
            .output()
            .map(Kubectl::from)
            .map_err(|e| format!("running kubectl: {e}"))
    }

    /// Runs kubectl with `args`, feeding `stdin` (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Kubectl, String> {
        let mut child = self
            .kubectl_cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running kubectl: {e}"))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        child
            .wait_with_output()
            .map(Kubectl::from)
            .map_err(|e| format!("kubectl: {e}"))
    }

    /// Runs kubectl with `args` and fails with its stderr unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        let r = self.kubectl(args)?;
        if r.ok {
            Ok(r.stdout)
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), r.stderr))
        }
    }

    /// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Applies `manifests/crds.yaml` and waits until every CRD in it is Established.
    pub fn install_crds(&self) -> Result<(), String> {
        let crds = workspace_root().join("manifests/crds.yaml");
        let crds = crds.to_string_lossy().into_owned();
        self.kubectl_ok(&["apply", "-f", &crds])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ])?;
        Ok(())
    }

    /// Stops the bed now (also done on drop).
    pub fn stop(&mut self) {
        if self.env.is_empty() && !self.path.join("pids").exists() {
            return;
        }
        let script = workspace_root().join("e2e/kube/stop.sh");
        let _ = Command::new(script)
            .arg(&self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.env.clear();
    }
}

impl Drop for KubeBed {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("FERRITE_KEEP_KUBE_BED").is_some()
            && let Some(d) = self.dir.take()
        {
            let kept = d.keep();
            eprintln!("kube bed kept in {}", kept.display());
        }
    }
}

/// Parses `KEY=VALUE` lines.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Builds `ferrite-operator` (incrementally) and returns the binary's path
/// (`FERRITE_OPERATOR_BIN` overrides).
pub fn operator_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("FERRITE_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "ferrite-operator",
            "--bin",
            "ferrite-operator",
        ])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p ferrite-operator failed: {status}"));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("debug/ferrite-operator"))
}

/// A running `ferrite-operator` process (log in the bed's folder); killed when dropped.
pub struct OperatorProcess {
    child: std::process::Child,
}

impl OperatorProcess {
    /// Starts the operator against `bed` with `--identity op-N`, a 1 s resync, the Lease in
    /// `default`, the test CA's node API client certificate ([`crate::tls::pki_dir`]) and
    /// `extra` arguments; logs to `DIR/operator-N.log`.
    pub fn start(
        bed: &KubeBed,
        bin: &Path,
        n: u32,
        extra: &[String],
    ) -> Result<OperatorProcess, String> {
        let log = std::fs::File::create(bed.dir().join(format!("operator-{n}.log")))
            .map_err(|e| format!("operator log: {e}"))?;
        let child = Command::new(bin)
            .args([
                "--resync-secs",
                "1",
                "--lease-namespace",
                "default",
                "--identity",
            ])
            .arg(format!("op-{n}"))
            .arg("--node-tls-dir")
            .arg(crate::tls::pki_dir())
            .args(extra)
            .env("KUBECONFIG", bed.kubeconfig())
            .env("RUST_LOG", "info,ferrite_operator=debug,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(OperatorProcess { child })
    }

    /// SIGKILLs the operator and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
