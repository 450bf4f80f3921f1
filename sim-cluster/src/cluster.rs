//! Starting a simulated cluster and talking to it.

use crate::admission::CustomSchema;
use crate::error::{Result, SimError};
use crate::network::ClusterNetwork;
use crate::resources::{self, ResourceType};
use crate::server::{self, ApiState, RecordedRequest};
use crate::store::{Part, Store};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What to start.
#[derive(Clone, Debug)]
pub struct SimClusterOptions {
    /// CRD files served as custom resources (schema and CEL enforced).
    pub crds: Vec<PathBuf>,
    /// Run the Deployment, ReplicaSet, StatefulSet and endpoints controllers.
    pub controllers: bool,
    /// Names of the simulated nodes.
    pub nodes: Vec<String>,
    /// Images that pull; any other fails with ErrImagePull.
    pub images: Vec<String>,
    /// Run pods as real processes in network namespaces (needs root and
    /// iproute2); without it pods are scheduled but never start.
    pub run_pods: bool,
    /// First delay before restarting a container that exited (doubles
    /// after each further exit, as a kubelet's back-off).
    pub restart_backoff: std::time::Duration,
}

impl Default for SimClusterOptions {
    fn default() -> Self {
        Self {
            crds: vec![workspace_root().join("crds/videochatcluster.yaml")],
            controllers: true,
            nodes: vec!["node-a".into(), "node-b".into()],
            images: crate::kubelet::default_images(),
            run_pods: false,
            restart_backoff: std::time::Duration::from_secs(10),
        }
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A running simulated cluster; stops when dropped.
pub struct SimCluster {
    pub address: SocketAddr,
    pub store: Arc<Store>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The container runtime (with `run_pods`); dropped before the network.
    runtime: Option<crate::runtime::Runtime>,
    network: Option<Arc<ClusterNetwork>>,
}

fn read_crd(path: &PathBuf) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Crd {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|e| SimError::CrdParse(format!("{}: {e}", path.display())))
}

impl SimCluster {
    pub async fn start(options: SimClusterOptions) -> Result<Self> {
        let mut types = resources::builtin_types();
        let mut custom = Vec::new();
        let mut crd_objects = Vec::new();
        for path in &options.crds {
            let crd = read_crd(path)?;
            let resource = resources::from_crd(&crd).ok_or_else(|| {
                SimError::CrdParse(format!("{}: no served version", path.display()))
            })?;
            let schema = CustomSchema::from_crd(&crd, resource.clone()).ok_or_else(|| {
                SimError::CrdParse(format!("{}: no openAPIV3Schema", path.display()))
            })?;
            types.push(resource);
            custom.push(schema);
            crd_objects.push(crd);
        }
        let store = Store::new(types, custom);
        let network = if options.run_pods {
            let network = Arc::new(ClusterNetwork::create(&options.nodes)?);
            store
                .address_block
                .store(network.index, std::sync::atomic::Ordering::Relaxed);
            store
                .graceful_pods
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Some(network)
        } else {
            None
        };
        let crd_type = store
            .resource("apiextensions.k8s.io", "customresourcedefinitions")
            .cloned()
            .ok_or_else(|| SimError::CrdParse("no CRD type".into()))?;
        for crd in crd_objects {
            store.create(&crd_type, None, crd, "kubectl")?;
        }
        let node_type = store
            .resource("", "nodes")
            .cloned()
            .ok_or_else(|| SimError::CrdParse("no Node type".into()))?;
        for (index, node) in options.nodes.iter().enumerate() {
            let (internal, external) = network
                .as_ref()
                .and_then(|n| n.node(node))
                .map(|n| (n.address.clone(), n.external_address.clone()))
                .unwrap_or_else(|| {
                    let address = format!("10.200.0.{}", index + 2);
                    (address.clone(), address)
                });
            let object = node_object(node, &internal, &external);
            store.create(&node_type, None, object.clone(), "sim-cluster")?;
            store.replace(&node_type, None, node, object, "sim-cluster", Part::Status)?;
        }
        let namespace_type = store
            .resource("", "namespaces")
            .cloned()
            .ok_or_else(|| SimError::CrdParse("no Namespace type".into()))?;
        store.create(
            &namespace_type,
            None,
            serde_json::json!({"metadata": {"name": "default"}}),
            "sim-cluster",
        )?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (address, server_task) = server::serve(ApiState {
            store: store.clone(),
            requests: requests.clone(),
        })
        .await?;
        let mut tasks = vec![server_task, crate::gc::spawn(store.clone())];
        if options.controllers {
            tasks.extend(crate::control_loop::spawn(
                store.clone(),
                options.images.clone(),
            ));
        }
        let runtime = match &network {
            Some(network) => Some(crate::runtime::Runtime::start(
                store.clone(),
                network.clone(),
                options.images.clone(),
                options.restart_backoff,
            )?),
            None => None,
        };
        tracing::info!(%address, "simulated cluster API serving");
        Ok(Self {
            address,
            store,
            requests,
            tasks,
            runtime,
            network,
        })
    }

    /// A client as an operator or kubectl builds it from a kubeconfig.
    pub fn client(&self) -> Result<kube::Client> {
        let url: http::Uri = format!("http://{}", self.address)
            .parse()
            .map_err(|e| SimError::bad_request(format!("bad API address: {e}")))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        Ok(kube::Client::try_from(config)?)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The output of a pod's container so far (with `run_pods`).
    pub fn container_log(&self, pod_uid: &str, container: &str) -> String {
        self.runtime
            .as_ref()
            .map(|r| r.logs(pod_uid, container))
            .unwrap_or_default()
    }

    /// The namespace of external clients (with `run_pods`): reaches only
    /// the nodes' external addresses and the load balancers, as a user
    /// outside the cluster does. Run a client there with
    /// `ip netns exec NAMESPACE ...`.
    pub fn external_client(&self) -> Option<&crate::network::ExternalClientNetwork> {
        self.network.as_ref()?.external_client.as_ref()
    }

    pub fn resource(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.store.resource(group, plural).cloned()
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Containers first, then the namespaces they ran in.
        self.runtime.take();
        if let Some(network) = self.network.take() {
            network.remove();
        }
    }
}

fn node_object(name: &str, address: &str, external: &str) -> Value {
    serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "ExternalIP", "address": external},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}
