//! [`Mirror`]: the volume a host sees, over 1..N replicas. Host I/O paths (fan-out writes,
//! round-robin reads with retry, flush), the label writer, close, status, and membership
//! changes. Assembly lives in `assemble.rs`, rebuild and reconnect in `rebuild.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::{blocks_in, check_range};
use crate::{BlockDevice, BlockError, IoBuf};

use super::MirrorError;
use super::label::{self, Geometry, MAX_MEMBERS, MirrorId, RESERVE_BYTES, ReplicaId, format_id};
use super::locks::RegionLocks;
use super::replica::{self, ReplicaConnector, ZeroKind};
use super::state::{Member, State, Target};
use super::status::{MirrorStatus, RebuildKind, RebuildTracker, ReplicaState, ReplicaStatus};

/// Tunables of a mirror.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Smallest dirty-bitmap region size (used by [`Mirror::create`]; rounded up to a power of
    /// two and doubled until the bitmap fits the label, so a volume over ~4 TiB gets larger
    /// regions). Default 1 MiB.
    pub region_size: u64,
    /// Bound on every replica I/O; an I/O that takes longer faults the replica. Default 30 s.
    pub io_timeout: Option<Duration>,
    /// Bound on one connect attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// First delay before reconnecting a faulted replica; doubles up to `reconnect_max`.
    /// Default 200 ms.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts. Default 5 s.
    pub reconnect_max: Duration,
    /// Let [`Mirror::assemble`] proceed when replicas listed in sync by the newest label are
    /// unreachable. The caller asserts they have not taken writes elsewhere (otherwise the
    /// reachable replicas may be stale). Default false.
    pub allow_missing_in_sync: bool,
    /// [`Mirror::create`]: treat only the first replica as in sync and fully rebuild the
    /// others (for replicas whose initial contents may differ). Default false: all replicas
    /// start in sync, which is right for fresh thin volumes (they all read as zeroes).
    pub sync_on_create: bool,
    /// How often replica devices are asked whether they are known to have failed
    /// ([`crate::BlockDevice::failure`]: a remote replica's closed connection), so that a lost
    /// replica is faulted (and the mirror reported degraded) without waiting for I/O.
    /// Default 1 s; `None` disables the check.
    pub health_interval: Option<Duration>,
    /// Regions a rebuild copies at once (each under its own region lock, so host writes to
    /// other regions go on). Default 4; 1 copies one region at a time.
    pub rebuild_parallelism: usize,
}

impl Default for MirrorOptions {
    fn default() -> MirrorOptions {
        MirrorOptions {
            region_size: label::DEFAULT_REGION_SIZE,
            io_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            allow_missing_in_sync: false,
            sync_on_create: false,
            rebuild_parallelism: 4,
            health_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Shared core of a mirror (held by the handle and by its background tasks).
pub(crate) struct Inner {
    pub id: MirrorId,
    pub id_str: String,
    /// Volume block size (fixed at creation).
    pub block_size: u32,
    /// Dirty-bitmap region size (fixed at creation).
    pub region_size: u64,
    /// Bytes the host may address. [`Mirror::grow`] raises it only after every label
    /// records the new size; the labels' geometry (`State::geometry`) may be ahead of it.
    pub data_bytes: AtomicU64,
    pub opts: MirrorOptions,
    pub state: Mutex<State>,
    /// Serialises label writes (so sequence numbers and slots alternate cleanly).
    pub label_lock: tokio::sync::Mutex<()>,
    /// Serialises [`Mirror::grow`] calls.
    pub grow_lock: tokio::sync::Mutex<()>,
    pub locks: RegionLocks,
    pub rr: AtomicUsize,
    pub tasks: Mutex<JoinSet<()>>,
    pub shutdown: AtomicBool,
    pub rebuilt_bytes: AtomicU64,
}

/// A mutation fanned out to the replicas.
enum Mutation {
    Write { data: IoBuf, fua: bool },
    Zero(ZeroKind),
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The regions touched by `len` bytes at data offset `off`, as `[first, end)`.
    pub(crate) fn regions(&self, off: u64, len: u64) -> (u64, u64) {
        label::region_span(self.region_size, off, len)
    }

    /// Bytes the host may address now.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Acquire)
    }

    /// The geometry the labels record (at least as large as what the host may address).
    pub(crate) fn geometry(&self) -> Geometry {
        self.lock().geometry
    }

    pub(crate) fn no_healthy(&self) -> MirrorError {
        MirrorError::NoHealthyReplica {
            mirror: self.id_str.clone(),
        }
    }

    /// Spawns a background task owned by the mirror (aborted on close and drop).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.shutdown.load(Ordering::Acquire) {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(fut);
    }

    /// Faults a replica after an I/O error and schedules its reconnect.
    pub(crate) fn fault(self: &Arc<Self>, id: &ReplicaId, epoch: u64, why: &str) {
        self.fault_many(&[(*id, epoch, why.to_string())]);
    }

    /// Faults the replicas that failed one operation together and schedules reconnects.
    pub(crate) fn fault_many(self: &Arc<Self>, failed: &[(ReplicaId, u64, String)]) {
        let faulted = self.lock().mark_faulted(failed);
        for (id, epoch) in faulted {
            self.spawn_reconnect(id, epoch);
        }
    }

    pub(crate) fn spawn_reconnect(self: &Arc<Self>, id: ReplicaId, epoch: u64) {
        let inner = Arc::clone(self);
        self.spawn(async move { inner.reconnect_loop(id, epoch).await });
    }

    pub(crate) fn spawn_rebuild(
        self: &Arc<Self>,
        id: ReplicaId,
        epoch: u64,
        t: Arc<RebuildTracker>,
    ) {
        let inner = Arc::clone(self);
        self.spawn(async move { inner.rebuild(id, epoch, t).await });
    }

    /// Makes the state at version `want` (or newer) durable in the labels of every live
    /// in-sync replica. A replica whose label write fails is faulted and the (new) state is
    /// written again to the rest. Fails only when no live in-sync replica is left.
    pub(crate) async fn persist_to(self: &Arc<Self>, want: u64) -> Result<(), MirrorError> {
        let _guard = self.label_lock.lock().await;
        loop {
            let (version, dirty, writes) = {
                let mut st = self.lock();
                if st.persisted_version >= want {
                    return Ok(());
                }
                let mut writes = Vec::new();
                for i in 0..st.members.len() {
                    if !st.members[i].is_live_in_sync() {
                        continue;
                    }
                    st.members[i].label_seq += 1;
                    let m = &st.members[i];
                    let Some(t) = Target::of(m) else { continue };
                    let label = st.label_for(m.id, m.label_seq);
                    writes.push((t, label));
                }
                if writes.is_empty() {
                    return Err(self.no_healthy());
                }
                (st.version, st.dirty.clone(), writes)
            };
            let timeout = self.opts.io_timeout;
            let results = join_all(writes.iter().map(|(t, l)| {
                replica::timed(timeout, "label write", label::write_label(&*t.dev, l))
            }))
            .await;
            let failed: Vec<(ReplicaId, u64, String)> = writes
                .iter()
                .zip(results)
                .filter_map(|((t, _), r)| {
                    r.err()
                        .map(|e| (t.id, t.epoch, format!("label write failed: {e}")))
                })
                .collect();
            self.fault_many(&failed);
            if failed.is_empty() {
                let mut st = self.lock();
                st.persisted_version = st.persisted_version.max(version);
                st.persisted_dirty = dirty;
                debug!(mirror = %self.id_str, generation = st.generation, version, "labels persisted");
                return Ok(());
            }
        }
    }

    fn check_open(&self, st: &State) -> Result<(), MirrorError> {
        if st.closed {
            return Err(MirrorError::Closed {
                mirror: self.id_str.clone(),
            });
        }
        Ok(())
    }

    /// Fans a mutation of `len` bytes at data offset `off` out to every write target.
    async fn mutate(self: Arc<Self>, off: u64, len: u64, op: Mutation) -> Result<(), MirrorError> {
        let (first, end) = self.regions(off, len);
        let _stripes = self.locks.shared(first, end).await;
        let targets = loop {
            let (targets, want, need) = {
                let mut st = self.lock();
                self.check_open(&st)?;
                if st.tracking.is_some() {
                    st.mark_dirty(first, end);
                }
                st.mark_unflushed(first, end);
                let targets: Vec<Target> = st
                    .members
                    .iter()
                    .filter_map(|m| m.is_write_target().then(|| Target::of(m)).flatten())
                    .collect();
                if !targets.iter().any(|t| t.in_sync) {
                    return Err(self.no_healthy());
                }
                (targets, st.version, st.persisted_version < st.version)
            };
            if need {
                // Write intent: the dirty bits (and any generation change) are durable before
                // the data is sent.
                self.persist_to(want).await?;
                continue;
            }
            break targets;
        };
        let timeout = self.opts.io_timeout;
        let results = match op {
            Mutation::Write { data, fua } => {
                let mut bufs: Vec<IoBuf> = (1..targets.len()).map(|_| data.clone()).collect();
                bufs.push(data);
                join_all(
                    targets
                        .iter()
                        .zip(bufs)
                        .map(|(t, buf)| replica::write_data(&*t.dev, off, buf, fua, timeout)),
                )
                .await
            }
            Mutation::Zero(kind) => {
                join_all(
                    targets
                        .iter()
                        .map(|t| replica::zero_data(&*t.dev, off, len, kind, timeout)),
                )
                .await
            }
        };
        // Completed after a flush may have started: not covered by that flush.
        self.lock().mark_unflushed(first, end);
        self.settle(&targets, results, Some((first, end))).await
    }

    /// Handles the per-replica results of a write or flush: faults the replicas that failed
    /// (marking the regions dirty), persists the new state, and succeeds if an in-sync replica
    /// that completed the operation is still in sync afterwards.
    async fn settle(
        self: &Arc<Self>,
        targets: &[Target],
        results: Vec<Result<(), BlockError>>,
        regions: Option<(u64, u64)>,
    ) -> Result<(), MirrorError> {
        let mut first_err = None;
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for (t, r) in targets.iter().zip(results) {
            match r {
                Ok(()) if t.in_sync => ok.push((t.id, t.epoch)),
                Ok(()) => {}
                Err(e) => {
                    failed.push((t.id, t.epoch, e.to_string()));
                    first_err.get_or_insert(e);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if let Some((first, end)) = regions {
            // A replica may lack these regions now: whoever rebuilds it must copy them.
            self.lock().mark_dirty(first, end);
        }
        self.fault_many(&failed);
        let want = self.lock().version;
        let persisted = self.persist_to(want).await;
        let survived = {
            let st = self.lock();
            ok.iter().any(|(id, epoch)| {
                st.member(id)
                    .is_some_and(|m| m.epoch == *epoch && m.is_live_in_sync())
            })
        };
        match (persisted, survived) {
            (Ok(()), true) => Ok(()),
            (Err(e), _) if first_err.is_none() => Err(e),
            _ => Err(first_err.map_or_else(|| self.no_healthy(), MirrorError::Block)),
        }
    }

    /// Reads from the healthy replicas round-robin, retrying on another after an error.
    async fn read_data(self: &Arc<Self>, off: u64, len: u64) -> Result<IoBuf, MirrorError> {
        let mut last_err = None;
        for _ in 0..=MAX_MEMBERS {
            let pick = {
                let st = self.lock();
                self.check_open(&st)?;
                let mut cands: Vec<Target> = st
                    .members
                    .iter()
                    .filter(|m| m.is_readable())
                    .filter_map(Target::of)
                    .collect();
                if cands.is_empty() {
                    // Only replicas being resynced after an unclean shutdown are left: they
                    // hold every acknowledged write, so they may serve.
                    cands = st
                        .members
                        .iter()
                        .filter(|m| m.is_resyncing())
                        .filter_map(Target::of)
                        .collect();
                }
                if cands.is_empty() {
                    None
                } else {
                    let i = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
                    cands.into_iter().nth(i)
                }
            };
            let Some(t) = pick else { break };
            match replica::read_data(&*t.dev, off, len, self.opts.io_timeout).await {
                Ok(buf) => return Ok(buf),
                Err(e) => {
                    warn!(mirror = %self.id_str, replica = %format_id(&t.id), error = %e, "read failed; retrying on another replica");
                    self.fault(&t.id, t.epoch, &format!("read failed: {e}"));
                    let want = self.lock().version;
                    // Best effort: a failed persist only means no replica is left, which the
                    // next iteration reports.
                    let _ = self.persist_to(want).await;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.map_or_else(|| self.no_healthy(), MirrorError::Block))
    }

    /// Flushes every write target.
    async fn flush_all(self: &Arc<Self>) -> Result<(), MirrorError> {
        let targets: Vec<Target> = {
            let st = self.lock();
            st.members
                .iter()
                .filter(|m| m.is_write_target())
                .filter_map(Target::of)
                .collect()
        };
        if !targets.iter().any(|t| t.in_sync) {
            return Err(self.no_healthy());
        }
        let timeout = self.opts.io_timeout;
        let flush_id = self.lock().begin_flush();
        let results = join_all(targets.iter().map(|t| replica::flush(&*t.dev, timeout))).await;
        let all_ok = results.iter().all(Result::is_ok);
        // On failure the snapshot stays in `flushing` until the faults are recorded, so the
        // faulted replicas' unflushed regions become dirty.
        let outcome = self.settle(&targets, results, None).await;
        self.lock().end_flush(flush_id, all_ok);
        outcome
    }

    /// Checks that a replica device can hold this mirror.
    pub(crate) fn check_device(
        &self,
        desc: &str,
        dev: &dyn BlockDevice,
    ) -> Result<(), MirrorError> {
        check_geometry(&self.geometry(), desc, dev)
    }

    pub(crate) fn status(&self) -> MirrorStatus {
        let st = self.lock();
        MirrorStatus {
            mirror_id: self.id,
            generation: st.generation,
            size: self.data_bytes(),
            block_size: self.block_size,
            region_size: self.region_size,
            dirty_regions: st.dirty.count(),
            bitmap_base: st.tracking,
            replicas: st
                .members
                .iter()
                .map(|m| ReplicaStatus {
                    id: m.id,
                    description: m.description.clone(),
                    state: m.state,
                    in_sync: m.in_sync,
                    rebuild: m.rebuild.as_ref().map(|t| t.progress()),
                    last_rebuild: m.last_rebuild.clone(),
                    last_error: m.last_error.clone(),
                })
                .collect(),
            rebuilt_bytes_total: self.rebuilt_bytes.load(Ordering::Relaxed),
            rebuilds_completed: st.rebuilds_completed,
        }
    }

    fn stop_tasks(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
    }
}

/// Checks that `dev` can be a replica of a mirror with geometry `geo`.
pub(crate) fn check_geometry(
    geo: &Geometry,
    desc: &str,
    dev: &dyn BlockDevice,
) -> Result<(), MirrorError> {
    let bs = dev.block_size();
    if bs > geo.block_size || !geo.block_size.is_multiple_of(bs) {
        return Err(MirrorError::BlockSize {
            replica: desc.to_string(),
            replica_bs: bs,
            mirror_bs: geo.block_size,
        });
    }
    let need = RESERVE_BYTES + geo.data_bytes;
    if dev.size_bytes() < need {
        return Err(MirrorError::TooSmall {
            replica: desc.to_string(),
            size: dev.size_bytes(),
            need,
        });
    }
    Ok(())
}

/// A mirrored volume: a [`BlockDevice`] over 1..N replica devices.
///
/// Built by [`Mirror::create`] (new volume) or [`Mirror::assemble`] (existing volume, from the
/// replicas' labels). [`Mirror::close`] shuts it down cleanly; dropping it without `close`
/// behaves like a crash of the mirror node (background tasks stop, labels stay "unclean").
pub struct Mirror {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("id", &self.inner.id_str)
            .field("size", &self.inner.data_bytes())
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// The mirror UUID.
    pub fn id(&self) -> MirrorId {
        self.inner.id
    }

    /// A snapshot of the mirror's state, replicas and rebuild progress.
    pub fn status(&self) -> MirrorStatus {
        self.inner.status()
    }

    /// Shuts the mirror down cleanly: stops rebuilds and reconnects, waits for in-flight
    /// writes, flushes every replica and marks the labels clean. Later I/O fails.
    pub async fn close(&self) -> Result<(), MirrorError> {
        let inner = &self.inner;
        inner.stop_tasks();
        {
            let mut st = inner.lock();
            inner.check_open(&st)?;
            st.closed = true;
        }
        // Wait for in-flight mutations (they hold the shared side of their stripes).
        let _all = inner.locks.exclusive_all().await;
        let flushed = inner.flush_all().await;
        let want = {
            let mut st = inner.lock();
            st.clean = flushed.is_ok();
            st.changed();
            st.version
        };
        let persisted = inner.persist_to(want).await;
        info!(mirror = %inner.id_str, clean = flushed.is_ok() && persisted.is_ok(), "mirror closed");
        flushed?;
        persisted
    }

    /// Adds a new replica: it is connected, listed as an out-of-sync member (new generation)
    /// and fully rebuilt in the background, then joins the in-sync set.
    pub async fn add_replica(
        &self,
        connector: Arc<dyn ReplicaConnector>,
    ) -> Result<(), MirrorError> {
        let inner = &self.inner;
        let id = connector.replica_id();
        let desc = connector.describe();
        {
            let st = inner.lock();
            inner.check_open(&st)?;
            if st.member(&id).is_some() {
                return Err(MirrorError::DuplicateReplica(format_id(&id)));
            }
            if st.members.len() >= MAX_MEMBERS {
                return Err(MirrorError::TooManyReplicas(st.members.len() + 1));
            }
        }
        let dev = replica::connect(&*connector, inner.opts.connect_timeout)
            .await
            .map_err(|source| MirrorError::Connect {
                replica: desc.clone(),
                source,
            })?;
        inner.check_device(&desc, &*dev)?;
        let (label_seq, _) = super::assemble::probe_label(&inner.id, &id, &desc, &*dev).await?;
        let tracker = Arc::new(RebuildTracker::new(RebuildKind::Full));
        let (epoch, want) = {
            let mut st = inner.lock();
            if st.member(&id).is_some() {
                return Err(MirrorError::DuplicateReplica(format_id(&id)));
            }
            st.members.push(Member {
                id,
                connector,
                description: desc.clone(),
                dev: Some(dev),
                state: ReplicaState::Rebuilding,
                in_sync: false,
                last_in_sync_gen: 0,
                epoch: 1,
                label_seq,
                rebuild: Some(Arc::clone(&tracker)),
                last_rebuild: None,
                last_error: None,
            });
            st.start_tracking();
            st.bump();
            (1, st.version)
        };
        info!(mirror = %inner.id_str, replica = %format_id(&id), %desc, "replica added; full rebuild");
        inner.persist_to(want).await?;
        inner.spawn_rebuild(id, epoch, tracker);
        Ok(())
    }

    /// Removes replica `id` from the mirror (new generation). Refused for the last live
    /// in-sync replica. Its device and label are left as they are.
    pub async fn remove_replica(&self, id: ReplicaId) -> Result<(), MirrorError> {
        let inner = &self.inner;
        let want = {
            let mut st = inner.lock();
            inner.check_open(&st)?;
            let m = st
                .member(&id)
                .ok_or_else(|| MirrorError::UnknownReplica(format_id(&id)))?;
            let others = st
                .members
                .iter()
                .filter(|o| o.id != id && o.is_live_in_sync())
                .count();
            if m.in_sync && others == 0 {
                return Err(MirrorError::LastReplica(format_id(&id)));
            }
            st.members.retain(|m| m.id != id);
            st.bump();
            st.end_tracking_if_synced();
            st.version
        };
        info!(mirror = %inner.id_str, replica = %format_id(&id), "replica removed");
        inner.persist_to(want).await
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // Like a crash: background work stops, nothing more is written.
        self.inner.stop_tasks();
    }
}

#[async_trait]
impl BlockDevice for Mirror {
    fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.inner.data_bytes() / u64::from(self.inner.block_size)
    }

    fn describe(&self) -> String {
        let st = self.inner.lock();
        format!(
            "mirror {} ({} replicas, generation {})",
            self.inner.id_str,
            st.members.len(),
            st.generation
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        check_range(lba, u64::from(nblocks), self.num_blocks())?;
        let bs = u64::from(self.block_size());
        if nblocks == 0 {
            return Ok(IoBuf::zeroed(0));
        }
        Ok(self
            .inner
            .read_data(lba * bs, u64::from(nblocks) * bs)
            .await?)
    }

    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        let n = blocks_in("write buffer length", data.len(), self.block_size())?;
        check_range(lba, n, self.num_blocks())?;
        if n == 0 {
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        self.spawn_mutation(lba * bs, n * bs, Mutation::Write { data, fua })
            .await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        {
            let st = self.inner.lock();
            self.inner.check_open(&st)?;
        }
        Ok(self.inner.flush_all().await?)
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError> {
        check_range(lba, nblocks, self.num_blocks())?;
        if nblocks == 0 {
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        self.spawn_mutation(
            lba * bs,
            nblocks * bs,
            Mutation::Zero(ZeroKind::WriteZeroes { deallocate }),
        )
        .await
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        check_range(lba, nblocks, self.num_blocks())?;
        if nblocks == 0 {
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        self.spawn_mutation(lba * bs, nblocks * bs, Mutation::Zero(ZeroKind::Deallocate))
            .await
    }
}

impl Mirror {
    /// Runs a mutation as its own task, so that a caller dropping the future cannot leave it
    /// applied to some replicas and not others without the mirror noticing.
    async fn spawn_mutation(&self, off: u64, len: u64, op: Mutation) -> Result<(), BlockError> {
        let inner = Arc::clone(&self.inner);
        match tokio::spawn(inner.mutate(off, len, op)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(BlockError::Io {
                op: "mirror write",
                source: std::io::Error::other(format!("mirror write task failed: {e}")),
            }),
        }
    }
}
