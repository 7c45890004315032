//! Hostile peers, spoken to with hand-built PDUs on raw TCP connections: lengths from the wire
//! beyond MDTS get an error status and allocate nothing; a host that stops reading its socket
//! is disconnected after the drain timeout while other hosts keep doing I/O; a host that
//! exceeds its queue size or never sends the data an R2T asked for is disconnected; idle
//! connections time out and the per-address and total connection limits refuse extras.
//!
//! The target runs in this process, so its memory is this process's resident set
//! (`/proc/self/status` VmRSS); tests that measure it run one at a time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Raw;
use ferrite_block::RamDevice;
use ferrite_protocol::command::{
    GetLogPageCommand, RwCommand, SglDescriptor, Sqe, admin_opcode, io_opcode,
};
use ferrite_protocol::fabrics::{CNTLID_DYNAMIC, PropertyCommand, property};
use ferrite_protocol::nqn::DISCOVERY_NQN;
use ferrite_protocol::pdu::{Digests, PduHeader, encode_pdu, fes};
use ferrite_protocol::status::Status;
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use tokio::io::AsyncWriteExt;

const NQN: &str = "nqn.2024-01.dev.ferrite:hostile";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const GOOD_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:66666666-2222-3333-4444-555555555555";
/// 4 GiB - 1: the largest SGL data length a command can carry.
const HUGE: u32 = u32::MAX;
/// What the target may grow by while under attack.
const RSS_BOUND: u64 = 64 << 20;

/// Tests that measure the process's memory run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn target(options: TargetOptions) -> (Arc<Target>, SocketAddr) {
    let t = Target::new(options);
    let dev = Arc::new(RamDevice::new(16 << 20, 4096).unwrap());
    t.add_subsystem(SubsystemConfig {
        nqn: NQN.into(),
        hosts: HostAccess::Only(vec![HOST.into(), GOOD_HOST.into()]),
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            device: dev,
        }],
    })
    .unwrap();
    let addr = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (t, addr)
}

/// Waits until `cond` holds, for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A raw NVMe/TCP connection that speaks PDUs built by hand.
/// Queue set-up shared by these tests.
impl Raw {
    /// Connects an admin queue to `subnqn` and enables the controller; returns its ID.
    async fn admin(addr: SocketAddr, subnqn: &str, hostnqn: &str) -> (Raw, u16) {
        let mut r = Raw::open(addr).await;
        r.initialize(Digests::NONE).await;
        let c = r
            .connect_queue_sized(0, 31, CNTLID_DYNAMIC, subnqn, hostnqn)
            .await;
        assert!(c.status.is_success(), "admin connect: {}", c.status);
        let en = PropertyCommand {
            size: 4,
            offset: property::CC,
            value: 0x0046_0001,
        }
        .to_sqe(2, true);
        assert!(r.command_data(en, &[]).await.0.status.is_success());
        (r, c.result as u16)
    }

    async fn io_queue(addr: SocketAddr, qid: u16, sqsize: u16, cntlid: u16, hostnqn: &str) -> Raw {
        let mut r = Raw::open(addr).await;
        r.initialize(Digests::NONE).await;
        let c = r
            .connect_queue_sized(qid, sqsize, cntlid, NQN, hostnqn)
            .await;
        assert!(c.status.is_success(), "I/O connect: {}", c.status);
        r
    }
}

fn identify_controller(cid: u16, len: u32) -> Sqe {
    Sqe {
        opcode: admin_opcode::IDENTIFY,
        cid,
        cdw10: 1,
        dptr: SglDescriptor::transport(len),
        ..Default::default()
    }
}

fn rw(opcode: u8, cid: u16, slba: u64, nlb: u32, sgl: SglDescriptor) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        cid,
        nsid: 1,
        dptr: sgl,
        ..Default::default()
    };
    RwCommand {
        slba,
        nlb,
        fua: false,
    }
    .apply(&mut sqe);
    sqe
}

/// (a) Identify with a 4 GiB transport SGL to the discovery controller (no access list
/// applies there), and the other wire lengths an attacker controls: each gets an error
/// status, the connection stays usable, and the process does not grow.
#[tokio::test]
async fn four_gib_sgl_lengths_get_an_error_and_allocate_nothing() {
    let _serial = SERIAL.lock().await;
    let (t, addr) = target(TargetOptions::default()).await;
    let before = rss_bytes();

    let (mut disc, _) = Raw::admin(
        addr,
        DISCOVERY_NQN,
        "nqn.2014-08.org.nvmexpress:uuid:0badbad0-0000-0000-0000-000000000000",
    )
    .await;
    for cid in 10..30u16 {
        let (c, data) = disc.command_data(identify_controller(cid, HUGE), &[]).await;
        assert_eq!(c.status, Status::INVALID_FIELD, "Identify with a 4 GiB SGL");
        assert!(data.is_empty(), "no data sent for a refused command");
    }
    // Get Log Page: NUMD for 16 GiB and a 4 GiB SGL; NUMD beyond MDTS with a small SGL.
    let mut glp = Sqe {
        opcode: admin_opcode::GET_LOG_PAGE,
        cid: 40,
        dptr: SglDescriptor::transport(HUGE),
        ..Default::default()
    };
    GetLogPageCommand {
        lid: 0x70,
        lsp: 0,
        rae: false,
        len: 1 << 34,
        offset: 0,
    }
    .apply(&mut glp);
    assert_eq!(
        disc.command_data(glp, &[]).await.0.status,
        Status::INVALID_FIELD,
        "Get Log Page with a 4 GiB SGL"
    );
    // A valid Identify still works on the same connection.
    let (c, data) = disc.command_data(identify_controller(41, 4096), &[]).await;
    assert!(c.status.is_success());
    assert_eq!(data.len(), 4096);

    // On an I/O queue: reads and writes (R2T path) with 4 GiB SGLs, and NLB beyond MDTS.
    let (_admin, cntlid) = Raw::admin(addr, NQN, HOST).await;
    let mut q = Raw::io_queue(addr, 1, 127, cntlid, HOST).await;
    for cid in 0..10u16 {
        let (c, d) = q
            .command_data(
                rw(io_opcode::READ, cid, 0, 1, SglDescriptor::transport(HUGE)),
                &[],
            )
            .await;
        assert_eq!(c.status, Status::INVALID_FIELD, "read with a 4 GiB SGL");
        assert!(d.is_empty());
        // A write whose data would come by R2T: refused without an R2T (the next PDU is the
        // response).
        let (c, _) = q
            .command_data(
                rw(
                    io_opcode::WRITE,
                    100 + cid,
                    0,
                    65536,
                    SglDescriptor::transport(HUGE),
                ),
                &[],
            )
            .await;
        assert_eq!(c.status, Status::INVALID_FIELD, "write with a 4 GiB SGL");
    }
    // NLB beyond MDTS with an SGL within it.
    let (c, _) = q
        .command_data(
            rw(
                io_opcode::READ,
                200,
                0,
                65536,
                SglDescriptor::transport(128 << 10),
            ),
            &[],
        )
        .await;
    assert_eq!(c.status, Status::INVALID_FIELD, "NLB beyond MDTS");
    // In-capsule SGL claiming more than the capsule carries.
    let (c, _) = q
        .command_data(
            rw(io_opcode::WRITE, 201, 0, 1, SglDescriptor::in_capsule(HUGE)),
            &[0u8; 4096],
        )
        .await;
    assert_eq!(c.status, Status::INVALID_FIELD, "in-capsule SGL of 4 GiB");
    let (c, d) = q
        .command_data(
            rw(io_opcode::READ, 202, 0, 1, SglDescriptor::transport(4096)),
            &[],
        )
        .await;
    assert!(c.status.is_success());
    assert_eq!(d.len(), 4096);

    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    println!(
        "RSS before {} KiB, after {} KiB, grown {} KiB",
        before >> 10,
        after >> 10,
        grown >> 10
    );
    assert!(
        grown < RSS_BOUND,
        "the target grew by {grown} bytes under 4 GiB SGL lengths"
    );
    assert!(t.stats().oversized_commands >= 42, "{:?}", t.stats());
}

/// (b) A host that sends many reads and never reads its socket holds at most its budget,
/// is disconnected after the drain timeout, and a well-behaved host (another controller)
/// keeps doing I/O all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_reads_is_disconnected_while_others_keep_working() {
    let _serial = SERIAL.lock().await;
    let options = TargetOptions {
        max_connection_buffer: 1 << 20,
        drain_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let (t, addr) = target(options).await;
    let before = rss_bytes();

    let (_slow_admin, slow_cntlid) = Raw::admin(addr, NQN, HOST).await;
    let mut slow = Raw::io_queue(addr, 1, 127, slow_cntlid, HOST).await;
    // 128 reads of 128 KiB (16 MiB), again and again, never reading a byte of the answers.
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        for round in 0..8u16 {
            for cid in 0..128u16 {
                let sqe = rw(
                    io_opcode::READ,
                    cid,
                    u64::from(cid % 64) * 32,
                    32,
                    SglDescriptor::transport(128 << 10),
                );
                let mut out = Vec::new();
                encode_pdu(
                    &PduHeader::CapsuleCmd(Sqe {
                        cid: cid + round * 128,
                        ..sqe
                    }),
                    &[],
                    Digests::NONE,
                    &mut out,
                );
                if slow.s.write_all(&out).await.is_err() {
                    return (slow, sent);
                }
                sent += 1;
            }
        }
        (slow, sent)
    });

    let (_good_admin, good_cntlid) = Raw::admin(addr, NQN, GOOD_HOST).await;
    let mut good = Raw::io_queue(addr, 1, 127, good_cntlid, GOOD_HOST).await;
    let start = Instant::now();
    let mut ios = 0u32;
    let mut peak = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        let i = (ios % 256) as u16;
        let payload = vec![i as u8; 4096];
        let w = rw(
            io_opcode::WRITE,
            i,
            1000 + u64::from(i),
            1,
            SglDescriptor::in_capsule(4096),
        );
        let (c, _) = tokio::time::timeout(Duration::from_secs(1), good.command_data(w, &payload))
            .await
            .expect("good host not stalled");
        assert!(c.status.is_success());
        let r = rw(
            io_opcode::READ,
            i,
            1000 + u64::from(i),
            1,
            SglDescriptor::transport(4096),
        );
        let (c, d) = tokio::time::timeout(Duration::from_secs(1), good.command_data(r, &[]))
            .await
            .expect("good host not stalled");
        assert!(c.status.is_success());
        assert_eq!(d, payload);
        ios += 1;
        peak = peak.max(rss_bytes());
    }
    assert!(ios > 50, "the good host did only {ios} I/Os");
    assert!(
        eventually(Duration::from_secs(3), || t.stats().drain_timeouts >= 1).await,
        "{:?}",
        t.stats()
    );
    let (mut slow, sent) = flood.await.unwrap();
    let (closed, _) = slow.closed_within(Duration::from_secs(5)).await;
    assert!(closed, "the slow host's connection was not closed");
    let grown = peak.saturating_sub(before);
    println!(
        "RSS before {} KiB, peak {} KiB, grown {} KiB; {sent} reads sent; {ios} good I/Os",
        before >> 10,
        peak >> 10,
        grown >> 10
    );
    assert!(grown < RSS_BOUND, "the target grew by {grown} bytes");
    // The good host is still served after the slow one is gone.
    let r = rw(io_opcode::READ, 7, 0, 1, SglDescriptor::transport(4096));
    assert!(good.command_data(r, &[]).await.0.status.is_success());
}

/// (c) More commands outstanding than the queue has entries: the connection is terminated.
#[tokio::test]
async fn exceeding_the_queue_size_is_terminated() {
    let (t, addr) = target(TargetOptions::default()).await;
    let (_admin, cntlid) = Raw::admin(addr, NQN, HOST).await;
    // SQSIZE 3: four entries. Writes whose data comes by R2T stay outstanding while the host
    // holds the data back.
    let mut q = Raw::io_queue(addr, 1, 3, cntlid, HOST).await;
    for cid in 0..4u16 {
        q.send(
            PduHeader::CapsuleCmd(rw(
                io_opcode::WRITE,
                cid,
                u64::from(cid),
                1,
                SglDescriptor::transport(4096),
            )),
            &[],
        )
        .await;
        match q.recv().await.expect("R2T") {
            (PduHeader::R2T(r), _) => assert_eq!(r.cccid, cid),
            other => panic!("expected an R2T, got {other:?}"),
        }
    }
    q.send(
        PduHeader::CapsuleCmd(rw(
            io_opcode::WRITE,
            4,
            4,
            1,
            SglDescriptor::transport(4096),
        )),
        &[],
    )
    .await;
    let (closed, term) = q.closed_within(Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(term, Some(fes::PDU_SEQUENCE_ERROR));
    assert_eq!(t.stats().queue_overflows, 1);
}

/// An R2T whose data never comes: the connection is closed after the data timeout.
#[tokio::test]
async fn r2t_data_that_never_comes_times_out() {
    let options = TargetOptions {
        data_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (t, addr) = target(options).await;
    let (_admin, cntlid) = Raw::admin(addr, NQN, HOST).await;
    let mut q = Raw::io_queue(addr, 1, 31, cntlid, HOST).await;
    q.send(
        PduHeader::CapsuleCmd(rw(
            io_opcode::WRITE,
            1,
            0,
            1,
            SglDescriptor::transport(4096),
        )),
        &[],
    )
    .await;
    assert!(matches!(q.recv().await, Some((PduHeader::R2T(_), _))));
    let started = Instant::now();
    let (closed, _) = q.closed_within(Duration::from_secs(3)).await;
    assert!(closed);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(t.stats().data_timeouts, 1);
}

/// (d) Connections that never send ICReq are closed after the ICReq timeout; the
/// per-address limit refuses extras meanwhile; an initialized connection that never
/// connects is closed after the Connect timeout.
#[tokio::test]
async fn idle_connections_time_out_and_the_address_limit_refuses_extras() {
    let _serial = SERIAL.lock().await;
    let options = TargetOptions {
        ic_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(300),
        max_connections_per_address: 100,
        ..Default::default()
    };
    let (t, addr) = target(options).await;
    let before = rss_bytes();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(Raw::open(addr).await);
    }
    assert!(
        eventually(Duration::from_secs(1), || t.stats().connections_active
            == 100)
        .await,
        "{:?}",
        t.stats()
    );
    // The 101st from the same address is closed at once.
    let mut extra = Raw::open(addr).await;
    let (closed, _) = extra.closed_within(Duration::from_millis(500)).await;
    assert!(
        closed,
        "the connection over the per-address limit was not refused"
    );
    assert_eq!(t.stats().refused_address_limit, 1);
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < RSS_BOUND,
        "100 idle connections grew the target by {grown} bytes"
    );
    // The idle ones are closed by the ICReq timeout.
    for r in &mut idle {
        let (closed, _) = r.closed_within(Duration::from_secs(3)).await;
        assert!(closed, "an idle connection was not closed");
    }
    assert_eq!(t.stats().ic_timeouts, 100);
    assert!(eventually(Duration::from_secs(1), || t.stats().connections_active == 0).await);

    // ICReq but no Connect.
    let mut r = Raw::open(addr).await;
    r.initialize(Digests::NONE).await;
    let (closed, _) = r.closed_within(Duration::from_secs(2)).await;
    assert!(closed);
    assert_eq!(t.stats().connect_timeouts, 1);

    // Room again once they are gone.
    let (_admin, _) = Raw::admin(addr, NQN, HOST).await;
}

/// The total limit refuses connections from any address beyond it.
#[tokio::test]
async fn the_total_limit_refuses_extras() {
    let options = TargetOptions {
        max_connections: 4,
        ..Default::default()
    };
    let (t, addr) = target(options).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(Raw::open(addr).await);
    }
    assert!(eventually(Duration::from_secs(1), || t.stats().connections_active == 4).await);
    let mut extra = Raw::open(addr).await;
    assert!(extra.closed_within(Duration::from_millis(500)).await.0);
    assert_eq!(t.stats().refused_total_limit, 1);
    drop(open);
    assert!(eventually(Duration::from_secs(1), || t.stats().connections_active == 0).await);
    let (_admin, _) = Raw::admin(addr, NQN, HOST).await;
}
