//! Builds the CustomResourceDefinitions and renders them as the multi-document YAML that
//! `crdgen` writes to `manifests/crds.yaml`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{FerriteNode, StoragePool, Volume};

/// The command that regenerates the committed manifest (quoted in error messages).
pub const REGENERATE: &str = "cargo run -p ferrite-operator --bin crdgen -- manifests/crds.yaml";

/// Path of the committed manifest, relative to the workspace root.
pub const MANIFEST_PATH: &str = "manifests/crds.yaml";

/// Failure to render the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A CRD could not be serialized as YAML.
    #[error("serializing CRD {name} as YAML: {source}")]
    Yaml {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_saphyr::SerializeError,
    },
}

/// Every Ferrite CRD, in a fixed order (nodes, pools, volumes).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![FerriteNode::crd(), StoragePool::crd(), Volume::crd()]
}

/// The CRDs as one multi-document YAML stream, with a header saying how it was made.
pub fn crds_yaml() -> Result<String, GenerateError> {
    let mut out = format!(
        "# Ferrite CustomResourceDefinitions (group {}, version {}).\n\
         # Generated from the Rust types in operator/src/crd; do not edit. Regenerate with:\n\
         #   {REGENERATE}\n",
        super::GROUP,
        super::VERSION,
    );
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let doc =
            serde_saphyr::to_string(&crd).map_err(|source| GenerateError::Yaml { name, source })?;
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
