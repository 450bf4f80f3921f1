//! Service endpoints from pod readiness (Endpoints and EndpointSlices), and
//! a load-balancer allocator that gives each LoadBalancer Service an
//! ingress address, as a cloud controller would.

use super::*;
use crate::selector::LabelSelector;
use crate::store::Part;

pub fn pass(store: &Store) {
    let (Some(svc_type), Some(pod_type), Some(ep_type), Some(slice_type)) = (
        resource(store, "", "services"),
        resource(store, "", "pods"),
        resource(store, "", "endpoints"),
        resource(store, "discovery.k8s.io", "endpointslices"),
    ) else {
        return;
    };
    let pods = store.all(&pod_type);
    let services = store.all(&svc_type);
    for service in &services {
        if terminating(service) {
            continue;
        }
        allocate_load_balancer(store, &svc_type, service);
        let Some(selector) = service
            .pointer("/spec/selector")
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        else {
            continue;
        };
        let selector = LabelSelector::from_object(&json!({"matchLabels": selector}));
        let publish_not_ready = service
            .pointer("/spec/publishNotReadyAddresses")
            .and_then(Value::as_bool)
            == Some(true);
        let ns = namespace(service);
        let members: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                namespace(p) == ns && selector.matches(p) && p.pointer("/status/podIP").is_some()
            })
            .collect();
        let ports: Vec<Value> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        let mut slice_endpoints = Vec::new();
        for pod in &members {
            let address = json!({
                "ip": str_at(pod, "/status/podIP"),
                "nodeName": str_at(pod, "/spec/nodeName"),
                "targetRef": {"kind": "Pod", "name": name(pod), "namespace": ns, "uid": uid(pod)},
            });
            let is_ready = pod_ready(pod) || (publish_not_ready && !terminating(pod));
            if terminating(pod) && !publish_not_ready {
                // Terminating pods leave Endpoints; slices keep them as not ready.
            } else if is_ready {
                ready.push(address.clone());
            } else {
                not_ready.push(address.clone());
            }
            slice_endpoints.push(json!({
                "addresses": [str_at(pod, "/status/podIP")],
                "conditions": {"ready": is_ready && !terminating(pod), "serving": pod_ready(pod) || publish_not_ready, "terminating": terminating(pod)},
                "nodeName": str_at(pod, "/spec/nodeName"),
                "targetRef": {"kind": "Pod", "name": name(pod), "namespace": ns, "uid": uid(pod)},
            }));
        }
        let resolved_ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let port = resolve_target_port(p, members.first().copied());
                json!({"name": p.get("name").cloned().unwrap_or(json!("")), "port": port,
                    "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))})
            })
            .collect();
        let mut subset = json!({"ports": resolved_ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        let subsets = if ready.is_empty() && not_ready.is_empty() {
            json!([])
        } else {
            json!([subset])
        };
        let svc_ref = json!([{ "apiVersion": "v1", "kind": "Service", "name": name(service), "uid": uid(service), "controller": true, "blockOwnerDeletion": true }]);
        let endpoints = json!({
            "metadata": {"name": name(service), "namespace": ns,
                "labels": service.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "ownerReferences": svc_ref},
            "subsets": subsets,
        });
        upsert(store, &ep_type, ns, name(service), endpoints);
        let mut labels = service
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["kubernetes.io/service-name"] = json!(name(service));
        labels["endpointslice.kubernetes.io/managed-by"] = json!("endpointslice-controller.k8s.io");
        let slice_name = format!("{}-sim", name(service));
        let slice = json!({
            "metadata": {"name": slice_name, "namespace": ns, "labels": labels, "ownerReferences": svc_ref},
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": ports.iter().map(|p| json!({"name": p.get("name").cloned().unwrap_or(json!("")),
                "port": resolve_target_port(p, members.first().copied()),
                "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))})).collect::<Vec<_>>(),
        });
        upsert(store, &slice_type, ns, &slice_name, slice);
    }
}

/// The container port a Service port targets (a number or a named port).
fn resolve_target_port(port: &Value, pod: Option<&Value>) -> Value {
    match port.get("targetPort") {
        Some(Value::Number(n)) => Value::Number(n.clone()),
        Some(Value::String(named)) => {
            let found = pod.and_then(|pod| {
                pod.pointer("/spec/containers")
                    .and_then(Value::as_array)?
                    .iter()
                    .flat_map(|c| {
                        c.get("ports")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(named.as_str()))
                    .and_then(|p| p.get("containerPort").cloned())
            });
            found.unwrap_or_else(|| port.get("port").cloned().unwrap_or(Value::Null))
        }
        _ => port.get("port").cloned().unwrap_or(Value::Null),
    }
}

fn upsert(store: &Store, resource: &ResourceType, ns: &str, object_name: &str, desired: Value) {
    match store.get(resource, Some(ns), object_name) {
        Ok(current) => {
            let mut next = current.clone();
            for key in ["subsets", "endpoints", "ports", "addressType"] {
                if let Some(value) = desired.get(key) {
                    next[key] = value.clone();
                }
            }
            next["metadata"]["labels"] = desired
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            if next != current {
                log_failure(
                    store.replace(
                        resource,
                        Some(ns),
                        object_name,
                        super::scheduler::strip_rv(next),
                        MANAGER,
                        Part::Main,
                    ),
                    "updating endpoints",
                );
            }
        }
        Err(_) => {
            log_failure(
                store.create(resource, Some(ns), desired, MANAGER),
                "creating endpoints",
            );
        }
    }
}

fn allocate_load_balancer(store: &Store, svc_type: &ResourceType, service: &Value) {
    if str_at(service, "/spec/type") != "LoadBalancer"
        || service.pointer("/status/loadBalancer/ingress/0").is_some()
    {
        return;
    }
    let address = service
        .pointer("/spec/loadBalancerIP")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // The uid ends in the store's object counter: unique per Service.
            let serial = u64::from_str_radix(uid(service).rsplit('-').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            match store
                .address_block
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => format!("10.210.{}.{}", (serial / 250) % 250, serial % 250 + 1),
                block => format!("10.210.{block}.{}", serial % 250 + 2),
            }
        });
    let mut object = service.clone();
    object["status"] = json!({"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}});
    log_failure(
        store.replace(
            svc_type,
            Some(namespace(service)),
            name(service),
            super::scheduler::strip_rv(object),
            "service-controller",
            Part::Status,
        ),
        "allocating a load balancer address",
    );
}
