//! The checks the API server makes when a VideoChatCluster is applied: its
//! CRD's OpenAPI schema, strict about fields the schema does not declare (as
//! `kubectl apply --validate=strict`), and the CRD's CEL rules
//! (`x-kubernetes-validations`, evaluated by `kube-cel`). `plan` runs them on
//! its input, so what `plan` accepts a cluster accepts too.

use crate::resource::VideoChatCluster;
use kube::CustomResourceExt;
use serde_json::Value;

/// One reason an object would be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Where, as a dotted path (`spec.signaling.replicas`); empty for the root.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The CRD's schema for the served version.
fn crd_schema() -> Option<Value> {
    let crd = serde_json::to_value(VideoChatCluster::crd()).ok()?;
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
}

/// Closes every object node that lists its properties (unknown fields are
/// errors), and turns OpenAPI's `nullable` into JSON Schema's type list.
fn strict(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let preserve =
                map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !preserve
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(type_)) = map.get("type").cloned()
            {
                map.insert("type".into(), serde_json::json!([type_, "null"]));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// `/spec/signaling/replicas` as `spec.signaling.replicas`.
fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Every reason the API server would refuse `object` (a VideoChatCluster as
/// JSON); `old` is the stored object for an update (transition rules).
/// Empty when it would be accepted.
pub fn refusals(object: &Value, old: Option<&Value>) -> Vec<Refusal> {
    let Some(schema) = crd_schema() else {
        return vec![Refusal {
            path: String::new(),
            message: "the CRD schema could not be built".into(),
        }];
    };
    let mut shape = schema.clone();
    strict(&mut shape);
    if let Some(properties) = shape.get_mut("properties").and_then(Value::as_object_mut) {
        // metadata is the API server's, not the CRD's.
        properties.insert("metadata".into(), serde_json::json!({"type": "object"}));
        properties.insert(
            "apiVersion".into(),
            serde_json::json!({"const": "videochat.dev/v1alpha1"}),
        );
        properties.insert(
            "kind".into(),
            serde_json::json!({"const": "VideoChatCluster"}),
        );
    }
    let mut out = Vec::new();
    match jsonschema::draft7::new(&shape) {
        Ok(validator) => {
            for error in validator.iter_errors(object) {
                out.push(Refusal {
                    path: dotted(error.instance_path().as_str()),
                    message: error.to_string(),
                });
            }
        }
        Err(error) => out.push(Refusal {
            path: String::new(),
            message: format!("the CRD schema is not valid JSON Schema: {error}"),
        }),
    }
    // CEL rules assume a well-formed object; run them only on one.
    if out.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate(&schema, object, old)
    {
        for error in errors.into_vec() {
            out.push(Refusal {
                path: error.field_path.clone(),
                message: error.message.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(spec: Value) -> Value {
        json!({
            "apiVersion": "videochat.dev/v1alpha1",
            "kind": "VideoChatCluster",
            "metadata": {"name": "demo", "namespace": "videochat"},
            "spec": spec,
        })
    }

    #[test]
    fn the_smallest_cluster_is_accepted() {
        assert_eq!(refusals(&cluster(json!({})), None), vec![]);
    }

    #[test]
    fn a_misspelled_field_is_refused_with_its_path() {
        let found = refusals(&cluster(json!({"signaling": {"replica": 2}})), None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "spec.signaling");
        assert!(found[0].message.contains("replica"), "{}", found[0]);
    }

    #[test]
    fn zero_replicas_is_refused_with_its_path() {
        let found = refusals(&cluster(json!({"signaling": {"replicas": 0}})), None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "spec.signaling.replicas");
    }

    #[test]
    fn cel_rules_are_evaluated() {
        // relayPortRange carries a rule that min is not above max.
        let found = refusals(
            &cluster(json!({"turn": {"relayPortRange": {"min": 50000, "max": 49999}}})),
            None,
        );
        assert!(
            !found.is_empty(),
            "an inverted relay port range was accepted"
        );
        assert!(
            found.iter().all(|r| r.path.starts_with("spec.turn")),
            "{found:?}"
        );
    }
}
