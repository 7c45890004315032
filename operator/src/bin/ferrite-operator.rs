//! `ferrite-operator`: runs the FerriteNode, StoragePool and Volume controllers once this
//! process holds the leader Lease.
//!
//! ```sh
//! KUBECONFIG=... ferrite-operator --lease-namespace ferrite-system --metrics 0.0.0.0:9421
//! ```
//!
//! Exits 0 on SIGINT/SIGTERM, 1 when it loses the Lease or cannot reach the API server.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrite_operator::crd::{FerriteNode, StoragePool, Volume};
use ferrite_operator::leader::{self, LeaderConfig};
use ferrite_operator::metrics::{ControllerKind, Metrics};
use ferrite_operator::reconcile::{self, Context, error_policy, measured};
use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

/// Ferrite's Kubernetes operator.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ferrite-operator")]
    lease_name: String,
    /// Identity in the Lease and in Events (default: $POD_NAME, else host-pid).
    #[arg(long)]
    identity: Option<String>,
    /// Run without leader election (a single instance only).
    #[arg(long)]
    no_leader_elect: bool,
    /// Seconds between looks at healthy objects.
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
    /// Seconds a Faulted replica whose node is away is waited for before it is replaced.
    #[arg(long, default_value_t = 300)]
    repair_grace_secs: u64,
    /// Seconds a replica or volume target that no Volume refers to is left on its node
    /// before it is destroyed (with an Event on the FerriteNode).
    #[arg(long, default_value_t = 600)]
    orphan_grace_secs: u64,
    /// Serve the CSI Identity and Controller services here (`unix:///csi/csi.sock`,
    /// `tcp://IP:PORT`). They run on every instance, leader or not (the CSI sidecars elect
    /// their own leader; the services only read and write Volume objects).
    #[arg(long)]
    csi_endpoint: Option<String>,
    /// CSI driver name.
    #[arg(long, default_value = "csi.ferrite.dev")]
    driver_name: String,
    /// Seconds CreateVolume/DeleteVolume wait for the Volume before asking for a retry
    /// (UNAVAILABLE); below the external-provisioner's default 10 s call timeout.
    #[arg(long, default_value_t = 8)]
    csi_wait_secs: u64,
    /// Serve Prometheus metrics (`GET /metrics`) and `GET /healthz` on this address (e.g.
    /// `0.0.0.0:9421`); absent or empty: not served. Every instance serves them, leader or
    /// not (`ferrite_operator_leader` tells which).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Talk to nodes over mutual TLS with the node API CA and client certificate in this
    /// Secret of the operator's namespace, created with a new CA if it does not exist (the
    /// datapath pods mount its ca.crt, node.crt and node.key).
    #[arg(long, value_name = "NAME", conflicts_with = "node_tls_dir")]
    node_tls_secret: Option<String>,
    /// Talk to nodes over mutual TLS with ca.crt, operator.crt and operator.key from this
    /// folder. Without this or --node-tls-secret, node endpoints are plain, unauthenticated
    /// `http://`.
    #[arg(long, value_name = "DIR")]
    node_tls_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = args.metrics.as_deref().filter(|a| !a.is_empty()) {
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("--metrics {addr:?}: {e} (use IP:PORT)"))?;
        ferrite_operator::metrics::serve(addr, metrics.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    let client = Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    });
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let cfg = LeaderConfig::new(&namespace, &args.lease_name, &identity);
    let node_tls = match (&args.node_tls_secret, &args.node_tls_dir) {
        (Some(name), _) => Some(
            ferrite_operator::node_tls::from_secret(&client, &namespace, name)
                .await
                .map_err(|e| format!("node API TLS: {e}"))?,
        ),
        (None, Some(dir)) => Some(
            ferrite_api::tls::ClientPem::from_dir(dir).map_err(|e| format!("node API TLS: {e}"))?,
        ),
        (None, None) => {
            tracing::warn!(
                "no --node-tls-secret or --node-tls-dir: node API calls are not authenticated"
            );
            None
        }
    };

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("SIGTERM handler: {e}"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), String>(())
    };
    tokio::pin!(shutdown);

    let csi = match &args.csi_endpoint {
        None => None,
        Some(ep) => {
            let ep: ferrite_operator::csi::Endpoint = ep.parse()?;
            let mut svc =
                ferrite_operator::csi::ControllerService::new(client.clone(), &args.driver_name);
            if let Some(s) = Arc::get_mut(&mut svc) {
                s.wait = Duration::from_secs(args.csi_wait_secs.max(1));
                s.nodes = ferrite_operator::node_api::NodeClients::new(node_tls.clone());
            }
            let csi = ferrite_operator::csi::Csi(svc);
            let metrics = metrics.clone();
            Some(tokio::spawn(async move {
                ferrite_operator::csi::serve_with_metrics(
                    &ep,
                    csi,
                    metrics,
                    futures::future::pending(),
                )
                .await
            }))
        }
    };
    let csi_failed = async {
        match csi {
            Some(h) => match h.await {
                Ok(Ok(())) => "CSI server stopped".to_string(),
                Ok(Err(e)) => e,
                Err(e) => format!("CSI server task: {e}"),
            },
            None => futures::future::pending().await,
        }
    };
    tokio::pin!(csi_failed);

    if !args.no_leader_elect {
        tokio::select! {
            r = &mut shutdown => return r,
            e = &mut csi_failed => return Err(e),
            () = leader::acquire(client.clone(), &cfg) => {}
        }
    }
    metrics.set_leader(true);
    let lost = async {
        if args.no_leader_elect {
            futures::future::pending::<String>().await
        } else {
            leader::renew_until_lost(client.clone(), cfg.clone()).await
        }
    };

    let mut ctx = Context::new(client.clone(), Some(identity.clone()));
    if let Some(c) = Arc::get_mut(&mut ctx) {
        c.resync = Duration::from_secs(args.resync_secs.max(1));
        c.repair_grace = Duration::from_secs(args.repair_grace_secs);
        c.orphan_grace = Duration::from_secs(args.orphan_grace_secs);
        c.nodes = ferrite_operator::node_api::NodeClients::new(node_tls.clone());
        c.metrics = metrics.clone();
    }
    tracing::info!(%identity, "starting controllers");
    let controllers = run_controllers(client.clone(), ctx);
    let r = tokio::select! {
        r = &mut shutdown => r,
        why = lost => Err(format!("leadership lost: {why}")),
        e = &mut csi_failed => Err(e),
        () = controllers => Err("controllers stopped".into()),
    };
    metrics.set_leader(false);
    r
}

/// Runs the three controllers until their watches end; each reconcile is [`measured`].
async fn run_controllers(client: Client, ctx: Arc<Context>) {
    let wc = watcher::Config::default;
    let nodes = Controller::new(Api::<FerriteNode>::all(client.clone()), wc())
        .run(
            |o, c| measured(ControllerKind::Node, reconcile::node::reconcile, o, c),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log("FerriteNode", r) });
    let pools = Controller::new(Api::<StoragePool>::all(client.clone()), wc())
        .run(
            |o, c| measured(ControllerKind::Pool, reconcile::pool::reconcile, o, c),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move { log("StoragePool", r) });
    let volumes = Controller::new(Api::<Volume>::all(client), wc())
        .run(
            |o, c| measured(ControllerKind::Volume, reconcile::volume::reconcile, o, c),
            error_policy,
            ctx,
        )
        .for_each(|r| async move { log("Volume", r) });
    futures::join!(nodes, pools, volumes);
}

fn log<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, r: Result<T, E>) {
    match r {
        Ok(obj) => tracing::debug!(kind, ?obj, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %e, "reconcile error"),
    }
}
