//! Fabrics commands: Connect (creating a controller on the admin queue, or binding an I/O
//! queue to an existing one, with host access checks) and Property Get/Set.

use std::sync::Arc;

use ferrite_protocol::command::Sqe;
use ferrite_protocol::fabrics::{
    CNTLID_DYNAMIC, Cap, ConnectCommand, ConnectData, PropertyCommand, connect_data_offset,
    connect_invalid_param_result, property, version,
};
use ferrite_protocol::nqn::{self, DISCOVERY_NQN};
use ferrite_protocol::status::Status;
use tokio::sync::mpsc;
use tracing::warn;

use crate::connection::{Outgoing, Reply};
use crate::controller::{Controller, ControllerKind};
use crate::registry::Shared;

/// NVMe version Ferrite's controllers report.
pub const NVME_VERSION: u32 = version(1, 3, 0);
/// CAP.TO: worst-case time to ready, in 500 ms units.
const CAP_TIMEOUT: u8 = 15;
/// SQE offsets of Connect fields, for "invalid parameter" results.
const SQE_OFFSET_QID: u16 = 42;
const SQE_OFFSET_SQSIZE: u16 = 44;

/// A queue bound by a successful Connect.
pub(crate) struct Bound {
    pub controller: Arc<Controller>,
    pub qid: u16,
    /// Submission queue entries (1-based).
    pub sqsize: u16,
    pub sq_flow_disabled: bool,
}

/// Why a Connect was refused.
pub(crate) struct Rejection {
    pub status: Status,
    pub result: u32,
    pub reason: String,
}

fn invalid(in_data: bool, offset: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status: Status::CONNECT_INVALID_PARAMETERS,
        result: connect_invalid_param_result(in_data, offset),
        reason: reason.into(),
    }
}

/// Handles a Connect on an unbound queue.
pub(crate) fn connect(
    shared: &Arc<Shared>,
    sqe: &Sqe,
    data: Option<&[u8]>,
    admin_tx: mpsc::Sender<Outgoing>,
) -> Result<Bound, Rejection> {
    let cmd = ConnectCommand::from_sqe(sqe);
    if cmd.recfmt != 0 {
        return Err(Rejection {
            status: Status::CONNECT_INCOMPATIBLE_FORMAT,
            result: 0,
            reason: format!("record format {}", cmd.recfmt),
        });
    }
    let Some(d) = data.and_then(ConnectData::decode) else {
        return Err(invalid(
            true,
            0,
            "Connect without its 1 KiB of data in the capsule",
        ));
    };
    if let Err(e) = nqn::validate(&d.hostnqn) {
        return Err(invalid(
            true,
            connect_data_offset::HOSTNQN,
            format!("host NQN: {e}"),
        ));
    }
    let o = &shared.options;
    let max_entries = if cmd.qid == 0 {
        o.max_admin_queue_entries
    } else {
        o.max_queue_entries
    };
    let entries = u32::from(cmd.sqsize) + 1;
    if cmd.sqsize == 0 || entries > u32::from(max_entries) {
        return Err(invalid(
            false,
            SQE_OFFSET_SQSIZE,
            format!("sqsize {} (max {})", cmd.sqsize, max_entries - 1),
        ));
    }
    let sq_flow_disabled = cmd.sq_flow_control_disabled();

    if d.subnqn == DISCOVERY_NQN {
        if cmd.qid != 0 {
            return Err(invalid(
                false,
                SQE_OFFSET_QID,
                "the discovery controller has no I/O queues",
            ));
        }
        let tx = admin_tx.clone();
        let controller = shared.register_discovery(|cntlid| {
            Controller::new(
                cntlid,
                ControllerKind::Discovery,
                None,
                d.subnqn.clone(),
                d.hostnqn.clone(),
                d.hostid,
                cmd.kato,
                tx,
            )
        });
        return Ok(Bound {
            controller,
            qid: 0,
            sqsize: entries as u16,
            sq_flow_disabled,
        });
    }

    let Some(sub) = shared.subsystem(&d.subnqn) else {
        return Err(invalid(
            true,
            connect_data_offset::SUBNQN,
            format!("unknown subsystem {:?}", d.subnqn),
        ));
    };
    if !sub.allows(&d.hostnqn) {
        return Err(Rejection {
            status: Status::CONNECT_INVALID_HOST,
            result: 0,
            reason: format!("host {:?} is not allowed on {}", d.hostnqn, d.subnqn),
        });
    }
    if cmd.qid == 0 {
        if d.cntlid != CNTLID_DYNAMIC {
            return Err(invalid(
                true,
                connect_data_offset::CNTLID,
                "static controller IDs are not supported",
            ));
        }
        let sub2 = sub.clone();
        let controller = sub
            .register_controller(|cntlid| {
                Controller::new(
                    cntlid,
                    ControllerKind::Io,
                    Some(sub2),
                    d.subnqn.clone(),
                    d.hostnqn.clone(),
                    d.hostid,
                    cmd.kato,
                    admin_tx,
                )
            })
            .ok_or_else(|| Rejection {
                status: Status::CONNECT_CONTROLLER_BUSY,
                result: 0,
                reason: "no free controller ID".into(),
            })?;
        return Ok(Bound {
            controller,
            qid: 0,
            sqsize: entries as u16,
            sq_flow_disabled,
        });
    }

    let Some(controller) = sub.controller(d.cntlid) else {
        return Err(invalid(
            true,
            connect_data_offset::CNTLID,
            format!("no controller {} on {}", d.cntlid, d.subnqn),
        ));
    };
    if controller.hostnqn != d.hostnqn || controller.hostid != d.hostid {
        return Err(invalid(
            true,
            connect_data_offset::HOSTNQN,
            "host NQN/ID differ from the admin queue's",
        ));
    }
    if let Err(reason) = controller.bind_io_queue(cmd.qid, o.max_io_queues) {
        if !controller.is_ready() {
            return Err(Rejection {
                status: Status::COMMAND_SEQUENCE_ERROR,
                result: 0,
                reason: reason.into(),
            });
        }
        return Err(invalid(
            false,
            SQE_OFFSET_QID,
            format!("qid {}: {reason}", cmd.qid),
        ));
    }
    Ok(Bound {
        controller,
        qid: cmd.qid,
        sqsize: entries as u16,
        sq_flow_disabled,
    })
}

/// Property Get.
pub(crate) fn property_get(c: &Controller, shared: &Shared, sqe: &Sqe) -> Reply {
    let p = PropertyCommand::from_sqe(sqe);
    // Discovery controllers report the same queue limit: hosts size their admin queue by
    // other means and would otherwise warn about clamping.
    let mqes = shared.options.max_queue_entries - 1;
    let st = c.state();
    let value = match (p.offset, p.size) {
        (property::CAP, 8) => Cap {
            mqes,
            timeout: CAP_TIMEOUT,
        }
        .to_u64(),
        (property::VS, 4) => u64::from(NVME_VERSION),
        (property::CC, 4) => u64::from(st.cc),
        (property::CSTS, 4) => u64::from(st.csts),
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    Reply::result(value)
}

/// Property Set. Only CC is writable; a shutdown notification flushes every namespace before
/// the controller reports shutdown complete.
pub(crate) async fn property_set(c: &Controller, sqe: &Sqe) -> Reply {
    let p = PropertyCommand::from_sqe(sqe);
    if p.offset != property::CC || p.size != 4 {
        return Reply::status(Status::INVALID_FIELD);
    }
    if c.set_cc(p.value as u32) {
        if let Some(sub) = &c.subsystem {
            for ns in sub.namespaces() {
                if let Err(e) = ns.device.flush().await {
                    warn!(nsid = ns.nsid, error = %e, "flush at controller shutdown failed");
                }
            }
        }
        c.shutdown_complete();
    }
    Reply::ok()
}
