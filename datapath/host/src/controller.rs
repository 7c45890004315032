//! [`Controller`]: one association with a remote NVMe controller. Owns the controller's
//! state, the bring-up sequence (admin connection, Fabrics Connect, CAP/VS, CC.EN,
//! CSTS.RDY, Identify, Number of Queues, I/O queue connections, keep-alive task), the choice
//! of I/O queue, and the orderly shutdown (CC.SHN). The commands themselves live in `admin`
//! (admin and fabrics) and `nvm` (NVM I/O).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_protocol::fabrics::{CNTLID_DYNAMIC, Cap, cc, csts, property};
use ferrite_protocol::identify::{ControllerType, IDENTIFY_LEN, IdentifyController, cns};
use ferrite_protocol::{Digests, nqn};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::admin::{
    admin_data_in, fabrics_connect, identify_sqe, keep_alive_task, property_get, property_set,
    set_number_of_queues, wait_csts,
};
use crate::connection::{initialize, tcp_connect};
use crate::error::HostError;
use crate::nvm::max_transfer_bytes;
use crate::options::HostOptions;
use crate::queue::{ADMIN_IN_CAPSULE_MAX, Queue, QueueParams};

/// Admin queue depth (as Linux: 32 entries, SQSIZE 31).
const ADMIN_DEPTH: u16 = 32;
/// CC value the host enables the controller with: EN, IOSQES 6 (64 B), IOCQES 4 (16 B).
pub(crate) const CC_ENABLE: u32 = cc::EN | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);

/// Geometry of a namespace, read from Identify Namespace and cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceGeometry {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Size in logical blocks (NSZE).
    pub num_blocks: u64,
}

/// An association with one remote controller: an admin queue and zero or more I/O queues,
/// each on its own TCP connection.
///
/// All methods take `&self` and may be called concurrently; share the controller with an
/// `Arc`. Dropping it closes every connection at once; [`Controller::disconnect`] shuts the
/// controller down properly first.
pub struct Controller {
    pub(crate) addr: SocketAddr,
    pub(crate) subnqn: String,
    pub(crate) opts: HostOptions,
    pub(crate) admin: Arc<Queue>,
    pub(crate) io: Vec<Arc<Queue>>,
    pub(crate) next_io: AtomicUsize,
    pub(crate) cntlid: u16,
    pub(crate) cap: u64,
    pub(crate) vs: u32,
    pub(crate) identify: IdentifyController,
    pub(crate) max_transfer: usize,
    pub(crate) namespaces: Mutex<HashMap<u32, NamespaceGeometry>>,
    pub(crate) keep_alive: Mutex<Option<JoinHandle<()>>>,
    pub(crate) shut_down: AtomicBool,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.addr)
            .field("subnqn", &self.subnqn)
            .field("cntlid", &self.cntlid)
            .field("io_queues", &self.io.len())
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Connects to subsystem `subnqn` at `addr` and brings the controller up (see the module
    /// documentation for the sequence). I/O queues are only created for I/O controllers.
    pub async fn connect(
        addr: SocketAddr,
        subnqn: &str,
        opts: HostOptions,
    ) -> Result<Controller, HostError> {
        nqn::validate(subnqn)
            .map_err(|e| HostError::InvalidRequest(format!("subsystem NQN: {e}")))?;
        nqn::validate(&opts.hostnqn)
            .map_err(|e| HostError::InvalidRequest(format!("host NQN: {e}")))?;
        if opts.queue_depth == 0 {
            return Err(HostError::InvalidRequest(
                "queue depth must be at least 1".into(),
            ));
        }
        let digests = Digests {
            header: opts.header_digest,
            data: opts.data_digest,
        };

        let admin = open_queue(addr, &opts, digests, 0, ADMIN_DEPTH, ADMIN_IN_CAPSULE_MAX).await?;
        let admin = Arc::new(admin);
        let cntlid = fabrics_connect(
            &admin,
            &opts,
            subnqn,
            0,
            ADMIN_DEPTH - 1,
            opts.kato_ms,
            CNTLID_DYNAMIC,
        )
        .await?;
        debug!(%addr, subnqn, cntlid, "admin queue connected");

        let cap = property_get(&admin, property::CAP, 8).await?;
        let vs = property_get(&admin, property::VS, 4).await? as u32;
        property_set(&admin, property::CC, u64::from(CC_ENABLE)).await?;
        wait_csts(&admin, opts.timeout, "wait for CSTS.RDY", |v| {
            v & csts::RDY != 0
        })
        .await?;

        let data = admin_data_in(
            &admin,
            "identify controller",
            identify_sqe(cns::CONTROLLER, 0),
            IDENTIFY_LEN,
        )
        .await?;
        let identify = IdentifyController::decode(&data)
            .ok_or_else(|| HostError::InvalidResponse("short Identify Controller data".into()))?;
        let max_transfer = max_transfer_bytes(identify.mdts, cap);

        let mut io = Vec::new();
        if identify.cntrltype == ControllerType::Io && opts.io_queues > 0 {
            let n = set_number_of_queues(&admin, opts.io_queues).await?;
            let mqes = Cap::from_u64(cap).mqes;
            let mut depth = opts.queue_depth.min(mqes.saturating_add(1));
            if identify.maxcmd > 0 {
                depth = depth.min(identify.maxcmd);
            }
            let depth = depth.max(1);
            let in_capsule_max = (identify.ioccsz as usize * 16).saturating_sub(64);
            for qid in 1..=n {
                let q = open_queue(addr, &opts, digests, qid, depth, in_capsule_max).await?;
                // SQSIZE is 0's based and must be at least 1 (two entries).
                fabrics_connect(&q, &opts, subnqn, qid, (depth - 1).max(1), 0, cntlid).await?;
                io.push(Arc::new(q));
            }
        }
        info!(
            %addr, subnqn, cntlid, io_queues = io.len(), mdts = identify.mdts, ioccsz = identify.ioccsz,
            ?digests, "connected to NVMe/TCP controller"
        );

        let ctrl = Controller {
            addr,
            subnqn: subnqn.to_string(),
            admin,
            io,
            next_io: AtomicUsize::new(0),
            cntlid,
            cap,
            vs,
            identify,
            max_transfer,
            namespaces: Mutex::new(HashMap::new()),
            keep_alive: Mutex::new(None),
            shut_down: AtomicBool::new(false),
            opts,
        };
        if ctrl.opts.kato_ms > 0 {
            let period = Duration::from_millis(u64::from(ctrl.opts.kato_ms / 2).max(1));
            let io = ctrl.io.iter().map(Arc::downgrade).collect();
            let task = tokio::spawn(keep_alive_task(Arc::downgrade(&ctrl.admin), io, period));
            *lock(&ctrl.keep_alive) = Some(task);
        }
        Ok(ctrl)
    }

    /// The Identify Controller data read at connect time.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The controller ID the target allocated.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// The subsystem NQN this controller belongs to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The options used (with the host identity).
    pub fn options(&self) -> &HostOptions {
        &self.opts
    }

    /// The raw CAP property.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The VS property (NVMe version).
    pub fn version(&self) -> u32 {
        self.vs
    }

    /// Number of I/O queues established.
    pub fn io_queue_count(&self) -> usize {
        self.io.len()
    }

    /// Largest data transfer of one command in bytes (from MDTS); larger reads and writes
    /// are split.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// Whether every connection is still up.
    pub fn is_connected(&self) -> bool {
        self.admin.failure().is_none() && self.io.iter().all(|q| q.failure().is_none())
    }

    /// Why the admin connection failed, if it did.
    pub fn failure(&self) -> Option<HostError> {
        self.admin
            .failure()
            .or_else(|| self.io.iter().find_map(|q| q.failure()))
    }

    // ----- shutdown -----

    /// Shuts the controller down (CC.SHN = normal, wait for CSTS.SHST complete) and closes
    /// every connection. Idempotent; the connections are closed even if the shutdown fails.
    pub async fn disconnect(&self) -> Result<(), HostError> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.stop_keep_alive();
        for q in &self.io {
            q.close();
        }
        let result = async {
            if let Some(e) = self.admin.failure() {
                return Err(e);
            }
            property_set(
                &self.admin,
                property::CC,
                u64::from(CC_ENABLE | (1 << cc::SHN_SHIFT)),
            )
            .await?;
            wait_csts(&self.admin, self.opts.timeout, "wait for CSTS.SHST", |v| {
                v & csts::SHST_MASK == csts::SHST_COMPLETE
            })
            .await
        }
        .await;
        self.admin.close();
        let grace = Duration::from_secs(1).min(self.opts.timeout);
        for q in self.io.iter().chain(std::iter::once(&self.admin)) {
            q.join(grace).await;
        }
        match &result {
            Ok(()) => {
                info!(addr = %self.addr, subnqn = %self.subnqn, cntlid = self.cntlid, "disconnected")
            }
            Err(e) => {
                warn!(addr = %self.addr, subnqn = %self.subnqn, error = %e, "shutdown incomplete; connections closed")
            }
        }
        result
    }

    /// Drops every connection at once, without a shutdown: outstanding commands fail with
    /// [`HostError::Closed`]. For fault injection and for giving up on a dead controller.
    pub fn abort(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        self.stop_keep_alive();
        for q in self.io.iter().chain(std::iter::once(&self.admin)) {
            q.abort();
        }
    }

    // ----- helpers -----

    /// The next I/O queue, round robin, skipping failed ones while any is alive.
    pub(crate) fn pick_io(&self) -> Result<&Arc<Queue>, HostError> {
        let n = self.io.len();
        if n == 0 {
            return Err(HostError::InvalidRequest(
                "the controller has no I/O queues".into(),
            ));
        }
        let start = self.next_io.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.io[(start + i) % n])
            .find(|q| q.failure().is_none())
            .map_or_else(|| Ok(&self.io[start % n]), Ok)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_keep_alive();
        // The queues abort their tasks when their last reference goes.
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a TCP connection, runs ICReq/ICResp and starts the queue engine on it.
async fn open_queue(
    addr: SocketAddr,
    opts: &HostOptions,
    digests: Digests,
    qid: u16,
    depth: u16,
    in_capsule_max: usize,
) -> Result<Queue, HostError> {
    let mut stream = tcp_connect(addr, opts.timeout).await?;
    let neg = initialize(&mut stream, digests, opts.timeout).await?;
    let (r, w) = stream.into_split();
    let params = QueueParams {
        qid,
        digests: neg.digests,
        maxh2cdata: neg.maxh2cdata,
        depth,
        in_capsule_max,
        timeout: opts.timeout,
    };
    debug!(%addr, qid, depth, maxh2cdata = neg.maxh2cdata, in_capsule_max, "queue connection initialized");
    Ok(Queue::start(r, w, params))
}
