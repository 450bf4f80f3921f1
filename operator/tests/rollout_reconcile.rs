//! One rollback end to end against the in-memory API double: a healthy
//! revision is kept in a ControllerRevision, a bad image is rolled out, its
//! Deployment reports ProgressDeadlineExceeded, and the controller puts the
//! last good template back, says so in status and in a Warning Event, and
//! does not try the bad revision again within the same generation.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::io::controller::{self, Context};
use videochat_operator::metrics::Metrics;
use videochat_operator::testing::ApiDouble;

const NS: &str = "videochat";
const BROKEN_IMAGE: &str = "ghcr.io/videochat-dev/videochat-signaling:broken";

fn stored(double: &ApiDouble, api_version: &str, kind: &str, name: &str) -> Value {
    double
        .get(api_version, kind, NS, name)
        .unwrap_or_else(|| panic!("{kind}/{name} stored"))
}

fn stored_cluster(double: &ApiDouble) -> VideoChatCluster {
    serde_json::from_value(stored(
        double,
        "videochat.dev/v1alpha1",
        "VideoChatCluster",
        "demo",
    ))
    .expect("cluster parses")
}

async fn reconcile(double: &ApiDouble, ctx: &Arc<Context>) {
    controller::reconcile(Arc::new(stored_cluster(double)), ctx.clone())
        .await
        .expect("reconcile succeeds");
}

/// Every workload reports all its replicas updated and ready.
fn all_ready(double: &ApiDouble) {
    for (kind, name) in [
        ("Deployment", "demo-signaling"),
        ("Deployment", "demo-turn"),
        ("StatefulSet", "demo-redis"),
        ("StatefulSet", "demo-mongodb"),
    ] {
        let object = stored(double, "apps/v1", kind, name);
        let replicas = object
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let status = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "currentRevision": "r1",
            "updateRevision": "r1",
        });
        assert!(double.set_status("apps/v1", kind, NS, name, status));
    }
}

fn signaling_image(double: &ApiDouble) -> String {
    stored(double, "apps/v1", "Deployment", "demo-signaling")
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn condition(double: &ApiDouble, type_: &str) -> (String, String, String) {
    let cluster = stored_cluster(double);
    let status = cluster.status.expect("status written");
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("condition {type_}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn warning_events(double: &ApiDouble, reason: &str) -> usize {
    double
        .all()
        .into_iter()
        .filter(|o| {
            o["kind"] == json!("Event")
                && o["type"] == json!("Warning")
                && o["reason"] == json!(reason)
        })
        .count()
}

#[tokio::test]
async fn a_failed_rollout_is_rolled_back_to_the_last_good_template() {
    let mut cluster = serde_json::to_value(sample("minimal")).expect("json");
    cluster["metadata"].as_object_mut().map(|m| m.remove("uid"));
    cluster["spec"]["rollout"] = json!({"stabilizationSeconds": 0, "progressDeadlineSeconds": 60});
    let double = ApiDouble::new();
    double.insert(cluster);
    let ctx = Arc::new(Context::new(
        double.client(),
        Arc::new(Metrics::new()),
        Some("test".into()),
    ));

    // Created, then everything ready: the running revisions are good and
    // their templates are kept.
    reconcile(&double, &ctx).await;
    all_ready(&double);
    reconcile(&double, &ctx).await;
    let good_image = signaling_image(&double);
    let status = stored_cluster(&double).status.expect("status");
    let signaling = status.components.signaling.expect("signaling status");
    let good = signaling
        .rollout
        .as_ref()
        .and_then(|r| r.last_good_revision.clone())
        .expect("a last good revision");
    assert_eq!(signaling.last_good_revision.as_deref(), Some(good.as_str()));
    let kept = stored(
        &double,
        "apps/v1",
        "ControllerRevision",
        &format!("demo-signaling-{good}"),
    );
    assert_eq!(
        kept.pointer("/data/spec/containers/0/image")
            .and_then(Value::as_str),
        Some(good_image.as_str())
    );
    assert_eq!(condition(&double, "RolledBack").0, "False");

    // A bad image: generation 2 applies it.
    let mut cluster = stored(
        &double,
        "videochat.dev/v1alpha1",
        "VideoChatCluster",
        "demo",
    );
    cluster["spec"]["signaling"]["image"] = json!(BROKEN_IMAGE);
    cluster["metadata"]["generation"] = json!(2);
    double.insert(cluster);
    reconcile(&double, &ctx).await;
    assert_eq!(signaling_image(&double), BROKEN_IMAGE);
    let bad = stored_cluster(&double)
        .status
        .and_then(|s| s.components.signaling)
        .and_then(|s| s.rollout)
        .and_then(|r| r.revision)
        .expect("tracked revision");
    assert_ne!(bad, good);

    // The new pods never get ready; the Deployment gives up.
    let deployment = stored(&double, "apps/v1", "Deployment", "demo-signaling");
    let generation = deployment
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    assert!(double.set_status(
        "apps/v1",
        "Deployment",
        NS,
        "demo-signaling",
        json!({
            "observedGeneration": generation,
            "replicas": 3,
            "updatedReplicas": 1,
            "readyReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        }),
    ));
    reconcile(&double, &ctx).await;

    assert_eq!(
        signaling_image(&double),
        good_image,
        "the last good template is back"
    );
    let (status, reason, message) = condition(&double, "RolledBack");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert!(
        message.contains(&bad) && message.contains(&good),
        "{message}"
    );
    assert_eq!(condition(&double, "Degraded").0, "True");
    let tracking = stored_cluster(&double)
        .status
        .and_then(|s| s.components.signaling)
        .and_then(|s| s.rollout)
        .expect("tracking");
    assert_eq!(tracking.failed_revision.as_deref(), Some(bad.as_str()));
    assert_eq!(tracking.failed_generation, Some(2));
    assert_eq!(warning_events(&double, "RolledBack"), 1);
    assert_eq!(ctx.metrics.rollbacks.get(), 1);

    // Same generation: the bad revision stays out, no second rollback.
    all_ready(&double);
    reconcile(&double, &ctx).await;
    reconcile(&double, &ctx).await;
    assert_eq!(signaling_image(&double), good_image);
    assert_eq!(warning_events(&double, "RolledBack"), 1);
    assert_eq!(ctx.metrics.rollbacks.get(), 1, "no second rollback");
    assert_eq!(condition(&double, "RolledBack").0, "True");
}
