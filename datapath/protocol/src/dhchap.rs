//! DH-HMAC-CHAP computations (NVMe base specification 2.x, 8.3.4 / 8.13): the hash
//! functions and Diffie-Hellman groups, the secret representation
//! `DHHC-1:<hh>:<base64(key || crc32)>:`, the key transformation, the host and controller
//! responses, the augmented challenge and the FFDHE exponentiations.
//!
//! Everything here is pure computation: randomness (challenges, DH private exponents) comes
//! from the caller, so that the same functions serve the target, the host and known-answer
//! tests. Primitives come from RustCrypto crates (`hmac`, `sha2`, `crypto-bigint`, `subtle`);
//! nothing cryptographic is written by hand.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

use crate::ffdhe;

/// Why a DH-HMAC-CHAP secret or computation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhchapError {
    #[error("a DH-HMAC-CHAP secret must look like DHHC-1:<hh>:<base64>:")]
    SecretFormat,
    #[error("secret transformation hash {0:#04x} is not 00 (none), 01, 02 or 03")]
    SecretHash(u8),
    #[error("the secret's base64 is invalid")]
    SecretBase64,
    #[error("the secret's key is {0} bytes; it must be 32, 48 or 64")]
    SecretLength(usize),
    #[error("the secret's CRC-32 does not match its key")]
    SecretCrc,
    #[error("unknown hash function identifier {0}")]
    UnknownHash(u8),
    #[error("unknown Diffie-Hellman group identifier {0}")]
    UnknownGroup(u8),
    #[error("the DH value is {got} bytes; group {group} needs {want}")]
    DhValueLength {
        group: &'static str,
        got: usize,
        want: usize,
    },
    #[error("the peer's DH value is out of range (must be in 2..=p-2)")]
    DhValueRange,
    #[error("the null DH group has no exponentiation")]
    NullGroup,
}

/// The hash functions of DH-HMAC-CHAP (HMAC identifiers of the Negotiate message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashId {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl HashId {
    /// Every hash, in the order hosts offer them.
    pub const ALL: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];

    pub fn from_id(id: u8) -> Option<HashId> {
        match id {
            1 => Some(HashId::Sha256),
            2 => Some(HashId::Sha384),
            3 => Some(HashId::Sha512),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// Digest length in bytes (the HL of the messages).
    pub fn len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }

    /// Always false: every digest has a length. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "hmac(sha256)",
            HashId::Sha384 => "hmac(sha384)",
            HashId::Sha512 => "hmac(sha512)",
        }
    }

    /// The plain digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashId::Sha256 => Sha256::digest(data).to_vec(),
            HashId::Sha384 => Sha384::digest(data).to_vec(),
            HashId::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC of the concatenation of `parts` under `key` (HMAC takes keys of any length).
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // `new_from_slice` accepts keys of any length for HMAC; the error is unreachable.
            let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
                return Vec::new();
            };
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HashId::Sha256 => run::<Hmac<Sha256>>(key, parts),
            HashId::Sha384 => run::<Hmac<Sha384>>(key, parts),
            HashId::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }
}

/// The Diffie-Hellman groups of DH-HMAC-CHAP (null: no DH exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

impl DhGroup {
    /// Every group, in the order hosts offer them.
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id)
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    fn prime_hex(self) -> Option<&'static str> {
        match self {
            DhGroup::Null => None,
            DhGroup::Ffdhe2048 => Some(ffdhe::FFDHE2048_P),
            DhGroup::Ffdhe3072 => Some(ffdhe::FFDHE3072_P),
            DhGroup::Ffdhe4096 => Some(ffdhe::FFDHE4096_P),
            DhGroup::Ffdhe6144 => Some(ffdhe::FFDHE6144_P),
            DhGroup::Ffdhe8192 => Some(ffdhe::FFDHE8192_P),
        }
    }

    /// Length in bytes of this group's public values and shared secret (0 for null).
    pub fn value_len(self) -> usize {
        self.prime_hex().map_or(0, |h| h.len() / 2)
    }

    fn bits(self) -> u32 {
        (self.value_len() * 8) as u32
    }
}

/// Length of the random private exponent callers pass to the DH functions: 512 bits, at
/// least twice the security strength of every FFDHE group (RFC 7919 section 5.2).
pub const DH_PRIVATE_LEN: usize = 64;

fn prime(group: DhGroup) -> Result<Odd<BoxedUint>, DhchapError> {
    let hex = group.prime_hex().ok_or(DhchapError::NullGroup)?;
    let p = Option::<BoxedUint>::from(BoxedUint::from_be_hex(hex, group.bits()))
        .ok_or(DhchapError::NullGroup)?;
    Option::<Odd<BoxedUint>>::from(Odd::new(p)).ok_or(DhchapError::NullGroup)
}

/// `base ^ private mod p`, as a big-endian value of the group's full length.
fn mod_exp(group: DhGroup, base: BoxedUint, private: &[u8]) -> Result<Vec<u8>, DhchapError> {
    let p = prime(group)?;
    let bits = group.bits();
    let exp_bytes = &private[..private.len().min(DH_PRIVATE_LEN)];
    let exp = BoxedUint::from_be_slice(exp_bytes, bits).map_err(|_| DhchapError::NullGroup)?;
    let params = BoxedMontyParams::new(p);
    let r = BoxedMontyForm::new(base, params)
        .pow_bounded_exp(&exp, (DH_PRIVATE_LEN * 8) as u32)
        .retrieve();
    let bytes = r.to_be_bytes();
    let want = group.value_len();
    // `to_be_bytes` has the precision's length (the group's, a multiple of 64 bits).
    Ok(bytes[bytes.len().saturating_sub(want)..].to_vec())
}

/// The public value `2 ^ private mod p` for `group` (big-endian, the group's length).
pub fn dh_public(group: DhGroup, private: &[u8]) -> Result<Vec<u8>, DhchapError> {
    let two = BoxedUint::from_be_slice(&[2], group.bits()).map_err(|_| DhchapError::NullGroup)?;
    mod_exp(group, two, private)
}

/// The shared secret `peer ^ private mod p`, after checking that the peer's value has the
/// group's length and lies in 2..=p-2 (a value of 0, 1 or p-1 would force the secret).
pub fn dh_shared_secret(
    group: DhGroup,
    private: &[u8],
    peer: &[u8],
) -> Result<Vec<u8>, DhchapError> {
    let want = group.value_len();
    if want == 0 {
        return Err(DhchapError::NullGroup);
    }
    if peer.len() != want {
        return Err(DhchapError::DhValueLength {
            group: group.name(),
            got: peer.len(),
            want,
        });
    }
    let p = prime(group)?;
    let y = BoxedUint::from_be_slice(peer, group.bits()).map_err(|_| DhchapError::DhValueRange)?;
    let one = BoxedUint::one_with_precision(group.bits());
    let p_minus_1 = p.as_ref().wrapping_sub(&one);
    if y <= one || y >= p_minus_1 {
        return Err(DhchapError::DhValueRange);
    }
    mod_exp(group, y, private)
}

/// The augmented challenge of a DH exchange: HMAC(H(session key), challenge).
pub fn augmented_challenge(hash: HashId, session_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    let hashed = hash.digest(session_key);
    hash.hmac(&hashed, &[challenge])
}

/// A DH-HMAC-CHAP secret: a 32, 48 or 64-byte key and the hash (0 for none) that transforms
/// it with an NQN before use. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// Transformation hash: 0 (the key is used as is), or a [`HashId`] value.
    pub hash: u8,
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("hash", &self.hash)
            .field("key_len", &self.key.len())
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// A secret from its raw key (32, 48 or 64 bytes) and transformation hash (0..=3).
    pub fn new(hash: u8, key: &[u8]) -> Result<Secret, DhchapError> {
        if hash > 3 {
            return Err(DhchapError::SecretHash(hash));
        }
        if !matches!(key.len(), 32 | 48 | 64) {
            return Err(DhchapError::SecretLength(key.len()));
        }
        Ok(Secret {
            hash,
            key: key.to_vec(),
        })
    }

    /// Parses `DHHC-1:<hh>:<base64(key || crc32(key) little-endian)>:` (the form
    /// `nvme gen-dhchap-key` prints and the Linux kernel accepts). The trailing colon is
    /// optional, as for the kernel.
    pub fn parse(s: &str) -> Result<Secret, DhchapError> {
        let rest = s
            .trim()
            .strip_prefix("DHHC-1:")
            .ok_or(DhchapError::SecretFormat)?;
        let (hh, rest) = rest.split_once(':').ok_or(DhchapError::SecretFormat)?;
        let b64 = rest.strip_suffix(':').unwrap_or(rest);
        if hh.len() != 2 || !hh.bytes().all(|c| c.is_ascii_digit()) || b64.contains(':') {
            return Err(DhchapError::SecretFormat);
        }
        let hash: u8 = hh.parse().map_err(|_| DhchapError::SecretFormat)?;
        if hash > 3 {
            return Err(DhchapError::SecretHash(hash));
        }
        // The longest valid payload is 68 bytes (92 base64 characters): refuse more before
        // decoding anything.
        if b64.len() > 96 {
            return Err(DhchapError::SecretLength(b64.len() * 3 / 4));
        }
        let raw = BASE64.decode(b64).map_err(|_| DhchapError::SecretBase64)?;
        let key_len = raw
            .len()
            .checked_sub(4)
            .ok_or(DhchapError::SecretLength(0))?;
        if !matches!(key_len, 32 | 48 | 64) {
            return Err(DhchapError::SecretLength(key_len));
        }
        let (key, crc) = raw.split_at(key_len);
        let want = crc32fast::hash(key).to_le_bytes();
        if crc != want {
            return Err(DhchapError::SecretCrc);
        }
        Secret::new(hash, key)
    }

    /// The `DHHC-1:...` representation.
    pub fn encode(&self) -> String {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        format!("DHHC-1:{:02}:{}:", self.hash, BASE64.encode(raw))
    }

    /// Length of the raw key.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// The key used in responses: the raw key when the hash is 0, otherwise
    /// HMAC-hash(key, NQN || "NVMe-over-Fabrics").
    pub fn transform(&self, nqn: &str) -> Vec<u8> {
        match HashId::from_id(self.hash) {
            None => self.key.clone(),
            Some(h) => h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        }
    }
}

impl std::str::FromStr for Secret {
    type Err = DhchapError;
    fn from_str(s: &str) -> Result<Secret, DhchapError> {
        Secret::parse(s)
    }
}

/// What one side of the transaction hashes: the challenge (augmented when a DH group is in
/// use), the sequence number and transaction ID, and the two NQNs.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInput<'a> {
    pub hash: HashId,
    /// C1 (host response) or C2 (controller response); augmented by the caller's session key
    /// if any.
    pub challenge: &'a [u8],
    /// The DH session key (shared secret), or `None` with the null group.
    pub session_key: Option<&'a [u8]>,
    /// S1 (host response) or S2 (controller response).
    pub seqnum: u32,
    pub t_id: u16,
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
}

impl ResponseInput<'_> {
    fn challenge(&self) -> Vec<u8> {
        match self.session_key {
            Some(k) => augmented_challenge(self.hash, k, self.challenge),
            None => self.challenge.to_vec(),
        }
    }
}

/// The host's response R1 = HMAC(Kh', C1 || S1 || T_ID || SC_C || "HostHost" || NQNh || 00 ||
/// NQNc), with Kh' the host secret transformed with the host NQN.
pub fn host_response(secret: &Secret, r: &ResponseInput<'_>) -> Vec<u8> {
    let key = secret.transform(r.hostnqn);
    let c = r.challenge();
    r.hash.hmac(
        &key,
        &[
            &c,
            &r.seqnum.to_le_bytes(),
            &r.t_id.to_le_bytes(),
            &[0u8],
            b"HostHost",
            r.hostnqn.as_bytes(),
            &[0u8],
            r.subnqn.as_bytes(),
        ],
    )
}

/// The controller's response R2 = HMAC(Kc', C2 || S2 || T_ID || SC_C || "Controller" || NQNc ||
/// 00 || NQNh), with Kc' the controller secret transformed with the subsystem NQN.
pub fn controller_response(secret: &Secret, r: &ResponseInput<'_>) -> Vec<u8> {
    let key = secret.transform(r.subnqn);
    let c = r.challenge();
    r.hash.hmac(
        &key,
        &[
            &c,
            &r.seqnum.to_le_bytes(),
            &r.t_id.to_le_bytes(),
            &[0u8],
            b"Controller",
            r.subnqn.as_bytes(),
            &[0u8],
            r.hostnqn.as_bytes(),
        ],
    )
}

/// Compares two responses in constant time (for equal lengths).
pub fn responses_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY32: [u8; 32] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f,
    ];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn secret_round_trip_and_crc() {
        let s = Secret::new(1, &KEY32).unwrap();
        let text = s.encode();
        assert!(
            text.starts_with("DHHC-1:01:") && text.ends_with(':'),
            "{text}"
        );
        assert_eq!(Secret::parse(&text).unwrap(), s);
        // Without the trailing colon too, as the kernel accepts.
        assert_eq!(Secret::parse(text.trim_end_matches(':')).unwrap(), s);
        // The CRC is the standard CRC-32 (IEEE), little-endian: check it independently.
        let raw = BASE64
            .decode(text.trim_start_matches("DHHC-1:01:").trim_end_matches(':'))
            .unwrap();
        assert_eq!(&raw[32..], &crc32fast::hash(&KEY32).to_le_bytes());
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "CRC-32/ISO-HDLC check value"
        );
        // A flipped bit in the key fails the CRC.
        let mut bad = raw.clone();
        bad[3] ^= 1;
        let text = format!("DHHC-1:01:{}:", BASE64.encode(&bad));
        assert_eq!(Secret::parse(&text), Err(DhchapError::SecretCrc));
        assert!(format!("{s:?}").contains("key_len: 32") && !format!("{s:?}").contains("[0, 1"));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        let good = Secret::new(0, &[7u8; 48]).unwrap().encode();
        assert!(Secret::parse(&good).is_ok());
        for bad in [
            "",
            "DHHC-1",
            "DHHC-2:00:AAAA:",
            "DHHC-1:0:AAAA:",
            "DHHC-1:xx:AAAA:",
            "DHHC-1:00:!!!!:",
        ] {
            assert!(Secret::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Secret::parse(&good.replace(":00:", ":04:")),
            Err(DhchapError::SecretHash(4))
        );
        let short = format!("DHHC-1:00:{}:", BASE64.encode([1u8; 20]));
        assert_eq!(Secret::parse(&short), Err(DhchapError::SecretLength(16)));
        let long = format!("DHHC-1:00:{}:", BASE64.encode([1u8; 200]));
        assert!(matches!(
            Secret::parse(&long),
            Err(DhchapError::SecretLength(_))
        ));
        assert!(Secret::new(0, &[0u8; 33]).is_err());
    }

    #[test]
    fn known_answer_from_nvme_cli() {
        // A key printed by `nvme gen-dhchap-key` (nvme-cli's documentation example): it
        // parses, its CRC checks, and it encodes back to the same text.
        let text = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
        let s = Secret::parse(text).unwrap();
        assert_eq!((s.hash, s.key_len()), (0, 32));
        assert_eq!(s.encode(), text);
    }

    #[test]
    fn key_transformation() {
        let nqn = "nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e";
        // Hash 00: the key itself.
        assert_eq!(
            Secret::new(0, &KEY32).unwrap().transform(nqn),
            KEY32.to_vec()
        );
        // Otherwise HMAC-hash(key, NQN || "NVMe-over-Fabrics"), the hash's length.
        for h in HashId::ALL {
            let t = Secret::new(h.id(), &KEY32).unwrap().transform(nqn);
            assert_eq!(t.len(), h.len());
            let mut msg = nqn.as_bytes().to_vec();
            msg.extend_from_slice(b"NVMe-over-Fabrics");
            assert_eq!(t, h.hmac(&KEY32, &[&msg]));
        }
    }

    #[test]
    fn known_answers_computed_independently() {
        // Values computed with Python's hmac/hashlib from the formulas of the specification.
        let nqn = "nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e";
        let s = Secret::new(1, &KEY32).unwrap();
        assert_eq!(
            hex(&s.transform(nqn)),
            "9983cd848561cda306866e67dcb6b03e7c80c043bb445f8399206ee21254d301"
        );
        let c = [0x5au8; 32];
        let r = ResponseInput {
            hash: HashId::Sha256,
            challenge: &c,
            session_key: None,
            seqnum: 0x0102_0304,
            t_id: 0x0506,
            hostnqn: nqn,
            subnqn: "nqn.2024-01.dev.ferrite:vol1",
        };
        assert_eq!(
            hex(&host_response(&s, &r)),
            "04258a544c10292dc914a5b86c40bca0d17336f4d932a764fc62f394b4d3e14f"
        );
        assert_eq!(
            hex(&augmented_challenge(
                HashId::Sha384,
                &[9u8; 256],
                &[0x5a; 48]
            )),
            "b1a3452689937633a1b05a59d9fd8ab3311100899b8219a0eee50a5dc32f43d57458f04622940dbdcd77d54ffda6047c"
        );
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 4231 test case 2 ("Jefe", "what do ya want for nothing?").
        let key = b"Jefe";
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        assert_eq!(
            hex(&HashId::Sha256.hmac(key, &parts)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&HashId::Sha384.hmac(key, &parts)),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            hex(&HashId::Sha512.hmac(key, &parts)),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn responses_follow_the_layout() {
        let s = Secret::new(0, &KEY32).unwrap();
        let c = [0x5au8; 32];
        let r = ResponseInput {
            hash: HashId::Sha256,
            challenge: &c,
            session_key: None,
            seqnum: 0x0102_0304,
            t_id: 0x0506,
            hostnqn: "nqn.h",
            subnqn: "nqn.s",
        };
        let mut msg = c.to_vec();
        msg.extend_from_slice(&[4, 3, 2, 1, 6, 5, 0]);
        msg.extend_from_slice(b"HostHostnqn.h\0nqn.s");
        assert_eq!(host_response(&s, &r), HashId::Sha256.hmac(&KEY32, &[&msg]));
        let mut msg = c.to_vec();
        msg.extend_from_slice(&[4, 3, 2, 1, 6, 5, 0]);
        msg.extend_from_slice(b"Controllernqn.s\0nqn.h");
        assert_eq!(
            controller_response(&s, &r),
            HashId::Sha256.hmac(&KEY32, &[&msg])
        );
        // With a session key the challenge is augmented first.
        let skey = [9u8; 256];
        let aug = augmented_challenge(HashId::Sha256, &skey, &c);
        assert_eq!(
            aug,
            HashId::Sha256.hmac(&HashId::Sha256.digest(&skey), &[&c])
        );
        let with = ResponseInput {
            session_key: Some(&skey),
            ..r
        };
        let plain = ResponseInput {
            challenge: &aug,
            ..r
        };
        assert_eq!(host_response(&s, &with), host_response(&s, &plain));
        assert!(responses_match(&aug, &aug.clone()));
        assert!(!responses_match(&aug, &aug[..31]));
    }

    #[test]
    fn primes_have_the_rfc7919_shape() {
        for g in &DhGroup::ALL[1..] {
            let hex = g.prime_hex().unwrap();
            assert_eq!(hex.len() * 4, g.bits() as usize);
            assert!(
                hex.starts_with("FFFFFFFFFFFFFFFF") && hex.ends_with("FFFFFFFFFFFFFFFF"),
                "{g:?}"
            );
            assert!(hex.starts_with(
                "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9"
            ));
        }
    }

    #[test]
    fn ffdhe2048_is_prime_by_fermat_and_two_has_order_q() {
        // 2^((p-1)/2) = 1 mod p: Fermat and the RFC 7919 generator property at once.
        let g = DhGroup::Ffdhe2048;
        let p = prime(g).unwrap();
        let q = p
            .as_ref()
            .wrapping_sub(&BoxedUint::one_with_precision(g.bits()))
            .shr(1);
        let two = BoxedUint::from_be_slice(&[2], g.bits()).unwrap();
        let r = BoxedMontyForm::new(two, BoxedMontyParams::new(p))
            .pow(&q)
            .retrieve();
        assert_eq!(r, BoxedUint::one_with_precision(g.bits()));
    }

    #[test]
    fn dh_agreement_for_every_group() {
        for g in &DhGroup::ALL[1..] {
            let a = [0x11u8; DH_PRIVATE_LEN];
            let mut b = [0x22u8; DH_PRIVATE_LEN];
            b[0] = 0x80;
            let pa = dh_public(*g, &a).unwrap();
            let pb = dh_public(*g, &b).unwrap();
            assert_eq!(pa.len(), g.value_len());
            let sa = dh_shared_secret(*g, &a, &pb).unwrap();
            let sb = dh_shared_secret(*g, &b, &pa).unwrap();
            assert_eq!(sa, sb, "{g:?}");
            assert_eq!(sa.len(), g.value_len());
        }
    }

    #[test]
    fn dh_known_answer_small_exponent() {
        // 2^10 = 1024: the public value for private exponent 10 is 0x0400, left-padded.
        let pubv = dh_public(DhGroup::Ffdhe2048, &[10]).unwrap();
        assert_eq!(pubv.len(), 256);
        assert_eq!(&pubv[254..], &[0x04, 0x00]);
        assert!(pubv[..254].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_peer_values_are_refused() {
        let g = DhGroup::Ffdhe2048;
        let x = [3u8; DH_PRIVATE_LEN];
        assert!(matches!(
            dh_shared_secret(g, &x, &[1u8; 100]),
            Err(DhchapError::DhValueLength { .. })
        ));
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(
            dh_shared_secret(g, &x, &one),
            Err(DhchapError::DhValueRange)
        );
        assert_eq!(
            dh_shared_secret(g, &x, &[0u8; 256]),
            Err(DhchapError::DhValueRange)
        );
        assert_eq!(
            dh_shared_secret(g, &x, &[0xffu8; 256]),
            Err(DhchapError::DhValueRange)
        );
        let mut pm1 = prime(g).unwrap().as_ref().to_be_bytes().to_vec();
        pm1[255] -= 1;
        assert_eq!(
            dh_shared_secret(g, &x, &pm1),
            Err(DhchapError::DhValueRange)
        );
        assert_eq!(dh_public(DhGroup::Null, &x), Err(DhchapError::NullGroup));
    }
}
