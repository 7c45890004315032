//! The liveness watch: faults replicas whose devices report a failure on their own (a remote
//! replica's connection closed or stopped answering keep-alives), so a mirror without host
//! I/O still notices a lost replica, reports itself degraded and starts reconnecting.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::label::format_id;
use super::mirror::Inner;
use super::status::ReplicaState;

impl Inner {
    /// Starts the watch (when `health_interval` is set); it ends with the mirror's tasks.
    pub(crate) fn spawn_health_watch(self: &Arc<Self>) {
        let Some(every) = self.opts.health_interval else {
            return;
        };
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.shutdown.load(Ordering::Acquire) {
                    return;
                }
                inner.check_health().await;
            }
        });
    }

    /// Faults every live member whose device reports a failure, then persists the change.
    async fn check_health(self: &Arc<Self>) {
        let failed: Vec<_> = {
            let st = self.lock();
            if st.closed {
                return;
            }
            st.members
                .iter()
                .filter(|m| {
                    matches!(
                        m.state,
                        ReplicaState::Healthy | ReplicaState::Rebuilding | ReplicaState::Connecting
                    )
                })
                .filter_map(|m| {
                    let why = m.dev.as_ref()?.failure()?;
                    Some((m.id, m.epoch, format!("device failed: {why}")))
                })
                .collect()
        };
        if failed.is_empty() {
            return;
        }
        for (id, _, why) in &failed {
            info!(mirror = %self.id_str, replica = %format_id(id), %why, "replica lost without I/O");
        }
        self.fault_many(&failed);
        let want = self.lock().version;
        if let Err(e) = self.persist_to(want).await {
            warn!(mirror = %self.id_str, error = %e, "label update after a lost replica failed");
        }
    }
}
