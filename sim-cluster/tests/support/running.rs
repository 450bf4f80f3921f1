//! Set-up shared by the scenarios with running pods (running.rs,
//! browsers.rs): a cluster whose kubelet runs the real binaries, `kubectl
//! apply` of a VideoChatCluster, and waiting for it to report Ready.

use super::init_tracing;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use videochat_operator::VideoChatCluster;
use videochat_sim_cluster::{SimCluster, SimClusterOptions};

pub const NAMESPACE: &str = "videochat";
pub const CLUSTER: &str = "demo";
/// Bound on reaching Ready from nothing on two busy cores (processes
/// start, probes pass every 5 s, signaling waits for both databases).
pub const READY_LIMIT: Duration = Duration::from_secs(120);

pub async fn running_cluster() -> SimCluster {
    init_tracing();
    let bin_dir = videochat_sim_cluster::runtime::images::cargo_bin_dir();
    // Signaling and TURN pods mount an emptyDir at /tmp, which hides the
    // host's /tmp from them (docs/testing.md).
    assert!(
        !bin_dir.starts_with("/tmp"),
        "{} is under /tmp, which the pods' own /tmp hides: use a checkout (or CARGO_TARGET_DIR) outside /tmp",
        bin_dir.display()
    );
    for binary in ["videochat-signaling", "videochat-turn"] {
        assert!(
            bin_dir.join(binary).is_file(),
            "{} is missing: run `cargo build -p videochat-signaling -p videochat-turn` first",
            bin_dir.join(binary).display()
        );
    }
    SimCluster::start(SimClusterOptions {
        run_pods: true,
        restart_backoff: Duration::from_secs(1),
        ..SimClusterOptions::default()
    })
    .await
    .expect("the simulated cluster with a kubelet starts (root and iproute2 needed)")
}

/// `kubectl apply --server-side` of the VideoChatCluster with `spec`.
pub async fn kubectl_apply(client: &Client, spec: Value) -> Result<VideoChatCluster, kube::Error> {
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let object = json!({
        "apiVersion": "videochat.dev/v1alpha1",
        "kind": "VideoChatCluster",
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
        "spec": spec,
    });
    clusters
        .patch(
            CLUSTER,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(object),
        )
        .await
}

/// [`kubectl_apply`] that must be accepted.
pub async fn apply(client: &Client, spec: Value) -> VideoChatCluster {
    kubectl_apply(client, spec).await.expect("kubectl apply")
}

/// A status condition of the resource, as JSON (what `kubectl get -o yaml` shows).
pub fn condition(cluster: &VideoChatCluster, type_: &str) -> Option<Value> {
    let status = serde_json::to_value(cluster.status.as_ref()?).ok()?;
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Every pod with its phase, readiness and container states, for messages.
pub async fn pod_summary(sim: &SimCluster, client: &Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut lines = Vec::new();
    for pod in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let status = pod.status.clone().unwrap_or_default();
        let containers = serde_json::to_string(&status.container_statuses).unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut logs = String::new();
        for container in pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
        {
            let log = sim.container_log(&uid, &container.name);
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            logs.push_str(&format!("\n    {} log tail: {:?}", container.name, tail));
        }
        lines.push(format!(
            "{} on {:?} ip {:?}: {:?} {containers}{logs}",
            pod.metadata.name.unwrap_or_default(),
            pod.spec.and_then(|s| s.node_name),
            status.pod_ip,
            status.phase,
        ));
    }
    lines.join("\n")
}

/// Waits until the cluster reports Ready with its endpoints; the time it took.
pub async fn wait_ready(
    sim: &SimCluster,
    client: &Client,
    limit: Duration,
) -> (VideoChatCluster, Duration) {
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    loop {
        if let Ok(cluster) = clusters.get(CLUSTER).await {
            let ready = condition(&cluster, "Ready").is_some_and(|c| c["status"] == "True");
            let endpoints = cluster
                .status
                .as_ref()
                .map(|s| s.endpoints.clone())
                .unwrap_or_default();
            let current = cluster.status.as_ref().and_then(|s| s.observed_generation)
                == cluster.metadata.generation;
            if ready
                && current
                && endpoints.signaling_url.is_some()
                && !endpoints.turn_uris.is_empty()
            {
                return (cluster, started.elapsed());
            }
        }
        if started.elapsed() > limit {
            let cluster = clusters.get(CLUSTER).await.ok();
            panic!(
                "not Ready within {limit:?}: status {}\npods:\n{}",
                serde_json::to_string_pretty(&cluster.and_then(|c| c.status)).unwrap_or_default(),
                pod_summary(sim, client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The nodes' external addresses: where the published relays must be.
pub async fn node_external_addresses(client: &Client) -> BTreeSet<String> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .expect("nodes")
        .items
        .iter()
        .flat_map(|n| {
            n.status
                .clone()
                .unwrap_or_default()
                .addresses
                .unwrap_or_default()
        })
        .filter(|a| a.type_ == "ExternalIP")
        .map(|a| a.address)
        .collect()
}
