//! The on-disk member label of a RAID0 pool: what it holds, and its explicit little-endian
//! encoding with a CRC32C.
//!
//! Every member carries two copies of its label: the primary in the first 4 KiB of the device
//! and the backup in the last 4 KiB (see [`crate::raid0`] for the whole member layout). This
//! module is pure: it encodes and decodes the 4096-byte label and validates it; reading and
//! writing the copies on a device lives in `store.rs`.
//!
//! Layout of version 1 (all integers little-endian; bytes not listed are reserved and zero):
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0x000  | 8    | magic `FERRAID0`                                              |
//! | 0x008  | 4    | format version (1)                                            |
//! | 0x00C  | 4    | label size in bytes (4096)                                    |
//! | 0x010  | 8    | generation (1 at creation, +1 on every label rewrite)         |
//! | 0x018  | 16   | pool UUID                                                     |
//! | 0x028  | 16   | this member's UUID                                            |
//! | 0x038  | 4    | this member's index in the pool (0-based)                     |
//! | 0x03C  | 4    | member count N (1..=64)                                       |
//! | 0x040  | 4    | logical block size in bytes                                   |
//! | 0x044  | 4    | stripe size in bytes                                          |
//! | 0x048  | 8    | data offset in bytes (start of the data area on every member) |
//! | 0x050  | 8    | data size in bytes per member (same on every member)          |
//! | 0x058  | 8    | member device size in bytes when the label was written        |
//! | 0x060  | 1    | pool name length (1..=63)                                     |
//! | 0x080  | 64   | pool name, ASCII `[a-z0-9-]`, zero padded                     |
//! | 0x0C0  | 1024 | member UUIDs in index order, 64 slots of 16 bytes (unused = 0)|
//! | 0xFFC  | 4    | CRC32C of bytes 0x000..0xFFC                                  |

/// Magic at the start of every label.
pub const LABEL_MAGIC: [u8; 8] = *b"FERRAID0";
/// Label format version written by this build (and the only one it reads).
pub const LABEL_VERSION: u32 = 1;
/// Size of one label copy in bytes.
pub const LABEL_SIZE: usize = 4096;
/// Most members a pool may have (the label has this many UUID slots).
pub const MAX_MEMBERS: usize = 64;
/// Longest pool name in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// Where the data area starts on every member: 1 MiB, leaving room for the primary label and
/// future metadata.
pub const DATA_OFFSET: u64 = 1 << 20;
/// Default stripe size: 64 KiB.
pub const DEFAULT_STRIPE_SIZE: u32 = 64 * 1024;
/// Largest stripe size accepted: 16 MiB.
pub const MAX_STRIPE_SIZE: u32 = 16 << 20;

const OFF_MAGIC: usize = 0x000;
const OFF_VERSION: usize = 0x008;
const OFF_LABEL_SIZE: usize = 0x00C;
const OFF_GENERATION: usize = 0x010;
const OFF_POOL_UUID: usize = 0x018;
const OFF_MEMBER_UUID: usize = 0x028;
const OFF_MEMBER_INDEX: usize = 0x038;
const OFF_MEMBER_COUNT: usize = 0x03C;
const OFF_BLOCK_SIZE: usize = 0x040;
const OFF_STRIPE_SIZE: usize = 0x044;
const OFF_DATA_OFFSET: usize = 0x048;
const OFF_DATA_SIZE: usize = 0x050;
const OFF_MEMBER_SIZE: usize = 0x058;
const OFF_NAME_LEN: usize = 0x060;
const OFF_NAME: usize = 0x080;
const NAME_FIELD: usize = 64;
const OFF_MEMBERS: usize = 0x0C0;
const OFF_CRC: usize = LABEL_SIZE - 4;

/// Why a label could not be decoded (or, for [`MemberLabel::encode`], written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The bytes do not start with the label magic.
    #[error("not a Ferrite pool member (no label magic)")]
    NotAMember,
    /// Fewer than [`LABEL_SIZE`] bytes were given.
    #[error("label needs {LABEL_SIZE} bytes, got {0}")]
    TooShort(usize),
    /// The magic is present but the CRC32C does not match: the label is damaged.
    #[error("label checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// CRC stored in the label.
        stored: u32,
        /// CRC computed over the label bytes.
        computed: u32,
    },
    /// A format version this build does not understand.
    #[error("unsupported label format version {0} (this build reads version {LABEL_VERSION})")]
    UnsupportedVersion(u32),
    /// The label is intact but a field is out of bounds or inconsistent.
    #[error("invalid label: {0}")]
    Invalid(String),
}

/// The decoded content of one member label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLabel {
    /// Bumped on every rewrite of the pool's labels; all members agree on it.
    pub generation: u64,
    /// UUID of the pool.
    pub pool_uuid: [u8; 16],
    /// Name of the pool (see [`validate_pool_name`]).
    pub pool_name: String,
    /// UUID of this member; equals `members[member_index]`.
    pub member_uuid: [u8; 16],
    /// Index of this member in the stripe order.
    pub member_index: u32,
    /// UUIDs of all members in index order (the member count is its length).
    pub members: Vec<[u8; 16]>,
    /// Logical block size of the pool and its members, in bytes.
    pub block_size: u32,
    /// Stripe size in bytes.
    pub stripe_size: u32,
    /// Start of the data area on the member, in bytes.
    pub data_offset: u64,
    /// Size of the data area on each member, in bytes (a multiple of the stripe size).
    pub data_size: u64,
    /// Size of the member device in bytes when this label was written; the backup copy lives
    /// in its last 4 KiB.
    pub member_size: u64,
}

impl MemberLabel {
    /// Number of members in the pool.
    pub fn member_count(&self) -> u32 {
        // At most MAX_MEMBERS once validated; saturate rather than wrap otherwise.
        u32::try_from(self.members.len()).unwrap_or(u32::MAX)
    }

    /// Checks every field for bounds and internal consistency.
    pub fn validate(&self) -> Result<(), LabelError> {
        let invalid = |msg: String| Err(LabelError::Invalid(msg));
        if self.generation == 0 {
            return invalid("generation 0".into());
        }
        if let Err(reason) = validate_pool_name(&self.pool_name) {
            return invalid(format!("pool name {:?}: {reason}", self.pool_name));
        }
        let count = self.members.len();
        if count == 0 || count > MAX_MEMBERS {
            return invalid(format!("member count {count} not in 1..={MAX_MEMBERS}"));
        }
        let index = self.member_index as usize;
        if index >= count {
            return invalid(format!("member index {index} >= member count {count}"));
        }
        if self.members[index] != self.member_uuid {
            return invalid(format!(
                "member UUID {} is not entry {index} of the member list",
                format_uuid(&self.member_uuid)
            ));
        }
        for (i, u) in self.members.iter().enumerate() {
            if *u == [0; 16] {
                return invalid(format!("member {i} has the nil UUID"));
            }
            if self.members[..i].contains(u) {
                return invalid(format!("member UUID {} listed twice", format_uuid(u)));
            }
        }
        if self.pool_uuid == [0; 16] {
            return invalid("nil pool UUID".into());
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return invalid(format!("block size {bs}"));
        }
        if let Err(reason) = validate_stripe_size(self.stripe_size, bs) {
            return invalid(format!("stripe size {}: {reason}", self.stripe_size));
        }
        let bs64 = u64::from(bs);
        if self.data_offset < LABEL_SIZE as u64 || !self.data_offset.is_multiple_of(bs64) {
            return invalid(format!("data offset {}", self.data_offset));
        }
        if self.data_size == 0 || !self.data_size.is_multiple_of(u64::from(self.stripe_size)) {
            return invalid(format!("data size {}", self.data_size));
        }
        let need = self
            .data_offset
            .checked_add(self.data_size)
            .and_then(|n| n.checked_add(label_region(bs)));
        match need {
            Some(need) if self.member_size >= need && self.member_size.is_multiple_of(bs64) => {
                Ok(())
            }
            _ => invalid(format!(
                "member size {} cannot hold the data area ({} + {} bytes) and labels",
                self.member_size, self.data_offset, self.data_size
            )),
        }
    }

    /// Encodes the label into its 4096-byte on-disk form (CRC included). Refuses a label that
    /// does not pass [`MemberLabel::validate`], so an invalid label is never written.
    pub fn encode(&self) -> Result<Vec<u8>, LabelError> {
        self.validate()?;
        let mut b = vec![0u8; LABEL_SIZE];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&LABEL_MAGIC);
        put_u32(&mut b, OFF_VERSION, LABEL_VERSION);
        put_u32(&mut b, OFF_LABEL_SIZE, LABEL_SIZE as u32);
        put_u64(&mut b, OFF_GENERATION, self.generation);
        b[OFF_POOL_UUID..OFF_POOL_UUID + 16].copy_from_slice(&self.pool_uuid);
        b[OFF_MEMBER_UUID..OFF_MEMBER_UUID + 16].copy_from_slice(&self.member_uuid);
        put_u32(&mut b, OFF_MEMBER_INDEX, self.member_index);
        put_u32(&mut b, OFF_MEMBER_COUNT, self.member_count());
        put_u32(&mut b, OFF_BLOCK_SIZE, self.block_size);
        put_u32(&mut b, OFF_STRIPE_SIZE, self.stripe_size);
        put_u64(&mut b, OFF_DATA_OFFSET, self.data_offset);
        put_u64(&mut b, OFF_DATA_SIZE, self.data_size);
        put_u64(&mut b, OFF_MEMBER_SIZE, self.member_size);
        let name = self.pool_name.as_bytes();
        // Validated: 1..=63 bytes.
        b[OFF_NAME_LEN] = name.len() as u8;
        b[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name);
        for (i, u) in self.members.iter().enumerate() {
            let off = OFF_MEMBERS + 16 * i;
            b[off..off + 16].copy_from_slice(u);
        }
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        put_u32(&mut b, OFF_CRC, crc);
        Ok(b)
    }

    /// Decodes and validates a label from the first [`LABEL_SIZE`] bytes of `bytes`.
    ///
    /// Checks, in order: length, magic ([`LabelError::NotAMember`]), CRC
    /// ([`LabelError::BadChecksum`]), version, then every field.
    pub fn decode(bytes: &[u8]) -> Result<MemberLabel, LabelError> {
        if bytes.len() < LABEL_SIZE {
            return Err(LabelError::TooShort(bytes.len()));
        }
        let b = &bytes[..LABEL_SIZE];
        if !has_magic(b) {
            return Err(LabelError::NotAMember);
        }
        let stored = get_u32(b, OFF_CRC);
        let computed = crc32c::crc32c(&b[..OFF_CRC]);
        if stored != computed {
            return Err(LabelError::BadChecksum { stored, computed });
        }
        let version = get_u32(b, OFF_VERSION);
        if version != LABEL_VERSION {
            return Err(LabelError::UnsupportedVersion(version));
        }
        let size = get_u32(b, OFF_LABEL_SIZE);
        if size as usize != LABEL_SIZE {
            return Err(LabelError::Invalid(format!("label size field {size}")));
        }
        let count = get_u32(b, OFF_MEMBER_COUNT) as usize;
        if count == 0 || count > MAX_MEMBERS {
            return Err(LabelError::Invalid(format!(
                "member count {count} not in 1..={MAX_MEMBERS}"
            )));
        }
        let name_len = usize::from(b[OFF_NAME_LEN]);
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(LabelError::Invalid(format!("pool name length {name_len}")));
        }
        let name_bytes = &b[OFF_NAME..OFF_NAME + name_len];
        if b[OFF_NAME + name_len..OFF_NAME + NAME_FIELD]
            .iter()
            .any(|&c| c != 0)
        {
            return Err(LabelError::Invalid("pool name padding is not zero".into()));
        }
        let pool_name = String::from_utf8(name_bytes.to_vec())
            .map_err(|_| LabelError::Invalid("pool name is not UTF-8".into()))?;
        let members = (0..count)
            .map(|i| get_uuid(b, OFF_MEMBERS + 16 * i))
            .collect();
        let label = MemberLabel {
            generation: get_u64(b, OFF_GENERATION),
            pool_uuid: get_uuid(b, OFF_POOL_UUID),
            pool_name,
            member_uuid: get_uuid(b, OFF_MEMBER_UUID),
            member_index: get_u32(b, OFF_MEMBER_INDEX),
            members,
            block_size: get_u32(b, OFF_BLOCK_SIZE),
            stripe_size: get_u32(b, OFF_STRIPE_SIZE),
            data_offset: get_u64(b, OFF_DATA_OFFSET),
            data_size: get_u64(b, OFF_DATA_SIZE),
            member_size: get_u64(b, OFF_MEMBER_SIZE),
        };
        label.validate()?;
        Ok(label)
    }
}

/// Whether `bytes` starts with the label magic (intact or not).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.get(..8) == Some(&LABEL_MAGIC[..])
}

/// Bytes reserved for one label copy on a device of `block_size`-byte blocks: 4 KiB, or one
/// block if blocks are larger (labels are written a whole block at a time).
pub fn label_region(block_size: u32) -> u64 {
    u64::from(block_size).max(LABEL_SIZE as u64)
}

/// Checks a pool name: 1..=63 bytes of `[a-z0-9-]`. Returns the reason on failure.
pub fn validate_pool_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 63 bytes");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err("may only contain a-z, 0-9 and '-'");
    }
    Ok(())
}

/// Checks a stripe size against a block size: a power of two, a multiple of the block size,
/// at most [`MAX_STRIPE_SIZE`]. Returns the reason on failure.
pub fn validate_stripe_size(stripe_size: u32, block_size: u32) -> Result<(), &'static str> {
    if !stripe_size.is_power_of_two() {
        return Err("must be a power of two");
    }
    if stripe_size < block_size {
        return Err("must be at least the block size");
    }
    if stripe_size > MAX_STRIPE_SIZE {
        return Err("must be at most 16 MiB");
    }
    Ok(())
}

pub use crate::uuid_text::format_uuid;

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn get_uuid(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemberLabel {
        let members: Vec<[u8; 16]> = (1..=3u8).map(|i| [i; 16]).collect();
        MemberLabel {
            generation: 7,
            pool_uuid: [0xab; 16],
            pool_name: "fast-pool-1".into(),
            member_uuid: members[1],
            member_index: 1,
            members,
            block_size: 4096,
            stripe_size: 65536,
            data_offset: DATA_OFFSET,
            data_size: 10 * 65536,
            member_size: DATA_OFFSET + 10 * 65536 + 8192,
        }
    }

    #[test]
    fn round_trip() {
        let l = sample();
        let b = l.encode().unwrap();
        assert_eq!(b.len(), LABEL_SIZE);
        assert_eq!(MemberLabel::decode(&b).unwrap(), l);
        // Trailing bytes beyond the label are ignored.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 512]);
        assert_eq!(MemberLabel::decode(&longer).unwrap(), l);
        // Maximum-size label.
        let mut big = sample();
        big.members = (1..=MAX_MEMBERS as u8).map(|i| [i; 16]).collect();
        big.member_index = 63;
        big.member_uuid = big.members[63];
        big.pool_name = "a".repeat(63);
        assert_eq!(MemberLabel::decode(&big.encode().unwrap()).unwrap(), big);
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let b = sample().encode().unwrap();
        assert_eq!(&b[0..8], b"FERRAID0");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[0x10..0x18], &7u64.to_le_bytes());
        assert_eq!(&b[0x18..0x28], &[0xab; 16]);
        assert_eq!(&b[0x28..0x38], &[2; 16]);
        assert_eq!(&b[0x38..0x3C], &1u32.to_le_bytes());
        assert_eq!(&b[0x3C..0x40], &3u32.to_le_bytes());
        assert_eq!(&b[0x40..0x44], &4096u32.to_le_bytes());
        assert_eq!(&b[0x44..0x48], &65536u32.to_le_bytes());
        assert_eq!(&b[0x48..0x50], &DATA_OFFSET.to_le_bytes());
        assert_eq!(&b[0x50..0x58], &(10u64 * 65536).to_le_bytes());
        assert_eq!(b[0x60], 11);
        assert_eq!(&b[0x80..0x8B], b"fast-pool-1");
        assert_eq!(&b[0xC0..0xD0], &[1; 16]);
        assert_eq!(&b[0xE0..0xF0], &[3; 16]);
        assert!(b[0xF0..0xFFC].iter().all(|&c| c == 0));
        assert_eq!(&b[0xFFC..], &crc32c::crc32c(&b[..0xFFC]).to_le_bytes());
    }

    #[test]
    fn corrupted_crc_is_rejected() {
        let mut b = sample().encode().unwrap();
        b[0x50] ^= 1;
        assert!(matches!(
            MemberLabel::decode(&b),
            Err(LabelError::BadChecksum { .. })
        ));
        let mut b = sample().encode().unwrap();
        b[0xFFF] ^= 0x80;
        assert!(matches!(
            MemberLabel::decode(&b),
            Err(LabelError::BadChecksum { .. })
        ));
    }

    #[test]
    fn wrong_magic_is_not_a_member() {
        let mut b = sample().encode().unwrap();
        b[0] = b'X';
        let e = MemberLabel::decode(&b).unwrap_err();
        assert_eq!(e, LabelError::NotAMember);
        assert_eq!(e.to_string(), "not a Ferrite pool member (no label magic)");
        assert_eq!(
            MemberLabel::decode(&[0u8; LABEL_SIZE]),
            Err(LabelError::NotAMember)
        );
        assert_eq!(
            MemberLabel::decode(&[0u8; 100]),
            Err(LabelError::TooShort(100))
        );
    }

    /// Re-seals a modified label so that only field validation can reject it.
    fn reseal(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        put_u32(b, OFF_CRC, crc);
    }

    #[test]
    fn bad_fields_with_a_valid_crc_are_rejected() {
        let good = sample().encode().unwrap();
        type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("version", Box::new(|b| put_u32(b, OFF_VERSION, 2))),
            ("count 0", Box::new(|b| put_u32(b, OFF_MEMBER_COUNT, 0))),
            ("count 65", Box::new(|b| put_u32(b, OFF_MEMBER_COUNT, 65))),
            ("index", Box::new(|b| put_u32(b, OFF_MEMBER_INDEX, 3))),
            ("uuid", Box::new(|b| b[OFF_MEMBER_UUID] = 9)),
            ("block", Box::new(|b| put_u32(b, OFF_BLOCK_SIZE, 1000))),
            (
                "stripe",
                Box::new(|b| put_u32(b, OFF_STRIPE_SIZE, 3 * 4096)),
            ),
            ("data", Box::new(|b| put_u64(b, OFF_DATA_SIZE, 4096))),
            ("size", Box::new(|b| put_u64(b, OFF_MEMBER_SIZE, 4096))),
            ("gen", Box::new(|b| put_u64(b, OFF_GENERATION, 0))),
            ("name", Box::new(|b| b[OFF_NAME] = b'A')),
            ("name len", Box::new(|b| b[OFF_NAME_LEN] = 0)),
            ("padding", Box::new(|b| b[OFF_NAME + 40] = b'x')),
            ("dup", Box::new(|b| b[OFF_MEMBERS + 16] = 1)),
        ];
        for (what, f) in cases {
            let mut b = good.clone();
            f(&mut b);
            reseal(&mut b);
            let e = MemberLabel::decode(&b).unwrap_err();
            assert!(
                matches!(
                    e,
                    LabelError::Invalid(_) | LabelError::UnsupportedVersion(2)
                ),
                "{what}: {e:?}"
            );
        }
    }

    #[test]
    fn encode_refuses_invalid_labels() {
        let mut l = sample();
        l.pool_name = "Bad_Name".into();
        assert!(matches!(l.encode(), Err(LabelError::Invalid(_))));
    }

    #[test]
    fn names_and_stripes() {
        assert!(validate_pool_name("a").is_ok());
        assert!(validate_pool_name("pool-0-fast").is_ok());
        assert!(validate_pool_name(&"x".repeat(63)).is_ok());
        assert!(validate_pool_name("").is_err());
        assert!(validate_pool_name(&"x".repeat(64)).is_err());
        assert!(validate_pool_name("Pool").is_err());
        assert!(validate_pool_name("a_b").is_err());
        assert!(validate_pool_name("a.b").is_err());
        assert!(validate_pool_name("ü").is_err());
        assert!(validate_stripe_size(65536, 4096).is_ok());
        assert!(validate_stripe_size(4096, 4096).is_ok());
        assert!(validate_stripe_size(2048, 4096).is_err());
        assert!(validate_stripe_size(3 * 4096, 4096).is_err());
        assert!(validate_stripe_size(32 << 20, 4096).is_err());
        assert_eq!(label_region(512), 4096);
        assert_eq!(label_region(65536), 65536);
    }

    #[test]
    fn uuid_format() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_uuid(&u), "12345678-9abc-def0-0123-456789abcdef");
    }
}
