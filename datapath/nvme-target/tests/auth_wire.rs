//! In-band authentication (DH-HMAC-CHAP) seen through hand-built PDUs on raw TCP
//! connections: the Connect response asks for authentication (ATR); every command other
//! than Authentication Send/Receive is refused with Authentication Required until the
//! transaction succeeds, on the admin queue and on I/O queues; malformed, oversized and
//! out-of-sequence authentication messages get errors (and the connection closes), never a
//! crash; a queue that does not authenticate in time is closed; other hosts keep working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_block::RamDevice;
use ferrite_protocol::auth::{
    AUTHID_DHCHAP, AuthCommand, AuthMessage, CONNECT_AUTHREQ_ATR, Negotiate, Reply, failure, msg,
};
use ferrite_protocol::command::{RwCommand, SglDescriptor, Sqe, admin_opcode, io_opcode};
use ferrite_protocol::completion::Cqe;
use ferrite_protocol::dhchap::{HashId, ResponseInput, Secret, host_response};
use ferrite_protocol::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, PropertyCommand, property,
};
use ferrite_protocol::pdu::{Digests, ICReq, PduHeader, decode_pdu, encode_pdu};
use ferrite_protocol::status::Status;
use ferrite_target::{
    DhchapKeys, HostAccess, HostKeys, NamespaceConfig, SubsystemConfig, Target, TargetOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// None until ICResp (which is decoded without negotiated digests).
    digests: Option<Digests>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let mut r = Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            digests: None,
        };
        r.send(
            PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: Digests::NONE,
                maxr2t: 0,
            }),
            &[],
        )
        .await;
        assert!(matches!(r.recv().await, Some((PduHeader::ICResp(_), _))));
        r.digests = Some(Digests::NONE);
        r
    }

    async fn send(&mut self, h: PduHeader, data: &[u8]) {
        let mut out = Vec::new();
        encode_pdu(&h, data, Digests::NONE, &mut out);
        self.s.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<(PduHeader, Vec<u8>)> {
        loop {
            if let Ok(Some((p, used))) = decode_pdu(&self.buf, self.digests, 1 << 20) {
                let out = (p.header, p.data.to_vec());
                self.buf.drain(..used);
                return Some(out);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command; returns its response and the data that came before it.
    async fn command(&mut self, sqe: Sqe, data: &[u8]) -> Option<(Cqe, Vec<u8>)> {
        self.send(PduHeader::CapsuleCmd(sqe), data).await;
        let mut got = Vec::new();
        loop {
            match self.recv().await? {
                (PduHeader::CapsuleResp(c), _) => return Some((c, got)),
                (PduHeader::C2HData(_), d) => got.extend_from_slice(&d),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn connect(&mut self, qid: u16, cntlid: u16, hostnqn: &str) -> Cqe {
        let sqsize = if qid == 0 { 31 } else { 127 };
        let mut sqe = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato: 0,
        }
        .to_sqe(1);
        let data = ConnectData {
            hostid: [1; 16],
            cntlid,
            subnqn: NQN.into(),
            hostnqn: hostnqn.into(),
        }
        .encode();
        sqe.dptr = SglDescriptor::in_capsule(data.len() as u32);
        self.command(sqe, &data).await.expect("connect response").0
    }

    async fn auth_send(&mut self, bytes: &[u8]) -> Option<Cqe> {
        let mut sqe = AuthCommand::dhchap(bytes.len() as u32).to_sqe(true);
        sqe.cid = 7;
        sqe.dptr = SglDescriptor::in_capsule(bytes.len() as u32);
        Some(self.command(sqe, bytes).await?.0)
    }

    async fn auth_receive(&mut self, al: u32) -> Option<(Cqe, Vec<u8>)> {
        let mut sqe = AuthCommand::dhchap(al).to_sqe(false);
        sqe.cid = 8;
        sqe.dptr = SglDescriptor::transport(al);
        self.command(sqe, &[]).await
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

    async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
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
    let mut admin = Raw::open(addr).await;
    let c = admin.connect(0, CNTLID_DYNAMIC, HOST).await;
    assert!(c.status.is_success());
    assert_ne!(
        c.result & CONNECT_AUTHREQ_ATR,
        0,
        "the Connect response asks for authentication"
    );
    let cntlid = (c.result & 0xffff) as u16;
    for sqe in [property_get(2), identify(3)] {
        let (c, data) = admin.command(sqe, &[]).await.unwrap();
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
            .command(property_get(4), &[])
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
    assert!(admin.command(en, &[]).await.unwrap().0.status.is_success());

    // An I/O queue of the authenticated controller must authenticate too.
    let mut io = Raw::open(addr).await;
    let c = io.connect(1, cntlid, HOST).await;
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
    let (c, data) = io.command(read, &[]).await.unwrap();
    assert_eq!(c.status, Status::AUTH_REQUIRED);
    assert!(data.is_empty());
    assert!(matches!(
        io.authenticate(&secret(), 2).await,
        AuthMessage::Success1(_)
    ));
    let (c, data) = io.command(read, &[]).await.unwrap();
    assert!(c.status.is_success());
    assert_eq!(data.len(), 4096);

    // A host without keys is admitted as before: no ATR, commands work at once.
    let mut other = Raw::open(addr).await;
    let c = other.connect(0, CNTLID_DYNAMIC, OTHER).await;
    assert!(c.status.is_success());
    assert_eq!(c.result & CONNECT_AUTHREQ_ATR, 0);
    assert!(
        other
            .command(property_get(2), &[])
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
    let mut admin = Raw::open(addr).await;
    admin.connect(0, CNTLID_DYNAMIC, HOST).await;
    let wrong = Secret::new(1, &[0x43; 32]).unwrap();
    let m = admin.authenticate(&wrong, 1).await;
    assert!(
        matches!(m, AuthMessage::Failure(f) if f.auth_id == msg::FAILURE1 && f.rescode_exp == failure::FAILED),
        "{m:?}"
    );
    assert!(
        admin.closed_within(Duration::from_secs(3)).await,
        "the failed queue is closed"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_errors_not_a_crash() {
    let (t, addr) = target(TargetOptions::default()).await;

    // TL above the largest message: Invalid Field, the queue stays up.
    let mut q = Raw::open(addr).await;
    q.connect(0, CNTLID_DYNAMIC, HOST).await;
    let big = vec![0u8; 6000];
    assert_eq!(
        q.auth_send(&big).await.unwrap().status,
        Status::INVALID_FIELD
    );
    // TL that differs from the data length.
    let mut sqe = AuthCommand::dhchap(100).to_sqe(true);
    sqe.dptr = SglDescriptor::in_capsule(72);
    assert_eq!(
        q.command(sqe, &[0u8; 72]).await.unwrap().0.status,
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
        q.command(sqe, &[0u8; 72]).await.unwrap().0.status,
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
    assert!(q.closed_within(Duration::from_secs(3)).await);

    // A Receive too small for the challenge.
    let mut q = Raw::open(addr).await;
    q.connect(0, CNTLID_DYNAMIC, HOST).await;
    q.negotiate(4).await;
    let (c, _) = q.auth_receive(16).await.unwrap();
    assert_eq!(c.status, Status::INVALID_FIELD);
    assert!(q.closed_within(Duration::from_secs(3)).await);

    // Random bytes of every small length as messages, each on a fresh queue.
    let mut x: u32 = 0x9e37_79b9;
    for len in [1usize, 4, 8, 15, 16, 17, 71, 72, 73, 200] {
        let mut q = Raw::open(addr).await;
        q.connect(0, CNTLID_DYNAMIC, HOST).await;
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
    let mut ok = Raw::open(addr).await;
    ok.connect(0, CNTLID_DYNAMIC, HOST).await;
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
    let mut silent = Raw::open(addr).await;
    silent.connect(0, CNTLID_DYNAMIC, HOST).await;
    assert!(silent.closed_within(Duration::from_secs(3)).await);
    // Busy with refused commands, never authenticating.
    let mut busy = Raw::open(addr).await;
    busy.connect(0, CNTLID_DYNAMIC, HOST).await;
    let started = tokio::time::Instant::now();
    let mut cid = 10;
    while let Some((c, _)) = busy.command(property_get(cid), &[]).await {
        assert_eq!(c.status, Status::AUTH_REQUIRED);
        assert!(started.elapsed() < Duration::from_secs(3), "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
        cid += 1;
    }
    // A host that authenticates in time stays.
    let mut good = Raw::open(addr).await;
    good.connect(0, CNTLID_DYNAMIC, HOST).await;
    assert!(matches!(
        good.authenticate(&secret(), 1).await,
        AuthMessage::Success1(_)
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        good.command(property_get(3), &[])
            .await
            .unwrap()
            .0
            .status
            .is_success()
    );
    t.shutdown().await;
}
