//! In-band authentication (DH-HMAC-CHAP), controller side: the keys a subsystem holds for
//! its hosts, and the per-queue transaction that the Authentication Send and Receive
//! commands drive.
//!
//! A host with keys configured on a subsystem must authenticate every queue it connects
//! (admin and I/O): the Connect response sets ATR, and until the transaction succeeds the
//! queue refuses every command other than Authentication Send/Receive with Authentication
//! Required (`connection.rs` enforces it, together with the deadline `auth_timeout` after
//! Connect). A failed transaction (a wrong response, a malformed or out-of-sequence message,
//! an AUTH_Failure2 from the host) ends the connection once the host has read the
//! AUTH_Failure1 that explains it. Hosts without keys keep the plain access-list behaviour.
//!
//! The transaction state lives in the queue's [`AuthGate`]; each message is handled on the
//! blocking pool (the DH exponentiations take milliseconds) with the state moved out of the
//! gate and back. Messages are decoded by `ferrite_protocol::auth`, which checks every
//! length against the message size first; a Send is at most [`MAX_SEND_LEN`] bytes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrite_block::IoBuf;
use ferrite_protocol::auth::{
    AUTHID_DHCHAP, AuthCommand, AuthMessage, Challenge, Failure, MAX_SEND_LEN, Success1, failure,
    msg,
};
use ferrite_protocol::command::{Sqe, fctype};
use ferrite_protocol::dhchap::{
    DH_PRIVATE_LEN, DhGroup, HashId, ResponseInput, Secret, controller_response, dh_public,
    dh_shared_secret, host_response, responses_match,
};
use ferrite_protocol::status::Status;
use rand::RngCore;
use tracing::{debug, info, warn};

use crate::connection::Reply;

/// The DH-HMAC-CHAP keys of one host on one subsystem, and what the controller accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhchapKeys {
    /// The host's secret: the host must prove it knows it.
    pub host: Secret,
    /// The controller's secret, for hosts that ask the controller to authenticate itself too
    /// (bidirectional). A host asking without one configured fails.
    pub ctrl: Option<Secret>,
    /// Hash functions the controller accepts, preferred first.
    pub hashes: Vec<HashId>,
    /// DH groups the controller accepts, preferred first.
    pub dh_groups: Vec<DhGroup>,
}

impl DhchapKeys {
    /// Keys with the default preferences: SHA-256, -384, -512; ffdhe2048 to ffdhe8192, then
    /// the null group (a DH exchange whenever the host offers one).
    pub fn new(host: Secret, ctrl: Option<Secret>) -> DhchapKeys {
        DhchapKeys {
            host,
            ctrl,
            hashes: HashId::ALL.to_vec(),
            dh_groups: vec![
                DhGroup::Ffdhe2048,
                DhGroup::Ffdhe3072,
                DhGroup::Ffdhe4096,
                DhGroup::Ffdhe6144,
                DhGroup::Ffdhe8192,
                DhGroup::Null,
            ],
        }
    }
}

/// Transactions (AUTH_Negotiate) a queue may start: each costs the controller a DH
/// exponentiation, so a host cannot make it compute without end.
const MAX_TRANSACTIONS: u8 = 4;

/// Keys of the hosts of one subsystem that must authenticate, by host NQN.
pub type HostKeys = BTreeMap<String, DhchapKeys>;

/// Where a queue's transaction stands: what the controller waits for next.
#[derive(Debug)]
enum Step {
    /// AUTH_Negotiate (Send).
    Negotiate,
    /// Authentication Receive for the Challenge.
    Challenge {
        t_id: u16,
        hash: HashId,
        group: DhGroup,
    },
    /// DH-HMAC-CHAP_Reply (Send).
    Reply {
        t_id: u16,
        hash: HashId,
        group: DhGroup,
        c1: Vec<u8>,
        s1: u32,
        private: Vec<u8>,
    },
    /// Authentication Receive for Success1.
    Success1 {
        t_id: u16,
        hash: HashId,
        r2: Option<Vec<u8>>,
    },
    /// DH-HMAC-CHAP_Success2 (Send), bidirectional only.
    Success2 { t_id: u16 },
    /// Authentication Receive for Failure1; the connection ends after it.
    Failure1 { t_id: u16, reason: u8 },
    /// Authenticated (a new Negotiate starts a re-authentication).
    Done,
    /// Failed: the connection is closing.
    Failed,
}

/// One queue's transaction.
#[derive(Debug)]
pub(crate) struct Transaction {
    keys: DhchapKeys,
    hostnqn: String,
    subnqn: String,
    qid: u16,
    step: Step,
    /// Transactions started on this queue.
    started: u8,
}

/// A queue's authentication state: whether it is authenticated (read on every command,
/// lock-free) and its transaction.
pub(crate) struct AuthGate {
    authenticated: AtomicBool,
    transaction: Mutex<Option<Transaction>>,
}

impl AuthGate {
    pub fn new(keys: DhchapKeys, hostnqn: &str, subnqn: &str, qid: u16) -> AuthGate {
        AuthGate {
            authenticated: AtomicBool::new(false),
            transaction: Mutex::new(Some(Transaction {
                keys,
                hostnqn: hostnqn.to_string(),
                subnqn: subnqn.to_string(),
                qid,
                step: Step::Negotiate,
                started: 0,
            })),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }
}

/// The result of one authentication command: its reply, and whether the connection ends
/// after it.
pub(crate) struct AuthOutcome {
    pub reply: Reply,
    pub close: bool,
}

/// Executes an Authentication Send or Receive on a queue that must authenticate.
pub(crate) async fn execute(gate: &AuthGate, sqe: &Sqe, data: Option<IoBuf>) -> AuthOutcome {
    let cmd = AuthCommand::from_sqe(sqe);
    let refuse = |status| AuthOutcome {
        reply: Reply::status(status),
        close: false,
    };
    if !cmd.is_dhchap() {
        return refuse(Status::INVALID_FIELD);
    }
    let send = sqe.fctype() == fctype::AUTH_SEND;
    // TL/AL must match the data descriptor; the SGL length was already bounded by MDTS.
    if cmd.len == 0 || cmd.len != sqe.dptr.length {
        return refuse(Status::INVALID_FIELD);
    }
    if send && cmd.len > MAX_SEND_LEN {
        return refuse(Status::INVALID_FIELD);
    }
    let payload = if send {
        match data {
            Some(d) if d.len() >= cmd.len as usize => Some(d[..cmd.len as usize].to_vec()),
            _ => return refuse(Status::DATA_SGL_LENGTH_INVALID),
        }
    } else {
        None
    };
    let Some(mut t) = lock(gate).take() else {
        // Another authentication command of this queue is being handled.
        return refuse(Status::COMMAND_SEQUENCE_ERROR);
    };
    let result = tokio::task::spawn_blocking(move || {
        let out = match payload {
            Some(p) => t.on_send(&p),
            None => t.on_receive(cmd.len as usize),
        };
        (t, out)
    })
    .await;
    let Ok((t, out)) = result else {
        warn!("authentication task failed");
        return AuthOutcome {
            reply: Reply::status(Status::INTERNAL_ERROR),
            close: true,
        };
    };
    let done = matches!(t.step, Step::Done);
    let failed = matches!(t.step, Step::Failed);
    if done && !gate.is_authenticated() {
        info!(hostnqn = %t.hostnqn, subnqn = %t.subnqn, qid = t.qid, "queue authenticated (DH-HMAC-CHAP)");
    }
    if done {
        gate.authenticated.store(true, Ordering::Release);
    }
    if failed {
        gate.authenticated.store(false, Ordering::Release);
        warn!(hostnqn = %t.hostnqn, subnqn = %t.subnqn, qid = t.qid, "DH-HMAC-CHAP authentication failed; closing the queue");
    }
    *lock(gate) = Some(t);
    AuthOutcome {
        reply: out,
        close: failed,
    }
}

fn lock(gate: &AuthGate) -> std::sync::MutexGuard<'_, Option<Transaction>> {
    gate.transaction.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A non-zero sequence number.
fn random_seqnum() -> u32 {
    loop {
        let s = rand::random::<u32>();
        if s != 0 {
            return s;
        }
    }
}

impl Transaction {
    fn fail(&mut self, t_id: u16, reason: u8, why: &str) {
        debug!(hostnqn = %self.hostnqn, qid = self.qid, reason, why, "authentication transaction failed");
        self.step = Step::Failure1 { t_id, reason };
    }

    /// Handles the data of an Authentication Send. The command itself succeeds unless the
    /// transaction has already failed; problems are reported by the next Receive (Failure1).
    fn on_send(&mut self, data: &[u8]) -> Reply {
        if matches!(self.step, Step::Failed) {
            return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        let m = match AuthMessage::decode(data) {
            Ok(m) => m,
            Err(e) => {
                let t_id = data
                    .get(4..6)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                self.fail(t_id, e.reason(), "malformed message");
                return Reply::ok();
            }
        };
        debug!(hostnqn = %self.hostnqn, qid = self.qid, message = m.name(), step = ?self.step, "authentication send");
        let step = std::mem::replace(&mut self.step, Step::Failed);
        match (step, m) {
            (_, AuthMessage::Negotiate(n)) => self.negotiate(&n),
            (
                Step::Reply {
                    t_id,
                    hash,
                    group,
                    c1,
                    s1,
                    private,
                },
                AuthMessage::Reply(r),
            ) => {
                if r.t_id != t_id {
                    self.fail(t_id, failure::INCORRECT_PAYLOAD, "transaction ID");
                } else {
                    self.reply(t_id, hash, group, &c1, s1, &private, &r);
                }
            }
            (Step::Success2 { t_id }, AuthMessage::Success2 { t_id: got }) => {
                if got == t_id {
                    self.step = Step::Done;
                } else {
                    self.fail(t_id, failure::INCORRECT_PAYLOAD, "transaction ID");
                }
            }
            (_, AuthMessage::Failure(f)) if f.auth_id == msg::FAILURE2 => {
                warn!(hostnqn = %self.hostnqn, qid = self.qid, reason = f.rescode_exp, "the host refused the controller (AUTH_Failure2)");
                self.step = Step::Failed;
            }
            (step, m) => {
                let t_id = m.t_id();
                debug!(message = m.name(), ?step, "message out of sequence");
                self.fail(t_id, failure::INCORRECT_MESSAGE, "message out of sequence");
            }
        }
        Reply::ok()
    }

    fn negotiate(&mut self, n: &ferrite_protocol::auth::Negotiate) {
        let t_id = n.t_id;
        self.started = self.started.saturating_add(1);
        if self.started > MAX_TRANSACTIONS {
            return self.fail(
                t_id,
                failure::FAILED,
                "too many authentication transactions on this queue",
            );
        }
        if n.sc_c != 0 {
            return self.fail(
                t_id,
                failure::CONCAT_MISMATCH,
                "secure channel concatenation is not supported",
            );
        }
        if n.napd != 1 || n.authid != AUTHID_DHCHAP {
            return self.fail(
                t_id,
                failure::INCORRECT_PAYLOAD,
                "not one DH-HMAC-CHAP descriptor",
            );
        }
        let Some(hash) = self
            .keys
            .hashes
            .iter()
            .copied()
            .find(|h| n.hashes.contains(&h.id()))
        else {
            return self.fail(t_id, failure::HASH_UNUSABLE, "no common hash function");
        };
        let Some(group) = self
            .keys
            .dh_groups
            .iter()
            .copied()
            .find(|g| n.dh_groups.contains(&g.id()))
        else {
            return self.fail(t_id, failure::DHGROUP_UNUSABLE, "no common DH group");
        };
        self.step = Step::Challenge { t_id, hash, group };
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        t_id: u16,
        hash: HashId,
        group: DhGroup,
        c1: &[u8],
        s1: u32,
        private: &[u8],
        r: &ferrite_protocol::auth::Reply,
    ) {
        if r.response.len() != hash.len() {
            return self.fail(t_id, failure::INCORRECT_PAYLOAD, "response length");
        }
        let session_key = if group == DhGroup::Null {
            if !r.dh_value.is_empty() {
                return self.fail(
                    t_id,
                    failure::INCORRECT_PAYLOAD,
                    "DH value with the null group",
                );
            }
            None
        } else {
            match dh_shared_secret(group, private, &r.dh_value) {
                Ok(k) => Some(k),
                Err(e) => {
                    debug!(error = %e, "host DH value refused");
                    return self.fail(t_id, failure::DHGROUP_UNUSABLE, "host DH value");
                }
            }
        };
        let input = ResponseInput {
            hash,
            challenge: c1,
            session_key: session_key.as_deref(),
            seqnum: s1,
            t_id,
            hostnqn: &self.hostnqn,
            subnqn: &self.subnqn,
        };
        let expected = host_response(&self.keys.host, &input);
        if !responses_match(&expected, &r.response) {
            info!(hostnqn = %self.hostnqn, subnqn = %self.subnqn, qid = self.qid, "host response mismatch (wrong DH-HMAC-CHAP secret)");
            return self.fail(t_id, failure::FAILED, "host response mismatch");
        }
        // S2 = 0 with a challenge means no controller authentication (the spec's PSK case).
        let r2 = match (&r.challenge, r.seqnum) {
            (Some(c2), s2) if s2 != 0 => {
                let Some(ctrl) = &self.keys.ctrl else {
                    return self.fail(
                        t_id,
                        failure::FAILED,
                        "bidirectional without a controller secret",
                    );
                };
                Some(controller_response(
                    ctrl,
                    &ResponseInput {
                        challenge: c2,
                        seqnum: s2,
                        ..input
                    },
                ))
            }
            _ => None,
        };
        self.step = Step::Success1 { t_id, hash, r2 };
    }

    /// Produces the message an Authentication Receive of `al` bytes returns.
    fn on_receive(&mut self, al: usize) -> Reply {
        let step = std::mem::replace(&mut self.step, Step::Failed);
        let message = match step {
            Step::Challenge { t_id, hash, group } => {
                let c1 = random_bytes(hash.len());
                let s1 = random_seqnum();
                let (private, dh_value) = if group == DhGroup::Null {
                    (Vec::new(), Vec::new())
                } else {
                    let private = random_bytes(DH_PRIVATE_LEN);
                    match dh_public(group, &private) {
                        Ok(v) => (private, v),
                        Err(_) => {
                            self.step = Step::Failed;
                            return Reply::status(Status::INTERNAL_ERROR);
                        }
                    }
                };
                let m = AuthMessage::Challenge(Challenge {
                    t_id,
                    hash: hash.id(),
                    dh_group: group.id(),
                    seqnum: s1,
                    challenge: c1.clone(),
                    dh_value,
                });
                self.step = Step::Reply {
                    t_id,
                    hash,
                    group,
                    c1,
                    s1,
                    private,
                };
                m
            }
            Step::Success1 { t_id, hash, r2 } => {
                self.step = if r2.is_some() {
                    Step::Success2 { t_id }
                } else {
                    Step::Done
                };
                AuthMessage::Success1(Success1 {
                    t_id,
                    hl: hash.len() as u8,
                    response: r2,
                })
            }
            Step::Failure1 { t_id, reason } => {
                self.step = Step::Failed;
                failure1(t_id, reason)
            }
            Step::Done => {
                self.step = Step::Done;
                return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            step => {
                debug!(?step, "authentication receive out of sequence");
                self.step = Step::Failed;
                failure1(0, failure::INCORRECT_MESSAGE)
            }
        };
        let Ok(bytes) = message.encode() else {
            self.step = Step::Failed;
            return Reply::status(Status::INTERNAL_ERROR);
        };
        if bytes.len() > al {
            // The host's buffer cannot hold the message: the transaction cannot go on.
            self.step = Step::Failed;
            return Reply::status(Status::INVALID_FIELD);
        }
        Reply::bytes(&bytes)
    }
}

fn failure1(t_id: u16, reason: u8) -> AuthMessage {
    AuthMessage::Failure(Failure {
        auth_id: msg::FAILURE1,
        t_id,
        rescode: failure::REASON_FAILED,
        rescode_exp: reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_protocol::auth::{Negotiate, Reply as AuthReply};

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    const SUB: &str = "nqn.2024-01.dev.ferrite:a";

    fn keys(ctrl: bool) -> DhchapKeys {
        let host = Secret::new(1, &[1u8; 32]).unwrap();
        let c = ctrl.then(|| Secret::new(0, &[2u8; 32]).unwrap());
        DhchapKeys::new(host, c)
    }

    fn transaction(k: DhchapKeys) -> Transaction {
        Transaction {
            keys: k,
            hostnqn: HOST.into(),
            subnqn: SUB.into(),
            qid: 0,
            step: Step::Negotiate,
            started: 0,
        }
    }

    fn negotiate(t_id: u16, groups: Vec<u8>) -> Vec<u8> {
        AuthMessage::Negotiate(Negotiate {
            t_id,
            sc_c: 0,
            napd: 1,
            authid: AUTHID_DHCHAP,
            hashes: vec![1, 2, 3],
            dh_groups: groups,
        })
        .encode()
        .unwrap()
    }

    fn received(r: Reply) -> AuthMessage {
        assert!(r.status.is_success(), "{:?}", r.status);
        AuthMessage::decode(&r.data.expect("data")).unwrap()
    }

    /// Runs the host side by hand; returns the final Receive's message.
    fn run(t: &mut Transaction, secret: &Secret, ctrl: Option<&Secret>, group: u8) -> AuthMessage {
        assert!(t.on_send(&negotiate(5, vec![group])).status.is_success());
        let AuthMessage::Challenge(c) = received(t.on_receive(4096)) else {
            panic!("challenge")
        };
        assert_eq!((c.t_id, c.hash, c.dh_group), (5, 1, group));
        let g = DhGroup::from_id(group).unwrap();
        let (dh_value, skey) = if g == DhGroup::Null {
            (Vec::new(), None)
        } else {
            let x = [7u8; DH_PRIVATE_LEN];
            (
                dh_public(g, &x).unwrap(),
                Some(dh_shared_secret(g, &x, &c.dh_value).unwrap()),
            )
        };
        let input = ResponseInput {
            hash: HashId::Sha256,
            challenge: &c.challenge,
            session_key: skey.as_deref(),
            seqnum: c.seqnum,
            t_id: 5,
            hostnqn: HOST,
            subnqn: SUB,
        };
        let c2 = vec![3u8; 32];
        let reply = AuthReply {
            t_id: 5,
            response: host_response(secret, &input),
            challenge: ctrl.map(|_| c2.clone()),
            seqnum: if ctrl.is_some() { 99 } else { 0 },
            dh_value,
        };
        assert!(
            t.on_send(&AuthMessage::Reply(reply).encode().unwrap())
                .status
                .is_success()
        );
        let m = received(t.on_receive(4096));
        if let (AuthMessage::Success1(s), Some(cs)) = (&m, ctrl) {
            let want = controller_response(
                cs,
                &ResponseInput {
                    challenge: &c2,
                    seqnum: 99,
                    ..input
                },
            );
            assert_eq!(s.response.as_deref(), Some(&want[..]));
        }
        m
    }

    #[test]
    fn unidirectional_null_and_ffdhe2048() {
        for group in [0u8, 1] {
            let k = keys(false);
            let secret = k.host.clone();
            let mut t = transaction(k);
            let m = run(&mut t, &secret, None, group);
            assert!(
                matches!(
                    m,
                    AuthMessage::Success1(Success1 {
                        t_id: 5,
                        hl: 32,
                        response: None
                    })
                ),
                "{m:?}"
            );
            assert!(matches!(t.step, Step::Done));
        }
    }

    #[test]
    fn bidirectional() {
        let k = keys(true);
        let (secret, ctrl) = (k.host.clone(), k.ctrl.clone().unwrap());
        let mut t = transaction(k);
        let m = run(&mut t, &secret, Some(&ctrl), 1);
        assert!(matches!(
            m,
            AuthMessage::Success1(Success1 {
                response: Some(_),
                ..
            })
        ));
        assert!(matches!(t.step, Step::Success2 { t_id: 5 }));
        assert!(
            t.on_send(&AuthMessage::Success2 { t_id: 5 }.encode().unwrap())
                .status
                .is_success()
        );
        assert!(matches!(t.step, Step::Done));
    }

    #[test]
    fn wrong_secret_gets_failure1() {
        let mut t = transaction(keys(false));
        let wrong = Secret::new(1, &[9u8; 32]).unwrap();
        let m = run(&mut t, &wrong, None, 0);
        assert!(
            matches!(
                m,
                AuthMessage::Failure(Failure {
                    auth_id: msg::FAILURE1,
                    rescode_exp: failure::FAILED,
                    ..
                })
            ),
            "{m:?}"
        );
        assert!(matches!(t.step, Step::Failed));
        assert_eq!(
            t.on_send(&negotiate(1, vec![0])).status,
            Status::COMMAND_SEQUENCE_ERROR
        );
    }

    #[test]
    fn bidirectional_without_a_controller_secret_fails() {
        let k = keys(false);
        let secret = k.host.clone();
        let mut t = transaction(k);
        let m = run(
            &mut t,
            &secret,
            Some(&Secret::new(0, &[2u8; 32]).unwrap()),
            0,
        );
        assert!(matches!(m, AuthMessage::Failure(_)), "{m:?}");
    }

    #[test]
    fn malformed_and_out_of_sequence_messages_fail() {
        // Garbage.
        let mut t = transaction(keys(false));
        assert!(t.on_send(&[1, 2, 3]).status.is_success());
        let m = received(t.on_receive(4096));
        assert!(matches!(
            m,
            AuthMessage::Failure(Failure {
                rescode_exp: failure::INCORRECT_PAYLOAD,
                ..
            })
        ));
        // A Reply before any challenge.
        let mut t = transaction(keys(false));
        let r = AuthReply {
            t_id: 1,
            response: vec![0; 32],
            challenge: None,
            seqnum: 0,
            dh_value: vec![],
        };
        t.on_send(&AuthMessage::Reply(r).encode().unwrap());
        assert!(matches!(
            received(t.on_receive(4096)),
            AuthMessage::Failure(Failure {
                rescode_exp: failure::INCORRECT_MESSAGE,
                ..
            })
        ));
        // A Receive before Negotiate.
        let mut t = transaction(keys(false));
        assert!(matches!(
            received(t.on_receive(4096)),
            AuthMessage::Failure(_)
        ));
        // No common group.
        let mut t = transaction(DhchapKeys {
            dh_groups: vec![DhGroup::Ffdhe3072],
            ..keys(false)
        });
        t.on_send(&negotiate(2, vec![0, 1]));
        assert!(matches!(
            received(t.on_receive(4096)),
            AuthMessage::Failure(Failure {
                rescode_exp: failure::DHGROUP_UNUSABLE,
                ..
            })
        ));
        // Restarting the transaction without end.
        let mut t = transaction(keys(false));
        for i in 0..MAX_TRANSACTIONS {
            t.on_send(&negotiate(i.into(), vec![0]));
            assert!(matches!(t.step, Step::Challenge { .. }));
        }
        t.on_send(&negotiate(9, vec![0]));
        assert!(matches!(
            received(t.on_receive(4096)),
            AuthMessage::Failure(Failure {
                rescode_exp: failure::FAILED,
                ..
            })
        ));
        // A challenge that does not fit the host's buffer.
        let mut t = transaction(keys(false));
        t.on_send(&negotiate(2, vec![1]));
        assert_eq!(t.on_receive(64).status, Status::INVALID_FIELD);
        assert!(matches!(t.step, Step::Failed));
    }
}
