//! Stripe geometry: where a pool block lives on which member, and how a pool LBA range splits
//! into per-member ranges.
//!
//! Pool block `lba` lies in stripe `s = lba / stripe_blocks`, which lives on member
//! `s % members` as that member's stripe number `s / members`. Within one member, the blocks of
//! any contiguous pool range form one contiguous member range, so an I/O never needs more
//! than one sub-I/O per member; [`Geometry::spans`] computes those ranges in O(members)
//! whatever the length (write-zeroes of a whole pool included), and [`Geometry::pieces`]
//! walks the stripe-sized pieces needed to scatter or gather a data buffer.

/// The striping layout of a pool. All quantities are in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Number of members (>= 1).
    pub members: u64,
    /// Blocks per stripe (>= 1).
    pub stripe_blocks: u64,
    /// First block of the data area on every member.
    pub data_offset_blocks: u64,
    /// Blocks of data area used on every member (a multiple of `stripe_blocks`).
    pub member_data_blocks: u64,
}

/// The part of a pool range that falls on one member: one contiguous member range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Member index.
    pub member: usize,
    /// First member block (absolute on the member device, data offset included).
    pub start: u64,
    /// Length in blocks (> 0).
    pub nblocks: u64,
}

/// A run of a pool range inside one stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Member index.
    pub member: usize,
    /// Offset in blocks from the start of the pool range.
    pub pool_offset: u64,
    /// Offset in blocks from the start of that member's [`Span`] for the same range.
    pub member_offset: u64,
    /// Length in blocks (> 0).
    pub nblocks: u64,
}

impl Geometry {
    /// Pool capacity in blocks.
    pub fn num_blocks(&self) -> u64 {
        self.members * self.member_data_blocks
    }

    /// Blocks of member `member` that lie in pool blocks `[0, lba)`, i.e. the data-relative
    /// member block where the member's share of a range starting at `lba` begins.
    fn member_blocks_before(&self, member: u64, lba: u64) -> u64 {
        let round = self.stripe_blocks * self.members;
        let full = lba / round;
        let rem = lba % round;
        full * self.stripe_blocks
            + rem
                .saturating_sub(member * self.stripe_blocks)
                .min(self.stripe_blocks)
    }

    /// The member and absolute member block holding pool block `lba`.
    #[cfg(test)]
    pub fn locate(&self, lba: u64) -> (usize, u64) {
        let stripe = lba / self.stripe_blocks;
        let member = stripe % self.members;
        let block = (stripe / self.members) * self.stripe_blocks + lba % self.stripe_blocks;
        (member as usize, self.data_offset_blocks + block)
    }

    /// The non-empty per-member ranges of pool range `[lba, lba + nblocks)` (already
    /// range-checked), in member order.
    pub fn spans(&self, lba: u64, nblocks: u64) -> Vec<Span> {
        let end = lba + nblocks;
        (0..self.members)
            .filter_map(|m| {
                let a = self.member_blocks_before(m, lba);
                let b = self.member_blocks_before(m, end);
                (b > a).then_some(Span {
                    member: m as usize,
                    start: self.data_offset_blocks + a,
                    nblocks: b - a,
                })
            })
            .collect()
    }

    /// The stripe-sized pieces of pool range `[lba, lba + nblocks)` (already range-checked),
    /// in pool order, with offsets relative to the range and to each member's span.
    pub fn pieces(&self, lba: u64, nblocks: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = lba + nblocks;
        let mut pos = lba;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let stripe = pos / self.stripe_blocks;
            let within = pos % self.stripe_blocks;
            let len = (self.stripe_blocks - within).min(end - pos);
            let member = stripe % self.members;
            let member_block = (stripe / self.members) * self.stripe_blocks + within;
            let piece = Piece {
                member: member as usize,
                pool_offset: pos - lba,
                member_offset: member_block - self.member_blocks_before(member, lba),
                nblocks: len,
            };
            pos += len;
            Some(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometries() -> Vec<Geometry> {
        let mut v = Vec::new();
        for members in [1u64, 2, 3, 5] {
            for stripe_blocks in [1u64, 4, 16] {
                v.push(Geometry {
                    members,
                    stripe_blocks,
                    data_offset_blocks: 256,
                    member_data_blocks: stripe_blocks * 4,
                });
            }
        }
        v
    }

    /// Reference mapping computed block by block.
    fn naive(g: &Geometry, lba: u64, nblocks: u64) -> Vec<(usize, u64)> {
        (lba..lba + nblocks).map(|b| g.locate(b)).collect()
    }

    #[test]
    fn locate_matches_the_definition() {
        let g = Geometry {
            members: 3,
            stripe_blocks: 16,
            data_offset_blocks: 256,
            member_data_blocks: 64,
        };
        assert_eq!(g.locate(0), (0, 256));
        assert_eq!(g.locate(15), (0, 271));
        assert_eq!(g.locate(16), (1, 256));
        assert_eq!(g.locate(47), (2, 271));
        assert_eq!(g.locate(48), (0, 272));
        assert_eq!(g.locate(g.num_blocks() - 1), (2, 256 + 63));
    }

    #[test]
    fn spans_and_pieces_agree_with_block_by_block_mapping() {
        for g in geometries() {
            let cap = g.num_blocks();
            // Every start for small stripes; a stride that still hits every in-stripe offset
            // class for large ones (keeps the test fast in debug builds).
            let stride = if g.stripe_blocks > 4 { 5 } else { 1 };
            for lba in (0..cap).step_by(stride) {
                for nblocks in 0..=(cap - lba).min(2 * g.stripe_blocks * g.members + 2) {
                    let want = naive(&g, lba, nblocks);
                    let spans = g.spans(lba, nblocks);
                    // Each member's blocks form exactly its span, in order.
                    for m in 0..g.members as usize {
                        let blocks: Vec<u64> =
                            want.iter().filter(|x| x.0 == m).map(|x| x.1).collect();
                        match spans.iter().find(|s| s.member == m) {
                            None => assert!(blocks.is_empty(), "{g:?} {lba}+{nblocks} m{m}"),
                            Some(s) => {
                                let expect: Vec<u64> = (s.start..s.start + s.nblocks).collect();
                                assert_eq!(blocks, expect, "{g:?} {lba}+{nblocks} m{m}");
                            }
                        }
                    }
                    // Pieces tile the range and point at the same blocks.
                    let mut covered = 0;
                    for p in g.pieces(lba, nblocks) {
                        assert_eq!(p.pool_offset, covered);
                        assert!(p.nblocks > 0 && p.nblocks <= g.stripe_blocks);
                        let span = spans.iter().find(|s| s.member == p.member).unwrap();
                        assert!(p.member_offset + p.nblocks <= span.nblocks);
                        for i in 0..p.nblocks {
                            assert_eq!(
                                want[(p.pool_offset + i) as usize],
                                (p.member, span.start + p.member_offset + i)
                            );
                        }
                        covered += p.nblocks;
                    }
                    assert_eq!(covered, nblocks);
                }
            }
        }
    }

    #[test]
    fn whole_pool_spans_are_whole_data_areas() {
        let g = Geometry {
            members: 4,
            stripe_blocks: 16,
            data_offset_blocks: 256,
            member_data_blocks: 1 << 40,
        };
        let spans = g.spans(0, g.num_blocks());
        assert_eq!(spans.len(), 4);
        for (m, s) in spans.iter().enumerate() {
            assert_eq!(
                *s,
                Span {
                    member: m,
                    start: 256,
                    nblocks: 1 << 40
                }
            );
        }
    }
}
