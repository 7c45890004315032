//! The target seen through hand-built PDUs on raw TCP connections. Bad input: malformed PDUs
//! get a C2HTermReq with the right fatal error status, only that connection closes, and the
//! target keeps serving everyone else; Connect refusals and command-level errors. Isolation: a
//! host that stops reading stalls only its own connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Raw;
use ferrite_block::RamDevice;
use ferrite_protocol::command::{RwCommand, SglDescriptor, Sqe, admin_opcode, io_opcode};
use ferrite_protocol::fabrics::{ConnectCommand, ConnectData, PropertyCommand, property};
use ferrite_protocol::pdu::{
    CommonHeader, DataHeader, Digests, ICReq, PduHeader, PduType, encode_pdu, fes,
};
use ferrite_protocol::status::Status;
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use rand::{Rng, SeedableRng};

const NQN: &str = "nqn.2024-01.dev.ferrite:malformed";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

async fn target() -> (Arc<Target>, SocketAddr) {
    let t = Target::new(TargetOptions::default());
    let dev = Arc::new(RamDevice::new(16 << 20, 4096).unwrap());
    t.add_subsystem(SubsystemConfig {
        nqn: NQN.into(),
        hosts: HostAccess::Only(vec![HOST.into()]),
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            device: dev,
        }],
    })
    .unwrap();
    let addr = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (t, addr)
}

async fn still_serves(addr: SocketAddr) {
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    let c = r.connect_admin(NQN, HOST).await;
    assert!(
        c.status.is_success(),
        "connect after a bad peer: {:?}",
        c.status
    );
}

#[tokio::test]
async fn bad_icreq_is_terminated() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    let mut out = Vec::new();
    encode_pdu(
        &PduHeader::ICReq(ICReq {
            pfv: 0,
            hpda: 0,
            digests: Digests::NONE,
            maxr2t: 0,
        }),
        &[],
        Digests::NONE,
        &mut out,
    );
    out[8] = 7; // PFV 7
    r.send_raw(&out).await;
    r.expect_term(fes::UNSUPPORTED_PARAMETER).await;
    still_serves(addr).await;
}

#[tokio::test]
async fn capsule_before_icreq_is_a_sequence_error() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    let mut out = Vec::new();
    encode_pdu(
        &PduHeader::CapsuleCmd(Sqe::default()),
        &[],
        Digests::NONE,
        &mut out,
    );
    r.send_raw(&out).await;
    r.expect_term(fes::PDU_SEQUENCE_ERROR).await;
}

#[tokio::test]
async fn wrong_hlen_and_unknown_type_are_terminated() {
    let (_t, addr) = target().await;
    for (patch, want) in [
        ((2usize, 71u8), fes::INVALID_HEADER_FIELD),
        ((0, 0x0b), fes::INVALID_HEADER_FIELD),
    ] {
        let mut r = Raw::open(addr).await;
        r.initialize(Digests::NONE).await;
        let mut out = Vec::new();
        encode_pdu(
            &PduHeader::CapsuleCmd(Sqe::default()),
            &[],
            Digests::NONE,
            &mut out,
        );
        out[patch.0] = patch.1;
        r.send_raw(&out).await;
        r.expect_term(want).await;
    }
    still_serves(addr).await;
}

#[tokio::test]
async fn header_digest_error_is_terminated() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    let d = Digests {
        header: true,
        data: true,
    };
    r.initialize(d).await;
    let mut out = Vec::new();
    encode_pdu(&PduHeader::CapsuleCmd(Sqe::default()), &[], d, &mut out);
    out[10] ^= 0x40; // corrupt the CID; the digest no longer matches
    r.send_raw(&out).await;
    r.expect_term(fes::HEADER_DIGEST_ERROR).await;
    still_serves(addr).await;
}

#[tokio::test]
async fn oversized_in_capsule_data_is_terminated() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    // Claim a 1 MiB capsule: refused from the header alone, before reading the data.
    let ch = CommonHeader {
        pdu_type: PduType::CapsuleCmd as u8,
        flags: 0,
        hlen: 72,
        pdo: 72,
        plen: 72 + (1 << 20),
    };
    let mut out = ch.encode().to_vec();
    out.extend_from_slice(&Sqe::default().encode());
    r.send_raw(&out).await;
    r.expect_term(fes::DATA_LIMIT_EXCEEDED).await;
}

#[tokio::test]
async fn h2c_data_for_unknown_tag_is_terminated() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    assert!(r.connect_admin(NQN, HOST).await.status.is_success());
    let dh = DataHeader {
        cccid: 9,
        ttag: 77,
        datao: 0,
        datal: 4,
        last: true,
        success: false,
    };
    r.send(PduHeader::H2CData(dh), b"data").await;
    r.expect_term(fes::INVALID_HEADER_FIELD).await;
}

#[tokio::test]
async fn connect_refusals() {
    let (t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    let c = r.connect_admin("nqn.2024-01.dev.ferrite:nope", HOST).await;
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.result, 0x0001_0100, "IATTR=data, IPO=256 (subnqn)");
    let c = r
        .connect_admin(
            NQN,
            "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-3333-4444-555555555555",
        )
        .await;
    assert_eq!(c.status, Status::CONNECT_INVALID_HOST);
    let c = r.connect_admin(NQN, "not-an-nqn").await;
    assert_eq!(c.status, Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(
        t.controller_count(NQN),
        0,
        "refused connects leave no controller"
    );
    // An I/O queue for a controller that does not exist.
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid: 1,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(2);
    let data = ConnectData {
        hostid: [1; 16],
        cntlid: 4242,
        subnqn: NQN.into(),
        hostnqn: HOST.into(),
    }
    .encode();
    sqe.dptr = SglDescriptor::in_capsule(data.len() as u32);
    assert_eq!(
        r.command(sqe, &data).await.status,
        Status::CONNECT_INVALID_PARAMETERS
    );
    // The connection is still usable after refusals.
    assert!(r.connect_admin(NQN, HOST).await.status.is_success());
}

#[tokio::test]
async fn commands_need_connect_and_enable() {
    let (_t, addr) = target().await;
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    let identify = Sqe {
        opcode: admin_opcode::IDENTIFY,
        cid: 5,
        cdw10: 1,
        dptr: SglDescriptor::transport(4096),
        ..Default::default()
    };
    assert_eq!(
        r.command(identify, &[]).await.status,
        Status::COMMAND_SEQUENCE_ERROR,
        "before Connect"
    );
    assert!(r.connect_admin(NQN, HOST).await.status.is_success());
    assert_eq!(
        r.command(identify, &[]).await.status,
        Status::COMMAND_SEQUENCE_ERROR,
        "before CC.EN"
    );
    let cap = r
        .command(
            PropertyCommand {
                size: 8,
                offset: property::CAP,
                value: 0,
            }
            .to_sqe(6, false),
            &[],
        )
        .await;
    assert!(cap.status.is_success());
    assert_eq!(cap.result64() & 0xffff, 127, "MQES");
    let en = PropertyCommand {
        size: 4,
        offset: property::CC,
        value: 0x0046_0001,
    }
    .to_sqe(7, true);
    assert!(r.command(en, &[]).await.status.is_success());
    assert!(r.command(identify, &[]).await.status.is_success());
    let bogus = Sqe {
        opcode: 0xC5,
        cid: 8,
        ..Default::default()
    };
    assert_eq!(r.command(bogus, &[]).await.status, Status::INVALID_OPCODE);
    let bad_prop = PropertyCommand {
        size: 4,
        offset: 0x40,
        value: 0,
    }
    .to_sqe(9, false);
    assert_eq!(r.command(bad_prop, &[]).await.status, Status::INVALID_FIELD);
}

/// Random garbage after a valid initialization never brings the target down.
#[tokio::test]
async fn random_garbage_never_kills_the_target() {
    let (_t, addr) = target().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfe11);
    for _ in 0..50 {
        let mut r = Raw::open(addr).await;
        if rng.random_bool(0.5) {
            r.initialize(Digests {
                header: rng.random(),
                data: rng.random(),
            })
            .await;
        }
        let n = rng.random_range(1..600);
        let mut junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) && junk.len() > 8 {
            junk[0] = rng.random_range(0..10);
            junk[2] = [24u8, 72, 128][rng.random_range(0..3)];
        }
        r.send_raw(&junk).await;
        drop(r);
    }
    still_serves(addr).await;
}

/// A host that floods read commands and never reads the replies stalls only its own
/// connection: another connection to the same target keeps doing I/O.
#[tokio::test]
async fn a_host_that_stops_reading_stalls_only_itself() {
    let (_t, addr) = target().await;
    let mut admin = Raw::open(addr).await;
    admin.initialize(Digests::NONE).await;
    let c = admin.connect_admin(NQN, HOST).await;
    assert!(c.status.is_success());
    let cntlid = c.result as u16;
    admin.enable().await;
    let mut slow = Raw::open(addr).await;
    slow.initialize(Digests::NONE).await;
    assert!(
        slow.connect_queue(1, cntlid, NQN, HOST)
            .await
            .status
            .is_success()
    );
    // 128 reads of 128 KiB each (16 MiB) without reading a byte of the answers.
    for cid in 0..128u16 {
        let mut sqe = Sqe {
            opcode: io_opcode::READ,
            cid: 100 + cid,
            nsid: 1,
            dptr: SglDescriptor::transport(128 << 10),
            ..Default::default()
        };
        RwCommand {
            slba: u64::from(cid % 64) * 32,
            nlb: 32,
            fua: false,
        }
        .apply(&mut sqe);
        slow.send(PduHeader::CapsuleCmd(sqe), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile a second I/O queue of the same controller is served promptly.
    let mut fast = Raw::open(addr).await;
    fast.initialize(Digests::NONE).await;
    assert!(
        fast.connect_queue(2, cntlid, NQN, HOST)
            .await
            .status
            .is_success()
    );
    for i in 0..20u16 {
        let mut sqe = Sqe {
            opcode: io_opcode::WRITE,
            cid: i,
            nsid: 1,
            dptr: SglDescriptor::in_capsule(4096),
            ..Default::default()
        };
        RwCommand {
            slba: u64::from(i),
            nlb: 1,
            fua: false,
        }
        .apply(&mut sqe);
        let c = tokio::time::timeout(Duration::from_secs(2), fast.command(sqe, &[i as u8; 4096]))
            .await
            .expect("not stalled");
        assert!(c.status.is_success());
    }
    // And the stalled connection still delivers everything once its host reads again.
    let mut completed = 0;
    while completed < 128 {
        match slow.recv().await.expect("data") {
            (PduHeader::CapsuleResp(c), _) => {
                assert!(c.status.is_success());
                completed += 1;
            }
            (PduHeader::C2HData(_), _) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
