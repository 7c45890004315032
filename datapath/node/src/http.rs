//! A small HTTP endpoint for operators and tests: `GET /metrics` (Prometheus text format) and
//! `GET /v1/status` (JSON). Read-only; one request per connection.

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
    /// Compares the replicas of a volume; Err is a message for a 404/500 answer.
    async fn compare(&self, volume: &str) -> Result<String, (u16, String)>;
}

/// Starts serving on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, source: Arc<dyn StatusSource>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the HTTP endpoint {addr}"))?;
    let bound = listener.local_addr()?;
    info!(%bound, "serving /metrics and /v1/status");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    let src = source.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(s, src).await {
                            debug!(%peer, error = %e, "HTTP request failed");
                        }
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
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
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
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    match (method, path) {
        ("GET", "/metrics") => respond(&mut s, 200, "text/plain; version=0.0.4", &source.metrics()).await,
        ("GET", "/v1/status") => respond(&mut s, 200, "application/json", &source.status_json()).await,
        ("GET", p) if p.starts_with("/v1/volumes/") && p.ends_with("/compare") => {
            let uuid = &p["/v1/volumes/".len()..p.len() - "/compare".len()];
            match source.compare(uuid).await {
                Ok(body) => respond(&mut s, 200, "application/json", &body).await,
                Err((code, msg)) => respond(&mut s, code, "text/plain", &format!("{msg}\n")).await,
            }
        }
        ("GET", _) => respond(&mut s, 404, "text/plain", "not found: try /metrics, /v1/status or /v1/volumes/UUID/compare\n").await,
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
    let head = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}
