//! One NVMe/TCP queue (admin or I/O) over one connection: command submission with pipelining
//! up to the queue depth, a writer task that owns the socket's write half, and a reader task
//! that routes completions, R2Ts and C2HData to the waiting commands.
//!
//! Life of a command: [`Queue::submit`] takes a depth permit, allocates a CID, records the
//! command in the in-flight table and hands the capsule to the writer, all under one lock so
//! that the reader can never see a response for a CID it does not know. The caller then waits
//! on a oneshot channel (bounded by the queue's timeout). The reader fills read buffers from
//! C2HData PDUs, answers R2Ts with H2CData PDUs cut at MAXH2CDATA, and completes the command on
//! its response capsule (or on a C2HData PDU with the SUCCESS flag). Any transport failure
//! fails every outstanding command with the same error and closes the connection; a command
//! whose caller gave up keeps its CID until the controller answers or the queue dies.
//!
//! This file owns the submission side and the in-flight table; `wire` owns the reader and
//! writer tasks.

#[cfg(test)]
mod tests;
mod wire;

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrite_block::IoBuf;
use ferrite_protocol::command::{admin_opcode, fctype};
use ferrite_protocol::pdu::{self, DIGEST_LEN, PduError, PduHeader};
use ferrite_protocol::{Cqe, Digests, SglDescriptor, Sqe};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use crate::error::HostError;
use crate::transfer::{CidAllocator, ReadAssembly, in_capsule};
use wire::{Outgoing, reader_task, writer_task};

/// In-capsule data limit of the admin queue (NVMe/TCP fixes the admin capsule at 8 KiB).
pub(crate) const ADMIN_IN_CAPSULE_MAX: usize = 8192;
/// PSDT = 01b: the data pointer is an SGL (always so on fabrics).
const PSDT_SGL: u8 = 0x40;
/// Socket buffer sizes for the reader and writer.
const IO_BUFFER: usize = 64 * 1024;

/// Data a command sends to the controller, shared so that H2CData PDUs can be cut from it
/// without copying, and kept alive until the controller has fetched all of it.
#[derive(Clone)]
pub(crate) struct OutData {
    buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl OutData {
    /// Wraps an owned buffer.
    pub fn new<B: AsRef<[u8]> + Send + Sync + 'static>(buf: B) -> OutData {
        let len = buf.as_ref().len();
        OutData {
            buf: Arc::new(buf),
            range: 0..len,
        }
    }

    /// Copies `data`.
    pub fn copy_from(data: &[u8]) -> OutData {
        OutData::new(data.to_vec())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.buf).as_ref()[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// A sub-range (relative to this view), sharing the buffer. `None` if out of bounds.
    pub fn slice(&self, r: Range<usize>) -> Option<OutData> {
        if r.start > r.end || r.end > self.len() {
            return None;
        }
        Some(OutData {
            buf: self.buf.clone(),
            range: self.range.start + r.start..self.range.start + r.end,
        })
    }
}

impl std::fmt::Debug for OutData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutData")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// A command to submit. The queue sets the CID, PSDT and the data pointer itself.
#[derive(Debug)]
pub(crate) struct Request {
    pub sqe: Sqe,
    pub data_out: Option<OutData>,
    pub data_in_len: usize,
}

/// A completed command: its completion entry and the data it read (empty if none).
#[derive(Debug)]
pub(crate) struct Completion {
    pub cqe: Cqe,
    pub data: IoBuf,
}

/// Fixed parameters of a queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueParams {
    pub qid: u16,
    pub digests: Digests,
    pub maxh2cdata: u32,
    /// Commands outstanding at most (CIDs `0..depth`).
    pub depth: u16,
    /// Largest write data sent in the capsule; larger data waits for R2Ts.
    pub in_capsule_max: usize,
    /// Bound on each command (including the wait for a free slot).
    pub timeout: Duration,
}

type Waiter = oneshot::Sender<Result<Completion, HostError>>;

/// One in-flight command.
pub(super) struct Pending {
    waiter: Waiter,
    opcode: u8,
    /// Data still to be fetched by R2Ts (only for data that did not go in the capsule).
    r2t_data: Option<OutData>,
    /// Read buffer; taken out by the reader while it fills a range from the socket.
    data_in: Option<IoBuf>,
    assembly: Option<ReadAssembly>,
    /// A per-command failure (a data digest error) reported when the command completes.
    error: Option<HostError>,
    /// Released when the command leaves the table, freeing a slot for the next submitter.
    _permit: OwnedSemaphorePermit,
}

pub(super) struct State {
    cids: CidAllocator,
    pending: Vec<Option<Pending>>,
    failed: Option<HostError>,
}

pub(super) struct Shared {
    params: QueueParams,
    state: Mutex<State>,
    closed: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; keep serving rather
        // than cascading the panic into every caller.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the queue: every outstanding command gets `err`, later submissions fail at once,
    /// and both tasks stop (the writer shuts the socket down).
    fn fail(&self, err: HostError) {
        let drained: Vec<Pending> = {
            let mut st = self.lock();
            if st.failed.is_some() {
                return;
            }
            st.failed = Some(err.clone());
            let n = st.pending.len();
            let mut out = Vec::new();
            for cid in 0..n {
                if let Some(p) = st.pending[cid].take() {
                    st.cids.free(cid as u16);
                    out.push(p);
                }
            }
            out
        };
        if matches!(err, HostError::Closed) {
            debug!(
                qid = self.params.qid,
                outstanding = drained.len(),
                "queue closed"
            );
        } else {
            warn!(qid = self.params.qid, outstanding = drained.len(), error = %err, "queue failed");
        }
        for p in drained {
            let _ = p.waiter.send(Err(err.clone()));
        }
        self.closed.send_replace(true);
    }

    /// Removes command `cid` from the table and answers its waiter.
    fn complete(&self, cid: u16, cqe: Cqe) -> Result<(), HostError> {
        let p = {
            let mut st = self.lock();
            let p = st
                .pending
                .get_mut(usize::from(cid))
                .and_then(Option::take)
                .ok_or(PduError::Sequence(
                    "completion for a command that is not outstanding",
                ))?;
            st.cids.free(cid);
            p
        };
        trace!(qid = self.params.qid, cid, opcode = p.opcode, status = %cqe.status, "completion");
        let Pending {
            waiter,
            data_in,
            assembly,
            error,
            ..
        } = p;
        let result = match (error, assembly) {
            (Some(e), _) => Err(e),
            (None, Some(a)) if cqe.status.is_success() && !a.complete() => {
                Err(HostError::InvalidResponse(format!(
                    "controller reported success after sending {} of {} data bytes",
                    a.received(),
                    data_in.as_ref().map_or(0, |b| b.len())
                )))
            }
            (None, _) => Ok(Completion {
                cqe,
                data: data_in.unwrap_or_default(),
            }),
        };
        // The caller may have given up (timeout or cancellation); that is fine.
        let _ = waiter.send(result);
        Ok(())
    }
}

/// One queue: the submission side, plus handles to its reader and writer tasks.
pub(crate) struct Queue {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Outgoing>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Queue {
    /// Starts the reader and writer tasks over an initialized connection.
    pub(crate) fn start<R, W>(reader: R, writer: W, params: QueueParams) -> Queue
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let depth = usize::from(params.depth);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            params,
            state: Mutex::new(State {
                cids: CidAllocator::new(params.depth),
                pending: (0..depth).map(|_| None).collect(),
                failed: None,
            }),
            closed,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let w = tokio::spawn(writer_task(
            BufWriter::with_capacity(IO_BUFFER, writer),
            rx,
            shared.clone(),
        ));
        let r = tokio::spawn(reader_task(
            BufReader::with_capacity(IO_BUFFER, reader),
            tx.clone(),
            shared.clone(),
        ));
        Queue {
            shared,
            permits: Arc::new(Semaphore::new(depth)),
            tx,
            tasks: Mutex::new(vec![w, r]),
        }
    }

    /// Why the queue failed, or `None` while it is usable.
    pub(crate) fn failure(&self) -> Option<HostError> {
        self.shared.lock().failed.clone()
    }

    /// Commands currently in flight (including abandoned ones).
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.shared.lock().cids.outstanding()
    }

    /// Submits a command and waits (at most the queue's timeout) for its completion. Any NVMe
    /// status is returned in the completion; errors are transport failures and timeouts.
    pub(crate) async fn submit(
        &self,
        op: &'static str,
        req: Request,
    ) -> Result<Completion, HostError> {
        let timeout = self.shared.params.timeout;
        let run = async {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| HostError::Closed)?;
            let rx = self.enqueue(req, permit)?;
            // The waiter is dropped unanswered only if the reader task died abnormally.
            rx.await.map_err(|_| HostError::Closed)?
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(res) => res,
            Err(_) => {
                warn!(
                    qid = self.shared.params.qid,
                    op,
                    ?timeout,
                    "command timed out"
                );
                Err(HostError::Timeout(op))
            }
        }
    }

    /// Records the command and queues its capsule. Synchronous, so a cancelled caller can
    /// never leave a half-registered command behind.
    fn enqueue(
        &self,
        req: Request,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<Result<Completion, HostError>>, HostError> {
        let params = &self.shared.params;
        let Request {
            mut sqe,
            data_out,
            data_in_len,
        } = req;
        if data_out.is_some() && data_in_len > 0 {
            return Err(HostError::InvalidRequest(
                "bidirectional data transfers are not supported".into(),
            ));
        }
        let out_len = data_out.as_ref().map_or(0, OutData::len);
        let len = u32::try_from(out_len.max(data_in_len)).map_err(|_| {
            HostError::InvalidRequest(format!(
                "transfer of {} bytes is too large",
                out_len.max(data_in_len)
            ))
        })?;
        let is_connect = sqe.opcode == admin_opcode::FABRICS && sqe.fctype() == fctype::CONNECT;
        let (inline, r2t_data) = match data_out {
            Some(d) if in_capsule(d.len(), params.in_capsule_max, is_connect) => {
                sqe.dptr = SglDescriptor::in_capsule(len);
                (Some(d), None)
            }
            Some(d) if d.is_empty() => {
                sqe.dptr = SglDescriptor::transport(0);
                (None, None)
            }
            Some(d) => {
                sqe.dptr = SglDescriptor::transport(len);
                (None, Some(d))
            }
            None => {
                sqe.dptr = SglDescriptor::transport(len);
                (None, None)
            }
        };
        sqe.flags = (sqe.flags & 0x3f) | PSDT_SGL;
        let (waiter, rx) = oneshot::channel();

        let mut st = self.shared.lock();
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let cid = st
            .cids
            .alloc()
            .ok_or_else(|| HostError::InvalidRequest("no free command identifier".into()))?;
        sqe.cid = cid;
        let mut header = Vec::with_capacity(pdu::CAPSULE_CMD_HLEN + DIGEST_LEN);
        let h = PduHeader::CapsuleCmd(sqe);
        let msg = match inline {
            Some(d) => {
                pdu::encode_header(&h, d.len(), params.digests, &mut header);
                let digest = pdu::data_digest_applies(&h, d.len(), params.digests);
                Outgoing::WithData {
                    header,
                    data: d,
                    digest,
                }
            }
            None => {
                pdu::encode_header(&h, 0, params.digests, &mut header);
                Outgoing::Bytes(header)
            }
        };
        let reads = data_in_len > 0;
        st.pending[usize::from(cid)] = Some(Pending {
            waiter,
            opcode: sqe.opcode,
            r2t_data,
            data_in: reads.then(|| IoBuf::zeroed(data_in_len)),
            assembly: reads.then(|| ReadAssembly::new(data_in_len)),
            error: None,
            _permit: permit,
        });
        if self.tx.send(msg).is_err() {
            st.pending[usize::from(cid)] = None;
            st.cids.free(cid);
            return Err(st.failed.clone().unwrap_or(HostError::Closed));
        }
        trace!(qid = params.qid, cid, opcode = sqe.opcode, len, "submitted");
        Ok(rx)
    }

    /// Closes the connection gracefully: outstanding commands fail with [`HostError::Closed`],
    /// the writer flushes what it has and shuts the socket down.
    pub(crate) fn close(&self) {
        self.fail(HostError::Closed);
    }

    /// Fails the queue with `err` (outstanding and later commands get it) and closes the
    /// connection like [`Queue::close`].
    pub(crate) fn fail(&self, err: HostError) {
        self.shared.fail(err);
        self.permits.close();
    }

    /// Closes the connection at once, dropping the socket without flushing.
    pub(crate) fn abort(&self) {
        self.close();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
    }

    /// Waits (at most `timeout`) until the reader and writer tasks have stopped.
    pub(crate) async fn join(&self, timeout: Duration) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(timeout, t).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.abort();
    }
}
