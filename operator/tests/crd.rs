//! The CRD: generated files in sync, schema structural, samples valid.

mod support;

use serde_json::Value;
use support::*;

#[test]
fn crd_files_match_the_generated_crd() {
    let generated = videochat_operator::resource::crd_yaml().expect("crd yaml");
    for path in [
        "crds/videochatcluster.yaml",
        "charts/videochat-operator/crds/videochatcluster.yaml",
    ] {
        let on_disk = std::fs::read_to_string(repo_path(path)).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{path} is out of date; regenerate with: cargo run -p videochat-operator -- crd > {path}"
        );
    }
}

/// Checks the Kubernetes structural-schema rules: every node has a type
/// (or is int-or-string / preserve-unknown-fields), no $ref, no
/// additionalProperties beside properties, and logical combinators only
/// carry value validations.
fn structural_problems(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let typed = map.get("type").and_then(Value::as_str).is_some();
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    for forbidden in [
        "$ref",
        "$schema",
        "definitions",
        "$defs",
        "dependencies",
        "patternProperties",
    ] {
        if map.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden} is not allowed"));
        }
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for combinator in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = map.get(combinator) {
            let branches: Vec<&Value> = match branches {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for branch in branches {
                for key in [
                    "type",
                    "default",
                    "description",
                    "nullable",
                    "additionalProperties",
                ] {
                    if branch.get(key).is_some() {
                        problems.push(format!("{path}.{combinator}: {key} is not allowed inside"));
                    }
                }
            }
        }
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_problems(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(items) = map.get("items") {
        structural_problems(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|a| a.is_object()) {
        structural_problems(additional, &format!("{path}{{}}"), problems);
    }
}

fn crd_schema() -> Value {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(videochat_operator::VideoChatCluster::crd()).expect("json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn crd_schema_is_structural() {
    let mut problems = Vec::new();
    structural_problems(&crd_schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");

    // And the check itself catches what it claims to.
    let broken: Value = serde_json::json!({"type": "object", "properties": {"a": {"description": "untyped"}, "b": {"$ref": "#/x", "type": "object"}}});
    let mut found = Vec::new();
    structural_problems(&broken, "", &mut found);
    assert_eq!(found.len(), 2, "{found:#?}");
}

#[test]
fn crd_has_names_scope_subresource_and_printer_columns() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(videochat_operator::VideoChatCluster::crd()).expect("json");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "videochat.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["vcc"]));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Ready", "Signaling", "TURN", "Age"]);
    // Defaults land in the schema.
    let signaling = &crd_schema()["properties"]["spec"]["properties"]["signaling"]["properties"];
    assert_eq!(signaling["replicas"]["default"], 2);
    assert_eq!(
        signaling["image"]["default"],
        "ghcr.io/videochat-dev/videochat-signaling:0.1.0"
    );
}

#[test]
fn samples_parse_and_pass_the_schema_rules() {
    for name in [
        "minimal",
        "full",
        "external-databases",
        "turn-host-network",
        "turn-cluster-internal",
    ] {
        let cluster = sample(name);
        assert!(
            videochat_operator::resource::validation_errors(&cluster).is_empty(),
            "{name}"
        );
    }
}
