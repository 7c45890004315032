//! The node's storage: RAID0 pools over local disks with thin volumes in them, replicas
//! (volumes exported over NVMe/TCP to the nodes that mirror them), and volumes served to
//! hosts (mirrors over local and remote replicas).
//!
//! Pools are created on blank disks and imported from labelled ones; replicas are created
//! idempotently by UUID; a volume's mirror is assembled from its replicas' labels, or created
//! when no replica carries one. Volumes whose replicas are not reachable yet are retried in
//! the background, so nodes can start in any order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferrite_block::mirror::{LocalReplica, Mirror, MirrorError, MirrorOptions, MirrorStatus, ReplicaConnector};
use ferrite_block::raid0::{self, Raid0Pool};
use ferrite_block::spec::BackendSpec;
use ferrite_block::thin::{ThinStore, ThinVolume};
use ferrite_block::{BlockDevice, parse_size};
use ferrite_host::HostOptions;
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target};
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{self, Config, DEFAULT_BLOCK_SIZE, PoolSpec, VolumeSpec};
use crate::remote::RemoteReplica;

/// An open pool.
pub struct Pool {
    pub name: String,
    pub raid: Arc<Raid0Pool>,
    pub store: Arc<ThinStore>,
    pub disks: Vec<String>,
}

/// A replica held by this node.
pub struct Replica {
    pub uuid: Uuid,
    pub pool: String,
    pub volume: Arc<ThinVolume>,
    pub nqn: Option<String>,
}

/// A volume served by this node.
pub struct Volume {
    pub uuid: Uuid,
    pub nqn: String,
    pub mirror: Arc<Mirror>,
    /// How each replica is reached (for compare and reconfiguration).
    pub connectors: Mutex<Vec<Arc<dyn ReplicaConnector>>>,
}

/// Bound on each replica I/O before the mirror faults the replica: short enough that a host
/// barely notices a vanished node, long enough for a loaded 2-core machine.
const REPLICA_IO_TIMEOUT: Duration = Duration::from_secs(5);

fn mirror_options() -> MirrorOptions {
    MirrorOptions { io_timeout: Some(REPLICA_IO_TIMEOUT), connect_timeout: REPLICA_IO_TIMEOUT, ..MirrorOptions::default() }
}

/// Everything storage-related this node holds.
#[derive(Default)]
pub struct Storage {
    pub pools: Vec<Pool>,
    pub replicas: Vec<Replica>,
    pub volumes: Mutex<Vec<Arc<Volume>>>,
    /// Volumes still waiting for their replicas, with the last reason.
    pub pending: Mutex<Vec<(Uuid, String)>>,
}

/// How this node identifies itself to other nodes' replicas.
pub fn host_options(cfg: &Config) -> HostOptions {
    let name = node_name(cfg);
    let hostnqn = cfg.node.hostnqn.clone().unwrap_or_else(|| config::node_hostnqn(&name));
    let hostid = *Uuid::new_v5(&Uuid::NAMESPACE_OID, hostnqn.as_bytes()).as_bytes();
    HostOptions {
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
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
    })
}

async fn open_pool(spec: &PoolSpec) -> Result<Pool> {
    let bs = spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let mut members: Vec<Arc<dyn BlockDevice>> = Vec::new();
    let mut labelled = 0;
    for d in &spec.disks {
        let dev = BackendSpec::parse(d)?.open(bs).await.with_context(|| format!("pool {}: opening disk {d}", spec.name))?;
        let head = dev.read(0, (4096 / dev.block_size()).max(1)).await.with_context(|| format!("pool {}: reading {d}", spec.name))?;
        if raid0::label::has_magic(&head) {
            labelled += 1;
        }
        members.push(dev);
    }
    let raid = if labelled == 0 {
        let stripe = match &spec.stripe_size {
            Some(s) => u32::try_from(parse_size(s)?).context("stripe size too large")?,
            None => raid0::DEFAULT_STRIPE_SIZE,
        };
        let pool = Raid0Pool::create(&spec.name, *Uuid::new_v4().as_bytes(), members, stripe)
            .await
            .with_context(|| format!("creating pool {}", spec.name))?;
        info!(pool = %spec.name, disks = spec.disks.len(), capacity = pool.capacity_bytes(), "pool created");
        pool
    } else {
        let pool = Raid0Pool::import(members).await.with_context(|| format!("importing pool {}", spec.name))?;
        if pool.name() != spec.name {
            bail!("the disks of pool {:?} hold pool {:?}; refusing to use them under another name", spec.name, pool.name());
        }
        if pool.needs_label_repair() {
            pool.rewrite_labels().await.with_context(|| format!("repairing labels of pool {}", spec.name))?;
        }
        info!(pool = %spec.name, capacity = pool.capacity_bytes(), generation = pool.generation(), "pool imported");
        pool
    };
    let raid = Arc::new(raid);
    let dev: Arc<dyn BlockDevice> = raid.clone();
    let store = if ThinStore::is_formatted(dev.as_ref()).await? {
        ThinStore::open(dev).await.with_context(|| format!("opening the volumes of pool {}", spec.name))?
    } else {
        ThinStore::format(dev, ThinStore::DEFAULT_CLUSTER_SIZE).await.with_context(|| format!("formatting pool {}", spec.name))?
    };
    Ok(Pool { name: spec.name.clone(), raid, store, disks: spec.disks.clone() })
}

impl Storage {
    /// Opens pools, creates and exports replicas, and starts building volumes.
    pub async fn open(cfg: &Config, target: &Arc<Target>) -> Result<Arc<Storage>> {
        let mut storage = Storage::default();
        for p in &cfg.pools {
            storage.pools.push(open_pool(p).await?);
        }
        for r in &cfg.replicas {
            let uuid = config::parse_uuid("replica uuid", &r.uuid)?;
            let pool = storage.pools.iter().find(|p| p.name == r.pool).ok_or_else(|| anyhow!("pool {} not open", r.pool))?;
            let size = parse_size(&r.size)?;
            let volume = pool
                .store
                .create_volume(*uuid.as_bytes(), &format!("replica-{uuid}"), size, r.thin)
                .await
                .with_context(|| format!("replica {uuid} in pool {}", r.pool))?;
            let nqn = match &r.export {
                None => None,
                Some(e) => {
                    let nqn = e.nqn.clone().unwrap_or_else(|| config::replica_nqn(&uuid));
                    let hosts = if e.allow_hosts.is_empty() {
                        warn!(replica = %uuid, "replica exported to any host: set export.allow_hosts to the mirroring nodes");
                        HostAccess::Any
                    } else {
                        HostAccess::Only(e.allow_hosts.clone())
                    };
                    let device: Arc<dyn BlockDevice> = volume.clone();
                    target.add_subsystem(SubsystemConfig { nqn: nqn.clone(), hosts, namespaces: vec![NamespaceConfig { nsid: 1, device }] })?;
                    Some(nqn)
                }
            };
            info!(replica = %uuid, pool = %r.pool, size, thin = r.thin, export = ?nqn, "replica ready");
            storage.replicas.push(Replica { uuid, pool: r.pool.clone(), volume, nqn });
        }
        let storage = Arc::new(storage);
        let host = host_options(cfg);
        for v in &cfg.volumes {
            let spec = VolumeTask::new(v, &storage, host.clone())?;
            let (storage, target) = (storage.clone(), target.clone());
            tokio::spawn(async move { spec.run(storage, target).await });
        }
        Ok(storage)
    }

    /// Mirror status of every volume served.
    pub fn volume_status(&self) -> Vec<(Uuid, String, MirrorStatus)> {
        self.volumes.lock().map(|v| v.iter().map(|v| (v.uuid, v.nqn.clone(), v.mirror.status())).collect()).unwrap_or_default()
    }

    fn volume(&self, uuid: Uuid) -> Option<Arc<Volume>> {
        self.volumes.lock().ok()?.iter().find(|v| v.uuid == uuid).cloned()
    }

    /// Compares a volume's replicas region by region (CRC32C of 1 MiB regions) against the
    /// first one, through fresh connections. Meaningful when the volume is idle.
    pub async fn compare(&self, uuid: Uuid) -> Result<serde_json::Value> {
        let v = self.volume(uuid).ok_or_else(|| anyhow!("volume {uuid} is not served here"))?;
        let connectors: Vec<_> = v.connectors.lock().map(|c| c.clone()).unwrap_or_default();
        let mut devices = Vec::new();
        for c in &connectors {
            let dev = c.connect().await.with_context(|| format!("connecting {}", c.describe()))?;
            devices.push((Uuid::from_bytes(c.replica_id()), dev));
        }
        let Some((base_id, base)) = devices.first().cloned() else { bail!("volume {uuid} has no replicas") };
        let mut pairs = Vec::new();
        let mut identical = true;
        for (id, dev) in devices.iter().skip(1) {
            let r = ferrite_block::mirror::compare_replicas(base.as_ref(), dev.as_ref(), 1 << 20).await?;
            identical &= r.identical();
            pairs.push(serde_json::json!({
                "a": base_id.to_string(),
                "b": id.to_string(),
                "bytes_compared": r.bytes_compared,
                "identical": r.identical(),
                "differing_bytes": r.differing_bytes(),
                "differing": r.differing.iter().map(|d| [d.start, d.end]).collect::<Vec<_>>(),
            }));
        }
        Ok(serde_json::json!({ "volume": uuid.to_string(), "identical": identical, "pairs": pairs }))
    }

    /// Applies a changed configuration to the volumes: replicas no longer listed leave their
    /// mirror, newly listed ones join it (and are rebuilt), new volumes are built. Pools and
    /// replicas themselves are set up at start only.
    pub async fn reconfigure(self: &Arc<Self>, cfg: &Config, target: &Arc<Target>) -> Result<()> {
        let host = host_options(cfg);
        for v in &cfg.volumes {
            let task = VolumeTask::new(v, self, host.clone())?;
            let Some(vol) = self.volume(task.uuid) else {
                let pending = self.pending.lock().map(|p| p.iter().any(|(u, _)| *u == task.uuid)).unwrap_or(false);
                if !pending {
                    let (storage, target) = (self.clone(), target.clone());
                    tokio::spawn(async move { task.run(storage, target).await });
                }
                continue;
            };
            let current: Vec<Arc<dyn ReplicaConnector>> = vol.connectors.lock().map(|c| c.clone()).unwrap_or_default();
            let wanted: Vec<[u8; 16]> = task.connectors.iter().map(|c| c.replica_id()).collect();
            for c in current.iter().filter(|c| !wanted.contains(&c.replica_id())) {
                info!(volume = %vol.uuid, replica = %Uuid::from_bytes(c.replica_id()), "removing replica");
                vol.mirror.remove_replica(c.replica_id()).await.with_context(|| format!("removing {}", c.describe()))?;
            }
            let have: Vec<[u8; 16]> = current.iter().map(|c| c.replica_id()).collect();
            for c in task.connectors.iter().filter(|c| !have.contains(&c.replica_id())) {
                info!(volume = %vol.uuid, replica = %Uuid::from_bytes(c.replica_id()), "adding replica");
                vol.mirror.add_replica(c.clone()).await.with_context(|| format!("adding {}", c.describe()))?;
            }
            if let Ok(mut c) = vol.connectors.lock() {
                *c = task.connectors.clone();
            }
        }
        Ok(())
    }

    /// Closes every mirror cleanly and flushes every pool.
    pub async fn close(&self) {
        let volumes: Vec<Arc<Volume>> = self.volumes.lock().map(|v| v.clone()).unwrap_or_default();
        for v in volumes {
            if let Err(e) = v.mirror.close().await {
                warn!(volume = %v.uuid, error = %e, "closing the mirror failed");
            }
        }
        for p in &self.pools {
            if let Err(e) = p.store.flush().await {
                warn!(pool = %p.name, error = %e, "flushing the pool failed");
            }
        }
    }
}

/// Builds one volume, retrying until its replicas can be reached.
struct VolumeTask {
    uuid: Uuid,
    nqn: String,
    hosts: HostAccess,
    connectors: Vec<Arc<dyn ReplicaConnector>>,
}

impl VolumeTask {
    fn new(v: &VolumeSpec, storage: &Storage, host: HostOptions) -> Result<VolumeTask> {
        let uuid = config::parse_uuid("volume uuid", &v.uuid)?;
        let mut connectors: Vec<Arc<dyn ReplicaConnector>> = Vec::new();
        for r in &v.replicas {
            let rid = config::parse_uuid("replica uuid", &r.uuid)?;
            match r.address {
                None => {
                    let local = storage.replicas.iter().find(|x| x.uuid == rid).ok_or_else(|| anyhow!("replica {rid} is not on this node"))?;
                    let dev: Arc<dyn BlockDevice> = local.volume.clone();
                    connectors.push(Arc::new(LocalReplica::new(*rid.as_bytes(), dev)));
                }
                Some(addr) => connectors.push(Arc::new(remote(rid, addr, r.nqn.clone(), host.clone()))),
            }
        }
        Ok(VolumeTask {
            uuid,
            nqn: v.nqn.clone().unwrap_or_else(|| config::volume_nqn(&uuid)),
            hosts: if v.allow_hosts.is_empty() { HostAccess::Any } else { HostAccess::Only(v.allow_hosts.clone()) },
            connectors,
        })
    }

    async fn build(&self) -> Result<Mirror, MirrorError> {
        let id = *self.uuid.as_bytes();
        match Mirror::assemble(id, self.connectors.clone(), mirror_options()).await {
            Err(MirrorError::NoLabel { .. }) => {
                info!(volume = %self.uuid, "no replica carries a label yet: creating the mirror");
                Mirror::create(id, self.connectors.clone(), mirror_options()).await
            }
            other => other,
        }
    }

    async fn run(self, storage: Arc<Storage>, target: Arc<Target>) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.build().await {
                Ok(mirror) => {
                    let mirror = Arc::new(mirror);
                    let device: Arc<dyn BlockDevice> = mirror.clone();
                    let cfg = SubsystemConfig {
                        nqn: self.nqn.clone(),
                        hosts: self.hosts.clone(),
                        namespaces: vec![NamespaceConfig { nsid: 1, device }],
                    };
                    if let Err(e) = target.add_subsystem(cfg) {
                        warn!(volume = %self.uuid, error = %e, "cannot serve the volume");
                        return;
                    }
                    info!(volume = %self.uuid, nqn = %self.nqn, size = mirror.size_bytes(), "volume online");
                    if let Ok(mut p) = storage.pending.lock() {
                        p.retain(|(u, _)| *u != self.uuid);
                    }
                    if let Ok(mut v) = storage.volumes.lock() {
                        v.push(Arc::new(Volume {
                            uuid: self.uuid,
                            nqn: self.nqn.clone(),
                            mirror,
                            connectors: Mutex::new(self.connectors.clone()),
                        }));
                    }
                    return;
                }
                Err(e) => {
                    warn!(volume = %self.uuid, error = %e, retry_in = ?delay, "volume not ready");
                    if let Ok(mut p) = storage.pending.lock() {
                        p.retain(|(u, _)| *u != self.uuid);
                        p.push((self.uuid, e.to_string()));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn remote(id: Uuid, addr: SocketAddr, nqn: Option<String>, options: HostOptions) -> RemoteReplica {
    RemoteReplica { id: *id.as_bytes(), addr, nqn: nqn.unwrap_or_else(|| config::replica_nqn(&id)), options }
}
