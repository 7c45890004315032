//! The node's status report (`/v1/status`) and metrics source: what is served and how it is
//! doing, and what of the state file was refused at start (`state_errors`).

use std::sync::Arc;

use ferrite_target::{HostAccess, Target};
use serde_json::{Value, json};

use crate::http::StatusSource;
use crate::storage::Storage;

/// Everything the status endpoint reports on.
pub struct NodeStatus {
    pub target: Arc<Target>,
    pub storage: Arc<Storage>,
    pub node: String,
}

#[async_trait::async_trait]
impl StatusSource for NodeStatus {
    fn metrics(&self) -> String {
        crate::metrics::render(&self.target, &self.storage)
    }

    fn status_json(&self) -> String {
        let stats = self.target.namespace_stats();
        let subsystems: Vec<Value> = self
            .target
            .subsystem_info()
            .into_iter()
            .map(|s| {
                let namespaces: Vec<Value> = s
                    .namespaces
                    .iter()
                    .map(|n| {
                        let st = stats.iter().find(|x| x.nqn == s.nqn && x.nsid == n.nsid);
                        json!({
                            "nsid": n.nsid,
                            "size_bytes": n.size_bytes,
                            "block_size": n.block_size,
                            "device": n.device,
                            "read_ops": st.map(|x| x.read_ops),
                            "write_ops": st.map(|x| x.write_ops),
                            "read_bytes": st.map(|x| x.read_bytes),
                            "write_bytes": st.map(|x| x.write_bytes),
                            "errors": st.map(|x| x.errors),
                        })
                    })
                    .collect();
                let hosts = match &s.hosts {
                    HostAccess::Any => Value::String("any".into()),
                    HostAccess::Only(h) => json!(h),
                };
                json!({ "nqn": s.nqn, "allowed_hosts": hosts, "controllers": s.controllers, "namespaces": namespaces })
            })
            .collect();
        let listen: Vec<String> = self
            .target
            .listen_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.node,
            "listen": listen,
            "subsystems": subsystems,
            "pools": self.pools(),
            "replicas": self.replicas(),
            "volumes": self.volumes(),
            "state_errors": self.state_errors(),
            "state_file_kept_aside": self.storage.state_refused.kept_aside.as_ref().map(|p| p.display().to_string()),
        })
        .to_string()
    }
}

impl NodeStatus {
    /// The parts of the state file refused at start, and why.
    fn state_errors(&self) -> Vec<Value> {
        self.storage
            .state_refused
            .errors
            .iter()
            .map(|e| json!({ "file": e.file.display().to_string(), "entry": e.entry, "error": e.reason }))
            .collect()
    }

    fn pools(&self) -> Vec<Value> {
        self.storage
            .pools()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "uuid": uuid::Uuid::from_bytes(p.raid.uuid()).to_string(),
                    "disks": p.disks,
                    "stripe_size": p.raid.stripe_size(),
                    "capacity_bytes": p.store.capacity_bytes(),
                    "used_bytes": p.store.used_bytes(),
                    "free_bytes": p.store.free_bytes(),
                })
            })
            .collect()
    }

    fn replicas(&self) -> Vec<Value> {
        self.storage
            .replicas()
            .iter()
            .map(|r| {
                let info = r.volume.info();
                json!({
                    "uuid": r.uuid.to_string(),
                    "pool": r.pool,
                    "size_bytes": info.size,
                    "thin": info.thin,
                    "allocated_bytes": info.allocated_bytes,
                    "nqn": r.nqn(),
                })
            })
            .collect()
    }

    fn volumes(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .storage
            .volume_status()
            .into_iter()
            .map(|(uuid, nqn, st)| {
                let replicas: Vec<Value> = st
                    .replicas
                    .iter()
                    .map(|r| {
                        json!({
                            "uuid": uuid::Uuid::from_bytes(r.id).to_string(),
                            "description": r.description,
                            "state": format!("{:?}", r.state),
                            "in_sync": r.in_sync,
                            "rebuild": r.rebuild.as_ref().map(|p| json!({
                                "kind": format!("{:?}", p.kind),
                                "bytes_done": p.bytes_done,
                                "bytes_total": p.bytes_total,
                                "bytes_copied": p.bytes_copied,
                                "bytes_per_sec": p.bytes_per_sec,
                            })),
                            "last_rebuild": r.last_rebuild.as_ref().map(|p| json!({
                                "kind": format!("{:?}", p.kind),
                                "bytes_done": p.bytes_done,
                                "bytes_total": p.bytes_total,
                                "bytes_copied": p.bytes_copied,
                            })),
                            "last_error": r.last_error,
                        })
                    })
                    .collect();
                json!({
                    "uuid": uuid.to_string(),
                    "nqn": nqn,
                    "state": if st.healthy() == st.replicas.len() { "Online" } else if st.healthy() == 0 { "Faulted" } else { "Degraded" },
                    "generation": st.generation,
                    "size_bytes": st.size,
                    "dirty_regions": st.dirty_regions,
                    "rebuilt_bytes_total": st.rebuilt_bytes_total,
                    "rebuilds_completed": st.rebuilds_completed,
                    "replicas": replicas,
                })
            })
            .collect();
        for (uuid, reason) in crate::storage::lock(&self.storage.pending).iter() {
            out.push(json!({ "uuid": uuid.to_string(), "state": "Pending", "reason": reason }));
        }
        out
    }
}
