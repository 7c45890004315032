//! `StoragePool`: a RAID0 pool striped over the local disks of one node.
//!
//! Cluster-scoped: a pool belongs to a node, and nodes are cluster-scoped. The pool is created
//! on the node under the name [`crate::names::node_pool_name`] derives from the object's name.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::SpecError;

/// Desired state of a storage pool.
// Several printcolumn(...) share `type_ = "string"` and the like, which clippy takes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    shortname = "fsp",
    category = "ferrite",
    status = "StoragePoolStatus",
    doc = "A RAID0 storage pool over the local disks of one node; Ferrite carves volume replicas from it."
)]
#[kube(printcolumn(
    name = "Node",
    type_ = "string",
    json_path = ".spec.node",
    description = "Node whose disks form the pool"
))]
#[kube(printcolumn(
    name = "Phase",
    type_ = "string",
    json_path = ".status.phase",
    description = "Pending, Online, Degraded or Failed"
))]
#[kube(printcolumn(
    name = "Capacity",
    type_ = "integer",
    format = "int64",
    json_path = ".status.capacityBytes",
    description = "Usable bytes"
))]
#[kube(printcolumn(
    name = "Free",
    type_ = "integer",
    format = "int64",
    json_path = ".status.freeBytes",
    description = "Unallocated bytes"
))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolSpec {
    /// Name of the node (its FerriteNode) whose disks form the pool. Changing it later is
    /// refused by the operator.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// Member disks, in stripe order: absolute device paths (`/dev/nvme1n1`, shorthand for
    /// `file:/dev/nvme1n1`) or datapath backend specs (`file:/PATH`, `file:/PATH:SIZE` to
    /// create a sparse file, `ram:SIZE` for tests). 1 to 64 distinct entries.
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(pattern = r"^(/.+|file:/.+|ram:[0-9]+([KkMmGgTt]([Ii][Bb])?|[Bb])?)$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub disks: Vec<String>,
    /// RAID0 stripe size: a power of two from 4Ki to 16Mi.
    #[serde(default)]
    pub stripe_size: StripeSize,
}

/// RAID0 stripe size: the powers of two the datapath accepts for 4 KiB blocks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StripeSize {
    /// 4 KiB.
    #[serde(rename = "4Ki")]
    S4Ki,
    /// 8 KiB.
    #[serde(rename = "8Ki")]
    S8Ki,
    /// 16 KiB.
    #[serde(rename = "16Ki")]
    S16Ki,
    /// 32 KiB.
    #[serde(rename = "32Ki")]
    S32Ki,
    /// 64 KiB (the default).
    #[default]
    #[serde(rename = "64Ki")]
    S64Ki,
    /// 128 KiB.
    #[serde(rename = "128Ki")]
    S128Ki,
    /// 256 KiB.
    #[serde(rename = "256Ki")]
    S256Ki,
    /// 512 KiB.
    #[serde(rename = "512Ki")]
    S512Ki,
    /// 1 MiB.
    #[serde(rename = "1Mi")]
    S1Mi,
    /// 2 MiB.
    #[serde(rename = "2Mi")]
    S2Mi,
    /// 4 MiB.
    #[serde(rename = "4Mi")]
    S4Mi,
    /// 8 MiB.
    #[serde(rename = "8Mi")]
    S8Mi,
    /// 16 MiB.
    #[serde(rename = "16Mi")]
    S16Mi,
}

impl StripeSize {
    /// Every stripe size, smallest first.
    pub const ALL: [StripeSize; 13] = [
        StripeSize::S4Ki,
        StripeSize::S8Ki,
        StripeSize::S16Ki,
        StripeSize::S32Ki,
        StripeSize::S64Ki,
        StripeSize::S128Ki,
        StripeSize::S256Ki,
        StripeSize::S512Ki,
        StripeSize::S1Mi,
        StripeSize::S2Mi,
        StripeSize::S4Mi,
        StripeSize::S8Mi,
        StripeSize::S16Mi,
    ];

    /// The stripe size in bytes.
    pub fn bytes(self) -> u32 {
        let shift = match self {
            StripeSize::S4Ki => 0,
            StripeSize::S8Ki => 1,
            StripeSize::S16Ki => 2,
            StripeSize::S32Ki => 3,
            StripeSize::S64Ki => 4,
            StripeSize::S128Ki => 5,
            StripeSize::S256Ki => 6,
            StripeSize::S512Ki => 7,
            StripeSize::S1Mi => 8,
            StripeSize::S2Mi => 9,
            StripeSize::S4Mi => 10,
            StripeSize::S8Mi => 11,
            StripeSize::S16Mi => 12,
        };
        4096u32 << shift
    }

    /// The size as the datapath's size syntax (`64K`, `1M`), for node API calls.
    pub fn datapath_spec(self) -> String {
        let b = self.bytes();
        if b >= 1 << 20 {
            format!("{}M", b >> 20)
        } else {
            format!("{}K", b >> 10)
        }
    }
}

/// Lifecycle phase of the pool: Pending, Online, Degraded or Failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PoolPhase {
    /// Not created or imported on its node yet.
    Pending,
    /// Every member disk is healthy.
    Online,
    /// The pool serves I/O but a member reports errors.
    Degraded,
    /// The pool cannot serve I/O: a member is missing (RAID0 has no redundancy) or the pool
    /// could not be created.
    Failed,
}

/// Health of one member disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MemberState {
    /// Present and healthy.
    Online,
    /// Present but reporting I/O errors.
    Faulted,
    /// Not found on the node.
    Missing,
    /// The node did not say (unreachable, or not asked yet).
    Unknown,
}

/// One member disk as the node reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The disk, as written in `spec.disks`.
    pub disk: String,
    /// Its health.
    pub state: MemberState,
}

/// Observed state of a storage pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,
    /// Usable bytes (the members' data areas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub capacity_bytes: Option<i64>,
    /// Bytes allocated to replicas (thin replicas count what they have written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub used_bytes: Option<i64>,
    /// Bytes not allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub free_bytes: Option<i64>,
    /// Sum of the sizes of the replicas in the pool (what placement has committed; may
    /// exceed capacity only when thin over-commit is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub provisioned_bytes: Option<i64>,
    /// Member disks and their health, in stripe order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Conditions: `Ready`, `DeletionBlocked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl StoragePoolSpec {
    /// Checks what admission should have rejected and returns the disks as datapath backend
    /// specs (device paths become `file:PATH`).
    pub fn validate(&self) -> Result<Vec<String>, SpecError> {
        if self.node.is_empty() {
            return Err(SpecError::Empty { field: "spec.node" });
        }
        if self.disks.is_empty() {
            return Err(SpecError::Empty {
                field: "spec.disks",
            });
        }
        let count = i64::try_from(self.disks.len()).unwrap_or(i64::MAX);
        if count > 64 {
            return Err(SpecError::OutOfRange {
                field: "len(spec.disks)",
                value: count,
                min: 1,
                max: 64,
            });
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(self.disks.len());
        for disk in &self.disks {
            let spec = backend_spec(disk)?;
            if !seen.insert(spec.clone()) {
                return Err(SpecError::Duplicate {
                    field: "spec.disks",
                    value: disk.clone(),
                });
            }
            out.push(spec);
        }
        Ok(out)
    }
}

/// Turns a `spec.disks` entry into a datapath backend spec: an absolute path `P` becomes
/// `file:P`; `file:/...` and `ram:SIZE` pass through.
pub fn backend_spec(disk: &str) -> Result<String, SpecError> {
    let bad = || SpecError::BadDisk(disk.to_string());
    if disk.len() > 1 && disk.starts_with('/') {
        return Ok(format!("file:{disk}"));
    }
    if let Some(path) = disk.strip_prefix("file:") {
        return if path.len() > 1 && path.starts_with('/') {
            Ok(disk.to_string())
        } else {
            Err(bad())
        };
    }
    if let Some(size) = disk.strip_prefix("ram:") {
        let digits = size.bytes().take_while(u8::is_ascii_digit).count();
        let unit = size[digits..].to_ascii_lowercase();
        let unit_ok = matches!(
            unit.as_str(),
            "" | "b" | "k" | "kib" | "m" | "mib" | "g" | "gib" | "t" | "tib"
        );
        return if digits > 0 && unit_ok {
            Ok(disk.to_string())
        } else {
            Err(bad())
        };
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(disks: &[&str]) -> StoragePoolSpec {
        StoragePoolSpec {
            node: "n1".into(),
            disks: disks.iter().map(|d| d.to_string()).collect(),
            stripe_size: StripeSize::default(),
        }
    }

    #[test]
    fn stripe_sizes_are_powers_of_two_from_4k_to_16m() {
        assert_eq!(StripeSize::default().bytes(), 64 * 1024);
        assert_eq!(StripeSize::S4Ki.bytes(), 4096);
        assert_eq!(StripeSize::S16Mi.bytes(), 16 << 20);
        for pair in StripeSize::ALL.windows(2) {
            assert_eq!(pair[0].bytes() * 2, pair[1].bytes());
        }
        assert_eq!(StripeSize::S64Ki.datapath_spec(), "64K");
        assert_eq!(StripeSize::S2Mi.datapath_spec(), "2M");
    }

    #[test]
    fn stripe_size_serializes_as_quantity_and_defaults_to_64ki() {
        assert_eq!(serde_json::to_value(StripeSize::S128Ki).unwrap(), "128Ki");
        let s: StoragePoolSpec = serde_json::from_value(serde_json::json!({
            "node": "n1", "disks": ["/dev/sdb"]
        }))
        .unwrap();
        assert_eq!(s.stripe_size, StripeSize::S64Ki);
        assert!(serde_json::from_value::<StripeSize>(serde_json::json!("60Ki")).is_err());
    }

    #[test]
    fn disks_become_backend_specs() {
        let got = spec(&["/dev/sdb", "file:/var/lib/f/d0.img:1GiB", "ram:64MiB"])
            .validate()
            .unwrap();
        assert_eq!(
            got,
            ["file:/dev/sdb", "file:/var/lib/f/d0.img:1GiB", "ram:64MiB"]
        );
    }

    #[test]
    fn bad_disk_lists_are_refused() {
        assert_eq!(
            spec(&[]).validate(),
            Err(SpecError::Empty {
                field: "spec.disks"
            })
        );
        assert!(matches!(
            spec(&["sdb"]).validate(),
            Err(SpecError::BadDisk(_))
        ));
        assert!(matches!(
            spec(&["file:rel"]).validate(),
            Err(SpecError::BadDisk(_))
        ));
        assert!(matches!(
            spec(&["ram:"]).validate(),
            Err(SpecError::BadDisk(_))
        ));
        assert!(matches!(
            spec(&["ram:1XB"]).validate(),
            Err(SpecError::BadDisk(_))
        ));
        // Decimal units are refused, as the datapath refuses them.
        assert!(matches!(
            spec(&["ram:1GB"]).validate(),
            Err(SpecError::BadDisk(_))
        ));
        // The same device written two ways is still one device.
        let err = spec(&["/dev/sdb", "file:/dev/sdb"]).validate().unwrap_err();
        assert!(matches!(err, SpecError::Duplicate { .. }), "{err}");
        let many: Vec<String> = (0..65).map(|i| format!("/dev/d{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            spec(&many).validate(),
            Err(SpecError::OutOfRange { .. })
        ));
    }
}
