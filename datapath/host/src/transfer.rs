//! The pure bookkeeping of one queue, kept apart from the sockets so it can be unit tested:
//! command identifier allocation, where a command's data travels (in the capsule or by
//! R2T/H2CData), how an R2T is cut into H2CData PDUs, and the bounds and ordering checks on
//! the C2HData PDUs that fill a read buffer.

use std::collections::VecDeque;
use std::ops::Range;

use ferrite_protocol::PduError;

/// Hands out command identifiers `0..depth`. Freed identifiers go to the back of the line so
/// that a late, stale completion is unlikely to match a fresh command.
#[derive(Debug)]
pub(crate) struct CidAllocator {
    free: VecDeque<u16>,
    in_use: Vec<bool>,
}

impl CidAllocator {
    pub(crate) fn new(depth: u16) -> CidAllocator {
        CidAllocator {
            free: (0..depth).collect(),
            in_use: vec![false; usize::from(depth)],
        }
    }

    /// A free identifier, or `None` when `depth` commands are outstanding.
    pub(crate) fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop_front()?;
        self.in_use[usize::from(cid)] = true;
        Some(cid)
    }

    /// Returns `cid` to the pool; `false` (and no change) if it was not allocated.
    pub(crate) fn free(&mut self, cid: u16) -> bool {
        match self.in_use.get_mut(usize::from(cid)) {
            Some(used) if *used => {
                *used = false;
                self.free.push_back(cid);
                true
            }
            _ => false,
        }
    }

    /// Number of identifiers currently allocated.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.in_use.len() - self.free.len()
    }
}

/// Whether `len` bytes of write data go in the command capsule (`true`) or wait for R2Ts.
/// Connect data always travels in the capsule (the fabrics specification requires it).
pub(crate) fn in_capsule(len: usize, in_capsule_max: usize, is_connect: bool) -> bool {
    len > 0 && (is_connect || len <= in_capsule_max)
}

/// Checks an R2T against the command's data length and cuts it into H2CData PDU ranges of at
/// most `maxh2cdata` bytes (offsets into the command's data).
pub(crate) fn h2c_chunks(
    data_len: usize,
    r2to: u32,
    r2tl: u32,
    maxh2cdata: u32,
) -> Result<Vec<Range<usize>>, PduError> {
    let start = r2to as usize;
    let end = start
        .checked_add(r2tl as usize)
        .filter(|&e| e <= data_len)
        .ok_or(PduError::DataOutOfRange(
            "R2T asks for data beyond the command's data length",
        ))?;
    if r2tl == 0 {
        return Err(PduError::InvalidHeaderField {
            offset: 16,
            reason: "R2TL is zero",
        });
    }
    let step = (maxh2cdata as usize).max(1);
    let mut out = Vec::with_capacity((end - start).div_ceil(step));
    let mut off = start;
    while off < end {
        let n = step.min(end - off);
        out.push(off..off + n);
        off += n;
    }
    Ok(out)
}

/// Tracks the C2HData PDUs of one read: each must start where the previous ended (the
/// controller sends data in order) and stay inside the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadAssembly {
    len: usize,
    received: usize,
}

impl ReadAssembly {
    pub(crate) fn new(len: usize) -> ReadAssembly {
        ReadAssembly { len, received: 0 }
    }

    /// Accepts a C2HData PDU of `datal` bytes at `datao`; returns the buffer range to fill.
    pub(crate) fn accept(&mut self, datao: u32, datal: u32) -> Result<Range<usize>, PduError> {
        let start = datao as usize;
        let end = start
            .checked_add(datal as usize)
            .filter(|&e| e <= self.len)
            .ok_or(PduError::DataOutOfRange(
                "C2HData beyond the command's data length",
            ))?;
        if start != self.received {
            return Err(PduError::Sequence(
                "C2HData offset is not where the previous data ended",
            ));
        }
        self.received = end;
        Ok(start..end)
    }

    /// Whether every byte of the buffer has arrived.
    pub(crate) fn complete(&self) -> bool {
        self.received == self.len
    }

    pub(crate) fn received(&self) -> usize {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_allocator_exhausts_and_recycles() {
        let mut a = CidAllocator::new(3);
        let ids: Vec<u16> = (0..3).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(a.alloc(), None);
        assert_eq!(a.outstanding(), 3);
        assert!(a.free(1));
        assert!(!a.free(1), "double free is refused");
        assert!(!a.free(7), "unknown id is refused");
        assert_eq!(a.alloc(), Some(1));
        assert!(a.free(0));
        assert!(a.free(2));
        // FIFO reuse: 0 then 2.
        assert_eq!(a.alloc(), Some(0));
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.outstanding(), 3);
    }

    #[test]
    fn zero_depth_allocator_is_always_full() {
        let mut a = CidAllocator::new(0);
        assert_eq!(a.alloc(), None);
        assert!(!a.free(0));
    }

    #[test]
    fn placement() {
        assert!(in_capsule(4096, 8192, false));
        assert!(!in_capsule(8193, 8192, false));
        assert!(
            !in_capsule(0, 8192, false),
            "no data, nothing in the capsule"
        );
        assert!(in_capsule(1024, 0, true), "connect data always in capsule");
    }

    #[test]
    fn r2t_split_at_maxh2cdata() {
        let c = h2c_chunks(1 << 20, 0, 1 << 20, 131072).unwrap();
        assert_eq!(c.len(), 8);
        assert_eq!(c[0], 0..131072);
        assert_eq!(c[7], 917504..1048576);
        let c = h2c_chunks(10000, 4096, 5904, 4096).unwrap();
        assert_eq!(c, vec![4096..8192, 8192..10000]);
        assert!(matches!(
            h2c_chunks(8192, 4096, 4097, 4096),
            Err(PduError::DataOutOfRange(_))
        ));
        assert!(matches!(
            h2c_chunks(8192, u32::MAX, 2, 4096),
            Err(PduError::DataOutOfRange(_))
        ));
        assert!(h2c_chunks(8192, 0, 0, 4096).is_err());
    }

    #[test]
    fn read_reassembly_bounds_and_order() {
        let mut r = ReadAssembly::new(8192);
        assert_eq!(r.accept(0, 4096).unwrap(), 0..4096);
        assert!(!r.complete());
        // A gap or a rewind is a sequence error.
        assert!(matches!(
            ReadAssembly {
                received: 4096,
                ..r
            }
            .accept(0, 100),
            Err(PduError::Sequence(_))
        ));
        assert!(matches!(
            r.clone().accept(6000, 100),
            Err(PduError::Sequence(_))
        ));
        // Beyond the buffer, including overflowing offsets, is out of range.
        assert!(matches!(
            r.clone().accept(4096, 4097),
            Err(PduError::DataOutOfRange(_))
        ));
        assert!(matches!(
            r.clone().accept(u32::MAX, u32::MAX),
            Err(PduError::DataOutOfRange(_))
        ));
        assert_eq!(r.accept(4096, 4096).unwrap(), 4096..8192);
        assert!(r.complete());
        assert_eq!(r.received(), 8192);
        assert!(matches!(
            r.accept(8192, 1),
            Err(PduError::DataOutOfRange(_))
        ));
    }
}
