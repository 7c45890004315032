//! Replicas: thin volumes in local pools, optionally exported over NVMe/TCP (as
//! `nqn.2024-01.dev.ferrite:replica-<uuid>` unless configured otherwise) to the nodes that
//! mirror them. Created idempotently by UUID; resized; destroyed when no local volume uses
//! them.

use std::sync::{Arc, Mutex};

use ferrite_block::BlockDevice;
use ferrite_block::parse_size;
use ferrite_block::thin::ThinVolume;
use ferrite_protocol::nqn;
use ferrite_target::{NamespaceConfig, SubsystemConfig, Target, TargetError};
use tracing::{info, warn};
use uuid::Uuid;

use super::{NodeError, Origin, Storage, lock};
use crate::config::{self, ExportSpec, ReplicaSpec};

/// A replica held by this node.
pub struct Replica {
    pub uuid: Uuid,
    pub pool: String,
    pub volume: Arc<ThinVolume>,
    pub origin: Origin,
    /// The current spec (size and export change at run time).
    spec: Mutex<ReplicaSpec>,
}

impl Replica {
    /// The current spec.
    pub fn spec(&self) -> ReplicaSpec {
        lock(&self.spec).clone()
    }

    /// The export's subsystem NQN, if exported.
    pub fn nqn(&self) -> Option<String> {
        let spec = lock(&self.spec);
        spec.export.as_ref().map(|e| {
            e.nqn
                .clone()
                .unwrap_or_else(|| config::replica_nqn(&self.uuid))
        })
    }

    /// Hosts allowed to connect to the export.
    pub fn allowed_hosts(&self) -> Vec<String> {
        lock(&self.spec)
            .export
            .as_ref()
            .map(|e| e.allow_hosts.clone())
            .unwrap_or_default()
    }
}

/// Checks host NQNs given to the API.
pub fn check_hosts(hosts: &[String]) -> Result<(), NodeError> {
    for h in hosts {
        nqn::validate(h).map_err(|e| NodeError::InvalidArgument(format!("host NQN {h:?}: {e}")))?;
    }
    Ok(())
}

fn target_error(what: &str, e: TargetError) -> NodeError {
    match e {
        TargetError::SubsystemExists(_) => NodeError::AlreadyExists(format!("{what}: {e}")),
        TargetError::InvalidNqn(_) | TargetError::ReservedNqn(_) => {
            NodeError::InvalidArgument(format!("{what}: {e}"))
        }
        _ => NodeError::Internal(format!("{what}: {e}")),
    }
}

fn export(
    target: &Target,
    uuid: Uuid,
    volume: &Arc<ThinVolume>,
    e: &ExportSpec,
) -> Result<String, NodeError> {
    let nqn = e.nqn.clone().unwrap_or_else(|| config::replica_nqn(&uuid));
    if e.allow_hosts.is_empty() && e.allow_any_host {
        warn!(replica = %uuid, "replica exported to any host: set export.allow_hosts to the mirroring nodes");
    }
    let device: Arc<dyn BlockDevice> = volume.clone();
    target
        .add_subsystem(SubsystemConfig {
            nqn: nqn.clone(),
            hosts: config::host_access(&e.allow_hosts, e.allow_any_host),
            namespaces: vec![NamespaceConfig { nsid: 1, device }],
        })
        .map_err(|e| target_error(&format!("exporting replica {uuid}"), e))?;
    Ok(nqn)
}

impl Storage {
    /// Every replica of this node.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        lock(&self.replicas).clone()
    }

    /// The replica `uuid`.
    pub fn replica(&self, uuid: Uuid) -> Option<Arc<Replica>> {
        lock(&self.replicas)
            .iter()
            .find(|r| r.uuid == uuid)
            .cloned()
    }

    /// Creates (idempotently) and exports the replica `spec` describes, in an open pool.
    pub(super) async fn open_replica(
        &self,
        spec: &ReplicaSpec,
        origin: Origin,
    ) -> Result<Arc<Replica>, NodeError> {
        let uuid = Uuid::parse_str(&spec.uuid).map_err(|_| {
            NodeError::InvalidArgument(format!("replica uuid {:?} is not a UUID", spec.uuid))
        })?;
        let pool = self.pool(&spec.pool).ok_or_else(|| {
            NodeError::NotFound(format!("pool {} does not exist on this node", spec.pool))
        })?;
        let size = parse_size(&spec.size)
            .map_err(|e| NodeError::InvalidArgument(format!("replica {uuid}: size: {e}")))?;
        if size == 0 {
            return Err(NodeError::InvalidArgument(format!(
                "replica {uuid}: size must be greater than zero"
            )));
        }
        if origin == Origin::Api && spec.thin && size > pool.store.capacity_bytes() {
            return Err(NodeError::ResourceExhausted(format!(
                "replica {uuid}: {size} bytes do not fit in pool {} ({} bytes)",
                pool.name,
                pool.store.capacity_bytes()
            )));
        }
        let volume = pool
            .store
            .create_volume(
                *uuid.as_bytes(),
                &format!("replica-{uuid}"),
                size,
                spec.thin,
            )
            .await
            .map_err(|e| NodeError::thin(&format!("replica {uuid} in pool {}", pool.name), e))?;
        let nqn = match &spec.export {
            None => None,
            Some(e) => Some(export(&self.target, uuid, &volume, e)?),
        };
        info!(replica = %uuid, pool = %pool.name, size, thin = spec.thin, export = ?nqn, "replica ready");
        let replica = Arc::new(Replica {
            uuid,
            pool: pool.name.clone(),
            volume,
            origin,
            spec: Mutex::new(spec.clone()),
        });
        lock(&self.replicas).push(replica.clone());
        Ok(replica)
    }

    /// Creates a replica; idempotent by UUID (same pool, size and provisioning). Non-empty
    /// `spec.export` hosts export a new replica, or an existing one not exported yet.
    pub async fn create_replica(&self, spec: ReplicaSpec) -> Result<Arc<Replica>, NodeError> {
        let uuid = Uuid::parse_str(&spec.uuid).map_err(|_| {
            NodeError::InvalidArgument(format!("replica uuid {:?} is not a UUID", spec.uuid))
        })?;
        if let Some(e) = &spec.export {
            check_hosts(&e.allow_hosts)?;
        }
        let _change = self.changes.lock().await;
        if let Some(r) = self.replica(uuid) {
            let have = r.spec();
            let same_size = parse_size(&have.size).ok() == parse_size(&spec.size).ok();
            if have.pool != spec.pool || !same_size || have.thin != spec.thin {
                return Err(NodeError::AlreadyExists(format!(
                    "replica {uuid} already exists in pool {} with {} bytes ({})",
                    have.pool,
                    r.volume.info().size,
                    if have.thin { "thin" } else { "thick" }
                )));
            }
            if have.export.is_none() && spec.export.is_some() {
                drop(_change);
                let hosts = spec.export.map(|e| e.allow_hosts).unwrap_or_default();
                return self.export_replica(uuid, hosts).await;
            }
            return Ok(r);
        }
        let r = self.open_replica(&spec, Origin::Api).await?;
        self.persist()?;
        Ok(r)
    }

    /// Sets the hosts allowed to connect to a replica's export, exporting it if needed.
    pub async fn export_replica(
        &self,
        uuid: Uuid,
        hosts: Vec<String>,
    ) -> Result<Arc<Replica>, NodeError> {
        check_hosts(&hosts)?;
        let _change = self.changes.lock().await;
        let r = self.replica(uuid).ok_or_else(|| {
            NodeError::NotFound(format!("replica {uuid} does not exist on this node"))
        })?;
        if r.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "replica {uuid} is defined in the configuration file"
            )));
        }
        let mut spec = r.spec();
        match (&mut spec.export, r.nqn()) {
            (Some(e), Some(nqn)) => {
                self.target
                    .set_hosts(&nqn, config::host_access(&hosts, false))
                    .map_err(|e| target_error(&format!("replica {uuid}"), e))?;
                e.allow_hosts = hosts;
                e.allow_any_host = false;
            }
            _ => {
                let e = ExportSpec {
                    nqn: None,
                    allow_hosts: hosts,
                    allow_any_host: false,
                };
                export(&self.target, uuid, &r.volume, &e)?;
                spec.export = Some(e);
            }
        }
        *lock(&r.spec) = spec;
        self.persist()?;
        Ok(r)
    }

    /// Grows a replica.
    pub async fn resize_replica(&self, uuid: Uuid, size: u64) -> Result<Arc<Replica>, NodeError> {
        let _change = self.changes.lock().await;
        let r = self.replica(uuid).ok_or_else(|| {
            NodeError::NotFound(format!("replica {uuid} does not exist on this node"))
        })?;
        if r.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "replica {uuid} is defined in the configuration file"
            )));
        }
        let pool = self
            .pool(&r.pool)
            .ok_or_else(|| NodeError::NotFound(format!("pool {} is gone", r.pool)))?;
        pool.store
            .resize(*uuid.as_bytes(), size)
            .await
            .map_err(|e| NodeError::thin(&format!("resizing replica {uuid}"), e))?;
        lock(&r.spec).size = size.to_string();
        self.persist()?;
        // Hosts of the export (a remote mirror) learn the new size.
        if let Some(nqn) = r.nqn()
            && let Err(e) = self.target.namespace_resized(&nqn, 1)
        {
            warn!(replica = %uuid, error = %e, "announcing the new size failed");
        }
        Ok(r)
    }

    /// Destroys a replica that no volume of this node uses (its export first); idempotent.
    pub async fn destroy_replica(&self, uuid: Uuid) -> Result<(), NodeError> {
        let _change = self.changes.lock().await;
        let Some(r) = self.replica(uuid) else {
            // A leftover in a pool's store (e.g. from a lost state file) is destroyed too.
            for p in self.pools() {
                if p.store.list().iter().any(|v| v.uuid == *uuid.as_bytes()) {
                    p.store
                        .destroy(*uuid.as_bytes())
                        .await
                        .map_err(|e| NodeError::thin(&format!("destroying replica {uuid}"), e))?;
                    info!(replica = %uuid, pool = %p.name, "leftover replica destroyed");
                }
            }
            return Ok(());
        };
        if r.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "replica {uuid} is defined in the configuration file"
            )));
        }
        if let Some(v) = self.volume_using(uuid) {
            return Err(NodeError::FailedPrecondition(format!(
                "replica {uuid} is used by volume {v}"
            )));
        }
        if let Some(nqn) = r.nqn()
            && let Err(e) = self.target.remove_subsystem(&nqn)
        {
            warn!(replica = %uuid, error = %e, "removing the export failed");
        }
        let pool = self
            .pool(&r.pool)
            .ok_or_else(|| NodeError::NotFound(format!("pool {} is gone", r.pool)))?;
        pool.store
            .destroy(*uuid.as_bytes())
            .await
            .map_err(|e| NodeError::thin(&format!("destroying replica {uuid}"), e))?;
        lock(&self.replicas).retain(|x| x.uuid != uuid);
        self.persist()?;
        info!(replica = %uuid, "replica destroyed");
        Ok(())
    }
}
