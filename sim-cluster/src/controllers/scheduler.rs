//! Scheduler: binds each pending pod to the node with the fewest pods among
//! those that match its nodeSelector and have its host ports free; an
//! unschedulable pod gets PodScheduled=False with the reason.

use super::*;
use crate::selector::LabelSelector;
use crate::store::Part;
use std::collections::BTreeSet;

/// Host ports a pod takes on its node (hostNetwork takes every container port).
fn host_ports(pod: &Value) -> BTreeSet<(String, i64)> {
    let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
    let mut ports = BTreeSet::new();
    for container in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for port in container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_owned();
            let host = port.get("hostPort").and_then(Value::as_i64).or_else(|| {
                host_network
                    .then(|| port.get("containerPort").and_then(Value::as_i64))
                    .flatten()
            });
            if let Some(host) = host {
                ports.insert((protocol, host));
            }
        }
    }
    ports
}

pub fn pass(store: &Store) {
    let (Some(pod_type), Some(node_type)) =
        (resource(store, "", "pods"), resource(store, "", "nodes"))
    else {
        return;
    };
    let nodes = store.all(&node_type);
    let mut pods = store.all(&pod_type);
    for index in 0..pods.len() {
        let pod = pods[index].clone();
        if pod.pointer("/spec/nodeName").is_some() || terminating(&pod) {
            continue;
        }
        let wanted = host_ports(&pod);
        let selector = pod
            .pointer("/spec/nodeSelector")
            .cloned()
            .unwrap_or(json!({}));
        let selector = LabelSelector::from_object(&json!({"matchLabels": selector}));
        let mut candidates: Vec<(usize, &str)> = Vec::new();
        let mut port_refusals = 0;
        for node in &nodes {
            if !selector.matches(node) {
                continue;
            }
            let on_node: Vec<&Value> = pods
                .iter()
                .filter(|p| str_at(p, "/spec/nodeName") == name(node))
                .collect();
            let taken: BTreeSet<(String, i64)> =
                on_node.iter().flat_map(|p| host_ports(p)).collect();
            if !wanted.is_disjoint(&taken) {
                port_refusals += 1;
                continue;
            }
            candidates.push((on_node.len(), name(node)));
        }
        candidates.sort();
        match candidates.first() {
            Some((_, node)) => {
                let node = (*node).to_owned();
                let patch = json!({"spec": {"nodeName": node}});
                if let Some(bound) = log_failure(
                    store.merge_patch(
                        &pod_type,
                        Some(namespace(&pod)),
                        name(&pod),
                        &patch,
                        "default-scheduler",
                        Part::Main,
                    ),
                    "binding a pod",
                ) {
                    let mut status = bound.clone();
                    set_condition(&mut status, "PodScheduled", "True", "", "");
                    log_failure(
                        store.replace(
                            &pod_type,
                            Some(namespace(&pod)),
                            name(&pod),
                            strip_rv(status),
                            "default-scheduler",
                            Part::Status,
                        ),
                        "writing PodScheduled",
                    );
                    pods[index] = bound;
                }
            }
            None => {
                let message = format!(
                    "0/{} nodes are available: {port_refusals} node(s) didn't have free ports for the requested pod ports, {} node(s) didn't match Pod's node affinity/selector.",
                    nodes.len(),
                    nodes.len() - port_refusals
                );
                let mut status = pod.clone();
                set_condition(
                    &mut status,
                    "PodScheduled",
                    "False",
                    "Unschedulable",
                    &message,
                );
                if status.get("status") != pod.get("status") {
                    log_failure(
                        store.replace(
                            &pod_type,
                            Some(namespace(&pod)),
                            name(&pod),
                            strip_rv(status),
                            "default-scheduler",
                            Part::Status,
                        ),
                        "writing Unschedulable",
                    );
                }
            }
        }
    }
}

pub fn strip_rv(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    object
}

/// Sets a pod condition, keeping lastTransitionTime when the status holds.
pub fn set_condition(pod: &mut Value, type_: &str, status: &str, reason: &str, message: &str) {
    let mut conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let previous = conditions.iter().position(|c| str_at(c, "/type") == type_);
    let transition = previous
        .map(|i| &conditions[i])
        .filter(|c| str_at(c, "/status") == status)
        .map(|c| str_at(c, "/lastTransitionTime").to_owned())
        .unwrap_or_else(crate::store::now_rfc3339);
    let mut condition = json!({"type": type_, "status": status, "lastTransitionTime": transition});
    if !reason.is_empty() {
        condition["reason"] = json!(reason);
        condition["message"] = json!(message);
    }
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    pod["status"]["conditions"] = json!(conditions);
}
