//! The mirror's in-memory state (members, generation, dirty bitmap, persistence versions) and
//! the state transitions that must happen atomically: faulting a replica, joining a rebuilt
//! one, starting and ending dirty tracking, and building the label every in-sync replica gets.
//!
//! Every change that must reach the labels before a dependent write is acknowledged bumps
//! [`State::version`]; the label writer records the version it made durable in
//! [`State::persisted_version`]. A write is dispatched only once the version it observed is
//! persisted.

use std::sync::Arc;

use tracing::{info, warn};

use crate::BlockDevice;

use super::bitmap::Bitmap;
use super::label::{Geometry, Label, MemberEntry, MirrorId, ReplicaId, format_id};
use super::replica::ReplicaConnector;
use super::status::{RebuildProgress, RebuildTracker, ReplicaState};

/// One member replica.
pub(crate) struct Member {
    pub id: ReplicaId,
    pub connector: Arc<dyn ReplicaConnector>,
    pub description: String,
    /// The open device while connected.
    pub dev: Option<Arc<dyn BlockDevice>>,
    pub state: ReplicaState,
    /// Listed in sync in the labels.
    pub in_sync: bool,
    /// Last generation at which it was in sync (0: never); meaningful when `!in_sync`.
    pub last_in_sync_gen: u64,
    /// Bumped on every transition that invalidates work started before it (fault,
    /// readmission, removal); I/O results and tasks carry the epoch they started under.
    pub epoch: u64,
    /// Sequence number of the last label written to (or read from) this replica.
    pub label_seq: u64,
    pub rebuild: Option<Arc<RebuildTracker>>,
    pub last_rebuild: Option<RebuildProgress>,
    pub last_error: Option<String>,
}

impl Member {
    /// Receives host writes and flushes: healthy, or being rebuilt.
    pub(crate) fn is_write_target(&self) -> bool {
        self.dev.is_some() && matches!(self.state, ReplicaState::Healthy | ReplicaState::Rebuilding)
    }

    /// In sync and reachable: gets labels, counts for acknowledging writes.
    pub(crate) fn is_live_in_sync(&self) -> bool {
        self.in_sync && self.is_write_target()
    }

    /// Serves reads and rebuild copies.
    pub(crate) fn is_readable(&self) -> bool {
        self.in_sync && self.dev.is_some() && self.state == ReplicaState::Healthy
    }

    /// An in-sync replica being resynced: serves reads only when no healthy one is left.
    pub(crate) fn is_resyncing(&self) -> bool {
        self.in_sync && self.dev.is_some() && self.state == ReplicaState::Rebuilding
    }
}

/// A replica picked for one I/O.
#[derive(Clone)]
pub(crate) struct Target {
    pub id: ReplicaId,
    pub epoch: u64,
    pub dev: Arc<dyn BlockDevice>,
    pub in_sync: bool,
}

impl Target {
    pub(crate) fn of(m: &Member) -> Option<Target> {
        Some(Target {
            id: m.id,
            epoch: m.epoch,
            dev: m.dev.clone()?,
            in_sync: m.in_sync,
        })
    }
}

/// The mutable state of a mirror, behind one (synchronous, never held across `.await`) lock.
pub(crate) struct State {
    pub mirror_id: MirrorId,
    pub geometry: Geometry,
    pub generation: u64,
    pub members: Vec<Member>,
    /// `Some(base)` while the bitmap tracks writes since generation `base` (whenever some
    /// member is out of sync).
    pub tracking: Option<u64>,
    /// Dirty regions (in memory; a superset of what is persisted).
    pub dirty: Bitmap,
    /// The dirty bitmap as last persisted.
    pub persisted_dirty: Bitmap,
    /// Regions written since the last flush that completed on every write target. A replica
    /// may lose such writes if it crashes (its own cache, or a thin volume's unflushed
    /// metadata), so when one faults they become dirty too.
    pub unflushed: Bitmap,
    /// Snapshots of `unflushed` taken by flushes still in progress.
    pub flushing: Vec<(u64, Bitmap)>,
    pub next_flush: u64,
    pub clean: bool,
    pub closed: bool,
    pub version: u64,
    pub persisted_version: u64,
    pub rebuilds_completed: u64,
}

impl State {
    pub(crate) fn member(&self, id: &ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| &m.id == id)
    }

    pub(crate) fn member_mut(&mut self, id: &ReplicaId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &m.id == id)
    }

    /// The member with `id` if it is still at `epoch`.
    pub(crate) fn member_at(&mut self, id: &ReplicaId, epoch: u64) -> Option<&mut Member> {
        self.member_mut(id).filter(|m| m.epoch == epoch)
    }

    /// Records a change that must be persisted.
    pub(crate) fn changed(&mut self) {
        self.version += 1;
    }

    /// Starts a new generation.
    pub(crate) fn bump(&mut self) {
        self.generation += 1;
        self.changed();
    }

    /// Starts dirty tracking (from the current generation) unless it is already on.
    pub(crate) fn start_tracking(&mut self) {
        if self.tracking.is_none() {
            self.tracking = Some(self.generation);
            self.changed();
        }
    }

    /// Ends dirty tracking and clears the bitmap once every member is in sync.
    pub(crate) fn end_tracking_if_synced(&mut self) {
        let dirty = self.tracking.is_some() || self.dirty.count() > 0;
        if dirty && self.members.iter().all(|m| m.in_sync) {
            self.tracking = None;
            self.dirty.clear();
            self.changed();
        }
    }

    /// Records that regions `[first, end)` were written and are not yet covered by a flush.
    pub(crate) fn mark_unflushed(&mut self, first: u64, end: u64) {
        self.unflushed.set_range(first, end);
    }

    /// A flush starts: what it will cover moves to a snapshot. Returns the snapshot's id.
    pub(crate) fn begin_flush(&mut self) -> u64 {
        let id = self.next_flush;
        self.next_flush += 1;
        let covered = std::mem::replace(&mut self.unflushed, Bitmap::new(self.geometry.nregions));
        self.flushing.push((id, covered));
        id
    }

    /// A flush ended: on success its regions are durable everywhere it reached; otherwise
    /// they are still unflushed.
    pub(crate) fn end_flush(&mut self, id: u64, ok: bool) {
        if let Some(i) = self.flushing.iter().position(|(f, _)| *f == id) {
            let (_, covered) = self.flushing.swap_remove(i);
            if !ok {
                self.unflushed.union_with(&covered);
            }
        }
    }

    /// Marks regions `[first, end)` dirty; returns the version the caller must see persisted.
    pub(crate) fn mark_dirty(&mut self, first: u64, end: u64) {
        if self.dirty.set_range(first, end) {
            self.changed();
        }
    }

    /// Faults the members in `failed` (id, epoch at which the I/O started, error) that are
    /// still at that epoch: drops them from I/O and, if an in-sync replica outside this group
    /// is alive, drops the in-sync ones from the in-sync set in a new generation (starting
    /// dirty tracking). When a whole group of in-sync replicas fails together and none is
    /// left, they all stay listed in sync (the mirror is offline, nothing can be persisted
    /// anyway, and whichever returns first carries on). Returns the members faulted now with
    /// their new epochs, for the caller to schedule reconnects.
    pub(crate) fn mark_faulted(
        &mut self,
        failed: &[(ReplicaId, u64, String)],
    ) -> Vec<(ReplicaId, u64)> {
        let survivors = self
            .members
            .iter()
            .filter(|m| m.is_live_in_sync() && !failed.iter().any(|(id, _, _)| id == &m.id))
            .count();
        let mirror = format_id(&self.mirror_id);
        let mut out = Vec::new();
        for (id, epoch, why) in failed {
            let generation = self.generation;
            let Some(m) = self.member_at(id, *epoch) else {
                continue;
            };
            if !matches!(
                m.state,
                ReplicaState::Healthy | ReplicaState::Rebuilding | ReplicaState::Connecting
            ) {
                continue;
            }
            m.state = ReplicaState::Faulted;
            m.dev = None;
            m.epoch += 1;
            if let Some(t) = m.rebuild.take() {
                m.last_rebuild = Some(t.progress());
            }
            m.last_error = Some(why.clone());
            out.push((*id, m.epoch));
            let was_in_sync = m.in_sync;
            let desc = m.description.clone();
            if was_in_sync && survivors > 0 {
                m.in_sync = false;
                m.last_in_sync_gen = generation;
                // Writes it acknowledged since its last flush may be gone with it.
                self.dirty.union_with(&self.unflushed);
                for (_, f) in &self.flushing {
                    self.dirty.union_with(f);
                }
                self.start_tracking();
                self.bump();
                warn!(
                    mirror = %mirror, replica = %format_id(id), %desc, error = %why,
                    generation = self.generation,
                    "replica faulted and dropped from the in-sync set"
                );
            } else if was_in_sync {
                warn!(
                    mirror = %mirror, replica = %format_id(id), %desc, error = %why,
                    "in-sync replica faulted with no other left: mirror offline until one returns"
                );
            } else {
                info!(mirror = %mirror, replica = %format_id(id), %desc, error = %why, "out-of-sync replica faulted");
            }
        }
        out
    }

    /// Drops every in-sync member that is not live from the in-sync set (new generation),
    /// used when an offline mirror gets a replica back.
    pub(crate) fn drop_dead_in_sync(&mut self) {
        let generation = self.generation;
        let mut dropped = false;
        for m in &mut self.members {
            if m.in_sync && !m.is_live_in_sync() {
                m.in_sync = false;
                m.last_in_sync_gen = generation;
                dropped = true;
            }
        }
        if dropped {
            self.start_tracking();
            self.bump();
        }
    }

    /// The label for member `m` with sequence number `seq`, from the current state.
    pub(crate) fn label_for(&self, replica_id: ReplicaId, seq: u64) -> Label {
        Label {
            seq,
            mirror_id: self.mirror_id,
            replica_id,
            generation: self.generation,
            geometry: self.geometry,
            clean: self.clean,
            bitmap_base: self.tracking,
            members: self
                .members
                .iter()
                .map(|m| MemberEntry {
                    id: m.id,
                    in_sync: m.in_sync,
                    last_in_sync_gen: if m.in_sync {
                        self.generation
                    } else {
                        m.last_in_sync_gen
                    },
                })
                .collect(),
            bitmap: self.dirty.clone(),
        }
    }
}
