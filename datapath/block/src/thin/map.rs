//! In-memory metadata structures: a volume's virtual-to-physical cluster map and the bitmap of
//! physical clusters in use.

/// Marks an unmapped virtual cluster.
const UNMAPPED: u32 = u32::MAX;
/// Entries per leaf of the two-level cluster map (16 KiB leaves).
const LEAF_BITS: u32 = 12;
const LEAF: usize = 1 << LEAF_BITS;

/// A volume's map from virtual cluster to physical cluster: a two-level table whose leaves are
/// allocated on first use, so a huge, mostly empty thin volume costs 8 bytes per 4096 virtual
/// clusters until written.
#[derive(Debug, Default)]
pub(crate) struct ClusterMap {
    leaves: Vec<Option<Box<[u32]>>>,
    /// Number of virtual clusters.
    len: u64,
    /// Number of mapped virtual clusters.
    mapped: u64,
}

fn split(vc: u64) -> (usize, usize) {
    // Virtual cluster indices are below u32::MAX, so both parts fit in usize.
    ((vc >> LEAF_BITS) as usize, (vc as usize) & (LEAF - 1))
}

impl ClusterMap {
    /// An empty map of `len` virtual clusters.
    pub(crate) fn new(len: u64) -> ClusterMap {
        let mut m = ClusterMap::default();
        m.grow(len);
        m
    }

    /// Number of virtual clusters.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of mapped virtual clusters.
    pub(crate) fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Grows to `len` virtual clusters (never shrinks).
    pub(crate) fn grow(&mut self, len: u64) {
        if len > self.len {
            self.len = len;
            let leaves = len.div_ceil(LEAF as u64) as usize;
            self.leaves.resize_with(leaves, || None);
        }
    }

    /// The physical cluster behind `vc`, if mapped. `vc` beyond the end reads as unmapped.
    #[inline]
    pub(crate) fn get(&self, vc: u64) -> Option<u32> {
        if vc >= self.len {
            return None;
        }
        let (l, i) = split(vc);
        match self.leaves[l].as_deref() {
            Some(leaf) if leaf[i] != UNMAPPED => Some(leaf[i]),
            _ => None,
        }
    }

    /// Maps `vc` (which must be below `len`) to `pc`; returns the previous mapping.
    pub(crate) fn set(&mut self, vc: u64, pc: u32) -> Option<u32> {
        debug_assert!(vc < self.len && pc != UNMAPPED);
        let (l, i) = split(vc);
        let leaf = self.leaves[l].get_or_insert_with(|| vec![UNMAPPED; LEAF].into_boxed_slice());
        let prev = std::mem::replace(&mut leaf[i], pc);
        if prev == UNMAPPED {
            self.mapped += 1;
            None
        } else {
            Some(prev)
        }
    }

    /// Unmaps `vc`; returns the physical cluster it had.
    pub(crate) fn clear(&mut self, vc: u64) -> Option<u32> {
        if vc >= self.len {
            return None;
        }
        let (l, i) = split(vc);
        let leaf = self.leaves[l].as_deref_mut()?;
        let prev = std::mem::replace(&mut leaf[i], UNMAPPED);
        if prev == UNMAPPED {
            None
        } else {
            self.mapped -= 1;
            Some(prev)
        }
    }

    /// All mappings `(virtual, physical)` in virtual order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.leaves.iter().enumerate().flat_map(|(l, leaf)| {
            leaf.iter().flat_map(move |leaf| {
                leaf.iter().enumerate().filter_map(move |(i, &pc)| {
                    (pc != UNMAPPED).then_some((((l as u64) << LEAF_BITS) | i as u64, pc))
                })
            })
        })
    }

    /// Unmaps everything; returns the physical clusters that were mapped.
    pub(crate) fn take_all(&mut self) -> Vec<u32> {
        let out: Vec<u32> = self.iter().map(|(_, pc)| pc).collect();
        for leaf in &mut self.leaves {
            *leaf = None;
        }
        self.mapped = 0;
        out
    }
}

/// Bitmap of physical clusters in use, with next-fit allocation.
#[derive(Debug, Clone)]
pub(crate) struct ClusterBitmap {
    words: Vec<u64>,
    len: u64,
    used: u64,
    /// Word index where the next allocation search starts.
    cursor: usize,
}

impl ClusterBitmap {
    /// All-free bitmap of `len` clusters.
    pub(crate) fn new(len: u64) -> ClusterBitmap {
        ClusterBitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            used: 0,
            cursor: 0,
        }
    }

    /// Number of clusters.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of clusters in use.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// Whether `pc` is in use.
    pub(crate) fn is_used(&self, pc: u32) -> bool {
        let pc = pc as usize;
        self.words
            .get(pc / 64)
            .is_some_and(|w| w & (1 << (pc % 64)) != 0)
    }

    /// Marks `pc` used; returns false if it already was (or is out of range).
    pub(crate) fn set(&mut self, pc: u32) -> bool {
        if u64::from(pc) >= self.len || self.is_used(pc) {
            return false;
        }
        let pc = pc as usize;
        self.words[pc / 64] |= 1 << (pc % 64);
        self.used += 1;
        true
    }

    /// Marks `pc` free; returns false if it already was.
    pub(crate) fn clear(&mut self, pc: u32) -> bool {
        if !self.is_used(pc) {
            return false;
        }
        let pc = pc as usize;
        self.words[pc / 64] &= !(1 << (pc % 64));
        self.used -= 1;
        true
    }

    /// Finds a free cluster, marks it used and returns it.
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        if self.used >= self.len {
            return None;
        }
        let n = self.words.len();
        for k in 0..n {
            let wi = (self.cursor + k) % n;
            let w = self.words[wi];
            if w != u64::MAX {
                let bit = (!w).trailing_zeros() as u64;
                let pc = wi as u64 * 64 + bit;
                if pc < self.len {
                    self.cursor = wi;
                    // pc < len <= MAX_CLUSTERS, so it fits a u32.
                    let pc = pc as u32;
                    self.set(pc);
                    return Some(pc);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_map_basics() {
        let mut m = ClusterMap::new(10_000);
        assert_eq!(m.get(5), None);
        assert_eq!(m.set(5, 7), None);
        assert_eq!(m.set(9_999, 8), None);
        assert_eq!(m.get(5), Some(7));
        assert_eq!(m.get(10_000), None);
        assert_eq!(m.mapped(), 2);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(5, 7), (9_999, 8)]);
        assert_eq!(m.clear(5), Some(7));
        assert_eq!(m.clear(5), None);
        m.grow(20_000);
        m.set(19_999, 1);
        assert_eq!(m.len(), 20_000);
        let mut all = m.take_all();
        all.sort();
        assert_eq!(all, vec![1, 8]);
        assert_eq!(m.mapped(), 0);
        assert_eq!(m.iter().count(), 0);
    }

    #[test]
    fn bitmap_allocates_every_cluster_once() {
        let mut b = ClusterBitmap::new(130);
        let mut seen = std::collections::HashSet::new();
        while let Some(pc) = b.alloc() {
            assert!(seen.insert(pc));
        }
        assert_eq!(seen.len(), 130);
        assert_eq!(b.used(), 130);
        assert!(b.clear(64));
        assert!(!b.clear(64));
        assert_eq!(b.alloc(), Some(64));
        assert!(!b.set(64));
        assert!(!b.set(130));
    }
}
