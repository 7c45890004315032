//! A raw NVMe/TCP client for the target's wire tests (`raw_wire.rs`, `hostile_host.rs`,
//! `auth_wire.rs`): PDUs built by hand on a plain TCP connection, so that tests can send what
//! no well-behaved host would.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrite_protocol::command::{SglDescriptor, Sqe};
use ferrite_protocol::completion::Cqe;
use ferrite_protocol::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, PropertyCommand, property,
};
use ferrite_protocol::pdu::{
    CommonHeader, Digests, ICReq, PduHeader, PduType, decode_pdu, encode_pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`Raw::recv`] waits for the next bytes.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw NVMe/TCP connection.
pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
    /// None until ICResp (which is decoded without negotiated digests).
    pub digests: Option<Digests>,
}

impl Raw {
    /// A TCP connection to `addr`; nothing sent yet.
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            digests: None,
        }
    }

    /// A connection that has exchanged ICReq/ICResp without digests.
    pub async fn ready(addr: SocketAddr) -> Raw {
        let mut r = Raw::open(addr).await;
        r.initialize(Digests::NONE).await;
        r
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, h: PduHeader, data: &[u8]) {
        let mut out = Vec::new();
        encode_pdu(&h, data, self.digests.unwrap_or_default(), &mut out);
        self.send_raw(&out).await;
    }

    /// Receives one PDU, or None if the connection closed (or nothing came for 5 s).
    pub async fn recv(&mut self) -> Option<(PduHeader, Vec<u8>)> {
        loop {
            if let Ok(Some((p, used))) = decode_pdu(&self.buf, self.digests, 1 << 20) {
                let out = (p.header, p.data.to_vec());
                self.buf.drain(..used);
                return Some(out);
            }
            let mut chunk = vec![0u8; 65536];
            let n = tokio::time::timeout(RECV_TIMEOUT, self.s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// ICReq with `digests`; checks the ICResp.
    pub async fn initialize(&mut self, digests: Digests) {
        self.send(
            PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests,
                maxr2t: 0,
            }),
            &[],
        )
        .await;
        match self.recv().await.expect("ICResp").0 {
            PduHeader::ICResp(r) => {
                assert_eq!(r.digests, digests);
                assert_eq!(r.cpda, 0);
                assert!(r.maxh2cdata >= 4096 && r.maxh2cdata % 4 == 0);
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
        self.digests = Some(digests);
    }

    /// Sends a command; returns its response and the data of the C2HData PDUs before it, or
    /// None if the connection ended first.
    pub async fn exchange(&mut self, sqe: Sqe, data: &[u8]) -> Option<(Cqe, Vec<u8>)> {
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

    /// [`Raw::exchange`] that must be answered: the response and the data.
    pub async fn command_data(&mut self, sqe: Sqe, data: &[u8]) -> (Cqe, Vec<u8>) {
        self.exchange(sqe, data).await.expect("response")
    }

    /// [`Raw::exchange`] that must be answered: the response.
    pub async fn command(&mut self, sqe: Sqe, data: &[u8]) -> Cqe {
        self.command_data(sqe, data).await.0
    }

    /// Fabrics Connect of queue `qid` with `sqsize` (0's based).
    pub async fn connect_queue_sized(
        &mut self,
        qid: u16,
        sqsize: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
    ) -> Cqe {
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
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .encode();
        sqe.dptr = SglDescriptor::in_capsule(data.len() as u32);
        self.command(sqe, &data).await
    }

    /// Fabrics Connect of queue `qid` with 32 admin or 128 I/O entries.
    pub async fn connect_queue(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
    ) -> Cqe {
        let sqsize = if qid == 0 { 31 } else { 127 };
        self.connect_queue_sized(qid, sqsize, cntlid, subnqn, hostnqn)
            .await
    }

    /// Connects the admin queue (dynamic controller).
    pub async fn connect_admin(&mut self, subnqn: &str, hostnqn: &str) -> Cqe {
        self.connect_queue(0, CNTLID_DYNAMIC, subnqn, hostnqn).await
    }

    /// Sets CC.EN (and the queue entry sizes); must succeed.
    pub async fn enable(&mut self) {
        let en = PropertyCommand {
            size: 4,
            offset: property::CC,
            value: 0x0046_0001,
        }
        .to_sqe(2, true);
        assert!(self.command(en, &[]).await.status.is_success());
    }

    /// Reads until the target closes the connection; returns whether it did within `limit`
    /// and the FES of a C2HTermReq seen on the way (decoded without digests: it has none).
    pub async fn closed_within(&mut self, limit: Duration) -> (bool, Option<u16>) {
        let start = Instant::now();
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return (false, None),
            }
        }
        self.digests = None;
        while self.buf.len() >= 10 {
            let mut ch = [0u8; 8];
            ch.copy_from_slice(&self.buf[..8]);
            let c = CommonHeader::decode(&ch);
            if c.pdu_type == PduType::C2HTermReq as u8 {
                return (true, Some(u16::from_le_bytes([self.buf[8], self.buf[9]])));
            }
            let len = (c.plen as usize).max(8).min(self.buf.len());
            self.buf.drain(..len);
        }
        (true, None)
    }

    /// Expects a C2HTermReq with `want_fes` and then the connection closing (within 5 s).
    pub async fn expect_term(&mut self, want_fes: u16) {
        let (closed, got) = self.closed_within(RECV_TIMEOUT).await;
        assert!(
            closed,
            "the target neither terminated nor closed the connection"
        );
        assert_eq!(
            got,
            Some(want_fes),
            "expected C2HTermReq with FES {want_fes:#x}"
        );
    }
}
