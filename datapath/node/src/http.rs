//! A small HTTP endpoint for operators and tests: `GET /metrics` (Prometheus text format) and
//! `GET /v1/status` (JSON). Read-only and unauthenticated, so it serves nothing that costs
//! I/O or changes anything (the replica comparison is the node API's `CompareVolume`, behind
//! mutual TLS). One request per connection; at most [`MAX_CONNECTIONS`] at once (more are
//! closed at once), and every read and write has a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

/// What the endpoint serves.
#[async_trait::async_trait]
pub trait StatusSource: Send + Sync + 'static {
    fn metrics(&self) -> String;
    fn status_json(&self) -> String;
}

/// Requests served at once; connections beyond it are closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts serving on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, source: Arc<dyn StatusSource>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint {addr}"))?;
    let bound = listener.local_addr()?;
    info!(%bound, "serving /metrics and /v1/status");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        debug!(%peer, "HTTP connection refused: {MAX_CONNECTIONS} already open");
                        drop(s);
                        continue;
                    };
                    let src = source.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(s, src).await {
                            debug!(%peer, error = %e, "HTTP request failed");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(bound)
}

async fn handle(mut s: TcpStream, source: Arc<dyn StatusSource>) -> Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&chunk[..n]);
        if req.len() > 16 * 1024 {
            return respond(&mut s, 431, "text/plain", "request header too large\n").await;
        }
    }
    let text = String::from_utf8_lossy(&req);
    let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    match (method, path) {
        ("GET", "/metrics") => {
            respond(&mut s, 200, "text/plain; version=0.0.4", &source.metrics()).await
        }
        ("GET", "/v1/status") => {
            respond(&mut s, 200, "application/json", &source.status_json()).await
        }
        ("GET", _) => {
            respond(
                &mut s,
                404,
                "text/plain",
                "not found: try /metrics or /v1/status\n",
            )
            .await
        }
        _ => respond(&mut s, 405, "text/plain", "only GET is served\n").await,
    }
}

async fn respond(s: &mut TcpStream, code: u16, kind: &str, body: &str) -> Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tokio::time::timeout(IO_TIMEOUT, async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        s.shutdown().await
    })
    .await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait::async_trait]
    impl StatusSource for Fixed {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn status_json(&self) -> String {
            "{}".into()
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_only_metrics_and_status() {
        let addr = serve("127.0.0.1:0".parse().expect("addr"), Arc::new(Fixed))
            .await
            .expect("serve");
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/v1/status").await.ends_with("{}"));
        // The comparison left HTTP for the authenticated node API; these used to panic the
        // request task on a slice bound or read whole replicas for anyone.
        for p in [
            "/v1/volumes/compare",
            "/v1/volumes//compare",
            "/v1/volumes/x/compare",
            "/v1/volumes/",
        ] {
            assert!(get(addr, p).await.starts_with("HTTP/1.1 404"), "{p}");
        }
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed() {
        let addr = serve("127.0.0.1:0".parse().expect("addr"), Arc::new(Fixed))
            .await
            .expect("serve");
        // Idle connections hold their slots until the request timeout.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("closed at once");
        assert_eq!(
            n.ok(),
            Some(0),
            "the extra connection is closed without an answer"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
    }
}
