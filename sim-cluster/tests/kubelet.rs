//! The simulated kubelet on its own (no operator): restarts with back-off,
//! probes, Secret volumes that follow their Secret, and SIGKILL after the
//! grace period. Pods use the Redis image, whose container has a shell.

mod support;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{eventually, init_tracing};
use videochat_sim_cluster::{SimCluster, SimClusterOptions};

const LIMIT: Duration = Duration::from_secs(60);

async fn running_cluster() -> SimCluster {
    init_tracing();
    SimCluster::start(SimClusterOptions {
        run_pods: true,
        restart_backoff: Duration::from_secs(1),
        ..SimClusterOptions::default()
    })
    .await
    .expect("the simulated cluster with a kubelet starts (root and iproute2 needed)")
}

/// A pod of the Redis image running `script` under sh.
fn shell_pod(name: &str, script: &str, extra: Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{"name": "main", "image": "redis:7.4-alpine", "command": ["sh", "-c", script]}],
        },
    });
    merge(&mut pod["spec"], &extra);
    serde_json::from_value(pod).expect("pod")
}

fn merge(target: &mut Value, extra: &Value) {
    if let (Some(target), Some(extra)) = (target.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            match (target.get_mut(key), value) {
                (Some(old), Value::Object(_)) if old.is_object() => merge(old, value),
                _ => {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

async fn status(client: &Client, name: &str) -> Option<Value> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods.get(name).await.ok()?;
    serde_json::to_value(pod.status?).ok()
}

fn ready(status: &Value) -> bool {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_keeps_exiting_is_restarted_with_back_off_and_shows_crash_loop() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &shell_pod("crasher", "exit 3", json!({})),
    )
    .await
    .expect("create");
    let container = eventually("two restarts and CrashLoopBackOff", LIMIT, || async {
        let status = status(&client, "crasher").await?;
        let container = status["containerStatuses"][0].clone();
        (container["restartCount"].as_u64()? >= 2
            && container["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(container)
    })
    .await;
    assert_eq!(
        container["lastState"]["terminated"]["exitCode"], 3,
        "the exit code is kept: {container}"
    );
    assert_eq!(container["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(container["ready"], false);
    assert!(
        container["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("back-off")),
        "{container}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container_and_readiness_follows_a_secret_volume() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = |value: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "token", "namespace": "default"},
            "stringData": {"token": value},
        }))
        .expect("secret")
    };
    secrets
        .create(&PostParams::default(), &secret("v1"))
        .await
        .expect("secret");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Ready only once the mounted file (at its real path) says v2; live
    // while nothing fails the exec probe.
    let probes = json!({
        "containers": [{
            "name": "main",
            "image": "redis:7.4-alpine",
            "command": ["sh", "-c", "sleep 3600"],
            "volumeMounts": [{"name": "token", "mountPath": "/mnt", "readOnly": true}],
            "readinessProbe": {"exec": {"command": ["sh", "-c", "grep -q v2 /mnt/token"]}, "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"tcpSocket": {"port": 6390}, "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2},
        }],
        "volumes": [{"name": "token", "secret": {"secretName": "token"}}],
        "terminationGracePeriodSeconds": 1,
    });
    pods.create(&PostParams::default(), &shell_pod("probed", "", probes))
        .await
        .expect("create");
    // Nothing listens on 6390: the liveness probe fails and the kubelet
    // restarts the container, saying why.
    let container = eventually("a liveness restart", LIMIT, || async {
        let status = status(&client, "probed").await?;
        let container = status["containerStatuses"][0].clone();
        (container["restartCount"].as_u64()? >= 1).then_some(container)
    })
    .await;
    assert_eq!(
        container["lastState"]["terminated"]["message"], "Liveness probe failed",
        "{container}"
    );
    let status_now = status(&client, "probed").await.expect("status");
    assert!(!ready(&status_now), "not ready while the file says v1");

    secrets
        .replace("token", &PostParams::default(), &secret("v2"))
        .await
        .expect("update the secret");
    eventually("ready once the volume shows v2", LIMIT, || async {
        let status = status(&client, "probed").await?;
        ready(&status).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = shell_pod(
        "stubborn",
        "trap '' TERM; while true; do sleep 0.2; done",
        json!({"terminationGracePeriodSeconds": 3}),
    );
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    eventually("running", LIMIT, || async {
        let status = status(&client, "stubborn").await?;
        (status["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    })
    .await;
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = Instant::now();
    // Still there, terminating, while the grace period runs.
    let terminating = pods.get("stubborn").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    eventually("the pod is gone", LIMIT, || async {
        pods.get_opt("stubborn").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        deleted.elapsed() >= Duration::from_secs(2),
        "SIGTERM was ignored, so the pod stays until SIGKILL at the end of its 3 s grace ({:?})",
        deleted.elapsed()
    );
}
