//! Fuzzes NVMe/TCP PDU parsing (`ferrite_protocol::pdu`).
//!
//! The input is treated as a byte stream received on a connection and parsed under every
//! digest setting (`None` = before ICReq/ICResp, then the four header/data digest
//! combinations) and several data size limits. For each setting the target
//!
//! * parses consecutive PDUs from the buffer until an error or an incomplete PDU (stream
//!   parsing; an ICReq/ICResp parsed before initialization switches the rest of the stream to
//!   the digests it announces, as a real connection would);
//! * for every PDU that decodes, checks that `layout()` of its common header accounts for
//!   exactly the bytes consumed, that every strict prefix is "incomplete" (never an error),
//!   and that `encode_pdu` with the same digests produces bytes that decode to the same
//!   header and data;
//! * checks that "incomplete" answers are honest and that errors map to a TermReq status;
//! * parses a second copy in which the harness repairs each PDU's framing before parsing it
//!   (HLEN set to the one its type needs, a PLEN beyond the buffer cut to the buffer, header
//!   and data digests recomputed), so the fuzzer reaches every PDU type's own checks, under
//!   negotiated digests too, without having to guess HLEN together with the type byte or
//!   forge CRC32C. This is what makes the target effective from an empty corpus.
//!
//! Nothing may panic.
#![no_main]

mod common;

use ferrite_protocol::pdu::{
    COMMON_HEADER_LEN, CommonHeader, DIGEST_LEN, Digests, PduHeader, PduType, decode_pdu, encode_pdu, fes, layout,
};
use ferrite_protocol::digest::digest_bytes;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: common::CappedAlloc = common::CappedAlloc;

const SETTINGS: [Option<Digests>; 5] = [
    None,
    Some(Digests { header: false, data: false }),
    Some(Digests { header: true, data: false }),
    Some(Digests { header: false, data: true }),
    Some(Digests { header: true, data: true }),
];

/// 0 refuses all data, 8 exercises the limit check on tiny inputs, 4096 and 1 MiB accept
/// anything the fuzzer can build (and the last is well above Ferrite's real limits).
const MAX_DATA: [usize; 4] = [0, 8, 4096, 1 << 20];

fuzz_target!(|data: &[u8]| {
    for digests in SETTINGS {
        for max_data in MAX_DATA {
            parse_stream(data, digests, max_data);
        }
        // Assisted pass: the harness repairs HLEN, an overlong PLEN and the digests of each
        // PDU before parsing it, so that every PDU type's own checks are reached as soon as
        // the fuzzer sets the type byte (which by itself yields no new coverage: all valid
        // types share one path until HLEN matches) and without forging CRC32C.
        let mut fixed = data.to_vec();
        parse_stream_repaired(&mut fixed, digests, 1 << 20);
    }
});

/// Parses PDUs back to back from `buf` until an error or an incomplete PDU.
fn parse_stream(buf: &[u8], mut digests: Option<Digests>, max_data: usize) {
    let mut pos = 0;
    while pos < buf.len() {
        match step(&buf[pos..], &mut digests, max_data) {
            Some(used) => pos += used,
            None => break,
        }
    }
}

/// Like [`parse_stream`], but repairs the framing of each PDU before parsing it.
fn parse_stream_repaired(buf: &mut [u8], mut digests: Option<Digests>, max_data: usize) {
    let mut pos = 0;
    while pos < buf.len() {
        repair(&mut buf[pos..], digests, max_data);
        match step(&buf[pos..], &mut digests, max_data) {
            Some(used) => pos += used,
            None => break,
        }
    }
}

/// Parses and checks one PDU at the start of `rest`; returns the bytes it used, or `None`
/// at an error or an incomplete PDU. Moves `digests` to the negotiated setting when an
/// ICReq/ICResp is parsed before initialization.
fn step(rest: &[u8], digests: &mut Option<Digests>, max_data: usize) -> Option<usize> {
    match decode_pdu(rest, *digests, max_data) {
        Ok(Some((pdu, used))) => {
            check_decoded(rest, *digests, max_data, &pdu.header, pdu.data, used);
            if digests.is_none() {
                // Initialization done: the rest of the stream uses what the IC PDU says.
                match pdu.header {
                    PduHeader::ICReq(r) => *digests = Some(r.digests),
                    PduHeader::ICResp(r) => *digests = Some(r.digests),
                    _ => unreachable!("only ICReq/ICResp decode before initialization"),
                }
            }
            assert!(used > 0, "decode_pdu consumed nothing");
            Some(used)
        }
        Ok(None) => {
            // Incomplete must mean exactly that: no full common header yet, or a valid common
            // header whose PLEN is beyond the buffer.
            if let Some(ch) = rest.first_chunk::<COMMON_HEADER_LEN>() {
                let lay = layout(&CommonHeader::decode(ch), *digests, max_data)
                    .expect("decode_pdu said incomplete but layout() rejects the header");
                assert!(rest.len() < lay.plen, "decode_pdu said incomplete with {} of {} bytes", rest.len(), lay.plen);
            }
            None
        }
        Err(e) => {
            // Every error must map to a TermReq fatal error status; Display must not panic.
            let f = e.fes();
            assert!((fes::INVALID_HEADER_FIELD..=fes::UNSUPPORTED_PARAMETER).contains(&f), "bad FES {f} for {e:?}");
            let _ = e.fei();
            let _ = e.to_string();
            None
        }
    }
}

fn check_decoded(buf: &[u8], digests: Option<Digests>, max_data: usize, header: &PduHeader, data: &[u8], used: usize) {
    assert!(used <= buf.len());

    // Only IC PDUs before initialization, never after.
    let is_ic = matches!(header, PduHeader::ICReq(_) | PduHeader::ICResp(_));
    assert_eq!(is_ic, digests.is_none(), "IC PDU / initialization state mismatch: {header:?}");

    // layout() of the common header agrees with what decode_pdu consumed.
    let ch = CommonHeader::decode(buf.first_chunk::<COMMON_HEADER_LEN>().expect("decoded from < 8 bytes"));
    let lay = layout(&ch, digests, max_data).expect("decoded PDU whose common header layout() rejects");
    assert_eq!(lay.pdu_type, header.pdu_type());
    assert_eq!(lay.plen, used, "layout().plen != bytes consumed");
    assert_eq!(ch.plen as usize, used);
    assert_eq!(lay.data_len, data.len(), "layout().data_len != data returned");
    assert!(data.len() <= max_data.max(ferrite_protocol::pdu::TERM_REQ_MAX_DATA));
    let trailer = if lay.data_digest { DIGEST_LEN } else { 0 };
    assert_eq!(lay.data_offset() + lay.data_len + trailer, lay.plen, "layout parts do not add up to PLEN");
    assert_eq!(&buf[lay.data_offset()..lay.data_offset() + lay.data_len], data, "data is not where layout() says");

    // Every strict prefix of a complete PDU is incomplete, never an error.
    for cut in 0..used {
        assert_eq!(decode_pdu(&buf[..cut], digests, max_data), Ok(None), "prefix of {cut}/{used} bytes not incomplete");
    }

    // Round trip: re-encode with the same digests; it must decode to the same header and data.
    let enc_digests = digests.unwrap_or(Digests::NONE);
    let mut out = Vec::new();
    encode_pdu(header, data, enc_digests, &mut out);
    // The encoder never pads (PDO = header end), so it is the original minus any padding.
    assert_eq!(out.len(), used - lay.pad, "re-encoded length");
    match decode_pdu(&out, digests, max_data) {
        Ok(Some((again, used2))) => {
            assert_eq!(used2, out.len(), "re-encoded PDU not consumed whole");
            assert_eq!(&again.header, header, "round trip changed the header");
            assert_eq!(again.data, data, "round trip changed the data");
        }
        other => panic!("re-encoded PDU does not decode: {other:?}\nheader {header:?}\ndata {data:02x?}\nbytes {out:02x?}"),
    }
    // Canonical bytes are a fixed point of decode-then-encode.
    let mut out2 = Vec::new();
    encode_pdu(header, data, enc_digests, &mut out2);
    assert_eq!(out, out2);
}

/// Repairs the PDU at the start of `p` in place: HLEN is set to the one its type requires,
/// a PLEN beyond the buffer is cut to the buffer, and if the common header then has a valid
/// layout, the header and data digest fields are set to the correct CRC32C values.
fn repair(p: &mut [u8], digests: Option<Digests>, max_data: usize) {
    if p.len() < COMMON_HEADER_LEN {
        return;
    }
    let Some(t) = PduType::from_u8(p[0]) else { return };
    p[2] = t.hlen() as u8;
    let room = u32::try_from(p.len()).unwrap_or(u32::MAX);
    if u32::from_le_bytes(p[4..8].try_into().unwrap()) > room {
        p[4..8].copy_from_slice(&room.to_le_bytes());
    }
    let Ok(lay) = layout(&CommonHeader::decode(p.first_chunk().unwrap()), digests, max_data) else { return };
    let p = &mut p[..lay.plen];
    if lay.header_digest {
        let dg = digest_bytes(&p[..lay.hlen]);
        p[lay.hlen..lay.hlen + DIGEST_LEN].copy_from_slice(&dg);
    }
    if lay.data_digest {
        let off = lay.data_offset();
        let dg = digest_bytes(&p[off..off + lay.data_len]);
        let at = off + lay.data_len;
        p[at..at + DIGEST_LEN].copy_from_slice(&dg);
    }
}
