//! [`Raid0Pool`]: a [`BlockDevice`] striped over the data areas of its members, created on
//! blank devices or imported from devices that carry its labels.
//!
//! Creating writes a label to every member; importing reads them back and refuses (writing
//! nothing) unless the devices are exactly the pool's members, in order, at one label
//! generation, and still large enough. I/O splits a pool range into at most one contiguous
//! sub-I/O per member (see `map.rs`) and runs them concurrently.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use futures::future::join_all;

use crate::error::{blocks_in, check_range};
use crate::{BlockDevice, BlockError, IoBuf};

use super::error::PoolError;
use super::label::{
    DATA_OFFSET, MAX_MEMBERS, MemberLabel, format_uuid, label_region, validate_pool_name,
    validate_stripe_size,
};
use super::map::{Geometry, Span};
use super::store::{
    LabelCopies, LabelCopy, WriteLabelError, read_labels, wipe_labels, write_label,
};

/// A RAID0 (striped) pool over member block devices.
///
/// Pool block `lba` lives in stripe `lba / stripe_blocks`; stripe `s` is stored on member
/// `s % N` at that member's data-area stripe `s / N`. The pool's capacity is
/// `N * data_size` bytes, where `data_size` (the same on every member) is the smallest
/// member's usable space rounded down to whole stripes.
pub struct Raid0Pool {
    name: String,
    uuid: [u8; 16],
    members: Vec<Arc<dyn BlockDevice>>,
    member_uuids: Vec<[u8; 16]>,
    block_size: u32,
    stripe_size: u32,
    data_size: u64,
    geometry: Geometry,
    /// Newest label generation on the members.
    generation: AtomicU64,
    /// Some label copy is damaged, stale or not where the device's size says it should be.
    needs_repair: AtomicBool,
    /// Serialises label rewrites.
    relabel: tokio::sync::Mutex<()>,
}

impl Raid0Pool {
    /// Creates a new pool named `name` with UUID `uuid` over `members` (in stripe order) and
    /// writes its labels (flushed) to every member.
    ///
    /// Requirements: 1..=64 members, all with the same block size; `stripe_size` a power of
    /// two, at least the block size and at most 16 MiB ([`super::DEFAULT_STRIPE_SIZE`] is
    /// 64 KiB); every member larger than the 1 MiB data offset plus one stripe plus the
    /// backup label. A member that already carries a Ferrite label (valid or damaged, of any
    /// pool) is refused: `create` never overwrites a pool member. The data area is not
    /// zeroed.
    pub async fn create(
        name: &str,
        uuid: [u8; 16],
        members: Vec<Arc<dyn BlockDevice>>,
        stripe_size: u32,
    ) -> Result<Raid0Pool, PoolError> {
        validate_pool_name(name).map_err(|reason| PoolError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        if uuid == [0; 16] {
            return Err(PoolError::NilUuid);
        }
        check_member_count(members.len())?;
        for (second, m) in members.iter().enumerate() {
            if let Some(first) = members[..second].iter().position(|o| Arc::ptr_eq(o, m)) {
                return Err(PoolError::DuplicateMember { first, second });
            }
        }
        let block_size = members[0].block_size();
        for (position, m) in members.iter().enumerate() {
            if m.block_size() != block_size {
                return Err(PoolError::BlockSizeMismatch {
                    position,
                    device: m.describe(),
                    block_size: m.block_size(),
                    expected: block_size,
                });
            }
        }
        validate_stripe_size(stripe_size, block_size).map_err(|reason| {
            PoolError::InvalidStripeSize {
                stripe_size,
                block_size,
                reason,
            }
        })?;
        let stripe = u64::from(stripe_size);
        let region = label_region(block_size);
        let min = DATA_OFFSET + stripe + region;
        let mut data_size = u64::MAX;
        for (position, m) in members.iter().enumerate() {
            let size = m.size_bytes();
            if size < min {
                return Err(PoolError::MemberTooSmall {
                    position,
                    device: m.describe(),
                    size,
                    min,
                });
            }
            data_size = data_size.min((size - DATA_OFFSET - region) / stripe * stripe);
        }

        let copies = read_all_labels(&members).await?;
        for (position, c) in copies.iter().enumerate() {
            if c.any_magic() {
                let existing = match c.best() {
                    Some(l) => format!(
                        "pool {:?} ({}), member index {}",
                        l.pool_name,
                        format_uuid(&l.pool_uuid),
                        l.member_index
                    ),
                    None => format!("damaged: {}", first_label_error(c)),
                };
                return Err(PoolError::AlreadyLabeled {
                    position,
                    device: members[position].describe(),
                    existing,
                });
            }
        }

        let member_uuids = fresh_uuids(&uuid, members.len());
        let template = MemberLabel {
            generation: 1,
            pool_uuid: uuid,
            pool_name: name.to_string(),
            member_uuid: member_uuids[0],
            member_index: 0,
            members: member_uuids.clone(),
            block_size,
            stripe_size,
            data_offset: DATA_OFFSET,
            data_size,
            member_size: 0,
        };
        let labels = labels_for(&template, &members, 1);
        let written = match write_all_labels(&members, &labels).await {
            Ok(()) => verify_labels(&members, &labels).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Undo: these devices carried no label before, so clearing ours loses nothing.
            tracing::warn!(pool = name, error = %e, "pool creation failed; clearing the labels written");
            let wipes = join_all(members.iter().map(|m| async move {
                wipe_labels(m.as_ref(), None).await?;
                m.flush().await
            }))
            .await;
            for (position, r) in wipes.into_iter().enumerate() {
                if let Err(we) = r {
                    tracing::error!(pool = name, position, error = %we, "could not clear a label after a failed create");
                }
            }
            return Err(e);
        }

        let pool = Raid0Pool::assemble(&template, members, 1, false);
        tracing::info!(pool = %pool.describe(), "created RAID0 pool");
        Ok(pool)
    }

    /// Imports an existing pool from `members`, given in member-index order.
    ///
    /// Reads both label copies of every device and writes nothing. Refuses, naming the
    /// device, if a device has no label ([`PoolError::NotAMember`]) or only damaged ones
    /// ([`PoolError::CorruptLabel`]), belongs to another pool ([`PoolError::ForeignMember`])
    /// or is not listed by this one ([`PoolError::UnknownMember`]), is given twice
    /// ([`PoolError::DuplicateMember`]); if members are missing or extra devices given
    /// ([`PoolError::MissingMembers`], [`PoolError::ExtraMembers`]); if a member missed a
    /// label rewrite ([`PoolError::StaleMember`]); if labels disagree
    /// ([`PoolError::InconsistentLabels`]); if the order is wrong
    /// ([`PoolError::MisorderedMembers`]); or if a device's block size changed or it shrank
    /// below its data area ([`PoolError::BlockSizeMismatch`], [`PoolError::MemberShrunk`]).
    ///
    /// A damaged or missing copy is tolerated when the other copy is valid, and a label
    /// rewrite that was interrupted part-way (some members one generation ahead in one copy
    /// only) imports at the newest generation every member still holds. Both are logged and
    /// reported by [`Raid0Pool::needs_label_repair`]; [`Raid0Pool::rewrite_labels`] repairs.
    pub async fn import(members: Vec<Arc<dyn BlockDevice>>) -> Result<Raid0Pool, PoolError> {
        check_member_count(members.len())?;
        let copies = read_all_labels(&members).await?;
        let best: Vec<Option<&MemberLabel>> = copies.iter().map(LabelCopies::best).collect();

        let Some(reference) = reference_label(&best) else {
            return Err(unlabeled_error(0, &members[0], &copies[0]));
        };
        let expected = reference.members.len();

        // Which pool member (index in the reference list) each device is, if any.
        let mut first_at: Vec<Option<usize>> = vec![None; expected];
        let fits: Vec<Fit> = best
            .iter()
            .enumerate()
            .map(|(pos, b)| match b {
                None => Fit::Unlabeled,
                Some(l) if l.pool_uuid != reference.pool_uuid => Fit::Foreign(l),
                Some(l) => match reference.members.iter().position(|u| *u == l.member_uuid) {
                    None => Fit::Unknown(l.member_uuid),
                    Some(idx) => match first_at[idx] {
                        Some(first) => Fit::Duplicate(first),
                        None => {
                            first_at[idx] = Some(pos);
                            Fit::Member
                        }
                    },
                },
            })
            .collect();

        if members.len() > expected {
            return Err(PoolError::ExtraMembers {
                pool_name: reference.pool_name.clone(),
                given: members.len(),
                expected,
                extra: (0..fits.len())
                    .filter(|&p| !matches!(fits[p], Fit::Member))
                    .collect(),
            });
        }
        for (position, fit) in fits.iter().enumerate() {
            match *fit {
                Fit::Member => {}
                Fit::Unlabeled => {
                    return Err(unlabeled_error(
                        position,
                        &members[position],
                        &copies[position],
                    ));
                }
                Fit::Foreign(l) => {
                    return Err(PoolError::ForeignMember {
                        position,
                        device: members[position].describe(),
                        found: pool_id(l),
                        expected: pool_id(reference),
                    });
                }
                Fit::Unknown(u) => {
                    return Err(PoolError::UnknownMember {
                        position,
                        member_uuid: format_uuid(&u),
                        pool_name: reference.pool_name.clone(),
                    });
                }
                Fit::Duplicate(first) => {
                    return Err(PoolError::DuplicateMember {
                        first,
                        second: position,
                    });
                }
            }
        }
        if members.len() < expected {
            return Err(PoolError::MissingMembers {
                pool_name: reference.pool_name.clone(),
                given: members.len(),
                expected,
                missing: (0..expected)
                    .filter(|&i| first_at[i].is_none())
                    // i < MAX_MEMBERS.
                    .map(|i| i as u32)
                    .collect(),
            });
        }

        // Every device is a distinct member of this pool. Pick the newest generation that
        // every member still holds a valid copy of.
        let newest = best
            .iter()
            .flatten()
            .map(|l| l.generation)
            .max()
            .unwrap_or(0);
        let mut candidates: Vec<u64> = copies
            .iter()
            .flat_map(|c| c.valid().map(|l| l.generation))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        let Some(generation) = candidates
            .into_iter()
            .find(|&g| copies.iter().all(|c| c.at_generation(g).is_some()))
        else {
            let (position, l) = best
                .iter()
                .enumerate()
                .filter_map(|(p, b)| b.map(|l| (p, l)))
                .find(|(_, l)| l.generation < newest)
                .unwrap_or((0, reference));
            return Err(PoolError::StaleMember {
                position,
                member_index: l.member_index,
                generation: l.generation,
                expected: newest,
            });
        };
        let labels: Vec<&MemberLabel> = copies
            .iter()
            .filter_map(|c| c.at_generation(generation))
            .collect();
        let first = labels[0];
        for (position, l) in labels.iter().enumerate() {
            let field = if l.pool_uuid != first.pool_uuid {
                Some("UUID")
            } else if l.pool_name != first.pool_name {
                Some("name")
            } else if l.members != first.members {
                Some("member list")
            } else if l.block_size != first.block_size {
                Some("block size")
            } else if l.stripe_size != first.stripe_size {
                Some("stripe size")
            } else if l.data_offset != first.data_offset {
                Some("data offset")
            } else if l.data_size != first.data_size {
                Some("data size")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(PoolError::InconsistentLabels { position, field });
            }
        }
        let found: Vec<u32> = labels.iter().map(|l| l.member_index).collect();
        if found
            .iter()
            .enumerate()
            .any(|(p, &i)| p as u64 != u64::from(i))
        {
            return Err(PoolError::MisorderedMembers { found });
        }
        let region = label_region(first.block_size);
        let required = first.data_offset + first.data_size + region;
        for (position, m) in members.iter().enumerate() {
            if m.block_size() != first.block_size {
                return Err(PoolError::BlockSizeMismatch {
                    position,
                    device: m.describe(),
                    block_size: m.block_size(),
                    expected: first.block_size,
                });
            }
            if m.size_bytes() < required {
                return Err(PoolError::MemberShrunk {
                    position,
                    device: m.describe(),
                    size: m.size_bytes(),
                    required,
                });
            }
        }

        // Accepted. Note (but do not fix: import writes nothing) any copy needing repair.
        let mut needs_repair = false;
        for (position, c) in copies.iter().enumerate() {
            let device = members[position].describe();
            if !c.both_at(newest) {
                needs_repair = true;
                let primary = describe_copy(&c.primary);
                let backup = describe_copy(&c.backup);
                tracing::warn!(
                    pool = %first.pool_name, position, %device, %primary, %backup,
                    generation, "member label copy damaged or stale; the pool needs a label rewrite"
                );
            }
            if labels[position].member_size != members[position].size_bytes() {
                needs_repair = true;
                tracing::warn!(
                    pool = %first.pool_name, position, %device,
                    labelled_size = labels[position].member_size,
                    size = members[position].size_bytes(),
                    "member size changed since labelling; the backup label is not at the end"
                );
            }
        }
        if generation != newest {
            tracing::warn!(
                pool = %first.pool_name, generation, newest,
                "an interrupted label rewrite was found; importing at the last complete generation"
            );
        }

        let pool = Raid0Pool::assemble(first, members, newest, needs_repair);
        tracing::info!(pool = %pool.describe(), generation, "imported RAID0 pool");
        Ok(pool)
    }

    /// Builds the pool object from a validated label (any member's).
    fn assemble(
        label: &MemberLabel,
        members: Vec<Arc<dyn BlockDevice>>,
        generation: u64,
        needs_repair: bool,
    ) -> Raid0Pool {
        let bs = u64::from(label.block_size);
        let geometry = Geometry {
            members: members.len() as u64,
            stripe_blocks: u64::from(label.stripe_size) / bs,
            data_offset_blocks: label.data_offset / bs,
            member_data_blocks: label.data_size / bs,
        };
        Raid0Pool {
            name: label.pool_name.clone(),
            uuid: label.pool_uuid,
            members,
            member_uuids: label.members.clone(),
            block_size: label.block_size,
            stripe_size: label.stripe_size,
            data_size: label.data_size,
            geometry,
            generation: AtomicU64::new(generation),
            needs_repair: AtomicBool::new(needs_repair),
            relabel: tokio::sync::Mutex::new(()),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The member devices in stripe order.
    pub fn members(&self) -> &[Arc<dyn BlockDevice>] {
        &self.members
    }

    /// The members' UUIDs in stripe order, as their labels record them.
    pub fn member_uuids(&self) -> &[[u8; 16]] {
        &self.member_uuids
    }

    /// Stripe size in bytes.
    pub fn stripe_size(&self) -> u32 {
        self.stripe_size
    }

    /// Bytes of data area used on each member (a multiple of the stripe size).
    pub fn data_size_per_member(&self) -> u64 {
        self.data_size
    }

    /// Pool capacity in bytes: members x data size per member.
    pub fn capacity_bytes(&self) -> u64 {
        self.members.len() as u64 * self.data_size
    }

    /// The newest label generation on the members.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether some member's label copy was found damaged, stale or misplaced at import;
    /// [`Raid0Pool::rewrite_labels`] repairs it.
    pub fn needs_label_repair(&self) -> bool {
        self.needs_repair.load(Ordering::Relaxed)
    }

    /// Rewrites both label copies on every member with the next generation (all primaries,
    /// flush, then all backups, flush), placing each backup at the member's current end.
    ///
    /// Repairs damaged or stale copies. A crash part-way leaves every member with at least
    /// one valid copy of the previous or the new generation, which [`Raid0Pool::import`]
    /// accepts.
    pub async fn rewrite_labels(&self) -> Result<(), PoolError> {
        let _guard = self.relabel.lock().await;
        let generation = self.generation() + 1;
        let template = self.template(generation);
        let labels = labels_for(&template, &self.members, generation);
        write_all_labels(&self.members, &labels).await?;
        self.generation.store(generation, Ordering::Relaxed);
        self.needs_repair.store(false, Ordering::Relaxed);
        tracing::info!(pool = %self.name, generation, "rewrote RAID0 pool labels");
        Ok(())
    }

    /// Destroys the pool: clears both label copies on every member (and flushes), so the
    /// devices can be used again. The data area is left as it is.
    pub async fn destroy(self) -> Result<(), PoolError> {
        let _guard = self.relabel.lock().await;
        let results = join_all(self.members.iter().map(|m| async move {
            // Also clear a backup left at the labelled end if the device has grown.
            let recorded = read_labels(m.as_ref())
                .await?
                .best()
                .map(|l| l.member_size)
                .filter(|&size| size != m.size_bytes());
            wipe_labels(m.as_ref(), recorded).await?;
            m.flush().await
        }))
        .await;
        for (position, r) in results.into_iter().enumerate() {
            r.map_err(|source| PoolError::Io {
                position,
                op: "label wipe",
                source,
            })?;
        }
        tracing::info!(pool = %self.name, uuid = %format_uuid(&self.uuid), "destroyed RAID0 pool");
        Ok(())
    }

    /// A label for this pool (member fields and size filled in by [`labels_for`]).
    fn template(&self, generation: u64) -> MemberLabel {
        MemberLabel {
            generation,
            pool_uuid: self.uuid,
            pool_name: self.name.clone(),
            member_uuid: self.member_uuids[0],
            member_index: 0,
            members: self.member_uuids.clone(),
            block_size: self.block_size,
            stripe_size: self.stripe_size,
            data_offset: self.geometry.data_offset_blocks * u64::from(self.block_size),
            data_size: self.data_size,
            member_size: 0,
        }
    }

    fn bytes(&self, blocks: u64) -> Result<usize, BlockError> {
        blocks
            .checked_mul(u64::from(self.block_size))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| BlockError::InvalidSpec(format!("I/O of {blocks} blocks is too large")))
    }

    /// `slot[member]` = position of that member's span in `spans` (members without a span
    /// get `usize::MAX` and never appear in the pieces of the same range).
    fn slots(&self, spans: &[Span]) -> Vec<usize> {
        let mut slot = vec![usize::MAX; self.members.len()];
        for (i, s) in spans.iter().enumerate() {
            slot[s.member] = i;
        }
        slot
    }

    /// Logs a member failure and passes the error on.
    fn member_failed(&self, member: usize, op: &'static str, e: BlockError) -> BlockError {
        tracing::warn!(pool = %self.name, member, op, error = %e, "RAID0 member I/O failed");
        e
    }

    /// Runs `op` on every member span of `[lba, lba + nblocks)` concurrently; returns the
    /// first error after all have finished.
    async fn for_each_span<'a, F, Fut>(
        &'a self,
        lba: u64,
        nblocks: u64,
        what: &'static str,
        op: F,
    ) -> Result<(), BlockError>
    where
        F: Fn(&'a Arc<dyn BlockDevice>, u64, u64) -> Fut,
        Fut: Future<Output = Result<(), BlockError>> + 'a,
    {
        check_range(lba, nblocks, self.num_blocks())?;
        let spans = self.geometry.spans(lba, nblocks);
        let results = join_all(
            spans
                .iter()
                .map(|s| op(&self.members[s.member], s.start, s.nblocks)),
        )
        .await;
        let mut first = Ok(());
        for (span, r) in spans.iter().zip(results) {
            if let Err(e) = r {
                let e = self.member_failed(span.member, what, e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// How a device given to `import` relates to the pool being imported.
enum Fit<'a> {
    /// A member, seen here for the first time.
    Member,
    /// No valid label.
    Unlabeled,
    /// Labelled for another pool.
    Foreign(&'a MemberLabel),
    /// Labelled for this pool but not in its member list.
    Unknown([u8; 16]),
    /// The same member as the device at this earlier position.
    Duplicate(usize),
}

fn check_member_count(count: usize) -> Result<(), PoolError> {
    match count {
        0 => Err(PoolError::NoMembers),
        n if n > MAX_MEMBERS => Err(PoolError::TooManyMembers { count: n }),
        _ => Ok(()),
    }
}

/// Reads both label copies of every member concurrently.
async fn read_all_labels(members: &[Arc<dyn BlockDevice>]) -> Result<Vec<LabelCopies>, PoolError> {
    join_all(members.iter().map(|m| read_labels(m.as_ref())))
        .await
        .into_iter()
        .enumerate()
        .map(|(position, r)| {
            r.map_err(|source| PoolError::Io {
                position,
                op: "label read",
                source,
            })
        })
        .collect()
}

/// The label that defines the pool being imported: the newest label of the pool UUID most
/// devices carry (on a tie, the pool of the earliest such device; among equally new labels,
/// the earliest device's).
fn reference_label<'a>(best: &[Option<&'a MemberLabel>]) -> Option<&'a MemberLabel> {
    let votes = |uuid: &[u8; 16]| {
        best.iter()
            .flatten()
            .filter(|l| l.pool_uuid == *uuid)
            .count()
    };
    let mut winner: Option<(&[u8; 16], usize)> = None;
    for l in best.iter().flatten() {
        let v = votes(&l.pool_uuid);
        if winner.is_none_or(|(_, wv)| v > wv) {
            winner = Some((&l.pool_uuid, v));
        }
    }
    let (uuid, _) = winner?;
    best.iter()
        .flatten()
        .filter(|l| l.pool_uuid == *uuid)
        // Newest generation; on a tie, the earliest device.
        .reduce(|a, b| if b.generation > a.generation { b } else { a })
        .copied()
}

/// The error for a device with no valid label: unlabelled, or labelled but damaged.
fn unlabeled_error(position: usize, dev: &Arc<dyn BlockDevice>, c: &LabelCopies) -> PoolError {
    match (&c.primary, &c.backup) {
        (Err(primary), Err(backup)) if c.any_magic() => PoolError::CorruptLabel {
            position,
            device: dev.describe(),
            primary: primary.clone(),
            backup: backup.clone(),
        },
        _ => PoolError::NotAMember {
            position,
            device: dev.describe(),
        },
    }
}

/// `"name" (uuid)` of the pool a label belongs to.
fn pool_id(l: &MemberLabel) -> String {
    format!("{:?} ({})", l.pool_name, format_uuid(&l.pool_uuid))
}

fn first_label_error(c: &LabelCopies) -> String {
    match (&c.primary, &c.backup) {
        (Err(e), _) if !matches!(e, super::label::LabelError::NotAMember) => {
            format!("primary: {e}")
        }
        (_, Err(e)) => format!("backup: {e}"),
        _ => "unknown".into(),
    }
}

fn describe_copy(c: &Result<MemberLabel, super::label::LabelError>) -> String {
    match c {
        Ok(l) => format!("generation {}", l.generation),
        Err(e) => e.to_string(),
    }
}

/// One label per member from `template`, with that member's UUID, index and current size.
fn labels_for(
    template: &MemberLabel,
    members: &[Arc<dyn BlockDevice>],
    generation: u64,
) -> Vec<MemberLabel> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberLabel {
            generation,
            member_uuid: template.members[i],
            // i < MAX_MEMBERS.
            member_index: i as u32,
            member_size: m.size_bytes(),
            ..template.clone()
        })
        .collect()
}

/// Writes all primaries, flushes, writes all backups, flushes; each phase concurrently
/// across members. The ordering keeps one complete generation readable on every member
/// whenever a crash interrupts it.
async fn write_all_labels(
    members: &[Arc<dyn BlockDevice>],
    labels: &[MemberLabel],
) -> Result<(), PoolError> {
    for copy in [LabelCopy::Primary, LabelCopy::Backup] {
        let writes = join_all(
            members
                .iter()
                .zip(labels)
                .map(|(m, l)| write_label(m.as_ref(), l, copy)),
        )
        .await;
        for (position, r) in writes.into_iter().enumerate() {
            r.map_err(|e| match e {
                WriteLabelError::Label(source) => PoolError::Label { position, source },
                WriteLabelError::Io(source) => PoolError::Io {
                    position,
                    op: "label write",
                    source,
                },
            })?;
        }
        flush_all(members).await?;
    }
    Ok(())
}

async fn flush_all(members: &[Arc<dyn BlockDevice>]) -> Result<(), PoolError> {
    let flushes = join_all(members.iter().map(|m| m.flush())).await;
    for (position, r) in flushes.into_iter().enumerate() {
        r.map_err(|source| PoolError::Io {
            position,
            op: "flush",
            source,
        })?;
    }
    Ok(())
}

/// Reads back the labels just written and checks every member holds its own; two handles
/// that share storage show up here as one member reading the other's label.
async fn verify_labels(
    members: &[Arc<dyn BlockDevice>],
    labels: &[MemberLabel],
) -> Result<(), PoolError> {
    let copies = read_all_labels(members).await?;
    for (position, (c, want)) in copies.iter().zip(labels).enumerate() {
        for got in [&c.primary, &c.backup] {
            match got {
                Ok(l) if l == want => {}
                Ok(l) if l.pool_uuid == want.pool_uuid && l.member_index != want.member_index => {
                    let other = l.member_index as usize;
                    return Err(PoolError::DuplicateMember {
                        first: other.min(position),
                        second: other.max(position),
                    });
                }
                other => {
                    let found = describe_copy(other);
                    return Err(PoolError::Io {
                        position,
                        op: "label verify",
                        source: BlockError::Io {
                            op: "label read-back",
                            source: io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("label read back differs from the label written ({found})"),
                            ),
                        },
                    });
                }
            }
        }
    }
    Ok(())
}

/// `count` distinct random (version 4) member UUIDs. Randomness comes from the standard
/// library's per-process random hash keys mixed with the pool UUID, the time and a counter:
/// member UUIDs need to be unique, not secret.
fn fresh_uuids(pool_uuid: &[u8; 16], count: usize) -> Vec<[u8; 16]> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out: Vec<[u8; 16]> = Vec::with_capacity(count);
    let mut counter = 0u64;
    while out.len() < count {
        let mut u = [0u8; 16];
        for half in u.chunks_mut(8) {
            let mut h = RandomState::new().build_hasher();
            h.write(pool_uuid);
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_u64(counter);
            counter += 1;
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        if !out.contains(&u) && u != *pool_uuid {
            out.push(u);
        }
    }
    out
}

impl std::fmt::Debug for Raid0Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raid0Pool")
            .field("name", &self.name)
            .field("uuid", &format_uuid(&self.uuid))
            .field("members", &self.members.len())
            .field("stripe_size", &self.stripe_size)
            .field("block_size", &self.block_size)
            .field("capacity_bytes", &self.capacity_bytes())
            .field("generation", &self.generation())
            .finish()
    }
}

#[async_trait]
impl BlockDevice for Raid0Pool {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.geometry.num_blocks()
    }

    fn volatile_cache(&self) -> bool {
        self.members.iter().any(|m| m.volatile_cache())
    }

    fn describe(&self) -> String {
        format!(
            "raid0 pool {} ({}, {} member(s), {} KiB stripes, {} bytes)",
            self.name,
            format_uuid(&self.uuid),
            self.members.len(),
            self.stripe_size / 1024,
            self.capacity_bytes()
        )
    }

    async fn read(&self, lba: u64, nblocks: u32) -> Result<IoBuf, BlockError> {
        let n = u64::from(nblocks);
        check_range(lba, n, self.num_blocks())?;
        if nblocks == 0 {
            return Ok(IoBuf::zeroed(0));
        }
        let spans = self.geometry.spans(lba, n);
        if let [s] = spans[..] {
            // One member: its range is the pool range, no reassembly needed. Span lengths
            // never exceed the request, so they fit in u32.
            return self.members[s.member]
                .read(s.start, s.nblocks as u32)
                .await
                .map_err(|e| self.member_failed(s.member, "read", e));
        }
        let results = join_all(
            spans
                .iter()
                .map(|s| self.members[s.member].read(s.start, s.nblocks as u32)),
        )
        .await;
        let mut bufs = Vec::with_capacity(spans.len());
        let mut first_err = None;
        for (s, r) in spans.iter().zip(results) {
            let want = self.bytes(s.nblocks)?;
            match r {
                Ok(buf) if buf.len() == want => bufs.push(buf),
                Ok(buf) => {
                    let e = BlockError::Io {
                        op: "raid0 member read",
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("member returned {} bytes, expected {want}", buf.len()),
                        ),
                    };
                    first_err.get_or_insert(self.member_failed(s.member, "read", e));
                }
                Err(e) => {
                    let e = self.member_failed(s.member, "read", e);
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let slot = self.slots(&spans);
        let mut out = IoBuf::zeroed(self.bytes(n)?);
        for p in self.geometry.pieces(lba, n) {
            let src = &bufs[slot[p.member]];
            let dst_at = self.bytes(p.pool_offset)?;
            let src_at = self.bytes(p.member_offset)?;
            let len = self.bytes(p.nblocks)?;
            out[dst_at..dst_at + len].copy_from_slice(&src[src_at..src_at + len]);
        }
        Ok(out)
    }

    async fn write(&self, lba: u64, data: IoBuf, fua: bool) -> Result<(), BlockError> {
        let n = blocks_in("write buffer length", data.len(), self.block_size)?;
        check_range(lba, n, self.num_blocks())?;
        if n == 0 {
            return Ok(());
        }
        let spans = self.geometry.spans(lba, n);
        if let [s] = spans[..] {
            return self.members[s.member]
                .write(s.start, data, fua)
                .await
                .map_err(|e| self.member_failed(s.member, "write", e));
        }
        let mut bufs = Vec::with_capacity(spans.len());
        for s in &spans {
            bufs.push(IoBuf::zeroed(self.bytes(s.nblocks)?));
        }
        let slot = self.slots(&spans);
        for p in self.geometry.pieces(lba, n) {
            let dst = &mut bufs[slot[p.member]];
            let src_at = self.bytes(p.pool_offset)?;
            let dst_at = self.bytes(p.member_offset)?;
            let len = self.bytes(p.nblocks)?;
            dst[dst_at..dst_at + len].copy_from_slice(&data[src_at..src_at + len]);
        }
        drop(data);
        let results = join_all(
            spans
                .iter()
                .zip(bufs)
                .map(|(s, buf)| self.members[s.member].write(s.start, buf, fua)),
        )
        .await;
        let mut first = Ok(());
        for (s, r) in spans.iter().zip(results) {
            if let Err(e) = r {
                let e = self.member_failed(s.member, "write", e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    async fn flush(&self) -> Result<(), BlockError> {
        let results = join_all(self.members.iter().map(|m| m.flush())).await;
        let mut first = Ok(());
        for (member, r) in results.into_iter().enumerate() {
            if let Err(e) = r {
                let e = self.member_failed(member, "flush", e);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    async fn write_zeroes(
        &self,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), BlockError> {
        self.for_each_span(lba, nblocks, "write zeroes", |m, start, n| {
            m.write_zeroes(start, n, deallocate)
        })
        .await
    }

    async fn deallocate(&self, lba: u64, nblocks: u64) -> Result<(), BlockError> {
        self.for_each_span(lba, nblocks, "deallocate", |m, start, n| {
            m.deallocate(start, n)
        })
        .await
    }
}
