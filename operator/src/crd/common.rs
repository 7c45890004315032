//! Pieces shared by several resources: NVMe/TCP endpoints, conditions, spec errors.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An NVMe/TCP transport address (a listener of a node's datapath).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IP address (or host name) to connect to.
    #[schemars(length(min = 1))]
    pub address: String,
    /// TCP port (4420 is the NVMe/TCP default).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Endpoint {
    /// Builds an endpoint from an address and a port.
    pub fn new(address: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            address: address.into(),
            port: i32::from(port),
        }
    }
}

/// Why a spec that passed (or bypassed) admission cannot be acted on.
///
/// The CRD schemas reject most of these at admission; the operator checks again because it
/// must not trust objects written before a schema change, or with validation disabled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A numeric field is outside its allowed range.
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// JSON path of the field, e.g. `spec.replicas`.
        field: &'static str,
        /// The value found.
        value: i64,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// A list that must not be empty is empty.
    #[error("{field} must list at least one item")]
    Empty {
        /// JSON path of the field.
        field: &'static str,
    },
    /// A list holds the same item twice.
    #[error("{field} lists {value:?} more than once")]
    Duplicate {
        /// JSON path of the field.
        field: &'static str,
        /// The repeated item.
        value: String,
    },
    /// A disk entry is neither a device path nor a backend spec.
    #[error(
        "spec.disks entry {0:?} is not a disk: use an absolute device path (/dev/sdb), \
         file:/PATH, file:/PATH:SIZE or ram:SIZE"
    )]
    BadDisk(String),
    /// A host entry is not an NVMe qualified name.
    #[error("spec.allowedHosts entry {value:?} is not a host NQN: {reason}")]
    BadHostNqn {
        /// The entry.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}
