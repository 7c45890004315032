//! The requests the upstream CSI sidecars send, built the way they build them, so that tests
//! drive Ferrite's CSI controller exactly as a cluster does (the sidecars themselves cannot
//! be built on this machine).
//!
//! - external-provisioner (`--feature-gates=Topology=true`, `--strict-topology`,
//!   `--extra-create-metadata`, `--default-fstype`, `--immediate-topology` on by default):
//!   [`create_volume_request`], with the topology requirement of its
//!   `GenerateAccessibilityRequirements`: with a selected node (WaitForFirstConsumer) and
//!   strict topology, that node's topology is the only requisite and the only preferred
//!   segment (after checking it against the class's `allowedTopologies`); without a selected
//!   node (Immediate), the class's `allowedTopologies` flattened, or else every registered
//!   node's topology, as requisite, and the same sorted and rotated by a hash of the PV name
//!   as preferred. Parameters lose every `csi.storage.k8s.io/` key (the fstype goes into the
//!   mount capability) and gain the PVC's name and namespace and the PV's name.
//! - external-attacher: [`publish_request`] with the node ID the node plugin registered
//!   (NodeGetInfo, stored in CSINode) and the PV's capability and volume attributes.

use std::collections::{BTreeMap, HashMap};

use ferrite_api::csi::v1 as csi;
use ferrite_api::csi::v1::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};

/// The provisioner flags the chart passes.
#[derive(Debug, Clone)]
pub struct ProvisionerFlags {
    /// `--strict-topology`.
    pub strict_topology: bool,
    /// `--extra-create-metadata`.
    pub extra_create_metadata: bool,
    /// `--default-fstype`.
    pub default_fstype: String,
}

/// A StorageClass as the provisioner reads it.
#[derive(Debug, Clone, Default)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// `parameters`.
    pub parameters: BTreeMap<String, String>,
    /// `volumeBindingMode` is WaitForFirstConsumer.
    pub wait_for_first_consumer: bool,
    /// `allowedTopologies`: terms of (key, values) expressions.
    pub allowed_topologies: Vec<Vec<(String, Vec<String>)>>,
}

/// A node's topology: its CSINode topology keys with the Node's label values.
pub type Segments = BTreeMap<String, String>;

/// A PVC being provisioned.
#[derive(Debug, Clone)]
pub struct Claim {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`: the PV is named `pvc-<uid>`.
    pub uid: String,
    /// `spec.resources.requests.storage` in bytes.
    pub bytes: i64,
    /// `spec.volumeMode: Block`.
    pub block: bool,
}

impl Claim {
    /// The PV name (and CSI volume name) the provisioner uses.
    pub fn pv_name(&self) -> String {
        format!("pvc-{}", self.uid)
    }
}

/// Every combination of one value per expression of each term (the provisioner's `flatten`).
fn flatten(terms: &[Vec<(String, Vec<String>)>]) -> Vec<Segments> {
    let mut out = Vec::new();
    for term in terms {
        let mut acc: Vec<Segments> = vec![Segments::new()];
        for (key, values) in term {
            acc = acc
                .into_iter()
                .flat_map(|s| {
                    values.iter().map(move |v| {
                        let mut s = s.clone();
                        s.insert(key.clone(), v.clone());
                        s
                    })
                })
                .collect();
        }
        out.extend(acc);
    }
    out
}

/// 32-bit FNV-1a, as the provisioner hashes PV names to rotate preferred terms.
fn fnv32a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn to_csi(terms: &[Segments]) -> Vec<csi::Topology> {
    terms
        .iter()
        .map(|s| csi::Topology {
            segments: s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect()
}

/// The topology requirement external-provisioner sends, or an error where it refuses to
/// provision (the selected node outside `allowedTopologies`).
pub fn accessibility(
    flags: &ProvisionerFlags,
    class: &Class,
    pv_name: &str,
    selected: Option<&Segments>,
    registered: &[Segments],
) -> Result<Option<csi::TopologyRequirement>, String> {
    let allowed = flatten(&class.allowed_topologies);
    let mut requisite: Vec<Segments> = Vec::new();
    if let Some(sel) = selected
        && flags.strict_topology
    {
        if !allowed.is_empty()
            && !allowed
                .iter()
                .any(|t| t.iter().all(|(k, v)| sel.get(k) == Some(v)))
        {
            return Err(format!(
                "selected node topology {sel:?} is not in allowed topologies {allowed:?}"
            ));
        }
        requisite.push(sel.clone());
    }
    if requisite.is_empty() {
        requisite = if allowed.is_empty() {
            registered.to_vec()
        } else {
            allowed
        };
    }
    requisite.sort();
    requisite.dedup();
    if requisite.is_empty() {
        return Ok(None);
    }
    let preferred = match selected {
        Some(_) if flags.strict_topology => requisite.clone(),
        Some(sel) => {
            let mut p = requisite.clone();
            let i = p
                .iter()
                .position(|t| t == sel)
                .ok_or("selected topology not in requisite")?;
            p.rotate_left(i);
            p
        }
        None => {
            let mut p = requisite.clone();
            let i = (fnv32a(pv_name) as usize) % p.len();
            p.rotate_left(i);
            p
        }
    };
    Ok(Some(csi::TopologyRequirement {
        requisite: to_csi(&requisite),
        preferred: to_csi(&preferred),
    }))
}

/// The access mode a ReadWriteOnce claim maps to.
fn capability(block: bool, fs_type: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: fs_type.into(),
                ..Default::default()
            })
        }),
    }
}

/// The filesystem type the provisioner puts in the mount capability.
pub fn fs_type(flags: &ProvisionerFlags, class: &Class) -> String {
    class
        .parameters
        .get("csi.storage.k8s.io/fstype")
        .cloned()
        .unwrap_or_else(|| flags.default_fstype.clone())
}

/// external-provisioner's CreateVolume for `claim` of `class`.
pub fn create_volume_request(
    flags: &ProvisionerFlags,
    class: &Class,
    claim: &Claim,
    selected: Option<&Segments>,
    registered: &[Segments],
) -> Result<csi::CreateVolumeRequest, String> {
    let pv = claim.pv_name();
    let mut parameters: HashMap<String, String> = class
        .parameters
        .iter()
        .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if flags.extra_create_metadata {
        parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.name.clone());
        parameters.insert(
            "csi.storage.k8s.io/pvc/namespace".into(),
            claim.namespace.clone(),
        );
        parameters.insert("csi.storage.k8s.io/pv/name".into(), pv.clone());
    }
    Ok(csi::CreateVolumeRequest {
        name: pv.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: claim.bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(claim.block, &fs_type(flags, class))],
        parameters,
        secrets: HashMap::new(),
        volume_content_source: None,
        accessibility_requirements: accessibility(flags, class, &pv, selected, registered)?,
        mutable_parameters: HashMap::new(),
    })
}

/// external-attacher's ControllerPublishVolume of a provisioned volume to the node whose
/// plugin registered `node_id`.
pub fn publish_request(
    volume: &csi::Volume,
    node_id: &str,
    block: bool,
    fs_type: &str,
) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: volume.volume_id.clone(),
        node_id: node_id.into(),
        volume_capability: Some(capability(block, fs_type)),
        readonly: false,
        secrets: HashMap::new(),
        volume_context: volume.volume_context.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(node: &str, zone: &str) -> Segments {
        [
            ("topology.ferrite.dev/node".to_string(), node.to_string()),
            ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
        ]
        .into()
    }

    fn flags() -> ProvisionerFlags {
        ProvisionerFlags {
            strict_topology: true,
            extra_create_metadata: true,
            default_fstype: "ext4".into(),
        }
    }

    #[test]
    fn strict_topology_sends_only_the_selected_node() {
        let all = [seg("a", "z1"), seg("b", "z1"), seg("c", "z2")];
        let class = Class {
            wait_for_first_consumer: true,
            ..Class::default()
        };
        let t = accessibility(&flags(), &class, "pvc-1", Some(&all[1]), &all)
            .unwrap()
            .unwrap();
        assert_eq!(t.requisite, to_csi(&all[1..2]));
        assert_eq!(t.preferred, t.requisite);
        // The selected node outside allowedTopologies is refused by the provisioner itself.
        let zoned = Class {
            allowed_topologies: vec![vec![(
                "topology.kubernetes.io/zone".into(),
                vec!["z2".into()],
            )]],
            ..class
        };
        assert!(accessibility(&flags(), &zoned, "pvc-1", Some(&all[0]), &all).is_err());
    }

    #[test]
    fn immediate_binding_sends_every_node_rotated() {
        let all = [seg("a", "z1"), seg("b", "z1"), seg("c", "z2")];
        let t = accessibility(&flags(), &Class::default(), "pvc-9", None, &all)
            .unwrap()
            .unwrap();
        assert_eq!(t.requisite.len(), 3);
        assert_eq!(t.preferred.len(), 3);
        let i = (fnv32a("pvc-9") as usize) % 3;
        assert_eq!(t.preferred[0], to_csi(&all)[i]);
        // allowedTopologies replaces the registered nodes.
        let zoned = Class {
            allowed_topologies: vec![vec![(
                "topology.kubernetes.io/zone".into(),
                vec!["z1".into(), "z2".into()],
            )]],
            ..Class::default()
        };
        let t = accessibility(&flags(), &zoned, "pvc-9", None, &all)
            .unwrap()
            .unwrap();
        assert_eq!(t.requisite.len(), 2);
    }

    #[test]
    fn parameters_lose_the_reserved_prefix_and_gain_metadata() {
        let class = Class {
            parameters: [("replicas", "2"), ("csi.storage.k8s.io/fstype", "xfs")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Class::default()
        };
        let claim = Claim {
            name: "data".into(),
            namespace: "ns".into(),
            uid: "u1".into(),
            bytes: 1 << 20,
            block: false,
        };
        let r = create_volume_request(&flags(), &class, &claim, None, &[seg("a", "z1")]).unwrap();
        assert_eq!(r.name, "pvc-u1");
        assert_eq!(r.parameters.get("replicas").map(String::as_str), Some("2"));
        assert!(!r.parameters.contains_key("csi.storage.k8s.io/fstype"));
        assert_eq!(r.parameters["csi.storage.k8s.io/pvc/name"], "data");
        assert_eq!(r.parameters["csi.storage.k8s.io/pv/name"], "pvc-u1");
        match &r.volume_capabilities[0].access_type {
            Some(AccessType::Mount(m)) => assert_eq!(m.fs_type, "xfs"),
            other => panic!("{other:?}"),
        }
    }
}
