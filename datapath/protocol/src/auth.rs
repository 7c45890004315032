//! NVMe in-band authentication on the wire (NVMe-oF 6.3, base specification 8.13): the
//! Authentication Send and Receive fabrics commands (SECP, SPSP0/1, TL/AL) and the
//! DH-HMAC-CHAP messages they carry: AUTH_Negotiate, DH-HMAC-CHAP_Challenge, _Reply,
//! _Success1, _Success2, and AUTH_Failure1/2.
//!
//! Decoding treats every message as hostile: each length field (HL, DHVLEN, NAPD, HALEN,
//! DHLEN) is checked against the message's size before anything is read or allocated, and a
//! message shorter than it claims is refused with [`AuthError`].

use crate::bytes::{get_u16, get_u32, put_u16, put_u32};
use crate::command::{Sqe, admin_opcode, fctype};

/// Security protocol of DH-HMAC-CHAP (SECP).
pub const SECP_DHCHAP: u8 = 0xE9;
/// SPSP0 and SPSP1 of the authentication commands.
pub const SPSP: u8 = 0x01;
/// Authentication protocol identifier of DH-HMAC-CHAP in AUTH_Negotiate.
pub const AUTHID_DHCHAP: u8 = 0x01;
/// Connect response dword 0, bit 17: authentication required (ATR).
pub const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;
/// Connect response dword 0, bit 18: authentication and secure channel required (ASCR).
pub const CONNECT_AUTHREQ_ASCR: u32 = 1 << 18;
/// Buffer a host offers for each Authentication Receive (as the Linux host).
pub const RECEIVE_BUFFER: u32 = 4096;
/// Largest message Ferrite accepts in an Authentication Send: a Reply with 64-byte
/// responses and an ffdhe8192 value is 1168 bytes.
pub const MAX_SEND_LEN: u32 = 4096;

/// Message types (AUTH_TYPE) and identifiers (AUTH_ID).
pub mod msg {
    /// AUTH_TYPE of AUTH_Negotiate and the failures.
    pub const COMMON: u8 = 0x00;
    /// AUTH_TYPE of the DH-HMAC-CHAP messages.
    pub const DHCHAP: u8 = 0x01;
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xF0;
    pub const FAILURE1: u8 = 0xF1;
}

/// Reason code explanations of AUTH_Failure1/2 (RCE); the reason code itself is always 01h
/// (authentication failure).
pub mod failure {
    pub const REASON_FAILED: u8 = 0x01;
    pub const FAILED: u8 = 0x01;
    pub const NOT_USABLE: u8 = 0x02;
    pub const CONCAT_MISMATCH: u8 = 0x03;
    pub const HASH_UNUSABLE: u8 = 0x04;
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    pub const INCORRECT_MESSAGE: u8 = 0x07;
}

/// Sizes of the fixed parts of the messages.
const NEGOTIATE_HDR: usize = 8;
const DESCRIPTOR_LEN: usize = 64;
const CHALLENGE_HDR: usize = 16;
const REPLY_HDR: usize = 16;
const SUCCESS1_HDR: usize = 16;
const SUCCESS2_LEN: usize = 16;
const FAILURE_LEN: usize = 8;
/// Identifier slots of a protocol descriptor: hash IDs in 0..30, DH group IDs in 30..60.
const ID_SLOTS: usize = 30;

/// The fields of an Authentication Send (TL) or Receive (AL) command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthCommand {
    pub secp: u8,
    pub spsp0: u8,
    pub spsp1: u8,
    /// Transfer length (Send) or allocation length (Receive).
    pub len: u32,
}

impl AuthCommand {
    /// A DH-HMAC-CHAP command of `len` bytes.
    pub fn dhchap(len: u32) -> AuthCommand {
        AuthCommand {
            secp: SECP_DHCHAP,
            spsp0: SPSP,
            spsp1: SPSP,
            len,
        }
    }

    /// Reads the fields of an Authentication Send/Receive (dword 10: SPSP0 in byte 1, SPSP1
    /// in byte 2, SECP in byte 3; dword 11: TL or AL).
    pub fn from_sqe(sqe: &Sqe) -> AuthCommand {
        AuthCommand {
            secp: (sqe.cdw10 >> 24) as u8,
            spsp0: (sqe.cdw10 >> 8) as u8,
            spsp1: (sqe.cdw10 >> 16) as u8,
            len: sqe.cdw11,
        }
    }

    /// Builds the SQE (data descriptor left for the caller).
    pub fn to_sqe(&self, send: bool) -> Sqe {
        Sqe {
            opcode: admin_opcode::FABRICS,
            nsid: u32::from(if send {
                fctype::AUTH_SEND
            } else {
                fctype::AUTH_RECEIVE
            }),
            cdw10: (u32::from(self.secp) << 24)
                | (u32::from(self.spsp1) << 16)
                | (u32::from(self.spsp0) << 8),
            cdw11: self.len,
            ..Default::default()
        }
    }

    /// Whether SECP/SPSP0/SPSP1 name DH-HMAC-CHAP.
    pub fn is_dhchap(&self) -> bool {
        self.secp == SECP_DHCHAP && self.spsp0 == SPSP && self.spsp1 == SPSP
    }
}

/// Whether a command is Authentication Send or Receive.
pub fn is_auth_command(sqe: &Sqe) -> bool {
    sqe.opcode == admin_opcode::FABRICS
        && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECEIVE)
}

/// Why an authentication message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication message of {have} bytes, {need} needed")]
    Truncated { need: usize, have: usize },
    #[error("unknown authentication message type {auth_type:#04x} id {auth_id:#04x}")]
    UnknownMessage { auth_type: u8, auth_id: u8 },
    #[error("invalid authentication message: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// The failure reason explanation to answer this with.
    pub fn reason(&self) -> u8 {
        match self {
            AuthError::UnknownMessage { .. } => failure::INCORRECT_MESSAGE,
            _ => failure::INCORRECT_PAYLOAD,
        }
    }
}

/// AUTH_Negotiate: the transaction ID, secure channel concatenation and the first
/// DH-HMAC-CHAP protocol descriptor's hash and group identifiers (raw, unknown ones kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiate {
    pub t_id: u16,
    pub sc_c: u8,
    /// Number of protocol descriptors the host sent (only the first is decoded).
    pub napd: u8,
    pub authid: u8,
    pub hashes: Vec<u8>,
    pub dh_groups: Vec<u8>,
}

/// DH-HMAC-CHAP_Challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub t_id: u16,
    pub hash: u8,
    pub dh_group: u8,
    pub seqnum: u32,
    /// C1, HL bytes.
    pub challenge: Vec<u8>,
    /// The controller's DH public value (empty with the null group).
    pub dh_value: Vec<u8>,
}

/// DH-HMAC-CHAP_Reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub t_id: u16,
    /// R1, HL bytes.
    pub response: Vec<u8>,
    /// C2 when the host asks the controller to authenticate too (CVALID).
    pub challenge: Option<Vec<u8>>,
    /// S2 (0 when the controller is not authenticated).
    pub seqnum: u32,
    /// The host's DH public value (empty with the null group).
    pub dh_value: Vec<u8>,
}

/// DH-HMAC-CHAP_Success1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Success1 {
    pub t_id: u16,
    /// The hash length in use.
    pub hl: u8,
    /// R2 when the controller authenticates itself (RVALID).
    pub response: Option<Vec<u8>>,
}

/// AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// [`msg::FAILURE1`] or [`msg::FAILURE2`].
    pub auth_id: u8,
    pub t_id: u16,
    pub rescode: u8,
    pub rescode_exp: u8,
}

/// One authentication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMessage {
    Negotiate(Negotiate),
    Challenge(Challenge),
    Reply(Reply),
    Success1(Success1),
    Success2 { t_id: u16 },
    Failure(Failure),
}

fn need(b: &[u8], n: usize) -> Result<(), AuthError> {
    if b.len() < n {
        Err(AuthError::Truncated {
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

fn hl_of(v: &[u8]) -> Result<u8, AuthError> {
    u8::try_from(v.len()).map_err(|_| AuthError::Invalid("hash length above 255"))
}

impl AuthMessage {
    /// The transaction ID.
    pub fn t_id(&self) -> u16 {
        match self {
            AuthMessage::Negotiate(m) => m.t_id,
            AuthMessage::Challenge(m) => m.t_id,
            AuthMessage::Reply(m) => m.t_id,
            AuthMessage::Success1(m) => m.t_id,
            AuthMessage::Success2 { t_id } => *t_id,
            AuthMessage::Failure(m) => m.t_id,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMessage::Negotiate(_) => "AUTH_Negotiate",
            AuthMessage::Challenge(_) => "DH-HMAC-CHAP_Challenge",
            AuthMessage::Reply(_) => "DH-HMAC-CHAP_Reply",
            AuthMessage::Success1(_) => "DH-HMAC-CHAP_Success1",
            AuthMessage::Success2 { .. } => "DH-HMAC-CHAP_Success2",
            AuthMessage::Failure(f) if f.auth_id == msg::FAILURE1 => "AUTH_Failure1",
            AuthMessage::Failure(_) => "AUTH_Failure2",
        }
    }

    /// Decodes one message from the data of an Authentication Send or Receive. Bytes past
    /// the message (padding up to AL) are ignored.
    pub fn decode(b: &[u8]) -> Result<AuthMessage, AuthError> {
        need(b, 4)?;
        let (auth_type, auth_id) = (b[0], b[1]);
        match (auth_type, auth_id) {
            (msg::COMMON, msg::NEGOTIATE) => {
                need(b, NEGOTIATE_HDR)?;
                let napd = b[7];
                if napd == 0 {
                    return Err(AuthError::Invalid("no protocol descriptor"));
                }
                need(b, NEGOTIATE_HDR + DESCRIPTOR_LEN)?;
                let d = &b[NEGOTIATE_HDR..NEGOTIATE_HDR + DESCRIPTOR_LEN];
                let (halen, dhlen) = (usize::from(d[2]), usize::from(d[3]));
                if halen > ID_SLOTS || dhlen > ID_SLOTS {
                    return Err(AuthError::Invalid(
                        "more identifiers than the descriptor holds",
                    ));
                }
                let ids = &d[4..];
                Ok(AuthMessage::Negotiate(Negotiate {
                    t_id: get_u16(b, 4),
                    sc_c: b[6],
                    napd,
                    authid: d[0],
                    hashes: ids[..halen].to_vec(),
                    dh_groups: ids[ID_SLOTS..ID_SLOTS + dhlen].to_vec(),
                }))
            }
            (msg::COMMON, msg::FAILURE1 | msg::FAILURE2) => {
                need(b, FAILURE_LEN)?;
                Ok(AuthMessage::Failure(Failure {
                    auth_id,
                    t_id: get_u16(b, 4),
                    rescode: b[6],
                    rescode_exp: b[7],
                }))
            }
            (msg::DHCHAP, msg::CHALLENGE) => {
                need(b, CHALLENGE_HDR)?;
                let hl = usize::from(b[6]);
                let dhvlen = usize::from(get_u16(b, 10));
                need(b, CHALLENGE_HDR + hl + dhvlen)?;
                let body = &b[CHALLENGE_HDR..];
                Ok(AuthMessage::Challenge(Challenge {
                    t_id: get_u16(b, 4),
                    hash: b[8],
                    dh_group: b[9],
                    seqnum: get_u32(b, 12),
                    challenge: body[..hl].to_vec(),
                    dh_value: body[hl..hl + dhvlen].to_vec(),
                }))
            }
            (msg::DHCHAP, msg::REPLY) => {
                need(b, REPLY_HDR)?;
                let hl = usize::from(b[6]);
                let cvalid = b[8];
                let dhvlen = usize::from(get_u16(b, 10));
                need(b, REPLY_HDR + 2 * hl + dhvlen)?;
                if cvalid > 1 {
                    return Err(AuthError::Invalid("CVALID is neither 0 nor 1"));
                }
                let body = &b[REPLY_HDR..];
                Ok(AuthMessage::Reply(Reply {
                    t_id: get_u16(b, 4),
                    response: body[..hl].to_vec(),
                    challenge: (cvalid == 1).then(|| body[hl..2 * hl].to_vec()),
                    seqnum: get_u32(b, 12),
                    dh_value: body[2 * hl..2 * hl + dhvlen].to_vec(),
                }))
            }
            (msg::DHCHAP, msg::SUCCESS1) => {
                need(b, SUCCESS1_HDR)?;
                let hl = b[6];
                let rvalid = b[8];
                if rvalid > 1 {
                    return Err(AuthError::Invalid("RVALID is neither 0 nor 1"));
                }
                let response = if rvalid == 1 {
                    need(b, SUCCESS1_HDR + usize::from(hl))?;
                    Some(b[SUCCESS1_HDR..SUCCESS1_HDR + usize::from(hl)].to_vec())
                } else {
                    None
                };
                Ok(AuthMessage::Success1(Success1 {
                    t_id: get_u16(b, 4),
                    hl,
                    response,
                }))
            }
            (msg::DHCHAP, msg::SUCCESS2) => {
                need(b, SUCCESS2_LEN)?;
                Ok(AuthMessage::Success2 {
                    t_id: get_u16(b, 4),
                })
            }
            _ => Err(AuthError::UnknownMessage { auth_type, auth_id }),
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>, AuthError> {
        let mut b;
        match self {
            AuthMessage::Negotiate(m) => {
                if m.hashes.len() > ID_SLOTS || m.dh_groups.len() > ID_SLOTS {
                    return Err(AuthError::Invalid(
                        "more identifiers than the descriptor holds",
                    ));
                }
                b = vec![0u8; NEGOTIATE_HDR + DESCRIPTOR_LEN];
                b[0] = msg::COMMON;
                b[1] = msg::NEGOTIATE;
                put_u16(&mut b, 4, m.t_id);
                b[6] = m.sc_c;
                b[7] = 1;
                let d = &mut b[NEGOTIATE_HDR..];
                d[0] = m.authid;
                d[2] = m.hashes.len() as u8;
                d[3] = m.dh_groups.len() as u8;
                d[4..4 + m.hashes.len()].copy_from_slice(&m.hashes);
                d[4 + ID_SLOTS..4 + ID_SLOTS + m.dh_groups.len()].copy_from_slice(&m.dh_groups);
            }
            AuthMessage::Challenge(m) => {
                let dhvlen = u16::try_from(m.dh_value.len())
                    .map_err(|_| AuthError::Invalid("DH value above 64 KiB"))?;
                b = vec![0u8; CHALLENGE_HDR];
                b[0] = msg::DHCHAP;
                b[1] = msg::CHALLENGE;
                put_u16(&mut b, 4, m.t_id);
                b[6] = hl_of(&m.challenge)?;
                b[8] = m.hash;
                b[9] = m.dh_group;
                put_u16(&mut b, 10, dhvlen);
                put_u32(&mut b, 12, m.seqnum);
                b.extend_from_slice(&m.challenge);
                b.extend_from_slice(&m.dh_value);
            }
            AuthMessage::Reply(m) => {
                let dhvlen = u16::try_from(m.dh_value.len())
                    .map_err(|_| AuthError::Invalid("DH value above 64 KiB"))?;
                let hl = hl_of(&m.response)?;
                if m.challenge
                    .as_ref()
                    .is_some_and(|c| c.len() != m.response.len())
                {
                    return Err(AuthError::Invalid("C2 and R1 lengths differ"));
                }
                b = vec![0u8; REPLY_HDR];
                b[0] = msg::DHCHAP;
                b[1] = msg::REPLY;
                put_u16(&mut b, 4, m.t_id);
                b[6] = hl;
                b[8] = u8::from(m.challenge.is_some());
                put_u16(&mut b, 10, dhvlen);
                put_u32(&mut b, 12, m.seqnum);
                b.extend_from_slice(&m.response);
                match &m.challenge {
                    Some(c) => b.extend_from_slice(c),
                    None => b.resize(b.len() + m.response.len(), 0),
                }
                b.extend_from_slice(&m.dh_value);
            }
            AuthMessage::Success1(m) => {
                b = vec![0u8; SUCCESS1_HDR];
                b[0] = msg::DHCHAP;
                b[1] = msg::SUCCESS1;
                put_u16(&mut b, 4, m.t_id);
                b[6] = m.hl;
                if let Some(r) = &m.response {
                    if r.len() != usize::from(m.hl) {
                        return Err(AuthError::Invalid("R2 length differs from HL"));
                    }
                    b[8] = 1;
                    b.extend_from_slice(r);
                }
            }
            AuthMessage::Success2 { t_id } => {
                b = vec![0u8; SUCCESS2_LEN];
                b[0] = msg::DHCHAP;
                b[1] = msg::SUCCESS2;
                put_u16(&mut b, 4, *t_id);
            }
            AuthMessage::Failure(f) => {
                b = vec![0u8; FAILURE_LEN];
                b[0] = msg::COMMON;
                b[1] = f.auth_id;
                put_u16(&mut b, 4, f.t_id);
                b[6] = f.rescode;
                b[7] = f.rescode_exp;
            }
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: AuthMessage) {
        let b = m.encode().unwrap();
        assert_eq!(AuthMessage::decode(&b).unwrap(), m);
        // Padding up to the allocation length is ignored.
        let mut padded = b.clone();
        padded.resize(4096, 0);
        assert_eq!(AuthMessage::decode(&padded).unwrap(), m);
        // Every strict prefix is refused (never a panic).
        for n in 0..b.len() {
            let r = AuthMessage::decode(&b[..n]);
            if let Ok(d) = &r {
                // Only a Success1 without RVALID or a Reply/Challenge cut inside padding
                // could decode, and they must not: their fixed parts are exact.
                panic!("prefix {n} of {} decoded as {d:?}", m.name());
            }
        }
    }

    #[test]
    fn command_fields() {
        let c = AuthCommand::dhchap(72);
        let sqe = c.to_sqe(true);
        assert_eq!(sqe.fctype(), fctype::AUTH_SEND);
        // Bytes 41, 42, 43 of the command: SPSP0, SPSP1, SECP.
        let raw = sqe.encode();
        assert_eq!(&raw[40..48], &[0, 1, 1, 0xE9, 72, 0, 0, 0]);
        assert_eq!(AuthCommand::from_sqe(&sqe), c);
        assert!(c.is_dhchap() && is_auth_command(&sqe));
        assert_eq!(c.to_sqe(false).fctype(), fctype::AUTH_RECEIVE);
        assert!(!AuthCommand { secp: 0xEA, ..c }.is_dhchap());
    }

    #[test]
    fn negotiate_layout_matches_the_linux_host() {
        let m = Negotiate {
            t_id: 7,
            sc_c: 0,
            napd: 1,
            authid: AUTHID_DHCHAP,
            hashes: vec![1, 2, 3],
            dh_groups: vec![0, 1, 2, 3, 4, 5],
        };
        let b = AuthMessage::Negotiate(m.clone()).encode().unwrap();
        assert_eq!(b.len(), 72);
        assert_eq!(&b[..8], &[0, 0, 0, 0, 7, 0, 0, 1]);
        assert_eq!(&b[8..15], &[1, 0, 3, 6, 1, 2, 3]);
        assert_eq!(&b[8 + 4 + 30..8 + 4 + 36], &[0, 1, 2, 3, 4, 5]);
        round_trip(AuthMessage::Negotiate(m));
    }

    #[test]
    fn round_trips() {
        round_trip(AuthMessage::Challenge(Challenge {
            t_id: 3,
            hash: 2,
            dh_group: 1,
            seqnum: 0xdead_beef,
            challenge: vec![9; 48],
            dh_value: vec![7; 256],
        }));
        round_trip(AuthMessage::Reply(Reply {
            t_id: 3,
            response: vec![1; 32],
            challenge: Some(vec![2; 32]),
            seqnum: 77,
            dh_value: vec![3; 384],
        }));
        round_trip(AuthMessage::Reply(Reply {
            t_id: 3,
            response: vec![1; 64],
            challenge: None,
            seqnum: 0,
            dh_value: vec![],
        }));
        round_trip(AuthMessage::Success1(Success1 {
            t_id: 9,
            hl: 32,
            response: Some(vec![5; 32]),
        }));
        round_trip(AuthMessage::Success2 { t_id: 9 });
        round_trip(AuthMessage::Failure(Failure {
            auth_id: msg::FAILURE1,
            t_id: 1,
            rescode: failure::REASON_FAILED,
            rescode_exp: failure::FAILED,
        }));
        // Success1 without RVALID is its 16-byte header.
        let s = AuthMessage::Success1(Success1 {
            t_id: 9,
            hl: 48,
            response: None,
        });
        let b = s.encode().unwrap();
        assert_eq!(b.len(), 16);
        assert_eq!(AuthMessage::decode(&b).unwrap(), s);
    }

    #[test]
    fn hostile_lengths_are_refused() {
        // A Reply claiming HL 255 and DHVLEN 65535 in 16 bytes.
        let mut b = vec![0u8; 16];
        b[0] = msg::DHCHAP;
        b[1] = msg::REPLY;
        b[6] = 255;
        put_u16(&mut b, 10, 0xffff);
        assert_eq!(
            AuthMessage::decode(&b),
            Err(AuthError::Truncated {
                need: 16 + 510 + 65535,
                have: 16
            })
        );
        // A Challenge likewise.
        b[1] = msg::CHALLENGE;
        assert!(matches!(
            AuthMessage::decode(&b),
            Err(AuthError::Truncated { .. })
        ));
        // A Negotiate with HALEN 200.
        let mut n = vec![0u8; 72];
        n[7] = 1;
        n[8] = AUTHID_DHCHAP;
        n[10] = 200;
        assert!(matches!(
            AuthMessage::decode(&n),
            Err(AuthError::Invalid(_))
        ));
        n[10] = 3;
        n[7] = 0;
        assert!(matches!(
            AuthMessage::decode(&n),
            Err(AuthError::Invalid(_))
        ));
        // CVALID 2.
        let mut r = AuthMessage::Reply(Reply {
            t_id: 0,
            response: vec![0; 32],
            challenge: None,
            seqnum: 0,
            dh_value: vec![],
        })
        .encode()
        .unwrap();
        r[8] = 2;
        assert!(matches!(
            AuthMessage::decode(&r),
            Err(AuthError::Invalid(_))
        ));
        // Unknown messages and empty input.
        assert_eq!(
            AuthMessage::decode(&[1, 0x42, 0, 0, 0, 0, 0, 0]),
            Err(AuthError::UnknownMessage {
                auth_type: 1,
                auth_id: 0x42
            })
        );
        assert!(matches!(
            AuthMessage::decode(&[]),
            Err(AuthError::Truncated { .. })
        ));
        assert_eq!(
            AuthError::UnknownMessage {
                auth_type: 0,
                auth_id: 0
            }
            .reason(),
            failure::INCORRECT_MESSAGE
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of pseudo-random buffers with each valid
        // type/id pair.
        let mut x: u32 = 0x1234_5678;
        for round in 0..2000 {
            let len = round % 300;
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if b.len() >= 2 {
                let pairs = [(0, 0), (0, 0xf0), (0, 0xf1), (1, 1), (1, 2), (1, 3), (1, 4)];
                let (t, i) = pairs[round % pairs.len()];
                b[0] = t;
                b[1] = i;
            }
            let _ = AuthMessage::decode(&b);
        }
    }
}
