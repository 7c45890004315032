//! Objects exactly as a Kubernetes 1.20 API server returned them (captured with
//! `kubectl get -o json` after applying `manifests/crds.yaml`, with defaults filled in by
//! the server and status written through the status subresource) deserialize into the Rust
//! types built on k8s-openapi's v1_33 definitions.

use ferrite_operator::crd::{
    FerriteNode, MemberState, NodePhase, PoolPhase, ReplicaState, StoragePool, StripeSize, Volume,
    VolumeState,
};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn volume_from_the_api_server() {
    let v: Volume = fixture("volume-k8s-1.20.json");
    // Defaults applied by the server.
    assert_eq!((v.spec.replicas, v.spec.thin), (2, true));
    assert_eq!(v.spec.validate().map(|s| s.replicas), Ok(2));
    let status = v.status.expect("status");
    assert_eq!(status.state, Some(VolumeState::Rebuilding));
    assert_eq!(status.replicas.len(), 2);
    assert_eq!(status.replicas[1].state, ReplicaState::Rebuilding);
    assert_eq!(
        status.replicas[1].rebuild_progress.map(|p| p.bytes_done),
        Some(1024)
    );
    assert!(status.replicas[0].last_transition_time.is_some());
    assert_eq!(status.conditions[0].observed_generation, Some(1));
    assert!(v.metadata.uid.is_some());
}

#[test]
fn storage_pool_from_the_api_server() {
    let p: StoragePool = fixture("storagepool-k8s-1.20.json");
    assert_eq!(p.spec.stripe_size, StripeSize::S64Ki);
    assert_eq!(p.spec.validate().map(|d| d.len()), Ok(3));
    let status = p.status.expect("status");
    assert_eq!(status.phase, Some(PoolPhase::Online));
    assert_eq!(status.members[0].state, MemberState::Online);
    assert_eq!(status.capacity_bytes, Some(1 << 30));
}

#[test]
fn ferrite_node_from_the_api_server() {
    let n: FerriteNode = fixture("ferritenode-k8s-1.20.json");
    assert!(n.spec.schedulable);
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("zone"))
            .map(String::as_str),
        Some("a")
    );
    let status = n.status.expect("status");
    assert_eq!(status.phase, Some(NodePhase::Ready));
    assert_eq!(status.nvme_endpoints[0].port, 4420);
}
