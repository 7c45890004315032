//! The CSI controller side: Identity and Controller services ([`controller`]) over
//! Volume objects, with the pure request checks in [`params`], served on
//! `unix:///csi/csi.sock` (the external-provisioner/attacher sidecars) or `tcp://IP:PORT`
//! (tests).

pub mod controller;
pub mod params;

use std::net::SocketAddr;
use std::path::PathBuf;

use ferrite_api::csi::v1::controller_server::ControllerServer;
use ferrite_api::csi::v1::identity_server::IdentityServer;

pub use controller::{ControllerService, Csi};

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
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
        Err(format!(
            "endpoint {s:?} must be unix:///PATH or tcp://IP:PORT"
        ))
    }
}

/// Accepts one connection from a listener.
type AcceptFn<L, S> =
    fn(&L) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<S>> + Send + '_>>;

fn accept_stream<L, S>(
    l: L,
    accept: AcceptFn<L, S>,
) -> impl futures::Stream<Item = std::io::Result<S>>
where
    L: Send + 'static,
    S: Send + 'static,
{
    futures::stream::unfold(l, move |l| async move {
        let r = accept(&l).await;
        Some((r, l))
    })
}

/// Serves Identity and Controller on `ep` until `shutdown` completes.
pub async fn serve(
    ep: &Endpoint,
    svc: Csi,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    serve_with_metrics(ep, svc, metrics, shutdown).await
}

/// [`serve`], counting every request in `metrics` by method and gRPC code.
pub async fn serve_with_metrics(
    ep: &Endpoint,
    svc: Csi,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let router = tonic::transport::Server::builder()
        .layer(crate::metrics::CsiLayer(metrics))
        .add_service(IdentityServer::new(svc.clone()))
        .add_service(ControllerServer::new(svc));
    match ep {
        Endpoint::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing stale socket {}: {e}", path.display())),
            }
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("listening on {}: {e}", path.display()))?;
            tracing::info!(endpoint = %path.display(), "serving CSI Identity and Controller");
            let incoming = accept_stream(l, |l| {
                Box::pin(async move { l.accept().await.map(|(s, _)| s) })
            });
            let r = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            r.map_err(|e| format!("serving on {}: {e}", path.display()))
        }
        Endpoint::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listening on {addr}: {e}"))?;
            tracing::info!(endpoint = %addr, "serving CSI Identity and Controller");
            let incoming = accept_stream(l, |l| {
                Box::pin(async move { l.accept().await.map(|(s, _)| s) })
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| format!("serving on {addr}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            "unix:///csi/csi.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/csi/csi.sock".into()))
        );
        assert!(matches!(
            "tcp://127.0.0.1:10000".parse::<Endpoint>(),
            Ok(Endpoint::Tcp(_))
        ));
        assert!("http://x".parse::<Endpoint>().is_err());
        assert!("unix://".parse::<Endpoint>().is_err());
    }
}
