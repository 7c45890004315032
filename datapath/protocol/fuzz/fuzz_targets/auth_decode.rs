//! Fuzzes in-band authentication input (`ferrite_protocol::{auth, dhchap}`): the
//! DH-HMAC-CHAP messages a hostile host sends in Authentication Send (or a hostile
//! controller returns to Authentication Receive), the fields of the authentication
//! commands, and `DHHC-1` secret text. Every length in a message must be checked against
//! its size (a short message is refused, never read past), decode/encode round trips hold,
//! and nothing panics or allocates more than the message implies. An input of exactly an
//! ffdhe2048 value's length is also tried as a peer DH value (range checks, never a panic).
#![no_main]

mod common;

use ferrite_protocol::Sqe;
use ferrite_protocol::auth::{AuthCommand, AuthMessage};
use ferrite_protocol::command::SQE_LEN;
use ferrite_protocol::dhchap::{DhGroup, Secret, dh_shared_secret};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: common::CappedAlloc = common::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AuthMessage::decode(data) {
        let enc = m.encode().expect("a decoded message encodes");
        // The encoding never claims more than the input held.
        assert!(enc.len() <= data.len().max(72), "{} encoded to {} bytes from {}", m.name(), enc.len(), data.len());
        let again = AuthMessage::decode(&enc).expect("an encoded message decodes");
        match (&m, &again) {
            // Only the first protocol descriptor is kept (NAPD becomes 1).
            (AuthMessage::Negotiate(a), AuthMessage::Negotiate(b)) => {
                assert_eq!(
                    (a.t_id, a.sc_c, a.authid, &a.hashes, &a.dh_groups),
                    (b.t_id, b.sc_c, b.authid, &b.hashes, &b.dh_groups)
                );
            }
            _ => assert_eq!(m, again, "decode(encode(m)) != m"),
        }
    }
    let raw: [u8; SQE_LEN] = *common::padded(data, SQE_LEN).first_chunk().unwrap();
    let sqe = Sqe::decode(&raw);
    let c = AuthCommand::from_sqe(&sqe);
    for send in [false, true] {
        assert_eq!(AuthCommand::from_sqe(&c.to_sqe(send)), c, "AuthCommand round trip");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = Secret::parse(text) {
            assert_eq!(Secret::parse(&s.encode()).as_ref(), Ok(&s), "Secret round trip");
        }
    }
    if data.len() == DhGroup::Ffdhe2048.value_len() {
        let _ = dh_shared_secret(DhGroup::Ffdhe2048, &[7u8; 64], data);
    }
});
