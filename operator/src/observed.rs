//! Objects the operator observed in the cluster (or read from files for the
//! `plan` subcommand), looked up by kind and name.

use crate::error::{Error, Result};
use crate::labels::{self, Component};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Observed children and referenced Secrets of one VideoChatCluster.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    objects: BTreeMap<(String, String), DynamicObject>,
    /// True when the caller looked up every Secret the spec references, so a
    /// missing one is really missing (the controller does; `plan` from files
    /// only when asked to).
    pub secrets_complete: bool,
}

impl Observed {
    pub fn new(objects: impl IntoIterator<Item = DynamicObject>) -> Self {
        let mut observed = Self::default();
        for object in objects {
            observed.insert(object);
        }
        observed
    }

    pub fn insert(&mut self, object: DynamicObject) {
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        self.objects.insert((kind, name), object);
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&DynamicObject> {
        self.objects.get(&(kind.to_string(), name.to_string()))
    }

    /// The object as a typed Kubernetes struct; `None` when absent or when it
    /// does not parse as that type.
    pub fn typed<K: DeserializeOwned>(&self, kind: &str, name: &str) -> Option<K> {
        let object = self.get(kind, name)?;
        let value = serde_json::to_value(object).ok()?;
        serde_json::from_value(value).ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &DynamicObject> {
        self.objects.values()
    }

    /// Every object of `kind` that parses as `K`.
    pub fn all_typed<K: DeserializeOwned>(&self, kind: &str) -> Vec<K> {
        self.iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .filter_map(|o| {
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| serde_json::from_value(v).ok())
            })
            .collect()
    }

    /// Observed pods of one component of a cluster.
    pub fn component_pods(&self, cluster: &str, component: Component) -> Vec<Pod> {
        self.iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "Pod"))
            .filter(|o| {
                let labels = o.metadata.labels.as_ref();
                let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
                label(labels::INSTANCE) == Some(cluster)
                    && label(labels::COMPONENT) == Some(component.as_str())
            })
            .filter_map(|o| {
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| serde_json::from_value(v).ok())
            })
            .collect()
    }

    /// The decoded value of `key` in an observed Secret.
    pub fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.get("Secret", name)?;
        let data = secret.data.get("data").and_then(|d| d.get(key));
        if let Some(encoded) = data.and_then(|v| v.as_str()) {
            let bytes = STANDARD.decode(encoded).ok()?;
            return String::from_utf8(bytes).ok();
        }
        // Objects written by hand for `plan -f` may use stringData.
        secret
            .data
            .get("stringData")
            .and_then(|d| d.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Parses a YAML stream (one or more documents, `kind: List` expanded) into
/// objects. `what` names the source in errors.
pub fn parse_yaml_objects(text: &str, what: &str) -> Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).map_err(|e| Error::Parse {
                what: format!("{what} (document {})", index + 1),
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        let is_list = value
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k == "List" || k.ends_with("List"))
            && value.get("items").is_some();
        let items = if is_list {
            value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            objects.push(parse_object(item, what, index)?);
        }
    }
    Ok(objects)
}

fn parse_object(value: serde_json::Value, what: &str, index: usize) -> Result<DynamicObject> {
    let has_kind = value.get("kind").and_then(|k| k.as_str()).is_some();
    let has_version = value.get("apiVersion").and_then(|k| k.as_str()).is_some();
    if !has_kind || !has_version {
        return Err(Error::Parse {
            what: format!("{what} (document {})", index + 1),
            message: "every object needs apiVersion and kind".into(),
        });
    }
    serde_json::from_value(value).map_err(|e| Error::Parse {
        what: format!("{what} (document {})", index + 1),
        message: e.to_string(),
    })
}
