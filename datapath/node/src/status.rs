//! The node's status report (`/v1/status`) and metrics source: what is served and how it is
//! doing.

use std::sync::Arc;

use ferrite_target::{HostAccess, Target};
use serde_json::{Value, json};

use crate::http::StatusSource;

/// Everything the status endpoint reports on.
pub struct NodeStatus {
    pub target: Arc<Target>,
}

impl StatusSource for NodeStatus {
    fn metrics(&self) -> String {
        crate::metrics::render(&self.target)
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
        let listen: Vec<String> = self.target.listen_addrs().iter().map(|a| a.to_string()).collect();
        json!({ "version": env!("CARGO_PKG_VERSION"), "listen": listen, "subsystems": subsystems }).to_string()
    }
}
