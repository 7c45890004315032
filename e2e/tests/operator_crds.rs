//! Ferrite's CRDs (`manifests/crds.yaml`) against a real Kubernetes 1.20 API server (the
//! `e2e/kube` bed): they install and become Established, a valid StoragePool is accepted and
//! defaulted, an invalid one (no disks, bad stripe size) is refused with a readable message,
//! and `kubectl get` shows the printer columns. Fails when the bed's binaries are not
//! cached on this machine (run `e2e/kube/prepare.sh` once).

use std::time::Duration;

use ferrite_e2e::kube::KubeBed;

fn bed() -> Option<KubeBed> {
    KubeBed::require();
    Some(KubeBed::start().expect("start the kube bed"))
}

const GOOD_POOL: &str = r#"
apiVersion: ferrite.dev/v1alpha1
kind: StoragePool
metadata:
  name: pool-a
spec:
  node: node-a
  disks: ["ram:256MiB", "file:/var/lib/ferrite/a.img:1GiB"]
"#;

const EMPTY_DISKS: &str = r#"
apiVersion: ferrite.dev/v1alpha1
kind: StoragePool
metadata:
  name: pool-bad
spec:
  node: node-a
  disks: []
"#;

const BAD_STRIPE: &str = r#"
apiVersion: ferrite.dev/v1alpha1
kind: StoragePool
metadata:
  name: pool-bad-stripe
spec:
  node: node-a
  disks: ["ram:64MiB"]
  stripeSize: 3Ki
"#;

const NODE_AND_VOLUME: &str = r#"
apiVersion: ferrite.dev/v1alpha1
kind: FerriteNode
metadata:
  name: node-a
  labels: {zone: a}
spec:
  apiEndpoint: http://127.0.0.1:9500
---
apiVersion: ferrite.dev/v1alpha1
kind: Volume
metadata:
  name: vol-1
spec:
  sizeBytes: 1073741824
"#;

#[test]
fn crds_install_validate_and_print() {
    let Some(bed) = bed() else { return };
    bed.install_crds().expect("install the CRDs");

    // Every CRD is served: `kubectl get ferrite` lists the category (empty at first).
    let names = bed
        .kubectl_ok(&["get", "crd", "-o", "name"])
        .expect("list CRDs");
    for crd in [
        "storagepools.ferrite.dev",
        "volumes.ferrite.dev",
        "ferritenodes.ferrite.dev",
    ] {
        assert!(names.contains(crd), "{crd} missing from:\n{names}");
    }

    // A valid pool is accepted and defaulted (stripe size 64Ki).
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], GOOD_POOL)
        .expect("kubectl");
    assert!(r.ok, "valid pool refused: {}", r.stderr);
    let stripe = bed
        .kubectl_ok(&[
            "get",
            "storagepool",
            "pool-a",
            "-o",
            "jsonpath={.spec.stripeSize}",
        ])
        .expect("get pool");
    assert_eq!(stripe, "64Ki");

    // An empty disk list is refused at admission, with a message naming the field.
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], EMPTY_DISKS)
        .expect("kubectl");
    assert!(!r.ok, "a pool without disks was accepted");
    assert!(
        r.stderr.contains("spec.disks") && r.stderr.contains("should have at least 1 items"),
        "unexpected message: {}",
        r.stderr
    );
    let r = bed
        .kubectl(&["get", "storagepool", "pool-bad"])
        .expect("kubectl");
    assert!(!r.ok, "the refused pool exists");

    // A stripe size outside the list is refused, naming the accepted values.
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], BAD_STRIPE)
        .expect("kubectl");
    assert!(!r.ok, "a 3Ki stripe was accepted");
    assert!(
        r.stderr.contains("spec.stripeSize") && r.stderr.contains("64Ki"),
        "unexpected message: {}",
        r.stderr
    );

    // Printer columns.
    let table = bed.kubectl_ok(&["get", "storagepools"]).expect("get pools");
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "NODE", "PHASE", "CAPACITY", "FREE", "AGE"] {
        assert!(header.contains(col), "column {col} missing: {header}");
    }
    assert!(
        table.contains("pool-a") && table.contains("node-a"),
        "{table}"
    );

    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], NODE_AND_VOLUME)
        .expect("kubectl");
    assert!(r.ok, "node/volume refused: {}", r.stderr);
    let table = bed.kubectl_ok(&["get", "volumes"]).expect("get volumes");
    let header = table.lines().next().unwrap_or_default();
    for col in ["SIZE", "REPLICAS", "STATE", "NODE"] {
        assert!(
            header.contains(col),
            "volume column {col} missing: {header}"
        );
    }
    let replicas = bed
        .kubectl_ok(&[
            "get",
            "volume",
            "vol-1",
            "-o",
            "jsonpath={.spec.replicas}/{.spec.thin}",
        ])
        .expect("get volume");
    assert_eq!(replicas, "2/true");
    let table = bed.kubectl_ok(&["get", "fnode"]).expect("get nodes");
    let header = table.lines().next().unwrap_or_default();
    for col in ["ENDPOINT", "PHASE", "SCHEDULABLE"] {
        assert!(header.contains(col), "node column {col} missing: {header}");
    }
    let all = bed
        .kubectl_ok(&["get", "ferrite", "-o", "name"])
        .expect("get ferrite");
    assert_eq!(all.lines().count(), 3, "{all}");

    // A bad apiEndpoint is refused.
    let bad_node = "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {name: bad}\nspec: {apiEndpoint: 'ftp://x'}\n";
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], bad_node)
        .expect("kubectl");
    assert!(
        !r.ok && r.stderr.contains("spec.apiEndpoint"),
        "{}",
        r.stderr
    );
    // A Volume allowing a host that is not an NQN is refused.
    let bad_host = "apiVersion: ferrite.dev/v1alpha1\nkind: Volume\nmetadata: {name: bad-host}\nspec: {sizeBytes: 4096, allowedHosts: [node-1]}\n";
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], bad_host)
        .expect("kubectl");
    assert!(
        !r.ok && r.stderr.contains("spec.allowedHosts"),
        "{}",
        r.stderr
    );

    // The bed stays usable for waits.
    bed.wait_for("pool-a listed", Duration::from_secs(5), || {
        bed.kubectl(&["get", "storagepool", "pool-a"])
            .ok()
            .filter(|r| r.ok)
    })
    .expect("wait");
}
