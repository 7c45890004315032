//! One NVMe/TCP connection (one queue): connection initialization, PDU reading and
//! validation, R2T/H2CData reassembly, dispatch of commands to their executors (run on the
//! reader's own task, see `running.rs`), and the writer that sends responses, C2HData and
//! R2T PDUs. Malformed PDUs end the connection with
//! a C2HTermReq carrying the fatal error status; nothing on this path panics.
//!
//! Hostile peers: every length from the wire is checked before anything is allocated (PDU
//! lengths by `ferrite_protocol::pdu::layout`, in-capsule data against the capsule limit,
//! SGL data lengths against MDTS at admission, H2CData offsets against the transfer). Each
//! admitted command holds a [`Slot`] of the connection's [`Budget`] until its reply is on
//! the socket: at most the queue size (SQSIZE + 1 entries, from Connect) of commands are
//! outstanding, a host sending more is terminated, and while the data of commands executing
//! or waiting to be written exceeds `max_connection_buffer` the reader stops reading new
//! PDUs (backpressure). R2Ts are issued only within the same budget (further writes wait for
//! their R2T). Every wait on the peer has a deadline: ICReq, Connect, H2CData after an R2T,
//! the rest of a PDU once its header arrived, and socket writes (a host that does not read is
//! disconnected after `drain_timeout`); a queue that must authenticate (DH-HMAC-CHAP, see
//! `auth.rs`) is closed if it has not within `auth_timeout` of its Connect, and refuses every
//! other command with Authentication Required until then.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use ferrite_block::IoBuf;
use ferrite_protocol::auth::{CONNECT_AUTHREQ_ATR, is_auth_command};
use ferrite_protocol::command::{Sqe, admin_opcode, fctype, sgl_type};
use ferrite_protocol::completion::Cqe;
use ferrite_protocol::pdu::{
    self, COMMON_HEADER_LEN, CommonHeader, DIGEST_LEN, DataHeader, Digests, ICResp, PduError,
    PduHeader, PduLayout, R2T, TermReq,
};
use ferrite_protocol::status::Status;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::auth::{self as dhchap, AuthGate};
use crate::controller::Controller;
use crate::registry::{Shared, signalled};
use crate::running::Running;
use crate::stats::TargetStats;
use crate::{admin, fabrics, io};

/// Messages queued towards the writer before command tasks wait.
const WRITER_QUEUE: usize = 1024;
/// Read data larger than this is written straight from its buffer instead of being copied
/// into the batch.
const COPY_LIMIT: usize = 16 * 1024;
/// The writer sends once its batch reaches this size.
const BATCH_LIMIT: usize = 256 * 1024;
/// A connection's resource accounting, shared by its reader, its writer and its commands.
#[derive(Default)]
pub(crate) struct Budget {
    /// Commands received and not yet answered on the socket (parked AERs excluded).
    inflight: AtomicUsize,
    /// Data bytes of those commands: executing, or their replies waiting to be written.
    held: AtomicUsize,
    /// Signalled whenever a slot is given back.
    freed: Notify,
}

impl Budget {
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Takes a slot for one more command if fewer than `limit` are outstanding.
    fn try_slot(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        let mut n = self.inflight.load(Ordering::Acquire);
        loop {
            if n >= limit {
                return None;
            }
            match self
                .inflight
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Slot {
                        budget: self.clone(),
                        bytes: 0,
                    });
                }
                Err(now) => n = now,
            }
        }
    }
}

/// One admitted command's share of its connection's [`Budget`]. Given back when dropped: by
/// the writer once the command's reply is on the socket (or in its write batch), or
/// wherever the command ends without a reply on the wire (a parked AER, a closed
/// connection).
pub(crate) struct Slot {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Slot {
    /// Counts `bytes` more of data held for this command.
    fn charge(&mut self, bytes: usize) {
        self.budget.held.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.inflight.fetch_sub(1, Ordering::AcqRel);
        self.budget.freed.notify_one();
    }
}

/// What command tasks hand to a connection's writer.
pub(crate) enum Outgoing {
    /// A response capsule not counted in the budget (Connect, AER completions).
    Response(Cqe),
    /// The response capsule of an admitted command.
    Completion(Cqe, Slot),
    /// Data for a controller-to-host command, then its response (none when SQ flow control
    /// is disabled and the command succeeded: the last C2HData carries SUCCESS).
    Data {
        cid: u16,
        data: IoBuf,
        response: Option<Cqe>,
        slot: Slot,
    },
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
        Reply {
            status: Status::SUCCESS,
            result: 0,
            data: None,
        }
    }
    pub fn status(status: Status) -> Reply {
        Reply {
            status,
            result: 0,
            data: None,
        }
    }
    pub fn result(result: u64) -> Reply {
        Reply {
            status: Status::SUCCESS,
            result,
            data: None,
        }
    }
    pub fn data(data: IoBuf) -> Reply {
        Reply {
            status: Status::SUCCESS,
            result: 0,
            data: Some(data),
        }
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
    /// In-band authentication, when the host has DH-HMAC-CHAP keys on the subsystem: until
    /// it succeeds, only Authentication Send/Receive are executed.
    pub auth: Option<Arc<AuthGate>>,
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
    /// The rest of the data must have arrived by then.
    deadline: Instant,
    slot: Slot,
}

/// Which wait on the peer ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    /// No successful Connect after ICResp.
    Connect,
    /// R2T data, or the rest of a started PDU, did not arrive.
    Data,
    /// A queue that must authenticate did not finish DH-HMAC-CHAP in time.
    Auth,
}

/// Why a connection's read loop stopped.
enum Stop {
    /// Orderly: the host closed, or the controller/target shut the queue down.
    Closed,
    Io(std::io::Error),
    /// A protocol violation: terminate with C2HTermReq.
    Fatal(PduError, Vec<u8>),
    /// More commands outstanding than the queue has entries: terminate with C2HTermReq.
    Overflow(PduError),
    /// The peer did not send what the target waited for in time: close.
    Timeout(Timeout),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Stop::Closed
        } else {
            Stop::Io(e)
        }
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
    /// Submission queue entries (SQSIZE + 1) from Connect; 0 before.
    sqsize: u16,
    sqhd: Arc<AtomicU16>,
    sqid: Arc<AtomicU16>,
    pending: HashMap<u16, PendingWrite>,
    /// Writes admitted whose R2T waits for room in the budget (oldest first).
    deferred: VecDeque<(Sqe, Slot)>,
    /// Bytes of the buffers of `pending`.
    r2t_bytes: usize,
    /// Shared with the writer and the commands.
    budget: Arc<Budget>,
    /// Commands executing, driven by this connection's task.
    running: Running,
    /// A queue not bound by Connect by then is closed.
    connect_deadline: Instant,
    /// A queue that must authenticate and has not by then is closed.
    auth_deadline: Option<Instant>,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "TCP_NODELAY failed");
    }
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);

    let o = &shared.options;
    let (ic_timeout, drain_timeout) = (o.ic_timeout, o.drain_timeout);
    let digests =
        match tokio::time::timeout(ic_timeout, initialize(&mut rd, &mut wr, &shared)).await {
            Ok(Ok(d)) => d,
            Ok(Err(Stop::Fatal(e, header))) => {
                warn!(%peer, error = %e, "rejecting connection: bad ICReq");
                TargetStats::bump(&shared.stats.protocol_errors);
                let mut out = Vec::new();
                pdu::encode_pdu(
                    &PduHeader::C2HTermReq(TermReq {
                        fes: e.fes(),
                        fei: e.fei(),
                    }),
                    &header,
                    Digests::NONE,
                    &mut out,
                );
                let _ = tokio::time::timeout(drain_timeout, wr.write_all(&out)).await;
                return;
            }
            Ok(Err(_)) => return,
            Err(_) => {
                warn!(%peer, timeout = ?ic_timeout, "no ICReq in time; closing the connection");
                TargetStats::bump(&shared.stats.ic_timeouts);
                return;
            }
        };

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let sqhd = Arc::new(AtomicU16::new(0));
    let sqid = Arc::new(AtomicU16::new(0));
    let budget = Arc::new(Budget::default());
    let (closer, mut closed) = watch::channel(false);
    let mut writer = tokio::spawn(write_loop(
        wr,
        rx,
        PduWriter {
            buf: Vec::new(),
            digests,
            sqid: sqid.clone(),
            sqhd: sqhd.clone(),
            max_c2h: (shared.options.max_c2h_data as usize).max(4096),
            drain_timeout,
        },
        WriterCtx {
            budget: budget.clone(),
            shared: shared.clone(),
            peer,
            closer: closer.clone(),
        },
    ));
    let mut target_stop = shared.shutdown_signal();
    let connect_deadline = Instant::now() + shared.options.connect_timeout;
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
        deferred: VecDeque::new(),
        r2t_bytes: 0,
        budget,
        running: Running::default(),
        connect_deadline,
        auth_deadline: None,
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
            TargetStats::bump(&q.shared.stats.protocol_errors);
            // The writer may be stuck on a host that does not read: do not wait on it.
            let _ = q.tx.try_send(Outgoing::Term {
                fes: e.fes(),
                fei: e.fei(),
                header,
            });
            drain_writer = true;
        }
        Stop::Overflow(e) => {
            warn!(peer = %q.peer, queue_entries = q.sqsize, "terminating connection: the host exceeded its queue size");
            TargetStats::bump(&q.shared.stats.queue_overflows);
            let _ = q.tx.try_send(Outgoing::Term {
                fes: e.fes(),
                fei: e.fei(),
                header: Vec::new(),
            });
            drain_writer = true;
        }
        Stop::Timeout(Timeout::Connect) => {
            warn!(peer = %q.peer, timeout = ?q.shared.options.connect_timeout, "no successful Connect in time; closing the connection");
            TargetStats::bump(&q.shared.stats.connect_timeouts);
        }
        Stop::Timeout(Timeout::Auth) => {
            warn!(peer = %q.peer, timeout = ?q.shared.options.auth_timeout, "the host did not authenticate in time; closing the connection");
            TargetStats::bump(&q.shared.stats.connect_timeouts);
        }
        Stop::Timeout(Timeout::Data) => {
            warn!(peer = %q.peer, timeout = ?q.shared.options.data_timeout, "the host did not send the data it owes in time; closing the connection");
            TargetStats::bump(&q.shared.stats.data_timeouts);
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
async fn initialize(
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut OwnedWriteHalf,
    shared: &Shared,
) -> Result<Digests, Stop> {
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
    let resp = ICResp {
        pfv: 0,
        cpda: 0,
        digests: req.digests,
        maxh2cdata: shared.options.max_h2c_data,
    };
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

    /// While the data this connection holds is over budget, waits (the commands keep running
    /// and the writer keeps draining) before reading anything more from the host.
    async fn wait_for_budget(&mut self) {
        let limit = self.shared.options.connection_budget();
        if self.budget.held() <= limit {
            return;
        }
        TargetStats::bump(&self.shared.stats.budget_stalls);
        debug!(peer = %self.peer, held = self.budget.held(), limit, "connection over its memory budget; pausing reads");
        let started = Instant::now();
        while self.budget.held() > limit {
            // A slot given back between the check and this wait leaves a permit: no lost wake-up.
            self.budget.freed.notified().await;
        }
        // Time spent not reading does not count against the host's data deadlines.
        let waited = started.elapsed();
        for p in self.pending.values_mut() {
            p.deadline += waited;
        }
    }

    /// The deadline for authentication, while the queue must still authenticate.
    fn pending_auth_deadline(&self) -> Option<Instant> {
        let gate = self.ctx.as_ref()?.auth.as_ref()?;
        if gate.is_authenticated() {
            None
        } else {
            self.auth_deadline
        }
    }

    /// The earliest time by which the host must have sent something, and what for.
    fn deadline(&self) -> Option<(Instant, Timeout)> {
        let connect = match self.pending_auth_deadline() {
            Some(at) => Some((at, Timeout::Auth)),
            None => self
                .ctx
                .is_none()
                .then_some((self.connect_deadline, Timeout::Connect)),
        };
        let data = self
            .pending
            .values()
            .map(|p| p.deadline)
            .min()
            .map(|d| (d, Timeout::Data));
        match (connect, data) {
            (Some(c), Some(d)) => Some(if d.0 < c.0 { d } else { c }),
            (c, d) => c.or(d),
        }
    }

    /// Reads and handles one PDU. `Ok(false)` when the host asked to end the connection.
    async fn read_one(&mut self, rd: &mut BufReader<OwnedReadHalf>) -> Result<bool, Stop> {
        self.wait_for_budget().await;
        // A host that keeps sending (refused) commands still has to authenticate in time.
        if self
            .pending_auth_deadline()
            .is_some_and(|at| at <= Instant::now())
        {
            return Err(Stop::Timeout(Timeout::Auth));
        }
        // Wait for the next PDU to start (`fill_buf` consumes nothing, so a wait cut short by
        // a deadline loses no bytes).
        loop {
            let available = match self.deadline() {
                Some((at, why)) => match tokio::time::timeout_at(at, rd.fill_buf()).await {
                    Ok(r) => !r?.is_empty(),
                    // The queue authenticated while this wait was armed with its deadline.
                    Err(_) if why == Timeout::Auth && self.pending_auth_deadline().is_none() => {
                        continue;
                    }
                    Err(_) => return Err(Stop::Timeout(why)),
                },
                None => !rd.fill_buf().await?.is_empty(),
            };
            if !available {
                return Err(Stop::Closed);
            }
            break;
        }
        // Once a PDU has started, the rest of it must follow.
        let data_timeout = self.shared.options.data_timeout;
        let pdu = async {
            let mut chb = [0u8; COMMON_HEADER_LEN];
            rd.read_exact(&mut chb).await?;
            self.read_rest(chb, rd).await
        };
        match tokio::time::timeout(data_timeout, pdu).await {
            Ok(r) => r,
            Err(_) => Err(Stop::Timeout(Timeout::Data)),
        }
    }

    async fn read_rest(
        &mut self,
        chb: [u8; COMMON_HEADER_LEN],
        rd: &mut BufReader<OwnedReadHalf>,
    ) -> Result<bool, Stop> {
        let ch = CommonHeader::decode(&chb);
        let o = &self.shared.options;
        let max_data = (o
            .max_h2c_data
            .max(o.in_capsule_data)
            .max(o.admin_in_capsule_data)) as usize;
        let lay = pdu::layout(&ch, Some(self.digests), max_data)
            .map_err(|e| Stop::Fatal(e, chb.to_vec()))?;
        let mut header = [0u8; pdu::IC_HLEN];
        header[..COMMON_HEADER_LEN].copy_from_slice(&chb);
        rd.read_exact(&mut header[COMMON_HEADER_LEN..lay.hlen])
            .await?;
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
                // Checked from the header alone, before the data is read or allocated.
                if lay.data_len > self.in_capsule_limit() {
                    let e = PduError::DataLimitExceeded {
                        len: lay.data_len as u64,
                        limit: self.in_capsule_limit() as u64,
                    };
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
                    self.respond(sqe.cid, Status::TRANSIENT_TRANSPORT_ERROR)
                        .await;
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
            _ => Err(Stop::Fatal(
                PduError::Sequence("PDU type not sent by hosts"),
                header.to_vec(),
            )),
        }
    }

    /// Answers a command that was never admitted (before Connect, or a bad capsule).
    async fn respond(&self, cid: u16, status: Status) {
        let _ = self
            .tx
            .send(Outgoing::Response(Cqe::new(cid, status)))
            .await;
    }

    /// Answers an admitted command without executing it; its slot goes with the answer.
    async fn complete(&self, slot: Slot, cid: u16, status: Status) {
        let _ = self
            .tx
            .send(Outgoing::Completion(Cqe::new(cid, status), slot))
            .await;
    }

    /// Counts a command as outstanding. A host that has more commands outstanding than its
    /// queue has entries is misbehaving and its connection ends (memory per connection stays
    /// bounded). A command is outstanding until its reply is on the socket, so a host that
    /// counts its own completions never trips this.
    fn admit(&self) -> Result<Slot, Stop> {
        let limit = usize::from(self.sqsize).max(1);
        self.budget
            .try_slot(limit)
            .ok_or(Stop::Overflow(PduError::Sequence(
                "more commands outstanding than the queue size",
            )))
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
        if sqe.opcode == admin_opcode::FABRICS
            && sqe.fctype() == fctype::DISCONNECT
            && !ctx.is_admin()
        {
            self.respond(sqe.cid, Status::SUCCESS).await;
            let _ = self.tx.send(Outgoing::Close).await;
            return Ok(true);
        }
        let mut slot = self.admit()?;
        let sgl = sqe.dptr;
        // No command moves more than MDTS: refused here, before any buffer (R2T, read data,
        // the reply) is sized by the SGL length. The spec's MDTS rule: Invalid Field.
        let mdts = self.shared.options.max_data_transfer;
        if sgl.length > mdts {
            TargetStats::bump(&self.shared.stats.oversized_commands);
            debug!(peer = %self.peer, cid = sqe.cid, opcode = sqe.opcode, length = sgl.length, mdts, "SGL data length beyond MDTS");
            self.complete(slot, sqe.cid, Status::INVALID_FIELD).await;
            return Ok(true);
        }
        let mut data = data;
        if sgl.length > 0 {
            match sgl.type_byte {
                sgl_type::DATA_BLOCK_OFFSET => {
                    if sgl.address != 0 {
                        self.complete(slot, sqe.cid, Status::SGL_OFFSET_INVALID)
                            .await;
                        return Ok(true);
                    }
                    match data.as_mut() {
                        Some(d) if d.len() >= sgl.length as usize => {
                            d.truncate(sgl.length as usize)
                        }
                        _ => {
                            self.complete(slot, sqe.cid, Status::DATA_SGL_LENGTH_INVALID)
                                .await;
                            return Ok(true);
                        }
                    }
                }
                sgl_type::TRANSPORT_DATA_BLOCK => {
                    if host_to_controller(&sqe) {
                        self.request_data(sqe, slot).await;
                        return Ok(true);
                    }
                    // The reply's data, reserved now (at most MDTS).
                    slot.charge(sgl.length as usize);
                }
                _ => {
                    self.complete(slot, sqe.cid, Status::SGL_TYPE_INVALID).await;
                    return Ok(true);
                }
            }
        }
        if let Some(d) = &data {
            slot.charge(d.len());
        }
        self.running.push(execute(ctx, sqe, data, slot));
        Ok(true)
    }

    /// Asks for the data of a write that is not in the capsule: an R2T now if the budget has
    /// room (or nothing else is being transferred), otherwise once earlier transfers finish.
    async fn request_data(&mut self, sqe: Sqe, slot: Slot) {
        if self.pending.contains_key(&sqe.cid)
            || self.deferred.iter().any(|(s, _)| s.cid == sqe.cid)
        {
            self.complete(slot, sqe.cid, Status::CID_CONFLICT).await;
            return;
        }
        self.deferred.push_back((sqe, slot));
        self.issue_r2ts().await;
    }

    /// Sends R2Ts for deferred writes while the budget allows.
    async fn issue_r2ts(&mut self) {
        let limit = self.shared.options.connection_budget();
        while let Some((sqe, _)) = self.deferred.front() {
            let len = sqe.dptr.length as usize;
            if !self.pending.is_empty() && self.r2t_bytes + self.budget.held() + len > limit {
                return;
            }
            let Some((sqe, slot)) = self.deferred.pop_front() else {
                return;
            };
            // `len` was checked against MDTS at admission.
            let deadline = Instant::now() + self.shared.options.data_timeout;
            let pw = PendingWrite {
                sqe,
                buf: IoBuf::zeroed(len),
                received: 0,
                digest_error: false,
                deadline,
                slot,
            };
            self.pending.insert(sqe.cid, pw);
            self.r2t_bytes += len;
            let r2t = R2T {
                cccid: sqe.cid,
                ttag: sqe.cid,
                r2to: 0,
                r2tl: sqe.dptr.length,
            };
            let _ = self.tx.send(Outgoing::R2T(r2t)).await;
        }
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
        let data_timeout = self.shared.options.data_timeout;
        let Some(p) = self.pending.get_mut(&dh.ttag) else {
            return Err(fatal(PduError::InvalidHeaderField {
                offset: 10,
                reason: "H2CData for an unknown transfer tag",
            }));
        };
        if dh.cccid != p.sqe.cid {
            return Err(fatal(PduError::InvalidHeaderField {
                offset: 8,
                reason: "H2CData CCCID does not match the R2T",
            }));
        }
        let (off, len) = (dh.datao as usize, dh.datal as usize);
        if off != p.received {
            return Err(fatal(PduError::DataOutOfRange(
                "H2CData offset out of sequence",
            )));
        }
        let end = match off.checked_add(len) {
            Some(end) if end <= p.buf.len() => end,
            _ => {
                return Err(fatal(PduError::DataOutOfRange(
                    "H2CData beyond the requested length",
                )));
            }
        };
        skip(rd, lay.pad).await?;
        rd.read_exact(&mut p.buf[off..end]).await?;
        if !read_data_digest(rd, lay, &p.buf[off..end]).await? {
            p.digest_error = true;
        }
        p.received = end;
        p.deadline = Instant::now() + data_timeout;
        if p.received < p.buf.len() {
            if dh.last {
                return Err(fatal(PduError::DataOutOfRange(
                    "LAST_PDU before all requested data",
                )));
            }
            return Ok(());
        }
        let Some(mut p) = self.pending.remove(&dh.ttag) else {
            return Ok(());
        };
        self.r2t_bytes -= p.buf.len();
        if p.digest_error {
            warn!(peer = %self.peer, cid = p.sqe.cid, "data digest error on H2CData");
            self.complete(p.slot, p.sqe.cid, Status::TRANSIENT_TRANSPORT_ERROR)
                .await;
        } else if let Some(ctx) = self.ctx.clone() {
            // The buffer now counts as held by an executing command.
            p.slot.charge(p.buf.len());
            self.running.push(execute(ctx, p.sqe, Some(p.buf), p.slot));
        }
        self.issue_r2ts().await;
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
                // A host with DH-HMAC-CHAP keys must authenticate this queue before anything
                // else (ATR in the Connect response, as the Linux host expects).
                let keys = bound
                    .controller
                    .subsystem
                    .as_ref()
                    .and_then(|s| self.shared.host_keys(s, &bound.controller.hostnqn));
                let auth = keys.map(|k| {
                    cqe.result |= CONNECT_AUTHREQ_ATR;
                    self.auth_deadline = Some(Instant::now() + self.shared.options.auth_timeout);
                    debug!(peer = %self.peer, qid = bound.qid, "queue must authenticate (DH-HMAC-CHAP)");
                    Arc::new(AuthGate::new(k, &bound.controller.hostnqn, &bound.controller.subnqn, bound.qid))
                });
                self.ctx = Some(Arc::new(QueueCtx {
                    shared: self.shared.clone(),
                    controller: bound.controller,
                    tx: self.tx.clone(),
                    qid: bound.qid,
                    sq_flow_disabled: bound.sq_flow_disabled,
                    local: self.local,
                    auth,
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
async fn read_data_digest(
    rd: &mut BufReader<OwnedReadHalf>,
    lay: &PduLayout,
    data: &[u8],
) -> Result<bool, Stop> {
    if !lay.data_digest {
        return Ok(true);
    }
    let mut dg = [0u8; DIGEST_LEN];
    rd.read_exact(&mut dg).await?;
    Ok(pdu::verify_data_digest(data, dg).is_ok())
}

/// Executes a command and queues its reply; the command's slot travels with the reply.
async fn execute(ctx: Arc<QueueCtx>, sqe: Sqe, data: Option<IoBuf>, slot: Slot) {
    let mut close = false;
    let outcome = match &ctx.auth {
        Some(gate) if is_auth_command(&sqe) => {
            let o = dhchap::execute(gate, &sqe, data).await;
            close = o.close;
            Outcome::Reply(o.reply)
        }
        Some(gate) if !gate.is_authenticated() => Status::AUTH_REQUIRED.into(),
        _ if ctx.is_admin() => admin::execute(&ctx, &sqe, data).await,
        _ => io::execute(&ctx, &sqe, data).await,
    };
    let Outcome::Reply(reply) = outcome else {
        // A parked AER is not counted: its completion may come much later, or never.
        drop(slot);
        return;
    };
    let mut cqe = Cqe::new(sqe.cid, reply.status);
    cqe.result = reply.result as u32;
    cqe.result_hi = (reply.result >> 32) as u32;
    if !reply.status.is_success() {
        debug!(cntlid = ctx.controller.cntlid, qid = ctx.qid, opcode = sqe.opcode, cid = sqe.cid, status = %reply.status, "command failed");
        ctx.controller
            .record_error(ctx.qid, sqe.cid, reply.status, sqe.nsid, 0);
    }
    let msg = match reply.data {
        Some(mut data) if reply.status.is_success() && sqe.dptr.length > 0 => {
            // The SGL length was checked against MDTS at admission (and reserved in the slot).
            let want =
                (sqe.dptr.length as usize).min(ctx.shared.options.max_data_transfer as usize);
            if data.len() > want {
                data.truncate(want);
            } else if data.len() < want {
                let mut sized = IoBuf::zeroed(want);
                sized[..data.len()].copy_from_slice(&data);
                data = sized;
            }
            let response = if ctx.sq_flow_disabled {
                None
            } else {
                Some(cqe)
            };
            Outgoing::Data {
                cid: sqe.cid,
                data,
                response,
                slot,
            }
        }
        _ => Outgoing::Completion(cqe, slot),
    };
    // The slot stays counted until the writer has put the reply on the socket: a host that
    // stops reading holds at most its queue size of commands, and its budget of data.
    let _ = ctx.tx.send(msg).await;
    if close {
        // A failed authentication ends the connection once its last message is out.
        let _ = ctx.tx.send(Outgoing::Close).await;
    }
}

/// What the writer needs besides the socket: the budget (to tell whether more replies are
/// coming), the stats, and the connection's close signal (raised when the writer gives up).
struct WriterCtx {
    budget: Arc<Budget>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    closer: watch::Sender<bool>,
}

/// Sends everything queued for a connection, batching small PDUs into one write. A write
/// that makes no progress for the drain timeout (the host does not read) ends the
/// connection.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    mut w: PduWriter,
    cx: WriterCtx,
) {
    let result = async {
        while let Some(first) = rx.recv().await {
            let mut close = w.emit(&mut wr, first).await?;
            if rx.is_empty() && cx.budget.inflight() > 0 {
                // Other commands of this queue are still executing (on the reader's task): let
                // those already runnable finish and queue their replies, so that one send carries
                // many (fewer system calls per I/O under load). With nothing else in flight
                // (queue depth 1) the reply goes out at once.
                tokio::task::yield_now().await;
            }
            while !close && w.buf.len() < BATCH_LIMIT {
                let Ok(next) = rx.try_recv() else { break };
                close = w.emit(&mut wr, next).await?;
            }
            w.flush(&mut wr).await?;
            if close {
                break;
            }
            if w.buf.capacity() > BATCH_LIMIT * 2 {
                // An idle connection does not keep a large batch buffer.
                w.buf = Vec::new();
            }
        }
        Ok::<(), std::io::Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(w.drain_timeout, wr.shutdown()).await;
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            warn!(peer = %cx.peer, timeout = ?w.drain_timeout, held = cx.budget.held(), inflight = cx.budget.inflight(),
                  "the host does not read its socket; closing the connection");
            TargetStats::bump(&cx.shared.stats.drain_timeouts);
        }
        Err(e) => debug!(peer = %cx.peer, error = %e, "write failed"),
    }
    // Whatever ended the writer ends the connection (its reader may be waiting on it).
    let _ = cx.closer.send(true);
}

struct PduWriter {
    buf: Vec<u8>,
    digests: Digests,
    sqid: Arc<AtomicU16>,
    sqhd: Arc<AtomicU16>,
    max_c2h: usize,
    drain_timeout: Duration,
}

/// Writes all of `bytes`, failing with `TimedOut` if the socket takes none of them for
/// `limit` (the peer does not read).
async fn write_all_within(
    wr: &mut OwnedWriteHalf,
    mut bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = match tokio::time::timeout(limit, wr.write(bytes)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "socket write made no progress",
                ));
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

impl PduWriter {
    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            write_all_within(wr, &self.buf, self.drain_timeout).await?;
            self.buf.clear();
        }
        Ok(())
    }

    fn response(&mut self, mut cqe: Cqe) {
        cqe.sqid = self.sqid.load(Ordering::Relaxed);
        cqe.sqhd = self.sqhd.load(Ordering::Relaxed);
        pdu::encode_header(&PduHeader::CapsuleResp(cqe), 0, self.digests, &mut self.buf);
    }

    /// Encodes one message; returns whether the connection should close afterwards. A
    /// command's slot is given back once its reply is encoded (or written).
    async fn emit(&mut self, wr: &mut OwnedWriteHalf, msg: Outgoing) -> std::io::Result<bool> {
        match msg {
            Outgoing::Response(cqe) => self.response(cqe),
            Outgoing::Completion(cqe, slot) => {
                self.response(cqe);
                drop(slot);
            }
            Outgoing::R2T(r) => {
                pdu::encode_header(&PduHeader::R2T(r), 0, self.digests, &mut self.buf)
            }
            Outgoing::Data {
                cid,
                data,
                response,
                slot,
            } => {
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
                        write_all_within(wr, chunk, self.drain_timeout).await?;
                    }
                    if pdu::data_digest_applies(&h, n, self.digests) {
                        self.buf
                            .extend_from_slice(&ferrite_protocol::digest::digest_bytes(chunk));
                    }
                    off += n;
                }
                if let Some(cqe) = response {
                    self.response(cqe);
                }
                drop(data);
                drop(slot);
            }
            Outgoing::Term { fes, fei, header } => {
                let n = header.len().min(pdu::TERM_REQ_MAX_DATA);
                pdu::encode_pdu(
                    &PduHeader::C2HTermReq(TermReq { fes, fei }),
                    &header[..n],
                    self.digests,
                    &mut self.buf,
                );
                return Ok(true);
            }
            Outgoing::Close => return Ok(true),
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back_with_their_bytes() {
        let b = Arc::new(Budget::default());
        let mut s1 = b.try_slot(2).expect("first");
        s1.charge(4096);
        let mut s2 = b.try_slot(2).expect("second");
        s2.charge(100);
        s2.charge(28);
        assert!(
            b.try_slot(2).is_none(),
            "a third command exceeds two entries"
        );
        assert_eq!((b.inflight(), b.held()), (2, 4096 + 128));
        drop(s1);
        assert_eq!((b.inflight(), b.held()), (1, 128));
        let s3 = b.try_slot(2).expect("room again");
        drop(s2);
        drop(s3);
        assert_eq!((b.inflight(), b.held()), (0, 0));
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_a_waiter_even_if_freed_before_the_wait() {
        let b = Arc::new(Budget::default());
        let mut s = b.try_slot(1).expect("slot");
        s.charge(10);
        drop(s);
        // The permit left by the release is not lost.
        tokio::time::timeout(Duration::from_secs(1), b.freed.notified())
            .await
            .expect("woken");
    }

    #[test]
    fn only_writes_and_their_fabrics_kin_move_data_to_the_controller() {
        let cmd = |opcode, nsid| Sqe {
            opcode,
            nsid,
            ..Default::default()
        };
        assert!(host_to_controller(&cmd(
            ferrite_protocol::command::io_opcode::WRITE,
            1
        )));
        assert!(!host_to_controller(&cmd(
            ferrite_protocol::command::io_opcode::READ,
            1
        )));
        assert!(!host_to_controller(&cmd(admin_opcode::IDENTIFY, 0)));
        assert!(host_to_controller(&cmd(
            admin_opcode::FABRICS,
            u32::from(fctype::CONNECT)
        )));
        assert!(!host_to_controller(&cmd(
            admin_opcode::FABRICS,
            u32::from(fctype::PROPERTY_GET)
        )));
    }
}
