//! The replica label: the mirror metadata kept in the first MiB of every replica, its on-disk
//! codec, and the volume geometry it records.
//!
//! The reserve holds two slots of 512 KiB (slot 0 at byte 0, slot 1 at byte 512 KiB). A label
//! with sequence number `seq` is written to slot `seq % 2`, so the previous label survives in
//! the other slot while the new one is written; a reader takes the valid slot with the higher
//! `seq`. A slot is a 4 KiB header followed by the dirty bitmap, all little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FRTMIRR1` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | CRC32C of header (this field as zero) + bitmap bytes |
//! | 16 | 8 | sequence number of this label write |
//! | 24 | 16 | mirror UUID |
//! | 40 | 16 | replica UUID (the replica this label is on) |
//! | 56 | 8 | generation (epoch) |
//! | 64 | 8 | volume size in bytes |
//! | 72 | 4 | volume block size |
//! | 76 | 4 | flags: bit 0 clean shutdown, bit 1 bitmap tracking active |
//! | 80 | 8 | region size in bytes (power of two) |
//! | 88 | 8 | bitmap base generation (valid when tracking) |
//! | 96 | 4 | number of regions (bits in the bitmap) |
//! | 100 | 4 | number of member entries (at most 32) |
//! | 104 | 32 × n | members: UUID (16), last in-sync generation (8), flags (4, bit 0 in sync), zero (4) |
//! | 4096 | ⌈regions / 8⌉ | dirty bitmap, bit `i` = bit `i % 8` of byte `i / 8` |

use std::fmt;

use crate::{BlockDevice, BlockError, IoBuf};

use super::bitmap::Bitmap;

/// A mirror UUID (16 raw bytes).
pub type MirrorId = [u8; 16];
/// A replica UUID (16 raw bytes).
pub type ReplicaId = [u8; 16];

/// Bytes reserved for mirror metadata at the start of every replica.
pub const RESERVE_BYTES: u64 = 1 << 20;
/// Bytes of one label slot (two slots fill the reserve).
pub const SLOT_BYTES: u64 = RESERVE_BYTES / 2;
/// Bytes of the label header before the bitmap.
pub const HEADER_BYTES: usize = 4096;
/// Most regions a bitmap can track (the bitmap fills the rest of a slot).
pub const MAX_REGIONS: u64 = (SLOT_BYTES - HEADER_BYTES as u64) * 8;
/// Most members (replicas) a label can list.
pub const MAX_MEMBERS: usize = 32;
/// Default region size of the dirty bitmap.
pub const DEFAULT_REGION_SIZE: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"FRTMIRR1";
const VERSION: u32 = 1;
const FLAG_CLEAN: u32 = 1;
const FLAG_TRACKING: u32 = 2;
const MEMBER_BYTES: usize = 32;
const MEMBERS_OFF: usize = 104;

/// Formats a UUID in the usual 8-4-4-4-12 hex form.
pub use crate::uuid_text::format_uuid as format_id;

/// The volume geometry a mirror exposes, fixed at creation and recorded in every label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Volume block size (the largest replica block size at creation).
    pub block_size: u32,
    /// Volume size in bytes (a multiple of `block_size`).
    pub data_bytes: u64,
    /// Bytes per dirty-bitmap region (a power of two, at least the block size).
    pub region_size: u64,
    /// Number of regions (`ceil(data_bytes / region_size)`, at most [`MAX_REGIONS`]).
    pub nregions: u64,
}

impl Geometry {
    /// Geometry for a volume of `data_bytes`, scaling the region size up from
    /// `min_region_size` (rounded up to a power of two and the block size) until the bitmap
    /// fits a label slot.
    pub(crate) fn new(
        block_size: u32,
        data_bytes: u64,
        min_region_size: u64,
    ) -> Result<Geometry, String> {
        if data_bytes == 0 || !data_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(format!(
                "volume size {data_bytes} is not a non-zero multiple of {block_size}"
            ));
        }
        let mut region_size = min_region_size
            .max(u64::from(block_size))
            .checked_next_power_of_two()
            .ok_or("region size too large")?;
        while data_bytes.div_ceil(region_size) > MAX_REGIONS {
            region_size = region_size.checked_mul(2).ok_or("volume too large")?;
        }
        Ok(Geometry {
            block_size,
            data_bytes,
            region_size,
            nregions: data_bytes.div_ceil(region_size),
        })
    }

    /// The same geometry grown to `data_bytes` (same block and region size): what
    /// [`crate::mirror::Mirror::grow`] records. Fails when the size is not a multiple of the
    /// block size, is smaller than now, or needs more regions than a label can track.
    pub(crate) fn grown_to(&self, data_bytes: u64) -> Result<Geometry, String> {
        if data_bytes < self.data_bytes {
            return Err(format!(
                "cannot shrink from {} to {data_bytes} bytes",
                self.data_bytes
            ));
        }
        if !data_bytes.is_multiple_of(u64::from(self.block_size)) {
            return Err(format!(
                "size {data_bytes} is not a multiple of the block size {}",
                self.block_size
            ));
        }
        let nregions = data_bytes.div_ceil(self.region_size);
        if nregions > MAX_REGIONS {
            return Err(format!(
                "size {data_bytes} needs {nregions} regions of {} bytes; a label tracks at most {MAX_REGIONS} (at most {} bytes for this volume)",
                self.region_size,
                MAX_REGIONS * self.region_size
            ));
        }
        Ok(Geometry {
            data_bytes,
            nregions,
            ..*self
        })
    }

    /// Whether `other` is this geometry at another size (same block and region size).
    pub(crate) fn same_layout(&self, other: &Geometry) -> bool {
        self.block_size == other.block_size && self.region_size == other.region_size
    }

    /// Data offset and length of region `r` (the last one may be short).
    pub(crate) fn region_extent(&self, r: u64) -> (u64, u64) {
        let off = r * self.region_size;
        (off, self.region_size.min(self.data_bytes - off))
    }
}

/// The regions of `region_size` bytes touched by `len` bytes at data offset `off`, as
/// `[first, end)`.
pub(crate) fn region_span(region_size: u64, off: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (0, 0);
    }
    (off / region_size, (off + len - 1) / region_size + 1)
}

/// One member entry of a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberEntry {
    /// Replica UUID.
    pub id: ReplicaId,
    /// In sync at the label's generation.
    pub in_sync: bool,
    /// For an out-of-sync member, the last generation at which it was in sync (0: never).
    /// For an in-sync member, the label's generation.
    pub last_in_sync_gen: u64,
}

/// The decoded content of one label slot.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Label {
    pub seq: u64,
    pub mirror_id: MirrorId,
    pub replica_id: ReplicaId,
    pub generation: u64,
    pub geometry: Geometry,
    pub clean: bool,
    /// `Some(base)` while the bitmap tracks regions written since generation `base`.
    pub bitmap_base: Option<u64>,
    pub members: Vec<MemberEntry>,
    pub bitmap: Bitmap,
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Label")
            .field("seq", &self.seq)
            .field("mirror", &format_id(&self.mirror_id))
            .field("replica", &format_id(&self.replica_id))
            .field("generation", &self.generation)
            .field("clean", &self.clean)
            .field("bitmap_base", &self.bitmap_base)
            .field("members", &self.members.len())
            .field("dirty", &self.bitmap.count())
            .finish()
    }
}

impl Label {
    /// The member entry for `id`, if listed.
    pub(crate) fn member(&self, id: &ReplicaId) -> Option<&MemberEntry> {
        self.members.iter().find(|m| &m.id == id)
    }

    /// Whether the replica this label is on claims to be in sync at the label's generation.
    pub(crate) fn self_in_sync(&self) -> bool {
        self.member(&self.replica_id).is_some_and(|m| m.in_sync)
    }

    /// The UUIDs listed in sync, sorted.
    pub(crate) fn in_sync_set(&self) -> Vec<ReplicaId> {
        let mut v: Vec<ReplicaId> = self
            .members
            .iter()
            .filter(|m| m.in_sync)
            .map(|m| m.id)
            .collect();
        v.sort();
        v
    }

    /// The on-disk form: header plus bitmap, not padded.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let bitmap = self.bitmap.to_bytes();
        let mut b = vec![0u8; HEADER_BYTES + bitmap.len()];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..40].copy_from_slice(&self.mirror_id);
        b[40..56].copy_from_slice(&self.replica_id);
        b[56..64].copy_from_slice(&self.generation.to_le_bytes());
        b[64..72].copy_from_slice(&g.data_bytes.to_le_bytes());
        b[72..76].copy_from_slice(&g.block_size.to_le_bytes());
        let mut flags = 0;
        if self.clean {
            flags |= FLAG_CLEAN;
        }
        if self.bitmap_base.is_some() {
            flags |= FLAG_TRACKING;
        }
        b[76..80].copy_from_slice(&flags.to_le_bytes());
        b[80..88].copy_from_slice(&g.region_size.to_le_bytes());
        b[88..96].copy_from_slice(&self.bitmap_base.unwrap_or(0).to_le_bytes());
        // nregions <= MAX_REGIONS and members <= MAX_MEMBERS (checked by the mirror).
        b[96..100].copy_from_slice(&(g.nregions as u32).to_le_bytes());
        b[100..104].copy_from_slice(&(self.members.len() as u32).to_le_bytes());
        for (i, m) in self.members.iter().take(MAX_MEMBERS).enumerate() {
            let o = MEMBERS_OFF + i * MEMBER_BYTES;
            b[o..o + 16].copy_from_slice(&m.id);
            b[o + 16..o + 24].copy_from_slice(&m.last_in_sync_gen.to_le_bytes());
            b[o + 24..o + 28].copy_from_slice(&u32::from(m.in_sync).to_le_bytes());
        }
        b[HEADER_BYTES..].copy_from_slice(&bitmap);
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Total encoded length (header + bitmap) announced by a header, if it has the magic.
    fn encoded_len(header: &[u8]) -> Option<usize> {
        if header.len() < HEADER_BYTES || &header[0..8] != MAGIC {
            return None;
        }
        let nregions = u64::from(u32_at(header, 96));
        Some(HEADER_BYTES + Bitmap::byte_len(nregions.min(MAX_REGIONS)))
    }

    /// Decodes and verifies one slot's bytes (at least [`Label::encoded_len`] of them).
    pub(crate) fn decode(buf: &[u8]) -> Result<Label, String> {
        let len = Self::encoded_len(buf).ok_or("no label magic")?;
        if buf.len() < len {
            return Err("label truncated".into());
        }
        let version = u32_at(buf, 8);
        if version != VERSION {
            return Err(format!("unsupported label version {version}"));
        }
        let stored = u32_at(buf, 12);
        let mut check = buf[..len].to_vec();
        check[12..16].fill(0);
        let crc = crc32c::crc32c(&check);
        if crc != stored {
            return Err(format!(
                "CRC mismatch (stored {stored:#x}, computed {crc:#x})"
            ));
        }
        let block_size = u32_at(buf, 72);
        crate::check_block_size(block_size).map_err(|e| e.to_string())?;
        let data_bytes = u64_at(buf, 64);
        let region_size = u64_at(buf, 80);
        let nregions = u64::from(u32_at(buf, 96));
        if !region_size.is_power_of_two()
            || region_size < u64::from(block_size)
            || data_bytes == 0
            || !data_bytes.is_multiple_of(u64::from(block_size))
            || data_bytes.div_ceil(region_size) != nregions
            || nregions > MAX_REGIONS
        {
            return Err(format!(
                "inconsistent geometry: {data_bytes} bytes, {block_size}-byte blocks, {nregions} regions of {region_size}"
            ));
        }
        let nmembers = u32_at(buf, 100) as usize;
        if nmembers > MAX_MEMBERS {
            return Err(format!("{nmembers} members (at most {MAX_MEMBERS})"));
        }
        let members = (0..nmembers)
            .map(|i| {
                let o = MEMBERS_OFF + i * MEMBER_BYTES;
                MemberEntry {
                    id: id_at(buf, o),
                    last_in_sync_gen: u64_at(buf, o + 16),
                    in_sync: u32_at(buf, o + 24) & 1 != 0,
                }
            })
            .collect();
        let flags = u32_at(buf, 76);
        Ok(Label {
            seq: u64_at(buf, 16),
            mirror_id: id_at(buf, 24),
            replica_id: id_at(buf, 40),
            generation: u64_at(buf, 56),
            geometry: Geometry {
                block_size,
                data_bytes,
                region_size,
                nregions,
            },
            clean: flags & FLAG_CLEAN != 0,
            bitmap_base: (flags & FLAG_TRACKING != 0).then(|| u64_at(buf, 88)),
            members,
            bitmap: Bitmap::from_bytes(&buf[HEADER_BYTES..len], nregions),
        })
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn id_at(b: &[u8], o: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    a
}

/// A readable summary of a replica's label, for tools, status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSummary {
    /// Sequence number of the label write.
    pub seq: u64,
    /// Mirror UUID.
    pub mirror_id: MirrorId,
    /// UUID of the replica the label is on.
    pub replica_id: ReplicaId,
    /// Generation (epoch).
    pub generation: u64,
    /// Clean-shutdown flag.
    pub clean: bool,
    /// Volume size in bytes.
    pub size: u64,
    /// Volume block size.
    pub block_size: u32,
    /// Dirty-bitmap region size.
    pub region_size: u64,
    /// Replicas listed in sync, sorted.
    pub in_sync: Vec<ReplicaId>,
    /// Every member: UUID, in sync, last in-sync generation.
    pub members: Vec<(ReplicaId, bool, u64)>,
    /// `Some(base)` while the bitmap tracks writes since generation `base`.
    pub bitmap_base: Option<u64>,
    /// The dirty regions, ascending.
    pub dirty_regions: Vec<u64>,
}

/// Reads the label of a replica device: `None` for a blank device, an error for a corrupt one.
pub async fn inspect(dev: &dyn BlockDevice) -> Result<Option<LabelSummary>, super::MirrorError> {
    match read_label(dev).await? {
        LabelState::Blank => Ok(None),
        LabelState::Corrupt(reason) => Err(super::MirrorError::BadLabel {
            replica: dev.describe(),
            reason,
        }),
        LabelState::Valid(l) => Ok(Some(LabelSummary {
            seq: l.seq,
            mirror_id: l.mirror_id,
            replica_id: l.replica_id,
            generation: l.generation,
            clean: l.clean,
            size: l.geometry.data_bytes,
            block_size: l.geometry.block_size,
            region_size: l.geometry.region_size,
            in_sync: l.in_sync_set(),
            members: l
                .members
                .iter()
                .map(|m| (m.id, m.in_sync, m.last_in_sync_gen))
                .collect(),
            bitmap_base: l.bitmap_base,
            dirty_regions: l.bitmap.ones(),
        })),
    }
}

/// What a replica's reserve holds.
#[derive(Debug)]
pub(crate) enum LabelState {
    /// Neither slot has the label magic: a blank (or foreign, non-Ferrite) device.
    Blank,
    /// The valid slot with the highest sequence number.
    Valid(Label),
    /// A slot has the magic but no slot verifies.
    Corrupt(String),
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

async fn read_bytes(dev: &dyn BlockDevice, off: u64, len: u64) -> Result<IoBuf, BlockError> {
    let bs = u64::from(dev.block_size());
    let nblocks = u32::try_from(round_up(len, bs) / bs)
        .map_err(|_| BlockError::InvalidSpec("label read too large".into()))?;
    dev.read(off / bs, nblocks).await
}

/// Reads both label slots of `dev` and returns the newest valid label.
pub(crate) async fn read_label(dev: &dyn BlockDevice) -> Result<LabelState, BlockError> {
    let bs = u64::from(dev.block_size());
    if dev.size_bytes() < RESERVE_BYTES || !SLOT_BYTES.is_multiple_of(bs) {
        return Ok(LabelState::Blank);
    }
    let mut best: Option<Label> = None;
    let mut problem = None;
    let mut magic_seen = false;
    for slot in 0..2u64 {
        let off = slot * SLOT_BYTES;
        let head = read_bytes(dev, off, HEADER_BYTES as u64).await?;
        let Some(len) = Label::encoded_len(&head) else {
            continue;
        };
        magic_seen = true;
        let buf = if len <= head.len() {
            head
        } else {
            read_bytes(dev, off, len as u64).await?
        };
        match Label::decode(&buf) {
            Ok(l) if best.as_ref().is_none_or(|b| l.seq > b.seq) => best = Some(l),
            Ok(_) => {}
            Err(e) => problem = Some(format!("slot {slot}: {e}")),
        }
    }
    Ok(match (best, magic_seen) {
        (Some(l), _) => LabelState::Valid(l),
        (None, false) => LabelState::Blank,
        (None, true) => LabelState::Corrupt(problem.unwrap_or_default()),
    })
}

/// Writes `label` to slot `label.seq % 2` of `dev` with FUA.
pub(crate) async fn write_label(dev: &dyn BlockDevice, label: &Label) -> Result<(), BlockError> {
    let bytes = label.encode();
    let bs = u64::from(dev.block_size());
    let len = round_up(bytes.len() as u64, bs);
    // Bounded by SLOT_BYTES.
    let mut buf = IoBuf::zeroed(len as usize);
    buf[..bytes.len()].copy_from_slice(&bytes);
    let off = (label.seq % 2) * SLOT_BYTES;
    dev.write(off / bs, buf, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RamDevice;

    fn sample(seq: u64) -> Label {
        let geometry = Geometry::new(4096, 63 << 20, DEFAULT_REGION_SIZE).unwrap();
        let mut bitmap = Bitmap::new(geometry.nregions);
        bitmap.set_range(3, 5);
        Label {
            seq,
            mirror_id: [1; 16],
            replica_id: [2; 16],
            generation: 7,
            geometry,
            clean: seq.is_multiple_of(2),
            bitmap_base: Some(5),
            members: vec![
                MemberEntry {
                    id: [2; 16],
                    in_sync: true,
                    last_in_sync_gen: 7,
                },
                MemberEntry {
                    id: [3; 16],
                    in_sync: false,
                    last_in_sync_gen: 5,
                },
            ],
            bitmap,
        }
    }

    #[test]
    fn geometry_scales_region_size() {
        let g = Geometry::new(4096, 63 << 20, DEFAULT_REGION_SIZE).unwrap();
        assert_eq!((g.region_size, g.nregions), (1 << 20, 63));
        assert_eq!(region_span(g.region_size, 0, 1), (0, 1));
        assert_eq!(region_span(g.region_size, (1 << 20) - 4096, 8192), (0, 2));
        assert_eq!(g.region_extent(62), (62 << 20, 1 << 20));
        // 1 MiB regions cover a bit under 4 TiB (MAX_REGIONS MiB): 15 TiB needs 4 MiB
        // regions, 16 TiB 8 MiB.
        assert_eq!(MAX_REGIONS, 4_161_536);
        let g = Geometry::new(4096, 15 << 40, DEFAULT_REGION_SIZE).unwrap();
        assert_eq!(g.region_size, 4 << 20);
        let g = Geometry::new(4096, 16 << 40, DEFAULT_REGION_SIZE).unwrap();
        assert_eq!(g.region_size, 8 << 20);
        assert!(g.nregions <= MAX_REGIONS);
        let g = Geometry::new(512, 1536, 100).unwrap();
        assert_eq!((g.region_size, g.nregions), (512, 3));
        assert!(Geometry::new(512, 1000, 512).is_err());
    }

    #[test]
    fn encode_decode_round_trip_and_crc() {
        let l = sample(3);
        let bytes = l.encode();
        assert_eq!(bytes.len(), HEADER_BYTES + 8);
        assert_eq!(Label::decode(&bytes).unwrap(), l);
        let mut bad = bytes.clone();
        bad[HEADER_BYTES] ^= 0x80; // a bitmap bit
        assert!(Label::decode(&bad).unwrap_err().contains("CRC"));
        assert!(Label::decode(&[0u8; 4096]).is_err());
        assert!(l.self_in_sync());
        assert_eq!(l.in_sync_set(), vec![[2u8; 16]]);
        assert_eq!(
            format_id(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
    }

    #[tokio::test]
    async fn slots_alternate_and_a_torn_write_keeps_the_other() {
        let dev = RamDevice::new(8 << 20, 512).unwrap();
        assert!(matches!(read_label(&dev).await.unwrap(), LabelState::Blank));
        write_label(&dev, &sample(1)).await.unwrap();
        write_label(&dev, &sample(2)).await.unwrap();
        let LabelState::Valid(l) = read_label(&dev).await.unwrap() else {
            panic!("no label")
        };
        assert_eq!(l.seq, 2);
        // Tear the write of seq 3 (slot 1): only its first block lands, with junk.
        let mut torn = IoBuf::from_slice(&sample(3).encode()[..512]);
        torn[100] ^= 1;
        dev.write(SLOT_BYTES / 512, torn, false).await.unwrap();
        let LabelState::Valid(l) = read_label(&dev).await.unwrap() else {
            panic!("no label")
        };
        assert_eq!(l.seq, 2, "the intact slot wins");
        // Both slots damaged: corrupt, not blank.
        let mut junk = IoBuf::from_slice(&sample(4).encode()[..512]);
        junk[200] ^= 1;
        dev.write(0, junk, false).await.unwrap();
        assert!(matches!(
            read_label(&dev).await.unwrap(),
            LabelState::Corrupt(_)
        ));
    }
}
