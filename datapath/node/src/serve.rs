//! Running the datapath: open the backends, build the target, listen, merge the state file
//! into the configuration (with `--grpc`), open the storage, serve HTTP and the node API,
//! print how to connect, and shut down cleanly (flushing every device) on SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrite_block::BlockDevice;
use ferrite_block::spec::BackendSpec;
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::config::{Config, DEFAULT_BLOCK_SIZE};
use crate::state::{self, ApiKeys, DEFAULT_STATE_DIR, StateFile};
use crate::status::NodeStatus;
use crate::storage::{Storage, node_name};

/// Serves `config` until SIGTERM or SIGINT. On SIGHUP, `reload` (the config file) is read
/// again and volume changes are applied.
pub async fn run(mut config: Config, reload: Option<PathBuf>) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // The node API authenticates its clients (mutual TLS) unless told not to: checked
    // before anything is opened.
    let grpc_tls = match (&config.grpc, &config.grpc_tls_dir, config.grpc_insecure) {
        (Some(_), Some(dir), _) => Some(
            ferrite_api::tls::server_tls(dir)
                .with_context(|| format!("the node API's TLS files in {}", dir.display()))?,
        ),
        (Some(addr), None, false) => anyhow::bail!(
            "the node API on {addr} needs --grpc-tls-dir (mutual TLS; see docs/security.md), or --grpc-insecure to \
             serve it without authentication"
        ),
        _ => None,
    };
    let target = Target::new(config.limits.target_options()?);
    let mut devices: Vec<Arc<dyn BlockDevice>> = Vec::new();
    for s in &config.subsystems {
        let mut namespaces = Vec::new();
        for ns in &s.namespaces {
            let spec = BackendSpec::parse(&ns.backend)
                .with_context(|| format!("{}: backend {:?}", s.nqn, ns.backend))?;
            let device = spec
                .open(ns.block_size.unwrap_or(DEFAULT_BLOCK_SIZE))
                .await
                .with_context(|| {
                    format!("{} namespace {}: opening {}", s.nqn, ns.nsid, ns.backend)
                })?;
            info!(nqn = %s.nqn, nsid = ns.nsid, device = %device.describe(), size = device.size_bytes(),
                  block_size = device.block_size(), "namespace ready");
            devices.push(device.clone());
            namespaces.push(NamespaceConfig {
                nsid: ns.nsid,
                device,
            });
        }
        let hosts = if s.allow_hosts.is_empty() {
            HostAccess::Any
        } else {
            HostAccess::Only(s.allow_hosts.clone())
        };
        target.add_subsystem(SubsystemConfig {
            nqn: s.nqn.clone(),
            hosts,
            namespaces,
        })?;
    }
    let mut bound = Vec::new();
    for addr in &config.listen {
        bound.push(target.listen(*addr).await?);
    }
    // Listeners first: replicas are exported as soon as their pool is open, and a volume may
    // mirror onto a replica of this very node through NVMe/TCP.
    // With the node API, what it created comes back from the state file.
    let (api, state) = match config.grpc {
        None => (ApiKeys::default(), None),
        Some(_) => {
            let file = StateFile::new(
                config
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            );
            let saved = file.load()?;
            let api = state::merge(&mut config, saved)?;
            config.validate().with_context(|| {
                format!("the configuration merged with {}", file.path().display())
            })?;
            (api, Some(file))
        }
    };
    let storage = Storage::open(&config, &api, &target, state).await?;
    if let Some(addr) = config.http {
        let source = Arc::new(NodeStatus {
            target: target.clone(),
            storage: storage.clone(),
            node: node_name(&config),
        });
        crate::http::serve(addr, source).await?;
    }
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.grpc {
        crate::grpc::serve(addr, grpc_tls.clone(), storage.clone(), async move {
            let _ = grpc_stopped.await;
        })
        .await?;
    }
    print_connect_help(&config, &bound);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                let Some(path) = &reload else {
                    warn!("SIGHUP: no --config file to reload");
                    continue;
                };
                info!(config = %path.display(), "SIGHUP: reloading the configuration");
                let applied = match Config::load(path).and_then(|c| c.validate().map(|_| c)) {
                    Ok(new) => storage.reconfigure(&new).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = applied {
                    warn!(error = %format!("{e:#}"), "reload failed; keeping the running configuration");
                }
            }
        }
    }
    let _ = stop_grpc.send(());
    storage.close(&target).await;
    target.shutdown().await;
    for d in &devices {
        if let Err(e) = d.flush().await {
            warn!(device = %d.describe(), error = %e, "final flush failed");
        }
    }
    info!("stopped");
    Ok(())
}

fn print_connect_help(config: &Config, bound: &[std::net::SocketAddr]) {
    let Some(first) = bound.first() else { return };
    let (a, p) = (first.ip(), first.port());
    println!(
        "Ferrite datapath serving NVMe/TCP on {}",
        bound
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  discover:   nvme discover -t tcp -a {a} -s {p}");
    for s in &config.subsystems {
        let host = s
            .allow_hosts
            .first()
            .map(|h| format!(" --hostnqn {h}"))
            .unwrap_or_default();
        println!(
            "  connect:    nvme connect -t tcp -a {a} -s {p} -n {}{host}",
            s.nqn
        );
    }
    for v in &config.volumes {
        let nqn = v
            .nqn
            .clone()
            .unwrap_or_else(|| match uuid::Uuid::parse_str(&v.uuid) {
                Ok(u) => crate::config::volume_nqn(&u),
                Err(_) => v.uuid.clone(),
            });
        let host = v
            .allow_hosts
            .first()
            .map(|h| format!(" --hostnqn {h}"))
            .unwrap_or_default();
        println!(
            "  connect:    nvme connect -t tcp -a {a} -s {p} -n {nqn}{host}   (mirrored volume)"
        );
    }
    println!("  disconnect: nvme disconnect -n <NQN>        (stop with Ctrl-C or SIGTERM)");
}
