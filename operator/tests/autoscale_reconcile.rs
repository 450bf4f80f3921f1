//! A drain-aware scale-down end to end: the controller reads each TURN
//! pod's load from a real relay's `/metrics`, asks the least-loaded ones to
//! drain with the cluster's admin token (real `POST /drain`), marks them in
//! the API (draining annotation, pod-deletion-cost) and only then lowers
//! the Deployment's replicas. A drain that is refused stops the scale-down.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use support::*;
use videochat_operator::Error;
use videochat_operator::VideoChatCluster;
use videochat_operator::io::controller::{self, Context};
use videochat_operator::io::pod_admin::{HttpPodAdmin, PodAdmin, PodTarget};
use videochat_operator::metrics::Metrics;
use videochat_operator::testing::ApiDouble;
use videochat_turn::{Relay, RelayConfig};

const NS: &str = "videochat";
const PODS: [&str; 3] = ["demo-turn-a", "demo-turn-b", "demo-turn-c"];

/// Real HTTP to the relays; only the address comes from a table, since the
/// relays listen on loopback ports instead of pod IPs.
struct LoopbackPods {
    http: HttpPodAdmin,
    addresses: BTreeMap<String, String>,
}

impl LoopbackPods {
    fn target(&self, pod: &PodTarget) -> PodTarget {
        let mut target = pod.clone();
        if let Some(address) = self.addresses.get(&pod.name) {
            target.address.clone_from(address);
        }
        target
    }
}

impl PodAdmin for LoopbackPods {
    fn scrape_load(&self, pod: &PodTarget) -> BoxFuture<'_, Result<f64, Error>> {
        let target = self.target(pod);
        Box::pin(async move { self.http.scrape_load(&target).await })
    }
    fn drain(&self, pod: &PodTarget) -> BoxFuture<'_, Result<(), Error>> {
        let target = self.target(pod);
        Box::pin(async move { self.http.drain(&target).await })
    }
}

fn stored(double: &ApiDouble, api_version: &str, kind: &str, name: &str) -> Value {
    double
        .get(api_version, kind, NS, name)
        .unwrap_or_else(|| panic!("{kind}/{name} stored"))
}

fn stored_cluster(double: &ApiDouble) -> Arc<VideoChatCluster> {
    Arc::new(
        serde_json::from_value(stored(
            double,
            "videochat.dev/v1alpha1",
            "VideoChatCluster",
            "demo",
        ))
        .expect("cluster parses"),
    )
}

/// A cluster with TURN autoscaling on (scale-down without a window), its
/// children created by a first reconcile, the TURN Deployment at 3 ready
/// replicas with 3 ready pods.
async fn scaled_out_cluster() -> (ApiDouble, String) {
    let mut cluster = serde_json::to_value(sample("minimal")).expect("json");
    cluster["metadata"].as_object_mut().map(|m| m.remove("uid"));
    cluster["spec"]["autoscaling"] = json!({
        "enabled": true,
        "scaleDownStabilizationSeconds": 0,
        "drainGraceSeconds": 600,
        "turn": {"minReplicas": 1, "maxReplicas": 5, "targetLoadPerPod": 100, "maxStep": 2},
    });
    let double = ApiDouble::new();
    double.insert(cluster);
    let first = Arc::new(Context::new(
        double.client(),
        Arc::new(Metrics::new()),
        Some("setup".into()),
    ));
    controller::reconcile(stored_cluster(&double), first)
        .await
        .expect("first reconcile");

    let mut deployment = stored(&double, "apps/v1", "Deployment", "demo-turn");
    deployment["spec"]["replicas"] = json!(3);
    double.insert(deployment);
    assert!(double.set_status(
        "apps/v1",
        "Deployment",
        NS,
        "demo-turn",
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}),
    ));
    for pod in PODS {
        double.insert(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": NS,
                "labels": {
                    "app.kubernetes.io/name": "videochat",
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": "turn",
                },
            },
            "spec": {"containers": [{"name": "turn", "image": "turn"}]},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    let secret = stored(&double, "v1", "Secret", "demo-admin-token");
    let token = secret
        .pointer("/data/token")
        .and_then(Value::as_str)
        .map(|b64| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64");
            String::from_utf8(bytes).expect("utf-8")
        })
        .expect("the operator generated an admin token");
    (double, token)
}

/// One real relay per pod, its admin port on loopback guarded by `token`.
async fn relays(token: &str, dir: &std::path::Path) -> Vec<Relay> {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, token).expect("token file");
    let mut relays = Vec::new();
    for _ in PODS {
        let mut config = RelayConfig::local("turn-shared-secret");
        config.no_admin = false;
        config.admin_listen = "127.0.0.1:0".parse().expect("addr");
        config.admin_token_file = Some(token_file.clone());
        relays.push(Relay::start(config).await.expect("relay starts"));
    }
    relays
}

fn context(double: &ApiDouble, relays: &[Relay]) -> Arc<Context> {
    let addresses = PODS
        .iter()
        .zip(relays)
        .map(|(pod, relay)| {
            (
                (*pod).to_owned(),
                relay.admin_addr().expect("admin port").to_string(),
            )
        })
        .collect();
    let pods = LoopbackPods {
        http: HttpPodAdmin::default(),
        addresses,
    };
    Arc::new(
        Context::new(
            double.client(),
            Arc::new(Metrics::new()),
            Some("test".into()),
        )
        .with_pod_admin(Arc::new(pods)),
    )
}

fn annotation(double: &ApiDouble, pod: &str, key: &str) -> Option<String> {
    stored(double, "v1", "Pod", pod)
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn turn_replicas(double: &ApiDouble) -> i64 {
    stored(double, "apps/v1", "Deployment", "demo-turn")
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .expect("replicas")
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("videochat-operator-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[tokio::test]
async fn idle_pods_are_drained_then_replicas_drop() {
    let (double, token) = scaled_out_cluster().await;
    let dir = scratch_dir("scale-down");
    let relays = relays(&token, &dir).await;
    let ctx = context(&double, &relays);
    double.clear_requests();

    controller::reconcile(stored_cluster(&double), ctx.clone())
        .await
        .expect("reconcile succeeds");
    assert_eq!(ctx.metrics.pod_drains.get(), 2);
    assert_eq!(
        turn_replicas(&double),
        3,
        "replicas drop only for pods seen marked draining"
    );

    // A draining relay turns NotReady; it is still scraped, its load is
    // seen at zero, and the next reconcile lowers the replicas.
    for pod in &PODS[..2] {
        let mut stored_pod = stored(&double, "v1", "Pod", pod);
        stored_pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        double.insert(stored_pod);
    }
    controller::reconcile(stored_cluster(&double), ctx.clone())
        .await
        .expect("reconcile succeeds");
    assert_eq!(ctx.metrics.pod_drains.get(), 2, "no pod is asked twice");
    assert_eq!(ctx.metrics.scale_steps.get(), 1);

    // No allocations anywhere: 1 pod is enough, 2 go (max step 2); the
    // choice is the least loaded, then by name.
    assert!(
        relays[0].is_draining() && relays[1].is_draining(),
        "the two chosen relays drain"
    );
    assert!(!relays[2].is_draining(), "the kept relay serves on");
    for pod in &PODS[..2] {
        assert!(
            annotation(&double, pod, "videochat.dev/draining-since").is_some(),
            "{pod} marked draining"
        );
        assert_eq!(
            annotation(&double, pod, "controller.kubernetes.io/pod-deletion-cost").as_deref(),
            Some("-1000"),
            "{pod} goes first"
        );
    }
    assert_eq!(
        annotation(&double, PODS[2], "videochat.dev/draining-since"),
        None
    );
    assert_eq!(turn_replicas(&double), 1);

    // The pods were marked before the Deployment shrank.
    let writes: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| r.path.clone())
        .collect();
    let marked = writes
        .iter()
        .rposition(|p| p.ends_with("/pods/demo-turn-b"))
        .expect("pod marked");
    let scaled = writes
        .iter()
        .position(|p| p.ends_with("/deployments/demo-turn"))
        .expect("deployment written");
    assert!(marked < scaled, "{writes:#?}");

    let status = stored_cluster(&double).status.clone().expect("status");
    let autoscaling = status
        .components
        .turn
        .and_then(|t| t.autoscaling)
        .expect("autoscaling status");
    assert_eq!(autoscaling.current_load, Some(0));
    assert_eq!(autoscaling.desired_replicas, Some(1));
    assert_eq!(
        autoscaling.last_decision_reason.as_deref(),
        Some("ScaleDown")
    );
    assert_eq!(
        autoscaling.draining_pods,
        vec![PODS[0].to_owned(), PODS[1].to_owned()]
    );
    let scaled_events = double
        .all()
        .into_iter()
        .filter(|o| o["kind"] == json!("Event") && o["reason"] == json!("Scaled"))
        .count();
    assert_eq!(scaled_events, 1);

    for relay in relays {
        relay.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_refused_drain_stops_the_scale_down() {
    let (double, _token) = scaled_out_cluster().await;
    let dir = scratch_dir("refused");
    let relays = relays("not-the-operators-token", &dir).await;
    let ctx = context(&double, &relays);

    // The refusal is reported, not a reconcile error: the rest of the
    // cluster is still reconciled.
    controller::reconcile(stored_cluster(&double), ctx)
        .await
        .expect("a refused drain does not fail the reconcile");
    assert!(relays.iter().all(|r| !r.is_draining()));
    assert_eq!(
        annotation(&double, PODS[0], "videochat.dev/draining-since"),
        None
    );
    assert_eq!(turn_replicas(&double), 3, "no scale-down without a drain");
    let status = stored_cluster(&double).status.clone().expect("status");
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "DrainFailed")
    );
    for pod in &PODS[..2] {
        assert!(
            degraded.message.contains(&format!("Pod/{pod}")) && degraded.message.contains("401"),
            "{}",
            degraded.message
        );
    }
    let warnings = double
        .all()
        .into_iter()
        .filter(|o| o["kind"] == json!("Event") && o["reason"] == json!("DrainFailed"))
        .count();
    assert!(warnings >= 1, "a Warning Event for the refused drains");

    for relay in relays {
        relay.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
