//! The container runtime of the simulated nodes: pods whose images the
//! simulation knows run as real processes in their own network namespace
//! (see `network`), with their volumes, probes, restarts and graceful
//! termination (`pod`); Service names resolve inside pods through a
//! cluster-wide hosts file (`dns`); LoadBalancer Services get a TCP proxy on
//! their ingress address (`load_balancer`). Pods with images it does not
//! know are left to the image-pull simulation (`crate::kubelet`).

pub mod dns;
pub mod env;
pub mod images;
pub mod load_balancer;
pub mod pod;
pub mod probes;
pub mod volumes;

use crate::controllers::{resource, str_at, terminating, uid};
use crate::network::ClusterNetwork;
use crate::store::Store;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the pod workers share.
pub struct Shared {
    pub store: Arc<Store>,
    pub network: Arc<ClusterNetwork>,
    pub hosts_file: PathBuf,
    /// The first restart delay after a container exits (kubelet: 10 s); it
    /// doubles on each further exit.
    pub restart_backoff: Duration,
    /// Process groups still running, killed if the cluster goes first.
    processes: Mutex<BTreeSet<u32>>,
    /// Pod workers by pod uid.
    workers: Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn remember_process(&self, pid: u32) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
    }

    fn forget_process(&self, pid: u32) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }
}

/// The running runtime; dropping it kills every container and removes the
/// cluster's namespaces and bridge.
pub struct Runtime {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Runtime {
    pub fn start(
        store: Arc<Store>,
        network: Arc<ClusterNetwork>,
        images: Vec<String>,
        restart_backoff: Duration,
    ) -> crate::Result<Self> {
        let hosts_file = network.state_dir.join("hosts");
        std::fs::write(&hosts_file, dns::HEADER).map_err(|e| {
            crate::SimError::Runtime(format!("cannot write {}: {e}", hosts_file.display()))
        })?;
        let shared = Arc::new(Shared {
            store,
            network,
            hosts_file,
            restart_backoff,
            processes: Mutex::new(BTreeSet::new()),
            workers: Mutex::new(BTreeMap::new()),
        });
        let task = tokio::spawn(run(shared.clone(), images));
        Ok(Self { shared, task })
    }

    /// The output of a pod's container so far (for a failing test's message).
    pub fn logs(&self, pod_uid: &str, container: &str) -> String {
        let path = pod::PodWorker::log_path(
            &self.shared.network.state_dir.join("pods").join(pod_uid),
            container,
        );
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.task.abort();
        for worker in self
            .shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            worker.abort();
        }
        let pids: Vec<u32> = self
            .shared
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        for pid in pids {
            pod::signal("KILL", &format!("-{pid}"));
        }
    }
}

async fn run(shared: Arc<Shared>, pullable: Vec<String>) {
    let images_dir = shared.network.state_dir.join("images");
    let mut changes = shared.store.subscribe();
    let mut balancers = load_balancer::Balancers::default();
    loop {
        tokio::select! {
            received = changes.recv() => {
                if matches!(received, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let mut workers = shared.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.retain(|_, task| !task.is_finished());
        let Some(pod_type) = resource(&shared.store, "", "pods") else {
            continue;
        };
        for pod in shared.store.all(&pod_type) {
            if pod.pointer("/spec/nodeName").is_none() || workers.contains_key(uid(&pod)) {
                continue;
            }
            if terminating(&pod) {
                // Nothing of it runs here (an image that never pulled).
                shared.store.remove_terminated_pod(
                    &pod_type,
                    crate::controllers::namespace(&pod),
                    crate::controllers::name(&pod),
                );
                continue;
            }
            let images: Option<Vec<images::Image>> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let image = str_at(c, "/image");
                    if !pullable.iter().any(|p| p == image) {
                        return None;
                    }
                    match images::resolve(image, &images_dir) {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::error!(%error, image, "image cannot run");
                            None
                        }
                    }
                })
                .collect();
            let Some(images) = images else {
                continue;
            };
            match pod::PodWorker::create(shared.clone(), &pod, images) {
                Ok(worker) => {
                    workers.insert(uid(&pod).to_owned(), tokio::spawn(worker.run()));
                }
                Err(error) => {
                    tracing::warn!(%error, pod = %crate::controllers::name(&pod), "pod sandbox not created; retrying");
                }
            }
        }
        drop(workers);
        dns::write_hosts(&shared);
        balancers.sync(&shared);
    }
}
