//! The I/O engines behind [`crate::file::FileDevice`]: the operation vocabulary ([`Op`]), the
//! portable engine (positioned syscalls on tokio's blocking pool) and the dispatch between it
//! and the io_uring engine in [`crate::uring`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::uring::UringEngine;
use crate::{BlockError, IoBuf};

/// One operation on a file descriptor, at byte granularity. Buffers are owned by the
/// operation so they stay alive (and in place) until it completes.
#[derive(Debug)]
pub(crate) enum Op {
    /// Fill `buf` from `offset`; completes with the buffer.
    Read { offset: u64, buf: IoBuf },
    /// Write all of `buf` at `offset`; with `dsync`, durable on completion.
    Write {
        offset: u64,
        buf: IoBuf,
        dsync: bool,
    },
    /// `fdatasync`.
    Fdatasync,
    /// `fallocate(mode, offset, len)`.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

impl Op {
    /// The operation's name for errors and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Fdatasync => "fdatasync",
            Op::Fallocate { .. } => "fallocate",
        }
    }
}

/// Which engine executes operations for a device.
pub(crate) enum Engine {
    /// A dedicated io_uring thread.
    Uring(UringEngine),
    /// `pread`/`pwrite`/`fdatasync`/`fallocate` on tokio's blocking pool.
    Blocking,
}

impl Engine {
    /// Runs `op` on `file`; returns the buffer of a read, `None` otherwise.
    pub(crate) async fn run(&self, file: &Arc<File>, op: Op) -> Result<Option<IoBuf>, BlockError> {
        match self {
            Engine::Uring(ring) => ring.run(op).await,
            Engine::Blocking => {
                let name = op.name();
                let file = Arc::clone(file);
                tokio::task::spawn_blocking(move || run_blocking(&file, op))
                    .await
                    .map_err(|e| BlockError::Gone(format!("blocking {name} task failed: {e}")))?
                    .map_err(|e| BlockError::io(name, e))
            }
        }
    }
}

/// Executes `op` synchronously with positioned syscalls, retrying `EINTR` and continuing
/// short reads and writes.
pub(crate) fn run_blocking(file: &File, op: Op) -> io::Result<Option<IoBuf>> {
    match op {
        Op::Read { offset, mut buf } => {
            let mut done = 0usize;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("end of file at offset {}", offset + done as u64),
                        ));
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Some(buf))
        }
        Op::Write { offset, buf, dsync } => {
            let mut done = 0usize;
            while done < buf.len() {
                match file.write_at(&buf[done..], offset + done as u64) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if dsync {
                fdatasync(file)?;
            }
            Ok(None)
        }
        Op::Fdatasync => fdatasync(file).map(|()| None),
        Op::Fallocate { offset, len, mode } => fallocate(file, mode, offset, len).map(|()| None),
    }
}

fn fdatasync(file: &File) -> io::Result<()> {
    loop {
        match file.sync_data() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: plain syscall on a file descriptor that `file` keeps open; no memory is
        // passed to the kernel.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether an error from `fallocate` means "this mode is not supported here" (so a fallback
/// should be used) rather than a real failure.
pub(crate) fn is_unsupported(err: &BlockError) -> bool {
    match err {
        BlockError::Io { source, .. } => {
            matches!(
                source.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            )
        }
        _ => false,
    }
}
