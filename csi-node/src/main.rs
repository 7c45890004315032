//! `ferrite-csi-node`: Ferrite's CSI Identity and Node services for one node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrite_csi_node::config::{Config, ConnectDefaults, Plugin};
use ferrite_csi_node::format::Tools;
use ferrite_csi_node::sysfs::Sysfs;
use ferrite_csi_node::{Endpoint, hostnqn};

/// Ferrite CSI node plugin: attaches volumes through the Linux kernel NVMe/TCP initiator.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to serve: unix:///PATH (kubelet) or tcp://IP:PORT.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: Endpoint,
    /// CSI driver name.
    #[arg(long, default_value = "csi.ferrite.dev")]
    driver_name: String,
    /// Kubernetes node name, reported as the topology segment topology.ferrite.dev/node
    /// (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Node ID reported to the CO (default: this node's host NQN, which the controller puts
    /// on volumes' access lists).
    #[arg(long)]
    node_id: Option<String>,
    /// Maximum number of volumes on this node (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_volumes: i64,
    /// Extra topology segment KEY=VALUE (repeatable).
    #[arg(long = "topology", value_parser = parse_kv)]
    topology: Vec<(String, String)>,
    /// Host NQN file; generated (and kept) if absent.
    #[arg(long, default_value = "/etc/nvme/hostnqn")]
    hostnqn_file: PathBuf,
    /// Host ID file; generated (and kept) if absent.
    #[arg(long, default_value = "/etc/nvme/hostid")]
    hostid_file: PathBuf,
    /// Folder for the records of staged volumes (must survive plugin restarts).
    #[arg(long, default_value = "/var/lib/ferrite/csi-node")]
    state_dir: PathBuf,
    /// sysfs mount point.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Device node folder.
    #[arg(long, default_value = "/dev")]
    dev_dir: PathBuf,
    /// The kernel's NVMe-oF control device.
    #[arg(long, default_value = "/dev/nvme-fabrics")]
    fabrics_device: PathBuf,
    /// Mount table to read.
    #[arg(long, default_value = "/proc/self/mountinfo")]
    mountinfo: PathBuf,
    /// Seconds to wait for a namespace's block device after connecting (and for a new size
    /// after a rescan).
    #[arg(long, default_value_t = 30)]
    device_timeout: u64,
    /// Seconds a call waits for another call on the same volume before ABORTED.
    #[arg(long, default_value_t = 60)]
    lock_timeout: u64,
    /// Default ctrl_loss_tmo (seconds the kernel keeps reconnecting; -1 = forever).
    #[arg(long, default_value_t = 1800, allow_negative_numbers = true)]
    ctrl_loss_tmo: i32,
    /// Default reconnect_delay in seconds.
    #[arg(long, default_value_t = 2)]
    reconnect_delay: u32,
    /// Default fast_io_fail_tmo in seconds (unset: the kernel's).
    #[arg(long, allow_negative_numbers = true)]
    fast_io_fail_tmo: Option<i32>,
    /// Default number of I/O queues (unset: one per CPU).
    #[arg(long)]
    nr_io_queues: Option<u32>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let args = Args::parse();
    let host = match hostnqn::load_or_create(&args.hostnqn_file, &args.hostid_file) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot establish the host NQN");
            return std::process::ExitCode::FAILURE;
        }
    };
    let node_name = args
        .node_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(hostname);
    let cfg = Config {
        driver_name: args.driver_name,
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: args.node_id.unwrap_or_else(|| host.nqn.clone()),
        node_name,
        max_volumes: args.max_volumes,
        topology: args.topology.into_iter().collect::<BTreeMap<_, _>>(),
        host,
        sysfs: Sysfs::new(args.sysfs),
        dev_dir: args.dev_dir,
        fabrics_dev: args.fabrics_device,
        mountinfo: args.mountinfo,
        state_dir: args.state_dir,
        tools: Tools::default(),
        device_timeout: Duration::from_secs(args.device_timeout),
        disconnect_timeout: Duration::from_secs(30),
        lock_timeout: Duration::from_secs(args.lock_timeout),
        connect: ConnectDefaults {
            ctrl_loss_tmo: Some(args.ctrl_loss_tmo),
            reconnect_delay: Some(args.reconnect_delay),
            fast_io_fail_tmo: args.fast_io_fail_tmo,
            nr_io_queues: args.nr_io_queues,
            keep_alive_tmo: None,
        },
    };
    tracing::info!(driver = %cfg.driver_name, node_id = %cfg.node_id, node = %cfg.node_name, hostnqn = %cfg.host.nqn,
        state_dir = %cfg.state_dir.display(), "starting");
    let plugin = Arc::new(Plugin::new(cfg));
    match ferrite_csi_node::serve(&args.endpoint, plugin, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "serving failed");
            std::process::ExitCode::FAILURE
        }
    }
}
