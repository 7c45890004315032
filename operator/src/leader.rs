//! Leader election with a `coordination.k8s.io/v1` Lease, hand-rolled (kube-rs has none).
//!
//! - **Acquire**: read the Lease. Absent: create it holding it (a concurrent creator gets
//!   409 and loses). Held by us, or by nobody, or not renewed for `leaseDurationSeconds`:
//!   `replace` it with our identity. `replace` carries the `resourceVersion` that was read,
//!   so of two candidates racing for an expired Lease only one write succeeds (409 for the
//!   other). Otherwise wait `renew_every` and try again.
//! - **Renew**: every `renew_every` the same step; the holder rewrites `renewTime`.
//! - **Loss**: if another identity holds the Lease, or renewals have failed for a whole
//!   `lease_duration`, [`renew_until_lost`] returns and the operator exits: its controllers
//!   stop, and the process restarts as a candidate (the usual Kubernetes pattern). Because a
//!   holder gives up after `lease_duration` without a successful renewal and a candidate
//!   takes over only after `lease_duration` without a renewal, two leaders do not overlap
//!   (clock skew aside).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This process's identity (pod name, or host + pid).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_every: Duration,
}

impl LeaderConfig {
    /// Defaults: 15 s lease, renewed every 5 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Whether `spec` lets `identity` take (or keep) the Lease at `now_s` (Unix seconds).
pub fn may_hold(spec: &LeaseSpec, identity: &str, now_s: i64) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map_or(0, |t| t.0.as_second());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed + duration < now_s
}

/// One acquire-or-renew step: `Ok(true)` if we hold the Lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15);
    let now = micro_now();
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let mut spec = lease.spec.clone().unwrap_or_default();
            if !may_hold(&spec, &cfg.identity, now.0.as_second()) {
                return Ok(false);
            }
            if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(secs);
            lease.spec = Some(spec);
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this process holds the Lease.
pub async fn acquire(client: Client, cfg: &LeaderConfig) {
    let api = Api::<Lease>::namespaced(client, &cfg.namespace);
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                return;
            }
            Ok(false) => tracing::debug!("lease held by another instance"),
            Err(e) => tracing::warn!(error = %e, "leader election: lease request failed"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease until it is lost; returns why.
pub async fn renew_until_lost(client: Client, cfg: LeaderConfig) -> String {
    let api = Api::<Lease>::namespaced(client, &cfg.namespace);
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(&api, &cfg).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => return "another instance holds the lease".into(),
            Err(e) => {
                tracing::warn!(error = %e, "renewing the lease failed");
                if last_ok.elapsed() >= cfg.lease_duration {
                    return format!("lease not renewed for {:?}: {e}", cfg.lease_duration);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap_or_default(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn holder_keeps_others_wait_until_expiry() {
        assert!(may_hold(&spec("me", 100), "me", 1000));
        assert!(!may_hold(&spec("other", 100), "me", 110));
        assert!(!may_hold(&spec("other", 100), "me", 115));
        assert!(may_hold(&spec("other", 100), "me", 116));
        assert!(may_hold(&LeaseSpec::default(), "me", 0));
    }
}
