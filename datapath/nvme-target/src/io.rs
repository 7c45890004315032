//! I/O commands of the NVM command set: Read, Write, Compare, Flush, Write Zeroes and
//! Dataset Management (deallocate), executed against the namespace's `BlockDevice`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ferrite_block::{BlockDevice, BlockError, IoBuf};
use ferrite_protocol::command::{
    DsmCommand, DsmRange, RwCommand, Sqe, WriteZeroesCommand, admin_opcode, io_opcode,
};
use ferrite_protocol::status::Status;
use tracing::warn;

use crate::connection::{Outcome, QueueCtx, Reply};

/// Maps a block-layer error to the NVMe status the host sees.
fn status_of(e: &BlockError, write: bool) -> Status {
    match e {
        BlockError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        BlockError::Misaligned { .. } | BlockError::InvalidSpec(_) => Status::INVALID_FIELD,
        BlockError::NoSpace => Status::CAPACITY_EXCEEDED,
        BlockError::Gone(_) => Status::NAMESPACE_NOT_READY,
        BlockError::Io { .. } => {
            if write {
                Status::WRITE_FAULT
            } else {
                Status::UNRECOVERED_READ_ERROR
            }
        }
        #[allow(unreachable_patterns)]
        _ => Status::INTERNAL_ERROR,
    }
}

fn in_range(dev: &dyn BlockDevice, slba: u64, nlb: u64) -> bool {
    slba.checked_add(nlb)
        .is_some_and(|end| end <= dev.num_blocks())
}

/// Executes an I/O-queue command.
pub(crate) async fn execute(ctx: &Arc<QueueCtx>, sqe: &Sqe, data: Option<IoBuf>) -> Outcome {
    let c = &ctx.controller;
    let Some(sub) = &c.subsystem else {
        return Status::INVALID_OPCODE.into();
    };
    if sqe.opcode == admin_opcode::FABRICS {
        return Status::COMMAND_SEQUENCE_ERROR.into();
    }
    if sqe.fuse() != 0 {
        return Status::INVALID_FIELD.into();
    }
    if sqe.opcode == io_opcode::FLUSH && sqe.nsid == 0xFFFF_FFFF {
        for ns in sub.namespaces() {
            if let Err(e) = ns.device.flush().await {
                warn!(nsid = ns.nsid, error = %e, "flush failed");
                return status_of(&e, true).into();
            }
        }
        return Reply::ok().into();
    }
    let Some(ns) = sub.namespace_by_id(sqe.nsid) else {
        return Status::INVALID_NAMESPACE.into();
    };
    let dev: &dyn BlockDevice = ns.device.as_ref();
    let bs = u64::from(dev.block_size());
    let mdts = u64::from(ctx.shared.options.max_data_transfer);
    let wce = c.state().features.volatile_write_cache;
    let k = &c.counters;

    let started = Instant::now();
    let st = &ns.stats;
    let reply = match sqe.opcode {
        io_opcode::READ | io_opcode::WRITE | io_opcode::COMPARE => {
            let rw = RwCommand::from_sqe(sqe);
            let bytes = u64::from(rw.nlb) * bs;
            if bytes > mdts {
                return Status::INVALID_FIELD.into();
            }
            if bytes != u64::from(sqe.dptr.length) {
                return Status::DATA_SGL_LENGTH_INVALID.into();
            }
            if !in_range(dev, rw.slba, u64::from(rw.nlb)) {
                return Status::LBA_OUT_OF_RANGE.into();
            }
            match sqe.opcode {
                io_opcode::READ => match dev.read(rw.slba, rw.nlb).await {
                    Ok(buf) => {
                        k.read_cmds.fetch_add(1, Ordering::Relaxed);
                        k.read_bytes.fetch_add(bytes, Ordering::Relaxed);
                        st.read_ops.fetch_add(1, Ordering::Relaxed);
                        st.read_bytes.fetch_add(bytes, Ordering::Relaxed);
                        st.read_latency.observe(started.elapsed());
                        Reply::data(buf)
                    }
                    Err(e) => io_failed(&e, "read", false),
                },
                io_opcode::WRITE => {
                    let Some(buf) = data.filter(|d| d.len() as u64 == bytes) else {
                        return Status::DATA_SGL_LENGTH_INVALID.into();
                    };
                    // Without a volatile write cache every write is durable when completed.
                    match dev.write(rw.slba, buf, rw.fua || !wce).await {
                        Ok(()) => {
                            k.write_cmds.fetch_add(1, Ordering::Relaxed);
                            k.write_bytes.fetch_add(bytes, Ordering::Relaxed);
                            st.write_ops.fetch_add(1, Ordering::Relaxed);
                            st.write_bytes.fetch_add(bytes, Ordering::Relaxed);
                            st.write_latency.observe(started.elapsed());
                            Reply::ok()
                        }
                        Err(e) => io_failed(&e, "write", true),
                    }
                }
                _ => {
                    let Some(expected) = data.filter(|d| d.len() as u64 == bytes) else {
                        return Status::DATA_SGL_LENGTH_INVALID.into();
                    };
                    match dev.read(rw.slba, rw.nlb).await {
                        Ok(actual) if actual[..] == expected[..] => Reply::ok(),
                        Ok(_) => Reply::status(Status::COMPARE_FAILURE),
                        Err(e) => io_failed(&e, "compare", false),
                    }
                }
            }
        }
        io_opcode::FLUSH => match dev.flush().await {
            Ok(()) => {
                st.flush_ops.fetch_add(1, Ordering::Relaxed);
                Reply::ok()
            }
            Err(e) => io_failed(&e, "flush", true),
        },
        io_opcode::WRITE_ZEROES => {
            let wz = WriteZeroesCommand::from_sqe(sqe);
            if !in_range(dev, wz.slba, u64::from(wz.nlb)) {
                return Status::LBA_OUT_OF_RANGE.into();
            }
            let mut r = dev
                .write_zeroes(wz.slba, u64::from(wz.nlb), wz.deallocate)
                .await;
            if r.is_ok() && (wz.fua || !wce) {
                r = dev.flush().await;
            }
            match r {
                Ok(()) => Reply::ok(),
                Err(e) => io_failed(&e, "write zeroes", true),
            }
        }
        io_opcode::DATASET_MANAGEMENT => {
            let dsm = DsmCommand::from_sqe(sqe);
            let Some(ranges) = data
                .as_deref()
                .and_then(|d| DsmRange::decode_all(d, dsm.nr))
            else {
                return Status::DATA_SGL_LENGTH_INVALID.into();
            };
            if !dsm.deallocate {
                // Only attributes (hints): nothing to do.
                return Reply::ok().into();
            }
            if ranges
                .iter()
                .any(|r| !in_range(dev, r.slba, u64::from(r.nlb)))
            {
                return Status::LBA_OUT_OF_RANGE.into();
            }
            let mut reply = Reply::ok();
            for r in ranges.iter().filter(|r| r.nlb > 0) {
                if let Err(e) = dev.deallocate(r.slba, u64::from(r.nlb)).await {
                    reply = io_failed(&e, "deallocate", true);
                    break;
                }
            }
            reply
        }
        _ => Reply::status(Status::INVALID_OPCODE),
    };
    if !reply.status.is_success() {
        st.errors.fetch_add(1, Ordering::Relaxed);
    }
    reply.into()
}

fn io_failed(e: &BlockError, op: &str, write: bool) -> Reply {
    warn!(op, error = %e, "I/O failed");
    Reply::status(status_of(e, write))
}
