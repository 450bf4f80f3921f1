//! Admission: immutable fields of built-in kinds, and the OpenAPI schema,
//! defaults and CEL rules of custom resources.

use crate::error::{Result, SimError};
use crate::resources::ResourceType;
use serde_json::{Map, Value};

/// A custom resource's schema, from its CRD.
#[derive(Clone, Debug)]
pub struct CustomSchema {
    pub resource: ResourceType,
    pub schema: Value,
}

impl CustomSchema {
    pub fn from_crd(crd: &Value, resource: ResourceType) -> Option<Self> {
        let version = crd
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(resource.version.as_str()))?;
        Some(Self {
            resource,
            schema: version.pointer("/schema/openAPIV3Schema")?.clone(),
        })
    }
}

fn what(resource: &ResourceType, name: &str) -> String {
    if resource.group.is_empty() {
        format!("{} \"{name}\"", resource.kind)
    } else {
        format!("{}.{} \"{name}\"", resource.kind, resource.group)
    }
}

fn invalid(resource: &ResourceType, name: &str, causes: &[String]) -> SimError {
    SimError::invalid(format!(
        "{} is invalid: {}",
        what(resource, name),
        causes.join(", ")
    ))
}

/// Checks a built-in kind's immutable fields on update.
pub fn check_immutable(
    resource: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<()> {
    let mut causes = Vec::new();
    let differs = |pointer: &str| old.pointer(pointer) != new.pointer(pointer);
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "StatefulSet") => {
            // The real rule: only these spec fields may change.
            const MUTABLE: [&str; 6] = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let strip = |v: &Value| -> Value {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(map) = spec.as_object_mut() {
                    for field in MUTABLE {
                        map.remove(field);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".to_owned());
            }
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") if differs("/spec/selector") => {
            let value = new
                .pointer("/spec/selector")
                .cloned()
                .unwrap_or(Value::Null);
            causes.push(format!(
                "spec.selector: Invalid value: {value}: field is immutable"
            ));
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
            let new_ip = new.pointer("/spec/clusterIP").and_then(Value::as_str);
            if old_ip.is_some_and(|o| !o.is_empty()) && new_ip.is_some_and(|n| Some(n) != old_ip) {
                causes.push(format!(
                    "spec.clusterIPs[0]: Invalid value: []string{{\"{}\"}}: may not change once set",
                    new_ip.unwrap_or_default()
                ));
            }
        }
        ("", "PersistentVolumeClaim") => {
            let strip = |v: &Value| -> Value {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(requests) = spec
                    .pointer_mut("/resources/requests")
                    .and_then(Value::as_object_mut)
                {
                    requests.remove("storage");
                }
                if let Some(map) = spec.as_object_mut() {
                    map.remove("volumeName");
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".to_owned());
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(resource, name, &causes))
    }
}

/// Defaults, prunes unknown fields, validates the schema and evaluates the
/// CEL rules (with `oldSelf` on updates). Returns the object as stored.
pub fn admit_custom(custom: &CustomSchema, new: &Value, old: Option<&Value>) -> Result<Value> {
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut object = kube_cel::apply_defaults(&custom.schema, new);
    let mut causes = Vec::new();
    // metadata is validated by the server's own rules, not the schema.
    let metadata = object.get("metadata").cloned();
    check_schema(&custom.schema, &mut object, "", &mut causes);
    if let (Some(metadata), Some(map)) = (metadata, object.as_object_mut()) {
        map.insert("metadata".into(), metadata);
    }
    if causes.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate(&custom.schema, &object, old)
    {
        for error in errors.iter() {
            let path = if error.field_path.is_empty() {
                "<root>".to_owned()
            } else {
                error.field_path.clone()
            };
            causes.push(format!(
                "{path}: Invalid value: \"object\": {}",
                error.message
            ));
        }
    }
    if causes.is_empty() {
        Ok(object)
    } else {
        Err(invalid(&custom.resource, &name, &causes))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

/// Structural schema validation with the API server's pruning: unknown
/// fields and nulls of non-nullable fields are dropped, not refused.
fn check_schema(schema: &Value, value: &mut Value, path: &str, causes: &mut Vec<String>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
        && schema.get("properties").is_none()
    {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            causes.push(format!(
                "{shown}: Invalid value: {value}: {shown} in body must be of type int-or-string"
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !type_matches(expected, value)
    {
        causes.push(format!(
            "{shown}: Invalid value: \"{}\": {shown} in body must be of type {expected}",
            json_type(value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push(format!(
            "{shown}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    match value {
        Value::Object(map) => check_object(schema, map, path, causes),
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && count > max
            {
                causes.push(format!(
                    "{shown}: Too many: {count}: must have at most {max} items"
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && count < min
            {
                causes.push(format!(
                    "{shown}: Invalid value: {count}: {shown} in body should have at least {min} items"
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter_mut().enumerate() {
                    check_schema(item_schema, item, &format!("{path}[{index}]"), causes);
                }
            }
        }
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                causes.push(format!(
                    "{shown}: Too long: may not be more than {max} bytes"
                ));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                causes.push(format!(
                    "{shown}: Invalid value: \"{text}\": {shown} in body should be at least {min} chars long"
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(text) => causes.push(format!(
                        "{shown}: Invalid value: \"{text}\": {shown} in body should match '{pattern}'"
                    )),
                    Ok(_) => {}
                    Err(error) => causes.push(format!("{shown}: invalid pattern in schema: {error}")),
                }
            }
        }
        Value::Number(number) => {
            if let (Some(min), Some(actual)) = (
                schema.get("minimum").and_then(Value::as_f64),
                number.as_f64(),
            ) && actual < min
            {
                causes.push(format!(
                    "{shown}: Invalid value: {number}: {shown} in body should be greater than or equal to {min}"
                ));
            }
            if let (Some(max), Some(actual)) = (
                schema.get("maximum").and_then(Value::as_f64),
                number.as_f64(),
            ) && actual > max
            {
                causes.push(format!(
                    "{shown}: Invalid value: {number}: {shown} in body should be less than or equal to {max}"
                ));
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    causes: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
        let Some(child_schema) = child_schema else {
            if !preserve {
                // Pruned, as the API server drops unknown fields.
                map.remove(&key);
            }
            continue;
        };
        let nullable = child_schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if map.get(&key).is_some_and(Value::is_null) {
            if !nullable {
                map.remove(&key);
            }
            continue;
        }
        if let Some(child) = map.get_mut(&key) {
            check_schema(child_schema, child, &join(path, &key), causes);
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(field) {
                causes.push(format!("{}: Required value", join(path, field)));
            }
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
