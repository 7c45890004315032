//! The io_uring engine: one dedicated thread per device that owns an io_uring instance.
//!
//! Callers hand an [`Op`] plus a tokio oneshot sender to the thread over a channel and await the
//! reply; the op (and the [`IoBuf`] it owns) lives in the thread's slot table until its
//! completion arrives, so the memory the kernel reads or writes stays valid.
//!
//! The thread's only blocking point is `io_uring_enter(min_complete = 1)`. To make new requests
//! wake it promptly, a read of an eventfd is kept armed in the ring at all times: a sender that
//! finds the "pending" counter at zero writes the eventfd, its read completes, and the thread
//! drains the channel. So a new request never waits behind an unrelated slow completion, and
//! senders of a burst pay for one eventfd write between them. The thread submits everything it
//! drained in one `io_uring_enter` and reaps all available completions per wake-up.
//!
//! Shutdown: dropping the [`UringEngine`] closes the channel and writes the eventfd; the thread
//! stops re-arming the eventfd read, waits for every in-flight operation to complete, and exits.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::thread;

use io_uring::{IoUring, Probe, opcode, squeue, types};
use tokio::sync::oneshot;

use crate::engine::Op;
use crate::{BlockError, IoBuf};

/// User data of the eventfd read; slot indices are always smaller.
const WAKE_TOKEN: u64 = u64::MAX;

/// Largest byte count submitted in one SQE (the SQE length field is 32 bits); longer transfers
/// continue like short ones. A multiple of every supported block size.
const MAX_SQE_BYTES: usize = 1 << 30;

type Reply = oneshot::Sender<io::Result<Option<IoBuf>>>;

struct Request {
    op: Op,
    reply: Reply,
}

/// State shared between the submitting side and the ring thread.
struct Shared {
    /// The eventfd whose read the ring thread keeps armed.
    wake_fd: OwnedFd,
    /// Requests sent since the ring thread last looked; a sender that raises it from zero
    /// writes the eventfd.
    pending: AtomicUsize,
}

impl Shared {
    /// Called after sending a request: wakes the ring thread unless a wake-up is already due.
    fn notify(&self) {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.write_wake();
        }
    }

    /// Unconditionally bumps the eventfd so its armed read completes.
    fn write_wake(&self) {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live local `u64` to an eventfd kept open by `self`.
            let rc = unsafe {
                libc::write(
                    self.wake_fd.as_raw_fd(),
                    (&raw const one).cast::<libc::c_void>(),
                    8,
                )
            };
            if rc == 8 {
                return;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                // Only possible if the counter is about to overflow, which means a wake-up is
                // already pending: nothing is lost.
                tracing::warn!(error = %err, "io_uring wake-up eventfd write failed");
                return;
            }
        }
    }
}

/// Handle to a ring thread serving one file.
pub(crate) struct UringEngine {
    tx: Option<mpsc::Sender<Request>>,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
    label: String,
}

impl UringEngine {
    /// Starts a ring thread with `entries` submission-queue entries serving `file`.
    /// Fails if io_uring is unavailable (or lacks an opcode this engine uses).
    pub(crate) fn start(file: Arc<File>, entries: u32, label: String) -> io::Result<UringEngine> {
        // SAFETY: eventfd takes no pointers; the return value is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let shared = Arc::new(Shared {
            wake_fd,
            pending: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel::<Request>();
        let (setup_tx, setup_rx) = mpsc::sync_channel::<io::Result<()>>(1);

        let thread_shared = Arc::clone(&shared);
        let thread_label = label.clone();
        let thread = thread::Builder::new()
            .name("ferrite-uring".into())
            .spawn(move || {
                // The ring is created on this thread so it can be a single-issuer ring.
                let ring = match setup_ring(entries) {
                    Ok(ring) => {
                        let _ = setup_tx.send(Ok(()));
                        ring
                    }
                    Err(e) => {
                        let _ = setup_tx.send(Err(e));
                        return;
                    }
                };
                let max_in_flight = (ring.params().sq_entries() as usize)
                    .saturating_sub(1)
                    .max(1);
                tracing::debug!(device = %thread_label, max_in_flight, "io_uring thread started");
                RingThread {
                    ring,
                    file,
                    rx,
                    shared: thread_shared,
                    slots: Vec::new(),
                    free: Vec::new(),
                    in_flight: 0,
                    max_in_flight,
                    wake_buf: Box::new(0),
                    wake_armed: false,
                    shutting_down: false,
                    cqes: Vec::new(),
                }
                .run();
                tracing::debug!(device = %thread_label, "io_uring thread stopped");
            })?;

        match setup_rx.recv() {
            Ok(Ok(())) => Ok(UringEngine {
                tx: Some(tx),
                shared,
                thread: Some(thread),
                label,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("io_uring thread exited during setup"))
            }
        }
    }

    /// Runs `op` on the ring thread and waits for its completion.
    pub(crate) async fn run(&self, op: Op) -> Result<Option<IoBuf>, BlockError> {
        let name = op.name();
        let gone = || BlockError::Gone(format!("io_uring thread for {} has stopped", self.label));
        let (reply, done) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send(Request { op, reply }).map_err(|_| gone())?;
        self.shared.notify();
        match done.await {
            Ok(Ok(buf)) => Ok(buf),
            Ok(Err(e)) => Err(BlockError::io(name, e)),
            Err(_) => Err(gone()),
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Closing the channel tells the thread to finish; the eventfd write wakes it.
        drop(self.tx.take());
        self.shared.write_wake();
        if let Some(thread) = self.thread.take() {
            // Joining waits for in-flight operations, which must not stall an async executor
            // thread: there the thread is left to finish on its own.
            if tokio::runtime::Handle::try_current().is_err() {
                let _ = thread.join();
            }
        }
    }
}

fn setup_ring(entries: u32) -> io::Result<IoUring> {
    let entries = entries.clamp(2, 4096);
    // Single issuer + deferred task running suit a ring only this thread touches and that
    // always reaps through io_uring_enter; fall back for older kernels.
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| {
            IoUring::builder()
                .setup_single_issuer()
                .setup_coop_taskrun()
                .build(entries)
        })
        .or_else(|_| IoUring::builder().build(entries))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring opcode {name} not supported by this kernel"),
            ));
        }
    }
    Ok(ring)
}

struct InFlight {
    req: Request,
    /// Bytes already transferred (reads and writes continue after short completions).
    done: usize,
}

struct RingThread {
    ring: IoUring,
    file: Arc<File>,
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    /// In-flight operations, indexed by SQE user data.
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    max_in_flight: usize,
    /// Target of the armed eventfd read.
    wake_buf: Box<u64>,
    wake_armed: bool,
    shutting_down: bool,
    /// Reused buffer of reaped (user data, result) pairs.
    cqes: Vec<(u64, i32)>,
}

impl RingThread {
    fn run(&mut self) {
        if let Err(e) = self.arm_wake() {
            self.fail_everything(e);
            return;
        }
        loop {
            if !self.shutting_down {
                // Reset before draining: a request sent after this point either is seen by the
                // drain below or raises `pending` from zero and writes the eventfd.
                self.shared.pending.swap(0, Ordering::AcqRel);
                if let Err(e) = self.drain() {
                    self.fail_everything(e);
                    return;
                }
            }
            if self.shutting_down && self.in_flight == 0 && !self.wake_armed {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    self.fail_everything(e);
                    return;
                }
            }
            if let Err(e) = self.reap() {
                self.fail_everything(e);
                return;
            }
        }
    }

    /// Takes requests from the channel while there is room in the ring.
    fn drain(&mut self) -> io::Result<()> {
        while self.in_flight < self.max_in_flight {
            match self.rx.try_recv() {
                Ok(req) => self.start(req)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.shutting_down = true;
                    if self.wake_armed {
                        // Complete our own eventfd read so nothing is left in the ring.
                        self.shared.write_wake();
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, req: Request) -> io::Result<()> {
        if let Op::Read { buf, .. } | Op::Write { buf, .. } = &req.op
            && buf.is_empty()
        {
            let result = match req.op {
                Op::Read { buf, .. } => Ok(Some(buf)),
                _ => Ok(None),
            };
            let _ = req.reply.send(result);
            return Ok(());
        }
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[idx] = Some(InFlight { req, done: 0 });
        self.in_flight += 1;
        self.push(idx)
    }

    /// Queues the SQE for slot `idx` (from its current progress).
    fn push(&mut self, idx: usize) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let Some(inflight) = self.slots[idx].as_mut() else {
            return Ok(());
        };
        let done = inflight.done;
        let entry = match &mut inflight.req.op {
            Op::Read { offset, buf } => {
                let n = (buf.len() - done).min(MAX_SQE_BYTES);
                // SAFETY: `done < buf.len()`, so the pointer stays inside the allocation.
                let ptr = unsafe { buf.as_mut_ptr().add(done) };
                opcode::Read::new(fd, ptr, n as u32)
                    .offset(*offset + done as u64)
                    .build()
            }
            Op::Write { offset, buf, dsync } => {
                let n = (buf.len() - done).min(MAX_SQE_BYTES);
                // SAFETY: `done < buf.len()`, so the pointer stays inside the allocation.
                let ptr = unsafe { buf.as_ptr().add(done) };
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(fd, ptr, n as u32)
                    .offset(*offset + done as u64)
                    .rw_flags(flags)
                    .build()
            }
            Op::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Fallocate { offset, len, mode } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        self.push_entry(&entry.user_data(idx as u64))
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let ptr = (&raw mut *self.wake_buf).cast::<u8>();
        let entry = opcode::Read::new(types::Fd(self.shared.wake_fd.as_raw_fd()), ptr, 8)
            .build()
            .user_data(WAKE_TOKEN);
        self.push_entry(&entry)?;
        self.wake_armed = true;
        Ok(())
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer and descriptor an entry refers to outlives its completion:
            // op buffers are owned by `self.slots` until their CQE is reaped (and are leaked,
            // never freed, if the thread stops with operations in flight), `wake_buf` is owned
            // by `self` under the same rule, the file is kept open by `self.file`, and the
            // eventfd by `self.shared`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => self.reap()?,
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut result = Ok(());
        for &(user_data, res) in &cqes {
            if let Err(e) = self.complete(user_data, res) {
                result = Err(e);
            }
        }
        cqes.clear();
        self.cqes = cqes;
        result
    }

    fn complete(&mut self, user_data: u64, res: i32) -> io::Result<()> {
        if user_data == WAKE_TOKEN {
            self.wake_armed = false;
            if res < 0 && -res != libc::EINTR && -res != libc::EAGAIN {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(-res),
                    "io_uring wake-up read failed"
                );
            }
            return if self.shutting_down {
                Ok(())
            } else {
                self.arm_wake()
            };
        }
        let idx = user_data as usize;
        let Some(inflight) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            tracing::error!(user_data, "io_uring completion for an unknown operation");
            return Ok(());
        };
        if res < 0 {
            let errno = -res;
            if errno == libc::EINTR || errno == libc::EAGAIN {
                return self.push(idx);
            }
            self.finish(idx, Err(io::Error::from_raw_os_error(errno)));
            return Ok(());
        }
        let n = res as usize;
        match &inflight.req.op {
            Op::Read { buf, .. } | Op::Write { buf, .. } => {
                let len = buf.len();
                if n == 0 {
                    let err = if matches!(inflight.req.op, Op::Read { .. }) {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
                    } else {
                        io::Error::from(io::ErrorKind::WriteZero)
                    };
                    self.finish(idx, Err(err));
                    return Ok(());
                }
                inflight.done += n;
                if inflight.done < len {
                    return self.push(idx);
                }
                self.finish(idx, Ok(()));
            }
            Op::Fdatasync | Op::Fallocate { .. } => self.finish(idx, Ok(())),
        }
        Ok(())
    }

    /// Frees slot `idx` and replies to its requester.
    fn finish(&mut self, idx: usize, result: io::Result<()>) {
        let Some(inflight) = self.slots[idx].take() else {
            return;
        };
        self.free.push(idx);
        self.in_flight -= 1;
        let Request { op, reply } = inflight.req;
        let result = result.map(|()| match op {
            Op::Read { buf, .. } => Some(buf),
            _ => None,
        });
        // The requester may have gone away (its future dropped); nothing to do then.
        let _ = reply.send(result);
    }

    /// The ring is unusable: fail every queued and in-flight request and stop. Buffers the
    /// kernel may still touch are leaked rather than freed (see `Drop`).
    fn fail_everything(&mut self, err: io::Error) {
        tracing::error!(error = %err, "io_uring thread failed; device I/O will report it gone");
        for slot in &mut self.slots {
            if let Some(inflight) = slot.take() {
                let Request { op, reply } = inflight.req;
                if let Op::Read { buf, .. } | Op::Write { buf, .. } = op {
                    std::mem::forget(buf);
                }
                let _ = reply.send(Err(io::Error::other(format!("io_uring failed: {err}"))));
            }
        }
        self.in_flight = 0;
        while let Ok(req) = self.rx.try_recv() {
            let _ = req
                .reply
                .send(Err(io::Error::other(format!("io_uring failed: {err}"))));
        }
        if self.wake_armed {
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            self.wake_armed = false;
        }
    }
}

impl Drop for RingThread {
    fn drop(&mut self) {
        // Reached with operations in flight only on a panic: the kernel may still write into
        // their buffers after the ring is closed, so leak them instead of freeing.
        if self.in_flight > 0 {
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        if self.wake_armed {
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    /// A pipe as (read end, write end) files.
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a live array of two ints for the kernel to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_request_does_not_wait_behind_a_slow_one() {
        let (rd, mut wr) = pipe();
        let engine = Arc::new(UringEngine::start(Arc::new(rd), 8, "pipe".into()).unwrap());
        // A read from an empty pipe stays in flight until someone writes.
        let slow = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                engine
                    .run(Op::Read {
                        offset: 0,
                        buf: IoBuf::zeroed(5),
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!slow.is_finished());
        // An unrelated operation submitted afterwards completes right away (fdatasync on a
        // pipe fails with EINVAL, which is all we need: a prompt completion).
        let fast = tokio::time::timeout(Duration::from_secs(5), engine.run(Op::Fdatasync)).await;
        assert!(fast.is_ok(), "second request was stuck behind the first");
        assert!(!slow.is_finished());
        wr.write_all(b"hello").unwrap();
        let buf = tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf.unwrap().unwrap()[..], b"hello");
    }
}
