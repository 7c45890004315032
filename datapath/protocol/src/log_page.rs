//! Log pages: error information, SMART / health, changed namespace list, and the discovery
//! log page that lists the subsystems a host may connect to.

use crate::bytes::{get_str, get_u16, get_u64, put_str, put_u16, put_u32, put_u64};

/// Log page identifiers.
pub mod lid {
    pub const ERROR_INFO: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

/// Size of one error information log entry.
pub const ERROR_ENTRY_LEN: usize = 64;
/// Size of the SMART / health log.
pub const SMART_LEN: usize = 512;
/// Size of the firmware slot information log.
pub const FIRMWARE_SLOT_LEN: usize = 512;
/// Size of the changed namespace list log.
pub const CHANGED_NS_LEN: usize = 4096;
/// Size of the discovery log header and of each entry.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// One error information log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// Status field (as in a CQE, without the phase bit).
    pub status: u16,
    pub lba: u64,
    pub nsid: u32,
}

impl ErrorEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; ERROR_ENTRY_LEN];
        put_u64(&mut b, 0, self.error_count);
        put_u16(&mut b, 8, self.sqid);
        put_u16(&mut b, 10, self.cid);
        put_u16(&mut b, 12, self.status << 1);
        put_u16(&mut b, 14, 0xffff); // parameter error location: not specific to a field
        put_u64(&mut b, 16, self.lba);
        put_u32(&mut b, 24, self.nsid);
        out.extend_from_slice(&b);
    }
}

/// SMART / health information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartLog {
    /// Composite temperature in kelvins.
    pub temperature_k: u16,
    pub available_spare_pct: u8,
    pub spare_threshold_pct: u8,
    pub percent_used: u8,
    /// In thousands of 512-byte units, rounded up, as the spec counts them.
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_reads: u128,
    pub host_writes: u128,
    pub power_on_hours: u128,
    pub media_errors: u128,
    pub error_log_entries: u128,
}

impl SmartLog {
    /// Converts a byte count to data units (1000 x 512 bytes, rounded up).
    pub fn data_units(bytes: u64) -> u128 {
        u128::from(bytes / 512).div_ceil(1000)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SMART_LEN];
        b[0] = 0; // critical warning: none
        put_u16(&mut b, 1, self.temperature_k);
        b[3] = self.available_spare_pct;
        b[4] = self.spare_threshold_pct;
        b[5] = self.percent_used;
        let put128 =
            |b: &mut [u8], off: usize, v: u128| b[off..off + 16].copy_from_slice(&v.to_le_bytes());
        put128(&mut b, 32, self.data_units_read);
        put128(&mut b, 48, self.data_units_written);
        put128(&mut b, 64, self.host_reads);
        put128(&mut b, 80, self.host_writes);
        put128(&mut b, 128, self.power_on_hours);
        put128(&mut b, 160, self.media_errors);
        put128(&mut b, 176, self.error_log_entries);
        b
    }
}

/// Firmware slot information: slot 1 active, holding `revision`.
pub fn encode_firmware_slot(revision: &str) -> Vec<u8> {
    let mut b = vec![0u8; FIRMWARE_SLOT_LEN];
    b[0] = 1;
    put_str(&mut b, 8, 8, revision, b' ');
    b
}

/// Changed namespace list: up to 1024 NSIDs; more than that is reported as FFFFFFFFh.
pub fn encode_changed_ns_list(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; CHANGED_NS_LEN];
    if nsids.len() > CHANGED_NS_LEN / 4 {
        put_u32(&mut b, 0, 0xffff_ffff);
    } else {
        for (i, n) in nsids.iter().enumerate() {
            put_u32(&mut b, i * 4, *n);
        }
    }
    b
}

/// Discovery log entry subsystem types.
pub mod subtype {
    pub const REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport type: TCP.
pub const TRTYPE_TCP: u8 = 3;
/// Address families.
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;

/// One discovery log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    /// Admin max submission queue size.
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

impl DiscoveryEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = vec![0u8; DISCOVERY_ENTRY_LEN];
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(&mut b, 4, self.portid);
        put_u16(&mut b, 6, self.cntlid);
        put_u16(&mut b, 8, self.asqsz);
        put_str(&mut b, 32, 32, &self.trsvcid, b' ');
        put_str(&mut b, 256, 256, &self.subnqn, 0);
        put_str(&mut b, 512, 256, &self.traddr, b' ');
        // TSAS for TCP: security type none.
        b[768] = 0;
        out.extend_from_slice(&b);
    }

    pub fn decode(b: &[u8]) -> Option<DiscoveryEntry> {
        if b.len() < DISCOVERY_ENTRY_LEN {
            return None;
        }
        Some(DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: get_u16(b, 4),
            cntlid: get_u16(b, 6),
            asqsz: get_u16(b, 8),
            trsvcid: get_str(b, 32, 32),
            subnqn: get_str(b, 256, 256),
            traddr: get_str(b, 512, 256),
        })
    }
}

/// Encodes the whole discovery log page: header (generation counter, record count) and
/// entries.
pub fn encode_discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISCOVERY_HEADER_LEN];
    put_u64(&mut b, 0, genctr);
    put_u64(&mut b, 8, entries.len() as u64);
    put_u16(&mut b, 16, 0); // RECFMT
    for e in entries {
        e.encode(&mut b);
    }
    b
}

/// Decodes a discovery log page: (generation counter, entries present in `b`).
pub fn decode_discovery_log(b: &[u8]) -> Option<(u64, Vec<DiscoveryEntry>)> {
    if b.len() < 16 {
        return None;
    }
    let genctr = get_u64(b, 0);
    let numrec = get_u64(b, 8);
    let entries = b
        .get(DISCOVERY_HEADER_LEN..)
        .unwrap_or(&[])
        .chunks_exact(DISCOVERY_ENTRY_LEN)
        .take(usize::try_from(numrec).unwrap_or(usize::MAX))
        .filter_map(DiscoveryEntry::decode)
        .collect();
    Some((genctr, entries))
}

/// Returns the slice of `page` a Get Log Page with this offset and length asks for, zero
/// padded past the end of the page (as the spec requires for reads beyond the log).
/// `None` if the offset lies beyond the page or is not dword-aligned. Allocates `len` bytes:
/// callers bound `len` (the target caps it at MDTS) before calling.
pub fn window(page: &[u8], offset: u64, len: u64) -> Option<Vec<u8>> {
    if !offset.is_multiple_of(4) || offset > page.len() as u64 {
        return None;
    }
    let start = offset as usize;
    let len = usize::try_from(len).ok()?;
    let mut out = vec![0u8; len];
    let n = len.min(page.len() - start);
    out[..n].copy_from_slice(&page[start..start + n]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_round_trip() {
        let e = DiscoveryEntry {
            trtype: TRTYPE_TCP,
            adrfam: ADRFAM_IPV4,
            subtype: subtype::NVME,
            treq: 0,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: "nqn.2024-01.dev.ferrite:v".into(),
            traddr: "127.0.0.1".into(),
        };
        let page = encode_discovery_log(7, &[e.clone(), e.clone()]);
        assert_eq!(page.len(), 3 * 1024);
        assert_eq!(decode_discovery_log(&page), Some((7, vec![e.clone(), e])));
        // A header-only read sees the count.
        let (g, entries) = decode_discovery_log(&page[..16]).unwrap();
        assert_eq!((g, entries.len()), (7, 0));
    }

    #[test]
    fn window_bounds() {
        let page = vec![1u8; 16];
        assert_eq!(
            window(&page, 8, 16).unwrap(),
            [vec![1u8; 8], vec![0u8; 8]].concat()
        );
        assert!(window(&page, 20, 4).is_none());
        assert!(window(&page, 2, 4).is_none());
    }

    #[test]
    fn smart_units() {
        assert_eq!(SmartLog::data_units(0), 0);
        assert_eq!(SmartLog::data_units(512), 1);
        assert_eq!(SmartLog::data_units(512_000), 1);
        assert_eq!(SmartLog::data_units(512_001 + 511), 2);
        let b = SmartLog {
            temperature_k: 300,
            available_spare_pct: 100,
            ..Default::default()
        }
        .encode();
        assert_eq!(get_u16(&b, 1), 300);
    }
}
