//! Background work: reconnecting faulted replicas (with backoff), deciding how a returning
//! replica is readmitted (straight back in sync, partial or full rebuild, or refused), and the
//! rebuild itself: copying regions from a healthy source to the target under the region lock
//! while host I/O continues, then joining the target to the in-sync set.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::stream::{self, StreamExt};

use tracing::{debug, error, info, warn};

use crate::BlockDevice;

use super::label::{self, LabelState, ReplicaId, format_id};
use super::mirror::Inner;
use super::replica;
use super::state::Target;
use super::status::{RebuildKind, RebuildTracker, ReplicaState};

/// Outcome of readmission decided under the state lock.
enum Readmit {
    /// Back in sync without a rebuild (an offline mirror got its in-sync replica back).
    InSync(u64),
    /// Start a rebuild at the member's new epoch; persist `want` first.
    Rebuild(u64, Arc<RebuildTracker>, u64),
    /// Nothing to do (the member changed meanwhile, or it was refused).
    Nothing,
}

impl Inner {
    /// Reconnects faulted replica `id` (at `epoch`) with exponential backoff until it comes
    /// back, it is removed, or the mirror shuts down.
    pub(crate) async fn reconnect_loop(self: Arc<Self>, id: ReplicaId, epoch: u64) {
        let mut delay = self.opts.reconnect_initial;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.opts.reconnect_max);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let (connector, desc) = {
                let mut st = self.lock();
                let Some(m) = st.member_at(&id, epoch) else {
                    return;
                };
                if m.state != ReplicaState::Faulted {
                    return;
                }
                m.state = ReplicaState::Connecting;
                (Arc::clone(&m.connector), m.description.clone())
            };
            let attempt = async {
                let dev = replica::connect(&*connector, self.opts.connect_timeout)
                    .await
                    .map_err(|e| format!("connect failed: {e}"))?;
                self.check_device(&desc, &*dev).map_err(|e| e.to_string())?;
                let label = label::read_label(&*dev)
                    .await
                    .map_err(|e| format!("label read failed: {e}"))?;
                Ok::<_, String>((dev, label))
            }
            .await;
            match attempt {
                Ok((dev, label)) => {
                    self.readmit(id, epoch, dev, label).await;
                    return;
                }
                Err(why) => {
                    debug!(mirror = %self.id_str, replica = %format_id(&id), error = %why, retry_in = ?delay, "reconnect failed");
                    let mut st = self.lock();
                    match st.member_at(&id, epoch) {
                        Some(m) if m.state == ReplicaState::Connecting => {
                            m.state = ReplicaState::Faulted;
                            m.last_error = Some(why);
                        }
                        _ => return,
                    }
                }
            }
        }
    }

    /// Decides what a reconnected replica becomes and acts on it.
    async fn readmit(
        self: &Arc<Self>,
        id: ReplicaId,
        epoch: u64,
        dev: Arc<dyn BlockDevice>,
        label: LabelState,
    ) {
        let next = self.readmit_decide(id, epoch, dev, label);
        match next {
            Readmit::Nothing => {}
            Readmit::InSync(want) => {
                if let Err(e) = self.persist_to(want).await {
                    warn!(mirror = %self.id_str, error = %e, "persisting after readmission failed");
                }
            }
            Readmit::Rebuild(new_epoch, tracker, want) => {
                if let Err(e) = self.persist_to(want).await {
                    warn!(mirror = %self.id_str, error = %e, "persisting before rebuild failed");
                }
                self.spawn_rebuild(id, new_epoch, tracker);
            }
        }
    }

    fn readmit_decide(
        &self,
        id: ReplicaId,
        epoch: u64,
        dev: Arc<dyn BlockDevice>,
        label: LabelState,
    ) -> Readmit {
        let mut st = self.lock();
        let generation = st.generation;
        let tracking = st.tracking;
        let Some(i) = st
            .members
            .iter()
            .position(|m| m.id == id && m.epoch == epoch && m.state == ReplicaState::Connecting)
        else {
            return Readmit::Nothing;
        };
        let ours = match label {
            LabelState::Valid(l) if l.mirror_id == self.id && l.replica_id == id => Some(l),
            LabelState::Valid(l) => {
                let why = format!(
                    "device now carries the label of mirror {} replica {}; refusing to overwrite it",
                    format_id(&l.mirror_id),
                    format_id(&l.replica_id)
                );
                error!(mirror = %self.id_str, replica = %format_id(&id), "{why}");
                let m = &mut st.members[i];
                m.state = ReplicaState::Stale;
                m.last_error = Some(why);
                return Readmit::Nothing;
            }
            LabelState::Corrupt(why) => {
                warn!(mirror = %self.id_str, replica = %format_id(&id), %why, "returning replica has a corrupt label");
                None
            }
            LabelState::Blank => None,
        };
        let m = &mut st.members[i];
        // Continue from the label actually found: if our last write to it was torn, the next
        // one must go to the torn slot, not over the surviving one.
        m.label_seq = ours.as_ref().map_or(0, |l| l.seq);
        let mut changed = false;
        if m.in_sync {
            // Only the last in-sync replica(s) of an offline mirror stay in sync while faulted.
            if let Some(l) = ours.as_ref().filter(|l| l.generation > generation) {
                let why = format!(
                    "split brain: its label is at generation {} but the mirror is at {generation}; it took writes elsewhere",
                    l.generation
                );
                error!(mirror = %self.id_str, replica = %format_id(&id), "{why}");
                m.state = ReplicaState::Stale;
                m.last_error = Some(why);
                return Readmit::Nothing;
            }
            if ours.as_ref().is_some_and(|l| l.self_in_sync()) {
                m.dev = Some(dev);
                m.state = ReplicaState::Healthy;
                m.epoch += 1;
                m.last_error = None;
                info!(mirror = %self.id_str, replica = %format_id(&id), "in-sync replica is back; mirror online");
                st.drop_dead_in_sync();
                st.end_tracking_if_synced();
                st.changed();
                return Readmit::InSync(st.version);
            }
            warn!(mirror = %self.id_str, replica = %format_id(&id), "in-sync replica came back without its label; rebuilding it fully");
            m.in_sync = false;
            m.last_in_sync_gen = 0;
            changed = true;
        }
        let last = m.last_in_sync_gen;
        if let Some(l) = &ours
            && l.self_in_sync()
            && last > 0
            && l.generation > last
        {
            let why = format!(
                "split brain: its label is at generation {} but it was dropped at generation {last}; it took writes elsewhere",
                l.generation
            );
            error!(mirror = %self.id_str, replica = %format_id(&id), "{why}");
            m.state = ReplicaState::Stale;
            m.last_error = Some(why);
            if changed {
                st.start_tracking();
                st.bump();
            }
            return Readmit::Nothing;
        }
        let partial = ours.as_ref().is_some_and(|l| {
            l.self_in_sync()
                && last > 0
                && tracking.is_some_and(|base| base <= last.min(l.generation))
        });
        let kind = if partial {
            RebuildKind::Partial
        } else {
            RebuildKind::Full
        };
        let tracker = Arc::new(RebuildTracker::new(kind));
        m.dev = Some(dev);
        m.state = ReplicaState::Rebuilding;
        m.epoch += 1;
        m.rebuild = Some(Arc::clone(&tracker));
        m.last_error = None;
        let new_epoch = m.epoch;
        info!(mirror = %self.id_str, replica = %format_id(&id), ?kind, "replica is back; rebuilding");
        if changed {
            st.start_tracking();
            st.bump();
        }
        Readmit::Rebuild(new_epoch, tracker, st.version)
    }

    /// Copies the regions `tracker.kind` calls for to replica `id` (at `epoch`), then joins it.
    pub(crate) async fn rebuild(
        self: Arc<Self>,
        id: ReplicaId,
        epoch: u64,
        tracker: Arc<RebuildTracker>,
    ) {
        let kind = tracker.kind;
        // Partial: the bitmap as of now. The target already receives every host write (it
        // became a write target before this snapshot), so regions dirtied later reach it
        // directly; writes dispatched earlier set their bits before being dispatched.
        let (list, geo) = {
            let st = self.lock();
            let list: Option<Vec<u64>> = match kind {
                RebuildKind::Full => None,
                RebuildKind::Partial => Some(st.dirty.ones()),
                RebuildKind::Resync => st.tracking.map(|_| st.dirty.ones()),
            };
            (list, st.geometry)
        };
        let total = match &list {
            None => geo.data_bytes,
            Some(l) => l.iter().map(|&r| geo.region_extent(r).1).sum(),
        };
        tracker.bytes_total.store(total, Ordering::Relaxed);
        info!(mirror = %self.id_str, replica = %format_id(&id), ?kind, bytes = total, "rebuild started");
        let regions: Box<dyn Iterator<Item = u64> + Send> = match list {
            None => Box::new(0..geo.nregions),
            Some(l) => Box::new(l.into_iter()),
        };
        // Up to `rebuild_parallelism` regions in flight; the first copy that says stop (the
        // target faulted, no source left, shutdown) ends the rebuild, dropping the others.
        let me = &self;
        let tracker_ref = &*tracker;
        let id_ref = &id;
        let mut copies = stream::iter(regions)
            .map(|r| async move {
                !me.shutdown.load(Ordering::Acquire)
                    && me
                        .copy_region(id_ref, epoch, r, geo.region_extent(r), tracker_ref)
                        .await
            })
            .buffer_unordered(self.opts.rebuild_parallelism.max(1));
        while let Some(go_on) = copies.next().await {
            if !go_on {
                return;
            }
        }
        drop(copies);
        self.finish_rebuild(id, epoch, &tracker).await;
    }

    /// Copies (or, for a resync, compares and copies) region `r`, at data offset `off` for
    /// `len` bytes (its extent in the geometry the rebuild started with: a mirror does not
    /// grow while a member is rebuilding). Returns false when the rebuild must stop.
    async fn copy_region(
        self: &Arc<Self>,
        id: &ReplicaId,
        epoch: u64,
        r: u64,
        (off, len): (u64, u64),
        tracker: &RebuildTracker,
    ) -> bool {
        let timeout = self.opts.io_timeout;
        loop {
            let guard = self.locks.exclusive(r).await;
            let pick = {
                let st = self.lock();
                let Some(m) = st
                    .member(id)
                    .filter(|m| m.epoch == epoch && m.state == ReplicaState::Rebuilding)
                else {
                    return false;
                };
                let Some(dst) = Target::of(m) else {
                    return false;
                };
                let srcs: Vec<Target> = st
                    .members
                    .iter()
                    .filter(|s| &s.id != id && s.is_readable())
                    .filter_map(Target::of)
                    .collect();
                if srcs.is_empty() {
                    None
                } else {
                    let i = self.rr.fetch_add(1, Ordering::Relaxed) % srcs.len();
                    srcs.into_iter().nth(i).map(|s| (dst, s))
                }
            };
            let Some((dst, src)) = pick else {
                drop(guard);
                self.no_source(id, epoch, tracker);
                return false;
            };
            let data = match replica::read_data(&*src.dev, off, len, timeout).await {
                Ok(d) => d,
                Err(e) => {
                    drop(guard);
                    warn!(mirror = %self.id_str, source = %format_id(&src.id), error = %e, "rebuild source failed; trying another");
                    self.fault(&src.id, src.epoch, &format!("rebuild read failed: {e}"));
                    self.persist_best_effort().await;
                    continue;
                }
            };
            if tracker.kind == RebuildKind::Resync {
                match replica::read_data(&*dst.dev, off, len, timeout).await {
                    Ok(cur) if cur == data => {
                        tracker.bytes_done.fetch_add(len, Ordering::Relaxed);
                        return true;
                    }
                    Ok(_) => {
                        debug!(mirror = %self.id_str, region = r, "resync: region differs; copying")
                    }
                    Err(e) => {
                        drop(guard);
                        self.fault(&dst.id, dst.epoch, &format!("resync read failed: {e}"));
                        self.persist_best_effort().await;
                        return false;
                    }
                }
            }
            if let Err(e) = replica::write_data(&*dst.dev, off, data, false, timeout).await {
                drop(guard);
                self.fault(&dst.id, dst.epoch, &format!("rebuild write failed: {e}"));
                self.persist_best_effort().await;
                return false;
            }
            tracker.bytes_done.fetch_add(len, Ordering::Relaxed);
            tracker.bytes_copied.fetch_add(len, Ordering::Relaxed);
            self.rebuilt_bytes.fetch_add(len, Ordering::Relaxed);
            return true;
        }
    }

    /// No healthy source is left: a resync target (itself in sync) simply becomes healthy; any
    /// other target is faulted and retried later (its reconnect waits for a source).
    fn no_source(self: &Arc<Self>, id: &ReplicaId, epoch: u64, tracker: &RebuildTracker) {
        if tracker.kind == RebuildKind::Resync {
            let mut st = self.lock();
            if let Some(m) = st.member_at(id, epoch) {
                m.state = ReplicaState::Healthy;
                m.last_rebuild = m.rebuild.take().map(|t| t.progress());
                info!(mirror = %self.id_str, replica = %format_id(id), "resync source gone; replica serves as it is");
            }
            return;
        }
        self.fault(id, epoch, "no healthy replica to rebuild from");
    }

    async fn persist_best_effort(self: &Arc<Self>) {
        let want = self.lock().version;
        if let Err(e) = self.persist_to(want).await {
            warn!(mirror = %self.id_str, error = %e, "label update failed");
        }
    }

    /// Flushes the target and joins it to the in-sync set (new generation; the bitmap is
    /// cleared when every member is in sync).
    async fn finish_rebuild(self: &Arc<Self>, id: ReplicaId, epoch: u64, tracker: &RebuildTracker) {
        let dst = {
            let st = self.lock();
            match st.member(&id) {
                Some(m) if m.epoch == epoch && m.state == ReplicaState::Rebuilding => Target::of(m),
                _ => None,
            }
        };
        let Some(dst) = dst else { return };
        if let Err(e) = replica::flush(&*dst.dev, self.opts.io_timeout).await {
            self.fault(&id, epoch, &format!("flush after rebuild failed: {e}"));
            self.persist_best_effort().await;
            return;
        }
        let want = {
            let mut st = self.lock();
            let Some(i) = st.members.iter().position(|m| {
                m.id == id && m.epoch == epoch && m.state == ReplicaState::Rebuilding
            }) else {
                return;
            };
            let progress = tracker.progress();
            let m = &mut st.members[i];
            m.state = ReplicaState::Healthy;
            m.rebuild = None;
            m.last_rebuild = Some(progress.clone());
            m.last_error = None;
            let joined = !m.in_sync;
            m.in_sync = true;
            if joined {
                st.bump();
                st.end_tracking_if_synced();
            }
            st.rebuilds_completed += 1;
            info!(
                mirror = %self.id_str, replica = %format_id(&id), kind = ?progress.kind,
                bytes = progress.bytes_done, copied = progress.bytes_copied,
                generation = st.generation, "rebuild finished; replica in sync"
            );
            st.version
        };
        self.persist_best_effort_to(want).await;
    }

    async fn persist_best_effort_to(self: &Arc<Self>, want: u64) {
        if let Err(e) = self.persist_to(want).await {
            warn!(mirror = %self.id_str, error = %e, "label update failed");
        }
    }
}
