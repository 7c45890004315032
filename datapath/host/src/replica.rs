//! [`RemoteReplica`]: the mirror's connector for a replica on another node, reached over
//! NVMe/TCP with this library and seen by the mirror as a block device (namespace 1 of the
//! replica's subsystem). Used by the node agent and the benchmark.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use ferrite_block::mirror::{ReplicaConnector, ReplicaId};
use ferrite_block::{BlockDevice, BlockError};

use crate::{Controller, HostError, HostOptions, RemoteNamespace};

/// Connects to replica `id`, exported by another node's datapath as namespace 1 of `nqn` at
/// `addr`, as host `options.hostnqn` (which that node's access list must allow).
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
        let gone = |e: HostError| BlockError::Gone(format!("{} at {}: {e}", self.nqn, self.addr));
        let ctrl = Controller::connect(self.addr, &self.nqn, self.options.clone())
            .await
            .map_err(gone)?;
        let ns = RemoteNamespace::new(Arc::new(ctrl), 1)
            .await
            .map_err(gone)?;
        Ok(Arc::new(ns))
    }
}
