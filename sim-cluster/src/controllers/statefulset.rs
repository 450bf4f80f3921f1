//! StatefulSet controller: pods `<name>-<ordinal>` created in order, each
//! after the one before is Ready (OrderedReady) or all at once (Parallel);
//! a PersistentVolumeClaim per volumeClaimTemplate and ordinal, kept when
//! pods or the set go; rolling updates from the highest ordinal, one pod at
//! a time; ControllerRevisions for each template.

use super::*;
use crate::store::{Part, Propagation};

const REVISION_LABEL: &str = "controller-revision-hash";

pub fn pass(store: &Store) {
    let (Some(sts_type), Some(pod_type), Some(pvc_type), Some(cr_type)) = (
        resource(store, "apps", "statefulsets"),
        resource(store, "", "pods"),
        resource(store, "", "persistentvolumeclaims"),
        resource(store, "apps", "controllerrevisions"),
    ) else {
        return;
    };
    let pods = store.all(&pod_type);
    for set in store.all(&sts_type) {
        if terminating(&set) {
            continue;
        }
        reconcile(
            store, &sts_type, &pod_type, &pvc_type, &cr_type, &set, &pods,
        );
    }
}

fn ordinal(set: &Value, pod: &Value) -> Option<i64> {
    name(pod)
        .strip_prefix(&format!("{}-", name(set)))
        .and_then(|o| o.parse().ok())
}

fn reconcile(
    store: &Store,
    sts_type: &ResourceType,
    pod_type: &ResourceType,
    pvc_type: &ResourceType,
    cr_type: &ResourceType,
    set: &Value,
    pods: &[Value],
) {
    let ns = namespace(set);
    let replicas = int_at(set, "/spec/replicas", 1);
    let template = set.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let revision = format!("{}-{}", name(set), template_hash(&template));
    let parallel = str_at(set, "/spec/podManagementPolicy") == "Parallel";
    if store.get(cr_type, Some(ns), &revision).is_err() {
        let existing = store
            .all(cr_type)
            .iter()
            .filter(|c| controller_uid(c) == Some(uid(set)))
            .map(|c| int_at(c, "/revision", 0))
            .max()
            .unwrap_or(0);
        let revision_object = json!({
            "metadata": {
                "name": revision, "namespace": ns,
                "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "ownerReferences": [controller_ref(set, sts_type)],
            },
            "data": {"spec": {"template": template}},
            "revision": existing + 1,
        });
        log_failure(
            store.create(cr_type, Some(ns), revision_object, MANAGER),
            "creating a ControllerRevision",
        );
    }
    let owned: Vec<&Value> = pods
        .iter()
        .filter(|p| controller_uid(p) == Some(uid(set)))
        .collect();
    let by_ordinal = |i: i64| owned.iter().find(|p| ordinal(set, p) == Some(i)).copied();
    // Claims first: a pod never starts without its volume.
    let claim_templates = set
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for i in 0..replicas {
        for claim in &claim_templates {
            let claim_name = format!("{}-{}-{i}", name(claim), name(set));
            if store.get(pvc_type, Some(ns), &claim_name).is_ok() {
                continue;
            }
            let mut object = claim.clone();
            object["metadata"]["name"] = json!(claim_name);
            object["metadata"]["namespace"] = json!(ns);
            let mut labels = object
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            if let Some(match_labels) = set
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
            {
                for (k, v) in match_labels {
                    labels[k] = v.clone();
                }
            }
            object["metadata"]["labels"] = labels;
            if let Some(created) = log_failure(
                store.create(pvc_type, Some(ns), object, MANAGER),
                "creating a PVC",
            ) {
                let mut bound = created;
                bound["status"] = json!({"phase": "Bound", "accessModes": bound.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
                    "capacity": {"storage": bound.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))}});
                log_failure(
                    store.replace(
                        pvc_type,
                        Some(ns),
                        &claim_name,
                        bound,
                        MANAGER,
                        Part::Status,
                    ),
                    "binding a PVC",
                );
            }
        }
    }
    let mut blocked = false;
    for i in 0..replicas {
        match by_ordinal(i) {
            None => {
                if blocked {
                    break;
                }
                let pod = pod_for(set, sts_type, &template, &claim_templates, i, &revision);
                log_failure(
                    store.create(pod_type, Some(ns), pod, MANAGER),
                    "creating a StatefulSet pod",
                );
                if !parallel {
                    blocked = true;
                }
            }
            Some(pod) => {
                if !parallel && !pod_ready(pod) {
                    blocked = true;
                }
            }
        }
    }
    let all_ready = (0..replicas).all(|i| by_ordinal(i).is_some_and(pod_ready));
    // Scale down from the highest ordinal, one at a time.
    let mut extra: Vec<&Value> = owned
        .iter()
        .filter(|p| ordinal(set, p).is_some_and(|o| o >= replicas) && !terminating(p))
        .copied()
        .collect();
    extra.sort_by_key(|p| std::cmp::Reverse(ordinal(set, p)));
    if let Some(pod) = extra.first()
        && (all_ready || parallel)
    {
        log_failure(
            store.delete(pod_type, Some(ns), name(pod), Propagation::Background, None),
            "scaling a StatefulSet down",
        );
    } else if all_ready && extra.is_empty() && !owned.iter().any(|p| terminating(p)) {
        let partition = int_at(set, "/spec/updateStrategy/rollingUpdate/partition", 0);
        let on_delete = str_at(set, "/spec/updateStrategy/type") == "OnDelete";
        let stale = (partition..replicas)
            .rev()
            .filter_map(by_ordinal)
            .find(|p| str_at(p, &format!("/metadata/labels/{REVISION_LABEL}")) != revision);
        if let Some(pod) = stale
            && !on_delete
        {
            log_failure(
                store.delete(pod_type, Some(ns), name(pod), Propagation::Background, None),
                "updating a StatefulSet pod",
            );
        }
    }
    let live: Vec<&&Value> = owned.iter().filter(|p| !terminating(p)).collect();
    let ready = live.iter().filter(|p| pod_ready(p)).count() as i64;
    let updated = live
        .iter()
        .filter(|p| str_at(p, &format!("/metadata/labels/{REVISION_LABEL}")) == revision)
        .count() as i64;
    let current_revision = if updated == live.len() as i64 {
        revision.clone()
    } else {
        set.pointer("/status/currentRevision")
            .and_then(Value::as_str)
            .unwrap_or(&revision)
            .to_owned()
    };
    let mut status = json!({
        "observedGeneration": int_at(set, "/metadata/generation", 1),
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": if current_revision == revision { updated } else { live.len() as i64 - updated },
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    if let Some(map) = status.as_object_mut() {
        map.retain(|k, v| v.as_i64() != Some(0) || k == "collisionCount");
    }
    if set.get("status") != Some(&status) {
        let mut object = set.clone();
        object["status"] = status;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        log_failure(
            store.replace(sts_type, Some(ns), name(set), object, MANAGER, Part::Status),
            "writing StatefulSet status",
        );
    }
}

fn pod_for(
    set: &Value,
    sts_type: &ResourceType,
    template: &Value,
    claims: &[Value],
    i: i64,
    revision: &str,
) -> Value {
    let pod_name = format!("{}-{i}", name(set));
    let mut pod = super::replicaset::pod_from_template(set, sts_type, &pod_name);
    let _ = template;
    pod["metadata"]["labels"][REVISION_LABEL] = json!(revision);
    pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
    pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(i.to_string());
    pod["spec"]["hostname"] = json!(pod_name);
    if let Some(service) = set.pointer("/spec/serviceName").and_then(Value::as_str) {
        pod["spec"]["subdomain"] = json!(service);
    }
    let mut volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for claim in claims {
        let claim_name = name(claim);
        volumes.retain(|v| name_field(v) != claim_name);
        volumes.push(json!({"name": claim_name, "persistentVolumeClaim": {"claimName": format!("{claim_name}-{}-{i}", name(set))}}));
    }
    if !volumes.is_empty() {
        pod["spec"]["volumes"] = json!(volumes);
    }
    pod
}

fn name_field(value: &Value) -> &str {
    value
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}
