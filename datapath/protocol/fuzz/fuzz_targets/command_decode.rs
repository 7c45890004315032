//! Fuzzes NVMe command parsing and the data structures that travel with commands
//! (`ferrite_protocol::{command, completion, fabrics, identify, log_page, nqn}`).
//!
//! The first 64 bytes of the input (zero-extended if shorter) are a submission queue entry;
//! every typed view is taken of it whatever its opcode, as a confused or hostile peer might
//! send any of them. The bytes after the SQE are used as the command's data (DSM ranges,
//! Connect data) and as Identify / log page buffers, both as-is (short buffers must be
//! refused, not panic) and zero-extended to the structure's size. Encode/decode round trips
//! are asserted wherever the crate has both directions. Nothing may panic.
#![no_main]

mod common;

use ferrite_protocol::command::{
    DSM_RANGE_LEN, DsmCommand, DsmRange, FeaturesCommand, GetLogPageCommand, IdentifyCommand, RwCommand, SQE_LEN,
    WriteZeroesCommand,
};
use ferrite_protocol::completion::{CQE_LEN, Cqe};
use ferrite_protocol::fabrics::{
    CONNECT_DATA_LEN, Cap, ConnectCommand, ConnectData, PropertyCommand, cc, connect_invalid_param_result,
};
use ferrite_protocol::identify::{
    IDENTIFY_LEN, IdentifyController, IdentifyNamespace, decode_active_ns_list, decode_ns_descriptors,
    encode_active_ns_list, encode_ns_descriptors,
};
use ferrite_protocol::log_page::{self, DISCOVERY_ENTRY_LEN, DiscoveryEntry, decode_discovery_log, encode_discovery_log};
use ferrite_protocol::{Sqe, nqn};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: common::CappedAlloc = common::CappedAlloc;

/// The largest Get Log Page transfer the harness lets through, mirroring the target's
/// `len <= max_data_transfer` check before it calls `log_page::window`.
const MAX_LOG_WINDOW: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let raw: [u8; SQE_LEN] = *common::padded(data, SQE_LEN).first_chunk().unwrap();
    let rest = data.get(SQE_LEN..).unwrap_or(&[]);
    let sqe = Sqe::decode(&raw);

    check_sqe(&raw, &sqe);
    check_cqe(data);
    check_io_views(&sqe, rest);
    check_admin_views(&sqe);
    check_fabrics(&sqe, rest);
    check_identify(&sqe, rest);
    check_log_pages(&sqe, rest);
});

fn check_sqe(raw: &[u8; SQE_LEN], sqe: &Sqe) {
    // Any 64 bytes decode; encoding gives them back except the reserved SGL bytes 12-14
    // (SQE bytes 36-38), which are not carried.
    let enc = sqe.encode();
    let mut expect = *raw;
    expect[36..39].fill(0);
    assert_eq!(enc, expect, "Sqe encode(decode(b)) != b");
    assert_eq!(Sqe::decode(&enc), *sqe, "Sqe decode(encode(s)) != s");
    assert_eq!(sqe.fctype(), raw[4]);
    assert_eq!(sqe.fuse(), raw[1] & 3);
    assert_eq!(sqe.data_len(), u32::from_le_bytes(raw[32..36].try_into().unwrap()));
}

fn check_cqe(data: &[u8]) {
    let raw: [u8; CQE_LEN] = *common::padded(data, CQE_LEN).first_chunk().unwrap();
    let cqe = Cqe::decode(&raw);
    assert_eq!(Cqe::decode(&cqe.encode()), cqe, "Cqe decode(encode(c)) != c");
    // Encoding drops the phase tag (bit 0), CRD (bits 12:13) and More (bit 14) of the status
    // half-dword, and keeps everything else.
    let mut expect = raw;
    let sf = u16::from_le_bytes([raw[14], raw[15]]) & !(1 | 0x3 << 12 | 1 << 14);
    expect[14..16].copy_from_slice(&sf.to_le_bytes());
    assert_eq!(cqe.encode(), expect, "Cqe encode(decode(b)) lost more than P/CRD/M");
    assert_eq!(cqe.result64(), u64::from(cqe.result) | (u64::from(cqe.result_hi) << 32));
    let _ = cqe.status.to_string();
    let _ = cqe.status.is_success();
}

fn check_io_views(sqe: &Sqe, rest: &[u8]) {
    let rw = RwCommand::from_sqe(sqe);
    assert!((1..=65536).contains(&rw.nlb));
    let mut s = Sqe::default();
    rw.apply(&mut s);
    assert_eq!(RwCommand::from_sqe(&s), rw, "RwCommand apply/from_sqe round trip");

    let wz = WriteZeroesCommand::from_sqe(sqe);
    assert_eq!((wz.slba, wz.nlb, wz.fua), (rw.slba, rw.nlb, rw.fua));

    let dsm = DsmCommand::from_sqe(sqe);
    assert!((1..=256).contains(&dsm.nr));
    check_dsm_ranges(rest, dsm.nr);
    // Also counts the harness did not derive from the 8-bit NR field, including huge ones.
    check_dsm_ranges(rest, sqe.cdw15);
    check_dsm_ranges(rest, (rest.len() / DSM_RANGE_LEN) as u32);
}

fn check_dsm_ranges(rest: &[u8], count: u32) {
    match DsmRange::decode_all(rest, count) {
        Some(ranges) => {
            assert_eq!(ranges.len(), count as usize);
            let mut enc = Vec::new();
            for r in &ranges {
                r.encode(&mut enc);
            }
            assert_eq!(&enc[..], &rest[..count as usize * DSM_RANGE_LEN], "DsmRange encode(decode(b)) != b");
        }
        None => assert!((rest.len() as u64) < u64::from(count) * DSM_RANGE_LEN as u64, "DsmRange refused enough data"),
    }
}

fn check_admin_views(sqe: &Sqe) {
    let id = IdentifyCommand::from_sqe(sqe);
    assert_eq!(id.nsid, sqe.nsid);

    let g = GetLogPageCommand::from_sqe(sqe);
    assert!(g.len >= 4 && g.len.is_multiple_of(4) && g.len <= (1u64 << 32) * 4);
    assert!(g.lsp <= 0xf);
    let mut s = Sqe::default();
    g.apply(&mut s);
    assert_eq!(GetLogPageCommand::from_sqe(&s), g, "GetLogPageCommand apply/from_sqe round trip");

    let f = FeaturesCommand::from_sqe(sqe);
    assert!(f.select <= 7);
    assert_eq!(f.value, sqe.cdw11);
}

fn check_fabrics(sqe: &Sqe, rest: &[u8]) {
    let c = ConnectCommand::from_sqe(sqe);
    let s = c.to_sqe(sqe.cid);
    assert_eq!(ConnectCommand::from_sqe(&s), c, "ConnectCommand to_sqe/from_sqe round trip");
    assert_eq!(s.cid, sqe.cid);
    let _ = c.sq_flow_control_disabled();

    let p = PropertyCommand::from_sqe(sqe);
    assert!(p.size == 4 || p.size == 8);
    for set in [false, true] {
        let s = p.to_sqe(sqe.cid, set);
        assert_eq!(PropertyCommand::from_sqe(&s), p, "PropertyCommand to_sqe/from_sqe round trip");
    }

    let cap = Cap::from_u64(sqe.mptr);
    assert_eq!(Cap::from_u64(cap.to_u64()), cap);
    let _ = (cc::iosqes(sqe.cdw10), cc::iocqes(sqe.cdw10), cc::shn(sqe.cdw10));
    let r = connect_invalid_param_result(sqe.flags & 1 != 0, sqe.cid);
    assert_eq!(r & 0xffff, u32::from(sqe.cid));

    // Connect data: too short must be refused; zero-extended always decodes.
    match ConnectData::decode(rest) {
        Some(d) => {
            assert!(rest.len() >= CONNECT_DATA_LEN);
            check_connect_data(&d);
        }
        None => assert!(rest.len() < CONNECT_DATA_LEN),
    }
    let d = ConnectData::decode(&common::padded(rest, CONNECT_DATA_LEN)).expect("1024 bytes of Connect data");
    check_connect_data(&d);
}

fn check_connect_data(d: &ConnectData) {
    let _ = nqn::validate(&d.subnqn);
    let _ = nqn::validate(&d.hostnqn);
    let enc = d.encode();
    assert_eq!(enc.len(), CONNECT_DATA_LEN);
    // The encoder keeps a NUL terminator (255 bytes of name at most); every decoded name
    // that fits comes back unchanged.
    if d.subnqn.len() <= 255 && d.hostnqn.len() <= 255 {
        assert_eq!(ConnectData::decode(&enc).as_ref(), Some(d), "ConnectData decode(encode(d)) != d");
    }
    // Names that pass NQN validation always fit.
    if nqn::validate(&d.subnqn).is_ok() {
        assert!(d.subnqn.len() <= nqn::MAX_NQN_LEN);
    }
}

fn check_identify(sqe: &Sqe, rest: &[u8]) {
    for buf in [rest, &common::padded(rest, IDENTIFY_LEN)[..]] {
        match IdentifyController::decode(buf) {
            Some(c) => {
                let enc = c.encode();
                assert_eq!(enc.len(), IDENTIFY_LEN);
                // Space-padded ASCII fields come back as long as they are ASCII (a lossy
                // UTF-8 replacement can outgrow its field) and SUBNQN leaves room for its NUL.
                let ascii = [&c.serial, &c.model, &c.firmware, &c.subnqn].iter().all(|s| s.is_ascii());
                if ascii && c.subnqn.len() <= 255 {
                    assert_eq!(IdentifyController::decode(&enc).as_ref(), Some(&c), "IdentifyController round trip");
                }
            }
            None => assert!(buf.len() < IDENTIFY_LEN),
        }
        match IdentifyNamespace::decode(buf) {
            Some(n) => {
                let enc = n.encode();
                assert_eq!(IdentifyNamespace::decode(&enc).as_ref(), Some(&n), "IdentifyNamespace round trip");
            }
            None => assert!(buf.len() < IDENTIFY_LEN),
        }

        let descs = decode_ns_descriptors(buf);
        let mut enc = Vec::new();
        for (t, id) in &descs {
            assert!(*t != 0 && !id.is_empty() && id.len() <= 255);
            enc.extend_from_slice(&[*t, id.len() as u8, 0, 0]);
            enc.extend_from_slice(id);
        }
        assert!(enc.len() <= buf.len());
        assert_eq!(decode_ns_descriptors(&enc), descs, "NS descriptor list round trip");

        let list = decode_active_ns_list(buf);
        assert!(list.len() <= buf.len() / 4 && !list.contains(&0));
        for after in [0, sqe.nsid] {
            let mut expect: Vec<u32> = list.iter().copied().filter(|&n| n > after).collect();
            expect.sort_unstable();
            expect.dedup();
            expect.truncate(IDENTIFY_LEN / 4);
            let enc = encode_active_ns_list(list.iter().copied(), after);
            assert_eq!(enc.len(), IDENTIFY_LEN);
            assert_eq!(decode_active_ns_list(&enc), expect, "active NS list round trip (after {after})");
        }
    }

    let p = common::padded(rest, 32);
    let nguid: [u8; 16] = p[..16].try_into().unwrap();
    let uuid: [u8; 16] = p[16..32].try_into().unwrap();
    let d = decode_ns_descriptors(&encode_ns_descriptors(&nguid, &uuid));
    assert_eq!(d.len(), 3);
    assert_eq!((d[0].1.as_slice(), d[1].1.as_slice()), (&nguid[..], &uuid[..]));
}

fn check_log_pages(sqe: &Sqe, rest: &[u8]) {
    for buf in [rest, &common::padded(rest, 16)[..], &common::padded(rest, 1024 + DISCOVERY_ENTRY_LEN)[..]] {
        match decode_discovery_log(buf) {
            Some((genctr, entries)) => {
                assert!(buf.len() >= 16);
                let present = buf.len().saturating_sub(1024) / DISCOVERY_ENTRY_LEN;
                assert!(entries.len() <= present);
                let page = encode_discovery_log(genctr, &entries);
                assert_eq!(page.len(), 1024 + entries.len() * DISCOVERY_ENTRY_LEN);
                let fits = entries.iter().all(|e| {
                    [&e.trsvcid, &e.subnqn, &e.traddr].iter().all(|s| s.is_ascii()) && e.trsvcid.len() <= 32
                });
                if fits {
                    assert_eq!(decode_discovery_log(&page), Some((genctr, entries)), "discovery log round trip");
                }
            }
            None => assert!(buf.len() < 16),
        }
        if let Some(e) = DiscoveryEntry::decode(buf) {
            let mut enc = Vec::new();
            e.encode(&mut enc);
            assert_eq!(enc.len(), DISCOVERY_ENTRY_LEN);
        }
    }

    // Get Log Page the way the target serves it: the length is the smaller of NUMD and the
    // SGL length, zero and oversized transfers are refused before `window` is called.
    let g = GetLogPageCommand::from_sqe(sqe);
    let len = g.len.min(u64::from(sqe.dptr.length));
    if len != 0 && len <= MAX_LOG_WINDOW {
        check_window(rest, g.offset, len);
    }
    // And small offsets/lengths straight from the input, so in-range windows are common.
    check_window(rest, u64::from(sqe.cdw14 & 0x1fff), u64::from(sqe.cdw15 & 0x1fff));
}

fn check_window(page: &[u8], offset: u64, len: u64) {
    match log_page::window(page, offset, len) {
        Some(w) => {
            assert!(offset.is_multiple_of(4) && offset <= page.len() as u64);
            assert_eq!(w.len() as u64, len);
            let start = offset as usize;
            let n = w.len().min(page.len() - start);
            assert_eq!(&w[..n], &page[start..start + n], "window content");
            assert!(w[n..].iter().all(|&b| b == 0), "window padding not zero");
        }
        None => assert!(!offset.is_multiple_of(4) || offset > page.len() as u64, "window refused a valid request"),
    }
}
