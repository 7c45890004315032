//! Ferrite's CSI controller driven exactly as the upstream sidecars drive it
//! ([`ferrite_e2e::sidecars`]: external-provisioner with the chart's flags, external-attacher),
//! against a real Kubernetes 1.20 API server (the `e2e/kube` bed), the operator and three
//! real `ferrite-datapath` processes: a, b in zone z1 and c in zone z2.
//!
//! For every StorageClass the chart ships (rendered by helm from the chart's default values
//! and applied to the API server), and for an Immediate-binding class and classes with
//! `allowedTopologies`: a PVC-equivalent CreateVolume -> Online with the class's replica
//! count, one replica and the target on the consumer's node (locality), the others in another
//! zone -> the attacher's publish and unpublish -> DeleteVolume -> nothing left on any node.
//! An unplaceable class answers RESOURCE_EXHAUSTED and leaves no Volume behind; a replica
//! that no Volume refers to is destroyed after the orphan grace period, with an Event. Fails
//! when the bed is not prepared.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferrite_api::csi::v1 as csi;
use ferrite_api::csi::v1::controller_client::ControllerClient;
use ferrite_api::node::v1 as pb;
use ferrite_e2e::api_node::ApiNode;
use ferrite_e2e::helm;
use ferrite_e2e::kube::{KubeBed, OperatorProcess, operator_binary};
use ferrite_e2e::sidecars::{self, Claim, Class, ProvisionerFlags, Segments};

const NODE_KEY: &str = "topology.ferrite.dev/node";
const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// The NQN each node's CSI node plugin reports as its node ID (NodeGetInfo, kept in CSINode).
fn node_id(node: &str) -> String {
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000{:02x}",
        node.as_bytes()[0]
    )
}

fn jsonpath(bed: &KubeBed, kind: &str, name: &str, path: &str) -> String {
    bed.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
        .ok()
        .filter(|r| r.ok)
        .map(|r| r.stdout)
        .unwrap_or_default()
}

fn operator_log(bed: &KubeBed) -> String {
    let log = std::fs::read_to_string(bed.dir().join("operator-1.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn wait_eq(bed: &KubeBed, kind: &str, name: &str, path: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = jsonpath(bed, kind, name, path);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name} {path}: want {want:?}, got {got:?}\n{}",
            operator_log(bed)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn apply(bed: &KubeBed, yaml: &str) {
    let r = bed
        .kubectl_stdin(&["apply", "-f", "-"], yaml)
        .expect("kubectl");
    assert!(r.ok, "{}\n{yaml}", r.stderr);
}

/// A StorageClass as the API server has it (read back after apply).
fn class(bed: &KubeBed, name: &str) -> Class {
    let json = bed
        .kubectl_ok(&["get", "storageclass", name, "-o", "json"])
        .expect("get storageclass");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let parameters = v["parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let allowed_topologies = v["allowedTopologies"]
        .as_array()
        .map(|terms| {
            terms
                .iter()
                .map(|t| {
                    t["matchLabelExpressions"]
                        .as_array()
                        .map(|es| {
                            es.iter()
                                .map(|e| {
                                    let values = e["values"].as_array().map(|vs| {
                                        vs.iter()
                                            .filter_map(|x| x.as_str().map(String::from))
                                            .collect()
                                    });
                                    (
                                        e["key"].as_str().unwrap_or_default().to_string(),
                                        values.unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    Class {
        name: name.into(),
        parameters,
        wait_for_first_consumer: v["volumeBindingMode"] == "WaitForFirstConsumer",
        allowed_topologies,
    }
}

/// Creates a PVC of `class` (as a user would) and returns it as the provisioner sees it.
fn claim(bed: &KubeBed, name: &str, class: &str, selected: Option<&str>) -> Claim {
    let annotations = selected
        .map(|n| format!("  annotations: {{volume.kubernetes.io/selected-node: {n}}}\n"))
        .unwrap_or_default();
    apply(
        bed,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  \
             storageClassName: {class}\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 64Mi}}}}\n"
        ),
    );
    let uid = jsonpath(bed, "pvc", name, "{.metadata.uid}");
    assert!(!uid.is_empty(), "PVC {name} has no uid");
    Claim {
        name: name.into(),
        namespace: "default".into(),
        uid,
        bytes: 64 << 20,
        block: false,
    }
}

/// The nodes a Volume's replicas are on, sorted.
fn replica_nodes(bed: &KubeBed, volume: &str) -> Vec<String> {
    let mut n: Vec<String> = jsonpath(bed, "volume", volume, "{.status.replicas[*].node}")
        .split_whitespace()
        .map(String::from)
        .collect();
    n.sort();
    n
}

struct Nodes {
    all: Vec<ApiNode>,
    rt: tokio::runtime::Runtime,
}

impl Nodes {
    /// Every replica and volume target on every node.
    fn contents(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.all {
            out.extend(
                self.rt
                    .block_on(n.replicas())
                    .into_iter()
                    .map(|r| format!("{}: replica {}", n.name, r.uuid)),
            );
            out.extend(
                self.rt
                    .block_on(n.volumes())
                    .into_iter()
                    .map(|v| format!("{}: volume {}", n.name, v.uuid)),
            );
        }
        out
    }
}

/// The emulated external-provisioner: the chart's flags and the topology the nodes'
/// plugins registered.
struct Provisioner {
    flags: ProvisionerFlags,
    topo: BTreeMap<String, Segments>,
}

impl Provisioner {
    /// Its CreateVolume for `claim` of `class`, the pod scheduled on `selected`.
    fn request(
        &self,
        class: &Class,
        claim: &Claim,
        selected: Option<&str>,
    ) -> csi::CreateVolumeRequest {
        let registered: Vec<Segments> = self.topo.values().cloned().collect();
        sidecars::create_volume_request(
            &self.flags,
            class,
            claim,
            selected.map(|s| &self.topo[s]),
            &registered,
        )
        .expect("provisioner request")
    }
}

/// What the lifecycles run against: the API server, the nodes and the CSI controller.
struct Cluster<'a> {
    bed: &'a KubeBed,
    nodes: &'a Nodes,
    csi: ControllerClient<tonic::transport::Channel>,
}

/// Provisions `claim` through the emulated provisioner, checks it Online with `replicas` on
/// the expected nodes, publishes and unpublishes it as the attacher would, deletes it, and
/// checks that nothing is left on any node.
fn lifecycle(
    cluster: &mut Cluster<'_>,
    p: &Provisioner,
    class: &Class,
    claim: &Claim,
    selected: Option<&str>,
    expect_nodes: &[&str],
) {
    let (bed, nodes, flags) = (cluster.bed, cluster.nodes, &p.flags);
    let c = &mut cluster.csi;
    let req = p.request(class, claim, selected);
    // The provisioner retries while the answer is not final (UNAVAILABLE: not ready yet).
    let deadline = Instant::now() + Duration::from_secs(120);
    let vol = loop {
        match nodes.rt.block_on(c.create_volume(req.clone())) {
            Ok(r) => break r.into_inner().volume.expect("volume"),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1))
            }
            Err(s) => panic!(
                "CreateVolume for class {}: {s:?}\n{}",
                class.name,
                operator_log(bed)
            ),
        }
    };
    let pv = claim.pv_name();
    assert_eq!(vol.volume_id, pv);
    assert_eq!(vol.capacity_bytes, claim.bytes);
    assert!(
        vol.accessible_topology.is_empty(),
        "a network volume is accessible from every node: {:?}",
        vol.accessible_topology
    );
    wait_eq(bed, "volume", &pv, "{.status.state}", "Online", 90);
    let want: i32 = class
        .parameters
        .get("replicas")
        .map_or(2, |r| r.parse().expect("replicas"));
    let on = replica_nodes(bed, &pv);
    assert_eq!(
        on.len(),
        want as usize,
        "class {}: replicas on {on:?}",
        class.name
    );
    assert_eq!(on, expect_nodes, "class {}: replica placement", class.name);
    if let Some(sel) = selected {
        assert_eq!(
            jsonpath(bed, "volume", &pv, "{.status.targetNode}"),
            sel,
            "the target serves from the consumer's node"
        );
    }

    // The attacher: publish to the consumer's node (its registered node ID), then unpublish.
    let consumer = selected.unwrap_or("a");
    let target = jsonpath(bed, "volume", &pv, "{.status.targetNode}");
    let fs = sidecars::fs_type(flags, class);
    let p = nodes
        .rt
        .block_on(c.controller_publish_volume(sidecars::publish_request(
            &vol,
            &node_id(consumer),
            false,
            &fs,
        )))
        .expect("publish");
    assert_eq!(
        p.into_inner().publish_context.get("nqn"),
        vol.volume_context.get("nqn")
    );
    let tnode = nodes
        .all
        .iter()
        .find(|n| n.name == target)
        .expect("target node");
    let served = nodes.rt.block_on(tnode.volumes());
    assert_eq!(
        served
            .iter()
            .flat_map(|v| v.allowed_hosts.clone())
            .collect::<Vec<_>>(),
        [node_id(consumer)]
    );
    // Another node while published: FAILED_PRECONDITION (single-node access modes).
    let e = nodes
        .rt
        .block_on(c.controller_publish_volume(sidecars::publish_request(
            &vol,
            &node_id("z"),
            false,
            &fs,
        )))
        .expect_err("second node");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    nodes
        .rt
        .block_on(
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: pv.clone(),
                node_id: node_id(consumer),
                secrets: Default::default(),
            }),
        )
        .expect("unpublish");
    assert!(
        nodes
            .rt
            .block_on(tnode.volumes())
            .iter()
            .all(|v| v.allowed_hosts.is_empty())
    );

    // The provisioner's DeleteVolume (retried while UNAVAILABLE), then nothing anywhere.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match nodes.rt.block_on(c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: pv.clone(),
            secrets: Default::default(),
        })) {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1))
            }
            Err(s) => panic!("DeleteVolume: {s:?}"),
        }
    }
    assert!(
        jsonpath(bed, "volume", &pv, "{.metadata.name}").is_empty(),
        "Volume {pv} still exists"
    );
    assert_eq!(
        nodes.contents(),
        Vec::<String>::new(),
        "left on the nodes after deleting {pv}"
    );
    let r = bed
        .kubectl(&["delete", "pvc", &claim.name, "-n", "default"])
        .expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
}

fn setup_nodes(bed: &KubeBed, dp: &Path, dir: &Path) -> Nodes {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let zones = [
        ("a", "127.0.38.1", "z1"),
        ("b", "127.0.38.2", "z1"),
        ("c", "127.0.38.3", "z2"),
    ];
    let mut all = Vec::new();
    let mut yaml = String::new();
    for (name, ip, zone) in zones {
        let n = ApiNode::start(dp, name, ip, dir).expect("node");
        rt.block_on(n.client());
        yaml.push_str(&format!(
            "apiVersion: ferrite.dev/v1alpha1\nkind: FerriteNode\nmetadata: {{name: {name}, labels: {{{ZONE_KEY}: {zone}}}}}\n\
             spec: {{apiEndpoint: '{}'}}\n---\napiVersion: ferrite.dev/v1alpha1\nkind: StoragePool\nmetadata: {{name: p{name}}}\n\
             spec: {{node: {name}, disks: ['file:{}/{name}0.img:256MiB']}}\n---\n",
            n.url(),
            dir.display()
        ));
        all.push(n);
    }
    apply(bed, &yaml);
    Nodes { all, rt }
}

#[test]
fn csi_controller_as_the_sidecars_drive_it() {
    KubeBed::require();
    let helm_bin = helm::helm_path().expect("no helm: run e2e/kube/prepare.sh");
    let dp = ferrite_e2e::datapath::binary().expect("datapath binary");
    let op_bin = operator_binary().expect("operator binary");
    let bed = KubeBed::start().expect("start bed");
    bed.install_crds().expect("crds");
    let tmp = tempfile::tempdir().expect("tmp");
    let nodes = setup_nodes(&bed, &dp, tmp.path());

    // The chart's StorageClasses, rendered from its default values, plus test classes.
    let rendered = helm::template(&helm_bin, None, &[]);
    assert!(rendered.ok, "{}", rendered.stderr);
    let docs = helm::documents(&rendered.stdout);
    let chart_classes: Vec<String> = docs
        .iter()
        .map(|d| helm::kind_and_name(d))
        .filter(|(k, _)| k == "StorageClass")
        .map(|(_, n)| n)
        .collect();
    assert!(
        chart_classes.contains(&"ferrite-mirrored".to_string()),
        "{chart_classes:?}"
    );
    for name in &chart_classes {
        apply(
            &bed,
            helm::find(&docs, "StorageClass", name).expect("class doc"),
        );
    }
    apply(
        &bed,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: t-immediate}\nprovisioner: csi.ferrite.dev\n\
         parameters: {replicas: '2'}\nvolumeBindingMode: Immediate\n---\n\
         apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: t-zone-z1}\nprovisioner: csi.ferrite.dev\n\
         parameters: {replicas: '2'}\nvolumeBindingMode: WaitForFirstConsumer\n\
         allowedTopologies: [{matchLabelExpressions: [{key: topology.kubernetes.io/zone, values: [z1]}]}]\n---\n\
         apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: t-zone-z2}\nprovisioner: csi.ferrite.dev\n\
         parameters: {replicas: '2'}\nvolumeBindingMode: Immediate\n\
         allowedTopologies: [{matchLabelExpressions: [{key: topology.kubernetes.io/zone, values: [z2]}]}]\n",
    );

    let port = ferrite_e2e::free_port().expect("port");
    let args = vec![
        "--csi-endpoint".to_string(),
        format!("tcp://127.0.0.1:{port}"),
        "--csi-wait-secs".into(),
        "8".into(),
        "--orphan-grace-secs".into(),
        "3".into(),
    ];
    let _op = OperatorProcess::start(&bed, &op_bin, 1, &args).expect("operator");
    for n in ["pa", "pb", "pc"] {
        wait_eq(&bed, "storagepool", n, "{.status.phase}", "Online", 90);
    }
    for n in ["a", "b", "c"] {
        wait_eq(&bed, "fnode", n, "{.status.phase}", "Ready", 30);
    }
    let mut cluster = Cluster {
        bed: &bed,
        nodes: &nodes,
        csi: nodes.rt.block_on(ferrite_e2e::csi::controller_client(port)),
    };

    // What the node plugins registered (NodeGetInfo): the node key and the zone; and the
    // chart's provisioner flags.
    let p = Provisioner {
        flags: ProvisionerFlags {
            strict_topology: true,
            extra_create_metadata: true,
            default_fstype: "ext4".into(),
        },
        topo: [("a", "z1"), ("b", "z1"), ("c", "z2")]
            .into_iter()
            .map(|(n, z)| {
                let segments = [
                    (NODE_KEY.to_string(), n.to_string()),
                    (ZONE_KEY.to_string(), z.to_string()),
                ];
                (n.to_string(), segments.into())
            })
            .collect(),
    };
    let op_doc = helm::find(&docs, "Deployment", "ferrite-operator").expect("operator deployment");
    let prov = helm::container_args(op_doc, "csi-provisioner");
    for f in [
        "--strict-topology",
        "--extra-create-metadata",
        "--default-fstype=ext4",
    ] {
        assert!(
            prov.iter().any(|a| a == f),
            "chart provisioner flags {prov:?} lack {f}"
        );
    }

    // Every chart class, WaitForFirstConsumer with the pod on a (zone z1): a replica and the
    // target on a, a second replica in the other zone (c), never both in z1.
    for (i, name) in chart_classes.iter().enumerate() {
        let cl = class(&bed, name);
        assert!(
            cl.wait_for_first_consumer,
            "chart class {name} binds WaitForFirstConsumer"
        );
        let claim = claim(&bed, &format!("chart-{i}"), name, Some("a"));
        let want: &[&str] = if cl.parameters.get("replicas").map(String::as_str) == Some("1") {
            &["a"]
        } else {
            &["a", "c"]
        };
        lifecycle(&mut cluster, &p, &cl, &claim, Some("a"), want);
    }
    // Pod on b: locality follows it.
    let cl = class(&bed, "ferrite-mirrored");
    let cb = claim(&bed, "on-b", "ferrite-mirrored", Some("b"));
    lifecycle(&mut cluster, &p, &cl, &cb, Some("b"), &["b", "c"]);
    // Immediate binding: every node requisite, a rotated preferred list; two zones.
    let cl = class(&bed, "t-immediate");
    let ci = claim(&bed, "immediate", "t-immediate", None);
    let req = p.request(&cl, &ci, None);
    let first = req
        .accessibility_requirements
        .as_ref()
        .expect("topology")
        .preferred[0]
        .segments[NODE_KEY]
        .clone();
    let want: Vec<&str> = if first == "c" {
        vec!["a", "c"]
    } else {
        vec![first.as_str(), "c"]
    };
    lifecycle(&mut cluster, &p, &cl, &ci, None, &want);
    // allowedTopologies zone z1: both replicas in z1 (a and b), none in z2.
    let cl = class(&bed, "t-zone-z1");
    let cz = claim(&bed, "zone-z1", "t-zone-z1", Some("b"));
    lifecycle(&mut cluster, &p, &cl, &cz, Some("b"), &["a", "b"]);

    // Unplaceable (two replicas, one node in z2): RESOURCE_EXHAUSTED, and no Volume is left
    // behind to take storage later.
    let cl = class(&bed, "t-zone-z2");
    let cu = claim(&bed, "unplaceable", "t-zone-z2", None);
    let req = p.request(&cl, &cu, None);
    let c = &mut cluster.csi;
    let e = nodes
        .rt
        .block_on(c.create_volume(req.clone()))
        .expect_err("unplaceable");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("allowedTopologies"), "{}", e.message());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !jsonpath(&bed, "volume", &cu.pv_name(), "{.metadata.name}").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the unplaceable Volume was left behind"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A CreateVolume for a claim that no longer exists creates nothing.
    let r = bed
        .kubectl(&["delete", "pvc", "unplaceable", "-n", "default"])
        .expect("kubectl");
    assert!(r.ok, "{}", r.stderr);
    let e = nodes
        .rt
        .block_on(c.create_volume(req))
        .expect_err("claim gone");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(jsonpath(&bed, "volume", &cu.pv_name(), "{.metadata.name}").is_empty());

    // An orphan: a replica in c's StoragePool that no Volume refers to is destroyed after the
    // grace period, with an Event; one in a pool of the node's own configuration is not ours.
    let orphan = "0b5e7a51-93c4-4d1e-8f00-00000000a11e";
    let mut cc = nodes.rt.block_on(nodes.all[2].client());
    nodes
        .rt
        .block_on(cc.create_replica(pb::CreateReplicaRequest {
            uuid: orphan.into(),
            pool: "pc".into(),
            size_bytes: 8 << 20,
            thin: true,
            allowed_hosts: vec![],
        }))
        .expect("orphan replica");
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes
        .rt
        .block_on(nodes.all[2].replicas())
        .iter()
        .any(|r| r.uuid == orphan)
    {
        assert!(
            Instant::now() < deadline,
            "the orphan replica was not collected\n{}",
            operator_log(&bed)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = bed
        .kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .expect("events");
    assert!(events.contains("OrphanDestroyed"), "events: {events}");
    assert_eq!(nodes.contents(), Vec::<String>::new());
}
