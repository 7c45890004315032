//! Pure parts of the CSI controller: Volume names from CSI names, StorageClass parameters,
//! capacity ranges, access modes and topology requirements, each mapped to CSI error codes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferrite_api::csi::v1::volume_capability::access_mode::Mode;
use ferrite_api::csi::v1::{
    CapacityRange, TopologyRequirement, VolumeCapability, volume_capability,
};
use tonic::Status;

use crate::crd::volume::{FsType, TopologyExpression, TopologyTerm};
use crate::crd::{VolumeSpec, VolumeTopology};
use crate::decisions::model::BLOCK_SIZE;

/// Topology key of a node (the CSI node plugin reports it).
pub const TOPOLOGY_NODE_KEY: &str = "topology.ferrite.dev/node";
/// Annotation on a Volume holding the CSI name it was created for.
pub const CSI_NAME_ANNOTATION: &str = "ferrite.dev/csi-name";
/// Annotation on a Volume naming the node preferred for its target (the CSI request's first
/// preferred topology segment: with `WaitForFirstConsumer`, the consumer's node).
pub const PREFERRED_TARGET_ANNOTATION: &str = "ferrite.dev/preferred-target";
/// Size when the capacity range asks for none.
pub const DEFAULT_BYTES: u64 = 1 << 30;

/// 64-bit FNV-1a.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The Volume name for a CSI volume name: `pvc-...` names that are valid DNS labels of at
/// most 63 bytes keep their name; any other gets `vol-` and 32 hex digits of a hash.
pub fn volume_name(csi_name: &str) -> String {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !csi_name.is_empty()
        && csi_name.len() <= 63
        && csi_name.chars().all(ok)
        && csi_name.starts_with(|c: char| c.is_ascii_lowercase())
        && !csi_name.ends_with('-')
    {
        return csi_name.to_string();
    }
    let b = csi_name.as_bytes();
    format!(
        "vol-{:016x}{:016x}",
        fnv1a(b, 0),
        fnv1a(b, 0x9e37_79b9_7f4a_7c15)
    )
}

/// Bytes to provision for a capacity range: `required` (or 1 GiB when unset) rounded up to
/// 4 KiB; OUT_OF_RANGE if that exceeds `limit`.
pub fn size_for(range: Option<&CapacityRange>) -> Result<u64, Status> {
    let (req, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if req < 0 || limit < 0 {
        return Err(Status::out_of_range("capacity must not be negative"));
    }
    let (req, limit) = (req as u64, limit as u64);
    let want = if req == 0 {
        if limit > 0 {
            DEFAULT_BYTES.min(limit)
        } else {
            DEFAULT_BYTES
        }
    } else {
        req
    };
    let size = want.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    if limit > 0 && size > limit {
        return Err(Status::out_of_range(format!(
            "{req} bytes rounded to 4 KiB blocks ({size}) exceed the limit of {limit} bytes"
        )));
    }
    Ok(size)
}

/// Checks access modes and types: single-node modes only, block or ext4/xfs mounts.
pub fn check_capabilities(caps: &[VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("volume_capabilities missing".into());
    }
    for c in caps {
        let mode = c
            .access_mode
            .as_ref()
            .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
            .unwrap_or(Mode::Unknown);
        match mode {
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter => {}
            other => {
                return Err(format!(
                    "access mode {other:?} is not supported (single-node modes only)"
                ));
            }
        }
        match &c.access_type {
            Some(volume_capability::AccessType::Block(_)) => {}
            Some(volume_capability::AccessType::Mount(m)) => {
                if !matches!(m.fs_type.as_str(), "" | "ext4" | "xfs") {
                    return Err(format!(
                        "filesystem {:?} is not supported (ext4, xfs)",
                        m.fs_type
                    ));
                }
            }
            None => return Err("access type (block or mount) missing".into()),
        }
    }
    Ok(())
}

/// StorageClass parameter: FerriteNodes that may hold replicas (`a,b,c`).
pub const PARAM_ALLOWED_NODES: &str = "allowedNodes";
/// StorageClass parameter: labels a FerriteNode must carry to hold a replica
/// (`topology.kubernetes.io/zone=z1,disk=ssd`).
pub const PARAM_NODE_SELECTOR: &str = "nodeSelector";
/// Parameters external-provisioner adds with `--extra-create-metadata`.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
/// See [`PARAM_PVC_NAME`].
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// See [`PARAM_PVC_NAME`].
pub const PARAM_PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// The Volume spec for a CreateVolume request's parameters and its StorageClass's
/// `allowedTopologies` (`class_terms`).
///
/// Topology: a Ferrite volume is reachable from every node, so the request's requisite and
/// preferred segments restrict nothing (the first preferred node is a locality hint the
/// reconciler reads from an annotation, see [`preferred_node`]). Only explicit restrictions
/// limit where replicas go: the class's `allowedTopologies`, and the `allowedNodes` and
/// `nodeSelector` parameters.
pub fn volume_spec(
    size: u64,
    params: &HashMap<String, String>,
    class_terms: &[TopologyTerm],
) -> Result<VolumeSpec, Status> {
    let replicas = match params.get("replicas") {
        None => crate::crd::volume::DEFAULT_REPLICAS,
        Some(s) => s
            .parse::<i32>()
            .ok()
            .filter(|n| {
                (crate::crd::volume::MIN_REPLICAS..=crate::crd::volume::MAX_REPLICAS).contains(n)
            })
            .ok_or_else(|| {
                Status::invalid_argument(format!("parameter replicas={s:?}: want 1, 2 or 3"))
            })?,
    };
    let thin = match params.get("thin").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(s) => {
            return Err(Status::invalid_argument(format!(
                "parameter thin={s:?}: want true or false"
            )));
        }
    };
    let fs = params
        .get("csi.storage.k8s.io/fstype")
        .or_else(|| params.get("fsType"))
        .map(String::as_str);
    let fs_type = match fs {
        None | Some("") => None,
        Some("ext4") => Some(FsType::Ext4),
        Some("xfs") => Some(FsType::Xfs),
        Some(s) => {
            return Err(Status::invalid_argument(format!(
                "fsType {s:?}: want ext4 or xfs"
            )));
        }
    };
    let allowed_nodes: BTreeSet<String> = params
        .get(PARAM_ALLOWED_NODES)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut required_node_labels = BTreeMap::new();
    if let Some(sel) = params.get(PARAM_NODE_SELECTOR) {
        for pair in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    required_node_labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "parameter {PARAM_NODE_SELECTOR}: {pair:?} is not KEY=VALUE"
                    )));
                }
            }
        }
    }
    for t in class_terms {
        if t.match_label_expressions
            .iter()
            .any(|e| e.key.is_empty() || e.values.is_empty())
        {
            return Err(Status::invalid_argument(
                "the StorageClass's allowedTopologies has a term with an empty key or no values",
            ));
        }
    }
    let topology = VolumeTopology {
        allowed_nodes: allowed_nodes.into_iter().collect(),
        required_node_labels,
        allowed_topologies: class_terms.to_vec(),
    };
    Ok(VolumeSpec {
        size_bytes: i64::try_from(size).map_err(|_| Status::out_of_range("size too large"))?,
        replicas,
        thin,
        topology: (topology != VolumeTopology::default()).then_some(topology),
        fs_type,
        allowed_hosts: Vec::new(),
    })
}

/// A StorageClass's `allowedTopologies` as Volume topology terms.
pub fn class_terms(
    allowed: Option<&[k8s_openapi::api::core::v1::TopologySelectorTerm]>,
) -> Vec<TopologyTerm> {
    allowed
        .unwrap_or_default()
        .iter()
        .map(|t| TopologyTerm {
            match_label_expressions: t
                .match_label_expressions
                .iter()
                .flatten()
                .map(|e| TopologyExpression {
                    key: e.key.clone(),
                    values: e.values.clone(),
                })
                .collect(),
        })
        .filter(|t| !t.match_label_expressions.is_empty())
        .collect()
}

/// The node of the first preferred topology segment that names one.
pub fn preferred_node(topology: Option<&TopologyRequirement>) -> Option<String> {
    topology?
        .preferred
        .iter()
        .find_map(|t| t.segments.get(TOPOLOGY_NODE_KEY).cloned())
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_api::csi::v1::Topology;
    use ferrite_api::csi::v1::volume_capability::{
        AccessMode, AccessType, BlockVolume, MountVolume,
    };

    fn cap(mode: Mode, fs: Option<&str>) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(match fs {
                None => AccessType::Block(BlockVolume {}),
                Some(f) => AccessType::Mount(MountVolume {
                    fs_type: f.into(),
                    ..Default::default()
                }),
            }),
        }
    }

    #[test]
    fn names() {
        assert_eq!(volume_name("pvc-1234-abcd"), "pvc-1234-abcd");
        let h = volume_name("PVC_Upper/x");
        assert!(h.starts_with("vol-") && h.len() == 36, "{h}");
        assert_eq!(h, volume_name("PVC_Upper/x"));
        assert_ne!(h, volume_name("PVC_Upper/y"));
        assert!(volume_name(&"a".repeat(64)).starts_with("vol-"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size_for(None).ok(), Some(1 << 30));
        let r = |req, limit| CapacityRange {
            required_bytes: req,
            limit_bytes: limit,
        };
        assert_eq!(size_for(Some(&r(1, 0))).ok(), Some(4096));
        assert_eq!(size_for(Some(&r(0, 8192))).ok(), Some(8192));
        assert_eq!(
            size_for(Some(&r(4097, 5000))).map_err(|s| s.code()).err(),
            Some(tonic::Code::OutOfRange)
        );
        assert_eq!(
            size_for(Some(&r(-1, 0))).map_err(|s| s.code()).err(),
            Some(tonic::Code::OutOfRange)
        );
    }

    #[test]
    fn capabilities() {
        assert!(check_capabilities(&[cap(Mode::SingleNodeWriter, None)]).is_ok());
        assert!(check_capabilities(&[cap(Mode::SingleNodeWriter, Some("xfs"))]).is_ok());
        assert!(check_capabilities(&[cap(Mode::MultiNodeMultiWriter, None)]).is_err());
        assert!(check_capabilities(&[cap(Mode::SingleNodeWriter, Some("btrfs"))]).is_err());
        assert!(check_capabilities(&[]).is_err());
    }

    #[test]
    fn parameters_and_topology() {
        let p: HashMap<String, String> = [
            ("replicas", "3"),
            ("thin", "false"),
            ("csi.storage.k8s.io/fstype", "xfs"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = volume_spec(4096, &p, &[]).expect("spec");
        assert_eq!(
            (s.replicas, s.thin, s.fs_type),
            (3, false, Some(FsType::Xfs))
        );
        assert_eq!(s.topology, None, "no explicit restriction, none recorded");
        let bad: HashMap<String, String> = [("replicas".to_string(), "4".to_string())].into();
        assert_eq!(
            volume_spec(1, &bad, &[]).map_err(|s| s.code()).err(),
            Some(tonic::Code::InvalidArgument)
        );
        let s = volume_spec(1, &HashMap::new(), &[]).expect("defaults");
        assert_eq!((s.replicas, s.thin, s.topology), (2, true, None));
    }

    #[test]
    fn the_preferred_segment_is_a_hint_and_requisite_restricts_nothing() {
        // What external-provisioner sends with --strict-topology and WaitForFirstConsumer:
        // the selected node as the only requisite and the first preferred segment.
        let seg = |n: &str| Topology {
            segments: [(TOPOLOGY_NODE_KEY.to_string(), n.to_string())].into(),
        };
        let strict = TopologyRequirement {
            requisite: vec![seg("a")],
            preferred: vec![seg("a")],
        };
        assert_eq!(preferred_node(Some(&strict)).as_deref(), Some("a"));
        let only_requisite = TopologyRequirement {
            requisite: vec![seg("a")],
            preferred: vec![],
        };
        assert_eq!(preferred_node(Some(&only_requisite)), None);
        assert_eq!(preferred_node(None), None);
    }

    #[test]
    fn explicit_restrictions_come_from_parameters_and_the_class() {
        let p: HashMap<String, String> = [
            (PARAM_ALLOWED_NODES, " b, a ,"),
            (
                PARAM_NODE_SELECTOR,
                "topology.kubernetes.io/zone=z1, disk=ssd",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let class = [k8s_openapi::api::core::v1::TopologySelectorTerm {
            match_label_expressions: Some(vec![
                k8s_openapi::api::core::v1::TopologySelectorLabelRequirement {
                    key: "topology.kubernetes.io/zone".into(),
                    values: vec!["z1".into(), "z2".into()],
                },
            ]),
        }];
        let terms = class_terms(Some(&class));
        let s = volume_spec(4096, &p, &terms).expect("spec");
        let t = s.topology.expect("topology");
        assert_eq!(t.allowed_nodes, ["a", "b"]);
        assert_eq!(t.required_node_labels["disk"], "ssd");
        assert_eq!(t.allowed_topologies, terms);
        assert_eq!(
            t.allowed_topologies[0].match_label_expressions[0].values,
            ["z1", "z2"]
        );
        let bad: HashMap<String, String> =
            [(PARAM_NODE_SELECTOR.to_string(), "zone".to_string())].into();
        assert_eq!(
            volume_spec(1, &bad, &[]).map_err(|s| s.code()).err(),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(class_terms(None).is_empty());
    }
}
