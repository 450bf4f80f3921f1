//! ReplicaSet controller: keeps `replicas` pods from the template; on
//! scale-down deletes unscheduled, then unready, then lowest
//! pod-deletion-cost, then newest pods first.

use super::*;
use crate::store::{Part, Propagation};

pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

pub fn pass(store: &Store) {
    let (Some(rs_type), Some(pod_type)) = (
        resource(store, "apps", "replicasets"),
        resource(store, "", "pods"),
    ) else {
        return;
    };
    let pods = store.all(&pod_type);
    for rs in store.all(&rs_type) {
        if terminating(&rs) {
            continue;
        }
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid(&rs)) && !terminating(p))
            .collect();
        let wanted = int_at(&rs, "/spec/replicas", 1);
        let have = owned.len() as i64;
        if have < wanted {
            for _ in have..wanted {
                let pod =
                    pod_from_template(&rs, &rs_type, &format!("{}-{}", name(&rs), random_suffix()));
                log_failure(
                    store.create(&pod_type, Some(namespace(&rs)), pod, MANAGER),
                    "creating a pod",
                );
            }
        } else if have > wanted {
            let mut ranked = owned.clone();
            ranked.sort_by_key(|p| deletion_rank(p));
            for pod in ranked.iter().take((have - wanted) as usize) {
                log_failure(
                    store.delete(
                        &pod_type,
                        Some(namespace(pod)),
                        name(pod),
                        Propagation::Background,
                        None,
                    ),
                    "deleting a pod",
                );
            }
        }
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let status = json!({
            "replicas": owned.len(),
            "fullyLabeledReplicas": owned.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": int_at(&rs, "/metadata/generation", 1),
        });
        if rs.get("status") != Some(&status) {
            let mut updated = rs.clone();
            updated["status"] = status;
            if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            log_failure(
                store.replace(
                    &rs_type,
                    Some(namespace(&rs)),
                    name(&rs),
                    updated,
                    MANAGER,
                    Part::Status,
                ),
                "writing ReplicaSet status",
            );
        }
    }
}

/// Lower sorts first = deleted first.
fn deletion_rank(pod: &Value) -> (bool, bool, i64, std::cmp::Reverse<String>) {
    let cost = pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            DELETION_COST.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        pod.pointer("/spec/nodeName").is_some(),
        pod_ready(pod),
        cost,
        std::cmp::Reverse(str_at(pod, "/metadata/creationTimestamp").to_owned() + name(pod)),
    )
}

/// A pod from the owner's template.
pub fn pod_from_template(owner: &Value, owner_type: &ResourceType, pod_name: &str) -> Value {
    let template = owner
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(json!({}));
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    metadata["name"] = json!(pod_name);
    metadata["namespace"] = json!(namespace(owner));
    metadata["ownerReferences"] = json!([controller_ref(owner, owner_type)]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}
