//! NVM I/O commands on the I/O queues: Read and Write (split at MDTS and the 16-bit block
//! count, the pieces kept in flight together), Flush, Write Zeroes and Dataset Management
//! deallocate.

use ferrite_block::IoBuf;
use ferrite_protocol::Sqe;
use ferrite_protocol::command::{DsmRange, RwCommand, io_opcode};

use crate::controller::{Controller, NamespaceGeometry};
use crate::error::{HostError, check_status};
use crate::join::join_all;
use crate::queue::{OutData, Request};

/// Most logical blocks one Read/Write/Write Zeroes command can carry (16-bit 0's based NLB).
const MAX_NLB: u64 = 65536;
/// Most ranges in one Dataset Management command.
const MAX_DSM_RANGES: usize = 256;
/// Transfer limit used when the controller reports MDTS 0 (no limit).
pub(crate) const UNLIMITED_TRANSFER: usize = 1 << 30;

impl Controller {
    /// Reads `nblocks` blocks at `lba` from namespace `nsid`.
    pub async fn read(&self, nsid: u32, lba: u64, nblocks: u32) -> Result<IoBuf, HostError> {
        let g = self.namespace_geometry(nsid).await?;
        let bs = g.block_size as usize;
        let chunks = self.split(lba, u64::from(nblocks), g)?;
        if chunks.len() <= 1 {
            return match chunks.first() {
                Some(&(l, n)) => self.read_chunk(nsid, l, n, bs).await,
                None => Ok(IoBuf::zeroed(0)),
            };
        }
        let parts = join_all(
            chunks
                .iter()
                .map(|&(l, n)| self.read_chunk(nsid, l, n, bs))
                .collect(),
        )
        .await?;
        let mut out = IoBuf::zeroed(nblocks as usize * bs);
        let mut off = 0;
        for p in parts {
            out[off..off + p.len()].copy_from_slice(&p);
            off += p.len();
        }
        Ok(out)
    }

    /// Writes `data` (a whole number of blocks) at `lba` of namespace `nsid`; with `fua`, the
    /// data is durable when this returns.
    pub async fn write(
        &self,
        nsid: u32,
        lba: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), HostError> {
        self.write_data(nsid, lba, OutData::copy_from(data), fua)
            .await
    }

    /// Like [`Controller::write`], without copying the buffer.
    pub async fn write_buf(
        &self,
        nsid: u32,
        lba: u64,
        data: IoBuf,
        fua: bool,
    ) -> Result<(), HostError> {
        self.write_data(nsid, lba, OutData::new(data), fua).await
    }

    async fn write_data(
        &self,
        nsid: u32,
        lba: u64,
        data: OutData,
        fua: bool,
    ) -> Result<(), HostError> {
        let g = self.namespace_geometry(nsid).await?;
        let bs = g.block_size as usize;
        if !data.len().is_multiple_of(bs) {
            return Err(HostError::InvalidRequest(format!(
                "write of {} bytes is not a multiple of the {bs}-byte block size",
                data.len()
            )));
        }
        let chunks = self.split(lba, (data.len() / bs) as u64, g)?;
        let mut futs = Vec::with_capacity(chunks.len());
        for (l, n) in chunks {
            let start = ((l - lba) as usize) * bs;
            let piece = data.slice(start..start + n as usize * bs).ok_or_else(|| {
                HostError::InvalidRequest("write chunk outside the buffer".into())
            })?;
            futs.push(self.write_chunk(nsid, l, n, piece, fua));
        }
        join_all(futs).await.map(|_| ())
    }

    /// Flushes namespace `nsid`'s volatile write cache.
    pub async fn flush(&self, nsid: u32) -> Result<(), HostError> {
        let sqe = Sqe {
            opcode: io_opcode::FLUSH,
            nsid,
            ..Default::default()
        };
        self.io_no_data("flush", sqe).await
    }

    /// Makes `nblocks` blocks at `lba` read as zeroes; with `deallocate` the controller may
    /// also release them (Write Zeroes with DEAC).
    pub async fn write_zeroes(
        &self,
        nsid: u32,
        lba: u64,
        nblocks: u64,
        deallocate: bool,
    ) -> Result<(), HostError> {
        let g = self.namespace_geometry(nsid).await?;
        let chunks = split_blocks(lba, nblocks, MAX_NLB, g.num_blocks)?;
        let futs = chunks
            .into_iter()
            .map(|(l, n)| {
                let mut sqe = Sqe {
                    opcode: io_opcode::WRITE_ZEROES,
                    nsid,
                    ..Default::default()
                };
                sqe.cdw10 = l as u32;
                sqe.cdw11 = (l >> 32) as u32;
                sqe.cdw12 = (n - 1) | if deallocate { 1 << 25 } else { 0 };
                self.io_no_data("write zeroes", sqe)
            })
            .collect();
        join_all(futs).await.map(|_| ())
    }

    /// Deallocates the `(lba, nblocks)` ranges (Dataset Management with AD).
    pub async fn deallocate(&self, nsid: u32, ranges: &[(u64, u64)]) -> Result<(), HostError> {
        let g = self.namespace_geometry(nsid).await?;
        let mut dsm = Vec::new();
        for &(lba, n) in ranges {
            for (l, n) in split_blocks(lba, n, u64::from(u32::MAX), g.num_blocks)? {
                dsm.push(DsmRange {
                    attributes: 0,
                    nlb: n,
                    slba: l,
                });
            }
        }
        let futs = dsm
            .chunks(MAX_DSM_RANGES)
            .map(|batch| {
                let mut data = Vec::with_capacity(batch.len() * 16);
                for r in batch {
                    r.encode(&mut data);
                }
                let sqe = Sqe {
                    opcode: io_opcode::DATASET_MANAGEMENT,
                    nsid,
                    cdw10: batch.len() as u32 - 1,
                    cdw11: 1 << 2,
                    ..Default::default()
                };
                async move {
                    let c = self
                        .pick_io()?
                        .submit(
                            "deallocate",
                            Request {
                                sqe,
                                data_out: Some(OutData::new(data)),
                                data_in_len: 0,
                            },
                        )
                        .await?;
                    check_status("deallocate", c.cqe.status)
                }
            })
            .collect();
        join_all(futs).await.map(|_| ())
    }

    /// Splits a block range into per-command chunks, checking it against the namespace.
    fn split(
        &self,
        lba: u64,
        nblocks: u64,
        g: NamespaceGeometry,
    ) -> Result<Vec<(u64, u32)>, HostError> {
        let per_cmd = ((self.max_transfer / g.block_size as usize) as u64).clamp(1, MAX_NLB);
        split_blocks(lba, nblocks, per_cmd, g.num_blocks)
    }

    async fn read_chunk(
        &self,
        nsid: u32,
        lba: u64,
        nblocks: u32,
        bs: usize,
    ) -> Result<IoBuf, HostError> {
        let mut sqe = Sqe {
            opcode: io_opcode::READ,
            nsid,
            ..Default::default()
        };
        RwCommand {
            slba: lba,
            nlb: nblocks,
            fua: false,
        }
        .apply(&mut sqe);
        let len = nblocks as usize * bs;
        let c = self
            .pick_io()?
            .submit(
                "read",
                Request {
                    sqe,
                    data_out: None,
                    data_in_len: len,
                },
            )
            .await?;
        check_status("read", c.cqe.status)?;
        Ok(c.data)
    }

    async fn write_chunk(
        &self,
        nsid: u32,
        lba: u64,
        nblocks: u32,
        data: OutData,
        fua: bool,
    ) -> Result<(), HostError> {
        let mut sqe = Sqe {
            opcode: io_opcode::WRITE,
            nsid,
            ..Default::default()
        };
        RwCommand {
            slba: lba,
            nlb: nblocks,
            fua,
        }
        .apply(&mut sqe);
        let c = self
            .pick_io()?
            .submit(
                "write",
                Request {
                    sqe,
                    data_out: Some(data),
                    data_in_len: 0,
                },
            )
            .await?;
        check_status("write", c.cqe.status)
    }

    async fn io_no_data(&self, op: &'static str, sqe: Sqe) -> Result<(), HostError> {
        let c = self
            .pick_io()?
            .submit(
                op,
                Request {
                    sqe,
                    data_out: None,
                    data_in_len: 0,
                },
            )
            .await?;
        check_status(op, c.cqe.status)
    }
}

/// Splits `nblocks` blocks at `lba` into chunks of at most `per_cmd` blocks, after checking
/// the range lies within `capacity` blocks.
pub(crate) fn split_blocks(
    lba: u64,
    nblocks: u64,
    per_cmd: u64,
    capacity: u64,
) -> Result<Vec<(u64, u32)>, HostError> {
    let end = lba
        .checked_add(nblocks)
        .filter(|&e| e <= capacity)
        .ok_or_else(|| {
            HostError::InvalidRequest(format!(
                "{nblocks} blocks at LBA {lba} exceed the namespace of {capacity} blocks"
            ))
        })?;
    let per_cmd = per_cmd.clamp(1, u64::from(u32::MAX));
    let mut out = Vec::new();
    let mut l = lba;
    while l < end {
        let n = per_cmd.min(end - l);
        out.push((l, n as u32));
        l += n;
    }
    Ok(out)
}

/// Maximum bytes per command: 2^MDTS minimum-size pages (CAP.MPSMIN), or a large default
/// when MDTS is 0.
pub(crate) fn max_transfer_bytes(mdts: u8, cap: u64) -> usize {
    if mdts == 0 {
        return UNLIMITED_TRANSFER;
    }
    let mpsmin = ((cap >> 48) & 0xf) as u32;
    let shift = 12 + mpsmin + u32::from(mdts);
    if shift >= UNLIMITED_TRANSFER.trailing_zeros() {
        UNLIMITED_TRANSFER
    } else {
        1usize << shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_splitting() {
        assert_eq!(
            split_blocks(0, 10, 4, 100).unwrap(),
            vec![(0, 4), (4, 4), (8, 2)]
        );
        assert_eq!(split_blocks(5, 0, 4, 100).unwrap(), vec![]);
        assert!(split_blocks(99, 2, 4, 100).is_err());
        assert!(split_blocks(u64::MAX, 2, 4, u64::MAX).is_err());
        let big = split_blocks(0, 1 << 33, u64::from(u32::MAX), 1 << 40).unwrap();
        assert_eq!(big.len(), 3);
        assert_eq!(big.iter().map(|&(_, n)| u64::from(n)).sum::<u64>(), 1 << 33);
    }

    #[test]
    fn mdts_to_bytes() {
        assert_eq!(max_transfer_bytes(0, 0), UNLIMITED_TRANSFER);
        assert_eq!(max_transfer_bytes(5, 0), 128 * 1024);
        assert_eq!(max_transfer_bytes(8, 0), 1 << 20);
        assert_eq!(
            max_transfer_bytes(1, 1 << 48),
            16384,
            "MPSMIN 1 means 8 KiB pages"
        );
        assert_eq!(max_transfer_bytes(60, 0), UNLIMITED_TRANSFER);
    }
}
