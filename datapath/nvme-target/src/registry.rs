//! The target: the registry of subsystems and listeners, the management API the node
//! agent uses to export and withdraw namespaces at run time, and admission of connections
//! (limits in total and per peer address, enforced at accept).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferrite_protocol::nqn::{self, DISCOVERY_NQN};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::auth::{DhchapKeys, HostKeys};
use crate::connection;
use crate::controller::Controller;
use crate::error::TargetError;
use crate::options::TargetOptions;
use crate::stats::{TargetStats, TargetStatsSnapshot};
use crate::subsystem::{HostAccess, NamespaceConfig, Subsystem, SubsystemConfig};

/// Resolves once a shutdown/close signal is raised (or its sender is gone).
pub(crate) async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// State shared by every connection of a target.
pub(crate) struct Shared {
    pub options: TargetOptions,
    subsystems: RwLock<HashMap<String, Arc<Subsystem>>>,
    listeners: Mutex<Vec<SocketAddr>>,
    genctr: AtomicU64,
    discovery_cntlid: AtomicU64,
    shutdown: watch::Sender<bool>,
    active_connections: AtomicUsize,
    /// Open connections per peer address (entries removed when they reach zero).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    idle: Notify,
    pub stats: TargetStats,
    /// DH-HMAC-CHAP keys that apply on every subsystem (from `TargetOptions::host_keys`).
    default_keys: RwLock<HostKeys>,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    TotalLimit(usize),
    AddressLimit(usize),
}

/// A connection's place in the limits; given back when dropped.
pub(crate) struct ConnectionPermit {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.shared.connection_ended(self.ip);
    }
}

impl Shared {
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.read().ok()?.get(nqn).cloned()
    }

    /// The DH-HMAC-CHAP keys `hostnqn` must authenticate with on `sub`: the subsystem's own,
    /// else the target-wide ones; `None` if the host need not authenticate.
    pub fn host_keys(&self, sub: &Subsystem, hostnqn: &str) -> Option<DhchapKeys> {
        sub.host_keys(hostnqn)
            .or_else(|| self.default_keys.read().ok()?.get(hostnqn).cloned())
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        let mut v: Vec<_> = self
            .subsystems
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a: &Arc<Subsystem>, b| a.nqn.cmp(&b.nqn));
        v
    }

    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Discovery log generation counter; bumped on every change to what hosts can see.
    pub fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.genctr.fetch_add(1, Ordering::Relaxed);
    }

    /// Creates a discovery controller (they are not kept in any subsystem's table).
    pub fn register_discovery(&self, make: impl FnOnce(u16) -> Arc<Controller>) -> Arc<Controller> {
        let id = (self.discovery_cntlid.fetch_add(1, Ordering::Relaxed) % 0xFFEF) as u16 + 1;
        make(id)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Admits a new connection from `peer` if neither the total nor the per-address limit is
    /// reached.
    pub fn admit_connection(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> Result<ConnectionPermit, Refusal> {
        let ip = peer.ip();
        let o = &self.options;
        // The per-address table's lock also orders the total count's check and increment.
        let mut table = self
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.active_connections.load(Ordering::Acquire) >= o.max_connections {
            TargetStats::bump(&self.stats.refused_total_limit);
            return Err(Refusal::TotalLimit(o.max_connections));
        }
        let n = table.entry(ip).or_insert(0);
        if *n >= o.max_connections_per_address {
            TargetStats::bump(&self.stats.refused_address_limit);
            return Err(Refusal::AddressLimit(o.max_connections_per_address));
        }
        *n += 1;
        self.active_connections.fetch_add(1, Ordering::AcqRel);
        self.stats
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        TargetStats::bump(&self.stats.connections_accepted);
        Ok(ConnectionPermit {
            shared: self.clone(),
            ip,
        })
    }

    fn connection_ended(&self, ip: IpAddr) {
        {
            let mut table = self
                .per_address
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = table.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    table.remove(&ip);
                }
            }
        }
        self.stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
        if self.active_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// A served subsystem, as reported by [`Target::subsystem_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemInfo {
    pub nqn: String,
    pub hosts: HostAccess,
    /// Hosts that must authenticate with DH-HMAC-CHAP (their keys are not reported).
    pub authenticated_hosts: Vec<String>,
    pub controllers: usize,
    pub namespaces: Vec<NamespaceInfo>,
}

/// A served namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub size_bytes: u64,
    pub block_size: u32,
    pub device: String,
}

/// An NVMe/TCP target: subsystems served on TCP listeners.
pub struct Target {
    shared: Arc<Shared>,
}

impl Target {
    pub fn new(options: TargetOptions) -> Arc<Target> {
        let (shutdown, _) = watch::channel(false);
        let default_keys = RwLock::new(options.host_keys.clone());
        Arc::new(Target {
            shared: Arc::new(Shared {
                default_keys,
                options,
                subsystems: RwLock::new(HashMap::new()),
                listeners: Mutex::new(Vec::new()),
                genctr: AtomicU64::new(1),
                discovery_cntlid: AtomicU64::new(0),
                shutdown,
                active_connections: AtomicUsize::new(0),
                per_address: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                stats: TargetStats::default(),
            }),
        })
    }

    pub fn options(&self) -> &TargetOptions {
        &self.shared.options
    }

    /// Adds a subsystem. Fails, changing nothing, on a bad NQN, a duplicate, or bad
    /// namespaces.
    pub fn add_subsystem(&self, cfg: SubsystemConfig) -> Result<(), TargetError> {
        self.add_subsystem_with_keys(cfg, HostKeys::new())
    }

    /// Adds a subsystem whose hosts in `keys` must authenticate with DH-HMAC-CHAP. The keys
    /// are in place before the subsystem is reachable.
    pub fn add_subsystem_with_keys(
        &self,
        cfg: SubsystemConfig,
        keys: HostKeys,
    ) -> Result<(), TargetError> {
        nqn::validate(&cfg.nqn)?;
        for h in keys.keys() {
            nqn::validate(h)?;
        }
        if cfg.nqn == DISCOVERY_NQN {
            return Err(TargetError::ReservedNqn(cfg.nqn));
        }
        if let HostAccess::Only(hosts) = &cfg.hosts {
            for h in hosts {
                nqn::validate(h)?;
            }
        }
        let sub = Subsystem::new(&cfg).map_err(|reason| TargetError::InvalidNamespace {
            nqn: cfg.nqn.clone(),
            reason,
        })?;
        let authenticated = keys.len();
        let _ = sub.set_host_keys(keys);
        {
            let mut map = self
                .shared
                .subsystems
                .write()
                .map_err(|_| TargetError::SubsystemExists(cfg.nqn.clone()))?;
            if map.contains_key(&cfg.nqn) {
                return Err(TargetError::SubsystemExists(cfg.nqn));
            }
            map.insert(cfg.nqn.clone(), Arc::new(sub));
        }
        self.shared.bump();
        info!(nqn = %cfg.nqn, namespaces = cfg.namespaces.len(), hosts = ?cfg.hosts, authenticated, "subsystem added");
        Ok(())
    }

    /// Removes a subsystem and disconnects its controllers.
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let sub = self
            .shared
            .subsystems
            .write()
            .ok()
            .and_then(|mut m| m.remove(nqn))
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        for c in sub.controllers() {
            c.shutdown("subsystem removed");
        }
        self.shared.bump();
        info!(nqn, "subsystem removed");
        Ok(())
    }

    /// Replaces a subsystem's host access list. Connected hosts that are no longer allowed
    /// are disconnected.
    pub fn set_hosts(&self, nqn: &str, hosts: HostAccess) -> Result<(), TargetError> {
        if let HostAccess::Only(list) = &hosts {
            for h in list {
                nqn::validate(h)?;
            }
        }
        let sub = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        sub.set_hosts(hosts);
        for c in sub.controllers() {
            if !sub.allows(&c.hostnqn) {
                c.shutdown("host removed from the access list");
            }
        }
        self.shared.bump();
        Ok(())
    }

    /// Replaces the DH-HMAC-CHAP keys of a subsystem's hosts. Connected hosts whose keys
    /// changed (given, removed or replaced) are disconnected: they reconnect, and authenticate
    /// with the new keys if they have any.
    pub fn set_host_keys(&self, nqn: &str, keys: HostKeys) -> Result<(), TargetError> {
        for h in keys.keys() {
            nqn::validate(h)?;
        }
        let sub = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        let old = sub.set_host_keys(keys);
        for c in sub.controllers() {
            if old.get(&c.hostnqn) != sub.host_keys(&c.hostnqn).as_ref() {
                c.shutdown("host DH-HMAC-CHAP keys changed");
            }
        }
        Ok(())
    }

    /// Replaces the target-wide DH-HMAC-CHAP keys (those that apply on every subsystem).
    /// Connected hosts whose keys changed on some subsystem are disconnected.
    pub fn set_default_host_keys(&self, keys: HostKeys) -> Result<(), TargetError> {
        for h in keys.keys() {
            nqn::validate(h)?;
        }
        let before: Vec<_> = self
            .shared
            .subsystems()
            .into_iter()
            .flat_map(|s| s.controllers().into_iter().map(move |c| (s.clone(), c)))
            .map(|(s, c)| {
                let k = self.shared.host_keys(&s, &c.hostnqn);
                (s, c, k)
            })
            .collect();
        if let Ok(mut k) = self.shared.default_keys.write() {
            *k = keys;
        }
        for (s, c, old) in before {
            if self.shared.host_keys(&s, &c.hostnqn) != old {
                c.shutdown("host DH-HMAC-CHAP keys changed");
            }
        }
        Ok(())
    }

    /// Adds (or replaces) a namespace of a subsystem; connected hosts get an event.
    pub fn add_namespace(&self, nqn: &str, ns: NamespaceConfig) -> Result<(), TargetError> {
        let sub = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        sub.add_namespace(&ns)
            .map_err(|reason| TargetError::InvalidNamespace {
                nqn: nqn.to_string(),
                reason,
            })
    }

    /// Tells the hosts connected to a subsystem that namespace `nsid` changed size (its
    /// device grew): they get a Namespace Attribute Changed event and re-read Identify.
    pub fn namespace_resized(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        let sub = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        if sub.namespace_resized(nsid) {
            Ok(())
        } else {
            Err(TargetError::InvalidNamespace {
                nqn: nqn.to_string(),
                reason: format!("no namespace {nsid}"),
            })
        }
    }

    /// Removes a namespace of a subsystem; connected hosts get an event.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<bool, TargetError> {
        let sub = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::SubsystemNotFound(nqn.to_string()))?;
        Ok(sub.remove_namespace(nsid))
    }

    /// NQNs of the subsystems served.
    pub fn subsystem_nqns(&self) -> Vec<String> {
        self.shared
            .subsystems()
            .iter()
            .map(|s| s.nqn.clone())
            .collect()
    }

    /// What the target serves, for status reports.
    pub fn subsystem_info(&self) -> Vec<SubsystemInfo> {
        self.shared
            .subsystems()
            .iter()
            .map(|s| SubsystemInfo {
                nqn: s.nqn.clone(),
                hosts: s.hosts(),
                authenticated_hosts: {
                    let mut h = s.authenticated_hosts();
                    if let Ok(k) = self.shared.default_keys.read() {
                        h.extend(k.keys().filter(|n| s.allows(n)).cloned());
                    }
                    h.sort();
                    h.dedup();
                    h
                },
                controllers: s.controllers().len(),
                namespaces: s
                    .namespaces()
                    .iter()
                    .map(|n| NamespaceInfo {
                        nsid: n.nsid,
                        size_bytes: n.device.size_bytes(),
                        block_size: n.device.block_size(),
                        device: n.device.describe(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// I/O statistics of every namespace served.
    pub fn namespace_stats(&self) -> Vec<crate::stats::NamespaceStatsSnapshot> {
        let mut out = Vec::new();
        for s in self.shared.subsystems() {
            for ns in s.namespaces() {
                out.push(ns.stats.snapshot(&s.nqn, ns.nsid));
            }
        }
        out
    }

    /// Target-wide connection counters (limits, timeouts, refusals).
    pub fn stats(&self) -> TargetStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Number of live controllers of a subsystem.
    pub fn controller_count(&self, nqn: &str) -> usize {
        self.shared
            .subsystem(nqn)
            .map(|s| s.controllers().len())
            .unwrap_or(0)
    }

    /// Starts serving on `addr` (port 0 picks a free port) and returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, TargetError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TargetError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TargetError::Listen { addr, source })?;
        if let Ok(mut l) = self.shared.listeners.lock() {
            l.push(bound);
        }
        self.shared.bump();
        info!(%bound, "listening for NVMe/TCP");
        let shared = self.shared.clone();
        let mut stop = shared.shutdown_signal();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => match shared.admit_connection(peer) {
                            Ok(permit) => {
                                let s = shared.clone();
                                tokio::spawn(async move {
                                    connection::serve(stream, peer, s).await;
                                    drop(permit);
                                });
                            }
                            Err(refusal) => {
                                match refusal {
                                    Refusal::TotalLimit(limit) => {
                                        warn!(%peer, limit, "refusing connection: total connection limit reached")
                                    }
                                    Refusal::AddressLimit(limit) => {
                                        warn!(%peer, limit, "refusing connection: limit of connections from this address reached")
                                    }
                                }
                                drop(stream);
                            }
                        },
                        Err(e) => {
                            warn!(%bound, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = signalled(&mut stop) => break,
                }
            }
            if let Ok(mut l) = shared.listeners.lock() {
                l.retain(|a| *a != bound);
            }
        });
        Ok(bound)
    }

    /// Addresses currently listened on.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners()
    }

    /// Stops listening, disconnects every host, and waits (up to 5 s) for connections to
    /// finish their in-flight commands.
    pub async fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
        for s in self.shared.subsystems() {
            for c in s.controllers() {
                c.shutdown("target shutting down");
            }
        }
        let wait = async {
            while self.shared.active_connections.load(Ordering::Acquire) > 0 {
                let notified = self.shared.idle.notified();
                if self.shared.active_connections.load(Ordering::Acquire) == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            warn!("connections still open after 5 s at shutdown");
        }
        info!("target stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn connection_limits_per_address_and_in_total() {
        let t = Target::new(TargetOptions {
            max_connections: 3,
            max_connections_per_address: 2,
            ..Default::default()
        });
        let s = &t.shared;
        let a1 = s
            .admit_connection(peer([10, 0, 0, 1], 1))
            .expect("first from a");
        let a2 = s
            .admit_connection(peer([10, 0, 0, 1], 2))
            .expect("second from a");
        assert_eq!(
            s.admit_connection(peer([10, 0, 0, 1], 3)).err(),
            Some(Refusal::AddressLimit(2))
        );
        let b1 = s
            .admit_connection(peer([10, 0, 0, 2], 1))
            .expect("first from b");
        assert_eq!(
            s.admit_connection(peer([10, 0, 0, 3], 1)).err(),
            Some(Refusal::TotalLimit(3))
        );
        drop(a1);
        let a3 = s
            .admit_connection(peer([10, 0, 0, 1], 4))
            .expect("a has room again");
        let st = t.stats();
        assert_eq!((st.connections_active, st.connections_accepted), (3, 4));
        assert_eq!((st.refused_address_limit, st.refused_total_limit), (1, 1));
        drop((a2, a3, b1));
        assert_eq!(t.stats().connections_active, 0);
        assert!(
            s.per_address.lock().map(|m| m.is_empty()).unwrap_or(false),
            "no entries left behind"
        );
        assert_eq!(s.active_connections.load(Ordering::Acquire), 0);
    }
}
