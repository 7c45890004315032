//! Opening one NVMe/TCP connection: the TCP connect (with `TCP_NODELAY`), the ICReq/ICResp
//! exchange and the validation of what the controller granted (digests, CPDA, MAXH2CDATA).

use std::net::SocketAddr;
use std::time::Duration;

use ferrite_protocol::pdu::{
    self, COMMON_HEADER_LEN, IC_HLEN, ICReq, PFV_1_0, PduHeader, PduType, TERM_REQ_MAX_DATA,
};
use ferrite_protocol::{CommonHeader, Digests};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::HostError;

/// Smallest MAXH2CDATA the NVMe/TCP specification allows.
pub(crate) const MIN_MAXH2CDATA: u32 = 4096;

/// What ICResp granted for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub digests: Digests,
    pub maxh2cdata: u32,
}

/// Connects to `addr` with `TCP_NODELAY` within `timeout`.
pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, HostError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HostError::Timeout("TCP connect"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends ICReq (PFV 0, HPDA 0, MAXR2T 0, the requested digests) and validates ICResp: the
/// digests must be exactly the requested ones, CPDA must be 0, and MAXH2CDATA a multiple of 4
/// of at least 4096 bytes.
pub(crate) async fn initialize<S>(
    stream: &mut S,
    requested: Digests,
    timeout: Duration,
) -> Result<Negotiated, HostError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, exchange(stream, requested))
        .await
        .map_err(|_| HostError::Timeout("ICReq"))?
}

async fn exchange<S>(stream: &mut S, requested: Digests) -> Result<Negotiated, HostError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(IC_HLEN);
    let req = ICReq {
        pfv: PFV_1_0,
        hpda: 0,
        digests: requested,
        maxr2t: 0,
    };
    pdu::encode_pdu(&PduHeader::ICReq(req), &[], Digests::NONE, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut chb = [0u8; COMMON_HEADER_LEN];
    read_exact_or_closed(stream, &mut chb).await?;
    let ch = CommonHeader::decode(&chb);
    if ch.pdu_type == PduType::C2HTermReq as u8 {
        return Err(read_term_req(stream, &ch, &chb).await);
    }
    let lay = pdu::layout(&ch, None, 0)?;
    if lay.pdu_type != PduType::ICResp || lay.plen != IC_HLEN {
        return Err(HostError::Protocol(pdu::PduError::Sequence(
            "expected ICResp",
        )));
    }
    let mut hdr = [0u8; IC_HLEN];
    hdr[..COMMON_HEADER_LEN].copy_from_slice(&chb);
    read_exact_or_closed(stream, &mut hdr[COMMON_HEADER_LEN..]).await?;
    let PduHeader::ICResp(resp) = pdu::decode_header(&lay, &hdr)? else {
        return Err(HostError::Protocol(pdu::PduError::Sequence(
            "expected ICResp",
        )));
    };
    debug!(?resp, "ICResp");
    if resp.digests != requested {
        return Err(HostError::InvalidResponse(format!(
            "ICResp digests {:?} differ from the requested {:?}",
            resp.digests, requested
        )));
    }
    if resp.cpda != 0 {
        return Err(HostError::InvalidResponse(format!(
            "ICResp CPDA {} is not supported (only 0)",
            resp.cpda
        )));
    }
    if resp.maxh2cdata < MIN_MAXH2CDATA || resp.maxh2cdata % 4 != 0 {
        return Err(HostError::InvalidResponse(format!(
            "ICResp MAXH2CDATA {} must be a multiple of 4 and at least {MIN_MAXH2CDATA}",
            resp.maxh2cdata
        )));
    }
    Ok(Negotiated {
        digests: resp.digests,
        maxh2cdata: resp.maxh2cdata,
    })
}

/// Reads a C2HTermReq whose common header is `ch` and turns it into [`HostError::Terminated`].
async fn read_term_req<S: AsyncRead + Unpin>(
    stream: &mut S,
    ch: &CommonHeader,
    chb: &[u8; COMMON_HEADER_LEN],
) -> HostError {
    let lay = match pdu::layout(ch, Some(Digests::NONE), TERM_REQ_MAX_DATA) {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let mut buf = vec![0u8; lay.plen];
    buf[..COMMON_HEADER_LEN].copy_from_slice(chb);
    if let Err(e) = read_exact_or_closed(stream, &mut buf[COMMON_HEADER_LEN..]).await {
        return e;
    }
    match pdu::decode_header(&lay, &buf[..lay.hlen]) {
        Ok(PduHeader::C2HTermReq(t)) => HostError::Terminated {
            fes: t.fes,
            fei: t.fei,
        },
        Ok(_) => HostError::Protocol(pdu::PduError::Sequence("expected C2HTermReq")),
        Err(e) => e.into(),
    }
}

/// `read_exact`, reporting a clean end of stream as [`HostError::Closed`].
pub(crate) async fn read_exact_or_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), HostError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HostError::Closed),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_protocol::pdu::{ICResp, TermReq};

    /// Runs `initialize` against a fake controller that answers with `answer` bytes.
    async fn handshake(
        requested: Digests,
        answer: Vec<u8>,
    ) -> (Result<Negotiated, HostError>, Vec<u8>) {
        let (mut host, mut ctrl) = tokio::io::duplex(4096);
        let fake = tokio::spawn(async move {
            let mut req = [0u8; IC_HLEN];
            ctrl.read_exact(&mut req).await.unwrap();
            ctrl.write_all(&answer).await.unwrap();
            req.to_vec()
        });
        let res = initialize(&mut host, requested, Duration::from_secs(5)).await;
        (res, fake.await.unwrap())
    }

    fn icresp(digests: Digests, cpda: u8, maxh2cdata: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let r = ICResp {
            pfv: 0,
            cpda,
            digests,
            maxh2cdata,
        };
        pdu::encode_pdu(&PduHeader::ICResp(r), &[], Digests::NONE, &mut out);
        out
    }

    #[tokio::test]
    async fn accepts_a_good_icresp_and_sends_a_good_icreq() {
        let all = Digests {
            header: true,
            data: true,
        };
        let (res, req) = handshake(all, icresp(all, 0, 131072)).await;
        assert_eq!(
            res.unwrap(),
            Negotiated {
                digests: all,
                maxh2cdata: 131072
            }
        );
        let (p, used) = pdu::decode_pdu(&req, None, 0).unwrap().unwrap();
        assert_eq!(used, IC_HLEN);
        assert_eq!(
            p.header,
            PduHeader::ICReq(ICReq {
                pfv: 0,
                hpda: 0,
                digests: all,
                maxr2t: 0
            })
        );
    }

    #[tokio::test]
    async fn rejects_bad_icresp_fields() {
        let hd = Digests {
            header: true,
            data: false,
        };
        let (res, _) = handshake(hd, icresp(Digests::NONE, 0, 131072)).await;
        assert!(matches!(res, Err(HostError::InvalidResponse(m)) if m.contains("digests")));
        let (res, _) = handshake(Digests::NONE, icresp(Digests::NONE, 1, 131072)).await;
        assert!(matches!(res, Err(HostError::InvalidResponse(m)) if m.contains("CPDA")));
        let (res, _) = handshake(Digests::NONE, icresp(Digests::NONE, 0, 2048)).await;
        assert!(matches!(res, Err(HostError::InvalidResponse(m)) if m.contains("MAXH2CDATA")));
        let (res, _) = handshake(Digests::NONE, icresp(Digests::NONE, 0, 4098)).await;
        assert!(matches!(res, Err(HostError::InvalidResponse(m)) if m.contains("MAXH2CDATA")));
    }

    #[tokio::test]
    async fn term_req_and_eof_during_handshake() {
        let mut t = Vec::new();
        pdu::encode_pdu(
            &PduHeader::C2HTermReq(TermReq { fes: 6, fei: 8 }),
            &[0u8; 16],
            Digests::NONE,
            &mut t,
        );
        let (res, _) = handshake(Digests::NONE, t).await;
        assert!(
            matches!(res, Err(HostError::Terminated { fes: 6, fei: 8 })),
            "{res:?}"
        );
        let (res, _) = handshake(Digests::NONE, Vec::new()).await;
        assert!(matches!(res, Err(HostError::Closed)), "{res:?}");
    }
}
