//! [`HostOptions`]: who the host is (host NQN and host ID, DH-HMAC-CHAP secrets), what it
//! negotiates (digests, queue count and depth, keep-alive timeout, authentication hashes and
//! DH groups) and how long it waits for anything.

use std::time::Duration;

use ferrite_protocol::dhchap::{DhGroup, HashId, Secret};

/// Connection options for [`crate::Controller::connect`] and [`crate::discover`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOptions {
    /// The host NQN sent in Connect data (the target's access list matches on it).
    pub hostnqn: String,
    /// The host identifier sent in Connect data.
    pub hostid: [u8; 16],
    /// Request CRC32C header digests.
    pub header_digest: bool,
    /// Request CRC32C data digests.
    pub data_digest: bool,
    /// Number of I/O queues (one TCP connection each). The controller may grant fewer.
    pub io_queues: u16,
    /// Commands outstanding per I/O queue; clamped to the controller's CAP.MQES and MAXCMD.
    pub queue_depth: u16,
    /// Keep-alive timeout in milliseconds; 0 disables keep-alive. The host sends Keep Alive
    /// every `kato_ms / 2`.
    pub kato_ms: u32,
    /// Ask the controller to disable SQ flow control (Connect CATTR bit 2): successful reads
    /// then complete with the C2HData SUCCESS flag instead of a response capsule.
    pub disable_sqflow: bool,
    /// Upper bound on every wait: TCP connect, each command, controller ready and shutdown.
    pub timeout: Duration,
    /// DH-HMAC-CHAP secret of this host: used when a controller asks for in-band
    /// authentication (ATR in the Connect response). Without it such a connect fails.
    pub dhchap_secret: Option<Secret>,
    /// The controller's DH-HMAC-CHAP secret: when set, the host also makes the controller
    /// prove it knows it (bidirectional authentication).
    pub dhchap_ctrl_secret: Option<Secret>,
    /// Hash functions offered in AUTH_Negotiate.
    pub dhchap_hashes: Vec<HashId>,
    /// DH groups offered in AUTH_Negotiate.
    pub dhchap_groups: Vec<DhGroup>,
}

impl HostOptions {
    /// Default options with a fixed host identity: `hostid` is used both as the host ID and
    /// as the UUID in `nqn.2014-08.org.nvmexpress:uuid:<hostid>`.
    pub fn with_hostid(hostid: [u8; 16]) -> HostOptions {
        HostOptions {
            hostnqn: uuid_hostnqn(&hostid),
            hostid,
            header_digest: false,
            data_digest: false,
            io_queues: 2,
            queue_depth: 128,
            kato_ms: 5000,
            disable_sqflow: false,
            timeout: Duration::from_secs(10),
            dhchap_secret: None,
            dhchap_ctrl_secret: None,
            dhchap_hashes: HashId::ALL.to_vec(),
            dhchap_groups: DhGroup::ALL.to_vec(),
        }
    }
}

impl Default for HostOptions {
    /// A random (version 4 UUID) host identity, no digests, 2 I/O queues of depth 128, a 5 s
    /// keep-alive timeout and a 10 s operation timeout.
    fn default() -> Self {
        HostOptions::with_hostid(random_uuid())
    }
}

/// A random RFC 4122 version 4 UUID.
pub fn random_uuid() -> [u8; 16] {
    let mut u: [u8; 16] = rand::random();
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

pub use ferrite_block::uuid_text::format_uuid;

/// The UUID-based host NQN the NVMe specification defines: `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
pub fn uuid_hostnqn(u: &[u8; 16]) -> String {
    format!("nqn.2014-08.org.nvmexpress:uuid:{}", format_uuid(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_identity_is_a_valid_uuid_nqn() {
        let a = HostOptions::default();
        let b = HostOptions::default();
        assert_ne!(a.hostnqn, b.hostnqn, "each default gets its own identity");
        ferrite_protocol::nqn::validate(&a.hostnqn).unwrap();
        assert!(a.hostnqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert_eq!(
            a.hostnqn.len(),
            "nqn.2014-08.org.nvmexpress:uuid:".len() + 36
        );
        assert_eq!(a.hostid[6] >> 4, 4, "version 4");
        assert_eq!(a.hostid[8] >> 6, 2, "RFC 4122 variant");
        assert!(a.hostnqn.ends_with(&format_uuid(&a.hostid)));
    }

    #[test]
    fn uuid_format() {
        let u = [
            0x0f, 0x6a, 0x0e, 0x0b, 0x4d, 0x8a, 0x4d, 0x2c, 0x9d, 0x1e, 0x2c, 0x1b, 0x8b, 0x4c,
            0x5d, 0x6e,
        ];
        assert_eq!(format_uuid(&u), "0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e");
        let o = HostOptions::with_hostid(u);
        assert_eq!(
            o.hostnqn,
            "nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e"
        );
    }
}
