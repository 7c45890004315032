//! Volumes served to hosts: mirrors over local and remote replicas. A volume's mirror is
//! assembled from its replicas' labels, or created when no replica carries one; a volume
//! whose replicas are not reachable yet is *pending* and retried in the background, so nodes
//! can start in any order. Membership (add/remove replica) and the host access list change
//! at run time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferrite_block::BlockDevice;
use ferrite_block::mirror::{
    LocalReplica, Mirror, MirrorError, MirrorOptions, MirrorStatus, ReplicaConnector,
};
use ferrite_host::HostOptions;
use ferrite_protocol::nqn;
use ferrite_target::{NamespaceConfig, SubsystemConfig};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use super::replicas::check_hosts;
use super::{NodeError, Origin, Storage, lock};
use crate::config::{self, Config, VolumeReplicaSpec, VolumeSpec};
use ferrite_host::RemoteReplica;

/// A volume being served (its mirror is assembled).
pub struct Volume {
    pub uuid: Uuid,
    pub nqn: String,
    pub mirror: Arc<Mirror>,
    /// How each replica is reached (for compare and reconfiguration).
    pub connectors: Mutex<Vec<Arc<dyn ReplicaConnector>>>,
}

/// A volume this node is asked to serve, online or still pending.
pub struct VolumeRecord {
    pub uuid: Uuid,
    pub nqn: String,
    pub origin: Origin,
    spec: Mutex<VolumeSpec>,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
}

impl VolumeRecord {
    /// The current spec.
    pub fn spec(&self) -> VolumeSpec {
        lock(&self.spec).clone()
    }
}

/// What the API reports about a volume.
pub struct VolumeView {
    pub uuid: Uuid,
    pub nqn: String,
    pub spec: VolumeSpec,
    /// None while pending.
    pub status: Option<MirrorStatus>,
    /// Why it is pending.
    pub pending: Option<String>,
}

/// A volume's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Waiting for its replicas.
    Pending,
    /// Every replica healthy.
    Online,
    /// Serving, some replica not healthy and none rebuilding.
    Degraded,
    /// Serving, some replica rebuilding.
    Rebuilding,
    /// No healthy replica.
    Faulted,
}

impl VolumeState {
    /// Every state, for metrics.
    pub const ALL: [VolumeState; 5] = [
        VolumeState::Pending,
        VolumeState::Online,
        VolumeState::Degraded,
        VolumeState::Rebuilding,
        VolumeState::Faulted,
    ];

    /// Lowercase name (metrics label).
    pub fn name(self) -> &'static str {
        match self {
            VolumeState::Pending => "pending",
            VolumeState::Online => "online",
            VolumeState::Degraded => "degraded",
            VolumeState::Rebuilding => "rebuilding",
            VolumeState::Faulted => "faulted",
        }
    }
}

impl VolumeView {
    /// The volume's overall state.
    pub fn state(&self) -> VolumeState {
        let Some(st) = &self.status else {
            return VolumeState::Pending;
        };
        let healthy = st.healthy();
        if healthy == st.replicas.len() {
            VolumeState::Online
        } else if healthy == 0 {
            VolumeState::Faulted
        } else if st
            .replicas
            .iter()
            .any(|r| r.state == ferrite_block::mirror::ReplicaState::Rebuilding)
        {
            VolumeState::Rebuilding
        } else {
            VolumeState::Degraded
        }
    }
}

/// Bound on each replica I/O before the mirror faults the replica: short enough that a host
/// barely notices a vanished node, long enough for a loaded 2-core machine.
const REPLICA_IO_TIMEOUT: Duration = Duration::from_secs(5);

fn mirror_options() -> MirrorOptions {
    MirrorOptions {
        io_timeout: Some(REPLICA_IO_TIMEOUT),
        connect_timeout: REPLICA_IO_TIMEOUT,
        ..MirrorOptions::default()
    }
}

fn remote(id: Uuid, addr: SocketAddr, nqn: Option<String>, options: HostOptions) -> RemoteReplica {
    RemoteReplica {
        id: *id.as_bytes(),
        addr,
        nqn: nqn.unwrap_or_else(|| config::replica_nqn(&id)),
        options,
    }
}

/// Checks a volume spec given to the API (local replicas are checked when connecting).
fn check_spec(v: &VolumeSpec) -> Result<Uuid, NodeError> {
    let bad = NodeError::InvalidArgument;
    let id = Uuid::parse_str(&v.uuid)
        .map_err(|_| bad(format!("volume uuid {:?} is not a UUID", v.uuid)))?;
    if v.replicas.is_empty() {
        return Err(bad(format!("volume {id} has no replicas")));
    }
    let mut seen = Vec::new();
    for r in &v.replicas {
        let rid = Uuid::parse_str(&r.uuid).map_err(|_| {
            bad(format!(
                "volume {id}: replica uuid {:?} is not a UUID",
                r.uuid
            ))
        })?;
        if seen.contains(&rid) {
            return Err(bad(format!("volume {id}: replica {rid} is listed twice")));
        }
        seen.push(rid);
        if let Some(n) = &r.nqn {
            nqn::validate(n).map_err(|e| bad(format!("volume {id}: replica {rid} nqn: {e}")))?;
        }
    }
    if let Some(n) = &v.nqn {
        nqn::validate(n).map_err(|e| bad(format!("volume {id}: nqn: {e}")))?;
    }
    check_hosts(&v.allow_hosts)?;
    Ok(id)
}

/// Whether two replica lists name the same replicas at the same places.
fn same_replicas(a: &[VolumeReplicaSpec], b: &[VolumeReplicaSpec]) -> bool {
    let key = |r: &VolumeReplicaSpec| {
        let id = Uuid::parse_str(&r.uuid).ok();
        (
            id,
            r.address,
            r.nqn
                .clone()
                .or_else(|| id.map(|i| config::replica_nqn(&i)))
                .filter(|_| r.address.is_some()),
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

impl Storage {
    /// Every volume this node serves or is building.
    pub fn volume_records(&self) -> Vec<Arc<VolumeRecord>> {
        lock(&self.records).clone()
    }

    fn record(&self, uuid: Uuid) -> Option<Arc<VolumeRecord>> {
        lock(&self.records).iter().find(|r| r.uuid == uuid).cloned()
    }

    /// The served volume `uuid`, once online.
    pub fn volume(&self, uuid: Uuid) -> Option<Arc<Volume>> {
        lock(&self.volumes).iter().find(|v| v.uuid == uuid).cloned()
    }

    /// Mirror status of every volume served.
    pub fn volume_status(&self) -> Vec<(Uuid, String, MirrorStatus)> {
        lock(&self.volumes)
            .iter()
            .map(|v| (v.uuid, v.nqn.clone(), v.mirror.status()))
            .collect()
    }

    /// The volume of this node using local replica `replica`, if any.
    pub(super) fn volume_using(&self, replica: Uuid) -> Option<Uuid> {
        lock(&self.records)
            .iter()
            .find(|r| {
                lock(&r.spec)
                    .replicas
                    .iter()
                    .any(|x| x.address.is_none() && Uuid::parse_str(&x.uuid).ok() == Some(replica))
            })
            .map(|r| r.uuid)
    }

    /// How the volume `uuid` is doing.
    pub fn volume_view(&self, uuid: Uuid) -> Option<VolumeView> {
        let rec = self.record(uuid)?;
        let status = self.volume(uuid).map(|v| v.mirror.status());
        let pending = if status.is_some() {
            None
        } else {
            Some(
                lock(&self.pending)
                    .iter()
                    .find(|(u, _)| *u == uuid)
                    .map(|(_, why)| why.clone())
                    .unwrap_or_else(|| "assembling".into()),
            )
        };
        Some(VolumeView {
            uuid,
            nqn: rec.nqn.clone(),
            spec: rec.spec(),
            status,
            pending,
        })
    }

    fn connector(&self, r: &VolumeReplicaSpec) -> Result<Arc<dyn ReplicaConnector>, NodeError> {
        let rid = Uuid::parse_str(&r.uuid).map_err(|_| {
            NodeError::InvalidArgument(format!("replica uuid {:?} is not a UUID", r.uuid))
        })?;
        Ok(match r.address {
            None => {
                let local = self.replica(rid).ok_or_else(|| {
                    NodeError::NotFound(format!("replica {rid} is not on this node"))
                })?;
                let dev: Arc<dyn BlockDevice> = local.volume.clone();
                Arc::new(LocalReplica::new(*rid.as_bytes(), dev))
            }
            Some(addr) => Arc::new(remote(rid, addr, r.nqn.clone(), self.host.clone())),
        })
    }

    /// Registers volume `spec` and starts building it in the background.
    pub(super) fn start_volume(
        self: &Arc<Self>,
        spec: &VolumeSpec,
        origin: Origin,
    ) -> Result<Arc<VolumeRecord>, NodeError> {
        let uuid = check_spec(spec)?;
        let connectors = spec
            .replicas
            .iter()
            .map(|r| self.connector(r))
            .collect::<Result<Vec<_>, _>>()?;
        let rec = Arc::new(VolumeRecord {
            uuid,
            nqn: spec
                .nqn
                .clone()
                .unwrap_or_else(|| config::volume_nqn(&uuid)),
            origin,
            spec: Mutex::new(spec.clone()),
            task: Mutex::new(None),
        });
        lock(&self.pending).push((uuid, "assembling".into()));
        lock(&self.records).push(rec.clone());
        let task = VolumeTask {
            record: rec.clone(),
            connectors,
        };
        let storage = self.clone();
        *lock(&rec.task) = Some(tokio::spawn(async move { task.run(storage).await }));
        Ok(rec)
    }

    /// Creates the volume target; idempotent by UUID (same NQN and replicas). Returns once it
    /// is online or after a short wait (then pending: it keeps being built in the background).
    pub async fn create_volume(
        self: &Arc<Self>,
        spec: VolumeSpec,
    ) -> Result<VolumeView, NodeError> {
        let uuid = check_spec(&spec)?;
        {
            let _change = self.changes.lock().await;
            if let Some(rec) = self.record(uuid) {
                let have = rec.spec();
                let nqn = spec
                    .nqn
                    .clone()
                    .unwrap_or_else(|| config::volume_nqn(&uuid));
                if nqn != rec.nqn || !same_replicas(&have.replicas, &spec.replicas) {
                    return Err(NodeError::AlreadyExists(format!(
                        "volume {uuid} already exists as {} over replicas {}",
                        rec.nqn,
                        have.replicas
                            .iter()
                            .map(|r| r.uuid.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            } else {
                let nqn = spec
                    .nqn
                    .clone()
                    .unwrap_or_else(|| config::volume_nqn(&uuid));
                if self.target.subsystem_nqns().contains(&nqn) {
                    return Err(NodeError::AlreadyExists(format!(
                        "subsystem {nqn} is already served by this node"
                    )));
                }
                self.start_volume(&spec, Origin::Api)?;
                self.persist()?;
            }
        }
        for _ in 0..20 {
            if self.volume(uuid).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.volume_view(uuid)
            .ok_or_else(|| NodeError::NotFound(format!("volume {uuid} was destroyed meanwhile")))
    }

    /// Stops serving a volume (clean mirror close) and forgets it; idempotent. The replicas
    /// are left as they are.
    pub async fn destroy_volume(&self, uuid: Uuid) -> Result<(), NodeError> {
        let _change = self.changes.lock().await;
        let Some(rec) = self.record(uuid) else {
            return Ok(());
        };
        if rec.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {uuid} is defined in the configuration file"
            )));
        }
        let task = lock(&rec.task).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        lock(&self.records).retain(|r| r.uuid != uuid);
        lock(&self.pending).retain(|(u, _)| *u != uuid);
        let vol = self.volume(uuid);
        lock(&self.volumes).retain(|v| v.uuid != uuid);
        if let Some(v) = vol {
            if let Err(e) = self.target.remove_subsystem(&v.nqn) {
                warn!(volume = %uuid, error = %e, "removing the subsystem failed");
            }
            if let Err(e) = v.mirror.close().await {
                warn!(volume = %uuid, error = %e, "closing the mirror failed");
            }
        }
        self.persist()?;
        info!(volume = %uuid, "volume destroyed");
        Ok(())
    }

    fn online(&self, uuid: Uuid) -> Result<(Arc<VolumeRecord>, Arc<Volume>), NodeError> {
        let rec = self.record(uuid).ok_or_else(|| {
            NodeError::NotFound(format!("volume {uuid} is not served by this node"))
        })?;
        if rec.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {uuid} is defined in the configuration file"
            )));
        }
        let vol = self
            .volume(uuid)
            .ok_or_else(|| NodeError::Unavailable(format!("volume {uuid} is not online yet")))?;
        Ok((rec, vol))
    }

    /// Adds a replica to a volume (fully rebuilt in the background); idempotent.
    pub async fn add_volume_replica(
        &self,
        uuid: Uuid,
        replica: VolumeReplicaSpec,
    ) -> Result<VolumeView, NodeError> {
        let _change = self.changes.lock().await;
        let (rec, vol) = self.online(uuid)?;
        let c = self.connector(&replica)?;
        let have = lock(&vol.connectors)
            .iter()
            .any(|x| x.replica_id() == c.replica_id());
        if !have {
            vol.mirror
                .add_replica(c.clone())
                .await
                .map_err(|e| NodeError::mirror(&format!("volume {uuid}: adding replica"), e))?;
            lock(&vol.connectors).push(c);
            lock(&rec.spec).replicas.push(replica);
            self.persist()?;
        }
        self.volume_view(uuid)
            .ok_or_else(|| NodeError::NotFound(format!("volume {uuid} is gone")))
    }

    /// Removes a replica from a volume; idempotent.
    pub async fn remove_volume_replica(
        &self,
        uuid: Uuid,
        replica: Uuid,
    ) -> Result<VolumeView, NodeError> {
        let _change = self.changes.lock().await;
        let (rec, vol) = self.online(uuid)?;
        let id = *replica.as_bytes();
        let have = lock(&vol.connectors).iter().any(|x| x.replica_id() == id);
        if have {
            vol.mirror
                .remove_replica(id)
                .await
                .map_err(|e| NodeError::mirror(&format!("volume {uuid}: removing replica"), e))?;
            lock(&vol.connectors).retain(|x| x.replica_id() != id);
            lock(&rec.spec)
                .replicas
                .retain(|r| Uuid::parse_str(&r.uuid).ok() != Some(replica));
            self.persist()?;
        }
        self.volume_view(uuid)
            .ok_or_else(|| NodeError::NotFound(format!("volume {uuid} is gone")))
    }

    /// Grows a volume to `size` bytes (its replicas already grown) and tells connected hosts;
    /// idempotent. The new size lives in the replicas' labels, so a restart keeps it.
    pub async fn resize_volume(&self, uuid: Uuid, size: u64) -> Result<VolumeView, NodeError> {
        let _change = self.changes.lock().await;
        let (rec, vol) = self.online(uuid)?;
        let current = vol.mirror.size_bytes();
        let bs = u64::from(vol.mirror.block_size());
        if size < current {
            return Err(NodeError::InvalidArgument(format!(
                "volume {uuid}: cannot shrink from {current} to {size} bytes"
            )));
        }
        if !size.is_multiple_of(bs) {
            return Err(NodeError::InvalidArgument(format!(
                "volume {uuid}: size {size} is not a multiple of the block size {bs}"
            )));
        }
        if size > current {
            vol.mirror
                .grow(size)
                .await
                .map_err(|e| NodeError::mirror(&format!("volume {uuid}: growing"), e))?;
            if let Err(e) = self.target.namespace_resized(&rec.nqn, 1) {
                warn!(volume = %uuid, error = %e, "announcing the new size failed");
            }
            info!(volume = %uuid, from = current, to = size, "volume grown");
        }
        self.volume_view(uuid)
            .ok_or_else(|| NodeError::NotFound(format!("volume {uuid} is gone")))
    }

    /// Sets the hosts allowed to connect to a volume (empty: none).
    pub async fn set_volume_hosts(
        &self,
        uuid: Uuid,
        hosts: Vec<String>,
    ) -> Result<VolumeView, NodeError> {
        check_hosts(&hosts)?;
        let _change = self.changes.lock().await;
        let rec = self.record(uuid).ok_or_else(|| {
            NodeError::NotFound(format!("volume {uuid} is not served by this node"))
        })?;
        if rec.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "volume {uuid} is defined in the configuration file"
            )));
        }
        {
            let mut spec = lock(&rec.spec);
            spec.allow_hosts = hosts.clone();
            spec.allow_any_host = false;
        }
        if self.volume(uuid).is_some() {
            self.target
                .set_hosts(&rec.nqn, config::host_access(&hosts, false))
                .map_err(|e| NodeError::Internal(format!("volume {uuid}: {e}")))?;
        }
        self.persist()?;
        self.volume_view(uuid)
            .ok_or_else(|| NodeError::NotFound(format!("volume {uuid} is gone")))
    }

    /// Compares a volume's replicas region by region (CRC32C of 1 MiB regions) against the
    /// first one, through fresh connections. Meaningful when the volume is idle.
    pub async fn compare(&self, uuid: Uuid) -> Result<serde_json::Value> {
        let v = self
            .volume(uuid)
            .ok_or_else(|| anyhow!("volume {uuid} is not served here"))?;
        let connectors: Vec<_> = lock(&v.connectors).clone();
        let mut devices = Vec::new();
        for c in &connectors {
            let dev = c
                .connect()
                .await
                .with_context(|| format!("connecting {}", c.describe()))?;
            devices.push((Uuid::from_bytes(c.replica_id()), dev));
        }
        let Some((base_id, base)) = devices.first().cloned() else {
            bail!("volume {uuid} has no replicas")
        };
        let mut pairs = Vec::new();
        let mut identical = true;
        for (id, dev) in devices.iter().skip(1) {
            let r = ferrite_block::mirror::compare_replicas(base.as_ref(), dev.as_ref(), 1 << 20)
                .await?;
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
        Ok(
            serde_json::json!({ "volume": uuid.to_string(), "identical": identical, "pairs": pairs }),
        )
    }

    /// Applies a changed configuration file to its volumes and to the DH-HMAC-CHAP keys of
    /// `node.dhchap_hosts`: replicas no longer listed leave
    /// their mirror, newly listed ones join it (and are rebuilt), new volumes are built.
    /// Pools and replicas themselves are set up at start only; volumes created through the
    /// node API are left alone.
    pub async fn reconfigure(self: &Arc<Self>, cfg: &Config) -> Result<()> {
        let _change = self.changes.lock().await;
        // The hosts that must authenticate (node.dhchap_hosts): hosts whose keys changed are
        // disconnected and reconnect with the new ones.
        self.target
            .set_default_host_keys(cfg.node.host_keys()?)
            .context("node.dhchap_hosts")?;
        for v in &cfg.volumes {
            let uuid = config::parse_uuid("volume uuid", &v.uuid)?;
            let Some(rec) = self.record(uuid) else {
                self.start_volume(v, Origin::Config)?;
                continue;
            };
            if rec.origin == Origin::Api {
                warn!(volume = %uuid, "the configuration names a volume created through the node API; ignored");
                continue;
            }
            let Some(vol) = self.volume(uuid) else {
                continue;
            };
            let wanted = v
                .replicas
                .iter()
                .map(|r| self.connector(r))
                .collect::<Result<Vec<_>, _>>()?;
            let current: Vec<Arc<dyn ReplicaConnector>> = lock(&vol.connectors).clone();
            let wanted_ids: Vec<[u8; 16]> = wanted.iter().map(|c| c.replica_id()).collect();
            for c in current
                .iter()
                .filter(|c| !wanted_ids.contains(&c.replica_id()))
            {
                info!(volume = %vol.uuid, replica = %Uuid::from_bytes(c.replica_id()), "removing replica");
                vol.mirror
                    .remove_replica(c.replica_id())
                    .await
                    .with_context(|| format!("removing {}", c.describe()))?;
            }
            let have: Vec<[u8; 16]> = current.iter().map(|c| c.replica_id()).collect();
            for c in wanted.iter().filter(|c| !have.contains(&c.replica_id())) {
                info!(volume = %vol.uuid, replica = %Uuid::from_bytes(c.replica_id()), "adding replica");
                vol.mirror
                    .add_replica(c.clone())
                    .await
                    .with_context(|| format!("adding {}", c.describe()))?;
            }
            *lock(&vol.connectors) = wanted;
            *lock(&rec.spec) = v.clone();
        }
        Ok(())
    }
}

/// Builds one volume, retrying until its replicas can be reached.
struct VolumeTask {
    record: Arc<VolumeRecord>,
    connectors: Vec<Arc<dyn ReplicaConnector>>,
}

impl VolumeTask {
    async fn build(&self) -> Result<Mirror, MirrorError> {
        let id = *self.record.uuid.as_bytes();
        match Mirror::assemble(id, self.connectors.clone(), mirror_options()).await {
            Err(MirrorError::NoLabel { .. }) => {
                info!(volume = %self.record.uuid, "no replica carries a label yet: creating the mirror");
                Mirror::create(id, self.connectors.clone(), mirror_options()).await
            }
            other => other,
        }
    }

    fn set_pending(&self, storage: &Storage, why: String) {
        let mut p = lock(&storage.pending);
        p.retain(|(u, _)| *u != self.record.uuid);
        p.push((self.record.uuid, why));
    }

    async fn run(self, storage: Arc<Storage>) {
        let uuid = self.record.uuid;
        let mut delay = Duration::from_millis(250);
        loop {
            match self.build().await {
                Ok(mirror) => {
                    let mirror = Arc::new(mirror);
                    let device: Arc<dyn BlockDevice> = mirror.clone();
                    let spec = self.record.spec();
                    let cfg = SubsystemConfig {
                        nqn: self.record.nqn.clone(),
                        hosts: config::host_access(&spec.allow_hosts, spec.allow_any_host),
                        namespaces: vec![NamespaceConfig { nsid: 1, device }],
                    };
                    if let Err(e) = storage.target.add_subsystem(cfg) {
                        warn!(volume = %uuid, error = %e, "cannot serve the volume");
                        self.set_pending(&storage, format!("cannot serve the volume: {e}"));
                        return;
                    }
                    info!(volume = %uuid, nqn = %self.record.nqn, size = mirror.size_bytes(), "volume online");
                    lock(&storage.pending).retain(|(u, _)| *u != uuid);
                    lock(&storage.volumes).push(Arc::new(Volume {
                        uuid,
                        nqn: self.record.nqn.clone(),
                        mirror,
                        connectors: Mutex::new(self.connectors.clone()),
                    }));
                    return;
                }
                Err(e) => {
                    warn!(volume = %uuid, error = %e, retry_in = ?delay, "volume not ready");
                    self.set_pending(&storage, e.to_string());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
