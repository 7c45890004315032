//! Admin and fabrics commands: Fabrics Connect, Property Get/Set, CSTS polling, Identify,
//! Get Log Page, Get/Set Features (Number of Queues), Keep Alive and its periodic task, and
//! the raw command escapes.

use std::sync::Weak;
use std::time::Duration;

use ferrite_block::IoBuf;
use ferrite_protocol::auth::{CONNECT_AUTHREQ_ASCR, CONNECT_AUTHREQ_ATR};
use ferrite_protocol::command::{GetLogPageCommand, admin_opcode, feature};
use ferrite_protocol::fabrics::{
    ConnectCommand, ConnectData, PropertyCommand, connect_data_offset, csts, property,
};
use ferrite_protocol::identify::{IDENTIFY_LEN, IdentifyNamespace, cns};
use ferrite_protocol::{Cqe, Sqe, Status};
use tracing::{info, warn};

use crate::controller::{Controller, NamespaceGeometry, lock};
use crate::error::{HostError, check_status};
use crate::options::HostOptions;
use crate::queue::{Completion, OutData, Queue, Request};

/// Active namespace list entries per Identify page.
const NS_LIST_ENTRIES: usize = IDENTIFY_LEN / 4;

impl Controller {
    /// Identify Namespace for `nsid` (also refreshes the cached geometry).
    pub async fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, HostError> {
        let data = admin_data_in(
            &self.admin,
            "identify namespace",
            identify_sqe(cns::NAMESPACE, nsid),
            IDENTIFY_LEN,
        )
        .await?;
        let ns = IdentifyNamespace::decode(&data)
            .ok_or_else(|| HostError::InvalidResponse("short Identify Namespace data".into()))?;
        if ns.nsze > 0 && (9..=16).contains(&ns.lbads) {
            let g = NamespaceGeometry {
                block_size: 1 << ns.lbads,
                num_blocks: ns.nsze,
            };
            lock(&self.namespaces).insert(nsid, g);
        }
        Ok(ns)
    }

    /// Block size and capacity of `nsid` (cached after the first Identify Namespace).
    pub async fn namespace_geometry(&self, nsid: u32) -> Result<NamespaceGeometry, HostError> {
        if let Some(g) = lock(&self.namespaces).get(&nsid) {
            return Ok(*g);
        }
        let ns = self.identify_namespace(nsid).await?;
        lock(&self.namespaces).get(&nsid).copied().ok_or_else(|| {
            HostError::InvalidResponse(format!(
                "namespace {nsid} is not usable: NSZE {} LBADS {}",
                ns.nsze, ns.lbads
            ))
        })
    }

    /// The active namespace IDs, in increasing order.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>, HostError> {
        let mut out = Vec::new();
        let mut after = 0u32;
        loop {
            let data = admin_data_in(
                &self.admin,
                "identify active namespaces",
                identify_sqe(cns::ACTIVE_NS_LIST, after),
                IDENTIFY_LEN,
            )
            .await?;
            let page = ferrite_protocol::identify::decode_active_ns_list(&data);
            let full = page.len() == NS_LIST_ENTRIES;
            match page.last() {
                Some(&last) if full && last > after && last < 0xFFFF_FFFE => {
                    after = last;
                    out.extend(page);
                }
                _ => {
                    out.extend(page);
                    return Ok(out);
                }
            }
        }
    }

    /// Get Log Page: `len` bytes (a non-zero multiple of 4) from byte `offset` of log `lid`.
    /// Transfers larger than MDTS are split.
    pub async fn get_log_page(
        &self,
        lid: u8,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        if len == 0 || !len.is_multiple_of(4) {
            return Err(HostError::InvalidRequest(format!(
                "log page length {len} must be a non-zero multiple of 4"
            )));
        }
        if !offset.is_multiple_of(4) {
            return Err(HostError::InvalidRequest(format!(
                "log page offset {offset} must be a multiple of 4"
            )));
        }
        let step = (self.max_transfer / 4 * 4).max(4);
        let mut out = Vec::with_capacity(len);
        let mut done = 0usize;
        while done < len {
            let n = step.min(len - done);
            let mut sqe = Sqe {
                opcode: admin_opcode::GET_LOG_PAGE,
                ..Default::default()
            };
            GetLogPageCommand {
                lid,
                lsp: 0,
                rae: false,
                len: n as u64,
                offset: offset + done as u64,
            }
            .apply(&mut sqe);
            let data = admin_data_in(&self.admin, "get log page", sqe, n).await?;
            out.extend_from_slice(&data);
            done += n;
        }
        Ok(out)
    }

    /// Get Features (current value): returns completion dword 0.
    pub async fn get_features(&self, fid: u8, cdw11: u32) -> Result<u32, HostError> {
        let sqe = Sqe {
            opcode: admin_opcode::GET_FEATURES,
            cdw10: u32::from(fid),
            cdw11,
            ..Default::default()
        };
        let c = self
            .admin
            .submit(
                "get features",
                Request {
                    sqe,
                    data_out: None,
                    data_in_len: 0,
                },
            )
            .await?;
        check_status("get features", c.cqe.status)?;
        Ok(c.cqe.result)
    }

    /// Set Features: sets `fid` to `value` (dword 11), saving it if `save`; returns dword 0.
    pub async fn set_features(&self, fid: u8, value: u32, save: bool) -> Result<u32, HostError> {
        let cdw10 = u32::from(fid) | if save { 1 << 31 } else { 0 };
        let sqe = Sqe {
            opcode: admin_opcode::SET_FEATURES,
            cdw10,
            cdw11: value,
            ..Default::default()
        };
        let c = self
            .admin
            .submit(
                "set features",
                Request {
                    sqe,
                    data_out: None,
                    data_in_len: 0,
                },
            )
            .await?;
        check_status("set features", c.cqe.status)?;
        Ok(c.cqe.result)
    }

    /// Sends one Keep Alive.
    pub async fn keep_alive(&self) -> Result<(), HostError> {
        keep_alive_once(&self.admin).await
    }

    /// Stops the periodic keep-alive (for tests of the target's keep-alive timer, or before
    /// handing the association over).
    pub fn stop_keep_alive(&self) {
        if let Some(t) = lock(&self.keep_alive).take() {
            t.abort();
        }
    }

    /// Raw admin command. The queue sets the CID and the data pointer; any NVMe status is
    /// returned in the completion (errors are transport failures and timeouts only).
    pub async fn admin_command(
        &self,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        raw(&self.admin, sqe, data_out, data_in_len).await
    }

    /// Raw command on I/O queue `queue_index` (0-based), like [`Controller::admin_command`].
    pub async fn io_command(
        &self,
        queue_index: usize,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let q = self.io.get(queue_index).ok_or_else(|| {
            HostError::InvalidRequest(format!(
                "I/O queue {queue_index} does not exist ({} queues)",
                self.io.len()
            ))
        })?;
        raw(q, sqe, data_out, data_in_len).await
    }
}

pub(crate) fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
    Sqe {
        opcode: admin_opcode::IDENTIFY,
        nsid,
        cdw10: u32::from(cns),
        ..Default::default()
    }
}

/// Fabrics Connect on `q`, then in-band authentication if the controller asks for it;
/// returns the controller ID.
pub(crate) async fn fabrics_connect(
    q: &Queue,
    opts: &HostOptions,
    subnqn: &str,
    qid: u16,
    sqsize: u16,
    kato: u32,
    cntlid: u16,
) -> Result<u16, HostError> {
    let cattr = if opts.disable_sqflow {
        ConnectCommand::CATTR_DISABLE_SQ_FLOW
    } else {
        0
    };
    let sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize,
        cattr,
        kato,
    }
    .to_sqe(0);
    let data = ConnectData {
        hostid: opts.hostid,
        cntlid,
        subnqn: subnqn.to_string(),
        hostnqn: opts.hostnqn.clone(),
    }
    .encode();
    let c = q
        .submit(
            "connect",
            Request {
                sqe,
                data_out: Some(OutData::new(data)),
                data_in_len: 0,
            },
        )
        .await?;
    if !c.cqe.status.is_success() {
        return Err(HostError::ConnectRejected {
            status: c.cqe.status,
            detail: connect_detail(&c.cqe),
        });
    }
    let got = (c.cqe.result & 0xffff) as u16;
    if c.cqe.result & CONNECT_AUTHREQ_ASCR != 0 {
        return Err(HostError::Authentication {
            qid,
            reason: "the controller requires a secure channel, which is not supported".into(),
        });
    }
    if c.cqe.result & CONNECT_AUTHREQ_ATR != 0 {
        crate::auth::authenticate(q, opts, subnqn, qid).await?;
    }
    if qid != 0 && got != cntlid {
        warn!(
            qid,
            expected = cntlid,
            got,
            "I/O queue Connect returned another controller ID"
        );
    }
    Ok(if qid == 0 { got } else { cntlid })
}

/// Explains a failed Connect: which parameter was invalid, when the controller says.
fn connect_detail(cqe: &Cqe) -> String {
    if cqe.status == Status::CONNECT_INVALID_PARAMETERS {
        // IATTR (bit 16): the field is in the connect data; IPO (bits 15:0): its byte offset.
        let in_data = (cqe.result >> 16) & 1 != 0;
        let offset = (cqe.result & 0xffff) as u16;
        let field = match (in_data, offset) {
            (true, connect_data_offset::CNTLID) => "CNTLID",
            (true, connect_data_offset::SUBNQN) => "SUBNQN",
            (true, connect_data_offset::HOSTNQN) => "HOSTNQN",
            (true, 0) => "HOSTID",
            (true, _) => "a connect data field",
            (false, _) => "a connect command field",
        };
        format!(
            "invalid {field} (byte {offset} of the connect {})",
            if in_data { "data" } else { "command" }
        )
    } else {
        cqe.status.name().to_string()
    }
}

pub(crate) async fn property_get(q: &Queue, offset: u32, size: u8) -> Result<u64, HostError> {
    let sqe = PropertyCommand {
        size,
        offset,
        value: 0,
    }
    .to_sqe(0, false);
    let c = q
        .submit(
            "property get",
            Request {
                sqe,
                data_out: None,
                data_in_len: 0,
            },
        )
        .await?;
    check_status("property get", c.cqe.status)?;
    Ok(if size == 8 {
        c.cqe.result64()
    } else {
        u64::from(c.cqe.result)
    })
}

pub(crate) async fn property_set(q: &Queue, offset: u32, value: u64) -> Result<(), HostError> {
    let sqe = PropertyCommand {
        size: 4,
        offset,
        value,
    }
    .to_sqe(0, true);
    let c = q
        .submit(
            "property set",
            Request {
                sqe,
                data_out: None,
                data_in_len: 0,
            },
        )
        .await?;
    check_status("property set", c.cqe.status)
}

/// Polls CSTS until `done` holds, failing on CSTS.CFS or after `timeout`.
pub(crate) async fn wait_csts(
    q: &Queue,
    timeout: Duration,
    op: &'static str,
    done: impl Fn(u32) -> bool,
) -> Result<(), HostError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        let v = property_get(q, property::CSTS, 4).await? as u32;
        if v & csts::CFS != 0 {
            return Err(HostError::InvalidResponse(format!(
                "controller fatal status (CSTS {v:#x})"
            )));
        }
        if done(v) {
            return Ok(());
        }
        if tokio::time::Instant::now() + delay > deadline {
            return Err(HostError::Timeout(op));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

pub(crate) async fn admin_data_in(
    q: &Queue,
    op: &'static str,
    sqe: Sqe,
    len: usize,
) -> Result<IoBuf, HostError> {
    let c = q
        .submit(
            op,
            Request {
                sqe,
                data_out: None,
                data_in_len: len,
            },
        )
        .await?;
    check_status(op, c.cqe.status)?;
    Ok(c.data)
}

/// Set Features Number of Queues; returns how many I/O queues to create.
pub(crate) async fn set_number_of_queues(admin: &Queue, wanted: u16) -> Result<u16, HostError> {
    let n = u32::from(wanted - 1);
    let sqe = Sqe {
        opcode: admin_opcode::SET_FEATURES,
        cdw10: u32::from(feature::NUMBER_OF_QUEUES),
        cdw11: n | (n << 16),
        ..Default::default()
    };
    let c = admin
        .submit(
            "set number of queues",
            Request {
                sqe,
                data_out: None,
                data_in_len: 0,
            },
        )
        .await?;
    check_status("set number of queues", c.cqe.status)?;
    let nsqa = (c.cqe.result & 0xffff) as u16;
    let ncqa = (c.cqe.result >> 16) as u16;
    let granted = nsqa.min(ncqa).saturating_add(1);
    if granted < wanted {
        info!(wanted, granted, "controller granted fewer I/O queues");
    }
    Ok(wanted.min(granted))
}

async fn keep_alive_once(admin: &Queue) -> Result<(), HostError> {
    let sqe = Sqe {
        opcode: admin_opcode::KEEP_ALIVE,
        ..Default::default()
    };
    let c = admin
        .submit(
            "keep alive",
            Request {
                sqe,
                data_out: None,
                data_in_len: 0,
            },
        )
        .await?;
    check_status("keep alive", c.cqe.status)
}

/// Sends Keep Alive every `period` until the admin queue fails or goes away. A keep-alive
/// that times out means the association is dead (a silent network partition): every queue is
/// failed with the timeout so that callers stop waiting on it.
pub(crate) async fn keep_alive_task(admin: Weak<Queue>, io: Vec<Weak<Queue>>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(q) = admin.upgrade() else { return };
        if q.failure().is_some() {
            return;
        }
        match keep_alive_once(&q).await {
            Ok(()) => {}
            Err(e) if e.is_connection_error() => return,
            Err(e @ HostError::Timeout(_)) => {
                warn!(error = %e, "keep alive unanswered; failing the association");
                for q in io
                    .iter()
                    .filter_map(Weak::upgrade)
                    .chain(std::iter::once(q))
                {
                    q.fail(e.clone());
                }
                return;
            }
            Err(e) => warn!(error = %e, "keep alive failed"),
        }
    }
}

async fn raw(
    q: &Queue,
    sqe: Sqe,
    data_out: Option<&[u8]>,
    data_in_len: usize,
) -> Result<(Cqe, Vec<u8>), HostError> {
    let req = Request {
        sqe,
        data_out: data_out.map(OutData::copy_from),
        data_in_len,
    };
    let Completion { cqe, data } = q.submit("raw command", req).await?;
    Ok((cqe, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::CC_ENABLE;
    use ferrite_protocol::fabrics::cc;

    #[test]
    fn connect_details() {
        let mut cqe = Cqe::new(0, Status::CONNECT_INVALID_PARAMETERS);
        cqe.result = ferrite_protocol::fabrics::connect_invalid_param_result(
            true,
            connect_data_offset::SUBNQN,
        );
        assert_eq!(
            connect_detail(&cqe),
            "invalid SUBNQN (byte 256 of the connect data)"
        );
        cqe.result = ferrite_protocol::fabrics::connect_invalid_param_result(
            true,
            connect_data_offset::HOSTNQN,
        );
        assert!(connect_detail(&cqe).contains("HOSTNQN"));
        assert_eq!(
            connect_detail(&Cqe::new(0, Status::CONNECT_INVALID_HOST)),
            "connect: invalid host"
        );
    }

    #[test]
    fn cc_enable_value() {
        assert_eq!(CC_ENABLE, 0x0046_0001);
        assert_eq!(cc::shn(CC_ENABLE | (1 << cc::SHN_SHIFT)), 1);
    }
}
