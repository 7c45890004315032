//! NVMe over Fabrics commands: Connect (command fields and its 1 KiB data), Property Get and
//! Set, and the controller properties (CAP, VS, CC, CSTS) they address.

use crate::bytes::{get_str, get_u16, put_str, put_u16};
use crate::command::{Sqe, admin_opcode, fctype};

/// Length of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// Controller ID a host puts in Connect data to ask for a dynamically allocated controller.
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// Connect command fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCommand {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size (0's based).
    pub sqsize: u16,
    /// Connect attributes (bit 2: disable SQ flow control).
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl ConnectCommand {
    pub const CATTR_DISABLE_SQ_FLOW: u8 = 1 << 2;

    pub fn from_sqe(sqe: &Sqe) -> Self {
        ConnectCommand {
            recfmt: (sqe.cdw10 & 0xffff) as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: (sqe.cdw11 & 0xffff) as u16,
            cattr: ((sqe.cdw11 >> 16) & 0xff) as u8,
            kato: sqe.cdw12,
        }
    }

    /// Builds the SQE for this Connect (data descriptor left for the caller).
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        Sqe {
            opcode: admin_opcode::FABRICS,
            cid,
            nsid: u32::from(fctype::CONNECT),
            cdw10: u32::from(self.recfmt) | (u32::from(self.qid) << 16),
            cdw11: u32::from(self.sqsize) | (u32::from(self.cattr) << 16),
            cdw12: self.kato,
            ..Default::default()
        }
    }

    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & Self::CATTR_DISABLE_SQ_FLOW != 0
    }
}

/// The data of a Connect command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Offsets of Connect data fields, reported in "invalid parameter" completions.
pub mod connect_data_offset {
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

impl ConnectData {
    /// Decodes Connect data; `None` if `b` is shorter than 1024 bytes.
    pub fn decode(b: &[u8]) -> Option<ConnectData> {
        if b.len() < CONNECT_DATA_LEN {
            return None;
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[..16]);
        Some(ConnectData {
            hostid,
            cntlid: get_u16(b, 16),
            subnqn: get_str(b, 256, 256),
            hostnqn: get_str(b, 512, 256),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONNECT_DATA_LEN];
        b[..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        put_str(&mut b, 256, 255, &self.subnqn, 0);
        put_str(&mut b, 512, 255, &self.hostnqn, 0);
        b
    }
}

/// The dword-0 result of a Connect that failed with "invalid parameters": the offset of the
/// offending field (IPO, bits 15:0) and whether it lies in the data (IATTR, bit 16) rather
/// than in the command.
pub fn connect_invalid_param_result(in_data: bool, offset: u16) -> u32 {
    (u32::from(in_data) << 16) | u32::from(offset)
}

/// Property Get / Property Set fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCommand {
    /// Property size: 4 or 8 bytes.
    pub size: u8,
    pub offset: u32,
    /// Value to set (Property Set only).
    pub value: u64,
}

impl PropertyCommand {
    pub fn from_sqe(sqe: &Sqe) -> Self {
        PropertyCommand {
            size: if sqe.cdw10 & 0x7 == 1 { 8 } else { 4 },
            offset: sqe.cdw11,
            value: u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32),
        }
    }

    pub fn to_sqe(&self, cid: u16, set: bool) -> Sqe {
        Sqe {
            opcode: admin_opcode::FABRICS,
            cid,
            nsid: u32::from(if set {
                fctype::PROPERTY_SET
            } else {
                fctype::PROPERTY_GET
            }),
            cdw10: u32::from(self.size == 8),
            cdw11: self.offset,
            cdw12: self.value as u32,
            cdw13: (self.value >> 32) as u32,
            ..Default::default()
        }
    }
}

/// Controller property offsets.
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
    pub const NSSR: u32 = 0x20;
}

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Maximum queue entries supported (0's based).
    pub mqes: u16,
    /// Worst-case time to become ready, in 500 ms units.
    pub timeout: u8,
}

impl Cap {
    pub fn to_u64(self) -> u64 {
        let cqr = 1u64 << 16; // contiguous queues required (always on fabrics)
        let css_nvm = 1u64 << 37; // NVM command set
        u64::from(self.mqes) | cqr | (u64::from(self.timeout) << 24) | css_nvm
    }

    pub fn from_u64(v: u64) -> Cap {
        Cap {
            mqes: (v & 0xffff) as u16,
            timeout: ((v >> 24) & 0xff) as u8,
        }
    }
}

/// Encodes a version as the VS property does.
pub const fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32
}

/// Controller Configuration fields.
pub mod cc {
    pub const EN: u32 = 1;
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << SHN_SHIFT;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;

    /// I/O submission queue entry size (log2).
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> IOSQES_SHIFT) & 0xf
    }
    /// I/O completion queue entry size (log2).
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> IOCQES_SHIFT) & 0xf
    }
    /// Shutdown notification (0 none, 1 normal, 2 abrupt).
    pub fn shn(cc: u32) -> u32 {
        (cc & SHN_MASK) >> SHN_SHIFT
    }
}

/// Controller Status fields.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status "processing complete".
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    pub const SHST_MASK: u32 = 0x3 << 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_round_trip() {
        let c = ConnectCommand {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: 4,
            kato: 5000,
        };
        assert_eq!(ConnectCommand::from_sqe(&c.to_sqe(9)), c);
        assert!(c.sq_flow_control_disabled());
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: "nqn.2024-01.dev.ferrite:a".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:x".into(),
        };
        assert_eq!(ConnectData::decode(&d.encode()), Some(d));
        assert_eq!(ConnectData::decode(&[0u8; 100]), None);
    }

    #[test]
    fn invalid_param_result_layout() {
        assert_eq!(
            connect_invalid_param_result(true, connect_data_offset::SUBNQN),
            0x0001_0100
        );
        assert_eq!(connect_invalid_param_result(false, 44), 44);
    }

    #[test]
    fn property_round_trip() {
        let p = PropertyCommand {
            size: 8,
            offset: property::CAP,
            value: 0,
        };
        assert_eq!(PropertyCommand::from_sqe(&p.to_sqe(1, false)), p);
        let s = PropertyCommand {
            size: 4,
            offset: property::CC,
            value: 0x460001,
        };
        assert_eq!(PropertyCommand::from_sqe(&s.to_sqe(1, true)), s);
    }

    #[test]
    fn cap_fields() {
        let cap = Cap {
            mqes: 127,
            timeout: 10,
        };
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
        assert_ne!(cap.to_u64() & (1 << 37), 0);
        assert_eq!(version(1, 3, 0), 0x0001_0300);
        assert_eq!(cc::iosqes(0x0046_0001), 6);
        assert_eq!(cc::iocqes(0x0046_0001), 4);
    }
}
