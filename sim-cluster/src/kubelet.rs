//! The node agent, first part: image pulls. A pod bound to a node whose
//! images are all known waits for the container runtime (not simulated
//! yet: see docs/testing.md); a pod with an image the simulation does not
//! know reports ErrImagePull, then ImagePullBackOff, and never becomes
//! Ready, which is how a bad revision shows on a real cluster.

use crate::controllers::scheduler::{set_condition, strip_rv};
use crate::controllers::{log_failure, name, namespace, resource, str_at, terminating};
use crate::store::{Part, Store};
use serde_json::{Value, json};

/// The field manager of the node agent's status writes.
const MANAGER: &str = "kubelet";

/// The images that pull: the project's own at this version, and the
/// database images the operator renders by default.
pub fn default_images() -> Vec<String> {
    let version = env!("CARGO_PKG_VERSION");
    vec![
        format!("ghcr.io/videochat-dev/videochat-signaling:{version}"),
        format!("ghcr.io/videochat-dev/videochat-turn:{version}"),
        "redis:7.4-alpine".into(),
        "mongo:7.0".into(),
    ]
}

fn pull_failure(image: &str, first: bool) -> Value {
    if first {
        json!({"reason": "ErrImagePull", "message": format!(
            "failed to pull and unpack image \"{image}\": {image}: not found")})
    } else {
        json!({"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")})
    }
}

pub fn pass(store: &Store, images: &[String]) {
    let Some(pod_type) = resource(store, "", "pods") else {
        return;
    };
    for pod in store.all(&pod_type) {
        if terminating(&pod) || pod.pointer("/spec/nodeName").is_none() {
            continue;
        }
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let unknown: Vec<&Value> = containers
            .iter()
            .filter(|c| !images.iter().any(|i| i == str_at(c, "/image")))
            .collect();
        if unknown.is_empty() {
            continue;
        }
        let previous = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let container = str_at(c, "/name");
                let image = str_at(c, "/image");
                let seen_before = previous.iter().any(|p| {
                    str_at(p, "/name") == container && p.pointer("/state/waiting/reason").is_some()
                });
                let state = if unknown.iter().any(|u| str_at(u, "/name") == container) {
                    json!({"waiting": pull_failure(image, !seen_before)})
                } else {
                    json!({"waiting": {"reason": "ContainerCreating"}})
                };
                json!({"name": container, "image": image, "imageID": "", "ready": false,
                    "started": false, "restartCount": 0, "state": state})
            })
            .collect();
        let unready: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
        let mut updated = pod.clone();
        updated["status"]["phase"] = json!("Pending");
        updated["status"]["containerStatuses"] = json!(statuses);
        let message = format!("containers with unready status: [{}]", unready.join(" "));
        set_condition(&mut updated, "Initialized", "True", "", "");
        set_condition(
            &mut updated,
            "ContainersReady",
            "False",
            "ContainersNotReady",
            &message,
        );
        set_condition(
            &mut updated,
            "Ready",
            "False",
            "ContainersNotReady",
            &message,
        );
        if updated.get("status") != pod.get("status") {
            log_failure(
                store.replace(
                    &pod_type,
                    Some(namespace(&pod)),
                    name(&pod),
                    strip_rv(updated),
                    MANAGER,
                    Part::Status,
                ),
                "writing an image pull failure",
            );
        }
    }
}
