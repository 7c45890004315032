//! NVMe completion status: status code type (SCT), status code (SC) and the DNR/More bits,
//! with named constants for every status Ferrite returns.

use std::fmt;

/// A completion status. `Status::SUCCESS` is all zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    /// Status Code Type (3 bits).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

/// Status code types.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
    pub const PATH: u8 = 3;
}

impl Status {
    pub const fn new(sct: u8, sc: u8, dnr: bool) -> Self {
        Status { sct, sc, dnr }
    }
    const fn generic(sc: u8) -> Self {
        Status::new(sct::GENERIC, sc, true)
    }
    const fn specific(sc: u8) -> Self {
        Status::new(sct::COMMAND_SPECIFIC, sc, true)
    }

    pub const SUCCESS: Status = Status::new(0, 0, false);
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const CID_CONFLICT: Status = Status::generic(0x03);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::new(sct::GENERIC, 0x06, false);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORT_SQ_DELETED: Status = Status::new(sct::GENERIC, 0x08, false);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C);
    pub const INVALID_SGL_DESCRIPTOR: Status = Status::generic(0x0D);
    pub const INVALID_SGL_COUNT: Status = Status::generic(0x0E);
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0F);
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11);
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16);
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::new(sct::GENERIC, 0x22, false);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81);
    pub const NAMESPACE_NOT_READY: Status = Status::new(sct::GENERIC, 0x82, false);

    pub const INVALID_QUEUE_ID: Status = Status::specific(0x01);
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02);
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0D);
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0E);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82);
    pub const CONNECT_RESTART_DISCOVERY: Status = Status::specific(0x83);
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84);
    /// The queue must complete in-band authentication before this command.
    pub const AUTH_REQUIRED: Status = Status::specific(0x91);

    pub const WRITE_FAULT: Status = Status::new(sct::MEDIA, 0x80, false);
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(sct::MEDIA, 0x81, false);
    pub const COMPARE_FAILURE: Status = Status::new(sct::MEDIA, 0x85, true);
    pub const ACCESS_DENIED: Status = Status::new(sct::MEDIA, 0x86, true);

    /// True for a successful completion.
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15-bit status field as placed in CQE bits 31:17 (without the phase bit),
    /// i.e. the value of CQE dword 3 bits 31:16 shifted right by one.
    pub fn to_field(self) -> u16 {
        (u16::from(self.sc)) | (u16::from(self.sct & 0x7) << 8) | (u16::from(self.dnr) << 14)
    }

    /// Inverse of [`Status::to_field`]; ignores CRD and More.
    pub fn from_field(f: u16) -> Status {
        Status {
            sc: (f & 0xff) as u8,
            sct: ((f >> 8) & 0x7) as u8,
            dnr: f & (1 << 14) != 0,
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x00) => "success",
            (0, 0x01) => "invalid opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command id conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x07) => "abort requested",
            (0, 0x08) => "aborted: sq deleted",
            (0, 0x0B) => "invalid namespace or format",
            (0, 0x0C) => "command sequence error",
            (0, 0x0D) => "invalid sgl segment descriptor",
            (0, 0x0E) => "invalid number of sgl descriptors",
            (0, 0x0F) => "data sgl length invalid",
            (0, 0x11) => "sgl descriptor type invalid",
            (0, 0x16) => "sgl offset invalid",
            (0, 0x22) => "transient transport error",
            (0, 0x80) => "lba out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (1, 0x01) => "invalid queue identifier",
            (1, 0x02) => "invalid queue size",
            (1, 0x05) => "async event request limit exceeded",
            (1, 0x09) => "invalid log page",
            (1, 0x0D) => "feature not saveable",
            (1, 0x0E) => "feature not changeable",
            (1, 0x80) => "connect: incompatible format",
            (1, 0x81) => "connect: controller busy",
            (1, 0x82) => "connect: invalid parameters",
            (1, 0x83) => "connect: restart discovery",
            (1, 0x84) => "connect: invalid host",
            (1, 0x91) => "authentication required",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            (2, 0x85) => "compare failure",
            (2, 0x86) => "access denied",
            _ => "unknown status",
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {:#x} sc {:#04x}{})",
            self.name(),
            self.sct,
            self.sc,
            if self.dnr { " dnr" } else { "" }
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_round_trip() {
        for s in [
            Status::SUCCESS,
            Status::INVALID_FIELD,
            Status::CONNECT_INVALID_HOST,
            Status::UNRECOVERED_READ_ERROR,
        ] {
            assert_eq!(Status::from_field(s.to_field()), s);
        }
        assert_eq!(Status::INVALID_FIELD.to_field(), 0x4002);
    }
}
