//! Identify data structures (4 KiB each): controller, namespace, active namespace list,
//! namespace identification descriptors, and the command-set specific pages Linux asks for.

use crate::bytes::{get_str, get_u16, get_u32, get_u64, put_str, put_u16, put_u32, put_u64};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
}

/// Controller type reported in Identify Controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerType {
    Io = 1,
    Discovery = 2,
}

/// The Identify Controller fields Ferrite reports (and the host library reads back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size as a power of two of 4 KiB pages (0: no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    /// Optional asynchronous events supported (bit 8: namespace attribute notices).
    pub oaes: u32,
    pub cntrltype: ControllerType,
    /// Abort command limit (0's based).
    pub acl: u8,
    /// Asynchronous event request limit (0's based).
    pub aerl: u8,
    /// Log page attributes (bit 2: extended data for Get Log Page).
    pub lpa: u8,
    /// Error log page entries (0's based).
    pub elpe: u8,
    /// Keep-alive support granularity in 100 ms units (0: not supported).
    pub kas: u16,
    pub maxcmd: u16,
    /// Number of namespaces (highest valid NSID).
    pub nn: u32,
    /// Optional NVM command support (bit 0 compare, bit 2 DSM, bit 3 write zeroes).
    pub oncs: u16,
    /// Volatile write cache present.
    pub vwc: bool,
    /// SGL support (bits 1:0 = 01b: supported).
    pub sgls: u32,
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units.
    pub iorcsz: u32,
    /// Maximum SGL data block descriptors per command.
    pub msdbd: u8,
    /// Controller multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
}

/// Optional NVM command support bits.
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

impl IdentifyController {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u16(&mut b, 0, self.vid);
        put_u16(&mut b, 2, self.ssvid);
        put_str(&mut b, 4, 20, &self.serial, b' ');
        put_str(&mut b, 24, 40, &self.model, b' ');
        put_str(&mut b, 64, 8, &self.firmware, b' ');
        b[72] = 0; // RAB
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(&mut b, 78, self.cntlid);
        put_u32(&mut b, 80, self.version);
        put_u32(&mut b, 92, self.oaes);
        b[111] = self.cntrltype as u8;
        put_u16(&mut b, 256, 0); // OACS: no optional admin commands
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = 0x3; // FRMW: slot 1 read-only, one slot
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[263] = 0; // NPSS: one power state
        put_u16(&mut b, 320, self.kas);
        b[512] = 0x66; // SQES: 64-byte entries
        b[513] = 0x44; // CQES: 16-byte entries
        put_u16(&mut b, 514, self.maxcmd);
        put_u32(&mut b, 516, self.nn);
        put_u16(&mut b, 520, self.oncs);
        // VWC: present, and Flush with NSID FFFFFFFFh supported (bits 2:1 = 11b).
        b[525] = if self.vwc { 0x07 } else { 0x00 };
        put_u32(&mut b, 536, self.sgls);
        put_str(&mut b, 768, 255, &self.subnqn, 0);
        put_u32(&mut b, 1792, self.ioccsz);
        put_u32(&mut b, 1796, self.iorcsz);
        put_u16(&mut b, 1800, 0); // ICDOFF
        b[1802] = 0; // FCATT: dynamic controller model
        b[1803] = self.msdbd;
        // Power state 0: max power 25.00 W (centiwatts), entry/exit latencies unreported.
        put_u16(&mut b, 2048, 2500);
        b
    }

    pub fn decode(b: &[u8]) -> Option<IdentifyController> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        Some(IdentifyController {
            vid: get_u16(b, 0),
            ssvid: get_u16(b, 2),
            serial: get_str(b, 4, 20),
            model: get_str(b, 24, 40),
            firmware: get_str(b, 64, 8),
            mdts: b[77],
            cntlid: get_u16(b, 78),
            version: get_u32(b, 80),
            oaes: get_u32(b, 92),
            cntrltype: if b[111] == 2 {
                ControllerType::Discovery
            } else {
                ControllerType::Io
            },
            acl: b[258],
            aerl: b[259],
            lpa: b[261],
            elpe: b[262],
            kas: get_u16(b, 320),
            maxcmd: get_u16(b, 514),
            nn: get_u32(b, 516),
            oncs: get_u16(b, 520),
            vwc: b[525] & 1 != 0,
            sgls: get_u32(b, 536),
            subnqn: get_str(b, 768, 256),
            ioccsz: get_u32(b, 1792),
            iorcsz: get_u32(b, 1796),
            msdbd: b[1803],
            cmic: b[76],
        })
    }
}

/// The Identify Namespace fields Ferrite reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Size in logical blocks.
    pub nsze: u64,
    /// Capacity in logical blocks.
    pub ncap: u64,
    /// Blocks in use (allocated).
    pub nuse: u64,
    /// Namespace features (bit 0: thin provisioning).
    pub nsfeat: u8,
    /// Namespace multi-path and sharing (bit 0: may be shared).
    pub nmic: u8,
    /// Deallocate logical block features: bits 2:0 = 001b, deallocated blocks read as
    /// zeroes; bit 3: Write Zeroes supports DEAC.
    pub dlfeat: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// log2 of the logical block size.
    pub lbads: u8,
}

impl IdentifyNamespace {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        put_u64(&mut b, 0, self.nsze);
        put_u64(&mut b, 8, self.ncap);
        put_u64(&mut b, 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = 0; // NLBAF: one format
        b[26] = 0; // FLBAS: format 0, no metadata
        b[30] = self.nmic;
        b[33] = self.dlfeat;
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        // LBA format 0: no metadata, LBADS, relative performance best.
        b[128 + 2] = self.lbads;
        b
    }

    pub fn decode(b: &[u8]) -> Option<IdentifyNamespace> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        let flbas = usize::from(b[26] & 0xf);
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        Some(IdentifyNamespace {
            nsze: get_u64(b, 0),
            ncap: get_u64(b, 8),
            nuse: get_u64(b, 16),
            nsfeat: b[24],
            nmic: b[30],
            dlfeat: b[33],
            nguid,
            eui64,
            lbads: b[128 + flbas * 4 + 2],
        })
    }
}

/// Namespace identification descriptor types.
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Encodes a namespace identification descriptor list (CNS 03h).
pub fn encode_ns_descriptors(nguid: &[u8; 16], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut off = 0;
    for (t, id) in [
        (nidt::NGUID, &nguid[..]),
        (nidt::UUID, &uuid[..]),
        (nidt::CSI, &[0u8][..]),
    ] {
        b[off] = t;
        b[off + 1] = id.len() as u8;
        b[off + 4..off + 4 + id.len()].copy_from_slice(id);
        off += 4 + id.len();
    }
    b
}

/// Decodes a namespace identification descriptor list into (type, id) pairs.
pub fn decode_ns_descriptors(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= b.len() {
        let (t, l) = (b[off], usize::from(b[off + 1]));
        if t == 0 || l == 0 || off + 4 + l > b.len() {
            break;
        }
        out.push((t, b[off + 4..off + 4 + l].to_vec()));
        off += 4 + l;
    }
    out
}

/// Encodes an active namespace ID list (CNS 02h): the NSIDs greater than `after`, ascending,
/// at most 1024.
pub fn encode_active_ns_list(nsids: impl IntoIterator<Item = u32>, after: u32) -> Vec<u8> {
    let mut ids: Vec<u32> = nsids.into_iter().filter(|&n| n > after).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut b = vec![0u8; IDENTIFY_LEN];
    for (i, id) in ids.into_iter().take(IDENTIFY_LEN / 4).enumerate() {
        put_u32(&mut b, i * 4, id);
    }
    b
}

/// Decodes an active namespace ID list.
pub fn decode_active_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| get_u32(c, 0))
        .take_while(|&n| n != 0)
        .collect()
}

/// I/O command set independent Identify Namespace (CNS 08h).
pub fn encode_cs_independent_namespace(nmic: u8) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[2] = nmic;
    b[6] = 1; // NSTAT: namespace ready
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrl() -> IdentifyController {
        IdentifyController {
            vid: 0,
            ssvid: 0,
            serial: "ferrite0001".into(),
            model: "Ferrite".into(),
            firmware: "0.1.0".into(),
            mdts: 5,
            cntlid: 3,
            version: 0x10300,
            oaes: 1 << 8,
            cntrltype: ControllerType::Io,
            acl: 3,
            aerl: 3,
            lpa: 1 << 2,
            elpe: 0,
            kas: 1,
            maxcmd: 128,
            nn: 4,
            oncs: oncs::DSM | oncs::WRITE_ZEROES,
            vwc: true,
            sgls: 1 | (1 << 20),
            subnqn: "nqn.2024-01.dev.ferrite:x".into(),
            ioccsz: 516,
            iorcsz: 1,
            msdbd: 1,
            cmic: 2,
        }
    }

    #[test]
    fn controller_round_trip() {
        let c = ctrl();
        let b = c.encode();
        assert_eq!(b.len(), IDENTIFY_LEN);
        assert_eq!(IdentifyController::decode(&b), Some(c));
        assert_eq!(&b[4..15], b"ferrite0001");
        assert_eq!(b[15], b' ');
    }

    #[test]
    fn namespace_round_trip() {
        let n = IdentifyNamespace {
            nsze: 1000,
            ncap: 1000,
            nuse: 10,
            nsfeat: 1,
            nmic: 1,
            dlfeat: 9,
            nguid: [5; 16],
            eui64: [6; 8],
            lbads: 12,
        };
        assert_eq!(IdentifyNamespace::decode(&n.encode()), Some(n));
    }

    #[test]
    fn lists() {
        let b = encode_active_ns_list([3, 1, 2], 1);
        assert_eq!(decode_active_ns_list(&b), vec![2, 3]);
        let d = decode_ns_descriptors(&encode_ns_descriptors(&[1; 16], &[2; 16]));
        assert_eq!(
            d,
            vec![
                (nidt::NGUID, vec![1; 16]),
                (nidt::UUID, vec![2; 16]),
                (nidt::CSI, vec![0])
            ]
        );
        assert!(decode_ns_descriptors(&[2, 200, 0, 0, 1]).is_empty());
    }
}
