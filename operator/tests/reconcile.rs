//! Controller I/O against the in-memory API double: what the reconciler
//! writes, and that it writes nothing when nothing changed.

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::io::controller::{self, Context};
use videochat_operator::metrics::Metrics;
use videochat_operator::testing::{ApiDouble, RecordedRequest};

const NS: &str = "videochat";

fn double_with(cluster: &VideoChatCluster) -> ApiDouble {
    let double = ApiDouble::new();
    let mut value = serde_json::to_value(cluster).expect("json");
    // Let the double assign the uid like the API server would.
    value["metadata"].as_object_mut().map(|m| m.remove("uid"));
    double.insert(value);
    double
}

fn stored_cluster(double: &ApiDouble, name: &str) -> VideoChatCluster {
    let value = double
        .get("videochat.dev/v1alpha1", "VideoChatCluster", NS, name)
        .expect("cluster stored");
    serde_json::from_value(value).expect("cluster parses")
}

fn context(double: &ApiDouble) -> Arc<Context> {
    Arc::new(Context::new(
        double.client(),
        Arc::new(Metrics::new()),
        Some("test".into()),
    ))
}

async fn reconcile(double: &ApiDouble, ctx: &Arc<Context>, name: &str) {
    let cluster = Arc::new(stored_cluster(double, name));
    controller::reconcile(cluster, ctx.clone())
        .await
        .expect("reconcile succeeds");
}

fn writes(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn children(double: &ApiDouble) -> Vec<Value> {
    double
        .all()
        .into_iter()
        .filter(|o| o["kind"] != json!("VideoChatCluster") && o["kind"] != json!("Event"))
        .collect()
}

#[tokio::test]
async fn first_reconcile_creates_everything_and_a_second_changes_nothing() {
    let double = double_with(&sample("minimal"));
    let ctx = context(&double);
    reconcile(&double, &ctx, "demo").await;

    let created = children(&double);
    // Host-network TURN (the default): an address ConfigMap, no TURN
    // Services; signaling's TURN URIs and its public origins in
    // ConfigMaps of their own.
    assert_eq!(
        created.len(),
        22,
        "every child created: {:#?}",
        created
            .iter()
            .map(|o| o["metadata"]["name"].clone())
            .collect::<Vec<_>>()
    );
    let uid = stored_cluster(&double, "demo").metadata.uid.expect("uid");
    for child in &created {
        if child["metadata"]["name"] == json!("demo-mongodb-credentials") {
            // Kept with the data volume it opens, which outlives the resource.
            assert_eq!(child["metadata"]["ownerReferences"], Value::Null);
            continue;
        }
        assert_eq!(
            child["metadata"]["ownerReferences"][0]["uid"],
            json!(uid),
            "{}",
            child["metadata"]["name"]
        );
    }
    // Every apply is server-side apply with the one field manager, forced.
    let applies: Vec<RecordedRequest> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(!applies.is_empty());
    for request in &applies {
        assert!(
            request.content_type.starts_with("application/apply-patch"),
            "{}",
            request.path
        );
        assert!(
            request.query.contains("fieldManager=videochat-operator"),
            "{}",
            request.query
        );
        assert!(request.query.contains("force=true"), "{}", request.query);
    }
    // Status went to the status subresource, and only there.
    let status_writes: Vec<&RecordedRequest> = applies
        .iter()
        .filter(|r| r.path.contains("videochatclusters"))
        .collect();
    assert_eq!(status_writes.len(), 1);
    assert!(
        status_writes[0]
            .path
            .ends_with("/namespaces/videochat/videochatclusters/demo/status"),
        "{}",
        status_writes[0].path
    );
    let status = stored_cluster(&double, "demo")
        .status
        .expect("status written");
    assert_eq!(status.phase.map(|p| p.as_str()), Some("Pending"));
    assert_eq!(status.observed_generation, Some(1));
    // One event about the creation.
    let events = double.list("events.k8s.io/v1", "Event");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], json!("Created"));

    // The next reconcile (the watch saw the new children) applies nothing
    // and tells nobody; at most the status records when the new revisions
    // were first seen. After that, nothing at all.
    double.clear_requests();
    reconcile(&double, &ctx, "demo").await;
    let second = writes(&double.requests());
    assert!(
        second
            .iter()
            .all(|w| w.ends_with("/videochatclusters/demo/status")),
        "second reconcile writes no child and no event: {second:?}"
    );
    double.clear_requests();
    reconcile(&double, &ctx, "demo").await;
    assert_eq!(
        writes(&double.requests()),
        Vec::<String>::new(),
        "a settled cluster writes nothing"
    );
}

/// Plays the Deployment and StatefulSet controllers: every workload reports
/// all its replicas ready on its current generation.
fn mark_workloads_ready(double: &ApiDouble) {
    for (api_version, kind) in [("apps/v1", "Deployment"), ("apps/v1", "StatefulSet")] {
        for object in double.list(api_version, kind) {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let replicas = object["spec"]["replicas"].clone();
            let status = json!({
                "observedGeneration": object["metadata"]["generation"],
                "replicas": replicas, "readyReplicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": replicas,
                "currentRevision": "r1", "updateRevision": "r1",
            });
            assert!(double.set_status(api_version, kind, &namespace, &name, status));
        }
    }
}

/// Reconciles with healthy workloads until the status stops changing.
async fn settle(double: &ApiDouble, ctx: &Arc<Context>, name: &str) {
    for _ in 0..5 {
        mark_workloads_ready(double);
        double.clear_requests();
        reconcile(double, ctx, name).await;
        if writes(&double.requests()).is_empty() {
            return;
        }
    }
}

#[tokio::test]
async fn a_spec_change_updates_only_what_it_affects() {
    let double = double_with(&sample("minimal"));
    let ctx = context(&double);
    reconcile(&double, &ctx, "demo").await;
    settle(&double, &ctx, "demo").await;

    let mut value = double
        .get("videochat.dev/v1alpha1", "VideoChatCluster", NS, "demo")
        .expect("cluster");
    value["spec"]["turn"] = json!({"quotas": {"maxAllocations": 50, "maxAllocationsPerUser": 2}});
    value["metadata"]["generation"] = json!(2);
    double.insert(value);
    double.clear_requests();
    reconcile(&double, &ctx, "demo").await;

    let mut written = writes(&double.requests());
    written.retain(|w| !w.contains("/events"));
    written.sort();
    assert_eq!(
        written,
        vec![
            "PATCH /api/v1/namespaces/videochat/configmaps/demo-turn-config".to_string(),
            "PATCH /apis/apps/v1/namespaces/videochat/deployments/demo-turn".to_string(),
            "PATCH /apis/videochat.dev/v1alpha1/namespaces/videochat/videochatclusters/demo/status"
                .to_string(),
        ]
    );
    let config = double
        .get("v1", "ConfigMap", NS, "demo-turn-config")
        .expect("config");
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_MAX_ALLOCATIONS"],
        json!("50")
    );
    let status = stored_cluster(&double, "demo").status.expect("status");
    assert_eq!(status.observed_generation, Some(2));
}

#[tokio::test]
async fn a_conflict_is_retried() {
    let double = double_with(&sample("minimal"));
    double.conflict_on_next_write("apps/v1", "Deployment", NS, "demo-signaling", 1);
    double.conflict_on_next_write("videochat.dev/v1alpha1", "VideoChatCluster", NS, "demo", 1);
    let ctx = context(&double);
    reconcile(&double, &ctx, "demo").await;

    assert!(
        double
            .get("apps/v1", "Deployment", NS, "demo-signaling")
            .is_some()
    );
    let attempts = double
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/demo-signaling"))
        .count();
    assert_eq!(attempts, 2, "one conflict, one success");
    assert!(
        stored_cluster(&double, "demo").status.is_some(),
        "status written after its conflict"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_degraded_and_nothing_is_applied() {
    let mut cluster = sample("minimal");
    cluster.spec.turn.relay_port_range = Some(videochat_operator::resource::PortRangeSpec {
        min: 60000,
        max: 50000,
    });
    let double = double_with(&cluster);
    let ctx = context(&double);
    reconcile(&double, &ctx, "demo").await;

    assert!(children(&double).is_empty(), "nothing applied");
    let status = stored_cluster(&double, "demo").status.expect("status");
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    let events = double.list("events.k8s.io/v1", "Event");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == json!("Warning") && e["reason"] == json!("InvalidSpec")),
        "{events:#?}"
    );

    // Reconciling the same bad spec again neither re-warns nor rewrites.
    double.clear_requests();
    reconcile(&double, &ctx, "demo").await;
    assert_eq!(writes(&double.requests()), Vec::<String>::new());
}

#[tokio::test]
async fn external_secret_lookup_and_ready_children_reach_status() {
    let double = double_with(&sample("external-databases"));
    for (name, key) in [("videochat-redis", "url"), ("videochat-mongodb", "uri")] {
        double.insert(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS},
            "data": {key: "dGVzdA=="}
        }));
    }
    let ctx = context(&double);
    reconcile(&double, &ctx, "shared-db").await;
    settle(&double, &ctx, "shared-db").await;
    let status = stored_cluster(&double, "shared-db").status.expect("status");
    let ready = condition(&status, "Ready");
    assert_eq!(ready.status, "True", "{ready:?}");
    assert_eq!(status.phase.map(|p| p.as_str()), Some("Running"));
    assert_eq!(
        status.endpoints.turn_uris.first().map(|u| u.uri.as_str()),
        Some("turn:198.51.100.20:3478?transport=udp")
    );
    let events = double.list("events.k8s.io/v1", "Event");
    assert!(
        events.iter().any(|e| e["reason"] == json!("Ready")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_missing_crd_is_reported_with_an_install_hint() {
    let double = ApiDouble::new();
    double.forget_resource("videochatclusters");
    let error = controller::check_crd_installed(&double.client(), None)
        .await
        .expect_err("no CRD");
    assert!(matches!(error, videochat_operator::Error::CrdMissing));
    assert!(
        error
            .to_string()
            .contains("videochat-operator crd | kubectl apply"),
        "{error}"
    );

    let installed = ApiDouble::new();
    controller::check_crd_installed(&installed.client(), Some("videochat"))
        .await
        .expect("CRD present");
    // A namespaced operator only asks inside its namespace (its Role allows no more).
    let paths: Vec<String> = installed
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        vec!["/apis/videochat.dev/v1alpha1/namespaces/videochat/videochatclusters".to_string()]
    );
}

#[test]
fn failures_back_off_exponentially_up_to_five_minutes() {
    let seconds: Vec<u64> = (1..=9).map(|n| controller::backoff(n).as_secs()).collect();
    assert_eq!(seconds, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
}
