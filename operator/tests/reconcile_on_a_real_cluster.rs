//! Controller I/O that a real cluster depends on, against the in-memory API
//! double: a refused write is reported while everything else is still
//! applied, a resource being deleted is left alone, the MongoDB credentials
//! outlive a delete and re-create like the volume they open, the watch
//! caches replace the per-reconcile LISTs, nothing is written after the
//! lead is lost, and a due secret rotation is looked at on time.

mod support;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::watch;
use videochat_operator::Error;
use videochat_operator::VideoChatCluster;
use videochat_operator::io::cache::caches_from;
use videochat_operator::io::controller::{self, Context};
use videochat_operator::io::pod_admin::{PodAdmin, PodTarget};
use videochat_operator::metrics::Metrics;
use videochat_operator::testing::ApiDouble;

const NS: &str = "videochat";

fn insert_cluster(double: &ApiDouble, mut value: Value) {
    // The double assigns the uid, as the API server does.
    value["metadata"].as_object_mut().map(|m| m.remove("uid"));
    double.insert(value);
}

fn double_with(value: Value) -> ApiDouble {
    let double = ApiDouble::new();
    insert_cluster(&double, value);
    double
}

fn stored_cluster(double: &ApiDouble) -> Arc<VideoChatCluster> {
    let value = double
        .get("videochat.dev/v1alpha1", "VideoChatCluster", NS, "demo")
        .expect("cluster stored");
    Arc::new(serde_json::from_value(value).expect("cluster parses"))
}

fn context(double: &ApiDouble) -> Context {
    Context::new(
        double.client(),
        Arc::new(Metrics::new()),
        Some("test".into()),
    )
}

fn events_with_reason(double: &ApiDouble, reason: &str) -> usize {
    double
        .all()
        .into_iter()
        .filter(|o| o["kind"] == json!("Event") && o["reason"] == json!(reason))
        .count()
}

fn secret_value(double: &ApiDouble, name: &str, key: &str) -> String {
    use base64::Engine;
    let secret = double.get("v1", "Secret", NS, name).expect("secret stored");
    let encoded = secret["data"][key].as_str().expect("key present");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[tokio::test]
async fn a_refused_apply_is_reported_and_every_other_object_is_still_applied() {
    let double = double_with(serde_json::to_value(sample("minimal")).expect("json"));
    // What the API answers to a changed volume claim template.
    double.refuse_writes(
        "apps/v1",
        "StatefulSet",
        NS,
        "demo-mongodb",
        422,
        "StatefulSet.apps \"demo-mongodb\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
    );
    let ctx = Arc::new(context(&double));
    controller::reconcile(stored_cluster(&double), ctx)
        .await
        .expect("one refused object does not fail the reconcile");

    assert!(
        double
            .get("apps/v1", "StatefulSet", NS, "demo-mongodb")
            .is_none()
    );
    for (kind, name) in [
        ("StatefulSet", "demo-redis"),
        ("Deployment", "demo-signaling"),
        ("Deployment", "demo-turn"),
    ] {
        assert!(
            double.get("apps/v1", kind, NS, name).is_some(),
            "{kind}/{name} applied after the refused one"
        );
    }
    let status = stored_cluster(&double).status.clone().expect("status");
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(
        degraded.message.contains("StatefulSet/demo-mongodb")
            && degraded.message.contains("Forbidden"),
        "{}",
        degraded.message
    );
    assert_eq!(events_with_reason(&double, "ApplyFailed"), 1);
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let double = double_with(value);
    double.clear_requests();
    let ctx = Arc::new(context(&double));
    controller::reconcile(stored_cluster(&double), ctx)
        .await
        .expect("reconcile succeeds");
    let writes: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}

#[tokio::test]
async fn mongodb_credentials_outlive_a_delete_and_recreate_like_the_volume() {
    let sample_value = serde_json::to_value(sample("minimal")).expect("json");
    let double = double_with(sample_value.clone());
    let ctx = Arc::new(context(&double));
    controller::reconcile(stored_cluster(&double), ctx.clone())
        .await
        .expect("first reconcile");
    let password = secret_value(&double, "demo-mongodb-credentials", "password");

    // kubectl delete: the resource goes, the garbage collector removes what
    // it owned; the volume claim (retained) and what nobody owns stay.
    let uid = stored_cluster(&double).metadata.uid.clone().expect("uid");
    assert!(double.remove("videochat.dev/v1alpha1", "VideoChatCluster", NS, "demo"));
    for object in double.all() {
        let owned = object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["uid"] == json!(uid));
        if owned {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            double.remove(api_version, kind, NS, name);
        }
    }
    assert!(
        double.get("v1", "Secret", NS, "demo-turn-secret").is_none(),
        "owned children are collected"
    );

    insert_cluster(&double, sample_value);
    controller::reconcile(stored_cluster(&double), ctx)
        .await
        .expect("reconcile of the re-created resource");
    assert_eq!(
        secret_value(&double, "demo-mongodb-credentials", "password"),
        password,
        "the data volume's root password still opens it"
    );
}

#[tokio::test]
async fn with_watch_caches_a_reconcile_lists_nothing() {
    let double = double_with(serde_json::to_value(sample("minimal")).expect("json"));
    controller::reconcile(stored_cluster(&double), Arc::new(context(&double)))
        .await
        .expect("first reconcile");
    let cached = Arc::new(context(&double).with_caches(caches_from(&double.all())));
    double.clear_requests();
    controller::reconcile(stored_cluster(&double), cached)
        .await
        .expect("cached reconcile");
    let requests = double.requests();
    let lists: Vec<String> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.query.contains("labelSelector"))
        .map(|r| r.path.clone())
        .collect();
    assert!(lists.is_empty(), "{lists:#?}");
    let writes: Vec<String> = requests
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        writes.is_empty(),
        "nothing changed, nothing written: {writes:#?}"
    );
}

/// Answers scrapes, and hands the Lease to someone else on the first one.
struct LeaseLostDuringScrape {
    leading: watch::Sender<bool>,
}

impl PodAdmin for LeaseLostDuringScrape {
    fn scrape_load(&self, _: &PodTarget) -> BoxFuture<'_, Result<f64, Error>> {
        let _ = self.leading.send(false);
        Box::pin(async { Ok(0.0) })
    }
    fn drain(&self, _: &PodTarget) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn nothing_is_written_after_the_lead_is_lost_mid_reconcile() {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["autoscaling"] = json!({"enabled": true});
    let double = double_with(value);
    double.insert(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-turn-a",
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
    let (sender, receiver) = watch::channel(true);
    let ctx = Arc::new(
        context(&double)
            .with_leader(receiver)
            .with_pod_admin(Arc::new(LeaseLostDuringScrape { leading: sender })),
    );
    double.clear_requests();
    controller::reconcile(stored_cluster(&double), ctx.clone())
        .await
        .expect("reconcile succeeds");
    assert!(!ctx.is_leader(), "the scrape handed the lead over");
    let writes: Vec<String> = double
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}

#[tokio::test]
async fn a_due_secret_rotation_is_looked_at_when_it_is_due() {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["turn"]["secretRotation"] = json!({"interval": "1h"});
    let double = double_with(value);
    let ctx = Arc::new(context(&double));
    controller::reconcile(stored_cluster(&double), ctx.clone())
        .await
        .expect("first reconcile");

    // The secret was made 3580 s ago: the next one is due in 20 s, sooner
    // than any other reason to look again (a rollout in progress looks
    // every 30 s, a settled cluster every 5 minutes).
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let created = k8s_openapi::jiff::Timestamp::from_second(now - 3580)
        .expect("time")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut secret = double
        .get("v1", "Secret", NS, "demo-turn-secret")
        .expect("secret");
    secret["metadata"]["annotations"]["videochat.dev/secret-created-at"] = json!(created);
    double.insert(secret);
    let action = controller::reconcile(stored_cluster(&double), ctx)
        .await
        .expect("reconcile succeeds");
    let on_time =
        [19, 20, 21].map(|s| kube::runtime::controller::Action::requeue(Duration::from_secs(s)));
    assert!(on_time.contains(&action), "{action:?}");
}
