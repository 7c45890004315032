//! Offline consistency check: compare two devices (or the data areas of two replicas) region
//! by region with CRC32C and report the byte ranges that differ.

use std::ops::Range;

use crate::{BlockDevice, BlockError};

use super::MirrorError;
use super::label::{self, LabelState, RESERVE_BYTES};

/// The result of [`compare`] or [`compare_replicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareReport {
    /// Bytes compared (the common length).
    pub bytes_compared: u64,
    /// Comparison granularity in bytes.
    pub region_size: u64,
    /// Byte ranges (relative to the compared area, adjacent regions merged) whose CRC32C
    /// differs.
    pub differing: Vec<Range<u64>>,
    /// `Some((a, b))` when the compared areas have different sizes (only the common length
    /// was compared).
    pub size_mismatch: Option<(u64, u64)>,
}

impl CompareReport {
    /// Whether the areas are the same size and no region differs.
    pub fn identical(&self) -> bool {
        self.differing.is_empty() && self.size_mismatch.is_none()
    }

    /// Total bytes in differing ranges.
    pub fn differing_bytes(&self) -> u64 {
        self.differing.iter().map(|r| r.end - r.start).sum()
    }
}

fn check_region(region: u64, a: &dyn BlockDevice, b: &dyn BlockDevice) -> Result<(), BlockError> {
    let bs = u64::from(a.block_size().max(b.block_size()));
    if region == 0 || !region.is_multiple_of(bs) || u32::try_from(region / 512).is_err() {
        return Err(BlockError::InvalidSpec(format!(
            "compare region size {region} must be a non-zero multiple of {bs}"
        )));
    }
    Ok(())
}

async fn read_at(dev: &dyn BlockDevice, off: u64, len: u64) -> Result<u32, BlockError> {
    let bs = u64::from(dev.block_size());
    // `len` is a multiple of the block size and bounded by the region size (checked).
    let n =
        u32::try_from(len / bs).map_err(|_| BlockError::InvalidSpec("region too large".into()))?;
    let buf = dev.read(off / bs, n).await?;
    Ok(crc32c::crc32c(&buf))
}

/// Compares `len` bytes at `a_off` of `a` with `len` bytes at `b_off` of `b`.
async fn compare_range(
    a: &dyn BlockDevice,
    a_off: u64,
    b: &dyn BlockDevice,
    b_off: u64,
    len: u64,
    region: u64,
) -> Result<Vec<Range<u64>>, BlockError> {
    let mut differing: Vec<Range<u64>> = Vec::new();
    let mut pos = 0;
    while pos < len {
        let n = region.min(len - pos);
        let (ca, cb) = tokio::join!(read_at(a, a_off + pos, n), read_at(b, b_off + pos, n));
        if ca? != cb? {
            match differing.last_mut() {
                Some(last) if last.end == pos => last.end = pos + n,
                _ => differing.push(pos..pos + n),
            }
        }
        pos += n;
    }
    Ok(differing)
}

/// Compares two whole devices region by region (CRC32C of each `region`-byte region; the last
/// may be short). `region` must be a multiple of both block sizes.
pub async fn compare(
    a: &dyn BlockDevice,
    b: &dyn BlockDevice,
    region: u64,
) -> Result<CompareReport, BlockError> {
    check_region(region, a, b)?;
    let (sa, sb) = (a.size_bytes(), b.size_bytes());
    let len = sa.min(sb);
    Ok(CompareReport {
        bytes_compared: len,
        region_size: region,
        differing: compare_range(a, 0, b, 0, len, region).await?,
        size_mismatch: (sa != sb).then_some((sa, sb)),
    })
}

/// Compares the data areas of two replica devices of a mirror (skipping the 1 MiB label
/// reserve). The compared length is the volume size from their labels when both carry one
/// (it must agree), else the smaller data area.
pub async fn compare_replicas(
    a: &dyn BlockDevice,
    b: &dyn BlockDevice,
    region: u64,
) -> Result<CompareReport, MirrorError> {
    check_region(region, a, b)?;
    let size_of = |dev: &dyn BlockDevice| dev.size_bytes().saturating_sub(RESERVE_BYTES);
    let (la, lb) = (label::read_label(a).await?, label::read_label(b).await?);
    let (sa, sb) = match (la, lb) {
        (LabelState::Valid(x), LabelState::Valid(y)) => {
            (x.geometry.data_bytes, y.geometry.data_bytes)
        }
        _ => (size_of(a), size_of(b)),
    };
    let len = sa.min(sb).min(size_of(a)).min(size_of(b));
    Ok(CompareReport {
        bytes_compared: len,
        region_size: region,
        differing: compare_range(a, RESERVE_BYTES, b, RESERVE_BYTES, len, region).await?,
        size_mismatch: (sa != sb).then_some((sa, sb)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoBuf, RamDevice};

    #[tokio::test]
    async fn reports_merged_differing_ranges() {
        let a = RamDevice::new(8 << 20, 512).unwrap();
        let b = RamDevice::new(8 << 20, 4096).unwrap();
        let r = compare(&a, &b, 1 << 20).await.unwrap();
        assert!(r.identical());
        assert_eq!(r.bytes_compared, 8 << 20);
        // Regions 2 and 3 differ (adjacent: merged), and region 6.
        a.write((2 << 20) / 512 + 1, IoBuf::from_slice(&[1; 512]), false)
            .await
            .unwrap();
        b.write((3 << 20) / 4096, IoBuf::from_slice(&[2; 4096]), false)
            .await
            .unwrap();
        b.write((6 << 20) / 4096 + 5, IoBuf::from_slice(&[3; 4096]), false)
            .await
            .unwrap();
        let r = compare(&a, &b, 1 << 20).await.unwrap();
        assert_eq!(
            r.differing,
            vec![(2 << 20)..(4 << 20), (6 << 20)..(7 << 20)]
        );
        assert_eq!(r.differing_bytes(), 3 << 20);
        assert!(compare(&a, &b, 1000).await.is_err());
        // Data areas only: a difference inside the reserve is not reported.
        let c = RamDevice::new(8 << 20, 512).unwrap();
        let d = RamDevice::new(9 << 20, 512).unwrap();
        c.write(0, IoBuf::from_slice(&[9; 512]), false)
            .await
            .unwrap();
        let r = compare_replicas(&c, &d, 1 << 20).await.unwrap();
        assert_eq!(r.bytes_compared, 7 << 20);
        assert!(r.differing.is_empty());
        assert_eq!(r.size_mismatch, Some((7 << 20, 8 << 20)));
        let r = compare(&c, &d, 1 << 20).await.unwrap();
        assert_eq!(r.differing, vec![0..(1 << 20)]);
    }
}
