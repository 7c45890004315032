//! Controllers: the association of one host with one subsystem, created by an admin-queue
//! Connect. A controller owns its properties (CC, CSTS), features, keep-alive watchdog,
//! asynchronous event requests, error log and I/O queue bindings, and tears all of its
//! connections down when the host goes away.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrite_protocol::completion::Cqe;
use ferrite_protocol::fabrics::{cc, csts};
use ferrite_protocol::log_page::ErrorEntry;
use ferrite_protocol::status::Status;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::connection::Outgoing;
use crate::subsystem::Subsystem;

/// What a controller serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    Io,
    Discovery,
}

/// Current feature values (Set/Get Features).
#[derive(Clone, Debug)]
pub struct Features {
    pub arbitration: u32,
    pub temperature_threshold: u32,
    pub error_recovery: u32,
    pub volatile_write_cache: bool,
    pub interrupt_coalescing: u32,
    pub write_atomicity: u32,
    pub async_event_config: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            // Over-temperature threshold 343 K (70 C), as drives commonly default.
            temperature_threshold: 343,
            error_recovery: 0,
            volatile_write_cache: true,
            interrupt_coalescing: 0,
            write_atomicity: 0,
            async_event_config: 0,
        }
    }
}

/// Async event configuration bit: namespace attribute notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// Number of outstanding AERs a controller accepts (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 16;

/// Mutable controller state behind one lock (never held across an await).
pub struct ControllerState {
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    pub features: Features,
    /// I/O queue count granted by Set Features (Number of Queues), 1-based.
    pub granted_io_queues: Option<u16>,
    pub io_queues: HashSet<u16>,
    pub errors: VecDeque<ErrorEntry>,
    pub error_count: u64,
    aer_cids: Vec<u16>,
    changed_ns: Vec<u32>,
    /// A namespace-change event is waiting for an AER, or was reported and not yet cleared.
    ns_event: NsEvent,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NsEvent {
    None,
    Pending,
    Reported,
}

/// I/O counters reported in the SMART log.
#[derive(Default)]
pub struct Counters {
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
}

/// A live controller.
pub struct Controller {
    pub cntlid: u16,
    pub kind: ControllerKind,
    /// The subsystem (for discovery controllers, `None`).
    pub subsystem: Option<Arc<Subsystem>>,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub counters: Counters,
    state: Mutex<ControllerState>,
    created: Instant,
    last_activity_ms: AtomicU64,
    admin_tx: mpsc::Sender<Outgoing>,
    closers: Mutex<Vec<watch::Sender<bool>>>,
    dead: watch::Sender<bool>,
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        kind: ControllerKind,
        subsystem: Option<Arc<Subsystem>>,
        subnqn: String,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        admin_tx: mpsc::Sender<Outgoing>,
    ) -> Arc<Controller> {
        let (dead, _) = watch::channel(false);
        Arc::new(Controller {
            cntlid,
            kind,
            subsystem,
            subnqn,
            hostnqn,
            hostid,
            counters: Counters::default(),
            state: Mutex::new(ControllerState {
                cc: 0,
                csts: 0,
                kato_ms,
                features: Features::default(),
                granted_io_queues: None,
                io_queues: HashSet::new(),
                errors: VecDeque::new(),
                error_count: 0,
                aer_cids: Vec::new(),
                changed_ns: Vec::new(),
                ns_event: NsEvent::None,
            }),
            created: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            admin_tx,
            closers: Mutex::new(Vec::new()),
            dead,
        })
    }

    /// Locks the state. A poisoned lock (a panic elsewhere) still yields the data: the state
    /// is plain values that are valid after any partial update.
    pub fn state(&self) -> MutexGuard<'_, ControllerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records host traffic for the keep-alive timer.
    pub fn touch(&self) {
        let ms = self.created.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.created.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    pub fn is_ready(&self) -> bool {
        self.state().csts & csts::RDY != 0
    }

    /// Registers a connection's close signal so that tearing the controller down closes it.
    pub fn add_closer(&self, closer: watch::Sender<bool>) {
        if *self.dead.borrow() {
            let _ = closer.send(true);
            return;
        }
        if let Ok(mut c) = self.closers.lock() {
            c.push(closer);
        }
    }

    /// Tears the controller down: closes every connection bound to it and unregisters it.
    pub fn shutdown(&self, reason: &str) {
        if self.dead.send_replace(true) {
            return;
        }
        info!(cntlid = self.cntlid, subnqn = %self.subnqn, hostnqn = %self.hostnqn, reason, "controller torn down");
        if let Ok(mut closers) = self.closers.lock() {
            for c in closers.drain(..) {
                let _ = c.send(true);
            }
        }
        if let Some(s) = &self.subsystem {
            s.unregister_controller(self.cntlid);
        }
    }

    /// Runs the keep-alive watchdog until the controller dies. A KATO of 0 disables it.
    pub async fn keep_alive_watchdog(self: Arc<Self>, grace: Duration) {
        let mut dead = self.dead.subscribe();
        loop {
            let kato = Duration::from_millis(u64::from(self.state().kato_ms));
            let tick = if kato.is_zero() {
                Duration::from_secs(1)
            } else {
                (kato / 4).max(Duration::from_millis(50))
            };
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = crate::registry::signalled(&mut dead) => return,
            }
            if !kato.is_zero() && self.idle() > kato + grace {
                warn!(cntlid = self.cntlid, hostnqn = %self.hostnqn, kato_ms = kato.as_millis() as u64,
                      "keep-alive timeout: no traffic from the host");
                self.shutdown("keep-alive timeout");
                return;
            }
        }
    }

    /// Binds I/O queue `qid` to this controller.
    pub fn bind_io_queue(&self, qid: u16, max_io_queues: u16) -> Result<(), &'static str> {
        let mut st = self.state();
        if st.csts & csts::RDY == 0 {
            return Err("controller is not ready (CC.EN not set)");
        }
        let limit = st.granted_io_queues.unwrap_or(max_io_queues);
        if qid == 0 || qid > limit {
            return Err("queue ID beyond the number of I/O queues");
        }
        if !st.io_queues.insert(qid) {
            return Err("queue ID already connected");
        }
        Ok(())
    }

    pub fn unbind_io_queue(&self, qid: u16) {
        self.state().io_queues.remove(&qid);
    }

    /// Handles a CC write. Returns whether a shutdown was requested (the caller flushes and
    /// then calls [`Controller::shutdown_complete`]).
    pub fn set_cc(&self, new: u32) -> bool {
        let mut st = self.state();
        let old = st.cc;
        st.cc = new;
        if new & cc::EN != 0 && old & cc::EN == 0 {
            if cc::iosqes(new) != 6 || cc::iocqes(new) != 4 {
                warn!(
                    cntlid = self.cntlid,
                    cc = new,
                    "CC enable with unsupported queue entry sizes"
                );
                st.csts |= csts::CFS;
            } else {
                st.csts |= csts::RDY;
            }
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            st.csts &= !(csts::RDY | csts::SHST_MASK);
        }
        let shn = cc::shn(new) != 0 && cc::shn(old) == 0;
        if shn {
            // Shutdown processing occurring.
            st.csts = (st.csts & !csts::SHST_MASK) | (0x1 << 2);
        }
        shn
    }

    pub fn shutdown_complete(&self) {
        let mut st = self.state();
        st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
    }

    /// Records a failed command in the error log.
    pub fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let mut st = self.state();
        st.error_count += 1;
        let e = ErrorEntry {
            error_count: st.error_count,
            sqid,
            cid,
            status: status.to_field(),
            lba,
            nsid,
        };
        st.errors.push_front(e);
        st.errors.truncate(ERROR_LOG_ENTRIES);
    }

    /// Parks an Asynchronous Event Request; completes it at once if an event is waiting.
    pub fn park_aer(&self, cid: u16) -> Result<(), Status> {
        let mut st = self.state();
        if st.aer_cids.len() >= AER_LIMIT {
            return Err(Status::AER_LIMIT_EXCEEDED);
        }
        st.aer_cids.push(cid);
        self.deliver_events(&mut st);
        Ok(())
    }

    /// A namespace was added, removed or changed.
    pub fn namespace_changed(&self, nsid: u32) {
        let mut st = self.state();
        if !st.changed_ns.contains(&nsid) {
            st.changed_ns.push(nsid);
        }
        if st.ns_event == NsEvent::None {
            st.ns_event = NsEvent::Pending;
        }
        self.deliver_events(&mut st);
    }

    fn deliver_events(&self, st: &mut ControllerState) {
        if st.ns_event != NsEvent::Pending || st.features.async_event_config & AEC_NS_ATTR == 0 {
            return;
        }
        let Some(cid) = st.aer_cids.pop() else { return };
        // Event type notice (2), info "namespace attribute changed" (0), log page 04h.
        let mut cqe = Cqe::new(cid, Status::SUCCESS);
        cqe.result = 0x2 | (0x04 << 16);
        if self.admin_tx.try_send(Outgoing::Response(cqe)).is_ok() {
            st.ns_event = NsEvent::Reported;
        } else {
            st.aer_cids.push(cid);
        }
    }

    /// The host (re)configured asynchronous events: deliver anything that was waiting.
    pub fn namespace_events_enabled(&self) {
        let mut st = self.state();
        self.deliver_events(&mut st);
    }

    /// Reads (and unless `retain`, clears) the changed namespace list.
    pub fn take_changed_namespaces(&self, retain: bool) -> Vec<u32> {
        let mut st = self.state();
        let list = st.changed_ns.clone();
        if !retain {
            st.changed_ns.clear();
            st.ns_event = NsEvent::None;
        }
        list
    }
}
