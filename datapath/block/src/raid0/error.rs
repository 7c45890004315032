//! [`PoolError`]: why a RAID0 pool could not be created, imported or relabelled.
//!
//! Every refusal names the member by its position in the list the caller gave (0-based) and,
//! where known, the device, so an operator can tell which disk is wrong and why. A
//! `PoolError` converts into a [`BlockError`] (`?` works in code that returns `BlockError`).

use crate::BlockError;

use super::label::{LabelError, MAX_MEMBERS};

/// Everything that can go wrong creating, importing or relabelling a RAID0 pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool name is not 1..=63 characters of `[a-z0-9-]`.
    #[error("invalid pool name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The stripe size is unusable with the members' block size.
    #[error("invalid stripe size {stripe_size} for {block_size}-byte blocks: {reason}")]
    InvalidStripeSize {
        /// The rejected stripe size in bytes.
        stripe_size: u32,
        /// The members' block size.
        block_size: u32,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The nil UUID was given as the pool UUID.
    #[error("the pool UUID must not be the nil UUID")]
    NilUuid,

    /// No member devices were given.
    #[error("a pool needs at least one member device")]
    NoMembers,

    /// More members than a label can list.
    #[error("{count} member devices given; a pool has at most {MAX_MEMBERS}")]
    TooManyMembers {
        /// Number of devices given.
        count: usize,
    },

    /// A member's block size differs from the pool's.
    #[error(
        "member at position {position} ({device}) has {block_size}-byte blocks, the pool uses {expected}-byte blocks"
    )]
    BlockSizeMismatch {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// The member's block size.
        block_size: u32,
        /// The pool's block size.
        expected: u32,
    },

    /// A member cannot hold the labels, the data offset and at least one stripe.
    #[error(
        "member at position {position} ({device}) is too small: {size} bytes, a pool member needs at least {min}"
    )]
    MemberTooSmall {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// The member's size in bytes.
        size: u64,
        /// The smallest usable size in bytes.
        min: u64,
    },

    /// `create` found a Ferrite label (intact or damaged) on a device: it never overwrites
    /// an existing pool member.
    #[error(
        "member at position {position} ({device}) already carries a Ferrite pool label ({existing}); refusing to overwrite it"
    )]
    AlreadyLabeled {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// The pool the label names, or why it could not be read.
        existing: String,
    },

    /// The same device was given twice (the same handle, or two handles that turn out to
    /// share their storage).
    #[error("members at positions {first} and {second} are the same device")]
    DuplicateMember {
        /// Position of the first occurrence.
        first: usize,
        /// Position of the repeat.
        second: usize,
    },

    /// `import` found no label magic on a device.
    #[error("member at position {position} ({device}) is not a Ferrite pool member (no label)")]
    NotAMember {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
    },

    /// Both label copies of a device carry the magic but neither is valid.
    #[error(
        "member at position {position} ({device}) has no valid Ferrite label: primary: {primary}; backup: {backup}"
    )]
    CorruptLabel {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// Why the primary copy was rejected.
        primary: LabelError,
        /// Why the backup copy was rejected.
        backup: LabelError,
    },

    /// A device belongs to a different pool than the others.
    #[error(
        "member at position {position} ({device}) belongs to pool {found}, not to pool {expected}"
    )]
    ForeignMember {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// The pool the device's label names: `"name" (uuid)`.
        found: String,
        /// The pool being imported: `"name" (uuid)`.
        expected: String,
    },

    /// A device labelled for this pool is not in the pool's member list (for example a
    /// leftover of an earlier pool with the same UUID).
    #[error(
        "member at position {position} has member UUID {member_uuid}, which pool {pool_name:?} does not list"
    )]
    UnknownMember {
        /// Position in the given member list.
        position: usize,
        /// The device's member UUID.
        member_uuid: String,
        /// Name of the pool being imported.
        pool_name: String,
    },

    /// Fewer devices than the pool has members.
    #[error(
        "pool {pool_name:?} has {expected} members but {given} were given; missing member index(es): {}",
        list(missing)
    )]
    MissingMembers {
        /// Name of the pool being imported.
        pool_name: String,
        /// Number of devices given.
        given: usize,
        /// Number of members the pool has.
        expected: usize,
        /// Member indices (label order) not found among the given devices.
        missing: Vec<u32>,
    },

    /// More devices than the pool has members.
    #[error(
        "pool {pool_name:?} has {expected} members but {given} devices were given; not members: position(s) {}",
        list(extra)
    )]
    ExtraMembers {
        /// Name of the pool being imported.
        pool_name: String,
        /// Number of devices given.
        given: usize,
        /// Number of members the pool has.
        expected: usize,
        /// Positions of the devices that are not (or not again) members of the pool.
        extra: Vec<usize>,
    },

    /// A member's label is older than the others': it missed a label rewrite (for example
    /// a stale copy of the disk).
    #[error(
        "member at position {position} (member index {member_index}) is stale: label generation {generation}, the pool is at generation {expected}"
    )]
    StaleMember {
        /// Position in the given member list.
        position: usize,
        /// The member's index in the pool.
        member_index: u32,
        /// The member's newest valid label generation.
        generation: u64,
        /// The pool's newest generation.
        expected: u64,
    },

    /// Members of the same pool and generation disagree about the pool's layout.
    #[error(
        "member at position {position} disagrees with the other members about the pool's {field}"
    )]
    InconsistentLabels {
        /// Position in the given member list.
        position: usize,
        /// The label field that differs.
        field: &'static str,
    },

    /// The members are all present but not in label order.
    #[error(
        "members are out of order: {}; pass them in member-index order",
        order(found)
    )]
    MisorderedMembers {
        /// `found[position]` is the member index the device at `position` carries.
        found: Vec<u32>,
    },

    /// A member is now smaller than its label's data area (plus backup label) requires.
    #[error(
        "member at position {position} ({device}) shrank: {size} bytes, its label needs at least {required}"
    )]
    MemberShrunk {
        /// Position in the given member list.
        position: usize,
        /// The member's description.
        device: String,
        /// The member's current size in bytes.
        size: u64,
        /// The size the label's data area and backup label need.
        required: u64,
    },

    /// A label could not be built (an internal invariant was violated).
    #[error("cannot build the label for member {position}: {source}")]
    Label {
        /// Position in the given member list.
        position: usize,
        /// Why.
        #[source]
        source: LabelError,
    },

    /// I/O to a member failed.
    #[error("{op} on member at position {position} failed: {source}")]
    Io {
        /// Position in the given member list.
        position: usize,
        /// What was being done, e.g. "label read".
        op: &'static str,
        /// The member's error.
        #[source]
        source: BlockError,
    },
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn order(found: &[u32]) -> String {
    found
        .iter()
        .enumerate()
        .filter(|&(pos, &idx)| pos as u64 != u64::from(idx))
        .map(|(pos, idx)| format!("position {pos} holds member index {idx}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<PoolError> for BlockError {
    /// Member I/O errors pass through unchanged; every refusal becomes
    /// [`BlockError::InvalidSpec`] carrying the full message.
    fn from(e: PoolError) -> BlockError {
        match e {
            PoolError::Io { source, .. } => source,
            other => BlockError::InvalidSpec(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_culprit() {
        let e = PoolError::MisorderedMembers {
            found: vec![1, 0, 2],
        };
        assert_eq!(
            e.to_string(),
            "members are out of order: position 0 holds member index 1, position 1 holds member index 0; pass them in member-index order"
        );
        let e = PoolError::MissingMembers {
            pool_name: "p".into(),
            given: 1,
            expected: 3,
            missing: vec![0, 2],
        };
        assert_eq!(
            e.to_string(),
            "pool \"p\" has 3 members but 1 were given; missing member index(es): 0, 2"
        );
        let e = PoolError::NotAMember {
            position: 2,
            device: "ram".into(),
        };
        assert!(e.to_string().contains("not a Ferrite pool member"), "{e}");
    }

    #[test]
    fn converts_to_block_error() {
        let b: BlockError = PoolError::NoMembers.into();
        assert!(matches!(b, BlockError::InvalidSpec(ref m) if m.contains("at least one")));
        let b: BlockError = PoolError::Io {
            position: 0,
            op: "label read",
            source: BlockError::NoSpace,
        }
        .into();
        assert!(matches!(b, BlockError::NoSpace));
    }
}
