//! Where the plugin listens: `unix:///csi/csi.sock` (what the kubelet and
//! node-driver-registrar use) or `tcp://127.0.0.1:10000` (tests, debugging).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ferrite_api::csi::v1::identity_server::IdentityServer;
use ferrite_api::csi::v1::node_server::NodeServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::config::Plugin;
use crate::identity::IdentityService;
use crate::node::NodeService;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            // unix:///a/b and unix:/a/b both name /a/b.
            let p = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("/{p}")
            };
            if p.len() < 2 {
                return Err(format!("endpoint {s:?} has no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            return a
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|e| format!("endpoint {s:?}: {e} (use tcp://IP:PORT)"));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Err(format!(
            "endpoint {s:?} must be unix:///PATH or tcp://IP:PORT"
        ))
    }
}

/// Serves the Identity and Node services on `ep` until `shutdown` completes.
pub async fn serve(
    ep: &Endpoint,
    plugin: Arc<Plugin>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(plugin.clone())))
        .add_service(NodeServer::new(NodeService::new(plugin)));
    match ep {
        Endpoint::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            // A socket left by a previous run would make bind fail.
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale socket"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing stale socket {}: {e}", path.display())),
            }
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("listening on {}: {e}", path.display()))?;
            tracing::info!(endpoint = %path.display(), "serving CSI Identity and Node on a unix socket");
            let r = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            r.map_err(|e| format!("serving on {}: {e}", path.display()))
        }
        Endpoint::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listening on {addr}: {e}"))?;
            tracing::info!(endpoint = %addr, "serving CSI Identity and Node on TCP");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), shutdown)
                .await
                .map_err(|e| format!("serving on {addr}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            "unix:///csi/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            "unix:/csi/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            "/csi/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/csi/csi.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:10000".parse().unwrap())
        );
        assert!("tcp://nohost".parse::<Endpoint>().is_err());
        assert!("http://x".parse::<Endpoint>().is_err());
        assert!("unix://".parse::<Endpoint>().is_err());
    }
}
