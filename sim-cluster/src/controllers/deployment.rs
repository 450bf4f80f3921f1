//! Deployment controller: a ReplicaSet per pod-template hash, rolling
//! updates within maxSurge and maxUnavailable (or Recreate), the revision
//! annotation, and status with observedGeneration and the Available and
//! Progressing conditions (ProgressDeadlineExceeded after
//! progressDeadlineSeconds without progress, never once complete).

use super::*;
use crate::store::{Part, now_rfc3339};

const REVISION: &str = "deployment.kubernetes.io/revision";

struct Set {
    object: Value,
    replicas: i64,
    pods: i64,
    ready: i64,
}

fn revision_of(object: &Value) -> i64 {
    object
        .pointer(&format!(
            "/metadata/annotations/{}",
            REVISION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn seconds_since(timestamp: &str) -> i64 {
    match timestamp.parse::<k8s_openapi::jiff::Timestamp>() {
        Ok(then) => k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second(),
        Err(_) => 0,
    }
}

pub fn pass(store: &Store) {
    let (Some(deploy_type), Some(rs_type), Some(pod_type)) = (
        resource(store, "apps", "deployments"),
        resource(store, "apps", "replicasets"),
        resource(store, "", "pods"),
    ) else {
        return;
    };
    let all_rs = store.all(&rs_type);
    let pods = store.all(&pod_type);
    for deployment in store.all(&deploy_type) {
        if terminating(&deployment) {
            continue;
        }
        reconcile(store, &deploy_type, &rs_type, &deployment, &all_rs, &pods);
    }
}

fn scale(store: &Store, rs_type: &ResourceType, rs: &Value, replicas: i64, desired: i64) {
    let mut updated = rs.clone();
    updated["spec"]["replicas"] = json!(replicas);
    updated["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
        json!(desired.to_string());
    if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    log_failure(
        store.replace(
            rs_type,
            Some(namespace(rs)),
            name(rs),
            updated,
            MANAGER,
            Part::Main,
        ),
        "scaling a ReplicaSet",
    );
}

fn reconcile(
    store: &Store,
    deploy_type: &ResourceType,
    rs_type: &ResourceType,
    deployment: &Value,
    all_rs: &[Value],
    pods: &[Value],
) {
    let ns = namespace(deployment);
    let replicas = int_at(deployment, "/spec/replicas", 1);
    let template = deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(json!({}));
    let hash = template_hash(&template);
    let owned: Vec<&Value> = all_rs
        .iter()
        .filter(|rs| controller_uid(rs) == Some(uid(deployment)) && !terminating(rs))
        .collect();
    let max_revision = owned.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let sets: Vec<Set> = owned
        .iter()
        .map(|rs| {
            let rs_pods: Vec<&Value> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid(rs)) && !terminating(p))
                .collect();
            Set {
                object: (*rs).clone(),
                replicas: int_at(rs, "/spec/replicas", 0),
                pods: rs_pods.len() as i64,
                ready: rs_pods.iter().filter(|p| pod_ready(p)).count() as i64,
            }
        })
        .collect();
    let new_index = sets
        .iter()
        .position(|s| str_at(&s.object, "/metadata/labels/pod-template-hash") == hash);
    let Some(new_index) = new_index else {
        // A new revision: its ReplicaSet starts empty unless nothing runs.
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["pod-template-hash"] = json!(hash);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"] = labels.clone();
        let mut selector = deployment
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or(json!({}));
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let initial = if sets.iter().all(|s| s.replicas == 0) && !is_recreate(deployment) {
            replicas.min(replicas + surge(deployment, replicas))
        } else {
            0
        };
        let rs = json!({
            "metadata": {
                "name": format!("{}-{hash}", name(deployment)),
                "namespace": ns,
                "labels": labels,
                "annotations": {
                    REVISION: (max_revision + 1).to_string(),
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                },
                "ownerReferences": [controller_ref(deployment, deploy_type)],
            },
            "spec": {"replicas": initial, "selector": selector, "template": rs_template},
        });
        log_failure(
            store.create(rs_type, Some(ns), rs, MANAGER),
            "creating a ReplicaSet",
        );
        write_status(store, deploy_type, deployment, &sets, None, true, replicas);
        return;
    };
    let new_set = &sets[new_index];
    // Rolling back to an older template makes its ReplicaSet the newest revision.
    if revision_of(&new_set.object) < max_revision {
        let mut updated = new_set.object.clone();
        updated["metadata"]["annotations"][REVISION] = json!((max_revision + 1).to_string());
        if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        log_failure(
            store.replace(
                rs_type,
                Some(ns),
                name(&new_set.object),
                updated,
                MANAGER,
                Part::Main,
            ),
            "bumping a ReplicaSet revision",
        );
        return;
    }
    if str_at(
        deployment,
        &format!("/metadata/annotations/{}", REVISION.replace('/', "~1")),
    ) != revision_of(&new_set.object).to_string()
    {
        let mut updated = deployment.clone();
        updated["metadata"]["annotations"][REVISION] =
            json!(revision_of(&new_set.object).to_string());
        if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        log_failure(
            store.replace(
                deploy_type,
                Some(ns),
                name(deployment),
                updated,
                MANAGER,
                Part::Main,
            ),
            "writing the Deployment revision",
        );
        return;
    }
    let old: Vec<&Set> = sets
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != new_index)
        .map(|(_, s)| s)
        .collect();
    let mut progressed = false;
    if is_recreate(deployment) {
        let old_running: i64 = old.iter().map(|s| s.pods).sum();
        for set in old.iter().filter(|s| s.replicas > 0) {
            scale(store, rs_type, &set.object, 0, replicas);
            progressed = true;
        }
        if old_running == 0 && new_set.replicas != replicas {
            scale(store, rs_type, &new_set.object, replicas, replicas);
            progressed = true;
        }
    } else {
        let max_surge = surge(deployment, replicas);
        let mut max_unavailable = int_or_percent(
            deployment.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            replicas,
            "25%",
            false,
        );
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let total: i64 = sets.iter().map(|s| s.replicas).sum();
        let mut new_replicas = new_set.replicas;
        if new_replicas < replicas {
            let room = replicas + max_surge - total;
            if room > 0 {
                new_replicas = replicas.min(new_replicas + room);
            }
        } else if new_replicas > replicas {
            new_replicas = replicas;
        }
        if new_replicas != new_set.replicas {
            scale(store, rs_type, &new_set.object, new_replicas, replicas);
            progressed = true;
        }
        // Old ReplicaSets go down only as far as availability allows.
        let min_available = replicas - max_unavailable;
        let all_replicas: i64 = old.iter().map(|s| s.replicas).sum::<i64>() + new_replicas;
        let new_unavailable = (new_replicas - new_set.ready).max(0);
        let mut budget = all_replicas - min_available - new_unavailable;
        let mut old_sorted = old.clone();
        old_sorted.sort_by_key(|s| revision_of(&s.object));
        let mut targets: Vec<i64> = old_sorted.iter().map(|s| s.replicas).collect();
        // First the old pods that are not ready: removing them costs nothing.
        for (set, target) in old_sorted.iter().zip(targets.iter_mut()) {
            if budget <= 0 {
                break;
            }
            let unhealthy = (*target - set.ready).max(0).min(budget);
            *target -= unhealthy;
            budget -= unhealthy;
        }
        let total_ready: i64 = sets.iter().map(|s| s.ready).sum();
        let mut ready_budget = total_ready - min_available;
        for (set, target) in old_sorted.iter().zip(targets.iter_mut()) {
            if ready_budget <= 0 {
                break;
            }
            let down = (*target).min(ready_budget).min(set.ready.min(*target));
            *target -= down;
            ready_budget -= down;
        }
        for (set, target) in old_sorted.iter().zip(targets) {
            if target != set.replicas {
                scale(store, rs_type, &set.object, target, replicas);
                progressed = true;
            }
        }
    }
    write_status(
        store,
        deploy_type,
        deployment,
        &sets,
        Some(new_index),
        progressed,
        replicas,
    );
}

fn is_recreate(deployment: &Value) -> bool {
    str_at(deployment, "/spec/strategy/type") == "Recreate"
}

fn surge(deployment: &Value, replicas: i64) -> i64 {
    int_or_percent(
        deployment.pointer("/spec/strategy/rollingUpdate/maxSurge"),
        replicas,
        "25%",
        true,
    )
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    previous: Option<&Value>,
    progress_moved: bool,
) -> Value {
    let now = now_rfc3339();
    let same_status = previous.is_some_and(|p| str_at(p, "/status") == status);
    let same_reason = previous.is_some_and(|p| str_at(p, "/reason") == reason);
    let transition = if same_status {
        previous
            .map(|p| str_at(p, "/lastTransitionTime").to_owned())
            .unwrap_or_else(|| now.clone())
    } else {
        now.clone()
    };
    let update = if same_status && same_reason && !progress_moved {
        previous
            .map(|p| str_at(p, "/lastUpdateTime").to_owned())
            .unwrap_or_else(|| now.clone())
    } else {
        now
    };
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": transition, "lastUpdateTime": update,
    })
}

fn write_status(
    store: &Store,
    deploy_type: &ResourceType,
    deployment: &Value,
    sets: &[Set],
    new_index: Option<usize>,
    scaled: bool,
    replicas: i64,
) {
    let old_status = deployment.get("status").cloned().unwrap_or(json!({}));
    let pods: i64 = sets.iter().map(|s| s.pods).sum();
    let ready: i64 = sets.iter().map(|s| s.ready).sum();
    let updated = new_index.map(|i| sets[i].pods).unwrap_or(0);
    let updated_ready = new_index.map(|i| sets[i].ready).unwrap_or(0);
    let max_unavailable = int_or_percent(
        deployment.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        replicas,
        "25%",
        false,
    );
    let previous = |t: &str| {
        old_status
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == t))
            .cloned()
    };
    let available = if ready >= replicas - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            previous("Available").as_ref(),
            false,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            previous("Available").as_ref(),
            false,
        )
    };
    let rs_name = new_index
        .map(|i| name(&sets[i].object).to_owned())
        .unwrap_or_default();
    let old_progressing = previous("Progressing");
    let complete = updated == replicas && updated_ready == replicas && pods == replicas;
    let moved = scaled
        || int_at(&old_status, "/updatedReplicas", 0) < updated
        || int_at(&old_status, "/readyReplicas", 0) < ready
        || int_at(&old_status, "/availableReplicas", 0) < ready
        || int_at(&old_status, "/replicas", 0) > pods && updated > 0;
    let deadline = int_at(deployment, "/spec/progressDeadlineSeconds", 600);
    let old_reason = old_progressing
        .as_ref()
        .map(|c| str_at(c, "/reason").to_owned())
        .unwrap_or_default();
    let progressing = if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            old_progressing.as_ref(),
            false,
        )
    } else if moved || old_progressing.is_none() {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
            old_progressing.as_ref(),
            true,
        )
    } else if old_reason == "ProgressDeadlineExceeded" || old_reason == "NewReplicaSetAvailable" {
        old_progressing.clone().unwrap_or(json!({}))
    } else if old_progressing
        .as_ref()
        .is_some_and(|c| seconds_since(str_at(c, "/lastUpdateTime")) > deadline)
    {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            old_progressing.as_ref(),
            false,
        )
    } else {
        old_progressing.clone().unwrap_or(json!({}))
    };
    let mut status = json!({
        "observedGeneration": int_at(deployment, "/metadata/generation", 1),
        "replicas": pods,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [available, progressing],
    });
    if replicas - ready > 0 {
        status["unavailableReplicas"] = json!(replicas - ready);
    }
    if let Some(map) = status.as_object_mut() {
        map.retain(|_, v| v.as_i64() != Some(0));
    }
    if deployment.get("status") == Some(&status) {
        return;
    }
    let mut object = deployment.clone();
    object["status"] = status;
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    log_failure(
        store.replace(
            deploy_type,
            Some(namespace(deployment)),
            name(deployment),
            object,
            MANAGER,
            Part::Status,
        ),
        "writing Deployment status",
    );
}
