//! The uniform form plans carry objects in, and how an object names its type.

use crate::error::{Error, Result};
use kube::api::DynamicObject;
use serde::Serialize;

/// apiVersion and kind of an object (empty when it has none).
pub fn type_of(object: &DynamicObject) -> (String, String) {
    object
        .types
        .as_ref()
        .map(|t| (t.api_version.clone(), t.kind.clone()))
        .unwrap_or_default()
}

/// Converts a typed Kubernetes object into the uniform form plans carry.
pub fn to_dynamic<K: Serialize>(object: &K) -> Result<DynamicObject> {
    let value = serde_json::to_value(object).map_err(|e| Error::Serialize {
        what: "child object".into(),
        message: e.to_string(),
    })?;
    serde_json::from_value(value).map_err(|e| Error::Serialize {
        what: "child object".into(),
        message: e.to_string(),
    })
}
