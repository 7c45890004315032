//! The reconcilers: they read FerriteNodes, StoragePools and Volumes, ask the nodes' gRPC
//! API what exists, call [`crate::decisions`], carry out what those return on the nodes and
//! write the result into each object's status.
//!
//! - [`node`]: a FerriteNode's status from `GetNodeInfo` and `ListPools`, and the garbage
//!   collection of replicas and targets on it that no Volume refers to.
//! - [`pool`]: a StoragePool created on its node (`CreatePool`), its status, and a finalizer
//!   that refuses deletion while volumes use the pool, then runs `DestroyPool`.
//! - [`volume`]: placement, replicas (`CreateReplica`), the target (`CreateVolume`), status
//!   from `GetVolume`, repair, and a finalizer running `DestroyVolume` and `DestroyReplica`.
//!
//! Every reconcile is idempotent: it starts from what the API server and the nodes say, and
//! the node API's mutating calls are idempotent by key. Progress that must survive a restart
//! (placement) is written to the status before it is acted upon. [`measured`] wraps each
//! reconcile to count and time it in [`Context::metrics`].

mod expand;
pub mod node;
pub mod pool;
pub mod volume;
pub mod world;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::{ControllerKind, Metrics};
use crate::node_api::NodeClients;

/// The field manager / controller name the operator writes with.
pub const MANAGER: &str = "ferrite-operator";

/// What every reconcile needs.
pub struct Context {
    /// The API server.
    pub client: Client,
    /// The nodes' gRPC API.
    pub nodes: NodeClients,
    /// Publishes Kubernetes Events (events.k8s.io/v1).
    pub recorder: Recorder,
    /// How often healthy objects are looked at again.
    pub resync: Duration,
    /// How long a Faulted replica whose node is away is waited for before it is replaced.
    pub repair_grace: Duration,
    /// Where reconciles and the observed object states are counted.
    pub metrics: Arc<Metrics>,
    /// How long a replica or target no Volume refers to is left before it is destroyed.
    pub orphan_grace: Duration,
    /// When each orphan was first seen.
    pub orphans: std::sync::Mutex<crate::decisions::orphans::OrphanClock>,
}

impl Context {
    /// A context for `client`; `instance` names this operator process in Events.
    pub fn new(client: Client, instance: Option<String>) -> Arc<Context> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        Arc::new(Context {
            client,
            nodes: NodeClients::default(),
            recorder,
            resync: Duration::from_secs(10),
            repair_grace: Duration::from_secs(300),
            metrics: Arc::new(Metrics::new()),
            orphan_grace: Duration::from_secs(600),
            orphans: std::sync::Mutex::new(Default::default()),
        })
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(if note.is_empty() { reason.into() } else { note }),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Events of cluster-scoped objects live in `default`; Kubernetes 1.20 validates
        // events.k8s.io/v1 Events strictly and wants the reference's namespace to match.
        let mut reference = obj.object_ref(&());
        if reference.namespace.is_none() {
            reference.namespace = Some("default".into());
        }
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}

/// Why a reconcile failed; the controller retries after [`error_policy`]'s delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A node API call failed.
    #[error("node {node}: {call}: {code:?}: {message}")]
    Node {
        /// Node name.
        node: String,
        /// The RPC.
        call: &'static str,
        /// gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The object's spec is invalid (admission should have refused it).
    #[error("invalid spec: {0}")]
    Spec(String),
    /// Deletion must wait: volumes still use the pool.
    #[error("pool {pool} is still used by volume(s) {volumes}")]
    PoolInUse {
        /// StoragePool name.
        pool: String,
        /// Volumes holding replicas in it.
        volumes: String,
    },
    /// Something else has to happen first (a node to report in, say).
    #[error("waiting: {0}")]
    Waiting(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A node API error.
    pub fn node(node: &str, call: &'static str, s: tonic::Status) -> Error {
        Error::Node {
            node: node.into(),
            call,
            code: s.code(),
            message: s.message().into(),
        }
    }
}

/// Runs `reconcile(obj, ctx)` for a `kind` controller, counting its result and timing it in
/// `ctx.metrics`.
pub async fn measured<K, F, Fut>(
    kind: ControllerKind,
    reconcile: F,
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error>
where
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let metrics = ctx.metrics.clone();
    let start = Instant::now();
    let r = reconcile(obj, ctx).await;
    metrics.reconciled(kind, start.elapsed(), r.is_ok());
    r
}

/// Retry delay after a failed reconcile.
pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    let delay = match err {
        Error::Spec(_) => Duration::from_secs(60),
        Error::PoolInUse { .. } | Error::Waiting(_) => Duration::from_secs(5),
        _ => Duration::from_secs(3),
    };
    tracing::warn!(error = %err, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Maps the finalizer helper's error into ours.
pub fn finalizer_error(e: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

/// Now, as an API time.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Writes `status` through the status subresource (JSON merge patch).
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A byte count as the API's int64.
pub fn i64_bytes(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX)
}

/// An API int64 byte count as u64 (negative: 0).
pub fn u64_bytes(b: Option<i64>) -> u64 {
    b.and_then(|b| u64::try_from(b).ok()).unwrap_or(0)
}
