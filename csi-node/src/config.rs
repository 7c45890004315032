//! The node plugin's settings (from the command line) and the shared state of a running
//! plugin.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::fabrics::HostIdentity;
use crate::format::Tools;
use crate::state::StateDir;
use crate::sysfs::Sysfs;

/// Topology key that names the node a volume is reachable from.
pub const TOPOLOGY_NODE_KEY: &str = "topology.ferrite.dev/node";

/// Kernel connect settings used when the volume's context does not set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectDefaults {
    pub ctrl_loss_tmo: Option<i32>,
    pub reconnect_delay: Option<u32>,
    pub fast_io_fail_tmo: Option<i32>,
    pub nr_io_queues: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
}

impl Default for ConnectDefaults {
    fn default() -> Self {
        // Survive a path or target outage of up to 30 minutes, retrying every 2 s.
        ConnectDefaults {
            ctrl_loss_tmo: Some(1800),
            reconnect_delay: Some(2),
            fast_io_fail_tmo: None,
            nr_io_queues: None,
            keep_alive_tmo: None,
        }
    }
}

/// Everything the node services need to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// CSI driver name (GetPluginInfo).
    pub driver_name: String,
    pub version: String,
    /// The node ID reported to the CO (default: the host NQN, which is what the controller
    /// needs to put this node on a volume's access list).
    pub node_id: String,
    /// The Kubernetes node name (topology).
    pub node_name: String,
    /// 0 = no limit.
    pub max_volumes: i64,
    /// Extra topology segments.
    pub topology: BTreeMap<String, String>,
    pub host: HostIdentity,
    pub sysfs: Sysfs,
    /// Where device nodes live (`/dev`).
    pub dev_dir: PathBuf,
    /// The kernel's fabrics control device (`/dev/nvme-fabrics`).
    pub fabrics_dev: PathBuf,
    /// The mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// Where staged volumes are recorded.
    pub state_dir: PathBuf,
    pub tools: Tools,
    /// How long to wait for a namespace block device after connecting (and for a grown
    /// size after a rescan).
    pub device_timeout: Duration,
    /// How long to wait for a deleted controller to disappear.
    pub disconnect_timeout: Duration,
    /// How long a call waits for another call on the same volume before giving up (ABORTED).
    pub lock_timeout: Duration,
    pub connect: ConnectDefaults,
}

/// A running plugin: its settings plus the locks shared by all calls.
pub struct Plugin {
    pub cfg: Config,
    pub state: StateDir,
    /// Held while deciding to connect or disconnect controllers, so that a volume being
    /// staged and another one of the same subsystem being unstaged never race.
    pub fabrics_lock: Mutex<()>,
}

impl Plugin {
    pub fn new(cfg: Config) -> Plugin {
        let state = StateDir::new(cfg.state_dir.clone());
        Plugin {
            cfg,
            state,
            fabrics_lock: Mutex::new(()),
        }
    }

    pub fn fabrics_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.fabrics_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}
