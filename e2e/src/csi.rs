//! CSI helpers for tests: building `ferrite-csi-node` and connecting a gRPC channel to a
//! CSI endpoint (`unix:///PATH` or `tcp://IP:PORT`).

use std::path::PathBuf;
use std::process::Command;

use crate::workspace_root;

/// Builds `ferrite-csi-node` (incrementally) and returns the binary's path.
/// `FERRITE_CSI_NODE_BIN` overrides it.
pub fn node_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("FERRITE_CSI_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "ferrite-csi-node",
            "--bin",
            "ferrite-csi-node",
        ])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p ferrite-csi-node failed: {status}"));
    }
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target_dir.join("debug").join("ferrite-csi-node");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not found after the build", bin.display()))
    }
}

/// Opens a gRPC channel to a CSI endpoint: `unix:///PATH` (as the kubelet does) or
/// `tcp://IP:PORT`.
pub async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    if let Some(path) = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
    {
        let path = PathBuf::from(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        });
        // The URI is not used for a unix socket, but tonic needs a valid one.
        return tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| format!("connecting to {endpoint}: {e}"));
    }
    let addr = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("endpoint {endpoint:?} is not unix:// or tcp://"))?;
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("endpoint {endpoint}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))
}

/// A CSI Controller client on the operator's `tcp://127.0.0.1:PORT` endpoint, waiting up to
/// 20 s for it to listen.
pub async fn controller_client(
    port: u16,
) -> ferrite_api::csi::v1::controller_client::ControllerClient<tonic::transport::Channel> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match ferrite_api::csi::v1::controller_client::ControllerClient::connect(format!(
            "http://127.0.0.1:{port}"
        ))
        .await
        {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() > deadline => panic!("CSI endpoint: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
