//! Encoding and decoding of the thin store's on-disk structures: the layout, the superblock,
//! journal pages with their records, and checkpoints. Pure functions over byte slices: no I/O.
//!
//! Every integer is little-endian. The tables in the parent module's documentation are the
//! reference for the byte offsets used here.

use super::ThinError;
use super::map::{ClusterBitmap, ClusterMap};
use std::collections::HashMap;

/// Superblock magic, at byte 0 of each superblock slot.
pub(crate) const SB_MAGIC: [u8; 8] = *b"FERRTHIN";
/// On-disk format version.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the superblock covered by its CRC (the rest of the slot is zero).
pub(crate) const SB_BYTES: usize = 256;
/// Smallest metadata page: metadata I/O is done in pages of `max(4096, block_size)` bytes.
pub(crate) const MIN_PAGE: u32 = 4096;
/// Journal page magic ("FTJP").
const JOURNAL_MAGIC: [u8; 4] = *b"FTJP";
/// Checkpoint magic.
const CKPT_MAGIC: [u8; 8] = *b"FTCKPT01";
/// Size of the checkpoint header.
pub(crate) const CKPT_HEADER: usize = 64;
/// Size of one volume entry in a checkpoint (without its mapping pairs).
pub(crate) const CKPT_VOLUME: usize = 128;
/// Size of one `(virtual cluster, physical cluster)` pair in a checkpoint.
pub(crate) const CKPT_PAIR: usize = 8;
/// Size of the journal page header.
pub(crate) const JOURNAL_HEADER: usize = 48;
/// Longest volume name in bytes.
pub(crate) const MAX_NAME: usize = 63;
/// Largest number of clusters (physical, or virtual per volume): `u32::MAX` marks "unmapped".
pub(crate) const MAX_CLUSTERS: u64 = u32::MAX as u64 - 1;
/// Default metadata journal size bounds.
const JOURNAL_MIN_DEFAULT: u64 = 256 << 10;
const JOURNAL_MAX_DEFAULT: u64 = 64 << 20;
/// Default and largest volume-count limits.
pub(crate) const DEFAULT_MAX_VOLUMES: u32 = 1024;
pub(crate) const MAX_MAX_VOLUMES: u32 = 1 << 20;

/// Where everything lives on the device. Fixed at format time and stored in the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub block_size: u32,
    pub page_size: u32,
    pub cluster_size: u32,
    pub max_volumes: u32,
    pub device_bytes: u64,
    pub ckpt_off: [u64; 2],
    pub ckpt_cap: u64,
    pub journal_off: u64,
    pub journal_bytes: u64,
    pub data_off: u64,
    pub nclusters: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Layout {
    /// Computes the layout of a new store on a device of `device_bytes` bytes.
    pub(crate) fn compute(
        device_bytes: u64,
        block_size: u32,
        cluster_size: u32,
        journal_bytes: Option<u64>,
        max_volumes: Option<u32>,
    ) -> Result<Layout, ThinError> {
        let page_size = MIN_PAGE.max(block_size);
        if !cluster_size.is_power_of_two() || cluster_size < page_size || cluster_size > 1 << 30 {
            return Err(ThinError::InvalidArgument(format!(
                "cluster size {cluster_size} must be a power of two between {page_size} and 1 GiB"
            )));
        }
        let max_volumes = max_volumes.unwrap_or(DEFAULT_MAX_VOLUMES);
        if max_volumes == 0 || max_volumes > MAX_MAX_VOLUMES {
            return Err(ThinError::InvalidArgument(format!(
                "volume limit {max_volumes} must be between 1 and {MAX_MAX_VOLUMES}"
            )));
        }
        let page = u64::from(page_size);
        let cs = u64::from(cluster_size);
        // Upper bound of the data clusters: every mapped cluster costs one pair in a checkpoint.
        let max_clusters = (device_bytes / cs).min(MAX_CLUSTERS);
        let ckpt_cap = round_up(
            CKPT_HEADER as u64
                + u64::from(max_volumes) * CKPT_VOLUME as u64
                + max_clusters * CKPT_PAIR as u64,
            page,
        );
        let journal_bytes = match journal_bytes {
            Some(j) => {
                if j < page {
                    return Err(ThinError::InvalidArgument(format!(
                        "journal of {j} bytes is smaller than one {page}-byte page"
                    )));
                }
                round_up(j, page)
            }
            None => round_up(
                (device_bytes / 512).clamp(JOURNAL_MIN_DEFAULT, JOURNAL_MAX_DEFAULT),
                page,
            ),
        };
        let ckpt_off = [2 * page, 2 * page + ckpt_cap];
        let journal_off = 2 * page + 2 * ckpt_cap;
        let data_off = round_up(journal_off + journal_bytes, cs);
        let nclusters = device_bytes.saturating_sub(data_off) / cs;
        if nclusters == 0 {
            return Err(ThinError::DeviceTooSmall {
                device_bytes,
                metadata_bytes: data_off,
                cluster_size,
            });
        }
        Ok(Layout {
            block_size,
            page_size,
            cluster_size,
            max_volumes,
            device_bytes,
            ckpt_off,
            ckpt_cap,
            journal_off,
            journal_bytes,
            data_off,
            nclusters: nclusters.min(MAX_CLUSTERS),
        })
    }

    /// Number of pages in the journal.
    pub(crate) fn journal_pages(&self) -> u64 {
        self.journal_bytes / u64::from(self.page_size)
    }

    /// Checks the internal consistency of a layout read from disk.
    fn validate(&self) -> Result<(), String> {
        let page = u64::from(self.page_size);
        let cs = u64::from(self.cluster_size);
        let ok = self.block_size.is_power_of_two()
            && (512..=65536).contains(&self.block_size)
            && self.page_size == MIN_PAGE.max(self.block_size)
            && self.cluster_size.is_power_of_two()
            && self.cluster_size >= self.page_size
            && self.max_volumes >= 1
            && self.max_volumes <= MAX_MAX_VOLUMES
            && self.ckpt_off[0] == 2 * page
            && self.ckpt_cap.is_multiple_of(page)
            && self.ckpt_off[1] == self.ckpt_off[0] + self.ckpt_cap
            && self.journal_off == self.ckpt_off[1] + self.ckpt_cap
            && self.journal_bytes >= page
            && self.journal_bytes.is_multiple_of(page)
            && self.data_off >= self.journal_off + self.journal_bytes
            && self.data_off.is_multiple_of(cs)
            && self.nclusters >= 1
            && self.nclusters <= MAX_CLUSTERS
            && self
                .nclusters
                .checked_mul(cs)
                .and_then(|d| d.checked_add(self.data_off))
                .is_some_and(|end| end <= self.device_bytes)
            && self.ckpt_cap
                >= CKPT_HEADER as u64
                    + u64::from(self.max_volumes) * CKPT_VOLUME as u64
                    + self.nclusters * CKPT_PAIR as u64;
        if ok {
            Ok(())
        } else {
            Err(format!("inconsistent layout in superblock: {self:?}"))
        }
    }
}

/// Little-endian writer into a fixed buffer.
struct Put<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Put<'a> {
    fn new(buf: &'a mut [u8]) -> Put<'a> {
        Put { buf, pos: 0 }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Bounds-checked little-endian reader; a short read is a corruption.
pub(crate) struct Get<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Get<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Get<'a> {
        Get { buf, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("truncated structure at byte {}", self.pos))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.bytes(n).map(drop)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// The superblock: layout plus the pointer to the active checkpoint and journal epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub store_uuid: [u8; 16],
    /// Incremented by every checkpoint. Slot and checkpoint area are `generation % 2`; journal
    /// pages of this epoch carry it.
    pub generation: u64,
    pub layout: Layout,
    /// Length in bytes of the checkpoint in area `generation % 2`.
    pub ckpt_len: u64,
    /// CRC32C of those bytes.
    pub ckpt_crc: u32,
    /// Sequence number of the first journal page of this epoch.
    pub journal_start_seq: u64,
}

/// What a superblock slot holds.
#[derive(Debug)]
pub(crate) enum SbSlot {
    /// No Ferrite thin magic: never formatted (or wiped).
    Empty,
    /// A valid superblock.
    Valid(Superblock),
    /// The magic is there but the rest is not usable (torn write, corruption, other version).
    Invalid(String),
}

impl Superblock {
    /// Encodes into a full slot of `page_size` bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let l = &self.layout;
        let mut page = vec![0u8; l.page_size as usize];
        {
            let mut p = Put::new(&mut page[..SB_BYTES]);
            p.bytes(&SB_MAGIC);
            p.u32(VERSION);
            p.u32(0); // crc, filled below
            p.bytes(&self.store_uuid);
            p.u64(self.generation);
            p.u32(l.block_size);
            p.u32(l.page_size);
            p.u32(l.cluster_size);
            p.u32(l.max_volumes);
            p.u64(l.device_bytes);
            p.u64(l.ckpt_off[0]);
            p.u64(l.ckpt_off[1]);
            p.u64(l.ckpt_cap);
            p.u64(l.journal_off);
            p.u64(l.journal_bytes);
            p.u64(l.data_off);
            p.u64(l.nclusters);
            p.u64(self.ckpt_len);
            p.u32(self.ckpt_crc);
            p.u32(0);
            p.u64(self.journal_start_seq);
        }
        let crc = crc32c::crc32c(&page[..SB_BYTES]);
        page[12..16].copy_from_slice(&crc.to_le_bytes());
        page
    }

    /// Decodes a slot (at least [`SB_BYTES`] long).
    pub(crate) fn decode(slot: &[u8]) -> SbSlot {
        if slot.len() < SB_BYTES || slot[..8] != SB_MAGIC {
            return SbSlot::Empty;
        }
        let mut copy = [0u8; SB_BYTES];
        copy.copy_from_slice(&slot[..SB_BYTES]);
        let stored = u32::from_le_bytes([copy[12], copy[13], copy[14], copy[15]]);
        copy[12..16].fill(0);
        if crc32c::crc32c(&copy) != stored {
            return SbSlot::Invalid("superblock checksum mismatch".into());
        }
        match Self::decode_fields(&slot[..SB_BYTES]) {
            Ok(sb) => SbSlot::Valid(sb),
            Err(e) => SbSlot::Invalid(e),
        }
    }

    fn decode_fields(b: &[u8]) -> Result<Superblock, String> {
        let mut g = Get::new(b);
        g.skip(8)?;
        let version = g.u32()?;
        if version != VERSION {
            return Err(format!(
                "unsupported thin store version {version} (expected {VERSION})"
            ));
        }
        g.skip(4)?;
        let store_uuid = g.array()?;
        let generation = g.u64()?;
        let layout = Layout {
            block_size: g.u32()?,
            page_size: g.u32()?,
            cluster_size: g.u32()?,
            max_volumes: g.u32()?,
            device_bytes: g.u64()?,
            ckpt_off: [g.u64()?, g.u64()?],
            ckpt_cap: g.u64()?,
            journal_off: g.u64()?,
            journal_bytes: g.u64()?,
            data_off: g.u64()?,
            nclusters: g.u64()?,
        };
        layout.validate()?;
        let ckpt_len = g.u64()?;
        let ckpt_crc = g.u32()?;
        g.skip(4)?;
        let journal_start_seq = g.u64()?;
        if ckpt_len < CKPT_HEADER as u64 || ckpt_len > layout.ckpt_cap {
            return Err(format!("checkpoint length {ckpt_len} out of bounds"));
        }
        Ok(Superblock {
            store_uuid,
            generation,
            layout,
            ckpt_len,
            ckpt_crc,
            journal_start_seq,
        })
    }
}

/// One metadata journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A volume was created.
    Create {
        id: u32,
        uuid: [u8; 16],
        size: u64,
        thin: bool,
        name: String,
    },
    /// A volume was destroyed; all its clusters are free.
    Destroy { id: u32 },
    /// A volume grew to `size` bytes.
    Resize { id: u32, size: u64 },
    /// Virtual cluster `vc` of volume `id` now lives in physical cluster `pc`.
    Map { id: u32, vc: u32, pc: u32 },
    /// Virtual clusters `first..first + count` of volume `id` are unmapped (their physical
    /// clusters are free).
    Unmap { id: u32, first: u32, count: u32 },
}

const REC_CREATE: u8 = 1;
const REC_DESTROY: u8 = 2;
const REC_RESIZE: u8 = 3;
const REC_MAP: u8 = 4;
const REC_UNMAP: u8 = 5;

impl Record {
    /// Encoded size: 2-byte header (kind, payload length) plus payload.
    pub(crate) fn encoded_len(&self) -> usize {
        2 + match self {
            Record::Create { name, .. } => 4 + 16 + 8 + 1 + 1 + name.len(),
            Record::Destroy { .. } => 4,
            Record::Resize { .. } => 12,
            Record::Map { .. } => 12,
            Record::Unmap { .. } => 12,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        let mut p = Put::new(&mut out[start..]);
        // The payload length is at most 4+16+8+1+1+63 = 93 bytes: fits a u8.
        let payload = (self.encoded_len() - 2) as u8;
        match self {
            Record::Create {
                id,
                uuid,
                size,
                thin,
                name,
            } => {
                p.u8(REC_CREATE);
                p.u8(payload);
                p.u32(*id);
                p.bytes(uuid);
                p.u64(*size);
                p.u8(u8::from(*thin));
                // Names are validated to at most 63 bytes.
                p.u8(name.len() as u8);
                p.bytes(name.as_bytes());
            }
            Record::Destroy { id } => {
                p.u8(REC_DESTROY);
                p.u8(payload);
                p.u32(*id);
            }
            Record::Resize { id, size } => {
                p.u8(REC_RESIZE);
                p.u8(payload);
                p.u32(*id);
                p.u64(*size);
            }
            Record::Map { id, vc, pc } => {
                p.u8(REC_MAP);
                p.u8(payload);
                p.u32(*id);
                p.u32(*vc);
                p.u32(*pc);
            }
            Record::Unmap { id, first, count } => {
                p.u8(REC_UNMAP);
                p.u8(payload);
                p.u32(*id);
                p.u32(*first);
                p.u32(*count);
            }
        }
    }

    fn decode(g: &mut Get<'_>) -> Result<Record, String> {
        let kind = g.u8()?;
        let len = usize::from(g.u8()?);
        let payload = g.bytes(len)?;
        let mut p = Get::new(payload);
        let rec = match kind {
            REC_CREATE => {
                let id = p.u32()?;
                let uuid = p.array()?;
                let size = p.u64()?;
                let thin = match p.u8()? {
                    0 => false,
                    1 => true,
                    t => return Err(format!("bad thin flag {t}")),
                };
                let nlen = usize::from(p.u8()?);
                if nlen > MAX_NAME {
                    return Err(format!("volume name of {nlen} bytes"));
                }
                let name = String::from_utf8(p.bytes(nlen)?.to_vec())
                    .map_err(|_| "volume name is not UTF-8".to_string())?;
                Record::Create {
                    id,
                    uuid,
                    size,
                    thin,
                    name,
                }
            }
            REC_DESTROY => Record::Destroy { id: p.u32()? },
            REC_RESIZE => Record::Resize {
                id: p.u32()?,
                size: p.u64()?,
            },
            REC_MAP => Record::Map {
                id: p.u32()?,
                vc: p.u32()?,
                pc: p.u32()?,
            },
            REC_UNMAP => Record::Unmap {
                id: p.u32()?,
                first: p.u32()?,
                count: p.u32()?,
            },
            k => return Err(format!("unknown journal record kind {k}")),
        };
        if p.remaining() != 0 {
            return Err(format!(
                "journal record kind {kind} has {len} payload bytes"
            ));
        }
        Ok(rec)
    }
}

/// Identity of a journal epoch: pages are accepted only if they carry both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch {
    pub store_uuid: [u8; 16],
    pub generation: u64,
}

/// Packs `records` into whole journal pages numbered from `first_seq`. Returns the pages
/// concatenated (a multiple of `page_size` bytes) and their count. An empty batch yields no
/// pages.
pub(crate) fn encode_pages(
    records: &[Record],
    epoch: Epoch,
    first_seq: u64,
    page_size: u32,
) -> (Vec<u8>, u64) {
    let page = page_size as usize;
    let mut out = Vec::new();
    let mut count = 0u64;
    let mut i = 0;
    while i < records.len() {
        let mut body = Vec::with_capacity(page - JOURNAL_HEADER);
        let mut nrec = 0u32;
        while i < records.len() && body.len() + records[i].encoded_len() <= page - JOURNAL_HEADER {
            records[i].encode(&mut body);
            nrec += 1;
            i += 1;
        }
        let start = out.len();
        out.resize(start + page, 0);
        let pg = &mut out[start..];
        {
            let mut p = Put::new(&mut pg[..JOURNAL_HEADER]);
            p.bytes(&JOURNAL_MAGIC);
            p.u32(0); // crc
            p.bytes(&epoch.store_uuid);
            p.u64(epoch.generation);
            p.u64(first_seq + count);
            // A page body is smaller than the page (at most 64 KiB).
            p.u32(body.len() as u32);
            p.u32(nrec);
        }
        pg[JOURNAL_HEADER..JOURNAL_HEADER + body.len()].copy_from_slice(&body);
        let crc = crc32c::crc32c(pg);
        pg[4..8].copy_from_slice(&crc.to_le_bytes());
        count += 1;
    }
    (out, count)
}

/// Number of pages [`encode_pages`] would produce (without encoding).
pub(crate) fn pages_needed(records: &[Record], page_size: u32) -> u64 {
    let room = page_size as usize - JOURNAL_HEADER;
    let mut pages = 0u64;
    let mut used = room; // forces a new page for the first record
    for r in records {
        let n = r.encoded_len();
        if used + n > room {
            pages += 1;
            used = 0;
        }
        used += n;
    }
    pages
}

/// Decodes one journal page. `Ok(None)` means "the journal ends here": wrong magic, checksum
/// (a torn or never-written page), store, epoch or sequence number. A page that passes those
/// checks but holds malformed records is corruption.
pub(crate) fn decode_page(
    page: &[u8],
    epoch: Epoch,
    expected_seq: u64,
) -> Result<Option<Vec<Record>>, String> {
    if page.len() < JOURNAL_HEADER || page[..4] != JOURNAL_MAGIC {
        return Ok(None);
    }
    let stored = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    let mut crc = crc32c::crc32c(&page[..4]);
    crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc = crc32c::crc32c_append(crc, &page[8..]);
    if crc != stored {
        return Ok(None);
    }
    let mut g = Get::new(&page[8..JOURNAL_HEADER]);
    let uuid: [u8; 16] = g.array()?;
    let generation = g.u64()?;
    let seq = g.u64()?;
    if uuid != epoch.store_uuid || generation != epoch.generation || seq != expected_seq {
        return Ok(None);
    }
    let used = g.u32()? as usize;
    let nrec = g.u32()?;
    if used > page.len() - JOURNAL_HEADER {
        return Err(format!("journal page {seq} claims {used} bytes of records"));
    }
    let mut body = Get::new(&page[JOURNAL_HEADER..JOURNAL_HEADER + used]);
    let mut records = Vec::with_capacity(nrec as usize);
    for _ in 0..nrec {
        records.push(Record::decode(&mut body).map_err(|e| format!("journal page {seq}: {e}"))?);
    }
    if body.remaining() != 0 {
        return Err(format!(
            "journal page {seq}: trailing bytes after {nrec} records"
        ));
    }
    Ok(Some(records))
}

/// A volume in a metadata image (checkpoint being loaded or journal being replayed).
#[derive(Debug)]
pub(crate) struct VolImage {
    pub uuid: [u8; 16],
    pub name: String,
    pub size: u64,
    pub thin: bool,
    pub map: ClusterMap,
}

/// The complete metadata state: what a checkpoint holds and what replay produces.
#[derive(Debug)]
pub(crate) struct Image {
    pub next_vol_id: u32,
    pub volumes: HashMap<u32, VolImage>,
    /// Physical clusters in use (derived: the union of all volume maps).
    pub used: ClusterBitmap,
    cluster_size: u64,
    block_size: u64,
}

/// Number of clusters a volume of `size` bytes spans.
pub(crate) fn vclusters(size: u64, cluster_size: u32) -> u64 {
    size.div_ceil(u64::from(cluster_size))
}

impl Image {
    /// The image of a freshly formatted store.
    pub(crate) fn empty(layout: &Layout) -> Image {
        Image {
            next_vol_id: 1,
            volumes: HashMap::new(),
            used: ClusterBitmap::new(layout.nclusters),
            cluster_size: u64::from(layout.cluster_size),
            block_size: u64::from(layout.block_size),
        }
    }

    fn check_size(&self, size: u64) -> Result<u64, String> {
        if size == 0 || !size.is_multiple_of(self.block_size) {
            return Err(format!(
                "volume size {size} is not a non-zero multiple of the block size"
            ));
        }
        let vc = size.div_ceil(self.cluster_size);
        if vc > MAX_CLUSTERS {
            return Err(format!("volume size {size} spans too many clusters"));
        }
        Ok(vc)
    }

    /// Applies one journal record, validating it against the current state.
    pub(crate) fn apply(&mut self, rec: Record) -> Result<(), String> {
        match rec {
            Record::Create {
                id,
                uuid,
                size,
                thin,
                name,
            } => {
                let vc = self.check_size(size)?;
                if id < self.next_vol_id || self.volumes.values().any(|v| v.uuid == uuid) {
                    return Err(format!("create of volume id {id}: id or uuid already used"));
                }
                self.next_vol_id = id
                    .checked_add(1)
                    .ok_or_else(|| "volume id space exhausted".to_string())?;
                self.volumes.insert(
                    id,
                    VolImage {
                        uuid,
                        name,
                        size,
                        thin,
                        map: ClusterMap::new(vc),
                    },
                );
            }
            Record::Destroy { id } => {
                let v = self
                    .volumes
                    .remove(&id)
                    .ok_or_else(|| format!("destroy of unknown volume id {id}"))?;
                for (_, pc) in v.map.iter() {
                    self.used.clear(pc);
                }
            }
            Record::Resize { id, size } => {
                let vc = self.check_size(size)?;
                let v = self
                    .volumes
                    .get_mut(&id)
                    .ok_or_else(|| format!("resize of unknown volume id {id}"))?;
                if size < v.size {
                    return Err(format!("volume id {id} shrinks from {} to {size}", v.size));
                }
                v.size = size;
                v.map.grow(vc);
            }
            Record::Map { id, vc, pc } => {
                let v = self
                    .volumes
                    .get_mut(&id)
                    .ok_or_else(|| format!("map for unknown volume id {id}"))?;
                if u64::from(vc) >= v.map.len() || u64::from(pc) >= self.used.len() {
                    return Err(format!("map {id}:{vc} -> {pc} out of range"));
                }
                if v.map.get(u64::from(vc)).is_some() {
                    return Err(format!("map {id}:{vc} -> {pc}: already mapped"));
                }
                if !self.used.set(pc) {
                    return Err(format!("map {id}:{vc} -> {pc}: cluster already in use"));
                }
                v.map.set(u64::from(vc), pc);
            }
            Record::Unmap { id, first, count } => {
                let v = self
                    .volumes
                    .get_mut(&id)
                    .ok_or_else(|| format!("unmap for unknown volume id {id}"))?;
                let end = u64::from(first) + u64::from(count);
                if end > v.map.len() {
                    return Err(format!("unmap {id}:{first}+{count} out of range"));
                }
                for vc in u64::from(first)..end {
                    if let Some(pc) = v.map.clear(vc) {
                        self.used.clear(pc);
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses a checkpoint written by [`CheckpointWriter`].
    pub(crate) fn decode_checkpoint(
        buf: &[u8],
        layout: &Layout,
        store_uuid: &[u8; 16],
        generation: u64,
    ) -> Result<Image, String> {
        let mut g = Get::new(buf);
        if g.array::<8>()? != CKPT_MAGIC {
            return Err("checkpoint magic missing".into());
        }
        if &g.array::<16>()? != store_uuid {
            return Err("checkpoint belongs to another store".into());
        }
        let ckpt_gen = g.u64()?;
        if ckpt_gen != generation {
            return Err(format!(
                "checkpoint generation {ckpt_gen}, superblock {generation}"
            ));
        }
        let _last_seq = g.u64()?;
        let next_vol_id = g.u32()?;
        let nvol = g.u32()?;
        let total = g.u64()?;
        if total != buf.len() as u64 {
            return Err(format!("checkpoint length {total} != {}", buf.len()));
        }
        g.skip(CKPT_HEADER - 56)?;
        if nvol > layout.max_volumes {
            return Err(format!(
                "checkpoint holds {nvol} volumes, limit {}",
                layout.max_volumes
            ));
        }
        let mut img = Image::empty(layout);
        for _ in 0..nvol {
            let id = g.u32()?;
            let thin = g.u8()? != 0;
            let nlen = usize::from(g.u8()?);
            g.skip(2)?;
            let uuid: [u8; 16] = g.array()?;
            let size = g.u64()?;
            let nmapped = g.u64()?;
            let name_bytes = g.bytes(64)?;
            g.skip(CKPT_VOLUME - 104)?;
            if nlen > MAX_NAME {
                return Err(format!("volume id {id}: name of {nlen} bytes"));
            }
            let name = String::from_utf8(name_bytes[..nlen].to_vec())
                .map_err(|_| format!("volume id {id}: name is not UTF-8"))?;
            img.apply(Record::Create {
                id,
                uuid,
                size,
                thin,
                name,
            })?;
            if nmapped > (g.remaining() / CKPT_PAIR) as u64 {
                return Err(format!("volume id {id}: {nmapped} pairs do not fit"));
            }
            for _ in 0..nmapped {
                let vc = g.u32()?;
                let pc = g.u32()?;
                img.apply(Record::Map { id, vc, pc })?;
            }
        }
        if g.remaining() != 0 {
            return Err("trailing bytes after the last checkpoint volume".into());
        }
        if next_vol_id < img.next_vol_id {
            return Err(format!(
                "checkpoint next volume id {next_vol_id} already used"
            ));
        }
        img.next_vol_id = next_vol_id;
        Ok(img)
    }
}

/// Serialises a checkpoint: header, then each volume entry followed by its mapping pairs.
pub(crate) struct CheckpointWriter {
    buf: Vec<u8>,
    nvol: u32,
}

impl CheckpointWriter {
    pub(crate) fn new(
        store_uuid: &[u8; 16],
        generation: u64,
        last_seq: u64,
        next_vol_id: u32,
    ) -> Self {
        let mut buf = vec![0u8; CKPT_HEADER];
        let mut p = Put::new(&mut buf);
        p.bytes(&CKPT_MAGIC);
        p.bytes(store_uuid);
        p.u64(generation);
        p.u64(last_seq);
        p.u32(next_vol_id);
        CheckpointWriter { buf, nvol: 0 }
    }

    /// Appends a volume and its mappings.
    pub(crate) fn volume(&mut self, id: u32, v: &VolumeEntryRef<'_>) {
        let start = self.buf.len();
        self.buf.resize(start + CKPT_VOLUME, 0);
        let mut p = Put::new(&mut self.buf[start..]);
        p.u32(id);
        p.u8(u8::from(v.thin));
        // Names are validated to at most 63 bytes.
        p.u8(v.name.len() as u8);
        p.bytes(&[0, 0]);
        p.bytes(v.uuid);
        p.u64(v.size);
        p.u64(v.map.mapped());
        p.bytes(v.name.as_bytes());
        for (vc, pc) in v.map.iter() {
            // Virtual cluster indices are bounded by MAX_CLUSTERS and fit a u32.
            self.buf.extend_from_slice(&(vc as u32).to_le_bytes());
            self.buf.extend_from_slice(&pc.to_le_bytes());
        }
        self.nvol += 1;
    }

    /// Finishes the checkpoint: returns its bytes (unpadded).
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let total = self.buf.len() as u64;
        self.buf[44..48].copy_from_slice(&self.nvol.to_le_bytes());
        self.buf[48..56].copy_from_slice(&total.to_le_bytes());
        self.buf
    }
}

/// Borrowed view of a volume for [`CheckpointWriter::volume`].
pub(crate) struct VolumeEntryRef<'a> {
    pub uuid: &'a [u8; 16],
    pub name: &'a str,
    pub size: u64,
    pub thin: bool,
    pub map: &'a ClusterMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::compute(64 << 20, 512, 64 << 10, None, Some(16)).unwrap()
    }

    #[test]
    fn layout_is_consistent_and_sized() {
        let l = layout();
        l.validate().unwrap();
        assert_eq!(l.page_size, 4096);
        assert_eq!(l.data_off % (64 << 10), 0);
        assert!(l.nclusters > 900, "{l:?}");
        let l = Layout::compute(1 << 40, 4096, 1 << 20, None, None).unwrap();
        l.validate().unwrap();
        assert_eq!(l.journal_bytes, 64 << 20);
        // Metadata stays below 0.01% of a 1 TiB device.
        assert!(l.data_off < (1u64 << 40) / 10_000, "{l:?}");
        assert!(Layout::compute(1 << 20, 4096, 1 << 20, None, None).is_err());
        assert!(Layout::compute(64 << 20, 4096, 1000, None, None).is_err());
        assert!(Layout::compute(64 << 20, 4096, 2048, None, None).is_err());
        assert!(Layout::compute(64 << 20, 65536, 65536, None, None).is_ok());
    }

    #[test]
    fn superblock_round_trip_and_torn_detection() {
        let sb = Superblock {
            store_uuid: [7; 16],
            generation: 42,
            layout: layout(),
            ckpt_len: 64,
            ckpt_crc: 0xdead_beef,
            journal_start_seq: 99,
        };
        let page = sb.encode();
        assert_eq!(page.len(), 4096);
        match Superblock::decode(&page) {
            SbSlot::Valid(d) => assert_eq!(d, sb),
            other => panic!("{other:?}"),
        }
        let mut torn = page.clone();
        torn[40] ^= 1;
        assert!(matches!(Superblock::decode(&torn), SbSlot::Invalid(_)));
        assert!(matches!(Superblock::decode(&[0u8; 4096]), SbSlot::Empty));
    }

    #[test]
    fn journal_pages_round_trip_and_reject_foreign_pages() {
        let epoch = Epoch {
            store_uuid: [1; 16],
            generation: 3,
        };
        let mut recs = vec![Record::Create {
            id: 1,
            uuid: [9; 16],
            size: 1 << 20,
            thin: true,
            name: "vol-1".into(),
        }];
        for i in 0..700 {
            recs.push(Record::Map {
                id: 1,
                vc: i,
                pc: i + 5,
            });
        }
        recs.push(Record::Unmap {
            id: 1,
            first: 2,
            count: 3,
        });
        recs.push(Record::Resize {
            id: 1,
            size: 2 << 20,
        });
        recs.push(Record::Destroy { id: 1 });
        let (bytes, n) = encode_pages(&recs, epoch, 10, 4096);
        assert_eq!(n, pages_needed(&recs, 4096));
        assert_eq!(bytes.len() as u64, n * 4096);
        assert!(n >= 3);
        let mut out = Vec::new();
        for (i, page) in bytes.chunks(4096).enumerate() {
            out.extend(decode_page(page, epoch, 10 + i as u64).unwrap().unwrap());
        }
        assert_eq!(out, recs);
        // Wrong sequence, epoch or store: end of journal, not an error.
        assert!(decode_page(&bytes[..4096], epoch, 11).unwrap().is_none());
        let other = Epoch {
            generation: 4,
            ..epoch
        };
        assert!(decode_page(&bytes[..4096], other, 10).unwrap().is_none());
        let other = Epoch {
            store_uuid: [2; 16],
            ..epoch
        };
        assert!(decode_page(&bytes[..4096], other, 10).unwrap().is_none());
        // Torn page: checksum mismatch ends the journal.
        let mut torn = bytes[..4096].to_vec();
        torn[2048..].fill(0);
        assert!(decode_page(&torn, epoch, 10).unwrap().is_none());
        assert_eq!(pages_needed(&[], 4096), 0);
        assert_eq!(encode_pages(&[], epoch, 1, 4096).1, 0);
    }

    #[test]
    fn image_validates_records() {
        let l = layout();
        let mut img = Image::empty(&l);
        let create = Record::Create {
            id: 1,
            uuid: [1; 16],
            size: 1 << 20,
            thin: true,
            name: "a".into(),
        };
        img.apply(create.clone()).unwrap();
        assert!(img.apply(create).is_err(), "duplicate id");
        img.apply(Record::Map {
            id: 1,
            vc: 0,
            pc: 3,
        })
        .unwrap();
        assert!(
            img.apply(Record::Map {
                id: 1,
                vc: 0,
                pc: 4
            })
            .is_err(),
            "double map"
        );
        assert!(
            img.apply(Record::Map {
                id: 1,
                vc: 1,
                pc: 3
            })
            .is_err(),
            "double use"
        );
        assert!(
            img.apply(Record::Map {
                id: 1,
                vc: 16,
                pc: 4
            })
            .is_err(),
            "range"
        );
        assert!(
            img.apply(Record::Resize { id: 1, size: 4096 }).is_err(),
            "shrink"
        );
        img.apply(Record::Unmap {
            id: 1,
            first: 0,
            count: 16,
        })
        .unwrap();
        assert!(!img.used.is_used(3));
        img.apply(Record::Map {
            id: 1,
            vc: 1,
            pc: 3,
        })
        .unwrap();
        img.apply(Record::Destroy { id: 1 }).unwrap();
        assert_eq!(img.used.used(), 0);
        assert!(img.apply(Record::Destroy { id: 1 }).is_err());
    }
}
