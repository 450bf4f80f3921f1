//! `videochat-operator plan` fed with observed objects (YAML files, as the
//! API returns them) that show a failed rollout prints the rollback: the
//! action, the last good template on the Deployment, RolledBack in status
//! and the Warning Event.

mod support;

use kube::api::DynamicObject;
use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::observed::Observed;
use videochat_operator::plan::Plan;

const GOOD_IMAGE: &str = "ghcr.io/videochat-dev/videochat-signaling:0.1.0";
const BAD_IMAGE: &str = "ghcr.io/videochat-dev/videochat-signaling:0.1.1-broken";

fn with_status(object: &DynamicObject, status: Value) -> DynamicObject {
    let mut value = json(object);
    value["status"] = status;
    serde_json::from_value(value).expect("object")
}

/// The workloads of a plan as the API shows them once every replica is
/// updated and ready.
fn ready(objects: &[DynamicObject]) -> Vec<DynamicObject> {
    objects
        .iter()
        .map(|o| match kind_of(o).as_str() {
            "Deployment" | "StatefulSet" => {
                let replicas = json(o).pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                with_status(
                    o,
                    json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                           "readyReplicas": replicas, "currentRevision": "r1", "updateRevision": "r1"}),
                )
            }
            _ => o.clone(),
        })
        .collect()
}

fn image_of(object: &Value) -> Option<&str> {
    object
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
}

fn write_yaml(path: &std::path::Path, documents: &[Value]) {
    let mut text = String::new();
    for document in documents {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(document).expect("yaml"));
    }
    std::fs::write(path, text).expect("write");
}

/// Generation 1 is planned, rolls out ready and is planned again, which
/// records it as good; the observed objects then include its
/// ControllerRevisions. Returns that second plan and the observed objects.
fn run_first_generation(cluster: &mut VideoChatCluster) -> (Plan, Observed) {
    let first = plan_with(cluster, &Observed::default(), "a", "2026-01-01T00:00:00Z");
    cluster.status = Some(first.status.clone());
    let mut observed = Observed::new(ready(&first.objects));
    let good = plan_with(cluster, &observed, "a", "2026-01-01T00:01:00Z");
    cluster.status = Some(good.status.clone());
    for object in good
        .objects
        .iter()
        .filter(|o| kind_of(o) == "ControllerRevision")
    {
        observed.insert(object.clone());
    }
    (good, observed)
}

#[test]
fn plan_prints_the_rollback_of_a_failed_rollout() {
    // Generation 1 runs and becomes good (its template kept in a
    // ControllerRevision).
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.signaling.image = GOOD_IMAGE.into();
    cluster.spec.rollout.stabilization_seconds = 0;
    let (good, mut observed) = run_first_generation(&mut cluster);
    let good_revision = good
        .status
        .components
        .signaling
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.last_good_revision.clone())
        .expect("generation 1 is good");

    // Generation 2: a broken image is rolled out ...
    cluster.spec.signaling.image = BAD_IMAGE.into();
    cluster.metadata.generation = Some(2);
    let rollout = plan_with(&cluster, &observed, "a", "2026-01-01T00:02:00Z");
    cluster.status = Some(rollout.status.clone());
    let deployment = find(&rollout, "Deployment", "demo-signaling");
    assert_eq!(image_of(&json(deployment)), Some(BAD_IMAGE));
    // ... and the Deployment gives up on it.
    let failed = with_status(
        deployment,
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2,
               "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                               "message": "ReplicaSet \"demo-signaling-7f9c\" has timed out progressing."}]}),
    );
    observed.insert(failed);

    // The same through the command line, from files.
    let dir = std::env::temp_dir().join(format!("videochat-rollout-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster_file = dir.join("cluster.yaml");
    let observed_file = dir.join("observed.yaml");
    let mut cluster_value = serde_json::to_value(&cluster).expect("json");
    cluster_value["metadata"]["namespace"] = json!("videochat");
    write_yaml(&cluster_file, &[cluster_value]);
    write_yaml(
        &observed_file,
        &observed.iter().map(json).collect::<Vec<_>>(),
    );
    let output = run_plan_command(vec![cluster_file, observed_file], "2026-01-01T00:10:00Z");
    let _ = std::fs::remove_dir_all(&dir);
    let plan: Value = serde_yaml::from_str(&output).expect("plan output is YAML");

    let rollbacks: Vec<&Value> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["action"] == json!("rollback"))
        .collect();
    assert_eq!(rollbacks.len(), 1, "{output}");
    assert_eq!(rollbacks[0]["component"], json!("signaling"));
    assert_eq!(rollbacks[0]["toRevision"], json!(good_revision));
    assert_eq!(rollbacks[0]["reason"], json!("ProgressDeadlineExceeded"));

    let applied = plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| {
            o["kind"] == json!("Deployment") && o["metadata"]["name"] == json!("demo-signaling")
        })
        .expect("signaling Deployment");
    assert_eq!(
        image_of(applied),
        Some(GOOD_IMAGE),
        "the last good template is applied"
    );

    let rolled_back = plan["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == json!("RolledBack"))
        .expect("RolledBack condition");
    assert_eq!(rolled_back["status"], json!("True"));
    assert_eq!(rolled_back["reason"], json!("ProgressDeadlineExceeded"));
    let failed_revision = &plan["status"]["components"]["signaling"]["rollout"]["failedRevision"];
    assert_eq!(failed_revision, &rollbacks[0]["fromRevision"]);
    assert!(
        plan["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["type"] == json!("Warning") && e["reason"] == json!("RolledBack")),
        "{output}"
    );
}

/// The revision annotation of a workload's pod template.
fn template_revision(workload: &DynamicObject) -> String {
    json(workload)
        .pointer("/spec/template/metadata/annotations/videochat.dev~1revision")
        .and_then(Value::as_str)
        .expect("revision")
        .to_owned()
}

/// The StatefulSet `set` rolling to its new template (observed at
/// `observed_generation`), with pod `<set>-0` of that revision not ready:
/// its container `waiting` for `reason` after `restarts` restarts.
fn observe_stuck_stateful_set(
    observed: &mut Observed,
    set: &DynamicObject,
    observed_generation: i64,
    component: &str,
    image: &str,
    reason: &str,
    restarts: i64,
) {
    let revision = template_revision(set);
    observed.insert(with_status(
        set,
        json!({"observedGeneration": observed_generation, "replicas": 1, "readyReplicas": 0,
               "updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r2"}),
    ));
    let name = set.metadata.name.clone().expect("name");
    let pod: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-0"),
            "namespace": "videochat",
            "labels": {"app.kubernetes.io/name": "videochat", "app.kubernetes.io/instance": "demo",
                       "app.kubernetes.io/component": component},
            "annotations": {"videochat.dev/revision": revision},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": component, "image": image, "imageID": "", "ready": false,
                                   "restartCount": restarts, "state": {"waiting": {"reason": reason}}}],
        },
    }))
    .expect("pod");
    observed.insert(pod);
}

/// The plan's rollback: (component, reason, from revision).
fn rollback_of(plan: &Plan) -> (String, String, String) {
    plan.actions
        .iter()
        .find_map(|a| match a {
            videochat_operator::plan::Action::Rollback {
                component,
                reason,
                from_revision,
                ..
            } => Some((component.clone(), reason.clone(), from_revision.clone())),
            _ => None,
        })
        .expect("a rollback")
}

/// Whether the plan deletes `pod` of `component` (a stuck StatefulSet pod).
fn deletes_pod(plan: &Plan, component: &str, pod: &str) -> bool {
    plan.actions.iter().any(|a| {
        matches!(
            a,
            videochat_operator::plan::Action::DeletePod { component: c, pod: p, .. } if c == component && p == pod
        )
    })
}

#[test]
fn a_crash_looping_database_is_rolled_back_and_its_stuck_pod_replaced() {
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.rollout.stabilization_seconds = 0;
    let (_, mut observed) = run_first_generation(&mut cluster);

    // Generation 2: a Redis image that crashes at start.
    if let Some(managed) = cluster.spec.redis.managed.as_mut() {
        managed.image = "redis:7.4-broken".into();
    }
    cluster.metadata.generation = Some(2);
    let rollout = plan_with(&cluster, &observed, "a", "2026-01-01T00:02:00Z");
    cluster.status = Some(rollout.status.clone());
    let set = find(&rollout, "StatefulSet", "demo-redis");
    let bad = template_revision(set);
    observe_stuck_stateful_set(
        &mut observed,
        set,
        1,
        "redis",
        "redis:7.4-broken",
        "CrashLoopBackOff",
        5,
    );

    let plan = plan_with(&cluster, &observed, "a", "2026-01-01T00:03:00Z");
    // The plan's revision annotation is the rollout module's revision hash.
    let template: k8s_openapi::api::apps::v1::StatefulSet =
        serde_json::from_value(json(set)).expect("StatefulSet");
    assert_eq!(
        videochat_operator::rollout::revision_hash(&template.spec.template),
        bad
    );
    assert_eq!(
        rollback_of(&plan),
        ("redis".to_owned(), "CrashLoop".to_owned(), bad)
    );
    assert!(
        deletes_pod(&plan, "redis", "demo-redis-0"),
        "{:?}",
        plan.actions
    );
    let restored = json(find(&plan, "StatefulSet", "demo-redis"));
    assert_ne!(image_of(&restored), Some("redis:7.4-broken"));
}

#[test]
fn a_relay_revision_that_never_runs_is_rolled_back_when_each_relay_has_its_own_load_balancer() {
    // TURN with a LoadBalancer Service per relay pod runs as a StatefulSet;
    // its rollouts are judged and rolled back like the Deployments'.
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.rollout.stabilization_seconds = 0;
    cluster.spec.turn.exposure.mode = videochat_operator::resource::TurnExposureMode::LoadBalancer;
    let (good, mut observed) = run_first_generation(&mut cluster);
    assert!(
        good.objects
            .iter()
            .any(|o| kind_of(o) == "ControllerRevision"
                && o.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("demo-turn-"))),
        "the relays' good revision is kept as a rollback target"
    );
    let good_image = image_of(&json(find(&good, "StatefulSet", "demo-turn")))
        .expect("image")
        .to_owned();

    // Generation 2: a relay image that cannot be pulled.
    cluster.spec.turn.image = "ghcr.io/videochat-dev/videochat-turn:0.1.1-missing".into();
    cluster.metadata.generation = Some(2);
    let rollout = plan_with(&cluster, &observed, "a", "2026-01-01T00:02:00Z");
    cluster.status = Some(rollout.status.clone());
    let set = find(&rollout, "StatefulSet", "demo-turn");
    assert_eq!(
        image_of(&json(set)),
        Some("ghcr.io/videochat-dev/videochat-turn:0.1.1-missing")
    );
    let bad = template_revision(set);
    observe_stuck_stateful_set(
        &mut observed,
        set,
        2,
        "turn",
        "ghcr.io/videochat-dev/videochat-turn:0.1.1-missing",
        "ImagePullBackOff",
        0,
    );

    // Past the progress deadline with no relay of the revision ready.
    let deadline = cluster.spec.rollout.progress_deadline_seconds;
    let after = k8s_openapi::jiff::Timestamp::from_second(
        "2026-01-01T00:02:00Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .expect("time")
            .as_second()
            + i64::from(deadline)
            + 1,
    )
    .expect("time")
    .strftime("%Y-%m-%dT%H:%M:%SZ")
    .to_string();
    let plan = plan_with(&cluster, &observed, "a", &after);
    let (component, _, from_revision) = rollback_of(&plan);
    assert_eq!((component.as_str(), from_revision), ("turn", bad));
    // The StatefulSet does not replace a pod that never became ready by
    // itself: the stuck relay pod is deleted so the good template runs.
    assert!(
        deletes_pod(&plan, "turn", "demo-turn-0"),
        "{:?}",
        plan.actions
    );
    let restored = json(find(&plan, "StatefulSet", "demo-turn"));
    assert_eq!(image_of(&restored), Some(good_image.as_str()));
}
