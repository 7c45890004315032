//! The committed `manifests/crds.yaml` must be exactly what `crdgen` writes.

use std::path::Path;

use ferrite_operator::crd::generate::{MANIFEST_PATH, REGENERATE, crds_yaml};

#[test]
fn committed_crds_match_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(MANIFEST_PATH);
    let generated = crds_yaml().expect("CRDs render as YAML");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the length".to_string(), |n| format!("line {}", n + 1));
        panic!(
            "{MANIFEST_PATH} is stale (first difference at {line}): the CRD types changed. \
             Regenerate it from the workspace root with:\n\n    {REGENERATE}\n"
        );
    }
}

#[test]
fn the_manifest_holds_three_crds_that_parse_back() {
    let yaml = crds_yaml().expect("CRDs render as YAML");
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|doc| serde_saphyr::from_str(doc).expect("each document parses"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ferritenodes.ferrite.dev",
            "storagepools.ferrite.dev",
            "volumes.ferrite.dev"
        ]
    );
    for d in &docs {
        assert_eq!(d["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(d["spec"]["scope"], "Cluster");
        assert_eq!(d["spec"]["names"]["categories"][0], "ferrite");
    }
}
