//! The simulated cloud's load balancers: for each TCP port of a
//! LoadBalancer Service, a proxy on the host listening on the Service's
//! ingress address (added to the cluster bridge) that sends each new
//! connection to the next ready endpoint, as a cloud load balancer in
//! front of kube-proxy would. UDP ports are not balanced (see
//! docs/testing.md).

use super::Shared;
use crate::controllers::{name, namespace, resource, str_at};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct Balancers {
    listeners: BTreeMap<(String, u16), tokio::task::JoinHandle<()>>,
}

impl Drop for Balancers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// Ready `ip:port` endpoints of the Service port named `port_name`.
fn backends(shared: &Shared, ns: &str, service: &str, port_name: &str) -> Vec<String> {
    let Some(endpoints_type) = resource(&shared.store, "", "endpoints") else {
        return Vec::new();
    };
    let Ok(endpoints) = shared.store.get(&endpoints_type, Some(ns), service) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for subset in endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let port = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| str_at(p, "/name") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64));
        let Some(port) = port else {
            continue;
        };
        for address in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            found.push(format!("{}:{port}", str_at(address, "/ip")));
        }
    }
    found
}

impl Balancers {
    pub fn sync(&mut self, shared: &Arc<Shared>) {
        let Some(svc_type) = resource(&shared.store, "", "services") else {
            return;
        };
        let prefix = format!("10.210.{}.", shared.network.index);
        let mut wanted = BTreeMap::new();
        for service in shared.store.all(&svc_type) {
            if str_at(&service, "/spec/type") != "LoadBalancer" {
                continue;
            }
            let ip = str_at(&service, "/status/loadBalancer/ingress/0/ip");
            if !ip.starts_with(&prefix) {
                continue;
            }
            for port in service
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let protocol = port
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP");
                let Some(number) = port.get("port").and_then(Value::as_u64) else {
                    continue;
                };
                if protocol != "TCP" {
                    continue;
                }
                wanted.insert(
                    (ip.to_owned(), number as u16),
                    (
                        namespace(&service).to_owned(),
                        name(&service).to_owned(),
                        str_at(port, "/name").to_owned(),
                    ),
                );
            }
        }
        self.listeners.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (ns, service, port_name)) in wanted {
            if self.listeners.contains_key(&key) {
                continue;
            }
            if let Err(error) = shared.network.add_load_balancer(&key.0) {
                tracing::warn!(%error, "cannot add a load-balancer address");
                continue;
            }
            let std_listener = match std::net::TcpListener::bind((key.0.as_str(), key.1)) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, address = %key.0, port = key.1, "cannot listen for a load balancer");
                    continue;
                }
            };
            let _ = std_listener.set_nonblocking(true);
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                continue;
            };
            let shared = shared.clone();
            let next = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let targets = backends(&shared, &ns, &service, &port_name);
                    if targets.is_empty() {
                        // No ready endpoint: the connection is refused.
                        continue;
                    }
                    let target =
                        targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()].clone();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
            self.listeners.insert(key, task);
        }
    }
}
