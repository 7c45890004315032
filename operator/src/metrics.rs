//! The operator's Prometheus metrics ([`Metrics`]) and the HTTP endpoint serving them
//! (`--metrics ADDR`: `GET /metrics` in the text format, `GET /healthz`).
//!
//! Families (all prefixed `ferrite_operator_`): reconciles by controller and result and
//! their durations (counted by [`crate::reconcile::measured`]), whether this process holds
//! the leader Lease, Volumes by state and StoragePools by phase as last observed by the
//! reconcilers, and CSI requests by method and gRPC code ([`CsiLayer`]). The endpoint is a
//! small HTTP/1.1 server on tokio, like the datapath's: read-only, one request per
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http;

use crate::crd::{PoolPhase, VolumeState};

/// Reconcile durations' bucket bounds, in seconds: a pass is a few API and node calls.
const RECONCILE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Label of objects that have no state or phase in their status yet.
pub const UNKNOWN: &str = "Unknown";

const VOLUME_STATES: [VolumeState; 5] = [
    VolumeState::Pending,
    VolumeState::Online,
    VolumeState::Degraded,
    VolumeState::Rebuilding,
    VolumeState::Faulted,
];

const POOL_PHASES: [PoolPhase; 4] = [
    PoolPhase::Pending,
    PoolPhase::Online,
    PoolPhase::Degraded,
    PoolPhase::Failed,
];

/// The operator's controllers, as the `controller` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    /// FerriteNode.
    Node,
    /// StoragePool.
    Pool,
    /// Volume.
    Volume,
}

impl ControllerKind {
    /// Every controller.
    pub const ALL: [ControllerKind; 3] = [
        ControllerKind::Node,
        ControllerKind::Pool,
        ControllerKind::Volume,
    ];

    /// The label value: `node`, `pool` or `volume`.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Node => "node",
            ControllerKind::Pool => "pool",
            ControllerKind::Volume => "volume",
        }
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listening socket failed.
    #[error("metrics endpoint {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A gauge vector counting objects by their last observed state (one label), kept per object
/// so that a change of one object or a fresh listing of all of them recounts exactly.
struct StateCounts {
    gauge: IntGaugeVec,
    /// Object name → label value.
    objects: BTreeMap<String, String>,
    /// Label values ever set, so that states nobody is in any more go back to 0.
    emitted: BTreeSet<String>,
}

impl StateCounts {
    fn new(gauge: IntGaugeVec, known: impl IntoIterator<Item = String>) -> StateCounts {
        let mut s = StateCounts {
            gauge,
            objects: BTreeMap::new(),
            emitted: known.into_iter().collect(),
        };
        s.emitted.insert(UNKNOWN.into());
        s.publish();
        s
    }

    fn publish(&mut self) {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for state in self.objects.values() {
            *counts.entry(state.as_str()).or_default() += 1;
        }
        for state in counts.keys() {
            self.emitted.insert((*state).to_string());
        }
        for state in &self.emitted {
            let n = counts.get(state.as_str()).copied().unwrap_or(0);
            self.gauge.with_label_values(&[state.as_str()]).set(n);
        }
    }

    fn set(&mut self, name: &str, state: String) {
        if self.objects.get(name) != Some(&state) {
            self.objects.insert(name.to_string(), state);
            self.publish();
        }
    }

    fn forget(&mut self, name: &str) {
        if self.objects.remove(name).is_some() {
            self.publish();
        }
    }

    fn replace(&mut self, all: BTreeMap<String, String>) {
        if self.objects != all {
            self.objects = all;
            self.publish();
        }
    }
}

fn lock(m: &Mutex<StateCounts>) -> std::sync::MutexGuard<'_, StateCounts> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn volume_label(s: Option<VolumeState>) -> String {
    s.map_or_else(|| UNKNOWN.into(), |s| format!("{s:?}"))
}

fn pool_label(p: Option<PoolPhase>) -> String {
    p.map_or_else(|| UNKNOWN.into(), |p| format!("{p:?}"))
}

/// The operator's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_seconds: HistogramVec,
    leader: IntGauge,
    csi_requests: IntCounterVec,
    volumes: Mutex<StateCounts>,
    pools: Mutex<StateCounts>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, with each known label combination at 0.
    ///
    /// # Panics
    ///
    /// Never in practice: the definitions are constants (names, labels, buckets) that the
    /// unit tests build; `prometheus` only refuses invalid or duplicate definitions.
    pub fn new() -> Metrics {
        const VALID: &str = "constant metric definitions are valid";
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "ferrite_operator_reconciles_total",
                "Reconciles run, by controller (node, pool, volume) and result (ok, error).",
            ),
            &["controller", "result"],
        )
        .expect(VALID);
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "ferrite_operator_reconcile_duration_seconds",
                "Duration of one reconcile, by controller.",
            )
            .buckets(RECONCILE_BUCKETS.to_vec()),
            &["controller"],
        )
        .expect(VALID);
        let leader = IntGauge::new(
            "ferrite_operator_leader",
            "1 while this process holds the leader Lease (runs the controllers), else 0.",
        )
        .expect(VALID);
        let csi_requests = IntCounterVec::new(
            Opts::new(
                "ferrite_operator_csi_requests_total",
                "CSI Identity and Controller requests answered, by method and gRPC code.",
            ),
            &["method", "code"],
        )
        .expect(VALID);
        let volumes = IntGaugeVec::new(
            Opts::new(
                "ferrite_operator_volumes",
                "Volume objects by status.state, as last observed by the reconcilers.",
            ),
            &["state"],
        )
        .expect(VALID);
        let pools = IntGaugeVec::new(
            Opts::new(
                "ferrite_operator_storage_pools",
                "StoragePool objects by status.phase, as last observed by the reconcilers.",
            ),
            &["phase"],
        )
        .expect(VALID);
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_seconds.clone()),
            Box::new(leader.clone()),
            Box::new(csi_requests.clone()),
            Box::new(volumes.clone()),
            Box::new(pools.clone()),
        ] {
            registry.register(c).expect(VALID);
        }
        for kind in ControllerKind::ALL {
            for result in ["ok", "error"] {
                reconciles.with_label_values(&[kind.as_str(), result]);
            }
            reconcile_seconds.with_label_values(&[kind.as_str()]);
        }
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            leader,
            csi_requests,
            volumes: Mutex::new(StateCounts::new(
                volumes,
                VOLUME_STATES.map(|s| volume_label(Some(s))),
            )),
            pools: Mutex::new(StateCounts::new(
                pools,
                POOL_PHASES.map(|p| pool_label(Some(p))),
            )),
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// One reconcile of `kind` ended after `elapsed`, successfully or not.
    pub fn reconciled(&self, kind: ControllerKind, elapsed: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .with_label_values(&[kind.as_str(), result])
            .inc();
        self.reconcile_seconds
            .with_label_values(&[kind.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// Whether this process holds the leader Lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// A CSI request to `method` was answered with `code`.
    pub fn csi_request(&self, method: &str, code: tonic::Code) {
        self.csi_requests
            .with_label_values(&[method, grpc_code_name(code)])
            .inc();
    }

    /// The state the Volume `name` has (or was just given) in its status.
    pub fn volume_state(&self, name: &str, state: Option<VolumeState>) {
        lock(&self.volumes).set(name, volume_label(state));
    }

    /// The Volume `name` is gone.
    pub fn forget_volume(&self, name: &str) {
        lock(&self.volumes).forget(name);
    }

    /// Every Volume that exists, with its state: replaces what was known.
    pub fn observe_volumes<'a>(
        &self,
        all: impl IntoIterator<Item = (&'a str, Option<VolumeState>)>,
    ) {
        let all = all
            .into_iter()
            .map(|(n, s)| (n.to_string(), volume_label(s)))
            .collect();
        lock(&self.volumes).replace(all);
    }

    /// The phase the StoragePool `name` has (or was just given) in its status.
    pub fn pool_phase(&self, name: &str, phase: Option<PoolPhase>) {
        lock(&self.pools).set(name, pool_label(phase));
    }

    /// The StoragePool `name` is gone.
    pub fn forget_pool(&self, name: &str) {
        lock(&self.pools).forget(name);
    }

    /// Every StoragePool that exists, with its phase: replaces what was known.
    pub fn observe_pools<'a>(&self, all: impl IntoIterator<Item = (&'a str, Option<PoolPhase>)>) {
        let all = all
            .into_iter()
            .map(|(n, p)| (n.to_string(), pool_label(p)))
            .collect();
        lock(&self.pools).replace(all);
    }
}

/// A gRPC code as grpc-go and most Prometheus dashboards spell it (`OK`, `NotFound`, ...).
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// The `method` label of a gRPC request path: the method of a CSI service
/// (`/csi.v1.Controller/CreateVolume` → `CreateVolume`), `other` for anything else, so
/// that clients cannot add label values at will.
pub fn csi_method(path: &str) -> &str {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return "other";
    };
    let known = matches!(service, "csi.v1.Identity" | "csi.v1.Controller");
    if known
        && !method.is_empty()
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        method
    } else {
        "other"
    }
}

/// The gRPC code of a response from its headers. tonic answers a handler's error
/// trailers-only (`grpc-status` in the headers); a response without it is a successful one
/// (its `grpc-status: 0` comes in the trailers).
pub fn response_code(headers: &http::HeaderMap, http_status: http::StatusCode) -> tonic::Code {
    match headers.get("grpc-status") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(tonic::Code::Unknown, tonic::Code::from_i32),
        None if http_status.is_success() => tonic::Code::Ok,
        None => tonic::Code::Unknown,
    }
}

/// A tower layer for the CSI gRPC server counting each request in
/// `ferrite_operator_csi_requests_total` by method and gRPC code.
#[derive(Clone, Debug)]
pub struct CsiLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for CsiLayer {
    type Service = CsiCounted<S>;
    fn layer(&self, inner: S) -> CsiCounted<S> {
        CsiCounted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`CsiLayer`] wraps around the CSI services.
#[derive(Clone, Debug)]
pub struct CsiCounted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CsiCounted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = csi_method(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => response_code(resp.headers(), resp.status()),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.csi_request(&method, code);
            r
        })
    }
}

/// Starts serving `GET /metrics` and `GET /healthz` on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, Error> {
    let bind_err = |source| Error::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    tracing::info!(%bound, "serving /metrics and /healthz");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    let m = metrics.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(s, &m).await {
                            tracing::debug!(%peer, error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(bound)
}

async fn handle(mut s: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out")
            })??;
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
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => match metrics.render() {
            Ok(body) => respond(&mut s, 200, "text/plain; version=0.0.4", &body).await,
            Err(e) => {
                tracing::warn!(error = %e, "rendering the metrics failed");
                respond(&mut s, 500, "text/plain", &format!("{e}\n")).await
            }
        },
        ("GET", "/healthz") => respond(&mut s, 200, "text/plain", "ok\n").await,
        ("GET", _) => {
            respond(
                &mut s,
                404,
                "text/plain",
                "not found: try /metrics or /healthz\n",
            )
            .await
        }
        _ => respond(&mut s, 405, "text/plain", "only GET is served\n").await,
    }
}

async fn respond(s: &mut TcpStream, code: u16, kind: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text` (labels in any order).
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            let count = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
                .count();
            (n == name && all && count == labels.len()).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn renders_every_family_with_zeroes() {
        let m = Metrics::new();
        let text = m.render().expect("render");
        for family in [
            "ferrite_operator_reconciles_total",
            "ferrite_operator_reconcile_duration_seconds",
            "ferrite_operator_leader",
            "ferrite_operator_volumes",
            "ferrite_operator_storage_pools",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        let r = |c, res| {
            sample(
                &text,
                "ferrite_operator_reconciles_total",
                &[("controller", c), ("result", res)],
            )
        };
        assert_eq!(r("pool", "ok"), Some(0.0));
        assert_eq!(r("volume", "error"), Some(0.0));
        assert_eq!(sample(&text, "ferrite_operator_leader", &[]), Some(0.0));
        for s in [
            "Pending",
            "Online",
            "Degraded",
            "Rebuilding",
            "Faulted",
            "Unknown",
        ] {
            assert_eq!(
                sample(&text, "ferrite_operator_volumes", &[("state", s)]),
                Some(0.0),
                "{s}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "ferrite_operator_storage_pools",
                &[("phase", "Failed")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn reconciles_and_leader_move() {
        let m = Metrics::new();
        m.reconciled(ControllerKind::Pool, Duration::from_millis(20), true);
        m.reconciled(ControllerKind::Pool, Duration::from_millis(30), true);
        m.reconciled(ControllerKind::Volume, Duration::from_secs(2), false);
        m.set_leader(true);
        let text = m.render().expect("render");
        let r = |c, res| {
            sample(
                &text,
                "ferrite_operator_reconciles_total",
                &[("controller", c), ("result", res)],
            )
        };
        assert_eq!(r("pool", "ok"), Some(2.0));
        assert_eq!(r("volume", "error"), Some(1.0));
        assert_eq!(r("node", "ok"), Some(0.0));
        let h = "ferrite_operator_reconcile_duration_seconds";
        assert_eq!(
            sample(&text, &format!("{h}_count"), &[("controller", "pool")]),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_bucket"),
                &[("controller", "pool"), ("le", "0.025")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("{h}_bucket"),
                &[("controller", "volume"), ("le", "1")]
            ),
            Some(0.0)
        );
        assert_eq!(sample(&text, "ferrite_operator_leader", &[]), Some(1.0));
        m.set_leader(false);
        assert_eq!(
            sample(&m.render().expect("render"), "ferrite_operator_leader", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn objects_counted_by_last_state() {
        let m = Metrics::new();
        let vols = |m: &Metrics, s| {
            sample(
                &m.render().expect("render"),
                "ferrite_operator_volumes",
                &[("state", s)],
            )
        };
        m.observe_volumes([
            ("a", Some(VolumeState::Online)),
            ("b", Some(VolumeState::Online)),
            ("c", None),
        ]);
        assert_eq!(
            (vols(&m, "Online"), vols(&m, "Unknown")),
            (Some(2.0), Some(1.0))
        );
        m.volume_state("a", Some(VolumeState::Degraded));
        m.volume_state("c", Some(VolumeState::Pending));
        assert_eq!(vols(&m, "Online"), Some(1.0));
        assert_eq!(vols(&m, "Degraded"), Some(1.0));
        assert_eq!(
            (vols(&m, "Pending"), vols(&m, "Unknown")),
            (Some(1.0), Some(0.0))
        );
        m.forget_volume("a");
        assert_eq!(vols(&m, "Degraded"), Some(0.0));
        // A fresh listing replaces everything: b is gone, d is new.
        m.observe_volumes([
            ("c", Some(VolumeState::Rebuilding)),
            ("d", Some(VolumeState::Faulted)),
        ]);
        assert_eq!(
            (vols(&m, "Online"), vols(&m, "Pending")),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(
            (vols(&m, "Rebuilding"), vols(&m, "Faulted")),
            (Some(1.0), Some(1.0))
        );

        let pools = |m: &Metrics, p| {
            sample(
                &m.render().expect("render"),
                "ferrite_operator_storage_pools",
                &[("phase", p)],
            )
        };
        m.observe_pools([
            ("pa", Some(PoolPhase::Pending)),
            ("pb", Some(PoolPhase::Online)),
        ]);
        m.pool_phase("pa", Some(PoolPhase::Online));
        assert_eq!(
            (pools(&m, "Online"), pools(&m, "Pending")),
            (Some(2.0), Some(0.0))
        );
        m.forget_pool("pb");
        assert_eq!(pools(&m, "Online"), Some(1.0));
    }

    #[test]
    fn csi_methods_and_codes() {
        assert_eq!(
            csi_method("/csi.v1.Controller/CreateVolume"),
            "CreateVolume"
        );
        assert_eq!(csi_method("/csi.v1.Identity/Probe"), "Probe");
        assert_eq!(csi_method("/evil.Service/Whatever"), "other");
        assert_eq!(csi_method("/csi.v1.Controller/Create-Volume"), "other");
        assert_eq!(csi_method("/"), "other");
        let mut h = http::HeaderMap::new();
        assert_eq!(response_code(&h, http::StatusCode::OK), tonic::Code::Ok);
        assert_eq!(
            response_code(&h, http::StatusCode::NOT_FOUND),
            tonic::Code::Unknown
        );
        h.insert("grpc-status", http::HeaderValue::from_static("6"));
        assert_eq!(
            response_code(&h, http::StatusCode::OK),
            tonic::Code::AlreadyExists
        );
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::Cancelled), "Canceled");

        let m = Metrics::new();
        m.csi_request("CreateVolume", tonic::Code::Ok);
        m.csi_request("CreateVolume", tonic::Code::AlreadyExists);
        m.csi_request("CreateVolume", tonic::Code::Ok);
        let text = m.render().expect("render");
        let c = |code| {
            sample(
                &text,
                "ferrite_operator_csi_requests_total",
                &[("method", "CreateVolume"), ("code", code)],
            )
        };
        assert_eq!((c("OK"), c("AlreadyExists")), (Some(2.0), Some(1.0)));
    }

    /// The layer counts what a service answers.
    #[tokio::test]
    async fn csi_layer_counts_responses() {
        use tower::{Layer, Service, ServiceExt};
        let m = Arc::new(Metrics::new());
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let mut resp = http::Response::new(());
            if req.uri().path().ends_with("DeleteVolume") {
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("5"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        let mut svc = CsiLayer(m.clone()).layer(inner);
        for path in [
            "/csi.v1.Controller/CreateVolume",
            "/csi.v1.Controller/DeleteVolume",
        ] {
            let req = http::Request::builder()
                .uri(path)
                .body(())
                .expect("request");
            svc.ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("call");
        }
        let text = m.render().expect("render");
        let c = |method, code| {
            sample(
                &text,
                "ferrite_operator_csi_requests_total",
                &[("method", method), ("code", code)],
            )
        };
        assert_eq!(c("CreateVolume", "OK"), Some(1.0));
        assert_eq!(c("DeleteVolume", "NotFound"), Some(1.0));
    }

    /// The endpoint answers /metrics, /healthz, 404 and 405.
    #[tokio::test]
    async fn endpoint_serves_metrics_and_health() {
        let m = Arc::new(Metrics::new());
        m.set_leader(true);
        let addr = serve("127.0.0.1:0".parse().expect("addr"), m)
            .await
            .expect("serve");
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("\r\n\r\n") && r.contains("\nferrite_operator_leader 1\n"),
            "{r}"
        );
        let r = get("GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        let r = get("GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let busy = serve(addr, Arc::new(Metrics::new())).await;
        assert!(matches!(busy, Err(Error::Bind { .. })), "{busy:?}");
    }
}
