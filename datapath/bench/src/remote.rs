//! A mirror's remote replica reached over NVMe/TCP with the Rust host: the same connector as
//! the node agent's (`ferrite-node`'s `remote.rs`), copied here so that the benchmark does not
//! depend on the node binary crate.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ferrite_block::mirror::{ReplicaConnector, ReplicaId};
use ferrite_block::{BlockDevice, BlockError};
use ferrite_host::{Controller, HostOptions, RemoteNamespace};

/// Connects to replica `id`, exported as namespace 1 of `nqn` at `addr`.
pub struct RemoteReplica {
    pub id: ReplicaId,
    pub addr: SocketAddr,
    pub nqn: String,
    pub options: HostOptions,
}

#[async_trait]
impl ReplicaConnector for RemoteReplica {
    fn replica_id(&self) -> ReplicaId {
        self.id
    }

    fn describe(&self) -> String {
        format!("remote {} at {}", self.nqn, self.addr)
    }

    async fn connect(&self) -> Result<Arc<dyn BlockDevice>, BlockError> {
        let gone = |e: ferrite_host::HostError| {
            BlockError::Gone(format!("{} at {}: {e}", self.nqn, self.addr))
        };
        let ctrl = Controller::connect(self.addr, &self.nqn, self.options.clone())
            .await
            .map_err(gone)?;
        let ns = RemoteNamespace::new(Arc::new(ctrl), 1)
            .await
            .map_err(gone)?;
        Ok(Arc::new(ns))
    }
}
