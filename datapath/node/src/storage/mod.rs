//! The node's storage: RAID0 pools over local disks with thin volumes in them, replicas
//! (volumes exported over NVMe/TCP to the nodes that mirror them), and volumes served to
//! hosts (mirrors over local and remote replicas).
//!
//! Everything can be set up from the configuration at start ([`Storage::open`]) and created
//! or destroyed at run time through the node API; changes are serialised by one lock and,
//! for objects the API created, persisted to the state file ([`crate::state`]) before the
//! call returns. Objects from the configuration file are read-only to the API.
//!
//! | file | owns |
//! |---|---|
//! | `pools.rs` | opening (create/import) and destroying pools |
//! | `replicas.rs` | replicas and their NVMe/TCP exports |
//! | `volumes.rs` | volumes: background assembly, membership, host access, compare |
//! | `error.rs` | [`NodeError`], one variant per gRPC code |

mod error;
mod pools;
mod replicas;
mod volumes;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use ferrite_host::HostOptions;
use ferrite_target::Target;
use tracing::warn;
use uuid::Uuid;

pub use error::NodeError;
pub use pools::Pool;
pub use replicas::Replica;
pub use volumes::{Volume, VolumeRecord, VolumeState, VolumeView};

use crate::config::{self, Config};
use crate::state::{ApiKeys, Refused, StateFile};

/// Where an object's definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file: the API cannot change or destroy it.
    Config,
    /// Created through the node API: recorded in the state file.
    Api,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything storage-related this node holds.
pub struct Storage {
    pub(crate) target: Arc<Target>,
    /// How this node connects to other nodes' replicas.
    pub host: HostOptions,
    /// This node's name.
    pub node: String,
    state: Option<StateFile>,
    /// What the state file held that was refused at start (`/v1/status` reports it).
    pub state_refused: Refused,
    /// Serialises changes so that each one sees, and persists, a consistent state.
    changes: tokio::sync::Mutex<()>,
    pools: Mutex<Vec<Arc<Pool>>>,
    replicas: Mutex<Vec<Arc<Replica>>>,
    records: Mutex<Vec<Arc<VolumeRecord>>>,
    /// Volumes online.
    volumes: Mutex<Vec<Arc<Volume>>>,
    /// Volumes still waiting for their replicas, with the last reason.
    pub pending: Mutex<Vec<(Uuid, String)>>,
}

/// How this node identifies itself to other nodes' replicas (host NQN and ID, and the
/// DH-HMAC-CHAP secrets of `node:` for targets that ask for authentication).
pub fn host_options(cfg: &Config) -> HostOptions {
    let name = node_name(cfg);
    let hostnqn = cfg
        .node
        .hostnqn
        .clone()
        .unwrap_or_else(|| config::node_hostnqn(&name));
    let hostid = *Uuid::new_v5(&Uuid::NAMESPACE_OID, hostnqn.as_bytes()).as_bytes();
    // Checked by `Config::validate`; a secret that does not parse is not used.
    let (dhchap_secret, dhchap_ctrl_secret) = cfg.node.own_secrets().unwrap_or_default();
    HostOptions {
        dhchap_secret,
        dhchap_ctrl_secret,
        hostnqn,
        hostid,
        io_queues: 2,
        kato_ms: 5000,
        timeout: Duration::from_secs(5),
        ..HostOptions::default()
    }
}

/// The node's name: configured, or the host name.
pub fn node_name(cfg: &Config) -> String {
    cfg.node.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    })
}

impl Storage {
    /// Opens pools, creates and exports replicas, and starts building volumes. `api` names
    /// the objects that came from the state file (and what of it was refused); `state` is
    /// where changes are persisted (none: they are not).
    pub async fn open(
        cfg: &Config,
        api: &ApiKeys,
        target: &Arc<Target>,
        state: Option<StateFile>,
    ) -> Result<Arc<Storage>> {
        let storage = Arc::new(Storage {
            target: target.clone(),
            host: host_options(cfg),
            node: node_name(cfg),
            state,
            state_refused: api.refused.clone(),
            changes: tokio::sync::Mutex::new(()),
            pools: Mutex::default(),
            replicas: Mutex::default(),
            records: Mutex::default(),
            volumes: Mutex::default(),
            pending: Mutex::default(),
        });
        let origin = |api: bool| if api { Origin::Api } else { Origin::Config };
        for p in &cfg.pools {
            let pool = Pool::open(p, origin(api.pools.contains(&p.name)))
                .await
                .with_context(|| format!("pool {}", p.name))?;
            lock(&storage.pools).push(Arc::new(pool));
        }
        for r in &cfg.replicas {
            let id = config::parse_uuid("replica uuid", &r.uuid)?;
            storage
                .open_replica(r, origin(api.replicas.contains(&id)))
                .await
                .with_context(|| format!("replica {id}"))?;
        }
        for v in &cfg.volumes {
            let id = config::parse_uuid("volume uuid", &v.uuid)?;
            storage
                .start_volume(v, origin(api.volumes.contains(&id)))
                .with_context(|| format!("volume {id}"))?;
        }
        Ok(storage)
    }

    /// Writes the objects created through the API to the state file.
    fn persist(&self) -> Result<(), NodeError> {
        let Some(file) = &self.state else {
            return Ok(());
        };
        let state = Config {
            pools: self
                .pools()
                .iter()
                .filter(|p| p.origin == Origin::Api)
                .map(|p| p.spec.clone())
                .collect(),
            replicas: self
                .replicas()
                .iter()
                .filter(|r| r.origin == Origin::Api)
                .map(|r| r.spec())
                .collect(),
            volumes: self
                .volume_records()
                .iter()
                .filter(|v| v.origin == Origin::Api)
                .map(|v| v.spec())
                .collect(),
            ..Config::default()
        };
        file.save(&state)
            .map_err(|e| NodeError::Internal(format!("saving the node state: {e:#}")))
    }

    /// Closes every mirror cleanly and flushes every pool.
    /// Withdraws the volumes from hosts, closes their mirrors cleanly (replicas marked in
    /// sync and clean, including replicas this node reaches through its own target), then
    /// flushes every pool. Call before shutting the target down.
    pub async fn close(&self, target: &Target) {
        for r in self.volume_records() {
            if let Some(t) = lock(&r.task).take() {
                t.abort();
            }
        }
        let volumes: Vec<Arc<Volume>> = lock(&self.volumes).clone();
        for v in volumes {
            // Hosts first, so nothing writes to a closing mirror.
            if let Err(e) = target.remove_subsystem(&v.nqn) {
                warn!(volume = %v.uuid, error = %e, "withdrawing the volume failed");
            }
            if let Err(e) = v.mirror.close().await {
                warn!(volume = %v.uuid, error = %e, "closing the mirror failed");
            }
        }
        for p in self.pools() {
            if let Err(e) = p.store.flush().await {
                warn!(pool = %p.name, error = %e, "flushing the pool failed");
            }
        }
    }
}
