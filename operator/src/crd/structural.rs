//! A check that a generated CRD schema is one Kubernetes 1.20 accepts, so that a schemars or
//! kube upgrade that changes the output is caught by a unit test, not at `kubectl apply`.
//!
//! Kubernetes requires *structural* schemas in `apiextensions.k8s.io/v1`: every node has a
//! single `type` (except `x-kubernetes-int-or-string` / `x-kubernetes-preserve-unknown-fields`
//! nodes), no `$ref`, no `definitions`, `additionalProperties` never next to `properties`,
//! `items` on every array. Ferrite is stricter than needed: no `anyOf`/`oneOf`/`allOf`/`not`
//! at all, no CEL rules (1.20 has none), integer formats `int32`/`int64` only, and defaults
//! that satisfy their own node's `enum`/`minimum`/`maximum`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// Keywords a Ferrite schema must not contain.
const FORBIDDEN: [&str; 11] = [
    "$ref",
    "$schema",
    "definitions",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "uniqueItems",
    "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
];

/// Every schema problem found in `crd`, as `"<crd>/<version> <json path>: <problem>"`.
/// Empty when the CRD is fine.
pub fn problems(crd: &CustomResourceDefinition) -> Vec<String> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for version in &crd.spec.versions {
        let prefix = format!("{name}/{}", version.name);
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(serde_json::to_value);
        match schema {
            Some(Ok(value)) => check(&value, "", &mut |path, why| {
                out.push(format!(
                    "{prefix} {}: {why}",
                    if path.is_empty() { "." } else { path }
                ));
            }),
            Some(Err(e)) => out.push(format!("{prefix}: schema does not serialize: {e}")),
            None => out.push(format!("{prefix}: no openAPIV3Schema")),
        }
        if version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_none()
        {
            out.push(format!("{prefix}: no status subresource"));
        }
    }
    out
}

fn check(node: &Value, path: &str, report: &mut dyn FnMut(&str, &str)) {
    let Some(obj) = node.as_object() else {
        report(path, "schema node is not an object");
        return;
    };
    for key in FORBIDDEN {
        if obj.contains_key(key) {
            report(path, &format!("contains `{key}`"));
        }
    }
    let flag = |key: &str| obj.get(key) == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if obj.contains_key("type") && ty.is_none() {
        report(path, "`type` is not a single string");
    }
    if ty.is_none()
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        report(path, "no `type`");
    }
    if let Some(n) = obj.get("nullable")
        && !n.is_boolean()
    {
        report(path, "`nullable` is not a boolean");
    }
    if let Some(format) = obj.get("format").and_then(Value::as_str) {
        let ok = match ty {
            Some("integer") => matches!(format, "int32" | "int64"),
            Some("number") => matches!(format, "float" | "double"),
            Some("string") => matches!(format, "date-time" | "date" | "byte" | "uuid"),
            _ => false,
        };
        if !ok {
            report(
                path,
                &format!("format {format:?} is not one Kubernetes knows for type {ty:?}"),
            );
        }
    }
    check_default(obj, ty, path, report);
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if obj.contains_key("additionalProperties") {
            report(path, "`properties` and `additionalProperties` together");
        }
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !props.contains_key(r) {
                    report(path, &format!("requires {r:?}, which is not a property"));
                }
            }
        }
        for (key, child) in props {
            check(child, &format!("{path}.{key}"), report);
        }
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(false)) => report(path, "`additionalProperties: false`"),
        Some(child @ Value::Object(_)) => check(child, &format!("{path}[*]"), report),
        _ => {}
    }
    if ty == Some("array") {
        match obj.get("items") {
            Some(items) => {
                check(items, &format!("{path}[]"), report);
                check_list_type(obj, items, path, report);
            }
            None => report(path, "array without `items`"),
        }
    }
}

fn check_list_type(
    obj: &Map<String, Value>,
    items: &Value,
    path: &str,
    report: &mut dyn FnMut(&str, &str),
) {
    let item_type = items.get("type").and_then(Value::as_str);
    match obj.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") if item_type == Some("object") || item_type == Some("array") => {
            report(path, "list-type set needs scalar items");
        }
        Some("map") => {
            let keys = obj
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array);
            let required = items.get("required").and_then(Value::as_array);
            match (keys, required) {
                (Some(keys), Some(required)) if !keys.is_empty() => {
                    for k in keys {
                        if !required.contains(k) {
                            report(
                                path,
                                &format!("list-map key {k} is not a required item field"),
                            );
                        }
                    }
                }
                _ => report(
                    path,
                    "list-type map needs list-map-keys that are required fields",
                ),
            }
        }
        _ => {}
    }
}

fn check_default(
    obj: &Map<String, Value>,
    ty: Option<&str>,
    path: &str,
    report: &mut dyn FnMut(&str, &str),
) {
    let Some(default) = obj.get("default") else {
        return;
    };
    let type_ok = match ty {
        Some("string") => default.is_string(),
        Some("integer") => default.is_i64(),
        Some("number") => default.is_number(),
        Some("boolean") => default.is_boolean(),
        Some("object") => default.is_object(),
        Some("array") => default.is_array(),
        _ => false,
    };
    if !type_ok {
        report(
            path,
            &format!("default {default} does not have type {ty:?}"),
        );
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array)
        && !values.contains(default)
    {
        report(path, &format!("default {default} is not in the enum"));
    }
    if let Some(d) = default.as_f64() {
        let min = obj.get("minimum").and_then(Value::as_f64);
        let max = obj.get("maximum").and_then(Value::as_f64);
        if min.is_some_and(|m| d < m) || max.is_some_and(|m| d > m) {
            report(path, &format!("default {default} is out of its range"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(schema: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema, "", &mut |p, why| out.push(format!("{p}: {why}")));
        out
    }

    #[test]
    fn generated_crds_are_structural() {
        for crd in crate::crd::generate::crds() {
            assert_eq!(problems(&crd), Vec::<String>::new());
        }
    }

    #[test]
    fn catches_what_kubernetes_1_20_refuses() {
        let bad = json!({
            "type": "object",
            "properties": {
                "a": { "type": ["string", "null"] },
                "b": { "type": "integer", "format": "uint64" },
                "c": { "anyOf": [{ "type": "string" }, { "type": "integer" }] },
                "d": { "type": "array" },
                "e": { "type": "string", "enum": ["x"], "default": "y" },
                "f": { "type": "string", "x-kubernetes-validations": [{ "rule": "self != ''" }] }
            },
            "additionalProperties": { "type": "string" }
        });
        let got = issues(bad);
        for needle in [
            ".a: `type` is not a single string",
            ".b: format \"uint64\"",
            ".c: contains `anyOf`",
            ".d: array without `items`",
            ".e: default \"y\" is not in the enum",
            ".f: contains `x-kubernetes-validations`",
            ": `properties` and `additionalProperties` together",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(needle)),
                "missing {needle:?} in {got:#?}"
            );
        }
    }
}
