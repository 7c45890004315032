//! One NVMe/TCP connection (one queue): connection initialization, PDU reading and
//! validation, R2T/H2CData reassembly, dispatch of commands to their executors (run on the
//! reader's own task, see `running.rs`), and the writer that sends responses, C2HData and
//! R2T PDUs. Malformed PDUs end the connection with
//! a C2HTermReq carrying the fatal error status; nothing on this path panics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use ferrite_block::IoBuf;
use ferrite_protocol::command::{Sqe, admin_opcode, fctype, sgl_type};
use ferrite_protocol::completion::Cqe;
use ferrite_protocol::pdu::{
    self, COMMON_HEADER_LEN, CommonHeader, DIGEST_LEN, DataHeader, Digests, ICResp, PduError, PduHeader, PduLayout,
    R2T, TermReq,
};
use ferrite_protocol::status::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::controller::Controller;
use crate::registry::{Shared, signalled};
use crate::running::Running;
use crate::{admin, fabrics, io};

/// How long a new connection may take to send its ICReq.
const IC_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards the writer before command tasks wait.
const WRITER_QUEUE: usize = 1024;
/// Read data larger than this is written straight from its buffer instead of being copied
/// into the batch.
const COPY_LIMIT: usize = 16 * 1024;
/// The writer sends once its batch reaches this size.
const BATCH_LIMIT: usize = 256 * 1024;
/// Commands a host may have outstanding beyond its queue size before the connection is
/// terminated (slack for hosts that count the queue size loosely).
const INFLIGHT_SLACK: usize = 8;

/// What command tasks hand to a connection's writer.
pub(crate) enum Outgoing {
    /// A response capsule.
    Response(Cqe),
    /// Data for a controller-to-host command, then its response (none when SQ flow control
    /// is disabled and the command succeeded: the last C2HData carries SUCCESS).
    Data { cid: u16, data: IoBuf, response: Option<Cqe> },
    /// A request for write data.
    R2T(R2T),
    /// A fatal error: send C2HTermReq and close.
    Term { fes: u16, fei: u32, header: Vec<u8> },
    /// Close after everything queued before it is sent.
    Close,
}

/// The result of executing a command.
pub(crate) struct Reply {
    pub status: Status,
    pub result: u64,
    pub data: Option<IoBuf>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply { status: Status::SUCCESS, result: 0, data: None }
    }
    pub fn status(status: Status) -> Reply {
        Reply { status, result: 0, data: None }
    }
    pub fn result(result: u64) -> Reply {
        Reply { status: Status::SUCCESS, result, data: None }
    }
    pub fn data(data: IoBuf) -> Reply {
        Reply { status: Status::SUCCESS, result: 0, data: Some(data) }
    }
    pub fn bytes(data: &[u8]) -> Reply {
        Reply::data(IoBuf::from_slice(data))
    }
}

/// Whether a command's reply is sent now or later (a parked AER).
pub(crate) enum Outcome {
    Reply(Reply),
    Parked,
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Self {
        Outcome::Reply(r)
    }
}

impl From<Status> for Outcome {
    fn from(s: Status) -> Self {
        Outcome::Reply(Reply::status(s))
    }
}

/// What a bound queue's command tasks need.
pub(crate) struct QueueCtx {
    pub shared: Arc<Shared>,
    pub controller: Arc<Controller>,
    pub tx: mpsc::Sender<Outgoing>,
    pub qid: u16,
    pub sq_flow_disabled: bool,
    /// The local address the host reached (reported in the discovery log).
    pub local: SocketAddr,
    /// Commands received and not yet answered (parked AERs excluded).
    pub inflight: Arc<AtomicUsize>,
}

impl QueueCtx {
    pub fn is_admin(&self) -> bool {
        self.qid == 0
    }
}

/// A pending host-to-controller transfer (after an R2T).
struct PendingWrite {
    sqe: Sqe,
    buf: IoBuf,
    received: usize,
    digest_error: bool,
}

/// Why a connection's read loop stopped.
enum Stop {
    /// Orderly: the host closed, or the controller/target shut the queue down.
    Closed,
    Io(std::io::Error),
    /// A protocol violation: terminate with C2HTermReq.
    Fatal(PduError, Vec<u8>),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Stop::Closed } else { Stop::Io(e) }
    }
}

/// A connection's reader state.
struct Queue {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    tx: mpsc::Sender<Outgoing>,
    digests: Digests,
    ctx: Option<Arc<QueueCtx>>,
    closer: watch::Sender<bool>,
    sqsize: u16,
    sqhd: Arc<AtomicU16>,
    sqid: Arc<AtomicU16>,
    pending: HashMap<u16, PendingWrite>,
    /// Shared with the writer and, once bound, with the commands.
    inflight: Arc<AtomicUsize>,
    /// Commands executing, driven by this connection's task.
    running: Running,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "TCP_NODELAY failed");
    }
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);

    let digests = match tokio::time::timeout(IC_TIMEOUT, initialize(&mut rd, &mut wr, &shared)).await {
        Ok(Ok(d)) => d,
        Ok(Err(Stop::Fatal(e, header))) => {
            warn!(%peer, error = %e, "rejecting connection: bad ICReq");
            let mut out = Vec::new();
            pdu::encode_pdu(&PduHeader::C2HTermReq(TermReq { fes: e.fes(), fei: e.fei() }), &header, Digests::NONE, &mut out);
            let _ = wr.write_all(&out).await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            debug!(%peer, "no ICReq within {IC_TIMEOUT:?}; closing");
            return;
        }
    };

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let sqhd = Arc::new(AtomicU16::new(0));
    let sqid = Arc::new(AtomicU16::new(0));
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut writer = tokio::spawn(write_loop(
        wr,
        rx,
        digests,
        sqid.clone(),
        sqhd.clone(),
        shared.options.max_c2h_data as usize,
        inflight.clone(),
    ));
    let (closer, mut closed) = watch::channel(false);
    let mut target_stop = shared.shutdown_signal();
    let mut q = Queue {
        shared,
        peer,
        local,
        tx,
        digests,
        ctx: None,
        closer,
        sqsize: 0,
        sqhd,
        sqid,
        pending: HashMap::new(),
        inflight,
        running: Running::default(),
    };

    let stop = tokio::select! {
        s = q.read_loop(&mut rd) => s,
        _ = signalled(&mut closed) => Stop::Closed,
        _ = signalled(&mut target_stop) => Stop::Closed,
    };

    let mut drain_writer = false;
    match stop {
        Stop::Closed => debug!(peer = %q.peer, "connection closed"),
        Stop::Io(e) => debug!(peer = %q.peer, error = %e, "connection error"),
        Stop::Fatal(e, header) => {
            warn!(peer = %q.peer, error = %e, fes = e.fes(), "terminating connection on a protocol error");
            let _ = q.tx.send(Outgoing::Term { fes: e.fes(), fei: e.fei(), header }).await;
            drain_writer = true;
        }
    }
    if let Some(ctx) = &q.ctx {
        if ctx.is_admin() {
            ctx.controller.shutdown("admin queue closed");
        } else {
            ctx.controller.unbind_io_queue(ctx.qid);
        }
    }
    let running = q.running.clone();
    drop(q);
    if drain_writer {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    }
    // With the writer gone, replies fail at once: the commands still executing finish
    // (none is cancelled half-way) without waiting for a host that may not read.
    writer.abort();
    running.drain().await;
}

/// Reads the ICReq and answers with ICResp. Returns the negotiated digests.
async fn initialize(rd: &mut BufReader<OwnedReadHalf>, wr: &mut OwnedWriteHalf, shared: &Shared) -> Result<Digests, Stop> {
    let mut chb = [0u8; COMMON_HEADER_LEN];
    rd.read_exact(&mut chb).await?;
    let ch = CommonHeader::decode(&chb);
    let lay = pdu::layout(&ch, None, 0).map_err(|e| Stop::Fatal(e, chb.to_vec()))?;
    let mut header = vec![0u8; lay.hlen];
    header[..COMMON_HEADER_LEN].copy_from_slice(&chb);
    rd.read_exact(&mut header[COMMON_HEADER_LEN..]).await?;
    let req = match pdu::decode_header(&lay, &header).map_err(|e| Stop::Fatal(e, header.clone()))? {
        PduHeader::ICReq(r) => r,
        _ => return Err(Stop::Fatal(PduError::Sequence("expected ICReq"), header)),
    };
    let resp = ICResp { pfv: 0, cpda: 0, digests: req.digests, maxh2cdata: shared.options.max_h2c_data };
    let mut out = Vec::with_capacity(128);
    pdu::encode_pdu(&PduHeader::ICResp(resp), &[], Digests::NONE, &mut out);
    wr.write_all(&out).await?;
    Ok(req.digests)
}

impl Queue {
    fn in_capsule_limit(&self) -> usize {
        let o = &self.shared.options;
        match &self.ctx {
            Some(c) if !c.is_admin() => o.in_capsule_data as usize,
            _ => o.admin_in_capsule_data.max(o.in_capsule_data) as usize,
        }
    }

    async fn read_loop(&mut self, rd: &mut BufReader<OwnedReadHalf>) -> Stop {
        let running = self.running.clone();
        let commands = running.drive();
        tokio::pin!(commands);
        loop {
            // `commands` never completes, so a PDU read is never cancelled half-way.
            let step = tokio::select! {
                biased;
                () = &mut commands => continue,
                r = self.read_one(rd) => r,
            };
            match step {
                Ok(true) => {}
                Ok(false) => return Stop::Closed,
                Err(s) => return s,
            }
        }
    }

    /// Reads and handles one PDU. `Ok(false)` when the host asked to end the connection.
    async fn read_one(&mut self, rd: &mut BufReader<OwnedReadHalf>) -> Result<bool, Stop> {
        let mut chb = [0u8; COMMON_HEADER_LEN];
        rd.read_exact(&mut chb).await?;
        let ch = CommonHeader::decode(&chb);
        let o = &self.shared.options;
        let max_data = (o.max_h2c_data.max(o.in_capsule_data).max(o.admin_in_capsule_data)) as usize;
        let lay = pdu::layout(&ch, Some(self.digests), max_data).map_err(|e| Stop::Fatal(e, chb.to_vec()))?;
        let mut header = [0u8; pdu::IC_HLEN];
        header[..COMMON_HEADER_LEN].copy_from_slice(&chb);
        rd.read_exact(&mut header[COMMON_HEADER_LEN..lay.hlen]).await?;
        let header = &header[..lay.hlen];
        if lay.header_digest {
            let mut dg = [0u8; DIGEST_LEN];
            rd.read_exact(&mut dg).await?;
            pdu::verify_header_digest(header, dg).map_err(|e| Stop::Fatal(e, header.to_vec()))?;
        }
        let h = pdu::decode_header(&lay, header).map_err(|e| Stop::Fatal(e, header.to_vec()))?;
        if let Some(ctx) = &self.ctx {
            ctx.controller.touch();
        }
        match h {
            PduHeader::CapsuleCmd(sqe) => {
                if lay.data_len > self.in_capsule_limit() {
                    let e = PduError::DataLimitExceeded { len: lay.data_len as u64, limit: self.in_capsule_limit() as u64 };
                    return Err(Stop::Fatal(e, header.to_vec()));
                }
                let (data, digest_ok) = if lay.data_len > 0 {
                    skip(rd, lay.pad).await?;
                    let mut buf = IoBuf::zeroed(lay.data_len);
                    rd.read_exact(&mut buf).await?;
                    let ok = read_data_digest(rd, &lay, &buf).await?;
                    (Some(buf), ok)
                } else {
                    (None, true)
                };
                if !digest_ok {
                    warn!(peer = %self.peer, cid = sqe.cid, "data digest error on command capsule");
                    self.respond(sqe.cid, Status::TRANSIENT_TRANSPORT_ERROR).await;
                    return Ok(true);
                }
                self.handle_command(sqe, data).await
            }
            PduHeader::H2CData(dh) => {
                self.handle_h2c_data(dh, &lay, header, rd).await?;
                Ok(true)
            }
            PduHeader::H2CTermReq(t) => {
                warn!(peer = %self.peer, fes = t.fes, fei = t.fei, "host terminated the connection");
                Ok(false)
            }
            _ => Err(Stop::Fatal(PduError::Sequence("PDU type not sent by hosts"), header.to_vec())),
        }
    }

    async fn respond(&self, cid: u16, status: Status) {
        let _ = self.tx.send(Outgoing::Response(Cqe::new(cid, status))).await;
    }

    /// Counts a command as outstanding; a host that exceeds its queue size is misbehaving
    /// and its connection ends (memory per connection stays bounded).
    fn admit(&self, ctx: &QueueCtx) -> Result<(), Stop> {
        let limit = usize::from(self.sqsize) + INFLIGHT_SLACK;
        if ctx.inflight.fetch_add(1, Ordering::AcqRel) >= limit {
            ctx.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(Stop::Fatal(PduError::Sequence("more commands outstanding than the queue size"), Vec::new()));
        }
        Ok(())
    }

    /// Undoes [`Queue::admit`] for a command answered without executing it.
    fn release(&self) {
        if let Some(ctx) = &self.ctx {
            ctx.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn advance_sqhd(&self) {
        if self.sqsize > 0 {
            let next = (self.sqhd.load(Ordering::Relaxed) + 1) % self.sqsize;
            self.sqhd.store(next, Ordering::Relaxed);
        }
    }

    async fn handle_command(&mut self, sqe: Sqe, data: Option<IoBuf>) -> Result<bool, Stop> {
        let Some(ctx) = self.ctx.clone() else {
            if sqe.opcode == admin_opcode::FABRICS && sqe.fctype() == fctype::CONNECT {
                self.connect(sqe, data).await;
            } else {
                debug!(peer = %self.peer, opcode = sqe.opcode, "command before Connect");
                self.respond(sqe.cid, Status::COMMAND_SEQUENCE_ERROR).await;
            }
            return Ok(true);
        };
        self.advance_sqhd();
        if sqe.opcode == admin_opcode::FABRICS && sqe.fctype() == fctype::DISCONNECT && !ctx.is_admin() {
            self.respond(sqe.cid, Status::SUCCESS).await;
            let _ = self.tx.send(Outgoing::Close).await;
            return Ok(true);
        }
        let sgl = sqe.dptr;
        let mut data = data;
        if sgl.length > 0 {
            match sgl.type_byte {
                sgl_type::DATA_BLOCK_OFFSET => {
                    if sgl.address != 0 {
                        self.respond(sqe.cid, Status::SGL_OFFSET_INVALID).await;
                        return Ok(true);
                    }
                    match data.as_mut() {
                        Some(d) if d.len() >= sgl.length as usize => d.truncate(sgl.length as usize),
                        _ => {
                            self.respond(sqe.cid, Status::DATA_SGL_LENGTH_INVALID).await;
                            return Ok(true);
                        }
                    }
                }
                sgl_type::TRANSPORT_DATA_BLOCK => {
                    if host_to_controller(&sqe) {
                        self.admit(&ctx)?;
                        return self.request_data(sqe).await.map(|_| true);
                    }
                }
                _ => {
                    self.respond(sqe.cid, Status::SGL_TYPE_INVALID).await;
                    return Ok(true);
                }
            }
        }
        self.admit(&ctx)?;
        self.running.push(execute(ctx, sqe, data));
        Ok(true)
    }

    /// Sends an R2T for a write whose data is not in the capsule.
    async fn request_data(&mut self, sqe: Sqe) -> Result<(), Stop> {
        let len = sqe.dptr.length;
        // Beyond MDTS: Invalid Field, as for reads.
        let refuse = if len > self.shared.options.max_data_transfer {
            Some(Status::INVALID_FIELD)
        } else if self.pending.contains_key(&sqe.cid) {
            Some(Status::CID_CONFLICT)
        } else {
            None
        };
        if let Some(status) = refuse {
            self.release();
            self.respond(sqe.cid, status).await;
            return Ok(());
        }
        self.pending.insert(sqe.cid, PendingWrite { sqe, buf: IoBuf::zeroed(len as usize), received: 0, digest_error: false });
        let r2t = R2T { cccid: sqe.cid, ttag: sqe.cid, r2to: 0, r2tl: len };
        let _ = self.tx.send(Outgoing::R2T(r2t)).await;
        Ok(())
    }

    async fn handle_h2c_data(
        &mut self,
        dh: DataHeader,
        lay: &PduLayout,
        header: &[u8],
        rd: &mut BufReader<OwnedReadHalf>,
    ) -> Result<(), Stop> {
        let fatal = |e: PduError| Stop::Fatal(e, header.to_vec());
        if dh.datal > self.shared.options.max_h2c_data {
            return Err(fatal(PduError::DataLimitExceeded {
                len: u64::from(dh.datal),
                limit: u64::from(self.shared.options.max_h2c_data),
            }));
        }
        let Some(p) = self.pending.get_mut(&dh.ttag) else {
            return Err(fatal(PduError::InvalidHeaderField { offset: 10, reason: "H2CData for an unknown transfer tag" }));
        };
        if dh.cccid != p.sqe.cid {
            return Err(fatal(PduError::InvalidHeaderField { offset: 8, reason: "H2CData CCCID does not match the R2T" }));
        }
        let (off, len) = (dh.datao as usize, dh.datal as usize);
        if off != p.received {
            return Err(fatal(PduError::DataOutOfRange("H2CData offset out of sequence")));
        }
        if off + len > p.buf.len() {
            return Err(fatal(PduError::DataOutOfRange("H2CData beyond the requested length")));
        }
        skip(rd, lay.pad).await?;
        rd.read_exact(&mut p.buf[off..off + len]).await?;
        if !read_data_digest(rd, lay, &p.buf[off..off + len]).await? {
            p.digest_error = true;
        }
        p.received += len;
        if p.received < p.buf.len() {
            if dh.last {
                return Err(fatal(PduError::DataOutOfRange("LAST_PDU before all requested data")));
            }
            return Ok(());
        }
        let Some(p) = self.pending.remove(&dh.ttag) else { return Ok(()) };
        if p.digest_error {
            self.release();
            warn!(peer = %self.peer, cid = p.sqe.cid, "data digest error on H2CData");
            self.respond(p.sqe.cid, Status::TRANSIENT_TRANSPORT_ERROR).await;
            return Ok(());
        }
        if let Some(ctx) = self.ctx.clone() {
            self.running.push(execute(ctx, p.sqe, Some(p.buf)));
        }
        Ok(())
    }

    async fn connect(&mut self, sqe: Sqe, data: Option<IoBuf>) {
        match fabrics::connect(&self.shared, &sqe, data.as_deref(), self.tx.clone()) {
            Ok(bound) => {
                self.sqsize = bound.sqsize;
                self.sqid.store(bound.qid, Ordering::Relaxed);
                bound.controller.add_closer(self.closer.clone());
                bound.controller.touch();
                info!(
                    peer = %self.peer, subnqn = %bound.controller.subnqn, hostnqn = %bound.controller.hostnqn,
                    cntlid = bound.controller.cntlid, qid = bound.qid, sqsize = bound.sqsize,
                    header_digest = self.digests.header, data_digest = self.digests.data, "queue connected"
                );
                if bound.qid == 0 {
                    let grace = self.shared.options.keep_alive_grace;
                    tokio::spawn(bound.controller.clone().keep_alive_watchdog(grace));
                }
                let mut cqe = Cqe::new(sqe.cid, Status::SUCCESS);
                cqe.result = u32::from(bound.controller.cntlid);
                cqe.sqid = bound.qid;
                self.ctx = Some(Arc::new(QueueCtx {
                    shared: self.shared.clone(),
                    controller: bound.controller,
                    tx: self.tx.clone(),
                    qid: bound.qid,
                    sq_flow_disabled: bound.sq_flow_disabled,
                    local: self.local,
                    inflight: self.inflight.clone(),
                }));
                let _ = self.tx.send(Outgoing::Response(cqe)).await;
            }
            Err(rejection) => {
                warn!(peer = %self.peer, reason = %rejection.reason, status = %rejection.status, "connect rejected");
                let mut cqe = Cqe::new(sqe.cid, rejection.status);
                cqe.result = rejection.result;
                let _ = self.tx.send(Outgoing::Response(cqe)).await;
            }
        }
    }
}

/// Whether a command moves data from host to controller.
fn host_to_controller(sqe: &Sqe) -> bool {
    if sqe.opcode == admin_opcode::FABRICS {
        matches!(sqe.fctype(), fctype::CONNECT | fctype::AUTH_SEND)
    } else {
        sqe.opcode & 0x1 != 0
    }
}

async fn skip(rd: &mut BufReader<OwnedReadHalf>, n: usize) -> Result<(), Stop> {
    let mut pad = [0u8; 256];
    let mut left = n;
    while left > 0 {
        let k = left.min(pad.len());
        rd.read_exact(&mut pad[..k]).await?;
        left -= k;
    }
    Ok(())
}

/// Reads the data digest if the layout has one and checks it. `Ok(false)` on mismatch.
async fn read_data_digest(rd: &mut BufReader<OwnedReadHalf>, lay: &PduLayout, data: &[u8]) -> Result<bool, Stop> {
    if !lay.data_digest {
        return Ok(true);
    }
    let mut dg = [0u8; DIGEST_LEN];
    rd.read_exact(&mut dg).await?;
    Ok(pdu::verify_data_digest(data, dg).is_ok())
}

/// Executes a command and queues its reply.
async fn execute(ctx: Arc<QueueCtx>, sqe: Sqe, data: Option<IoBuf>) {
    let outcome = if ctx.is_admin() { admin::execute(&ctx, &sqe, data).await } else { io::execute(&ctx, &sqe, data).await };
    let Outcome::Reply(reply) = outcome else {
        ctx.inflight.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let mut cqe = Cqe::new(sqe.cid, reply.status);
    cqe.result = reply.result as u32;
    cqe.result_hi = (reply.result >> 32) as u32;
    if !reply.status.is_success() {
        debug!(cntlid = ctx.controller.cntlid, qid = ctx.qid, opcode = sqe.opcode, cid = sqe.cid, status = %reply.status, "command failed");
        ctx.controller.record_error(ctx.qid, sqe.cid, reply.status, sqe.nsid, 0);
    }
    let msg = match reply.data {
        Some(mut data) if reply.status.is_success() && sqe.dptr.length > 0 => {
            let want = sqe.dptr.length as usize;
            if data.len() != want {
                let mut sized = IoBuf::zeroed(want);
                let n = want.min(data.len());
                sized[..n].copy_from_slice(&data[..n]);
                data = sized;
            }
            Outgoing::Data { cid: sqe.cid, data, response: if ctx.sq_flow_disabled { None } else { Some(cqe) } }
        }
        _ => Outgoing::Response(cqe),
    };
    // Counted until the reply is queued: a host that stops reading holds at most its queue
    // size of commands (and their buffers) here.
    let _ = ctx.tx.send(msg).await;
    ctx.inflight.fetch_sub(1, Ordering::AcqRel);
}

/// Sends everything queued for a connection, batching small PDUs into one write.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    digests: Digests,
    sqid: Arc<AtomicU16>,
    sqhd: Arc<AtomicU16>,
    max_c2h: usize,
    inflight: Arc<AtomicUsize>,
) {
    let mut w = PduWriter { buf: Vec::with_capacity(BATCH_LIMIT), digests, sqid, sqhd, max_c2h: max_c2h.max(4096) };
    while let Some(first) = rx.recv().await {
        let mut close = match w.emit(&mut wr, first).await {
            Ok(c) => c,
            Err(_) => return,
        };
        // (The command whose reply this is may still be counted: more than one means others.)
        if rx.is_empty() && inflight.load(Ordering::Acquire) > 1 {
            // Other commands of this queue are still executing (on the reader's task): let
            // those already runnable finish and queue their replies, so that one send carries many
            // (fewer system calls per I/O under load). With nothing else in flight (queue
            // depth 1) the reply goes out at once.
            tokio::task::yield_now().await;
        }
        while !close && w.buf.len() < BATCH_LIMIT {
            let Ok(next) = rx.try_recv() else { break };
            close = match w.emit(&mut wr, next).await {
                Ok(c) => c,
                Err(_) => return,
            };
        }
        if w.flush(&mut wr).await.is_err() || close {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

struct PduWriter {
    buf: Vec<u8>,
    digests: Digests,
    sqid: Arc<AtomicU16>,
    sqhd: Arc<AtomicU16>,
    max_c2h: usize,
}

impl PduWriter {
    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    fn response(&mut self, mut cqe: Cqe) {
        cqe.sqid = self.sqid.load(Ordering::Relaxed);
        cqe.sqhd = self.sqhd.load(Ordering::Relaxed);
        pdu::encode_header(&PduHeader::CapsuleResp(cqe), 0, self.digests, &mut self.buf);
    }

    /// Encodes one message; returns whether the connection should close afterwards.
    async fn emit(&mut self, wr: &mut OwnedWriteHalf, msg: Outgoing) -> std::io::Result<bool> {
        match msg {
            Outgoing::Response(cqe) => self.response(cqe),
            Outgoing::R2T(r) => pdu::encode_header(&PduHeader::R2T(r), 0, self.digests, &mut self.buf),
            Outgoing::Data { cid, data, response } => {
                let total = data.len();
                let mut off = 0;
                while off < total {
                    let n = (total - off).min(self.max_c2h);
                    let last = off + n == total;
                    let dh = DataHeader {
                        cccid: cid,
                        ttag: 0,
                        datao: off as u32,
                        datal: n as u32,
                        last,
                        success: last && response.is_none(),
                    };
                    let h = PduHeader::C2HData(dh);
                    pdu::encode_header(&h, n, self.digests, &mut self.buf);
                    let chunk = &data[off..off + n];
                    if n <= COPY_LIMIT {
                        self.buf.extend_from_slice(chunk);
                    } else {
                        self.flush(wr).await?;
                        wr.write_all(chunk).await?;
                    }
                    if pdu::data_digest_applies(&h, n, self.digests) {
                        self.buf.extend_from_slice(&ferrite_protocol::digest::digest_bytes(chunk));
                    }
                    off += n;
                }
                if let Some(cqe) = response {
                    self.response(cqe);
                }
            }
            Outgoing::Term { fes, fei, header } => {
                let n = header.len().min(pdu::TERM_REQ_MAX_DATA);
                pdu::encode_pdu(&PduHeader::C2HTermReq(TermReq { fes, fei }), &header[..n], self.digests, &mut self.buf);
                return Ok(true);
            }
            Outgoing::Close => return Ok(true),
        }
        Ok(false)
    }
}
