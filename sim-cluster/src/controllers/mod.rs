//! The controllers a cluster runs after the operator writes: Deployment,
//! ReplicaSet, StatefulSet, the scheduler, Service endpoints and a
//! load-balancer allocator. They read and write the store directly (as
//! kube-controller-manager does through its informers), under their own
//! field managers; [`crate::control_loop`] runs their passes.

pub mod deployment;
pub mod endpoints;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;

use crate::resources::ResourceType;
use crate::store::Store;
use serde_json::{Value, json};
use sha2::Digest;

/// The controller-manager's field manager.
pub const MANAGER: &str = "kube-controller-manager";

/// One pass of every controller.
pub fn run_pass(store: &Store) {
    deployment::pass(store);
    replicaset::pass(store);
    statefulset::pass(store);
    scheduler::pass(store);
    endpoints::pass(store);
}

pub fn resource(store: &Store, group: &str, plural: &str) -> Option<ResourceType> {
    store.resource(group, plural).cloned()
}

pub fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn name(object: &Value) -> &str {
    str_at(object, "/metadata/name")
}

pub fn namespace(object: &Value) -> &str {
    str_at(object, "/metadata/namespace")
}

pub fn uid(object: &Value) -> &str {
    str_at(object, "/metadata/uid")
}

pub fn terminating(object: &Value) -> bool {
    object.pointer("/metadata/deletionTimestamp").is_some()
}

/// The uid of the object's controlling owner.
pub fn controller_uid(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("uid")
        .and_then(Value::as_str)
}

pub fn controller_ref(owner: &Value, resource: &ResourceType) -> Value {
    json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A short stable hash of a pod template, as pod-template-hash.
pub fn template_hash(template: &Value) -> String {
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    digest
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

pub fn pod_ready(pod: &Value) -> bool {
    !terminating(pod)
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

pub fn int_at(object: &Value, pointer: &str, default: i64) -> i64 {
    object
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// Resolves an int-or-percent against `total`.
pub fn int_or_percent(value: Option<&Value>, total: i64, default: &str, round_up: bool) -> i64 {
    let text = match value {
        Some(Value::Number(n)) => return n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.clone(),
        _ => default.to_owned(),
    };
    match text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(percent) => {
            let scaled = total * percent;
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        None => text.parse().unwrap_or(0),
    }
}

pub fn random_suffix() -> String {
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| alphabet[rand::random::<usize>() % alphabet.len()] as char)
        .collect()
}

/// Logs a failed controller write; the next pass retries.
pub fn log_failure<T>(result: crate::Result<T>, what: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!(%error, what, "controller write failed; retrying on the next pass");
            None
        }
    }
}
