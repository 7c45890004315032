//! In-band authentication (DH-HMAC-CHAP), host side: the transaction a queue runs right
//! after its Connect when the controller sets ATR in the Connect response.
//!
//! Negotiate (offering [`HostOptions::dhchap_hashes`] and [`HostOptions::dhchap_groups`]),
//! receive the Challenge, answer with the Reply (with a DH exchange when the controller chose
//! a group, and a challenge of our own when a controller secret is configured), receive
//! Success1 and, when bidirectional, check the controller's response before sending Success2.
//! Anything wrong from the controller is answered with AUTH_Failure2 and fails the connect.
//! The controller's messages are decoded by `ferrite_protocol::auth`, which checks every
//! length first; each command waits at most the queue's timeout.

use ferrite_protocol::auth::{
    AUTHID_DHCHAP, AuthCommand, AuthMessage, Failure, Negotiate, RECEIVE_BUFFER, Reply, failure,
    msg,
};
use ferrite_protocol::dhchap::{
    DH_PRIVATE_LEN, DhGroup, HashId, ResponseInput, controller_response, dh_public,
    dh_shared_secret, host_response, responses_match,
};
use rand::RngCore;
use tracing::{debug, info};

use crate::error::{HostError, check_status};
use crate::options::HostOptions;
use crate::queue::{OutData, Queue, Request};

fn auth_error(qid: u16, what: impl Into<String>) -> HostError {
    HostError::Authentication {
        qid,
        reason: what.into(),
    }
}

async fn send(q: &Queue, m: &AuthMessage) -> Result<(), HostError> {
    let bytes = m
        .encode()
        .map_err(|e| HostError::InvalidRequest(e.to_string()))?;
    let sqe = AuthCommand::dhchap(bytes.len() as u32).to_sqe(true);
    let c = q
        .submit(
            "authentication send",
            Request {
                sqe,
                data_out: Some(OutData::new(bytes)),
                data_in_len: 0,
            },
        )
        .await?;
    check_status("authentication send", c.cqe.status)
}

async fn receive(q: &Queue) -> Result<AuthMessage, HostError> {
    let sqe = AuthCommand::dhchap(RECEIVE_BUFFER).to_sqe(false);
    let c = q
        .submit(
            "authentication receive",
            Request {
                sqe,
                data_out: None,
                data_in_len: RECEIVE_BUFFER as usize,
            },
        )
        .await?;
    check_status("authentication receive", c.cqe.status)?;
    AuthMessage::decode(&c.data).map_err(|e| {
        HostError::InvalidResponse(format!("authentication message from the controller: {e}"))
    })
}

/// Tells the controller we refuse it (AUTH_Failure2), then returns the error.
async fn refuse(q: &Queue, qid: u16, t_id: u16, reason: u8, why: String) -> HostError {
    let f = AuthMessage::Failure(Failure {
        auth_id: msg::FAILURE2,
        t_id,
        rescode: failure::REASON_FAILED,
        rescode_exp: reason,
    });
    if let Err(e) = send(q, &f).await {
        debug!(qid, error = %e, "sending AUTH_Failure2 failed");
    }
    auth_error(qid, why)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// What the host computes from a Challenge: its Reply and, if bidirectional, the controller
/// response it expects.
struct Computed {
    reply: Reply,
    expected_r2: Option<Vec<u8>>,
}

fn compute(
    opts: &HostOptions,
    subnqn: &str,
    hash: HashId,
    group: DhGroup,
    ch: &ferrite_protocol::auth::Challenge,
) -> Result<Computed, String> {
    let secret = opts
        .dhchap_secret
        .as_ref()
        .ok_or("no DH-HMAC-CHAP secret")?;
    let (dh_value, session_key) = if group == DhGroup::Null {
        (Vec::new(), None)
    } else {
        let private = random_bytes(DH_PRIVATE_LEN);
        let public = dh_public(group, &private).map_err(|e| e.to_string())?;
        let shared = dh_shared_secret(group, &private, &ch.dh_value).map_err(|e| e.to_string())?;
        (public, Some(shared))
    };
    let input = ResponseInput {
        hash,
        challenge: &ch.challenge,
        session_key: session_key.as_deref(),
        seqnum: ch.seqnum,
        t_id: ch.t_id,
        hostnqn: &opts.hostnqn,
        subnqn,
    };
    let response = host_response(secret, &input);
    let (challenge, seqnum, expected_r2) = match &opts.dhchap_ctrl_secret {
        Some(ctrl) => {
            let c2 = random_bytes(hash.len());
            let s2 = loop {
                let s = rand::random::<u32>();
                if s != 0 {
                    break s;
                }
            };
            let r2 = controller_response(
                ctrl,
                &ResponseInput {
                    challenge: &c2,
                    seqnum: s2,
                    ..input
                },
            );
            (Some(c2), s2, Some(r2))
        }
        None => (None, 0, None),
    };
    Ok(Computed {
        reply: Reply {
            t_id: ch.t_id,
            response,
            challenge,
            seqnum,
            dh_value,
        },
        expected_r2,
    })
}

/// Runs DH-HMAC-CHAP on queue `qid` (just connected, with ATR set).
pub(crate) async fn authenticate(
    q: &Queue,
    opts: &HostOptions,
    subnqn: &str,
    qid: u16,
) -> Result<(), HostError> {
    if opts.dhchap_secret.is_none() {
        return Err(auth_error(
            qid,
            "the controller requires authentication and no DH-HMAC-CHAP secret is configured",
        ));
    }
    let t_id: u16 = rand::random();
    let offered_hashes: Vec<u8> = opts.dhchap_hashes.iter().map(|h| h.id()).collect();
    let offered_groups: Vec<u8> = opts.dhchap_groups.iter().map(|g| g.id()).collect();
    send(
        q,
        &AuthMessage::Negotiate(Negotiate {
            t_id,
            sc_c: 0,
            napd: 1,
            authid: AUTHID_DHCHAP,
            hashes: offered_hashes.clone(),
            dh_groups: offered_groups.clone(),
        }),
    )
    .await?;

    let ch = match receive(q).await? {
        AuthMessage::Challenge(c) => c,
        AuthMessage::Failure(f) => {
            return Err(auth_error(
                qid,
                format!(
                    "the controller refused the negotiation (reason {:#04x})",
                    f.rescode_exp
                ),
            ));
        }
        other => {
            let why = format!("expected a challenge, got {}", other.name());
            return Err(refuse(q, qid, t_id, failure::INCORRECT_MESSAGE, why).await);
        }
    };
    if ch.t_id != t_id {
        let why = format!("challenge for transaction {} (ours {t_id})", ch.t_id);
        return Err(refuse(q, qid, t_id, failure::INCORRECT_PAYLOAD, why).await);
    }
    let hash = match HashId::from_id(ch.hash) {
        Some(h) if offered_hashes.contains(&ch.hash) && ch.challenge.len() == h.len() => h,
        _ => {
            let why = format!(
                "challenge hash {} (HL {}) was not offered",
                ch.hash,
                ch.challenge.len()
            );
            return Err(refuse(q, qid, t_id, failure::HASH_UNUSABLE, why).await);
        }
    };
    let group = match DhGroup::from_id(ch.dh_group) {
        Some(g) if offered_groups.contains(&ch.dh_group) && ch.dh_value.len() == g.value_len() => g,
        _ => {
            let why = format!(
                "challenge DH group {} with a {}-byte value was not offered",
                ch.dh_group,
                ch.dh_value.len()
            );
            return Err(refuse(q, qid, t_id, failure::DHGROUP_UNUSABLE, why).await);
        }
    };
    // The DH exponentiations take milliseconds: off the async executor.
    let (o, s, c) = (opts.clone(), subnqn.to_string(), ch.clone());
    let computed = tokio::task::spawn_blocking(move || compute(&o, &s, hash, group, &c))
        .await
        .map_err(|e| auth_error(qid, format!("authentication task failed: {e}")))?;
    let computed = match computed {
        Ok(c) => c,
        Err(why) => return Err(refuse(q, qid, t_id, failure::DHGROUP_UNUSABLE, why).await),
    };
    let bidirectional = computed.expected_r2.is_some();
    send(q, &AuthMessage::Reply(computed.reply)).await?;

    let s1 = match receive(q).await? {
        AuthMessage::Success1(s) => s,
        AuthMessage::Failure(f) => {
            return Err(auth_error(
                qid,
                format!(
                    "the controller refused our response (reason {:#04x}): wrong secret?",
                    f.rescode_exp
                ),
            ));
        }
        other => {
            let why = format!("expected Success1, got {}", other.name());
            return Err(refuse(q, qid, t_id, failure::INCORRECT_MESSAGE, why).await);
        }
    };
    if s1.t_id != t_id || usize::from(s1.hl) != hash.len() {
        let why = format!("Success1 for transaction {} with HL {}", s1.t_id, s1.hl);
        return Err(refuse(q, qid, t_id, failure::INCORRECT_PAYLOAD, why).await);
    }
    if let Some(expected) = computed.expected_r2 {
        let ok = s1
            .response
            .as_deref()
            .is_some_and(|r| responses_match(r, &expected));
        if !ok {
            let why = "the controller's response does not match its secret".to_string();
            return Err(refuse(q, qid, t_id, failure::FAILED, why).await);
        }
        send(q, &AuthMessage::Success2 { t_id }).await?;
    }
    if qid == 0 {
        info!(
            qid,
            hash = hash.name(),
            dhgroup = group.name(),
            bidirectional,
            "authenticated (DH-HMAC-CHAP)"
        );
    } else {
        debug!(
            qid,
            hash = hash.name(),
            dhgroup = group.name(),
            bidirectional,
            "authenticated"
        );
    }
    Ok(())
}
