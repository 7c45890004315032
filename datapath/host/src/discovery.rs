//! Discovery: connecting to a target's discovery controller
//! (`nqn.2014-08.org.nvmexpress.discovery`) and reading its discovery log consistently.

use std::net::SocketAddr;

use ferrite_protocol::log_page::{
    DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, DiscoveryEntry, decode_discovery_log, lid,
};
use ferrite_protocol::nqn::DISCOVERY_NQN;
use tracing::{debug, warn};

use crate::controller::Controller;
use crate::error::HostError;
use crate::options::HostOptions;

/// How often the log is re-read when its generation counter changes underneath.
const MAX_ATTEMPTS: usize = 8;
/// Refuse discovery logs claiming more records than this (a sanity bound on allocation).
const MAX_RECORDS: u64 = 4096;

/// Connects to the discovery controller at `addr`, reads the discovery log and disconnects.
/// The options' identity is used; I/O queues and keep-alive are not (a one-shot discovery
/// association uses KATO 0).
pub async fn discover(
    addr: SocketAddr,
    opts: HostOptions,
) -> Result<Vec<DiscoveryEntry>, HostError> {
    let opts = HostOptions {
        io_queues: 0,
        kato_ms: 0,
        ..opts
    };
    let ctrl = Controller::connect(addr, DISCOVERY_NQN, opts).await?;
    let result = read_discovery_log(&ctrl).await;
    if let Err(e) = ctrl.disconnect().await {
        warn!(%addr, error = %e, "discovery controller shutdown failed");
    }
    result
}

/// Reads the whole discovery log from a connected discovery controller: the header, then the
/// full log, then the header again, retrying while the generation counter moves.
pub async fn read_discovery_log(ctrl: &Controller) -> Result<Vec<DiscoveryEntry>, HostError> {
    for attempt in 0..MAX_ATTEMPTS {
        let (genctr, numrec) = read_header(ctrl).await?;
        if numrec > MAX_RECORDS {
            return Err(HostError::InvalidResponse(format!(
                "discovery log claims {numrec} records"
            )));
        }
        let len = DISCOVERY_HEADER_LEN + numrec as usize * DISCOVERY_ENTRY_LEN;
        let page = ctrl.get_log_page(lid::DISCOVERY, 0, len).await?;
        let (page_gen, entries) = decode_discovery_log(&page)
            .ok_or_else(|| HostError::InvalidResponse("short discovery log".into()))?;
        let (after_gen, _) = read_header(ctrl).await?;
        if page_gen == genctr && after_gen == genctr && entries.len() as u64 == numrec {
            debug!(genctr, records = numrec, "discovery log read");
            return Ok(entries);
        }
        debug!(
            attempt,
            genctr, page_gen, after_gen, "discovery log changed while reading; retrying"
        );
    }
    Err(HostError::InvalidResponse(format!(
        "discovery log kept changing over {MAX_ATTEMPTS} reads"
    )))
}

/// Reads the header: (generation counter, number of records).
async fn read_header(ctrl: &Controller) -> Result<(u64, u64), HostError> {
    let hdr = ctrl
        .get_log_page(lid::DISCOVERY, 0, DISCOVERY_HEADER_LEN)
        .await?;
    let field = |off: usize| {
        hdr.get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    match (field(0), field(8)) {
        (Some(g), Some(n)) => Ok((g, n)),
        _ => Err(HostError::InvalidResponse(
            "short discovery log header".into(),
        )),
    }
}
