//! NVMe completion queue entries (16 bytes).

use crate::bytes::{get_u16, get_u32, put_u16, put_u32};
use crate::status::Status;

/// Size of a completion queue entry.
pub const CQE_LEN: usize = 16;

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    /// Command-specific result (dword 0).
    pub result: u32,
    /// Dword 1 (the upper half of a 64-bit Property Get value).
    pub result_hi: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    /// A completion for `cid` with `status` and no result.
    pub fn new(cid: u16, status: Status) -> Self {
        Cqe {
            result: 0,
            result_hi: 0,
            sqhd: 0,
            sqid: 0,
            cid,
            status,
        }
    }

    /// The 64-bit result (dwords 0 and 1), as Property Get returns it.
    pub fn result64(&self) -> u64 {
        u64::from(self.result) | (u64::from(self.result_hi) << 32)
    }

    pub fn decode(b: &[u8; CQE_LEN]) -> Cqe {
        let sf = get_u16(b, 14);
        Cqe {
            result: get_u32(b, 0),
            result_hi: get_u32(b, 4),
            sqhd: get_u16(b, 8),
            sqid: get_u16(b, 10),
            cid: get_u16(b, 12),
            status: Status::from_field(sf >> 1),
        }
    }

    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        put_u32(&mut b, 0, self.result);
        put_u32(&mut b, 4, self.result_hi);
        put_u16(&mut b, 8, self.sqhd);
        put_u16(&mut b, 10, self.sqid);
        put_u16(&mut b, 12, self.cid);
        // Bit 0 is the phase tag, unused on fabrics.
        put_u16(&mut b, 14, self.status.to_field() << 1);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(result in any::<u32>(), hi in any::<u32>(), sqhd in any::<u16>(), sqid in any::<u16>(),
                      cid in any::<u16>(), sct in 0u8..8, sc in any::<u8>(), dnr in any::<bool>()) {
            let c = Cqe { result, result_hi: hi, sqhd, sqid, cid, status: Status::new(sct, sc, dnr) };
            prop_assert_eq!(Cqe::decode(&c.encode()), c);
        }
    }
}
