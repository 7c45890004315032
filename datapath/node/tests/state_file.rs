//! A damaged state file never keeps the node from starting: the real `ferrite-datapath`
//! started next to a configuration file and a state file with a bad entry, or one that is not
//! YAML at all, serves the configuration's objects and the valid state entries, logs and
//! reports (`/v1/status` `state_errors`) what it refused, and keeps the file as it was.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_api::node::v1 as pb;
use ferrite_api::node::v1::node_client::NodeClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPLICA: &str = "3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11";

/// One datapath process, its output in `log`; killed when dropped.
struct Datapath {
    child: Child,
    ip: &'static str,
    log: PathBuf,
}

impl Datapath {
    /// Starts the datapath with the configuration `config` and the state folder `state`.
    fn start(ip: &'static str, dir: &Path, config: &str, state: &Path) -> Datapath {
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("datapath.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferrite-datapath"))
            .args(["--config", path.to_str().unwrap()])
            .args(["--listen", &format!("{ip}:4420")])
            .args(["--grpc", &format!("{ip}:9500"), "--grpc-insecure"])
            .args(["--http", &format!("{ip}:9420")])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--log-level", "info"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Datapath { child, ip, log }
    }

    /// `/v1/status`, once the node answers.
    async fn status(&mut self) -> Value {
        let addr: SocketAddr = format!("{}:9420", self.ip).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("the datapath exited ({exit}):\n{}", self.log());
            }
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                let body = out
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                return serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
            }
            assert!(
                Instant::now() < deadline,
                "no /v1/status on {addr}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit; returns the output.
    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "datapath exited with {s}:\n{}", self.log());
                return self.log();
            }
            assert!(
                Instant::now() < deadline,
                "datapath did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn disk(dir: &Path, name: &str) -> String {
    format!("file:{}:256MiB", dir.join(name).display())
}

/// The configuration: a pool `cp` and a replica in it.
fn config(dir: &Path) -> String {
    format!(
        "node: {{name: a}}\npools:\n  - name: cp\n    disks: [\"{}\"]\n\
         replicas:\n  - {{uuid: {REPLICA}, pool: cp, size: 64MiB}}\n",
        disk(dir, "c0.img")
    )
}

fn names(status: &Value, section: &str, key: &str) -> Vec<String> {
    status[section]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o[key].as_str().unwrap().to_string())
        .collect()
}

/// The `node-state.yaml.bad-*` files in `dir`.
fn kept(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("node-state.yaml.bad-")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_state_entry_is_refused_and_the_rest_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let text = format!(
        "pools:\n  - name: sp\n    disks: [\"{}\"]\n  - name: broken\n    stripe_size: 64KiB\n",
        disk(dir, "s0.img")
    );
    let file = state.join("node-state.yaml");
    std::fs::write(&file, &text).unwrap();

    let mut a = Datapath::start("127.0.94.1", dir, &config(dir), &state);
    let status = a.status().await;
    let mut pools = names(&status, "pools", "name");
    pools.sort();
    assert_eq!(pools, ["cp", "sp"], "{status}");
    assert_eq!(names(&status, "replicas", "uuid"), [REPLICA], "{status}");
    let errors = status["state_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["file"], file.display().to_string());
    assert_eq!(errors[0]["entry"], "pools[1] (name \"broken\")");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("missing field `disks`"),
        "{status}"
    );
    // The file stays as it was, and a copy of it is kept for when the next write drops the
    // refused entry.
    let aside = PathBuf::from(status["state_file_kept_aside"].as_str().unwrap());
    assert_eq!(kept(&state), std::slice::from_ref(&aside));
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), text);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let log = a.stop();
    assert!(log.contains("ERROR"), "{log}");
    let refused = log
        .lines()
        .find(|l| l.contains("entry refused"))
        .unwrap_or_else(|| panic!("{log}"));
    for part in [
        "node-state.yaml",
        "pools[1]",
        "broken",
        "missing field `disks`",
    ] {
        assert!(refused.contains(part), "{part} not in {refused}");
    }
    assert!(log.contains(&aside.display().to_string()), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_is_not_yaml_is_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage: &[u8] = b"\x7fELF\x00\xff\xfe\x00garbage {{{ [[[ \x9c";
    let file = state.join("node-state.yaml");
    std::fs::write(&file, garbage).unwrap();

    let mut a = Datapath::start("127.0.94.2", dir, &config(dir), &state);
    let status = a.status().await;
    assert_eq!(names(&status, "pools", "name"), ["cp"], "{status}");
    assert_eq!(names(&status, "replicas", "uuid"), [REPLICA], "{status}");
    let errors = status["state_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["entry"], "the whole file");
    assert!(
        errors[0]["error"].as_str().unwrap().contains("not UTF-8"),
        "{status}"
    );
    let aside = PathBuf::from(status["state_file_kept_aside"].as_str().unwrap());
    assert!(
        !file.exists(),
        "the damaged file is renamed, not left to be overwritten"
    );
    assert_eq!(std::fs::read(&aside).unwrap(), garbage);

    // The next state write starts a new file; the damaged one is still there.
    let mut c = NodeClient::connect("http://127.0.94.2:9500").await.unwrap();
    let req = pb::CreatePoolRequest {
        name: "np".into(),
        disks: vec![disk(dir, "n0.img")],
        stripe_size: 0,
        block_size: 0,
    };
    c.create_pool(req).await.unwrap();
    assert!(std::fs::read_to_string(&file).unwrap().contains("np"));
    assert_eq!(std::fs::read(&aside).unwrap(), garbage);
    drop(c);

    let log = a.stop();
    let moved = log
        .lines()
        .find(|l| l.contains("moved aside"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        moved.contains(&aside.display().to_string()) && moved.contains("node-state.yaml"),
        "{moved}"
    );
    assert!(
        log.contains("the whole file") && log.contains("not UTF-8"),
        "{log}"
    );
}
