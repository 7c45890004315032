//! Names the operator derives: pool names on nodes and NVMe Qualified Names.
//!
//! The NQN forms match the datapath's defaults (`nqn.2024-01.dev.ferrite:volume-<uuid>`,
//! `...:replica-<uuid>`, `...:node-<name>`), so a node configured by hand and one configured
//! by the operator export the same names.

/// NQN prefix of everything Ferrite exports.
pub const NQN_PREFIX: &str = "nqn.2024-01.dev.ferrite";

/// Longest pool name a node accepts.
pub const MAX_POOL_NAME_LEN: usize = 63;

/// The subsystem NQN hosts connect to for a volume (`uid`: the Volume's `metadata.uid`, so
/// a Volume deleted and recreated under the same name gets a new NQN).
pub fn volume_nqn(uid: &str) -> String {
    format!("{NQN_PREFIX}:volume-{uid}")
}

/// The NQN a replica is exported under, for the target node to connect to.
pub fn replica_nqn(uuid: &str) -> String {
    format!("{NQN_PREFIX}:replica-{uuid}")
}

/// The name of a StoragePool's pool on its node.
///
/// Nodes accept 1 to 63 bytes of `a-z`, `0-9` and `-`; Kubernetes names may also hold `.`
/// and run to 253 bytes. A name the node accepts is used as is; any other is made valid (each
/// other byte becomes `-`), cut to 54 bytes and given a `-` and 8 hex digits of a hash of the
/// whole name, so that distinct StoragePools never share a pool name.
pub fn node_pool_name(storage_pool: &str) -> String {
    let valid = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    if !storage_pool.is_empty()
        && storage_pool.len() <= MAX_POOL_NAME_LEN
        && storage_pool.bytes().all(valid)
    {
        return storage_pool.to_string();
    }
    let cleaned: String = storage_pool
        .bytes()
        .take(54)
        .map(|c| if valid(c) { char::from(c) } else { '-' })
        .collect();
    format!("{cleaned}-{:08x}", fnv1a(storage_pool.as_bytes()))
}

/// 32-bit FNV-1a: a small, stable hash (the pool name must not change between releases).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_pool_names_pass_through() {
        assert_eq!(node_pool_name("fast-pool-1"), "fast-pool-1");
        assert_eq!(node_pool_name(&"a".repeat(63)), "a".repeat(63));
    }

    #[test]
    fn other_pool_names_are_made_valid_and_stay_distinct() {
        let a = node_pool_name("pool.node-1");
        let b = node_pool_name("pool-node-1.");
        assert!(a.starts_with("pool-node-1-"), "{a}");
        assert_ne!(a, b);
        let long = node_pool_name(&"x.".repeat(100));
        assert!(long.len() <= MAX_POOL_NAME_LEN, "{long}");
        for name in [a, b, long] {
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            );
        }
        // Stable across calls (and releases: the hash is fixed).
        assert_eq!(node_pool_name("p.q"), node_pool_name("p.q"));
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn nqns_match_the_datapath_defaults() {
        assert_eq!(volume_nqn("u1"), "nqn.2024-01.dev.ferrite:volume-u1");
        assert_eq!(replica_nqn("r1"), "nqn.2024-01.dev.ferrite:replica-r1");
    }
}
