//! Several `ferrite-datapath` nodes on one machine: each with its own loopback address (or
//! network namespace), its own disks (sparse files) and config file, started, killed with
//! SIGKILL, restarted and reconfigured (SIGHUP) by tests; status read over HTTP, the node
//! API (replica comparison, objects created by tests) over mutual TLS ([`crate::tls`]).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::datapath::Datapath;

/// NVMe/TCP port nodes listen on by default (each node has its own address).
pub const NVME_PORT: u16 = 4420;
/// HTTP status port by default.
pub const HTTP_PORT: u16 = 9420;
/// Node API (gRPC) port by default.
pub const GRPC_PORT: u16 = 9500;

/// One node of a test cluster.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub nvme_port: u16,
    pub http_port: u16,
    pub grpc_port: u16,
    pub dir: PathBuf,
    /// Prefix for running the datapath (e.g. `ip netns exec NS`).
    pub wrapper: Vec<String>,
    dp: Option<Datapath>,
}

impl Node {
    /// A node named `name` at `ip`, keeping its files under `dir`.
    pub fn new(name: &str, ip: IpAddr, dir: PathBuf) -> Node {
        Node {
            name: name.into(),
            ip,
            nvme_port: NVME_PORT,
            http_port: HTTP_PORT,
            grpc_port: GRPC_PORT,
            dir,
            wrapper: Vec::new(),
            dp: None,
        }
    }

    pub fn nvme_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.nvme_port)
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.http_port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(format!("{}.yaml", self.name))
    }

    /// The host NQN the node uses towards other nodes (the datapath's default for its name).
    pub fn hostnqn(&self) -> String {
        format!("nqn.2024-01.dev.ferrite:node-{}", self.name)
    }

    /// A disk backend spec for this node's `i`th sparse disk.
    pub fn disk(&self, i: usize, size: &str) -> String {
        format!(
            "file:{}:{size}",
            self.dir
                .join(format!("{}-disk{i}.img", self.name))
                .display()
        )
    }

    /// The node API URL (mutual TLS).
    pub fn api_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.ip, self.grpc_port))
    }

    /// Compares a volume's replicas on this node (node API `CompareVolume`).
    pub async fn compare(
        &self,
        volume: &str,
    ) -> Result<ferrite_api::node::v1::CompareVolumeResponse, String> {
        crate::tls::compare(&self.api_url(), volume).await
    }

    /// Writes the node's config file. `body` holds pools/replicas/volumes; node identity,
    /// listener, HTTP endpoint and the node API (mutual TLS, state in `DIR/NAME-state`) are
    /// added here.
    pub fn write_config(&self, body: &str) -> Result<(), String> {
        let text = format!(
            "node: {{name: {}}}\nlisten: [\"{}\"]\nhttp: {}\ngrpc: \"{}\"\ngrpc_tls_dir: \"{}\"\nstate_dir: \"{}\"\n{body}",
            self.name,
            self.nvme_addr(),
            self.http_addr(),
            SocketAddr::new(self.ip, self.grpc_port),
            crate::tls::pki_dir().display(),
            self.dir.join(format!("{}-state", self.name)).display(),
        );
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        std::fs::write(self.config_path(), text)
            .map_err(|e| format!("writing {}: {e}", self.config_path().display()))
    }

    /// Starts the datapath with the config file.
    pub fn start(&mut self) -> Result<(), String> {
        if self.dp.is_some() {
            return Err(format!("node {} already running", self.name));
        }
        let args = vec![
            "--config".to_string(),
            self.config_path().display().to_string(),
        ];
        self.dp = Some(Datapath::start_wrapped(
            self.nvme_addr(),
            &self.wrapper,
            &args,
        )?);
        Ok(())
    }

    /// Kills the datapath with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(dp) = self.dp.take() {
            dp.kill9();
        }
    }

    /// Stops the datapath with SIGTERM; returns its exit code.
    pub fn stop(&mut self) -> Result<i32, String> {
        self.dp
            .take()
            .ok_or_else(|| format!("node {} is not running", self.name))?
            .stop()
    }

    /// Sends SIGHUP (reload the config file).
    pub fn reload(&self) -> Result<(), String> {
        let pid = self
            .dp
            .as_ref()
            .and_then(|d| d.pid())
            .ok_or("not running")?;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
            return Err(format!("kill(SIGHUP): {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Log lines the node printed.
    pub fn log(&self) -> Vec<String> {
        self.dp.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// GET `path` on the node's HTTP endpoint: (status code, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.http_addr(), path)
    }

    /// The node's `/v1/status`.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let (code, body) = self.get("/v1/status")?;
        if code != 200 {
            return Err(format!("status {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("bad status JSON: {e}: {body}"))
    }

    /// The status of volume `uuid`, if the node serves it.
    pub fn volume(&self, uuid: &str) -> Option<serde_json::Value> {
        let st = self.status().ok()?;
        st["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["uuid"] == uuid)
            .cloned()
    }

    /// Waits until `pred` holds for the volume's status (or fails after `timeout`).
    pub fn wait_volume(
        &self,
        uuid: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.volume(uuid);
            if let Some(v) = &v
                && pred(v)
            {
                return Ok(v.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "volume {uuid} on {}: not {what} after {timeout:?}; last status: {v:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A minimal HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP answer: {raw}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    Ok((code, body.to_string()))
}

/// A network namespace with a veth link to the root namespace, removed on drop. The node
/// inside has address `inner`; the root side has `outer`. `cut`/`restore` take the link down
/// and up: packets are dropped silently, as when a cable is pulled.
pub struct NetNs {
    pub name: String,
    host_if: String,
    pub inner: IpAddr,
    pub outer: IpAddr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl NetNs {
    /// Creates namespace `fe{tag}` linked by a /30 in 10.201.`subnet`.0.
    pub fn create(tag: &str, subnet: u8) -> Result<NetNs, String> {
        let name = format!("fe{tag}");
        let host_if = format!("fe{tag}h");
        let ns_if = format!("fe{tag}n");
        let outer = format!("10.201.{subnet}.1");
        let inner = format!("10.201.{subnet}.2");
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            inner: inner.parse().map_err(|e| format!("{e}"))?,
            outer: outer.parse().map_err(|e| format!("{e}"))?,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{outer}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{inner}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The wrapper that runs a command inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    pub fn cut(&self) -> Result<(), String> {
        ip(&["link", "set", &self.host_if, "down"])
    }

    pub fn restore(&self) -> Result<(), String> {
        ip(&["link", "set", &self.host_if, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
