//! [`ApiNode`]: a `ferrite-datapath` process driven through its gRPC node API, as the
//! operator drives it: node name from a one-line config, NVMe/TCP on `IP:4420`, the node API
//! on `IP:9500` with mutual TLS ([`crate::tls`]), HTTP (`/metrics`, `/v1/status`) on `IP:9420`, state in `DIR/NAME-state`, log
//! in `DIR/NAME.log`. Each test gives its nodes their own 127.0.x.y addresses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_api::node::v1 as pb;
use ferrite_api::node::v1::node_client::NodeClient;
use tonic::transport::Channel;

/// One datapath process; SIGKILLed when dropped.
pub struct ApiNode {
    pub name: String,
    pub ip: String,
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl ApiNode {
    /// Starts node `name` on `ip` with binary `bin`, keeping its files in `dir`.
    pub fn start(bin: &Path, name: &str, ip: &str, dir: &Path) -> Result<ApiNode, String> {
        let mut n = ApiNode {
            name: name.into(),
            ip: ip.into(),
            bin: bin.into(),
            dir: dir.into(),
            child: None,
        };
        n.restart()?;
        Ok(n)
    }

    /// Starts the process again (after [`ApiNode::kill9`]) with the same state directory.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("node {} is running", self.name));
        }
        let config = self.dir.join(format!("{}.yaml", self.name));
        std::fs::write(&config, format!("node: {{name: {}}}\n", self.name))
            .map_err(|e| format!("config: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.name)))
            .map_err(|e| format!("log: {e}"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("{}:4420", self.ip)])
            .args(["--grpc", &format!("{}:9500", self.ip)])
            .arg("--grpc-tls-dir")
            .arg(crate::tls::pki_dir())
            .args(["--http", &format!("{}:9420", self.ip)])
            .arg("--state-dir")
            .arg(self.dir.join(format!("{}-state", self.name)))
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL (nothing is flushed or closed).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node API URL (a FerriteNode's `spec.apiEndpoint`).
    pub fn url(&self) -> String {
        format!("https://{}:9500", self.ip)
    }

    /// Compares the replicas of a volume this node serves (node API `CompareVolume`).
    pub async fn compare(&self, volume: &str) -> pb::CompareVolumeResponse {
        crate::tls::compare(&self.url(), volume)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The HTTP endpoint address (`/metrics`, `/v1/status`, compare).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(
            self.ip
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            9420,
        )
    }

    /// A node API client, waiting up to 30 s for the node to listen.
    pub async fn client(&self) -> NodeClient<Channel> {
        node_api_client(&self.url()).await
    }

    /// The replicas the node holds (ListReplicas).
    pub async fn replicas(&self) -> Vec<pb::Replica> {
        self.client()
            .await
            .list_replicas(pb::ListReplicasRequest {})
            .await
            .expect("ListReplicas")
            .into_inner()
            .replicas
    }

    /// The volumes the node serves (ListVolumes).
    pub async fn volumes(&self) -> Vec<pb::Volume> {
        self.client()
            .await
            .list_volumes(pb::ListVolumesRequest {})
            .await
            .expect("ListVolumes")
            .into_inner()
            .volumes
    }

    /// The pools the node holds (ListPools).
    pub async fn pools(&self) -> Vec<pb::Pool> {
        self.client()
            .await
            .list_pools(pb::ListPoolsRequest {})
            .await
            .expect("ListPools")
            .into_inner()
            .pools
    }
}

/// A client of the node API at `url` (`https://IP:PORT` with the test CA's client
/// certificate, or `http://`), waiting up to 30 s for it to listen.
pub async fn node_api_client(url: &str) -> NodeClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match crate::tls::channel(url).await {
            Ok(c) => return NodeClient::new(c),
            Err(e) if Instant::now() > deadline => panic!("node API at {url} not up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
