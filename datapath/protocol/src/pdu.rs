//! NVMe/TCP PDU framing: the common header, the PDU-specific headers, digests, layout
//! validation, and encode/decode of whole PDUs.
//!
//! Two ways in: a stream reader (the target) reads the 8-byte [`CommonHeader`], asks
//! [`layout`] how long the rest of the header and the data are, reads those, and calls
//! [`decode_header`]; a buffer parser (the host library, tests, the fuzzer) calls
//! [`decode_pdu`] on whatever bytes it has.

use thiserror::Error;

use crate::bytes::{get_u16, get_u32, put_u16, put_u32};
use crate::command::{SQE_LEN, Sqe};
use crate::completion::{CQE_LEN, Cqe};
use crate::digest::{crc32c, digest_bytes};

/// Length of the common header every PDU starts with.
pub const COMMON_HEADER_LEN: usize = 8;
/// Length of a digest field.
pub const DIGEST_LEN: usize = 4;
/// Header length of ICReq and ICResp.
pub const IC_HLEN: usize = 128;
/// Header length of a command capsule (common header + SQE).
pub const CAPSULE_CMD_HLEN: usize = COMMON_HEADER_LEN + SQE_LEN;
/// Header length of a response capsule (common header + CQE).
pub const CAPSULE_RESP_HLEN: usize = COMMON_HEADER_LEN + CQE_LEN;
/// Header length of H2CData, C2HData, R2T and TermReq PDUs.
pub const DATA_HLEN: usize = 24;
/// Maximum bytes of the offending PDU header a TermReq carries.
pub const TERM_REQ_MAX_DATA: usize = 128;
/// The only PDU format version defined so far.
pub const PFV_1_0: u16 = 0;

/// PDU flag bits (common header byte 1).
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// H2CData/C2HData: last data PDU of the command (or of the R2T).
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: the command completed successfully; no response capsule follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal error status values carried in TermReq PDUs.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// PDU types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    ICReq = 0x00,
    ICResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::ICReq,
            0x01 => PduType::ICResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// The header length the spec fixes for this type.
    pub fn hlen(self) -> usize {
        match self {
            PduType::ICReq | PduType::ICResp => IC_HLEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2CTermReq
            | PduType::C2HTermReq
            | PduType::H2CData
            | PduType::C2HData
            | PduType::R2T => DATA_HLEN,
        }
    }

    /// Whether PDUs of this type carry digests when digests are negotiated.
    fn takes_digests(self) -> bool {
        !matches!(
            self,
            PduType::ICReq | PduType::ICResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }

    /// Whether PDUs of this type may carry data.
    fn takes_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::H2CData
                | PduType::C2HData
                | PduType::H2CTermReq
                | PduType::C2HTermReq
        )
    }
}

/// Which digests a connection negotiated (ICReq/ICResp `dgst` field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };

    fn from_byte(b: u8) -> Digests {
        Digests {
            header: b & 0x01 != 0,
            data: b & 0x02 != 0,
        }
    }

    fn to_byte(self) -> u8 {
        u8::from(self.header) | (u8::from(self.data) << 1)
    }
}

/// Why a PDU was rejected. Each maps to the fatal error status (FES) and field offset (FEI)
/// a TermReq reports.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PduError {
    #[error("unknown PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("invalid PDU header field at byte {offset}: {reason}")]
    InvalidHeaderField { offset: u32, reason: &'static str },
    #[error("PDU sequence error: {0}")]
    Sequence(&'static str),
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("data digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    DataDigest { received: u32, computed: u32 },
    #[error("data transfer out of range: {0}")]
    DataOutOfRange(&'static str),
    #[error("PDU data of {len} bytes exceeds the limit of {limit}")]
    DataLimitExceeded { len: u64, limit: u64 },
    #[error("unsupported parameter at byte {offset}: {reason}")]
    Unsupported { offset: u32, reason: &'static str },
}

impl PduError {
    /// Fatal error status for a TermReq. Data digest errors are not fatal to the connection
    /// by themselves (the command fails), but if a caller chooses to terminate it reports them
    /// as an invalid header field of the data digest flag.
    pub fn fes(&self) -> u16 {
        match self {
            PduError::UnknownType(_)
            | PduError::InvalidHeaderField { .. }
            | PduError::DataDigest { .. } => fes::INVALID_HEADER_FIELD,
            PduError::Sequence(_) => fes::PDU_SEQUENCE_ERROR,
            PduError::HeaderDigest { .. } => fes::HEADER_DIGEST_ERROR,
            PduError::DataOutOfRange(_) => fes::DATA_OUT_OF_RANGE,
            PduError::DataLimitExceeded { .. } => fes::DATA_LIMIT_EXCEEDED,
            PduError::Unsupported { .. } => fes::UNSUPPORTED_PARAMETER,
        }
    }

    /// Fatal error information: the byte offset of the offending field where there is one.
    pub fn fei(&self) -> u32 {
        match self {
            PduError::InvalidHeaderField { offset, .. } | PduError::Unsupported { offset, .. } => {
                *offset
            }
            PduError::DataDigest { .. } => 1,
            _ => 0,
        }
    }
}

fn bad(offset: u32, reason: &'static str) -> PduError {
    PduError::InvalidHeaderField { offset, reason }
}

/// The 8-byte header at the start of every PDU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn decode(b: &[u8; COMMON_HEADER_LEN]) -> CommonHeader {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: get_u32(b, 4),
        }
    }

    pub fn encode(&self) -> [u8; COMMON_HEADER_LEN] {
        let mut b = [0u8; COMMON_HEADER_LEN];
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        put_u32(&mut b, 4, self.plen);
        b
    }
}

/// Where the parts of a PDU lie, derived from a validated common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PduLayout {
    pub pdu_type: PduType,
    /// Header length (common header + PDU-specific header).
    pub hlen: usize,
    pub header_digest: bool,
    /// Bytes of padding between the header (and its digest) and the data.
    pub pad: usize,
    pub data_len: usize,
    pub data_digest: bool,
    /// Total PDU length.
    pub plen: usize,
}

impl PduLayout {
    /// Header plus header digest.
    pub fn header_total(&self) -> usize {
        self.hlen + if self.header_digest { DIGEST_LEN } else { 0 }
    }

    /// Bytes that follow the common header.
    pub fn remaining_after_common(&self) -> usize {
        self.plen - COMMON_HEADER_LEN
    }

    /// Offset of the data from the PDU start.
    pub fn data_offset(&self) -> usize {
        self.header_total() + self.pad
    }
}

/// Validates a common header against the negotiated digests and a data size limit, and
/// returns the PDU's layout. `digests` is `None` before the connection is initialized
/// (only ICReq/ICResp are valid then).
pub fn layout(
    ch: &CommonHeader,
    digests: Option<Digests>,
    max_data: usize,
) -> Result<PduLayout, PduError> {
    let pdu_type = PduType::from_u8(ch.pdu_type).ok_or(PduError::UnknownType(ch.pdu_type))?;
    let hlen = pdu_type.hlen();
    if usize::from(ch.hlen) != hlen {
        return Err(bad(2, "HLEN does not match the PDU type"));
    }
    let plen = ch.plen as usize;
    let negotiated = match (pdu_type, digests) {
        // A TermReq may end a connection whose initialization failed.
        (PduType::ICReq | PduType::ICResp | PduType::H2CTermReq | PduType::C2HTermReq, None) => {
            Digests::NONE
        }
        (PduType::ICReq | PduType::ICResp, Some(_)) => {
            return Err(PduError::Sequence(
                "initialize connection PDU after initialization",
            ));
        }
        (_, None) => return Err(PduError::Sequence("PDU before connection initialization")),
        (t, Some(d)) if t.takes_digests() => d,
        (_, Some(_)) => Digests::NONE,
    };
    let known_flags = match pdu_type {
        PduType::H2CData => flags::HDGSTF | flags::DDGSTF | flags::DATA_LAST,
        PduType::C2HData => flags::HDGSTF | flags::DDGSTF | flags::DATA_LAST | flags::DATA_SUCCESS,
        PduType::CapsuleCmd => flags::HDGSTF | flags::DDGSTF,
        PduType::CapsuleResp | PduType::R2T => flags::HDGSTF,
        _ => 0,
    };
    if ch.flags & !known_flags != 0 {
        return Err(bad(1, "unknown or disallowed FLAGS bits"));
    }
    let header_digest = ch.flags & flags::HDGSTF != 0;
    if header_digest != negotiated.header {
        return Err(bad(1, "HDGSTF does not match the negotiated header digest"));
    }
    let header_total = hlen + if header_digest { DIGEST_LEN } else { 0 };
    if plen < header_total {
        return Err(bad(4, "PLEN shorter than the header"));
    }
    if plen == header_total {
        if ch.pdo != 0 && pdu_type != PduType::CapsuleCmd {
            return Err(bad(3, "PDO set on a PDU without data"));
        }
        if ch.flags & flags::DDGSTF != 0 {
            return Err(bad(1, "DDGSTF set on a PDU without data"));
        }
        return Ok(PduLayout {
            pdu_type,
            hlen,
            header_digest,
            pad: 0,
            data_len: 0,
            data_digest: false,
            plen,
        });
    }
    if !pdu_type.takes_data() {
        return Err(bad(4, "PLEN includes data on a PDU type that carries none"));
    }
    // TermReq data (the offending header) starts right after the header; PDO is reserved.
    let (data_offset, data_digest) =
        if matches!(pdu_type, PduType::H2CTermReq | PduType::C2HTermReq) {
            (hlen, false)
        } else {
            let data_digest = ch.flags & flags::DDGSTF != 0;
            if data_digest != negotiated.data {
                return Err(bad(1, "DDGSTF does not match the negotiated data digest"));
            }
            let pdo = usize::from(ch.pdo);
            if pdo < header_total || pdo >= plen {
                return Err(bad(3, "PDO outside the PDU"));
            }
            (pdo, data_digest)
        };
    let trailer = if data_digest { DIGEST_LEN } else { 0 };
    if plen < data_offset + trailer + 1 {
        return Err(bad(4, "PLEN too short for PDO and data digest"));
    }
    let data_len = plen - data_offset - trailer;
    let limit = if matches!(pdu_type, PduType::H2CTermReq | PduType::C2HTermReq) {
        TERM_REQ_MAX_DATA
    } else {
        max_data
    };
    if data_len > limit {
        return Err(PduError::DataLimitExceeded {
            len: data_len as u64,
            limit: limit as u64,
        });
    }
    Ok(PduLayout {
        pdu_type,
        hlen,
        header_digest,
        pad: data_offset - header_total,
        data_len,
        data_digest,
        plen,
    })
}

/// Initialize Connection Request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ICReq {
    pub pfv: u16,
    /// Host PDU data alignment (in dwords, 0's based).
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// Initialize Connection Response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ICResp {
    pub pfv: u16,
    /// Controller PDU data alignment (in dwords, 0's based).
    pub cpda: u8,
    pub digests: Digests,
    /// Maximum data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

/// H2CData / C2HData header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    /// Command capsule CID the data belongs to.
    pub cccid: u16,
    /// Transfer tag from the R2T (H2CData only).
    pub ttag: u16,
    /// Offset of this data within the command's data.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    pub last: bool,
    /// C2HData only: command completed successfully, no response capsule follows.
    pub success: bool,
}

/// Ready to Transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2T {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

/// A decoded PDU header (common + PDU-specific).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduHeader {
    ICReq(ICReq),
    ICResp(ICResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(Sqe),
    CapsuleResp(Cqe),
    H2CData(DataHeader),
    C2HData(DataHeader),
    R2T(R2T),
}

impl PduHeader {
    pub fn pdu_type(&self) -> PduType {
        match self {
            PduHeader::ICReq(_) => PduType::ICReq,
            PduHeader::ICResp(_) => PduType::ICResp,
            PduHeader::H2CTermReq(_) => PduType::H2CTermReq,
            PduHeader::C2HTermReq(_) => PduType::C2HTermReq,
            PduHeader::CapsuleCmd(_) => PduType::CapsuleCmd,
            PduHeader::CapsuleResp(_) => PduType::CapsuleResp,
            PduHeader::H2CData(_) => PduType::H2CData,
            PduHeader::C2HData(_) => PduType::C2HData,
            PduHeader::R2T(_) => PduType::R2T,
        }
    }
}

/// Verifies the header digest that follows `header` (exactly `hlen` bytes).
pub fn verify_header_digest(header: &[u8], digest: [u8; 4]) -> Result<(), PduError> {
    let computed = crc32c(header);
    let received = u32::from_le_bytes(digest);
    if computed != received {
        return Err(PduError::HeaderDigest { received, computed });
    }
    Ok(())
}

/// Verifies a data digest.
pub fn verify_data_digest(data: &[u8], digest: [u8; 4]) -> Result<(), PduError> {
    let computed = crc32c(data);
    let received = u32::from_le_bytes(digest);
    if computed != received {
        return Err(PduError::DataDigest { received, computed });
    }
    Ok(())
}

/// Decodes the PDU-specific header. `header` holds the whole header (`layout.hlen` bytes,
/// common header included, digest excluded).
pub fn decode_header(layout: &PduLayout, header: &[u8]) -> Result<PduHeader, PduError> {
    if header.len() != layout.hlen {
        return Err(bad(2, "header buffer does not match HLEN"));
    }
    let flags = header[1];
    Ok(match layout.pdu_type {
        PduType::ICReq => {
            let pfv = get_u16(header, 8);
            if pfv != PFV_1_0 {
                return Err(PduError::Unsupported {
                    offset: 8,
                    reason: "PDU format version",
                });
            }
            let hpda = header[10];
            if hpda > 31 {
                return Err(bad(10, "HPDA out of range"));
            }
            PduHeader::ICReq(ICReq {
                pfv,
                hpda,
                digests: Digests::from_byte(header[11]),
                maxr2t: get_u32(header, 12),
            })
        }
        PduType::ICResp => {
            let pfv = get_u16(header, 8);
            if pfv != PFV_1_0 {
                return Err(PduError::Unsupported {
                    offset: 8,
                    reason: "PDU format version",
                });
            }
            PduHeader::ICResp(ICResp {
                pfv,
                cpda: header[10],
                digests: Digests::from_byte(header[11]),
                maxh2cdata: get_u32(header, 12),
            })
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let t = TermReq {
                fes: get_u16(header, 8),
                fei: get_u32(header, 10),
            };
            if layout.pdu_type == PduType::H2CTermReq {
                PduHeader::H2CTermReq(t)
            } else {
                PduHeader::C2HTermReq(t)
            }
        }
        PduType::CapsuleCmd => {
            let mut sqe = [0u8; SQE_LEN];
            sqe.copy_from_slice(&header[COMMON_HEADER_LEN..CAPSULE_CMD_HLEN]);
            PduHeader::CapsuleCmd(Sqe::decode(&sqe))
        }
        PduType::CapsuleResp => {
            let mut cqe = [0u8; CQE_LEN];
            cqe.copy_from_slice(&header[COMMON_HEADER_LEN..CAPSULE_RESP_HLEN]);
            PduHeader::CapsuleResp(Cqe::decode(&cqe))
        }
        PduType::H2CData | PduType::C2HData => {
            let d = DataHeader {
                cccid: get_u16(header, 8),
                ttag: get_u16(header, 10),
                datao: get_u32(header, 12),
                datal: get_u32(header, 16),
                last: flags & flags::DATA_LAST != 0,
                success: flags & flags::DATA_SUCCESS != 0,
            };
            if d.datal as usize != layout.data_len {
                return Err(bad(16, "DATAL does not match the PDU length"));
            }
            if d.datal == 0 {
                return Err(bad(16, "DATAL is zero"));
            }
            if d.success && !d.last {
                return Err(bad(1, "SUCCESS without LAST_PDU"));
            }
            if layout.pdu_type == PduType::H2CData {
                PduHeader::H2CData(d)
            } else {
                PduHeader::C2HData(d)
            }
        }
        PduType::R2T => {
            let r = R2T {
                cccid: get_u16(header, 8),
                ttag: get_u16(header, 10),
                r2to: get_u32(header, 12),
                r2tl: get_u32(header, 16),
            };
            if r.r2tl == 0 {
                return Err(bad(16, "R2TL is zero"));
            }
            PduHeader::R2T(r)
        }
    })
}

/// Encodes a PDU header (common header, PDU-specific header and header digest) for a PDU that
/// carries `data_len` bytes of data. Padding is never needed because Ferrite uses CPDA/HPDA 0;
/// the caller appends the data and, if [`data_digest_applies`], its digest.
pub fn encode_header(h: &PduHeader, data_len: usize, digests: Digests, out: &mut Vec<u8>) {
    let t = h.pdu_type();
    let hlen = t.hlen();
    let d = if t.takes_digests() {
        digests
    } else {
        Digests::NONE
    };
    let with_data = data_len > 0;
    let header_total = hlen + if d.header { DIGEST_LEN } else { 0 };
    let data_digest = with_data && d.data && t != PduType::H2CTermReq && t != PduType::C2HTermReq;
    let plen = header_total + data_len + if data_digest { DIGEST_LEN } else { 0 };
    let mut fl = 0u8;
    if d.header {
        fl |= flags::HDGSTF;
    }
    if data_digest {
        fl |= flags::DDGSTF;
    }
    let start = out.len();
    out.resize(start + hlen, 0);
    let b = &mut out[start..];
    match h {
        PduHeader::ICReq(r) => {
            put_u16(b, 8, r.pfv);
            b[10] = r.hpda;
            b[11] = r.digests.to_byte();
            put_u32(b, 12, r.maxr2t);
        }
        PduHeader::ICResp(r) => {
            put_u16(b, 8, r.pfv);
            b[10] = r.cpda;
            b[11] = r.digests.to_byte();
            put_u32(b, 12, r.maxh2cdata);
        }
        PduHeader::H2CTermReq(t) | PduHeader::C2HTermReq(t) => {
            put_u16(b, 8, t.fes);
            put_u32(b, 10, t.fei);
        }
        PduHeader::CapsuleCmd(sqe) => b[COMMON_HEADER_LEN..].copy_from_slice(&sqe.encode()),
        PduHeader::CapsuleResp(cqe) => b[COMMON_HEADER_LEN..].copy_from_slice(&cqe.encode()),
        PduHeader::H2CData(dh) | PduHeader::C2HData(dh) => {
            put_u16(b, 8, dh.cccid);
            put_u16(b, 10, dh.ttag);
            put_u32(b, 12, dh.datao);
            put_u32(b, 16, data_len as u32);
            if dh.last {
                fl |= flags::DATA_LAST;
            }
            if dh.success {
                fl |= flags::DATA_SUCCESS;
            }
        }
        PduHeader::R2T(r) => {
            put_u16(b, 8, r.cccid);
            put_u16(b, 10, r.ttag);
            put_u32(b, 12, r.r2to);
            put_u32(b, 16, r.r2tl);
        }
    }
    let pdo = if with_data && !matches!(t, PduType::H2CTermReq | PduType::C2HTermReq) {
        header_total as u8
    } else {
        0
    };
    let ch = CommonHeader {
        pdu_type: t as u8,
        flags: fl,
        hlen: hlen as u8,
        pdo,
        plen: plen as u32,
    };
    b[..COMMON_HEADER_LEN].copy_from_slice(&ch.encode());
    if d.header {
        let dg = digest_bytes(&out[start..start + hlen]);
        out.extend_from_slice(&dg);
    }
}

/// Whether a data digest follows `data_len` bytes of data in a PDU of this header's type.
pub fn data_digest_applies(h: &PduHeader, data_len: usize, digests: Digests) -> bool {
    let t = h.pdu_type();
    data_len > 0 && digests.data && t.takes_digests()
}

/// Encodes a whole PDU: header, data and digests.
pub fn encode_pdu(h: &PduHeader, data: &[u8], digests: Digests, out: &mut Vec<u8>) {
    encode_header(h, data.len(), digests, out);
    out.extend_from_slice(data);
    if data_digest_applies(h, data.len(), digests) {
        out.extend_from_slice(&digest_bytes(data));
    }
}

/// A PDU parsed from a buffer: its header and a borrowed view of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub header: PduHeader,
    pub data: &'a [u8],
}

/// Parses one PDU from the start of `buf`, verifying digests. Returns `Ok(None)` when `buf`
/// does not yet hold the whole PDU, otherwise the PDU and the number of bytes it used.
pub fn decode_pdu(
    buf: &[u8],
    digests: Option<Digests>,
    max_data: usize,
) -> Result<Option<(Pdu<'_>, usize)>, PduError> {
    let Some(ch_bytes) = buf.first_chunk::<COMMON_HEADER_LEN>() else {
        return Ok(None);
    };
    let ch = CommonHeader::decode(ch_bytes);
    let lay = layout(&ch, digests, max_data)?;
    if buf.len() < lay.plen {
        return Ok(None);
    }
    let header = &buf[..lay.hlen];
    if lay.header_digest {
        let mut dg = [0u8; 4];
        dg.copy_from_slice(&buf[lay.hlen..lay.hlen + DIGEST_LEN]);
        verify_header_digest(header, dg)?;
    }
    let h = decode_header(&lay, header)?;
    let off = lay.data_offset();
    let data = &buf[off..off + lay.data_len];
    if lay.data_digest {
        let mut dg = [0u8; 4];
        dg.copy_from_slice(&buf[off + lay.data_len..off + lay.data_len + DIGEST_LEN]);
        verify_data_digest(data, dg)?;
    }
    Ok(Some((Pdu { header: h, data }, lay.plen)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SglDescriptor;
    use crate::status::Status;
    use proptest::prelude::*;

    const ALL: Digests = Digests {
        header: true,
        data: true,
    };

    fn round_trip(h: PduHeader, data: &[u8], d: Digests) {
        let mut out = Vec::new();
        encode_pdu(&h, data, d, &mut out);
        let conn_digests = if matches!(h, PduHeader::ICReq(_) | PduHeader::ICResp(_)) {
            None
        } else {
            Some(d)
        };
        let (pdu, used) = decode_pdu(&out, conn_digests, 1 << 20)
            .expect("decodes")
            .expect("complete");
        assert_eq!(used, out.len());
        assert_eq!(pdu.header, h);
        assert_eq!(pdu.data, data);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..out.len() {
            assert_eq!(decode_pdu(&out[..cut], conn_digests, 1 << 20), Ok(None));
        }
    }

    #[test]
    fn ic_round_trip() {
        round_trip(
            PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: ALL,
                maxr2t: 0,
            }),
            &[],
            Digests::NONE,
        );
        round_trip(
            PduHeader::ICResp(ICResp {
                pfv: 0,
                cpda: 0,
                digests: ALL,
                maxh2cdata: 131072,
            }),
            &[],
            Digests::NONE,
        );
    }

    #[test]
    fn icreq_matches_kernel_bytes() {
        let mut out = Vec::new();
        encode_pdu(
            &PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: Digests::NONE,
                maxr2t: 0,
            }),
            &[],
            Digests::NONE,
            &mut out,
        );
        assert_eq!(out.len(), 128);
        assert_eq!(&out[..8], &[0x00, 0x00, 128, 0, 128, 0, 0, 0]);
    }

    #[test]
    fn data_pdus_round_trip_with_and_without_digests() {
        for d in [
            Digests::NONE,
            ALL,
            Digests {
                header: true,
                data: false,
            },
            Digests {
                header: false,
                data: true,
            },
        ] {
            let mut sqe = Sqe {
                opcode: 1,
                cid: 7,
                nsid: 1,
                ..Default::default()
            };
            sqe.dptr = SglDescriptor::in_capsule(8);
            round_trip(PduHeader::CapsuleCmd(sqe), b"abcdefgh", d);
            round_trip(PduHeader::CapsuleCmd(sqe), &[], d);
            round_trip(
                PduHeader::CapsuleResp(Cqe::new(7, Status::INVALID_FIELD)),
                &[],
                d,
            );
            let dh = DataHeader {
                cccid: 7,
                ttag: 3,
                datao: 4096,
                datal: 5,
                last: true,
                success: false,
            };
            round_trip(PduHeader::H2CData(dh), b"hello", d);
            round_trip(
                PduHeader::C2HData(DataHeader {
                    success: true,
                    ttag: 0,
                    ..dh
                }),
                b"hello",
                d,
            );
            round_trip(
                PduHeader::R2T(R2T {
                    cccid: 7,
                    ttag: 1,
                    r2to: 0,
                    r2tl: 65536,
                }),
                &[],
                d,
            );
        }
    }

    #[test]
    fn term_req_round_trip() {
        round_trip(
            PduHeader::C2HTermReq(TermReq {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
            }),
            &[1u8; 72],
            ALL,
        );
    }

    #[test]
    fn header_digest_mismatch_is_detected() {
        let mut out = Vec::new();
        encode_pdu(
            &PduHeader::CapsuleResp(Cqe::new(1, Status::SUCCESS)),
            &[],
            ALL,
            &mut out,
        );
        out[12] ^= 0xff;
        let err = decode_pdu(&out, Some(ALL), 4096).unwrap_err();
        assert!(matches!(err, PduError::HeaderDigest { .. }));
        assert_eq!(err.fes(), fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn data_digest_mismatch_is_detected() {
        let mut out = Vec::new();
        let dh = DataHeader {
            cccid: 1,
            ttag: 0,
            datao: 0,
            datal: 4,
            last: true,
            success: false,
        };
        encode_pdu(&PduHeader::H2CData(dh), b"data", ALL, &mut out);
        let n = out.len();
        out[n - 5] ^= 1;
        assert!(matches!(
            decode_pdu(&out, Some(ALL), 4096),
            Err(PduError::DataDigest { .. })
        ));
    }

    #[test]
    fn digest_flags_must_match_negotiation() {
        let mut out = Vec::new();
        encode_pdu(
            &PduHeader::CapsuleResp(Cqe::new(1, Status::SUCCESS)),
            &[],
            Digests::NONE,
            &mut out,
        );
        assert!(matches!(
            decode_pdu(&out, Some(ALL), 4096),
            Err(PduError::InvalidHeaderField { offset: 1, .. })
        ));
    }

    #[test]
    fn bad_hlen_unknown_type_and_sequence() {
        let mut out = Vec::new();
        encode_pdu(
            &PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: Digests::NONE,
                maxr2t: 0,
            }),
            &[],
            Digests::NONE,
            &mut out,
        );
        let mut bad_hlen = out.clone();
        bad_hlen[2] = 127;
        assert!(matches!(
            decode_pdu(&bad_hlen, None, 0),
            Err(PduError::InvalidHeaderField { offset: 2, .. })
        ));
        let mut unknown = out.clone();
        unknown[0] = 0x08;
        assert_eq!(decode_pdu(&unknown, None, 0), Err(PduError::UnknownType(8)));
        assert!(matches!(
            decode_pdu(&out, Some(Digests::NONE), 0),
            Err(PduError::Sequence(_))
        ));
        let mut cmd = Vec::new();
        encode_pdu(
            &PduHeader::CapsuleCmd(Sqe::default()),
            &[],
            Digests::NONE,
            &mut cmd,
        );
        assert!(matches!(
            decode_pdu(&cmd, None, 0),
            Err(PduError::Sequence(_))
        ));
        // A C2HTermReq answering a bad ICReq decodes before initialization.
        let mut term = Vec::new();
        encode_pdu(
            &PduHeader::C2HTermReq(TermReq {
                fes: fes::UNSUPPORTED_PARAMETER,
                fei: 8,
            }),
            &out[..8],
            Digests::NONE,
            &mut term,
        );
        assert!(matches!(
            decode_pdu(&term, None, 0),
            Ok(Some((
                Pdu {
                    header: PduHeader::C2HTermReq(_),
                    ..
                },
                _
            )))
        ));
        let mut pfv = out.clone();
        pfv[8] = 1;
        assert!(matches!(
            decode_pdu(&pfv, None, 0),
            Err(PduError::Unsupported { offset: 8, .. })
        ));
    }

    #[test]
    fn oversized_data_is_refused_before_reading_it() {
        let ch = CommonHeader {
            pdu_type: PduType::H2CData as u8,
            flags: flags::DATA_LAST,
            hlen: 24,
            pdo: 24,
            plen: 24 + 1_000_000,
        };
        let err = layout(&ch, Some(Digests::NONE), 131072).unwrap_err();
        assert!(matches!(err, PduError::DataLimitExceeded { .. }));
        assert_eq!(err.fes(), fes::DATA_LIMIT_EXCEEDED);
    }

    #[test]
    fn datal_mismatch_rejected() {
        let mut out = Vec::new();
        let dh = DataHeader {
            cccid: 1,
            ttag: 0,
            datao: 0,
            datal: 4,
            last: true,
            success: false,
        };
        encode_pdu(&PduHeader::H2CData(dh), b"data", Digests::NONE, &mut out);
        out[16] = 3;
        assert!(matches!(
            decode_pdu(&out, Some(Digests::NONE), 4096),
            Err(PduError::InvalidHeaderField { offset: 16, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300), h in any::<bool>(), d in any::<bool>(), init in any::<bool>()) {
            let digests = if init { None } else { Some(Digests { header: h, data: d }) };
            let _ = decode_pdu(&buf, digests, 4096);
        }

        #[test]
        fn h2c_data_round_trip(cccid in any::<u16>(), ttag in any::<u16>(), datao in any::<u32>(),
                               data in proptest::collection::vec(any::<u8>(), 1..512), h in any::<bool>(), d in any::<bool>()) {
            let dh = DataHeader { cccid, ttag, datao, datal: data.len() as u32, last: true, success: false };
            let digests = Digests { header: h, data: d };
            let mut out = Vec::new();
            encode_pdu(&PduHeader::H2CData(dh), &data, digests, &mut out);
            let (pdu, used) = decode_pdu(&out, Some(digests), 4096).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(pdu.header, PduHeader::H2CData(dh));
            prop_assert_eq!(pdu.data, &data[..]);
        }

        #[test]
        fn flipped_bit_with_digests_never_accepted_silently(data in proptest::collection::vec(any::<u8>(), 1..64), bit in 0usize..(8 * (24 + 4 + 64 + 4))) {
            let dh = DataHeader { cccid: 1, ttag: 2, datao: 0, datal: data.len() as u32, last: true, success: false };
            let mut out = Vec::new();
            encode_pdu(&PduHeader::H2CData(dh), &data, ALL, &mut out);
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            if let Ok(Some((pdu, _))) = decode_pdu(&out, Some(ALL), 4096) { prop_assert!(pdu.header != PduHeader::H2CData(dh) || pdu.data != &data[..], "a corrupted PDU decoded as the original") }
        }
    }
}
