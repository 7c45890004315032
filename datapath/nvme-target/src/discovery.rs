//! The discovery subsystem's log page: which subsystems, on which ports, a host may connect
//! to. A host sees only subsystems whose access list allows it.

use std::net::SocketAddr;

use ferrite_protocol::log_page::{
    ADRFAM_IPV4, ADRFAM_IPV6, DiscoveryEntry, TRTYPE_TCP, encode_discovery_log, subtype,
};
use ferrite_protocol::nqn::DISCOVERY_NQN;

use crate::connection::QueueCtx;

/// Transport requirement: SQ flow control may be disabled.
const TREQ_SQFLOW_DISABLE_OK: u8 = 0x04;

/// The address to advertise for a listener: its own, or, for a wildcard listener, the
/// address this host reached.
fn advertised(listener: SocketAddr, local: SocketAddr) -> SocketAddr {
    if listener.ip().is_unspecified() {
        SocketAddr::new(local.ip(), listener.port())
    } else {
        listener
    }
}

/// Builds the discovery log page for the host behind `ctx`.
pub(crate) fn log_page(ctx: &QueueCtx) -> Vec<u8> {
    let shared = &ctx.shared;
    let hostnqn = &ctx.controller.hostnqn;
    let listeners = shared.listeners();
    let mut entries = Vec::new();
    let entry = |portid: usize, addr: SocketAddr, st: u8, nqn: &str| DiscoveryEntry {
        trtype: TRTYPE_TCP,
        adrfam: if addr.is_ipv4() {
            ADRFAM_IPV4
        } else {
            ADRFAM_IPV6
        },
        subtype: st,
        treq: TREQ_SQFLOW_DISABLE_OK,
        portid: portid as u16,
        cntlid: 0xFFFF,
        asqsz: shared.options.max_admin_queue_entries,
        trsvcid: addr.port().to_string(),
        subnqn: nqn.to_string(),
        traddr: addr.ip().to_string(),
    };
    for (i, l) in listeners.iter().enumerate() {
        let addr = advertised(*l, ctx.local);
        entries.push(entry(
            i + 1,
            addr,
            subtype::CURRENT_DISCOVERY,
            DISCOVERY_NQN,
        ));
        for sub in shared.subsystems() {
            if sub.allows(hostnqn) {
                entries.push(entry(i + 1, addr, subtype::NVME, &sub.nqn));
            }
        }
    }
    encode_discovery_log(shared.genctr(), &entries)
}
