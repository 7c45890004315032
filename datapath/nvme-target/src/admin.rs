//! Admin commands: Identify, Get Log Page, Set/Get Features, Asynchronous Event Request,
//! Keep Alive and Abort, plus the fabrics Property commands on the admin queue. Both I/O and
//! discovery controllers come through here; each command checks which it serves.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferrite_block::IoBuf;
use ferrite_protocol::command::{
    FeaturesCommand, GetLogPageCommand, IdentifyCommand, Sqe, admin_opcode, fctype, feature,
};
use ferrite_protocol::identify::{
    ControllerType, IDENTIFY_LEN, IdentifyController, IdentifyNamespace, cns,
    encode_active_ns_list, encode_cs_independent_namespace, encode_ns_descriptors, oncs,
};
use ferrite_protocol::log_page::{self, ERROR_ENTRY_LEN, SmartLog, lid};
use ferrite_protocol::status::Status;

use crate::connection::{Outcome, QueueCtx, Reply};
use crate::controller::{AEC_NS_ATTR, AER_LIMIT, Controller, ControllerKind, ERROR_LOG_ENTRIES};
use crate::discovery;
use crate::fabrics;
use crate::subsystem::MAX_NSID;

const MODEL: &str = "Ferrite";
const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
/// Namespace multi-path I/O and sharing: may be attached to several controllers.
const NMIC_SHARED: u8 = 1;
/// Deallocated blocks read as zeroes; Write Zeroes honours DEAC.
const DLFEAT: u8 = 0x09;

/// Executes an admin-queue command.
pub(crate) async fn execute(ctx: &Arc<QueueCtx>, sqe: &Sqe, data: Option<IoBuf>) -> Outcome {
    let c = &ctx.controller;
    if sqe.opcode == admin_opcode::FABRICS {
        return match sqe.fctype() {
            fctype::PROPERTY_GET => fabrics::property_get(c, &ctx.shared, sqe).into(),
            fctype::PROPERTY_SET => fabrics::property_set(c, sqe).await.into(),
            fctype::CONNECT => Status::COMMAND_SEQUENCE_ERROR.into(),
            _ => Status::INVALID_OPCODE.into(),
        };
    }
    if !c.is_ready() {
        return Status::COMMAND_SEQUENCE_ERROR.into();
    }
    if sqe.fuse() != 0 {
        return Status::INVALID_FIELD.into();
    }
    let _ = data;
    match sqe.opcode {
        admin_opcode::IDENTIFY => identify(ctx, sqe).into(),
        admin_opcode::GET_LOG_PAGE => get_log_page(ctx, sqe).into(),
        admin_opcode::SET_FEATURES => set_features(ctx, sqe).into(),
        admin_opcode::GET_FEATURES => get_features(ctx, sqe).into(),
        admin_opcode::ASYNC_EVENT_REQUEST => match c.park_aer(sqe.cid) {
            Ok(()) => Outcome::Parked,
            Err(s) => s.into(),
        },
        admin_opcode::KEEP_ALIVE => Reply::ok().into(),
        // Commands complete quickly; none is ever aborted (dword 0 bit 0: not aborted).
        admin_opcode::ABORT => Reply::result(1).into(),
        _ => Status::INVALID_OPCODE.into(),
    }
}

fn identify_controller(ctx: &QueueCtx) -> IdentifyController {
    let c = &ctx.controller;
    let o = &ctx.shared.options;
    let io = c.kind == ControllerKind::Io;
    IdentifyController {
        vid: 0,
        ssvid: 0,
        serial: c
            .subsystem
            .as_ref()
            .map(|s| s.serial.clone())
            .unwrap_or_else(|| "ferrite-discovery".into()),
        model: MODEL.into(),
        firmware: FIRMWARE.into(),
        mdts: o.mdts(),
        cntlid: c.cntlid,
        version: fabrics::NVME_VERSION,
        oaes: if io { AEC_NS_ATTR } else { 0 },
        cntrltype: if io {
            ControllerType::Io
        } else {
            ControllerType::Discovery
        },
        acl: 3,
        aerl: (AER_LIMIT - 1) as u8,
        // Extended data for Get Log Page (offsets).
        lpa: 1 << 2,
        elpe: (ERROR_LOG_ENTRIES - 1) as u8,
        kas: 1,
        maxcmd: o.max_queue_entries,
        nn: if io { MAX_NSID } else { 0 },
        oncs: if io {
            oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES
        } else {
            0
        },
        vwc: io,
        // SGLs supported; SGL offsets (in-capsule data) supported.
        sgls: 1 | (1 << 20),
        subnqn: c.subnqn.clone(),
        ioccsz: (64 + o.in_capsule_data) / 16,
        iorcsz: 1,
        msdbd: 1,
        cmic: if io { 0x3 } else { 0 },
    }
}

fn identify(ctx: &QueueCtx, sqe: &Sqe) -> Reply {
    let cmd = IdentifyCommand::from_sqe(sqe);
    let c = &ctx.controller;
    if cmd.cns == cns::CONTROLLER {
        return Reply::bytes(&identify_controller(ctx).encode());
    }
    let Some(sub) = &c.subsystem else {
        return Reply::status(Status::INVALID_FIELD);
    };
    let nsid_valid = cmd.nsid >= 1 && cmd.nsid <= MAX_NSID;
    match cmd.cns {
        cns::NAMESPACE => {
            if !nsid_valid {
                return Reply::status(Status::INVALID_NAMESPACE);
            }
            match sub.namespace_by_id(cmd.nsid) {
                // An inactive namespace ID gets a zero-filled structure.
                None => Reply::data(IoBuf::zeroed(IDENTIFY_LEN)),
                Some(ns) => {
                    let dev = &ns.device;
                    let n = IdentifyNamespace {
                        nsze: dev.num_blocks(),
                        ncap: dev.num_blocks(),
                        nuse: dev.num_blocks(),
                        nsfeat: 0,
                        nmic: NMIC_SHARED,
                        dlfeat: DLFEAT,
                        nguid: ns.nguid,
                        eui64: [0; 8],
                        lbads: dev.block_size().trailing_zeros() as u8,
                    };
                    Reply::bytes(&n.encode())
                }
            }
        }
        cns::ACTIVE_NS_LIST => {
            if cmd.nsid >= 0xFFFF_FFFE {
                return Reply::status(Status::INVALID_NAMESPACE);
            }
            let ids = sub.namespaces().iter().map(|n| n.nsid).collect::<Vec<_>>();
            Reply::bytes(&encode_active_ns_list(ids, cmd.nsid))
        }
        cns::NS_DESCRIPTORS | cns::CS_INDEPENDENT_NAMESPACE | cns::CS_NAMESPACE => {
            let Some(ns) = sub.namespace_by_id(cmd.nsid) else {
                return Reply::status(Status::INVALID_NAMESPACE);
            };
            match cmd.cns {
                cns::NS_DESCRIPTORS => Reply::bytes(&encode_ns_descriptors(&ns.nguid, &ns.uuid)),
                cns::CS_INDEPENDENT_NAMESPACE => {
                    Reply::bytes(&encode_cs_independent_namespace(NMIC_SHARED))
                }
                // NVM command set specific namespace data: nothing beyond the defaults.
                _ if cmd.csi == 0 => Reply::data(IoBuf::zeroed(IDENTIFY_LEN)),
                _ => Reply::status(Status::INVALID_FIELD),
            }
        }
        // NVM command set specific controller data: no extra limits (all zero).
        cns::CS_CONTROLLER if cmd.csi == 0 => Reply::data(IoBuf::zeroed(IDENTIFY_LEN)),
        _ => Reply::status(Status::INVALID_FIELD),
    }
}

fn get_log_page(ctx: &QueueCtx, sqe: &Sqe) -> Reply {
    let cmd = GetLogPageCommand::from_sqe(sqe);
    let c = &ctx.controller;
    let len = cmd.len.min(u64::from(sqe.dptr.length));
    if len == 0 || len > u64::from(ctx.shared.options.max_data_transfer) {
        return Reply::status(Status::INVALID_FIELD);
    }
    let page = match (c.kind, cmd.lid) {
        (ControllerKind::Discovery, lid::DISCOVERY) => discovery::log_page(ctx),
        (ControllerKind::Io, lid::ERROR_INFO) => {
            let st = c.state();
            let mut page = Vec::with_capacity(ERROR_LOG_ENTRIES * ERROR_ENTRY_LEN);
            for e in &st.errors {
                e.encode(&mut page);
            }
            page.resize(ERROR_LOG_ENTRIES * ERROR_ENTRY_LEN, 0);
            page
        }
        (ControllerKind::Io, lid::SMART_HEALTH) => {
            if sqe.nsid != 0 && sqe.nsid != 0xFFFF_FFFF {
                return Reply::status(Status::INVALID_FIELD);
            }
            smart_log(c)
        }
        (ControllerKind::Io, lid::FIRMWARE_SLOT) => log_page::encode_firmware_slot(FIRMWARE),
        (ControllerKind::Io, lid::CHANGED_NS_LIST) => {
            log_page::encode_changed_ns_list(&c.take_changed_namespaces(cmd.rae))
        }
        _ => return Reply::status(Status::INVALID_LOG_PAGE),
    };
    match log_page::window(&page, cmd.offset, len) {
        Some(w) => Reply::bytes(&w),
        None => Reply::status(Status::INVALID_FIELD),
    }
}

fn smart_log(c: &Controller) -> Vec<u8> {
    let k = &c.counters;
    let st = c.state();
    SmartLog {
        data_units_read: SmartLog::data_units(k.read_bytes.load(Ordering::Relaxed)),
        data_units_written: SmartLog::data_units(k.write_bytes.load(Ordering::Relaxed)),
        host_reads: u128::from(k.read_cmds.load(Ordering::Relaxed)),
        host_writes: u128::from(k.write_cmds.load(Ordering::Relaxed)),
        error_log_entries: u128::from(st.error_count),
        ..Default::default()
    }
    .encode()
}

fn set_features(ctx: &QueueCtx, sqe: &Sqe) -> Reply {
    let f = FeaturesCommand::from_sqe(sqe);
    let c = &ctx.controller;
    if f.save {
        return Reply::status(Status::FEATURE_NOT_SAVEABLE);
    }
    let io = c.kind == ControllerKind::Io;
    let mut st = c.state();
    match f.fid {
        feature::KEEP_ALIVE_TIMER => st.kato_ms = f.value,
        feature::ASYNC_EVENT_CONFIG => {
            st.features.async_event_config = f.value & if io { AEC_NS_ATTR } else { 0 }
        }
        feature::ARBITRATION if io => st.features.arbitration = f.value,
        feature::POWER_MANAGEMENT if io => {
            if f.value & 0x1f != 0 {
                return Reply::status(Status::INVALID_FIELD);
            }
        }
        feature::TEMPERATURE_THRESHOLD if io => {
            // Only the composite temperature's over-temperature threshold exists.
            if (f.value >> 16) & 0x3f != 0 {
                return Reply::status(Status::INVALID_FIELD);
            }
            st.features.temperature_threshold = f.value & 0xffff;
        }
        feature::ERROR_RECOVERY if io => st.features.error_recovery = f.value,
        feature::VOLATILE_WRITE_CACHE if io => st.features.volatile_write_cache = f.value & 1 != 0,
        feature::INTERRUPT_COALESCING if io => st.features.interrupt_coalescing = f.value,
        feature::WRITE_ATOMICITY if io => st.features.write_atomicity = f.value,
        feature::NUMBER_OF_QUEUES if io => {
            let (nsqr, ncqr) = (f.value & 0xffff, f.value >> 16);
            if nsqr == 0xffff || ncqr == 0xffff {
                return Reply::status(Status::INVALID_FIELD);
            }
            if !st.io_queues.is_empty() {
                return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            let max = u32::from(ctx.shared.options.max_io_queues);
            let granted = (nsqr.max(ncqr) + 1).min(max);
            st.granted_io_queues = Some(granted as u16);
            return Reply::result(u64::from((granted - 1) | ((granted - 1) << 16)));
        }
        _ => return Reply::status(Status::INVALID_FIELD),
    }
    drop(st);
    if f.fid == feature::ASYNC_EVENT_CONFIG {
        // Events that waited for the host to enable them go out now.
        c.namespace_events_enabled();
    }
    Reply::ok()
}

fn get_features(ctx: &QueueCtx, sqe: &Sqe) -> Reply {
    let f = FeaturesCommand::from_sqe(sqe);
    let c = &ctx.controller;
    let io = c.kind == ControllerKind::Io;
    let max_q = u32::from(ctx.shared.options.max_io_queues);
    let supported = matches!(
        f.fid,
        feature::KEEP_ALIVE_TIMER | feature::ASYNC_EVENT_CONFIG
    ) || (io
        && matches!(
            f.fid,
            feature::ARBITRATION
                | feature::POWER_MANAGEMENT
                | feature::TEMPERATURE_THRESHOLD
                | feature::ERROR_RECOVERY
                | feature::VOLATILE_WRITE_CACHE
                | feature::NUMBER_OF_QUEUES
                | feature::INTERRUPT_COALESCING
                | feature::WRITE_ATOMICITY
        ));
    if !supported {
        return Reply::status(Status::INVALID_FIELD);
    }
    match f.select {
        // Supported capabilities: changeable, not saveable, not namespace specific.
        3 => return Reply::result(1 << 2),
        0..=2 => {}
        _ => return Reply::status(Status::INVALID_FIELD),
    }
    let current = f.select == 0;
    let st = c.state();
    let d = crate::controller::Features::default();
    let feats = if current { &st.features } else { &d };
    let v = match f.fid {
        feature::KEEP_ALIVE_TIMER => {
            if current {
                st.kato_ms
            } else {
                0
            }
        }
        feature::ASYNC_EVENT_CONFIG => feats.async_event_config,
        feature::ARBITRATION => feats.arbitration,
        feature::POWER_MANAGEMENT => 0,
        feature::TEMPERATURE_THRESHOLD => feats.temperature_threshold,
        feature::ERROR_RECOVERY => feats.error_recovery,
        feature::VOLATILE_WRITE_CACHE => u32::from(feats.volatile_write_cache),
        feature::NUMBER_OF_QUEUES => {
            let g = if current {
                st.granted_io_queues.map(u32::from).unwrap_or(max_q)
            } else {
                max_q
            };
            (g - 1) | ((g - 1) << 16)
        }
        feature::INTERRUPT_COALESCING => feats.interrupt_coalescing,
        feature::WRITE_ATOMICITY => feats.write_atomicity,
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    Reply::result(u64::from(v))
}
