//! Pools: RAID0 stripes over local disks, each holding a thin store for replicas. Created on
//! blank disks (with a fresh thin store), imported from labelled ones, destroyed (labels
//! cleared) when they hold no replicas.

use std::sync::Arc;
use std::time::Duration;

use ferrite_block::raid0::{self, Raid0Pool};
use ferrite_block::spec::BackendSpec;
use ferrite_block::thin::{FormatOptions, ThinStore};
use ferrite_block::{BlockDevice, parse_size};
use tracing::{info, warn};
use uuid::Uuid;

use super::{NodeError, Origin, Storage, lock};
use crate::config::{DEFAULT_BLOCK_SIZE, PoolSpec};

/// An open pool.
pub struct Pool {
    pub name: String,
    pub raid: Arc<Raid0Pool>,
    pub store: Arc<ThinStore>,
    pub disks: Vec<String>,
    /// The spec it was opened from (what the state file records).
    pub spec: PoolSpec,
    pub origin: Origin,
}

/// The stripe size a spec asks for (None: the default, or whatever an imported pool has).
fn requested_stripe(spec: &PoolSpec) -> Result<Option<u32>, NodeError> {
    let Some(s) = &spec.stripe_size else {
        return Ok(None);
    };
    let bytes = parse_size(s)
        .map_err(|e| NodeError::InvalidArgument(format!("pool {}: stripe size: {e}", spec.name)))?;
    u32::try_from(bytes).map(Some).map_err(|_| {
        NodeError::InvalidArgument(format!("pool {}: stripe size {s} is too large", spec.name))
    })
}

/// Checks a pool spec without touching any device.
pub fn check_spec(spec: &PoolSpec) -> Result<(), NodeError> {
    raid0::label::validate_pool_name(&spec.name).map_err(|r| {
        NodeError::InvalidArgument(format!("invalid pool name {:?}: {r}", spec.name))
    })?;
    if spec.disks.is_empty() {
        return Err(NodeError::InvalidArgument(format!(
            "pool {}: no disks given",
            spec.name
        )));
    }
    for d in &spec.disks {
        BackendSpec::parse(d).map_err(|e| {
            NodeError::InvalidArgument(format!("pool {}: disk {d:?}: {e}", spec.name))
        })?;
    }
    requested_stripe(spec)?;
    Ok(())
}

impl Pool {
    /// Whether `spec` describes this pool (same disks, block size, and stripe size if given).
    pub fn matches(&self, spec: &PoolSpec) -> bool {
        let stripe_ok = match requested_stripe(spec) {
            Ok(None) => true,
            Ok(Some(s)) => s == self.raid.stripe_size(),
            Err(_) => false,
        };
        spec.disks == self.disks
            && spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)
                == self.spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)
            && stripe_ok
    }

    /// Opens the pool `spec` describes: creates it on blank disks (formatting a new thin
    /// store), imports it from labelled ones.
    pub async fn open(spec: &PoolSpec, origin: Origin) -> Result<Pool, NodeError> {
        check_spec(spec)?;
        let name = &spec.name;
        let bs = spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        let mut members: Vec<Arc<dyn BlockDevice>> = Vec::new();
        let mut labelled = 0;
        for d in &spec.disks {
            let backend = BackendSpec::parse(d)
                .map_err(|e| NodeError::InvalidArgument(format!("pool {name}: disk {d:?}: {e}")))?;
            let dev = backend.open(bs).await.map_err(|e| {
                NodeError::Unavailable(format!("pool {name}: opening disk {d}: {e}"))
            })?;
            let head = dev
                .read(0, (4096 / dev.block_size()).max(1))
                .await
                .map_err(|e| {
                    NodeError::Unavailable(format!("pool {name}: reading disk {d}: {e}"))
                })?;
            if raid0::label::has_magic(&head) {
                labelled += 1;
            }
            members.push(dev);
        }
        let created = labelled == 0;
        let raid = if created {
            let stripe = requested_stripe(spec)?.unwrap_or(raid0::DEFAULT_STRIPE_SIZE);
            let pool = Raid0Pool::create(name, *Uuid::new_v4().as_bytes(), members, stripe)
                .await
                .map_err(|e| NodeError::pool(&format!("creating pool {name}"), e))?;
            info!(pool = %name, disks = spec.disks.len(), capacity = pool.capacity_bytes(), "pool created");
            pool
        } else {
            let pool = Raid0Pool::import(members)
                .await
                .map_err(|e| NodeError::pool(&format!("importing pool {name}"), e))?;
            if pool.name() != name {
                return Err(NodeError::FailedPrecondition(format!(
                    "the disks of pool {name:?} hold pool {:?}; refusing to use them under another name",
                    pool.name()
                )));
            }
            if pool.needs_label_repair() {
                pool.rewrite_labels()
                    .await
                    .map_err(|e| NodeError::pool(&format!("repairing labels of pool {name}"), e))?;
            }
            info!(pool = %name, capacity = pool.capacity_bytes(), generation = pool.generation(), "pool imported");
            pool
        };
        let raid = Arc::new(raid);
        let dev: Arc<dyn BlockDevice> = raid.clone();
        let what = format!("pool {name}");
        // A new pool gets a new store even if an old pool's store is still in the data area.
        let store = if !created
            && ThinStore::is_formatted(dev.as_ref())
                .await
                .map_err(|e| NodeError::thin(&what, e))?
        {
            ThinStore::open(dev)
                .await
                .map_err(|e| NodeError::thin(&format!("opening the volumes of {what}"), e))?
        } else {
            let opts = FormatOptions {
                cluster_size: ThinStore::DEFAULT_CLUSTER_SIZE,
                force: true,
                ..FormatOptions::default()
            };
            ThinStore::format_with(dev, &opts)
                .await
                .map_err(|e| NodeError::thin(&format!("formatting {what}"), e))?
        };
        Ok(Pool {
            name: name.clone(),
            raid,
            store,
            disks: spec.disks.clone(),
            spec: spec.clone(),
            origin,
        })
    }
}

impl Storage {
    /// Every open pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        lock(&self.pools).clone()
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        lock(&self.pools).iter().find(|p| p.name == name).cloned()
    }

    /// Creates (or imports) a pool; idempotent by name.
    pub async fn create_pool(&self, spec: PoolSpec) -> Result<Arc<Pool>, NodeError> {
        check_spec(&spec)?;
        let _change = self.changes.lock().await;
        if let Some(p) = self.pool(&spec.name) {
            if p.matches(&spec) {
                return Ok(p);
            }
            return Err(NodeError::AlreadyExists(format!(
                "pool {} already exists with disks {:?}, stripe size {}",
                p.name,
                p.disks,
                p.raid.stripe_size()
            )));
        }
        for p in self.pools() {
            if let Some(d) = spec.disks.iter().find(|d| p.disks.contains(d)) {
                return Err(NodeError::FailedPrecondition(format!(
                    "disk {d} belongs to pool {}",
                    p.name
                )));
            }
        }
        let pool = Arc::new(Pool::open(&spec, Origin::Api).await?);
        lock(&self.pools).push(pool.clone());
        self.persist()?;
        Ok(pool)
    }

    /// Destroys a pool that holds no replicas, clearing its disks' labels; idempotent.
    pub async fn destroy_pool(&self, name: &str) -> Result<(), NodeError> {
        let _change = self.changes.lock().await;
        let Some(pool) = self.pool(name) else {
            return Ok(());
        };
        if pool.origin == Origin::Config {
            return Err(NodeError::FailedPrecondition(format!(
                "pool {name} is defined in the configuration file"
            )));
        }
        let held: Vec<String> = pool
            .store
            .list()
            .iter()
            .map(|v| Uuid::from_bytes(v.uuid).to_string())
            .collect();
        if !held.is_empty() {
            return Err(NodeError::FailedPrecondition(format!(
                "pool {name} still holds replicas: {}",
                held.join(", ")
            )));
        }
        lock(&self.pools).retain(|p| p.name != name);
        if let Err(e) = pool.store.flush().await {
            warn!(pool = %name, error = %e, "flushing the pool before destroying it failed");
        }
        let mut raid = pool.raid.clone();
        drop(pool);
        // Scrapes and closing exports may hold the pool for a moment.
        let mut tries = 0;
        let raid = loop {
            match Arc::try_unwrap(raid) {
                Ok(r) => break r,
                Err(a) if tries < 100 => {
                    raid = a;
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    self.persist()?;
                    return Err(NodeError::FailedPrecondition(format!(
                        "pool {name} is still in use; it was closed but its labels were kept (CreatePool imports it again)"
                    )));
                }
            }
        };
        raid.destroy()
            .await
            .map_err(|e| NodeError::pool(&format!("destroying pool {name}"), e))?;
        self.persist()?;
        info!(pool = %name, "pool destroyed");
        Ok(())
    }
}
