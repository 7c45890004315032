//! The Helm chart (`charts/ferrite`), the plain manifest (`manifests/install.yaml`) and the
//! images (`docker/`):
//! - `helm lint --strict` and `helm template` with the default values and with a values file
//!   that changes images, tolerations, node selectors, pools, seccomp, storage classes and
//!   metrics; a Localhost seccomp profile without its path is refused;
//! - `manifests/install.yaml` and the chart's `crds/` are what `scripts/render-manifests`
//!   makes now (stale files fail, with the command to run);
//! - the Dockerfiles build packages and binaries that exist in the workspace;
//! - against a real Kubernetes 1.20 API server (`e2e/kube`): `kubectl apply --dry-run=server`
//!   and then a real apply of `manifests/install.yaml` accept every object; the operator's
//!   ServiceAccount may do every (verb, resource) the operator and its CSI sidecars use and
//!   nothing else we probe; the non-default rendering applies too; the node init script
//!   (`docker/ferrite-node-init`) registers a FerriteNode and creates a default StoragePool
//!   with the node ServiceAccount's own token and the environment the DaemonSet gives it.
//!
//! Helm and the bed come from `e2e/kube/prepare.sh`; without them the tests say so and skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferrite_e2e::helm::{self, NAMESPACE};
use ferrite_e2e::kube::KubeBed;
use ferrite_e2e::workspace_root;

const OPERATOR_SA: &str = "system:serviceaccount:ferrite-system:ferrite-operator";
const NODE_SA: &str = "system:serviceaccount:ferrite-system:ferrite-node";

/// What the operator pod's ServiceAccount must be allowed: (verb, resource as `kubectl auth
/// can-i` takes it, subresource, namespace).
///
/// The ferrite-operator part mirrors what `operator/src` calls (kube `Api<K>` for the three
/// CRDs with their status subresources and finalizers, events.k8s.io events, Lease-based
/// leader election, reads of StorageClasses, CSINodes, Nodes and PersistentVolumes);
/// [`operator_api_types_are_covered`] fails when the operator starts using a Kubernetes type
/// that is not listed in [`COVERED_API_TYPES`]. The sidecar part is the upstream RBAC of
/// external-provisioner v3, external-attacher v4 and external-resizer v1 (with
/// `--handle-volume-inuse-error=false`, so no pods).
const OPERATOR_NEEDS: &[(&str, &str, &str, &str)] = &[
    // ferrite-operator: the node API certificates (read by name only: OPERATOR_DENIED has
    // get and list of secrets in general)
    ("create", "secrets", "", NAMESPACE),
    ("get", "secrets/ferrite-node-api-tls", "", NAMESPACE),
    // ferrite-operator: its resources
    ("get", "ferritenodes.ferrite.dev", "", ""),
    ("list", "ferritenodes.ferrite.dev", "", ""),
    ("watch", "ferritenodes.ferrite.dev", "", ""),
    ("create", "ferritenodes.ferrite.dev", "", ""),
    ("update", "ferritenodes.ferrite.dev", "", ""),
    ("patch", "ferritenodes.ferrite.dev", "", ""),
    ("delete", "ferritenodes.ferrite.dev", "", ""),
    ("get", "storagepools.ferrite.dev", "", ""),
    ("list", "storagepools.ferrite.dev", "", ""),
    ("watch", "storagepools.ferrite.dev", "", ""),
    ("create", "storagepools.ferrite.dev", "", ""),
    ("update", "storagepools.ferrite.dev", "", ""),
    ("patch", "storagepools.ferrite.dev", "", ""),
    ("delete", "storagepools.ferrite.dev", "", ""),
    ("get", "volumes.ferrite.dev", "", ""),
    ("list", "volumes.ferrite.dev", "", ""),
    ("watch", "volumes.ferrite.dev", "", ""),
    ("create", "volumes.ferrite.dev", "", ""),
    ("update", "volumes.ferrite.dev", "", ""),
    ("patch", "volumes.ferrite.dev", "", ""),
    ("delete", "volumes.ferrite.dev", "", ""),
    ("get", "ferritenodes.ferrite.dev", "status", ""),
    ("update", "ferritenodes.ferrite.dev", "status", ""),
    ("patch", "ferritenodes.ferrite.dev", "status", ""),
    ("patch", "storagepools.ferrite.dev", "status", ""),
    ("update", "storagepools.ferrite.dev", "status", ""),
    ("patch", "volumes.ferrite.dev", "status", ""),
    ("update", "volumes.ferrite.dev", "status", ""),
    ("update", "storagepools.ferrite.dev", "finalizers", ""),
    ("update", "volumes.ferrite.dev", "finalizers", ""),
    // ferrite-operator: events (cluster-scoped objects' events land in `default`)
    ("create", "events.events.k8s.io", "", "default"),
    ("patch", "events.events.k8s.io", "", "default"),
    ("create", "events.events.k8s.io", "", NAMESPACE),
    // leader election (operator + sidecars), in the release namespace
    ("get", "leases.coordination.k8s.io", "", NAMESPACE),
    ("create", "leases.coordination.k8s.io", "", NAMESPACE),
    ("update", "leases.coordination.k8s.io", "", NAMESPACE),
    // ferrite-operator + external-provisioner (topology) + external-attacher: reads
    ("get", "storageclasses.storage.k8s.io", "", ""),
    ("list", "storageclasses.storage.k8s.io", "", ""),
    ("watch", "storageclasses.storage.k8s.io", "", ""),
    ("get", "csinodes.storage.k8s.io", "", ""),
    ("list", "csinodes.storage.k8s.io", "", ""),
    ("watch", "csinodes.storage.k8s.io", "", ""),
    ("get", "nodes", "", ""),
    ("list", "nodes", "", ""),
    ("watch", "nodes", "", ""),
    ("get", "persistentvolumes", "", ""),
    ("list", "persistentvolumes", "", ""),
    ("watch", "persistentvolumes", "", ""),
    // external-provisioner
    ("create", "persistentvolumes", "", ""),
    ("delete", "persistentvolumes", "", ""),
    ("get", "persistentvolumeclaims", "", "default"),
    ("list", "persistentvolumeclaims", "", ""),
    ("watch", "persistentvolumeclaims", "", ""),
    ("update", "persistentvolumeclaims", "", "default"),
    ("create", "events", "", "default"),
    ("patch", "events", "", "default"),
    ("list", "volumeattachments.storage.k8s.io", "", ""),
    ("watch", "volumeattachments.storage.k8s.io", "", ""),
    // external-attacher
    ("patch", "persistentvolumes", "", ""),
    ("get", "volumeattachments.storage.k8s.io", "", ""),
    ("patch", "volumeattachments.storage.k8s.io", "", ""),
    ("patch", "volumeattachments.storage.k8s.io", "status", ""),
    // external-resizer
    ("patch", "persistentvolumeclaims", "status", "default"),
];

/// What the operator's ServiceAccount must NOT be able to do (a sample of what least
/// privilege rules out).
const OPERATOR_DENIED: &[(&str, &str, &str, &str)] = &[
    ("get", "secrets", "", NAMESPACE),
    ("list", "secrets", "", ""),
    ("delete", "secrets", "", "default"),
    ("create", "pods", "", "default"),
    ("list", "pods", "", ""),
    ("delete", "nodes", "", ""),
    ("update", "nodes", "", ""),
    ("delete", "persistentvolumeclaims", "", "default"),
    ("create", "leases.coordination.k8s.io", "", "kube-system"),
    ("create", "clusterroles.rbac.authorization.k8s.io", "", ""),
    (
        "create",
        "rolebindings.rbac.authorization.k8s.io",
        "",
        NAMESPACE,
    ),
    (
        "delete",
        "customresourcedefinitions.apiextensions.k8s.io",
        "",
        "",
    ),
    ("create", "storageclasses.storage.k8s.io", "", ""),
    ("delete", "csidrivers.storage.k8s.io", "", ""),
    ("create", "serviceaccounts", "", NAMESPACE),
    ("create", "serviceaccounts", "token", NAMESPACE),
    ("*", "*", "", ""),
];

/// The node DaemonSet's ServiceAccount (only its init container calls the API).
const NODE_NEEDS: &[(&str, &str, &str, &str)] = &[
    ("get", "ferritenodes.ferrite.dev", "", ""),
    ("create", "ferritenodes.ferrite.dev", "", ""),
    ("patch", "ferritenodes.ferrite.dev", "", ""),
];
const NODE_DENIED: &[(&str, &str, &str, &str)] = &[
    ("delete", "ferritenodes.ferrite.dev", "", ""),
    ("patch", "ferritenodes.ferrite.dev", "status", ""),
    ("update", "volumes.ferrite.dev", "", ""),
    ("list", "volumes.ferrite.dev", "", ""),
    // storagepools only when storagePools.default.disks is set (not by default)
    ("create", "storagepools.ferrite.dev", "", ""),
    ("get", "secrets", "", NAMESPACE),
    ("create", "pods", "", "default"),
    ("get", "nodes", "", ""),
    ("*", "*", "", ""),
];

/// The Kubernetes types the operator may use through `kube::Api<K>` (and events through
/// `kube::runtime::events`), all covered by [`OPERATOR_NEEDS`].
const COVERED_API_TYPES: &[&str] = &[
    "FerriteNode",
    "StoragePool",
    "Volume",
    "Lease",
    "Event",
    "StorageClass",
    "CSINode",
    "Node",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "VolumeAttachment",
    "Secret",
    "DynamicObject",
];

/// A values file that changes everything the chart lets users change. `DISKDIR` is replaced
/// by a folder of fake disks.
const CUSTOM_VALUES: &str = r#"
kubeletDir: /var/lib/k0s/kubelet
hostStateDir: /srv/ferrite
imagePullSecrets: [{name: regcred}]
images:
  operator: {repository: registry.example.com/ferrite/operator, tag: "9.9.9-test", pullPolicy: Always}
  datapath: {repository: registry.example.com/ferrite/datapath, tag: "9.9.9-test", pullPolicy: Always}
  csiNode: {repository: registry.example.com/ferrite/csi-node, tag: "9.9.9-test", pullPolicy: Always}
  csiProvisioner: {repository: mirror.example.com/sig-storage/csi-provisioner, tag: v3.6.4-mirror, pullPolicy: Never}
operator:
  replicas: 2
  metricsPort: 9090
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
node:
  nodeSelector: {ferrite.dev/storage: "true"}
  tolerations: [{key: ferrite.dev/storage, operator: Exists, effect: NoSchedule}]
  datapath:
    nvmePort: 4421
    seccompProfile: {type: Localhost, localhostProfile: profiles/ferrite-datapath.json}
    resources: {requests: {cpu: "2", memory: 1Gi}, limits: {memory: 4Gi}}
storagePools:
  pools:
    - {node: worker-2, name: worker-2-nvme, disks: [/dev/nvme1n1, /dev/nvme2n1], stripeSize: 128Ki}
  default: {disks: ["DISKDIR/disk-*", "DISKDIR/missing-*"], stripeSize: 256Ki}
storageClasses:
  - name: ferrite-triple
    isDefaultClass: true
    replicas: 3
    fsType: xfs
    reclaimPolicy: Retain
    volumeBindingMode: WaitForFirstConsumer
    allowVolumeExpansion: true
    thin: false
    extraParameters: {headerDigest: "true"}
metrics:
  serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
"#;

/// Helm from the bed; a missing bed fails the test (CI must never pass without running it).
fn helm_bin() -> PathBuf {
    helm::helm_path().expect("no helm: run e2e/kube/prepare.sh (it fetches it) or set FERRITE_HELM")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Writes [`CUSTOM_VALUES`] (with `DISKDIR` filled in) into `dir`.
fn custom_values(dir: &Path, disk_dir: &Path) -> PathBuf {
    let p = dir.join("custom-values.yaml");
    std::fs::write(
        &p,
        CUSTOM_VALUES.replace("DISKDIR", &disk_dir.display().to_string()),
    )
    .expect("write values");
    p
}

fn kinds(docs: &[String]) -> BTreeSet<(String, String)> {
    docs.iter().map(|d| helm::kind_and_name(d)).collect()
}

#[test]
fn chart_lints_and_renders_with_default_values() {
    let h = helm_bin();
    let lint = helm::lint(&h, None);
    assert!(lint.ok, "helm lint failed:\n{}{}", lint.stdout, lint.stderr);
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);

    let r = helm::template(&h, None, &[]);
    assert!(r.ok, "helm template failed: {}", r.stderr);
    let docs = helm::documents(&r.stdout);
    let got = kinds(&docs);
    for (kind, name) in [
        ("CustomResourceDefinition", "ferritenodes.ferrite.dev"),
        ("CustomResourceDefinition", "storagepools.ferrite.dev"),
        ("CustomResourceDefinition", "volumes.ferrite.dev"),
        ("ServiceAccount", "ferrite-operator"),
        ("ServiceAccount", "ferrite-node"),
        ("ClusterRole", "ferrite-operator"),
        ("ClusterRoleBinding", "ferrite-operator"),
        ("Role", "ferrite-operator-leader-election"),
        ("RoleBinding", "ferrite-operator-leader-election"),
        ("ClusterRole", "ferrite-node"),
        ("ClusterRoleBinding", "ferrite-node"),
        ("Deployment", "ferrite-operator"),
        ("DaemonSet", "ferrite-node"),
        ("CSIDriver", "csi.ferrite.dev"),
        ("StorageClass", "ferrite-mirrored"),
        ("StorageClass", "ferrite-single"),
        ("Service", "ferrite-node-metrics"),
    ] {
        assert!(
            got.contains(&(kind.to_string(), name.to_string())),
            "{kind} {name} missing; rendered: {got:?}"
        );
    }
    assert!(
        !got.iter()
            .any(|(k, _)| k == "ServiceMonitor" || k == "StoragePool"),
        "{got:?}"
    );
    // Only APIs Kubernetes 1.20 serves.
    for d in &docs {
        let api = d
            .lines()
            .find_map(|l| l.strip_prefix("apiVersion: "))
            .unwrap_or("")
            .trim()
            .to_string();
        assert!(
            [
                "v1",
                "apps/v1",
                "rbac.authorization.k8s.io/v1",
                "storage.k8s.io/v1",
                "apiextensions.k8s.io/v1"
            ]
            .contains(&api.as_str()),
            "apiVersion {api} in {:?}",
            helm::kind_and_name(d)
        );
    }

    let driver = helm::find(&docs, "CSIDriver", "csi.ferrite.dev").expect("CSIDriver");
    for want in [
        "attachRequired: true",
        "podInfoOnMount: true",
        "- Persistent",
    ] {
        assert!(driver.contains(want), "CSIDriver lacks {want}:\n{driver}");
    }
    let mirrored = helm::find(&docs, "StorageClass", "ferrite-mirrored").expect("class");
    assert!(
        mirrored.contains("replicas: \"2\"") && mirrored.contains("provisioner: csi.ferrite.dev"),
        "{mirrored}"
    );
    assert!(
        helm::find(&docs, "StorageClass", "ferrite-single")
            .expect("class")
            .contains("replicas: \"1\"")
    );

    let ds = helm::find(&docs, "DaemonSet", "ferrite-node").expect("DaemonSet");
    for want in [
        "hostNetwork: true",
        "privileged: true",
        "type: Unconfined",
        "path: /v1/status",
        "port: 9420",
        "mountPropagation: Bidirectional",
        "mountPath: /dev",
        "mountPath: /sys",
        "path: /var/lib/ferrite",
        "--state-dir=/var/lib/ferrite/datapath",
        "--state-dir=/var/lib/ferrite/csi-node",
        "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.ferrite.dev/csi.sock",
        "path: /var/lib/kubelet/plugins_registry",
        "image: ghcr.io/ferrite-storage/ferrite-datapath:0.1.0",
        "image: ghcr.io/ferrite-storage/ferrite-csi-node:0.1.0",
        "csi-node-driver-registrar:",
    ] {
        assert!(ds.contains(want), "DaemonSet lacks {want:?}:\n{ds}");
    }
    let dep = helm::find(&docs, "Deployment", "ferrite-operator").expect("Deployment");
    for want in [
        "--csi-endpoint=unix:///csi/csi.sock",
        "--driver-name=csi.ferrite.dev",
        "csi-provisioner:",
        "csi-attacher:",
        "csi-resizer:",
        "--leader-election=true",
        "serviceAccountName: ferrite-operator",
        "fieldPath: metadata.name",
    ] {
        assert!(dep.contains(want), "Deployment lacks {want:?}:\n{dep}");
    }
    assert!(
        !dep.contains("- --no-leader-elect"),
        "leader election is on by default"
    );
    // Operator metrics are off by default (operator.metricsPort 0).
    assert!(!dep.contains("--metrics"), "{dep}");
    assert!(helm::find(&docs, "Service", "ferrite-operator-metrics").is_none());
    // The CRDs are the generated ones.
    let norm = |d: &String| -> String {
        d.lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rendered: Vec<String> = docs.iter().map(norm).collect();
    let crds = read("manifests/crds.yaml");
    for d in helm::documents(&crds) {
        assert!(
            rendered.contains(&norm(&d)),
            "chart CRD differs from manifests/crds.yaml: {:?}",
            helm::kind_and_name(&d)
        );
    }
}

#[test]
fn chart_renders_non_default_values() {
    let h = helm_bin();
    let tmp = tempfile::tempdir().expect("tmp");
    let values = custom_values(tmp.path(), Path::new("/dev/fake"));
    let lint = helm::lint(&h, Some(&values));
    assert!(
        lint.ok,
        "helm lint -f custom failed:\n{}{}",
        lint.stdout, lint.stderr
    );
    let r = helm::template(&h, Some(&values), &[]);
    assert!(r.ok, "helm template -f custom failed: {}", r.stderr);
    let docs = helm::documents(&r.stdout);
    let got = kinds(&docs);
    for (kind, name) in [
        ("ServiceMonitor", "ferrite-operator"),
        ("ServiceMonitor", "ferrite-node"),
        ("StoragePool", "worker-2-nvme"),
        ("StorageClass", "ferrite-triple"),
    ] {
        assert!(
            got.contains(&(kind.to_string(), name.to_string())),
            "{kind} {name} missing: {got:?}"
        );
    }
    assert!(!got.contains(&("StorageClass".into(), "ferrite-mirrored".into())));

    let ds = helm::find(&docs, "DaemonSet", "ferrite-node").expect("DaemonSet");
    for want in [
        "image: registry.example.com/ferrite/datapath:9.9.9-test",
        "image: registry.example.com/ferrite/csi-node:9.9.9-test",
        "imagePullPolicy: Always",
        "key: ferrite.dev/storage",
        "ferrite.dev/storage: \"true\"",
        "type: Localhost",
        "localhostProfile: profiles/ferrite-datapath.json",
        "--listen=$(NODE_IP):4421",
        "path: /var/lib/k0s/kubelet/plugins/csi.ferrite.dev",
        "mountPath: /var/lib/k0s/kubelet",
        "path: /srv/ferrite",
        "--state-dir=/srv/ferrite/datapath",
        "value: \"/dev/fake/disk-* /dev/fake/missing-*\"",
        "value: \"256Ki\"",
        "value: \"worker-2\"",
        "name: regcred",
        "memory: 4Gi",
    ] {
        assert!(ds.contains(want), "DaemonSet lacks {want:?}:\n{ds}");
    }
    let dep = helm::find(&docs, "Deployment", "ferrite-operator").expect("Deployment");
    for want in [
        "replicas: 2",
        "- --metrics=0.0.0.0:9090",
        "containerPort: 9090",
        "image: registry.example.com/ferrite/operator:9.9.9-test",
        "image: mirror.example.com/sig-storage/csi-provisioner:v3.6.4-mirror",
        "imagePullPolicy: Never",
        "key: node-role.kubernetes.io/control-plane",
        "kubernetes.io/os: linux",
    ] {
        assert!(dep.contains(want), "Deployment lacks {want:?}:\n{dep}");
    }
    let class = helm::find(&docs, "StorageClass", "ferrite-triple").unwrap();
    for want in [
        "storageclass.kubernetes.io/is-default-class: \"true\"",
        "replicas: \"3\"",
        "thin: \"false\"",
        "csi.storage.k8s.io/fstype: \"xfs\"",
        "headerDigest: \"true\"",
        "reclaimPolicy: Retain",
    ] {
        assert!(class.contains(want), "class lacks {want:?}:\n{class}");
    }
    let pool = helm::find(&docs, "StoragePool", "worker-2-nvme").unwrap();
    assert!(
        pool.contains("node: \"worker-2\"")
            && pool.contains("- /dev/nvme2n1")
            && pool.contains("stripeSize: \"128Ki\""),
        "{pool}"
    );
    let sm = helm::find(&docs, "ServiceMonitor", "ferrite-node").unwrap();
    assert!(
        sm.contains("interval: 15s") && sm.contains("release: prometheus"),
        "{sm}"
    );
    // With default pools the node may read and create StoragePools.
    let role = helm::find(&docs, "ClusterRole", "ferrite-node").unwrap();
    assert!(role.contains("storagepools"), "{role}");

    // Bad combinations are refused with a clear message.
    let r = helm::template(&h, None, &["node.datapath.seccompProfile.type=Localhost"]);
    assert!(
        !r.ok && r.stderr.contains("localhostProfile is required"),
        "{}",
        r.stderr
    );
    let r = helm::template(
        &h,
        None,
        &[
            "metrics.service.enabled=false",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(
        !r.ok && r.stderr.contains("needs metrics.service.enabled"),
        "{}",
        r.stderr
    );
    // Leader election off: the operator and the sidecars are told so.
    let r = helm::template(&h, None, &["operator.leaderElection=false"]);
    assert!(r.ok, "{}", r.stderr);
    let dep = helm::documents(&r.stdout)
        .into_iter()
        .find(|d| helm::kind_and_name(d).0 == "Deployment")
        .unwrap();
    assert!(
        dep.contains("- --no-leader-elect")
            && dep.contains("--leader-election=false")
            && !dep.contains("--leader-election=true"),
        "{dep}"
    );
    // Without an operator metrics port: no flag, no Service, no ServiceMonitor for it.
    let r = helm::template(
        &h,
        None,
        &[
            "operator.metricsPort=0",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    let d = helm::documents(&r.stdout);
    assert!(
        !r.stdout.contains("--metrics"),
        "operator.metricsPort=0 still passes --metrics"
    );
    assert!(helm::find(&d, "Service", "ferrite-operator-metrics").is_none());
    assert!(helm::find(&d, "ServiceMonitor", "ferrite-operator").is_none());
    assert!(helm::find(&d, "ServiceMonitor", "ferrite-node").is_some());
    // Registration off: no node ClusterRole at all.
    let r = helm::template(&h, None, &["node.register=false"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(helm::find(&helm::documents(&r.stdout), "ClusterRole", "ferrite-node").is_none());
}

#[test]
fn install_manifest_and_chart_crds_are_fresh() {
    let h = helm_bin();
    let out = Command::new(workspace_root().join("scripts/render-manifests"))
        .arg("--check")
        .env("FERRITE_HELM", &h)
        .output()
        .expect("run scripts/render-manifests --check");
    assert!(
        out.status.success(),
        "manifests/install.yaml or charts/ferrite/crds/ is stale: run scripts/render-manifests\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read("manifests/crds.yaml"),
        read("charts/ferrite/crds/crds.yaml")
    );
}

/// Every flag the chart passes to Ferrite's own binaries is one they accept (`--help`).
#[test]
fn chart_flags_exist_in_the_binaries() {
    let h = helm_bin();
    let r = helm::template(
        &h,
        None,
        &["operator.leaderElection=false", "operator.metricsPort=9421"],
    );
    assert!(r.ok, "{}", r.stderr);
    let docs = helm::documents(&r.stdout);
    let ds = helm::find(&docs, "DaemonSet", "ferrite-node").expect("DaemonSet");
    let dep = helm::find(&docs, "Deployment", "ferrite-operator").expect("Deployment");
    let mut missing = Vec::new();
    for (doc, container, pkg, bin) in [
        (ds, "datapath", "ferrite-datapath", "ferrite-datapath"),
        (ds, "csi-node", "ferrite-csi-node", "ferrite-csi-node"),
        (dep, "operator", "ferrite-operator", "ferrite-operator"),
    ] {
        let args = helm::container_args(doc, container);
        assert!(args.len() >= 2, "no args found for {container}: {args:?}");
        let path = helm::build_binary(pkg, bin).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(&path).arg("--help").output().expect("--help");
        let help = String::from_utf8_lossy(&out.stdout);
        for a in args {
            let flag = a.split('=').next().unwrap().to_string();
            if !help.contains(&format!("{flag} "))
                && !help.contains(&format!("{flag}\n"))
                && !help.contains(&format!("{flag}="))
            {
                missing.push(format!("{bin} {flag}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the chart passes flags the binaries do not know: {missing:?}"
    );
}

/// The node pod's startup, without a kubelet: `ferrite-node-init` (registration off) writes
/// the config, then `ferrite-datapath` runs with exactly the DaemonSet's arguments
/// (`$(NODE_IP)` = 127.0.0.1, state folder and ports moved to free ones) and answers the
/// liveness probe's `GET /v1/status` with 200.
#[test]
fn datapath_starts_with_the_daemonset_arguments() {
    let h = helm_bin();
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let ports: Vec<u16> = (0..3)
        .map(|_| ferrite_e2e::free_port().expect("port"))
        .collect();
    let sets = [
        format!("node.datapath.nvmePort={}", ports[0]),
        format!("node.datapath.httpPort={}", ports[1]),
        format!("node.datapath.grpcPort={}", ports[2]),
        format!("hostStateDir={}", state.display()),
        "node.register=false".to_string(),
    ];
    let r = helm::template(
        &h,
        None,
        &sets.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(r.ok, "{}", r.stderr);
    let docs = helm::documents(&r.stdout);
    let ds = helm::find(&docs, "DaemonSet", "ferrite-node").expect("DaemonSet");
    let config = tmp.path().join("run/datapath.yaml");
    let init = Command::new("sh")
        .arg(workspace_root().join("docker/ferrite-node-init"))
        .env("NODE_NAME", "worker-1")
        .env("REGISTER", "false")
        .env("CONFIG_OUT", &config)
        .output()
        .expect("ferrite-node-init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let args: Vec<String> = helm::container_args(ds, "datapath")
        .into_iter()
        .map(|a| {
            // The node API's TLS Secret mount holds what the test PKI folder holds.
            a.replace("$(NODE_IP)", "127.0.0.1")
                .replace(
                    "--config=/run/ferrite/datapath.yaml",
                    &format!("--config={}", config.display()),
                )
                .replace(
                    "--grpc-tls-dir=/etc/ferrite/node-api-tls",
                    &format!("--grpc-tls-dir={}", ferrite_e2e::tls::pki_dir().display()),
                )
        })
        .collect();
    assert!(
        args.contains(&format!("--state-dir={}/datapath", state.display())),
        "{args:?}"
    );
    assert!(
        args.iter().any(|a| a.starts_with("--grpc-tls-dir=")),
        "the node API runs with mutual TLS by default: {args:?}"
    );
    let bin = helm::build_binary("ferrite-datapath", "ferrite-datapath")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(bin)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ferrite-datapath");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let mut status = None;
    for _ in 0..100 {
        if let Ok((code, body)) = ferrite_e2e::cluster::http_get(addr, "/v1/status") {
            status = Some((code, body));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (code, body) = status.expect("the datapath never answered on its HTTP port");
    assert_eq!(code, 200, "{body}");
}

/// `cargo build -p PKG --bin BIN` in each Dockerfile names a workspace package that has that
/// binary, and files copied from the repository exist.
#[test]
fn dockerfiles_build_workspace_binaries() {
    let root = workspace_root();
    let members: Vec<PathBuf> = {
        let ws = read("Cargo.toml");
        let start = ws.find("members = [").expect("members");
        let end = start + ws[start..].find(']').expect("]");
        ws[start..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(|m| root.join(m))
            .collect()
    };
    let package = |name: &str| -> Option<String> {
        members.iter().find_map(|m| {
            let t = std::fs::read_to_string(m.join("Cargo.toml")).ok()?;
            t.starts_with(&format!("[package]\nname = \"{name}\""))
                .then_some(t)
        })
    };
    for (file, pkg, bins, apt) in [
        (
            "docker/Dockerfile.datapath",
            "ferrite-datapath",
            &["ferrite-datapath"][..],
            &["curl"][..],
        ),
        (
            "docker/Dockerfile.operator",
            "ferrite-operator",
            &["ferrite-operator", "crdgen"][..],
            &[][..],
        ),
        (
            "docker/Dockerfile.csi-node",
            "ferrite-csi-node",
            &["ferrite-csi-node"][..],
            &["util-linux", "e2fsprogs", "xfsprogs", "nvme-cli"][..],
        ),
    ] {
        let df = read(file);
        assert!(
            df.contains("FROM rust:1-bookworm AS build")
                && df.contains("FROM debian:bookworm-slim"),
            "{file}"
        );
        assert!(
            df.contains(&format!("cargo build --release --locked -p {pkg}")),
            "{file} does not build {pkg}"
        );
        let manifest = package(pkg).unwrap_or_else(|| panic!("{file}: no workspace package {pkg}"));
        for bin in bins {
            assert!(
                df.contains(&format!("--bin {bin}")),
                "{file} does not build {bin}"
            );
            assert!(
                manifest.contains(&format!("[[bin]]\nname = \"{bin}\"")),
                "{file}: package {pkg} has no [[bin]] {bin}"
            );
        }
        for a in apt {
            assert!(df.contains(&format!(" {a}")), "{file} does not install {a}");
        }
        if pkg == "ferrite-operator" {
            assert!(
                !df.contains("apt-get"),
                "the operator image needs no packages"
            );
        }
        for line in df
            .lines()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let src = line.split_whitespace().nth(1).unwrap();
            assert!(root.join(src).exists(), "{file}: COPY {src} does not exist");
        }
    }
    assert!(
        read("charts/ferrite/templates/node-daemonset.yaml")
            .contains("/usr/local/bin/ferrite-node-init")
    );
}

/// Every Kubernetes type the operator's code names in `Api<...>` / `Api::<...>` is one whose
/// RBAC is checked above (so a new API call cannot land without a rule and a check).
#[test]
fn operator_api_types_are_covered() {
    let mut files = Vec::new();
    let mut stack = vec![workspace_root().join("operator/src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("operator/src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut uncovered = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for pat in ["Api<", "Api::<"] {
            for (i, _) in text.match_indices(pat) {
                // Skip longer identifiers such as `NodeApi<`.
                if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
                    continue;
                }
                let rest = &text[i + pat.len()..];
                let ty: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let ty = ty.rsplit("::").next().unwrap_or("").to_string();
                // Generic parameters (`Api<K>`) are fine: the concrete types are checked where used.
                if ty.is_empty() || (ty.len() <= 2 && ty.chars().all(|c| c.is_ascii_uppercase())) {
                    continue;
                }
                if !COVERED_API_TYPES.contains(&ty.as_str()) {
                    uncovered.insert(format!("{ty} ({})", f.display()));
                }
            }
        }
    }
    assert!(
        uncovered.is_empty(),
        "the operator uses Kubernetes types without RBAC rules in charts/ferrite/templates/rbac-operator.yaml \
         and checks in e2e/tests/helm_chart.rs OPERATOR_NEEDS: {uncovered:?}"
    );
}

/// Starts a bed, once more if the first start fails (two beds starting at the same moment can
/// pick the same free port).
fn start_bed() -> KubeBed {
    KubeBed::start()
        .or_else(|e| {
            eprintln!("kube bed did not start, retrying: {e}");
            KubeBed::start()
        })
        .expect("start the kube bed")
}

fn can_i(bed: &KubeBed, who: &str, (verb, resource, sub, ns): (&str, &str, &str, &str)) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", who];
    if !sub.is_empty() {
        args.extend(["--subresource", sub]);
    }
    if ns.is_empty() {
        args.push("--all-namespaces");
    } else {
        args.extend(["-n", ns]);
    }
    // An answer other than yes/no (an API hiccup under load) is retried.
    let mut last = String::new();
    for _ in 0..3 {
        let r = bed.kubectl(&args).expect("kubectl auth can-i");
        match r.stdout.trim() {
            "yes" => return true,
            "no" => return false,
            other => last = format!("{other:?} {}", r.stderr),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("kubectl {}: {last}", args.join(" "))
}

fn check_rbac(
    bed: &KubeBed,
    who: &str,
    needs: &[(&str, &str, &str, &str)],
    denied: &[(&str, &str, &str, &str)],
) {
    let missing: Vec<_> = needs.iter().filter(|q| !can_i(bed, who, **q)).collect();
    assert!(missing.is_empty(), "{who} may not: {missing:?}");
    let extra: Vec<_> = denied.iter().filter(|q| can_i(bed, who, **q)).collect();
    assert!(extra.is_empty(), "{who} may (but should not): {extra:?}");
    eprintln!(
        "rbac {who}: {} allowed, {} denied, as expected",
        needs.len(),
        denied.len()
    );
}

/// Lines like `kind.group/name created (server dry run)`; fails unless every object of the
/// file is named.
fn assert_all_accepted(out: &str, docs: &[String], suffix: &str) {
    let lines: Vec<&str> = out.lines().collect();
    for d in docs {
        let (kind, name) = helm::kind_and_name(d);
        let needle = format!("/{name} ");
        let hit = lines.iter().any(|l| {
            l.to_lowercase().starts_with(&kind.to_lowercase())
                && l.contains(&needle)
                && l.ends_with(suffix)
        });
        assert!(
            hit,
            "{kind} {name} not accepted ({suffix:?}); kubectl said:\n{out}"
        );
    }
}

#[test]
fn install_manifest_applies_to_a_real_api_server() {
    KubeBed::require();
    let h = helm_bin();
    let bed = start_bed();
    let install = workspace_root().join("manifests/install.yaml");
    let install_s = install.display().to_string();
    let docs = helm::documents(&read("manifests/install.yaml"));

    // The namespace first: a server-side dry run of namespaced objects needs it to exist.
    bed.kubectl_ok(&["create", "namespace", NAMESPACE])
        .expect("namespace");
    let dry = bed
        .kubectl(&["apply", "--dry-run=server", "-f", &install_s])
        .expect("kubectl");
    assert!(
        dry.ok,
        "server dry run refused objects:\n{}{}",
        dry.stdout, dry.stderr
    );
    assert_all_accepted(&dry.stdout, &docs[1..], " (server dry run)");
    assert!(
        bed.kubectl_ok(&["get", "crd", "volumes.ferrite.dev"])
            .is_err(),
        "a dry run created a CRD"
    );

    let real = bed.kubectl(&["apply", "-f", &install_s]).expect("kubectl");
    assert!(
        real.ok,
        "apply refused objects:\n{}{}",
        real.stdout, real.stderr
    );
    assert_all_accepted(&real.stdout, &docs[1..], " created");
    bed.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/volumes.ferrite.dev",
        "crd/storagepools.ferrite.dev",
        "crd/ferritenodes.ferrite.dev",
    ])
    .expect("CRDs established");
    let csidriver = bed
        .kubectl_ok(&["get", "csidriver", "csi.ferrite.dev", "-o", "json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&csidriver).unwrap();
    assert_eq!(v["spec"]["attachRequired"], true);
    assert_eq!(v["spec"]["podInfoOnMount"], true);
    assert_eq!(
        v["spec"]["volumeLifecycleModes"],
        serde_json::json!(["Persistent"])
    );
    // Applying again changes nothing.
    let again = bed
        .kubectl_ok(&["apply", "-f", &install_s])
        .expect("re-apply");
    assert!(
        again.lines().skip(1).all(|l| l.ends_with(" unchanged")),
        "second apply changed objects:\n{again}"
    );

    check_rbac(&bed, OPERATOR_SA, OPERATOR_NEEDS, OPERATOR_DENIED);
    check_rbac(&bed, NODE_SA, NODE_NEEDS, NODE_DENIED);

    // The non-default rendering (less its ServiceMonitors: no prometheus-operator CRD here)
    // applies on top, including a chart-made StoragePool.
    let tmp = tempfile::tempdir().expect("tmp");
    let disks = tmp.path().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    for d in ["disk-b", "disk-a"] {
        std::fs::write(disks.join(d), b"").unwrap();
    }
    let values = custom_values(tmp.path(), &disks);
    let r = helm::template(&h, Some(&values), &[]);
    assert!(r.ok, "{}", r.stderr);
    let custom: Vec<String> = helm::documents(&r.stdout)
        .into_iter()
        .filter(|d| helm::kind_and_name(d).0 != "ServiceMonitor")
        .collect();
    let stream = custom
        .iter()
        .map(|d| format!("---\n{d}"))
        .collect::<String>();
    let dry = bed
        .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &stream)
        .unwrap();
    assert!(
        dry.ok,
        "custom values: dry run refused:\n{}{}",
        dry.stdout, dry.stderr
    );
    let real = bed.kubectl_stdin(&["apply", "-f", "-"], &stream).unwrap();
    assert!(
        real.ok,
        "custom values: apply refused:\n{}{}",
        real.stdout, real.stderr
    );
    assert!(
        real.stdout
            .contains("storagepool.ferrite.dev/worker-2-nvme created"),
        "{}",
        real.stdout
    );

    // The node init container, with the environment the DaemonSet gives it and the node
    // ServiceAccount's token: registers FerriteNodes and creates the default pool.
    let sa = bed
        .wait_for(
            "the ferrite-node token secret",
            Duration::from_secs(30),
            || {
                let name = bed
                    .kubectl_ok(&[
                        "-n",
                        NAMESPACE,
                        "get",
                        "sa",
                        "ferrite-node",
                        "-o",
                        "jsonpath={.secrets[0].name}",
                    ])
                    .ok()?;
                let token = bed
                    .kubectl_ok(&[
                        "-n",
                        NAMESPACE,
                        "get",
                        "secret",
                        name.trim(),
                        "-o",
                        "jsonpath={.data.token}",
                    ])
                    .ok()?;
                (!token.trim().is_empty()).then(|| token.trim().to_string())
            },
        )
        .expect("token");
    let sa_dir = tmp.path().join("sa");
    std::fs::create_dir_all(&sa_dir).unwrap();
    let token = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(sa.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64");
    std::fs::write(sa_dir.join("token"), &token.stdout).unwrap();
    std::fs::copy(
        bed.env("FERRITE_KUBE_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|| bed.dir().join("pki/ca.crt")),
        sa_dir.join("ca.crt"),
    )
    .unwrap();

    let ds = bed
        .kubectl_ok(&["-n", NAMESPACE, "get", "ds", "ferrite-node", "-o", "json"])
        .unwrap();
    let ds: serde_json::Value = serde_json::from_str(&ds).unwrap();
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["command"][0], "/usr/local/bin/ferrite-node-init");
    let run_init = |node: &str| {
        let mut c = Command::new("sh");
        c.arg(workspace_root().join("docker/ferrite-node-init"));
        for e in init["env"].as_array().unwrap() {
            if let Some(v) = e["value"].as_str() {
                c.env(e["name"].as_str().unwrap(), v);
            }
        }
        c.env("NODE_NAME", node)
            .env("NODE_IP", "127.0.0.7")
            .env("KUBE_API", bed.apiserver())
            .env("SA_DIR", &sa_dir)
            .env("CONFIG_OUT", tmp.path().join(node).join("datapath.yaml"));
        let out = c.output().expect("run ferrite-node-init");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "ferrite-node-init {node} failed:\n{log}"
        );
        let conf = std::fs::read_to_string(tmp.path().join(node).join("datapath.yaml")).unwrap();
        assert_eq!(conf, format!("node: {{name: {node}}}\n"));
        log
    };
    let log = run_init("worker-3");
    assert!(log.contains("registered FerriteNode worker-3"), "{log}");
    assert!(log.contains("created StoragePool worker-3"), "{log}");
    let fnode = bed
        .kubectl_ok(&[
            "get",
            "fnode",
            "worker-3",
            "-o",
            "jsonpath={.spec.apiEndpoint}",
        ])
        .unwrap();
    assert_eq!(
        fnode, "https://127.0.0.7:9421",
        "the node API uses mutual TLS by default"
    );
    let pool = bed
        .kubectl_ok(&["get", "fsp", "worker-3", "-o", "json"])
        .unwrap();
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    let d = disks.display();
    assert_eq!(
        pool["spec"]["disks"],
        serde_json::json!([format!("{d}/disk-a"), format!("{d}/disk-b")])
    );
    assert_eq!(pool["spec"]["node"], "worker-3");
    assert_eq!(pool["spec"]["stripeSize"], "256Ki");
    // Again: endpoint patched, pool kept. A node with a chart-made pool gets no default one.
    let log = run_init("worker-3");
    assert!(
        log.contains("exists; endpoint set") && log.contains("StoragePool worker-3 exists"),
        "{log}"
    );
    let log = run_init("worker-2");
    assert!(log.contains("no default pool"), "{log}");
    assert!(bed.kubectl_ok(&["get", "fsp", "worker-2"]).is_err());
}

/// The Helm path against the real API server: `helm install` (CRDs from the chart's `crds/`
/// first, then everything else, including a chart-made StoragePool), `helm upgrade` to the
/// defaults, and `helm uninstall` (which keeps the CRDs and the StoragePool, by design).
#[test]
fn helm_install_upgrade_uninstall() {
    KubeBed::require();
    let h = helm_bin();
    let bed = start_bed();
    let tmp = tempfile::tempdir().expect("tmp");
    let values = custom_values(tmp.path(), Path::new("/dev/fake"));
    let chart = helm::chart_dir().display().to_string();
    let kubeconfig = bed.kubeconfig().display().to_string();
    let values_s = values.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
        all.extend_from_slice(args);
        let r = helm::helm(&h, &all);
        assert!(r.ok, "helm {}: {}{}", args.join(" "), r.stdout, r.stderr);
        r.stdout
    };
    run(&[
        "install",
        "ferrite",
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "-f",
        &values_s,
        "--set",
        "metrics.serviceMonitor.enabled=false",
    ]);
    let status = run(&["status", "ferrite", "--namespace", NAMESPACE]);
    assert!(status.contains("STATUS: deployed"), "{status}");
    bed.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "deploy/ferrite-operator",
        "ds/ferrite-node",
        "sa/ferrite-operator",
    ])
    .expect("workloads");
    bed.kubectl_ok(&[
        "get",
        "csidriver/csi.ferrite.dev",
        "sc/ferrite-triple",
        "fsp/worker-2-nvme",
    ])
    .expect("cluster objects");

    run(&[
        "upgrade",
        "ferrite",
        &chart,
        "--namespace",
        NAMESPACE,
        "--reset-values",
    ]);
    bed.kubectl_ok(&["get", "sc/ferrite-mirrored", "sc/ferrite-single"])
        .expect("default classes after upgrade");
    assert!(
        bed.kubectl_ok(&["get", "sc/ferrite-triple"]).is_err(),
        "upgrade removes the custom class"
    );

    run(&["uninstall", "ferrite", "--namespace", NAMESPACE]);
    assert!(
        bed.kubectl_ok(&["-n", NAMESPACE, "get", "deploy/ferrite-operator"])
            .is_err()
    );
    assert!(
        bed.kubectl_ok(&["get", "csidriver/csi.ferrite.dev"])
            .is_err()
    );
    assert!(
        bed.kubectl_ok(&["get", "clusterrole/ferrite-operator"])
            .is_err()
    );
    bed.kubectl_ok(&["get", "crd/volumes.ferrite.dev"])
        .expect("helm keeps CRDs");
    bed.kubectl_ok(&["get", "fsp/worker-2-nvme"])
        .expect("pools are kept (helm.sh/resource-policy: keep)");
}
