//! NVMe submission queue entries (64-byte commands), the SGL data descriptor NVMe/TCP uses,
//! opcodes, and typed views of the fields of the commands Ferrite handles.

use crate::bytes::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Size of a submission queue entry.
pub const SQE_LEN: usize = 64;

/// Admin command opcodes.
pub mod admin_opcode {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands share this opcode; `fctype` selects the command.
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set I/O opcodes.
pub mod io_opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const FABRICS: u8 = 0x7F;
}

/// Fabrics command types (`fctype`, byte 4 of a fabrics command).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// SGL descriptor type/subtype byte values used by NVMe/TCP.
pub mod sgl_type {
    /// Data Block descriptor, Offset subtype: data is in the capsule at `address` offset.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype: data moves by R2T/H2CData or
    /// C2HData PDUs.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5A;
}

/// The 16-byte SGL descriptor in a command's DPTR field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    /// Descriptor type (bits 7:4) and subtype (bits 3:0).
    pub type_byte: u8,
}

impl SglDescriptor {
    /// Descriptor for data carried in the capsule (offset 0).
    pub fn in_capsule(length: u32) -> Self {
        SglDescriptor {
            address: 0,
            length,
            type_byte: sgl_type::DATA_BLOCK_OFFSET,
        }
    }

    /// Descriptor for data moved by data PDUs (R2T/H2CData for writes, C2HData for reads).
    pub fn transport(length: u32) -> Self {
        SglDescriptor {
            address: 0,
            length,
            type_byte: sgl_type::TRANSPORT_DATA_BLOCK,
        }
    }

    fn decode(b: &[u8]) -> Self {
        SglDescriptor {
            address: get_u64(b, 0),
            length: get_u32(b, 8),
            type_byte: b[15],
        }
    }

    fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.address);
        put_u32(b, 8, self.length);
        b[12..15].fill(0);
        b[15] = self.type_byte;
    }
}

/// A submission queue entry. Field names follow the NVMe base specification; the
/// command-specific dwords 10-15 are kept raw and read through the typed views below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    pub cid: u16,
    /// Namespace ID; for fabrics commands byte 0 of this dword is `fctype`.
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub dptr: SglDescriptor,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Sqe {
    /// Decodes a 64-byte command. Any 64 bytes are a syntactically valid command.
    pub fn decode(b: &[u8; SQE_LEN]) -> Sqe {
        Sqe {
            opcode: b[0],
            flags: b[1],
            cid: get_u16(b, 2),
            nsid: get_u32(b, 4),
            cdw2: get_u32(b, 8),
            cdw3: get_u32(b, 12),
            mptr: get_u64(b, 16),
            dptr: SglDescriptor::decode(&b[24..40]),
            cdw10: get_u32(b, 40),
            cdw11: get_u32(b, 44),
            cdw12: get_u32(b, 48),
            cdw13: get_u32(b, 52),
            cdw14: get_u32(b, 56),
            cdw15: get_u32(b, 60),
        }
    }

    /// Encodes into 64 bytes.
    pub fn encode(&self) -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        b[0] = self.opcode;
        b[1] = self.flags;
        put_u16(&mut b, 2, self.cid);
        put_u32(&mut b, 4, self.nsid);
        put_u32(&mut b, 8, self.cdw2);
        put_u32(&mut b, 12, self.cdw3);
        put_u64(&mut b, 16, self.mptr);
        self.dptr.encode(&mut b[24..40]);
        put_u32(&mut b, 40, self.cdw10);
        put_u32(&mut b, 44, self.cdw11);
        put_u32(&mut b, 48, self.cdw12);
        put_u32(&mut b, 52, self.cdw13);
        put_u32(&mut b, 56, self.cdw14);
        put_u32(&mut b, 60, self.cdw15);
        b
    }

    /// The fabrics command type (meaningful when `opcode == 0x7F`).
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xff) as u8
    }

    /// FUSE bits: 0 for a normal (non-fused) command.
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }

    /// Length of the data the command transfers, from its SGL descriptor.
    pub fn data_len(&self) -> u32 {
        self.dptr.length
    }
}

/// Read, Write and Compare share this layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwCommand {
    pub slba: u64,
    /// Number of logical blocks (1-based, already converted from the 0-based field).
    pub nlb: u32,
    pub fua: bool,
}

impl RwCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        RwCommand {
            slba: u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32),
            nlb: (sqe.cdw12 & 0xffff) + 1,
            fua: sqe.cdw12 & (1 << 30) != 0,
        }
    }

    /// Stores the fields into an SQE (for the host side).
    pub fn apply(&self, sqe: &mut Sqe) {
        sqe.cdw10 = self.slba as u32;
        sqe.cdw11 = (self.slba >> 32) as u32;
        sqe.cdw12 = (self.nlb.saturating_sub(1) & 0xffff) | if self.fua { 1 << 30 } else { 0 };
    }
}

/// Write Zeroes fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteZeroesCommand {
    pub slba: u64,
    pub nlb: u32,
    /// DEAC: the host allows the range to be deallocated.
    pub deallocate: bool,
    pub fua: bool,
}

impl WriteZeroesCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        WriteZeroesCommand {
            slba: u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32),
            nlb: (sqe.cdw12 & 0xffff) + 1,
            deallocate: sqe.cdw12 & (1 << 25) != 0,
            fua: sqe.cdw12 & (1 << 30) != 0,
        }
    }
}

/// Dataset Management fields; the ranges travel as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmCommand {
    /// Number of ranges (1-based).
    pub nr: u32,
    /// AD: deallocate the ranges.
    pub deallocate: bool,
}

/// Size of one Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;

impl DsmCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        DsmCommand {
            nr: (sqe.cdw10 & 0xff) + 1,
            deallocate: sqe.cdw11 & (1 << 2) != 0,
        }
    }
}

/// One Dataset Management range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub nlb: u32,
    pub slba: u64,
}

impl DsmRange {
    /// Decodes up to `count` ranges from `data`; fails if `data` is too short.
    pub fn decode_all(data: &[u8], count: u32) -> Option<Vec<DsmRange>> {
        let count = count as usize;
        if data.len() < count * DSM_RANGE_LEN {
            return None;
        }
        Some(
            (0..count)
                .map(|i| {
                    let r = &data[i * DSM_RANGE_LEN..];
                    DsmRange {
                        attributes: get_u32(r, 0),
                        nlb: get_u32(r, 4),
                        slba: get_u64(r, 8),
                    }
                })
                .collect(),
        )
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut r = [0u8; DSM_RANGE_LEN];
        put_u32(&mut r, 0, self.attributes);
        put_u32(&mut r, 4, self.nlb);
        put_u64(&mut r, 8, self.slba);
        out.extend_from_slice(&r);
    }
}

/// Identify fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyCommand {
    pub cns: u8,
    pub cntid: u16,
    pub csi: u8,
    pub nsid: u32,
}

impl IdentifyCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        IdentifyCommand {
            cns: (sqe.cdw10 & 0xff) as u8,
            cntid: (sqe.cdw10 >> 16) as u16,
            csi: (sqe.cdw11 >> 24) as u8,
            nsid: sqe.nsid,
        }
    }
}

/// Get Log Page fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPageCommand {
    pub lid: u8,
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Bytes requested.
    pub len: u64,
    /// Byte offset into the log.
    pub offset: u64,
}

impl GetLogPageCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        let numdl = u64::from(sqe.cdw10 >> 16);
        let numdu = u64::from(sqe.cdw11 & 0xffff);
        let numd = (numdu << 16) | numdl;
        GetLogPageCommand {
            lid: (sqe.cdw10 & 0xff) as u8,
            lsp: ((sqe.cdw10 >> 8) & 0xf) as u8,
            rae: sqe.cdw10 & (1 << 15) != 0,
            len: (numd + 1) * 4,
            offset: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
        }
    }

    /// Stores the fields (len must be a non-zero multiple of 4).
    pub fn apply(&self, sqe: &mut Sqe) {
        let numd = (self.len / 4).saturating_sub(1);
        sqe.cdw10 = u32::from(self.lid)
            | (u32::from(self.lsp & 0xf) << 8)
            | if self.rae { 1 << 15 } else { 0 }
            | (((numd & 0xffff) as u32) << 16);
        sqe.cdw11 = ((numd >> 16) & 0xffff) as u32;
        sqe.cdw12 = self.offset as u32;
        sqe.cdw13 = (self.offset >> 32) as u32;
    }
}

/// Feature identifiers.
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Set/Get Features fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeaturesCommand {
    pub fid: u8,
    /// Set Features: SV (save). Get Features: SEL in `select`.
    pub save: bool,
    pub select: u8,
    pub value: u32,
}

impl FeaturesCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        FeaturesCommand {
            fid: (sqe.cdw10 & 0xff) as u8,
            save: sqe.cdw10 & (1 << 31) != 0,
            select: ((sqe.cdw10 >> 8) & 0x7) as u8,
            value: sqe.cdw11,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_sqe() -> impl Strategy<Value = Sqe> {
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut raw = [0u8; SQE_LEN];
            raw[..32].copy_from_slice(&a);
            raw[32..].copy_from_slice(&b);
            // Reserved SGL bytes are not carried.
            raw[36..39].fill(0);
            Sqe::decode(&raw)
        })
    }

    proptest! {
        #[test]
        fn sqe_round_trip(sqe in arb_sqe()) {
            prop_assert_eq!(Sqe::decode(&sqe.encode()), sqe);
        }

        #[test]
        fn rw_round_trip(slba in any::<u64>(), nlb in 1u32..=65536, fua in any::<bool>()) {
            let rw = RwCommand { slba, nlb, fua };
            let mut sqe = Sqe::default();
            rw.apply(&mut sqe);
            prop_assert_eq!(RwCommand::from_sqe(&sqe), rw);
        }

        #[test]
        fn log_page_round_trip(lid in any::<u8>(), words in 1u64..=(1 << 32), offset in any::<u64>(), rae in any::<bool>()) {
            let g = GetLogPageCommand { lid, lsp: 0, rae, len: words * 4, offset };
            let mut sqe = Sqe::default();
            g.apply(&mut sqe);
            prop_assert_eq!(GetLogPageCommand::from_sqe(&sqe), g);
        }
    }

    #[test]
    fn dsm_ranges_short_data_rejected() {
        let mut out = Vec::new();
        DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 16,
        }
        .encode(&mut out);
        assert_eq!(DsmRange::decode_all(&out, 1).map(|v| v.len()), Some(1));
        assert!(DsmRange::decode_all(&out, 2).is_none());
    }
}
