//! In-band authentication (DH-HMAC-CHAP) seen through hand-built PDUs on raw TCP
//! connections: the Connect response asks for authentication (ATR); every command other
//! than Authentication Send/Receive is refused with Authentication Required until the
//! transaction succeeds, on the admin queue and on I/O queues; malformed, oversized and
//! out-of-sequence authentication messages get errors (and the connection closes), never a
//! crash; a queue that does not authenticate in time is closed; other hosts keep working.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Raw;
use ferrite_block::RamDevice;
use ferrite_protocol::auth::{
    AUTHID_DHCHAP, AuthCommand, AuthMessage, CONNECT_AUTHREQ_ATR, Negotiate, Reply, failure, msg,
};
use ferrite_protocol::command::{RwCommand, SglDescriptor, Sqe, admin_opcode, io_opcode};
use ferrite_protocol::completion::Cqe;
use ferrite_protocol::dhchap::{HashId, ResponseInput, Secret, host_response};
use ferrite_protocol::fabrics::{CNTLID_DYNAMIC, PropertyCommand, property};
use ferrite_protocol::status::Status;
use ferrite_target::{
    DhchapKeys, HostAccess, HostKeys, NamespaceConfig, SubsystemConfig, Target, TargetOptions,
};

const NQN: &str = "nqn.2024-01.dev.ferrite:auth-wire";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:66666666-2222-3333-4444-555555555555";

fn secret() -> Secret {
    Secret::new(1, &[0x42; 32]).unwrap()
}

async fn target(options: TargetOptions) -> (Arc<Target>, SocketAddr) {
    let t = Target::new(options);
    let dev = Arc::new(RamDevice::new(16 << 20, 4096).unwrap());
    let mut keys = HostKeys::new();
    let mut k = DhchapKeys::new(secret(), None);
    k.dh_groups = vec![ferrite_protocol::dhchap::DhGroup::Null];
    keys.insert(HOST.to_string(), k);
    t.add_subsystem_with_keys(
        SubsystemConfig {
            nqn: NQN.into(),
            hosts: HostAccess::Only(vec![HOST.into(), OTHER.into()]),
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                device: dev,
            }],
        },
        keys,
    )
    .unwrap();
    let addr = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (t, addr)
}

/// The authentication transaction, step by step.
impl Raw {
    async fn auth_send(&mut self, bytes: &[u8]) -> Option<Cqe> {
        let mut sqe = AuthCommand::dhchap(bytes.len() as u32).to_sqe(true);
        sqe.cid = 7;
        sqe.dptr = SglDescriptor::in_capsule(bytes.len() as u32);
        Some(self.exchange(sqe, bytes).await?.0)
    }

    async fn auth_receive(&mut self, al: u32) -> Option<(Cqe, Vec<u8>)> {
        let mut sqe = AuthCommand::dhchap(al).to_sqe(false);
        sqe.cid = 8;
        sqe.dptr = SglDescriptor::transport(al);
        self.exchange(sqe, &[]).await
    }

    async fn negotiate(&mut self, t_id: u16) {
        let n = AuthMessage::Negotiate(Negotiate {
            t_id,
            sc_c: 0,
            napd: 1,
            authid: AUTHID_DHCHAP,
            hashes: vec![1],
            dh_groups: vec![0],
        });
        assert!(
            self.auth_send(&n.encode().unwrap())
                .await
                .unwrap()
                .status
                .is_success()
        );
    }

    /// Runs the whole transaction (null group) with `key`; returns the final message.
    async fn authenticate(&mut self, key: &Secret, qid_t_id: u16) -> AuthMessage {
        self.negotiate(qid_t_id).await;
        let (c, data) = self.auth_receive(4096).await.unwrap();
        assert!(c.status.is_success(), "{:?}", c.status);
        let AuthMessage::Challenge(ch) = AuthMessage::decode(&data).unwrap() else {
            panic!("challenge")
        };
        let response = host_response(
            key,
            &ResponseInput {
                hash: HashId::Sha256,
                challenge: &ch.challenge,
                session_key: None,
                seqnum: ch.seqnum,
                t_id: qid_t_id,
                hostnqn: HOST,
                subnqn: NQN,
            },
        );
        let r = AuthMessage::Reply(Reply {
            t_id: qid_t_id,
            response,
            challenge: None,
            seqnum: 0,
            dh_value: vec![],
        });
        assert!(
            self.auth_send(&r.encode().unwrap())
                .await
                .unwrap()
                .status
                .is_success()
        );
        let (c, data) = self.auth_receive(4096).await.unwrap();
        assert!(c.status.is_success());
        AuthMessage::decode(&data).unwrap()
    }
}

fn property_get(cid: u16) -> Sqe {
    PropertyCommand {
        size: 8,
        offset: property::CAP,
        value: 0,
    }
    .to_sqe(cid, false)
}

fn identify(cid: u16) -> Sqe {
    Sqe {
        opcode: admin_opcode::IDENTIFY,
        cid,
        cdw10: 1,
        dptr: SglDescriptor::transport(4096),
        ..Default::default()
    }
}

#[tokio::test]
async fn commands_before_authentication_are_refused_on_admin_and_io_queues() {
    let (t, addr) = target(TargetOptions::default()).await;
    let mut admin = Raw::ready(addr).await;
    let c = admin.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    assert!(c.status.is_success());
    assert_ne!(
        c.result & CONNECT_AUTHREQ_ATR,
        0,
        "the Connect response asks for authentication"
    );
    let cntlid = (c.result & 0xffff) as u16;
    for sqe in [property_get(2), identify(3)] {
        let (c, data) = admin.exchange(sqe, &[]).await.unwrap();
        assert_eq!(c.status, Status::AUTH_REQUIRED);
        assert!(data.is_empty(), "no data before authentication");
    }
    let done = admin.authenticate(&secret(), 1).await;
    assert!(
        matches!(done, AuthMessage::Success1(ref s) if s.response.is_none() && s.hl == 32),
        "{done:?}"
    );
    assert!(
        admin
            .exchange(property_get(4), &[])
            .await
            .unwrap()
            .0
            .status
            .is_success()
    );
    let en = PropertyCommand {
        size: 4,
        offset: property::CC,
        value: 0x0046_0001,
    }
    .to_sqe(5, true);
    assert!(admin.exchange(en, &[]).await.unwrap().0.status.is_success());

    // An I/O queue of the authenticated controller must authenticate too.
    let mut io = Raw::ready(addr).await;
    let c = io.connect_queue(1, cntlid, NQN, HOST).await;
    assert!(c.status.is_success());
    assert_ne!(c.result & CONNECT_AUTHREQ_ATR, 0);
    let mut read = Sqe {
        opcode: io_opcode::READ,
        cid: 9,
        nsid: 1,
        dptr: SglDescriptor::transport(4096),
        ..Default::default()
    };
    RwCommand {
        slba: 0,
        nlb: 1,
        fua: false,
    }
    .apply(&mut read);
    let (c, data) = io.exchange(read, &[]).await.unwrap();
    assert_eq!(c.status, Status::AUTH_REQUIRED);
    assert!(data.is_empty());
    assert!(matches!(
        io.authenticate(&secret(), 2).await,
        AuthMessage::Success1(_)
    ));
    let (c, data) = io.exchange(read, &[]).await.unwrap();
    assert!(c.status.is_success());
    assert_eq!(data.len(), 4096);

    // A host without keys is admitted as before: no ATR, commands work at once.
    let mut other = Raw::ready(addr).await;
    let c = other.connect_queue(0, CNTLID_DYNAMIC, NQN, OTHER).await;
    assert!(c.status.is_success());
    assert_eq!(c.result & CONNECT_AUTHREQ_ATR, 0);
    assert!(
        other
            .exchange(property_get(2), &[])
            .await
            .unwrap()
            .0
            .status
            .is_success()
    );
    t.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_gets_failure1_and_the_connection_closes() {
    let (t, addr) = target(TargetOptions::default()).await;
    let mut admin = Raw::ready(addr).await;
    admin.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    let wrong = Secret::new(1, &[0x43; 32]).unwrap();
    let m = admin.authenticate(&wrong, 1).await;
    assert!(
        matches!(m, AuthMessage::Failure(f) if f.auth_id == msg::FAILURE1 && f.rescode_exp == failure::FAILED),
        "{m:?}"
    );
    assert!(
        admin.closed_within(Duration::from_secs(3)).await.0,
        "the failed queue is closed"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_errors_not_a_crash() {
    let (t, addr) = target(TargetOptions::default()).await;

    // TL above the largest message: Invalid Field, the queue stays up.
    let mut q = Raw::ready(addr).await;
    q.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    let big = vec![0u8; 6000];
    assert_eq!(
        q.auth_send(&big).await.unwrap().status,
        Status::INVALID_FIELD
    );
    // TL that differs from the data length.
    let mut sqe = AuthCommand::dhchap(100).to_sqe(true);
    sqe.dptr = SglDescriptor::in_capsule(72);
    assert_eq!(
        q.exchange(sqe, &[0u8; 72]).await.unwrap().0.status,
        Status::INVALID_FIELD
    );
    // Another security protocol.
    let mut sqe = AuthCommand {
        secp: 0xEA,
        ..AuthCommand::dhchap(72)
    }
    .to_sqe(true);
    sqe.dptr = SglDescriptor::in_capsule(72);
    assert_eq!(
        q.exchange(sqe, &[0u8; 72]).await.unwrap().0.status,
        Status::INVALID_FIELD
    );
    // A Reply claiming HL 255 and a 64 KiB DH value in 16 bytes: the Send completes, the
    // Receive explains (Failure1, incorrect payload), and the connection ends.
    q.negotiate(3).await;
    let mut hostile = vec![0u8; 16];
    hostile[0] = msg::DHCHAP;
    hostile[1] = msg::REPLY;
    hostile[6] = 255;
    hostile[10] = 0xff;
    hostile[11] = 0xff;
    assert!(q.auth_send(&hostile).await.unwrap().status.is_success());
    let (c, data) = q.auth_receive(4096).await.unwrap();
    assert!(c.status.is_success());
    let m = AuthMessage::decode(&data).unwrap();
    assert!(
        matches!(m, AuthMessage::Failure(f) if f.rescode_exp == failure::INCORRECT_PAYLOAD),
        "{m:?}"
    );
    assert!(q.closed_within(Duration::from_secs(3)).await.0);

    // A Receive too small for the challenge.
    let mut q = Raw::ready(addr).await;
    q.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    q.negotiate(4).await;
    let (c, _) = q.auth_receive(16).await.unwrap();
    assert_eq!(c.status, Status::INVALID_FIELD);
    assert!(q.closed_within(Duration::from_secs(3)).await.0);

    // Random bytes of every small length as messages, each on a fresh queue.
    let mut x: u32 = 0x9e37_79b9;
    for len in [1usize, 4, 8, 15, 16, 17, 71, 72, 73, 200] {
        let mut q = Raw::ready(addr).await;
        q.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        if len > 2 {
            b[0] = (len % 2) as u8;
            b[1] = [0u8, 1, 2, 3, 4, 0xf0][len % 6];
        }
        assert!(q.auth_send(&b).await.unwrap().status.is_success());
        let (c, data) = q.auth_receive(4096).await.unwrap();
        assert!(
            c.status.is_success() || c.status == Status::COMMAND_SEQUENCE_ERROR,
            "{:?}",
            c.status
        );
        if !data.is_empty() {
            assert!(AuthMessage::decode(&data).is_ok());
        }
    }

    // The target still serves everyone.
    let mut ok = Raw::ready(addr).await;
    ok.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    assert!(matches!(
        ok.authenticate(&secret(), 9).await,
        AuthMessage::Success1(_)
    ));
    t.shutdown().await;
}

#[tokio::test]
async fn a_queue_that_does_not_authenticate_in_time_is_closed() {
    let (t, addr) = target(TargetOptions {
        auth_timeout: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    // Silent after Connect.
    let mut silent = Raw::ready(addr).await;
    silent.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    assert!(silent.closed_within(Duration::from_secs(3)).await.0);
    // Busy with refused commands, never authenticating.
    let mut busy = Raw::ready(addr).await;
    busy.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    let started = tokio::time::Instant::now();
    let mut cid = 10;
    while let Some((c, _)) = busy.exchange(property_get(cid), &[]).await {
        assert_eq!(c.status, Status::AUTH_REQUIRED);
        assert!(started.elapsed() < Duration::from_secs(3), "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
        cid += 1;
    }
    // A host that authenticates in time stays.
    let mut good = Raw::ready(addr).await;
    good.connect_queue(0, CNTLID_DYNAMIC, NQN, HOST).await;
    assert!(matches!(
        good.authenticate(&secret(), 1).await,
        AuthMessage::Success1(_)
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        good.exchange(property_get(3), &[])
            .await
            .unwrap()
            .0
            .status
            .is_success()
    );
    t.shutdown().await;
}
