//! [`Mirror::grow`]: online growth of a mirrored volume. The replicas' devices grow first
//! (the caller's job); the mirror checks they are large enough, records the new size in
//! every in-sync replica's label, and only then lets the host address the new blocks.

use std::sync::atomic::Ordering;

use tracing::info;

use super::MirrorError;
use super::label::format_id;
use super::mirror::{Mirror, check_geometry};
use super::replica;
use super::state::Target;
use super::status::ReplicaState;

impl Mirror {
    /// Grows the volume to `new_bytes` (a multiple of the block size) and returns the size
    /// the host now sees. Growing to the current size is a no-op.
    ///
    /// Every replica must be healthy and in sync (a degraded mirror is refused: grow after
    /// the rebuild), and every replica device must already hold the 1 MiB label reserve
    /// plus `new_bytes`; devices that learn their size from elsewhere (a remote namespace)
    /// are asked to re-read it first. Shrinking is refused. On any refusal nothing changes.
    pub async fn grow(&self, new_bytes: u64) -> Result<u64, MirrorError> {
        let inner = &self.inner;
        let _serial = inner.grow_lock.lock().await;
        let refuse = |reason: String| MirrorError::Grow {
            mirror: inner.id_str.clone(),
            reason,
        };
        let (geo, targets) = {
            let st = inner.lock();
            if st.closed {
                return Err(MirrorError::Closed {
                    mirror: inner.id_str.clone(),
                });
            }
            if new_bytes == inner.data_bytes() && new_bytes == st.geometry.data_bytes {
                return Ok(new_bytes);
            }
            let geo = st.geometry.grown_to(new_bytes).map_err(refuse)?;
            for m in &st.members {
                if m.state != ReplicaState::Healthy || !m.in_sync {
                    return Err(refuse(format!(
                        "replica {} ({}) is {:?}{}; grow once every replica is back in sync",
                        format_id(&m.id),
                        m.description,
                        m.state,
                        if m.in_sync { "" } else { " and out of sync" }
                    )));
                }
            }
            let targets: Vec<Target> = st.members.iter().filter_map(Target::of).collect();
            if targets.len() != st.members.len() {
                return Err(refuse("a replica has no open device".into()));
            }
            (geo, targets)
        };
        for t in &targets {
            let desc = t.dev.describe();
            replica::refresh_size(&*t.dev, inner.opts.io_timeout)
                .await
                .map_err(|e| refuse(format!("replica {desc}: reading its size: {e}")))?;
            check_geometry(&geo, &desc, &*t.dev)?;
        }
        let want = {
            let mut st = inner.lock();
            let unchanged = st.members.len() == targets.len()
                && targets.iter().all(|t| {
                    st.member(&t.id).is_some_and(|m| {
                        m.epoch == t.epoch && m.state == ReplicaState::Healthy && m.in_sync
                    })
                });
            if !unchanged {
                return Err(refuse(
                    "a replica faulted or the membership changed meanwhile; retry".into(),
                ));
            }
            if st.geometry.data_bytes < geo.data_bytes {
                st.geometry = geo;
                st.dirty.grow(geo.nregions);
                st.persisted_dirty.grow(geo.nregions);
                st.unflushed.grow(geo.nregions);
                for (_, f) in &mut st.flushing {
                    f.grow(geo.nregions);
                }
                st.changed();
            }
            st.version
        };
        // Every live in-sync replica's label records the new size before the host may use
        // it. A replica whose label write fails is faulted (and rebuilt when it returns).
        inner.persist_to(want).await?;
        let old = inner.data_bytes.fetch_max(new_bytes, Ordering::AcqRel);
        info!(mirror = %inner.id_str, from = old, to = new_bytes, "mirror grown");
        Ok(new_bytes)
    }
}
