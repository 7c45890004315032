//! Subsystems: an NQN, the hosts allowed to connect (and the DH-HMAC-CHAP keys of those that
//! must authenticate), the namespaces it exposes, and the controllers currently associated
//! with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use ferrite_block::BlockDevice;

use crate::auth::{DhchapKeys, HostKeys};
use crate::controller::Controller;
use crate::identity;
use crate::stats::NamespaceStats;

/// Which hosts may connect to a subsystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// Any host NQN.
    Any,
    /// Only these host NQNs.
    Only(Vec<String>),
}

impl HostAccess {
    pub fn allows(&self, hostnqn: &str) -> bool {
        match self {
            HostAccess::Any => true,
            HostAccess::Only(hosts) => hosts.iter().any(|h| h == hostnqn),
        }
    }
}

/// A namespace to expose: its ID and the device behind it.
#[derive(Clone)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for NamespaceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceConfig")
            .field("nsid", &self.nsid)
            .field("device", &self.device.describe())
            .finish()
    }
}

/// A subsystem to add to the target.
#[derive(Clone, Debug)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub hosts: HostAccess,
    pub namespaces: Vec<NamespaceConfig>,
}

/// A namespace as served: device plus stable identifiers.
pub struct Namespace {
    pub nsid: u32,
    pub device: Arc<dyn BlockDevice>,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub stats: NamespaceStats,
}

/// Highest namespace ID a subsystem accepts (reported as NN).
pub const MAX_NSID: u32 = 1024;

/// A live subsystem.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    hosts: RwLock<HostAccess>,
    /// DH-HMAC-CHAP keys of the hosts that must authenticate.
    keys: RwLock<HostKeys>,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    controllers: Mutex<ControllerTable>,
}

struct ControllerTable {
    next_cntlid: u16,
    live: HashMap<u16, Weak<Controller>>,
}

impl Subsystem {
    pub fn new(cfg: &SubsystemConfig) -> Result<Subsystem, String> {
        let mut namespaces = BTreeMap::new();
        for ns in &cfg.namespaces {
            if ns.nsid == 0 || ns.nsid > MAX_NSID {
                return Err(format!(
                    "namespace ID {} is outside 1..={MAX_NSID}",
                    ns.nsid
                ));
            }
            let bs = ns.device.block_size();
            if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
                return Err(format!(
                    "namespace {} has unsupported block size {bs}",
                    ns.nsid
                ));
            }
            if namespaces
                .insert(ns.nsid, Arc::new(Self::namespace(&cfg.nqn, ns)))
                .is_some()
            {
                return Err(format!("namespace ID {} given twice", ns.nsid));
            }
        }
        Ok(Subsystem {
            nqn: cfg.nqn.clone(),
            serial: identity::serial(&cfg.nqn),
            hosts: RwLock::new(cfg.hosts.clone()),
            keys: RwLock::new(HostKeys::new()),
            namespaces: RwLock::new(namespaces),
            controllers: Mutex::new(ControllerTable {
                next_cntlid: 1,
                live: HashMap::new(),
            }),
        })
    }

    fn namespace(nqn: &str, ns: &NamespaceConfig) -> Namespace {
        Namespace {
            nsid: ns.nsid,
            device: ns.device.clone(),
            nguid: identity::nguid(nqn, ns.nsid),
            uuid: identity::uuid(nqn, ns.nsid),
            stats: NamespaceStats::default(),
        }
    }

    pub fn allows(&self, hostnqn: &str) -> bool {
        self.hosts
            .read()
            .map(|h| h.allows(hostnqn))
            .unwrap_or(false)
    }

    /// The DH-HMAC-CHAP keys of `hostnqn`, if that host must authenticate.
    pub fn host_keys(&self, hostnqn: &str) -> Option<DhchapKeys> {
        self.keys
            .read()
            .map(|k| k.get(hostnqn).cloned())
            .unwrap_or(None)
    }

    /// The hosts that must authenticate.
    pub fn authenticated_hosts(&self) -> Vec<String> {
        self.keys
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces the keys; returns the previous ones.
    pub fn set_host_keys(&self, keys: HostKeys) -> HostKeys {
        match self.keys.write() {
            Ok(mut k) => std::mem::replace(&mut *k, keys),
            Err(_) => HostKeys::new(),
        }
    }

    pub fn hosts(&self) -> HostAccess {
        self.hosts
            .read()
            .map(|h| h.clone())
            .unwrap_or(HostAccess::Only(Vec::new()))
    }

    pub fn set_hosts(&self, hosts: HostAccess) {
        if let Ok(mut h) = self.hosts.write() {
            *h = hosts;
        }
    }

    pub fn namespace_by_id(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.read().ok()?.get(&nsid).cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds or replaces a namespace and tells connected controllers.
    pub fn add_namespace(&self, ns: &NamespaceConfig) -> Result<(), String> {
        if ns.nsid == 0 || ns.nsid > MAX_NSID {
            return Err(format!(
                "namespace ID {} is outside 1..={MAX_NSID}",
                ns.nsid
            ));
        }
        self.namespaces
            .write()
            .map_err(|_| "namespace table poisoned".to_string())?
            .insert(ns.nsid, Arc::new(Self::namespace(&self.nqn, ns)));
        self.notify_namespace_changed(ns.nsid);
        Ok(())
    }

    /// Removes a namespace and tells connected controllers. Returns whether it existed.
    pub fn remove_namespace(&self, nsid: u32) -> bool {
        let removed = self
            .namespaces
            .write()
            .map(|mut m| m.remove(&nsid).is_some())
            .unwrap_or(false);
        if removed {
            self.notify_namespace_changed(nsid);
        }
        removed
    }

    /// Announces that namespace `nsid`'s capacity changed. Returns whether it exists.
    pub fn namespace_resized(&self, nsid: u32) -> bool {
        let exists = self.namespace_by_id(nsid).is_some();
        if exists {
            self.notify_namespace_changed(nsid);
        }
        exists
    }

    fn notify_namespace_changed(&self, nsid: u32) {
        for c in self.controllers() {
            c.namespace_changed(nsid);
        }
    }

    /// Allocates a controller ID and registers the controller built with it.
    pub fn register_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Option<Arc<Controller>> {
        let mut t = self.controllers.lock().ok()?;
        t.live.retain(|_, w| w.strong_count() > 0);
        if t.live.len() >= 0xFFEF {
            return None;
        }
        let mut id = t.next_cntlid;
        while t.live.contains_key(&id) || id == 0 || id > 0xFFEF {
            id = if id >= 0xFFEF { 1 } else { id + 1 };
        }
        t.next_cntlid = if id >= 0xFFEF { 1 } else { id + 1 };
        let c = make(id);
        t.live.insert(id, Arc::downgrade(&c));
        Some(c)
    }

    pub fn unregister_controller(&self, cntlid: u16) {
        if let Ok(mut t) = self.controllers.lock() {
            t.live.remove(&cntlid);
        }
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().ok()?.live.get(&cntlid)?.upgrade()
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers
            .lock()
            .map(|t| t.live.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}
