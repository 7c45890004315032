//! The two tasks behind a [`super::Queue`]: the writer, which owns the socket's write half
//! and batches queued PDUs, and the reader, which parses controller PDUs and routes them
//! (response capsules, C2HData into read buffers, R2Ts answered with H2CData, C2HTermReq).

use std::sync::Arc;

use ferrite_protocol::digest::digest_bytes;
use ferrite_protocol::pdu::{
    self, COMMON_HEADER_LEN, DIGEST_LEN, DataHeader, IC_HLEN, PduError, PduHeader, PduLayout,
    TERM_REQ_MAX_DATA, TermReq,
};
use ferrite_protocol::{CommonHeader, Cqe, Status};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tracing::{trace, warn};

use super::{OutData, Shared};
use crate::connection::read_exact_or_closed;
use crate::error::HostError;
use crate::transfer::h2c_chunks;

/// What the writer task sends.
pub(super) enum Outgoing {
    /// A fully encoded PDU.
    Bytes(Vec<u8>),
    /// An encoded header followed by command data and, if `digest`, the data's CRC32C.
    WithData {
        header: Vec<u8>,
        data: OutData,
        digest: bool,
    },
}

/// Owns the write half: writes queued PDUs, batching whatever is ready before each flush.
pub(super) async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut closed = shared.closed.subscribe();
    let result: Result<(), std::io::Error> = async {
        loop {
            // Biased: a TermReq queued just before the queue failed still goes out.
            let msg = tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = closed.wait_for(|c| *c) => None,
            };
            let Some(msg) = msg else { break };
            write_msg(&mut w, msg).await?;
            while let Ok(msg) = rx.try_recv() {
                write_msg(&mut w, msg).await?;
            }
            w.flush().await?;
        }
        w.shutdown().await
    }
    .await;
    if let Err(e) = result {
        shared.fail(e.into());
    }
}

async fn write_msg<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    msg: Outgoing,
) -> Result<(), std::io::Error> {
    match msg {
        Outgoing::Bytes(b) => w.write_all(&b).await,
        Outgoing::WithData {
            header,
            data,
            digest,
        } => {
            w.write_all(&header).await?;
            w.write_all(data.as_slice()).await?;
            if digest {
                w.write_all(&digest_bytes(data.as_slice())).await?;
            }
            Ok(())
        }
    }
}

/// Owns the read half until the connection ends or fails.
pub(super) async fn reader_task<R: AsyncRead + Unpin>(
    mut r: BufReader<R>,
    tx: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut closed = shared.closed.subscribe();
    let mut last_header = [0u8; IC_HLEN];
    let err = tokio::select! {
        e = read_loop(&mut r, &tx, &shared, &mut last_header) => e,
        _ = closed.wait_for(|c| *c) => return,
    };
    if matches!(err, HostError::Closed) {
        // We did not close it (that path returns above): the controller hung up.
        warn!(qid = shared.params.qid, "controller closed the connection");
    }
    if let HostError::Protocol(pe) = &err {
        // Tell the controller why before hanging up (best effort).
        let hlen = usize::from(last_header[2]).clamp(COMMON_HEADER_LEN, TERM_REQ_MAX_DATA);
        let mut out = Vec::new();
        let t = TermReq {
            fes: pe.fes(),
            fei: pe.fei(),
        };
        pdu::encode_pdu(
            &PduHeader::H2CTermReq(t),
            &last_header[..hlen],
            shared.params.digests,
            &mut out,
        );
        let _ = tx.send(Outgoing::Bytes(out));
    }
    shared.fail(err);
}

/// Reads and dispatches PDUs; returns only with the error that ended the connection.
async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    shared: &Shared,
    hdr: &mut [u8; IC_HLEN],
) -> HostError {
    loop {
        if let Err(e) = read_one(r, tx, shared, hdr).await {
            return e;
        }
    }
}

async fn read_one<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    shared: &Shared,
    hdr: &mut [u8; IC_HLEN],
) -> Result<(), HostError> {
    let params = &shared.params;
    hdr.fill(0);
    read_exact_or_closed(r, &mut hdr[..COMMON_HEADER_LEN]).await?;
    let mut chb = [0u8; COMMON_HEADER_LEN];
    chb.copy_from_slice(&hdr[..COMMON_HEADER_LEN]);
    let ch = CommonHeader::decode(&chb);
    // C2HData length is bounded by the command's buffer (checked below), not here.
    let lay = pdu::layout(&ch, Some(params.digests), u32::MAX as usize)?;
    read_exact_or_closed(r, &mut hdr[COMMON_HEADER_LEN..lay.hlen]).await?;
    if lay.header_digest {
        let mut dg = [0u8; DIGEST_LEN];
        read_exact_or_closed(r, &mut dg).await?;
        pdu::verify_header_digest(&hdr[..lay.hlen], dg)?;
    }
    let h = pdu::decode_header(&lay, &hdr[..lay.hlen])?;
    if lay.pad > 0 {
        let mut pad = vec![0u8; lay.pad];
        read_exact_or_closed(r, &mut pad).await?;
    }
    match h {
        PduHeader::CapsuleResp(cqe) => shared.complete(cqe.cid, cqe),
        PduHeader::C2HData(dh) => c2h_data(r, shared, &lay, dh).await,
        PduHeader::R2T(r2t) => {
            let (data, chunks) = {
                let st = shared.lock();
                let p = st
                    .pending
                    .get(usize::from(r2t.cccid))
                    .and_then(Option::as_ref)
                    .ok_or(PduError::Sequence(
                        "R2T for a command that is not outstanding",
                    ))?;
                let data = p
                    .r2t_data
                    .clone()
                    .ok_or(PduError::Sequence("R2T for a command without R2T data"))?;
                let chunks = h2c_chunks(data.len(), r2t.r2to, r2t.r2tl, params.maxh2cdata)?;
                (data, chunks)
            };
            trace!(
                qid = params.qid,
                cid = r2t.cccid,
                r2to = r2t.r2to,
                r2tl = r2t.r2tl,
                pdus = chunks.len(),
                "R2T"
            );
            let n = chunks.len();
            for (i, range) in chunks.into_iter().enumerate() {
                let dh = DataHeader {
                    cccid: r2t.cccid,
                    ttag: r2t.ttag,
                    datao: range.start as u32,
                    datal: range.len() as u32,
                    last: i + 1 == n,
                    success: false,
                };
                let h = PduHeader::H2CData(dh);
                let mut header = Vec::with_capacity(pdu::DATA_HLEN + DIGEST_LEN);
                pdu::encode_header(&h, range.len(), params.digests, &mut header);
                let digest = pdu::data_digest_applies(&h, range.len(), params.digests);
                let piece = data
                    .slice(range)
                    .ok_or(PduError::DataOutOfRange("R2T range"))?;
                tx.send(Outgoing::WithData {
                    header,
                    data: piece,
                    digest,
                })
                .map_err(|_| HostError::Closed)?;
            }
            Ok(())
        }
        PduHeader::C2HTermReq(t) => {
            let mut skip = vec![0u8; lay.plen - lay.header_total()];
            read_exact_or_closed(r, &mut skip).await?;
            Err(HostError::Terminated {
                fes: t.fes,
                fei: t.fei,
            })
        }
        PduHeader::ICReq(_)
        | PduHeader::ICResp(_)
        | PduHeader::H2CTermReq(_)
        | PduHeader::CapsuleCmd(_)
        | PduHeader::H2CData(_) => Err(PduError::Sequence("host-bound PDU type expected").into()),
    }
}

/// Reads one C2HData PDU's data straight into the command's buffer.
async fn c2h_data<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    shared: &Shared,
    lay: &PduLayout,
    dh: DataHeader,
) -> Result<(), HostError> {
    let cid = dh.cccid;
    let (mut buf, range) = {
        let mut st = shared.lock();
        let p = st
            .pending
            .get_mut(usize::from(cid))
            .and_then(Option::as_mut)
            .ok_or(PduError::Sequence(
                "C2HData for a command that is not outstanding",
            ))?;
        let asm = p.assembly.as_mut().ok_or(PduError::Sequence(
            "C2HData for a command that reads no data",
        ))?;
        let range = asm.accept(dh.datao, dh.datal)?;
        let buf = p
            .data_in
            .take()
            .ok_or(PduError::Sequence("C2HData while the buffer is in use"))?;
        (buf, range)
    };
    read_exact_or_closed(r, &mut buf[range.clone()]).await?;
    let mut digest_error = None;
    if lay.data_digest {
        let mut dg = [0u8; DIGEST_LEN];
        read_exact_or_closed(r, &mut dg).await?;
        digest_error = pdu::verify_data_digest(&buf[range], dg).err();
    }
    {
        let mut st = shared.lock();
        // The entry is gone only if the queue failed meanwhile; then the data is dropped.
        if let Some(p) = st
            .pending
            .get_mut(usize::from(cid))
            .and_then(Option::as_mut)
        {
            p.data_in = Some(buf);
            if let Some(e) = digest_error {
                warn!(qid = shared.params.qid, cid, error = %e, "C2HData digest mismatch");
                p.error.get_or_insert(HostError::Protocol(e));
            }
        }
    }
    if dh.success {
        let mut cqe = Cqe::new(cid, Status::SUCCESS);
        cqe.sqid = shared.params.qid;
        shared.complete(cid, cqe)?;
    }
    Ok(())
}
