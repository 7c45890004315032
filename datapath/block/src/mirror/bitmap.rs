//! [`Bitmap`]: the dirty-region bitmap (one bit per region), in memory and in its on-disk form
//! (bit `i` is bit `i % 8` of byte `i / 8`).

/// A fixed-length bitset.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    nbits: u64,
}

impl Bitmap {
    /// An all-clear bitmap of `nbits` bits.
    pub(crate) fn new(nbits: u64) -> Bitmap {
        // Bounded by label::MAX_REGIONS (a few million bits), so the cast cannot truncate.
        let nwords = nbits.div_ceil(64) as usize;
        Bitmap {
            words: vec![0; nwords],
            nbits,
        }
    }

    /// Whether bit `i` is set (false past the end).
    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.nbits && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bits `[start, end)` (clamped to the length); returns whether any was newly set.
    pub(crate) fn set_range(&mut self, start: u64, end: u64) -> bool {
        let mut changed = false;
        for i in start..end.min(self.nbits) {
            let w = &mut self.words[(i / 64) as usize];
            let m = 1u64 << (i % 64);
            changed |= *w & m == 0;
            *w |= m;
        }
        changed
    }

    /// Whether every bit in `[start, end)` (clamped) is set.
    #[cfg(test)]
    pub(crate) fn contains_range(&self, start: u64, end: u64) -> bool {
        (start..end.min(self.nbits)).all(|i| self.get(i))
    }

    /// Lengthens the bitmap to `nbits` bits (new bits clear); never shortens it.
    pub(crate) fn grow(&mut self, nbits: u64) {
        if nbits > self.nbits {
            self.words.resize(nbits.div_ceil(64) as usize, 0);
            self.nbits = nbits;
        }
    }

    /// Number of bits.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.nbits
    }

    /// Clears every bit.
    pub(crate) fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Sets every bit that is set in `other` (bits past this bitmap's length are ignored).
    pub(crate) fn union_with(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.mask_tail();
    }

    /// Clears the bits of the last word past the length.
    fn mask_tail(&mut self) {
        let tail = self.nbits % 64;
        if let Some(last) = self.words.last_mut()
            && tail != 0
        {
            *last &= (1u64 << tail) - 1;
        }
    }

    /// Number of set bits.
    pub(crate) fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The indices of the set bits, ascending.
    pub(crate) fn ones(&self) -> Vec<u64> {
        (0..self.nbits).filter(|&i| self.get(i)).collect()
    }

    /// Length of the on-disk form in bytes.
    pub(crate) fn byte_len(nbits: u64) -> usize {
        nbits.div_ceil(8) as usize
    }

    /// The on-disk form: `byte_len(len)` bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let n = Self::byte_len(self.nbits);
        let mut out = Vec::with_capacity(n);
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Parses the on-disk form; bits past `nbits` are ignored.
    pub(crate) fn from_bytes(bytes: &[u8], nbits: u64) -> Bitmap {
        let mut bm = Bitmap::new(nbits);
        for (i, chunk) in bytes.chunks(8).enumerate().take(bm.words.len()) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            bm.words[i] = u64::from_le_bytes(w);
        }
        bm.mask_tail();
        bm
    }
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitmap")
            .field("nbits", &self.nbits)
            .field("set", &self.count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_keeps_bits_and_union_respects_lengths() {
        let mut a = Bitmap::new(70);
        a.set_range(3, 5);
        a.set_range(69, 70);
        a.grow(200);
        assert_eq!(a.len(), 200);
        assert_eq!(a.ones(), vec![3, 4, 69]);
        a.set_range(150, 152);
        a.grow(100); // never shrinks
        assert_eq!(a.len(), 200);
        let mut short = Bitmap::new(66);
        short.union_with(&a);
        assert_eq!(short.ones(), vec![3, 4]);
        assert_eq!(short.to_bytes().len(), Bitmap::byte_len(66));
        let mut long = Bitmap::new(300);
        long.union_with(&a);
        assert_eq!(long.ones(), vec![3, 4, 69, 150, 151]);
    }

    #[test]
    fn set_get_count_and_ranges() {
        let mut b = Bitmap::new(130);
        assert_eq!(b.count(), 0);
        assert!(b.set_range(3, 5));
        assert!(!b.set_range(3, 5), "already set");
        assert!(b.set_range(63, 66));
        assert!(b.set_range(129, 200), "clamped to the length");
        assert_eq!(b.ones(), vec![3, 4, 63, 64, 65, 129]);
        assert!(b.contains_range(63, 66));
        assert!(!b.contains_range(62, 66));
        assert!(b.contains_range(10, 10));
        assert!(!b.get(130));
        assert_eq!(b.count(), 6);
        b.clear();
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn byte_round_trip_and_union() {
        let mut a = Bitmap::new(77);
        a.set_range(0, 1);
        a.set_range(70, 77);
        let bytes = a.to_bytes();
        assert_eq!(bytes.len(), 10);
        assert_eq!(bytes[0], 1);
        assert_eq!(Bitmap::from_bytes(&bytes, 77), a);
        // Junk past the end is dropped.
        let junk = vec![0xffu8; 10];
        assert_eq!(Bitmap::from_bytes(&junk, 77).count(), 77);
        let mut b = Bitmap::new(77);
        b.set_range(5, 6);
        b.union_with(&a);
        assert_eq!(b.count(), 9);
    }
}
