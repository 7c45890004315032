//! Unit tests of the queue engine against a scripted controller on an in-memory pipe.

use super::*;
use ferrite_protocol::Status;
use ferrite_protocol::command::io_opcode;
use ferrite_protocol::pdu::{DataHeader, PduType, R2T, TermReq};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const ALL: Digests = Digests {
    header: true,
    data: true,
};

fn params(digests: Digests) -> QueueParams {
    QueueParams {
        qid: 1,
        digests,
        maxh2cdata: 4096,
        depth: 4,
        in_capsule_max: 1024,
        timeout: Duration::from_secs(5),
    }
}

/// A scripted controller on the far end of an in-memory pipe.
struct Fake {
    io: DuplexStream,
    buf: Vec<u8>,
    digests: Digests,
}

impl Fake {
    async fn recv(&mut self) -> (PduHeader, Vec<u8>) {
        loop {
            if let Some((p, used)) =
                pdu::decode_pdu(&self.buf, Some(self.digests), 1 << 20).unwrap()
            {
                let out = (p.header, p.data.to_vec());
                self.buf.drain(..used);
                return out;
            }
            let mut chunk = [0u8; 8192];
            let n = self.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "host closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, h: PduHeader, data: &[u8]) {
        let mut out = Vec::new();
        pdu::encode_pdu(&h, data, self.digests, &mut out);
        self.io.write_all(&out).await.unwrap();
    }

    async fn recv_cmd(&mut self) -> (Sqe, Vec<u8>) {
        match self.recv().await {
            (PduHeader::CapsuleCmd(sqe), d) => (sqe, d),
            other => panic!("expected a command, got {other:?}"),
        }
    }
}

fn pair(digests: Digests) -> (Queue, Fake) {
    let (host, ctrl) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(host);
    (
        Queue::start(r, w, params(digests)),
        Fake {
            io: ctrl,
            buf: Vec::new(),
            digests,
        },
    )
}

fn read_req(len: usize) -> Request {
    Request {
        sqe: Sqe {
            opcode: io_opcode::READ,
            nsid: 1,
            ..Default::default()
        },
        data_out: None,
        data_in_len: len,
    }
}

fn write_req(data: Vec<u8>) -> Request {
    Request {
        sqe: Sqe {
            opcode: io_opcode::WRITE,
            nsid: 1,
            ..Default::default()
        },
        data_out: Some(OutData::new(data)),
        data_in_len: 0,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn read_reassembles_c2h_pdus_with_success_flag() {
    for digests in [Digests::NONE, ALL] {
        let (q, mut fake) = pair(digests);
        let data = pattern(10000);
        let ctrl = {
            let data = data.clone();
            tokio::spawn(async move {
                let (sqe, _) = fake.recv_cmd().await;
                assert_eq!(sqe.dptr, SglDescriptor::transport(10000));
                assert_eq!(sqe.flags & 0xc0, PSDT_SGL);
                let mut off = 0;
                while off < data.len() {
                    let n = 4096.min(data.len() - off);
                    let last = off + n == data.len();
                    let dh = DataHeader {
                        cccid: sqe.cid,
                        ttag: 0,
                        datao: off as u32,
                        datal: n as u32,
                        last,
                        success: last,
                    };
                    fake.send(PduHeader::C2HData(dh), &data[off..off + n]).await;
                    off += n;
                }
                fake
            })
        };
        let c = q.submit("read", read_req(10000)).await.unwrap();
        assert!(c.cqe.status.is_success());
        assert_eq!(&c.data[..], &data[..]);
        let _fake = ctrl.await.unwrap();
        assert_eq!(q.outstanding(), 0);
    }
}

#[tokio::test]
async fn write_in_capsule_and_by_r2t() {
    for digests in [Digests::NONE, ALL] {
        let (q, mut fake) = pair(digests);
        let small = pattern(512);
        let big = pattern(10000);
        let ctrl = {
            let (small, big) = (small.clone(), big.clone());
            tokio::spawn(async move {
                let (sqe, d) = fake.recv_cmd().await;
                assert_eq!(sqe.dptr, SglDescriptor::in_capsule(512));
                assert_eq!(d, small);
                fake.send(
                    PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
                    &[],
                )
                .await;
                let (sqe, d) = fake.recv_cmd().await;
                assert_eq!(sqe.dptr, SglDescriptor::transport(10000));
                assert!(d.is_empty());
                // Two R2Ts: the second half first, to check offsets are honoured.
                let mut got = vec![0u8; 10000];
                for (r2to, r2tl) in [(5000u32, 5000u32), (0, 5000)] {
                    fake.send(
                        PduHeader::R2T(R2T {
                            cccid: sqe.cid,
                            ttag: 9,
                            r2to,
                            r2tl,
                        }),
                        &[],
                    )
                    .await;
                    let mut off = r2to as usize;
                    loop {
                        let (h, data) = fake.recv().await;
                        let PduHeader::H2CData(dh) = h else {
                            panic!("expected H2CData, got {h:?}")
                        };
                        assert_eq!((dh.cccid, dh.ttag, dh.datao as usize), (sqe.cid, 9, off));
                        assert!(data.len() <= 4096);
                        got[off..off + data.len()].copy_from_slice(&data);
                        off += data.len();
                        if dh.last {
                            break;
                        }
                    }
                    assert_eq!(off, (r2to + r2tl) as usize);
                }
                assert_eq!(got, big);
                fake.send(
                    PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
                    &[],
                )
                .await;
                fake
            })
        };
        assert!(
            q.submit("write", write_req(small))
                .await
                .unwrap()
                .cqe
                .status
                .is_success()
        );
        assert!(
            q.submit("write", write_req(big))
                .await
                .unwrap()
                .cqe
                .status
                .is_success()
        );
        let _fake = ctrl.await.unwrap();
    }
}

#[tokio::test]
async fn error_status_is_returned_in_the_completion() {
    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let (sqe, _) = fake.recv_cmd().await;
        fake.send(
            PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::LBA_OUT_OF_RANGE)),
            &[],
        )
        .await;
        fake
    });
    let c = q.submit("read", read_req(4096)).await.unwrap();
    assert_eq!(c.cqe.status, Status::LBA_OUT_OF_RANGE);
    let _fake = ctrl.await.unwrap();
    assert!(q.failure().is_none());
}

#[tokio::test]
async fn pipelines_up_to_depth_and_completes_out_of_order() {
    let (q, mut fake) = pair(Digests::NONE);
    let q = Arc::new(q);
    let ctrl = tokio::spawn(async move {
        let mut cids = Vec::new();
        for _ in 0..4 {
            cids.push(fake.recv_cmd().await.0.cid);
        }
        // The fifth command must wait for a free slot: nothing more arrives yet.
        let more = tokio::time::timeout(Duration::from_millis(100), fake.recv()).await;
        assert!(
            more.is_err(),
            "a fifth command was sent while four were outstanding"
        );
        let mut sorted = cids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "distinct CIDs");
        for cid in cids.iter().rev() {
            fake.send(PduHeader::CapsuleResp(Cqe::new(*cid, Status::SUCCESS)), &[])
                .await;
        }
        let (sqe, _) = fake.recv_cmd().await;
        fake.send(
            PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
            &[],
        )
        .await;
        fake
    });
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let q = q.clone();
        tasks.push(tokio::spawn(
            async move { q.submit("flush", read_req(0)).await },
        ));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().cqe.status.is_success());
    }
    let _fake = ctrl.await.unwrap();
}

#[tokio::test]
async fn term_req_fails_outstanding_commands() {
    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let _ = fake.recv_cmd().await;
        fake.send(
            PduHeader::C2HTermReq(TermReq {
                fes: pdu::fes::HEADER_DIGEST_ERROR,
                fei: 0,
            }),
            &[0u8; 72],
        )
        .await;
        fake
    });
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(
        matches!(err, HostError::Terminated { fes: 3, fei: 0 }),
        "{err:?}"
    );
    let _fake = ctrl.await.unwrap();
    // The queue stays failed.
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(matches!(err, HostError::Terminated { .. }), "{err:?}");
}

#[tokio::test]
async fn out_of_range_c2h_data_is_a_protocol_error_and_sends_term_req() {
    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let (sqe, _) = fake.recv_cmd().await;
        let dh = DataHeader {
            cccid: sqe.cid,
            ttag: 0,
            datao: 4000,
            datal: 200,
            last: true,
            success: true,
        };
        fake.send(PduHeader::C2HData(dh), &[1u8; 200]).await;
        let (h, data) = fake.recv().await;
        (h, data)
    });
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(
        matches!(err, HostError::Protocol(PduError::DataOutOfRange(_))),
        "{err:?}"
    );
    let (h, data) = ctrl.await.unwrap();
    assert_eq!(
        h,
        PduHeader::H2CTermReq(TermReq {
            fes: pdu::fes::DATA_OUT_OF_RANGE,
            fei: 0
        })
    );
    assert_eq!(data.len(), pdu::DATA_HLEN, "the offending header is echoed");
    assert_eq!(data[0], PduType::C2HData as u8);
}

#[tokio::test]
async fn unknown_cid_and_unexpected_pdus_are_protocol_errors() {
    let (q, mut fake) = pair(Digests::NONE);
    fake.send(PduHeader::CapsuleResp(Cqe::new(3, Status::SUCCESS)), &[])
        .await;
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(
        matches!(err, HostError::Protocol(PduError::Sequence(_))),
        "{err:?}"
    );

    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let (sqe, _) = fake.recv_cmd().await;
        // R2T for a read.
        fake.send(
            PduHeader::R2T(R2T {
                cccid: sqe.cid,
                ttag: 0,
                r2to: 0,
                r2tl: 4096,
            }),
            &[],
        )
        .await;
        fake
    });
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(
        matches!(err, HostError::Protocol(PduError::Sequence(_))),
        "{err:?}"
    );
    let _fake = ctrl.await.unwrap();
}

#[tokio::test]
async fn short_read_with_success_is_invalid() {
    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let (sqe, _) = fake.recv_cmd().await;
        let dh = DataHeader {
            cccid: sqe.cid,
            ttag: 0,
            datao: 0,
            datal: 100,
            last: true,
            success: false,
        };
        fake.send(PduHeader::C2HData(dh), &[1u8; 100]).await;
        fake.send(
            PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
            &[],
        )
        .await;
        fake
    });
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(matches!(err, HostError::InvalidResponse(_)), "{err:?}");
    let _fake = ctrl.await.unwrap();
    assert!(
        q.failure().is_none(),
        "one bad command does not kill the queue"
    );
}

#[tokio::test]
async fn data_digest_error_fails_only_that_command() {
    let (q, mut fake) = pair(ALL);
    let ctrl = tokio::spawn(async move {
        let (sqe, _) = fake.recv_cmd().await;
        let dh = DataHeader {
            cccid: sqe.cid,
            ttag: 0,
            datao: 0,
            datal: 8,
            last: true,
            success: true,
        };
        let mut out = Vec::new();
        pdu::encode_pdu(&PduHeader::C2HData(dh), b"abcdefgh", ALL, &mut out);
        let n = out.len();
        out[n - 1] ^= 0xff;
        fake.io.write_all(&out).await.unwrap();
        let (sqe, _) = fake.recv_cmd().await;
        fake.send(
            PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
            &[],
        )
        .await;
        fake
    });
    let err = q.submit("read", read_req(8)).await.unwrap_err();
    assert!(
        matches!(err, HostError::Protocol(PduError::DataDigest { .. })),
        "{err:?}"
    );
    assert!(
        q.submit("flush", read_req(0))
            .await
            .unwrap()
            .cqe
            .status
            .is_success()
    );
    let _fake = ctrl.await.unwrap();
}

#[tokio::test]
async fn dead_connection_fails_everything_and_never_hangs() {
    let (q, mut fake) = pair(Digests::NONE);
    let ctrl = tokio::spawn(async move {
        let _ = fake.recv_cmd().await;
        drop(fake);
    });
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(matches!(err, HostError::Closed), "{err:?}");
    ctrl.await.unwrap();
    let err = q.submit("read", read_req(4096)).await.unwrap_err();
    assert!(matches!(err, HostError::Closed), "{err:?}");
    assert!(q.failure().is_some());
}

#[tokio::test]
async fn timeout_keeps_the_cid_until_the_late_completion() {
    let (host, ctrl) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(host);
    let q = Queue::start(
        r,
        w,
        QueueParams {
            timeout: Duration::from_millis(100),
            ..params(Digests::NONE)
        },
    );
    let mut fake = Fake {
        io: ctrl,
        buf: Vec::new(),
        digests: Digests::NONE,
    };
    let err = q.submit("flush", read_req(0)).await.unwrap_err();
    assert!(matches!(err, HostError::Timeout("flush")), "{err:?}");
    assert_eq!(q.outstanding(), 1);
    let (sqe, _) = fake.recv_cmd().await;
    fake.send(
        PduHeader::CapsuleResp(Cqe::new(sqe.cid, Status::SUCCESS)),
        &[],
    )
    .await;
    let ctrl = tokio::spawn(async move {
        let (sqe2, _) = fake.recv_cmd().await;
        fake.send(
            PduHeader::CapsuleResp(Cqe::new(sqe2.cid, Status::SUCCESS)),
            &[],
        )
        .await;
        (sqe.cid, sqe2.cid, fake)
    });
    assert!(
        q.submit("flush", read_req(0))
            .await
            .unwrap()
            .cqe
            .status
            .is_success()
    );
    let (c1, c2, _fake) = ctrl.await.unwrap();
    assert_ne!(
        c1, c2,
        "the abandoned CID is recycled only after the FIFO moves on"
    );
    assert_eq!(q.outstanding(), 0);
}

#[tokio::test]
async fn close_fails_outstanding_with_closed() {
    let (q, mut fake) = pair(Digests::NONE);
    let q = Arc::new(q);
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.submit("read", read_req(4096)).await })
    };
    let _ = fake.recv_cmd().await;
    q.close();
    assert!(matches!(waiter.await.unwrap(), Err(HostError::Closed)));
    // The writer shut the stream down: the fake sees end of stream.
    let mut b = [0u8; 1];
    assert_eq!(fake.io.read(&mut b).await.unwrap(), 0);
}

#[test]
fn out_data_slices_share_the_buffer() {
    let d = OutData::new(pattern(100));
    let s = d.slice(10..20).unwrap();
    assert_eq!(s.as_slice(), &pattern(100)[10..20]);
    let s2 = s.slice(5..10).unwrap();
    assert_eq!(s2.as_slice(), &pattern(100)[15..20]);
    assert!(s.slice(5..11).is_none());
    assert!(d.slice(0..0).unwrap().is_empty());
}
