//! Decisions that must hold on a real cluster, where the API server,
//! the Deployment controller and the kubelet move on their own: the
//! operator's status writes wake nothing, an idle autoscaled cluster plans
//! the same status again, a status of an older generation is not judged, a
//! good revision stays good, only restarts since a revision started count,
//! a database is never rolled back across a major version, Events follow the
//! final decision, scale-downs wait for rollouts, and specs the code cannot
//! use are refused by the CRD and reported as Degraded.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::autoscale::rolling_out;
use videochat_operator::autoscale::{
    AutoscalePolicy, AutoscaleStatus, PodLoad, ScaleAction, hold_scale_down, plan_scaling,
};
use videochat_operator::io::controller::cluster_trigger;
use videochat_operator::observed::Observed;
use videochat_operator::plan::Plan;
use videochat_operator::rollout::decision::{DATABASE_ROLLBACK_BLOCKED, database_downgrade};
use videochat_operator::rollout::health::ContainerRestarts;
use videochat_operator::rollout::{
    Component, Health, RevisionRecord, RolloutAction, RolloutInput, RolloutPolicy, RolloutTracking,
    WorkloadObservation, assess, decide_rollout,
};

fn at(seconds: i64) -> Timestamp {
    let base: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
    Timestamp::from_second(base.as_second() + seconds).expect("in range")
}

fn rfc3339(seconds: i64) -> String {
    at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[test]
fn the_operators_own_status_writes_wake_no_reconcile() {
    let cluster = sample("minimal");
    let mut written = cluster.clone();
    written.status = Some(plan_with(&cluster, &Observed::default(), "a", NOW).status);
    written.metadata.resource_version = Some("42".into());
    assert_eq!(cluster_trigger(&cluster), cluster_trigger(&written));

    let mut edited = cluster.clone();
    edited.metadata.generation = Some(2);
    assert_ne!(cluster_trigger(&cluster), cluster_trigger(&edited));
    let mut annotated = cluster.clone();
    annotated
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("example.com/note".into(), "x".into());
    assert_ne!(cluster_trigger(&cluster), cluster_trigger(&annotated));
    let mut deleted = cluster.clone();
    deleted.metadata.deletion_timestamp = Some(Time(at(0)));
    assert_ne!(cluster_trigger(&cluster), cluster_trigger(&deleted));
}

fn with_status(object: &DynamicObject, status: Value) -> DynamicObject {
    let mut value = json(object);
    value["status"] = status;
    serde_json::from_value(value).expect("object")
}

/// The plan's workloads as the API shows them once all replicas are ready.
fn ready(objects: &[DynamicObject]) -> Vec<DynamicObject> {
    objects
        .iter()
        .map(|o| match kind_of(o).as_str() {
            "Deployment" | "StatefulSet" => {
                let replicas = json(o)
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
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

/// Generation 1 planned, rolled out ready and planned again until it is
/// recorded as good; the observed objects then include its
/// ControllerRevisions.
fn settled(cluster: &mut VideoChatCluster) -> (Plan, Observed) {
    let first = plan_with(cluster, &Observed::default(), "a", &rfc3339(0));
    cluster.status = Some(first.status.clone());
    let mut observed = Observed::new(ready(&first.objects));
    let good = plan_with(cluster, &observed, "a", &rfc3339(60));
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
fn an_idle_autoscaled_cluster_plans_the_same_status_again() {
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.autoscaling.enabled = true;
    cluster.spec.rollout.stabilization_seconds = 0;
    let (_, mut observed) = settled(&mut cluster);
    for (pod, load) in [("demo-turn-a", 10.0), ("demo-turn-b", 12.0)] {
        observed.insert(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "videochat", "labels": {
                    "app.kubernetes.io/name": "videochat", "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": "turn"}},
                "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .expect("pod"),
        );
        observed.insert(
            serde_json::from_value(json!({
                "apiVersion": "videochat.dev/v1alpha1", "kind": "PodLoad",
                "metadata": {"name": pod, "namespace": "videochat"}, "load": load,
            }))
            .expect("load"),
        );
    }
    let mut previous = plan_with(&cluster, &observed, "a", &rfc3339(120)).status;
    let turn = previous
        .components
        .turn
        .as_ref()
        .and_then(|t| t.autoscaling.as_ref())
        .expect("TURN is autoscaled");
    assert_eq!(turn.current_load, Some(22), "the loads were read");
    assert!(
        !turn.recommendations.is_empty(),
        "a recommendation is kept: {:?}",
        turn.last_decision_message
    );
    cluster.status = Some(previous.clone());
    for step in 1..20 {
        let next = plan_with(&cluster, &observed, "a", &rfc3339(120 + step * 15)).status;
        assert_eq!(next, previous, "status changed at step {step}");
        previous = next;
        cluster.status = Some(previous.clone());
    }
}

#[test]
fn a_deadline_reported_for_the_previous_generation_is_not_judged() {
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.rollout.stabilization_seconds = 0;
    let (_, mut observed) = settled(&mut cluster);
    cluster.spec.signaling.image = "ghcr.io/videochat-dev/videochat-signaling:9.9.9".into();
    cluster.metadata.generation = Some(2);
    let rollout = plan_with(&cluster, &observed, "a", &rfc3339(120));
    cluster.status = Some(rollout.status.clone());
    // Five seconds after the apply: the Deployment controller has not seen
    // generation 2 yet, and its status still carries generation 1's verdict.
    let mut applied = json(find(&rollout, "Deployment", "demo-signaling"));
    applied["metadata"]["generation"] = json!(2);
    let applied: DynamicObject = serde_json::from_value(applied).expect("object");
    observed.insert(with_status(
        &applied,
        json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 0, "readyReplicas": 2,
               "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
    ));
    let plan = plan_with(&cluster, &observed, "a", &rfc3339(125));
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, videochat_operator::plan::Action::Rollback { .. })),
        "{:#?}",
        plan.actions
    );
    assert_ne!(condition(&plan.status, "Degraded").status, "True");
}

#[test]
fn events_follow_the_final_decision() {
    let mut cluster: VideoChatCluster = sample("minimal");
    cluster.spec.rollout.stabilization_seconds = 0;
    let (_, mut observed) = settled(&mut cluster);
    cluster.spec.signaling.image = "ghcr.io/videochat-dev/videochat-signaling:9.9.9".into();
    cluster.metadata.generation = Some(2);
    let rollout = plan_with(&cluster, &observed, "a", &rfc3339(120));
    cluster.status = Some(rollout.status.clone());
    let mut applied = json(find(&rollout, "Deployment", "demo-signaling"));
    applied["metadata"]["generation"] = json!(2);
    let applied: DynamicObject = serde_json::from_value(applied).expect("object");
    observed.insert(with_status(
        &applied,
        json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2,
               "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
    ));
    let plan = plan_with(&cluster, &observed, "a", &rfc3339(900));
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, videochat_operator::plan::Action::Rollback { .. })),
        "{:#?}",
        plan.actions
    );
    let reasons: Vec<&str> = plan.events.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"RolledBack"), "{reasons:?}");
    assert!(
        !reasons.contains(&"ProgressDeadlineExceeded"),
        "the deadline led to the rollback; one Event says so: {reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| **r == "RolledBack").count(),
        1,
        "{reasons:?}"
    );
}

fn policy() -> RolloutPolicy {
    RolloutPolicy {
        progress_deadline_seconds: 300,
        stabilization_seconds: 60,
        max_restarts: 3,
        min_ready_percent: 100,
        auto_rollback: true,
    }
}

#[test]
fn a_revision_judged_good_is_not_judged_again() {
    // v1 became good; much later a pod is NotReady (a node went away) and
    // the Deployment reports ProgressDeadlineExceeded for the replacement.
    let observed = WorkloadObservation {
        revision: Some("v1".into()),
        generation_observed: true,
        desired: 3,
        total: 3,
        updated: 3,
        ready_updated: 2,
        progress_deadline_exceeded: true,
        max_restarts: 9,
        ..WorkloadObservation::default()
    };
    let tracking = RolloutTracking {
        revision: Some("v1".into()),
        revision_since: Some(Time(at(0))),
        last_good_revision: Some("v1".into()),
        ..RolloutTracking::default()
    };
    let (health, _) = assess(&policy(), &observed, &tracking, at(86_400));
    assert_eq!(health, Health::Healthy);
}

#[test]
fn only_restarts_since_the_revision_started_count() {
    let since = at(1000);
    let old_pod = ContainerRestarts {
        pod_created: Some(at(0)),
        count: 40,
        last_finished: Some(at(500)),
    };
    assert_eq!(old_pod.since(since), 0, "restarts from before the revision");
    let old_pod_restarted_since = ContainerRestarts {
        last_finished: Some(at(1200)),
        ..old_pod.clone()
    };
    assert_eq!(old_pod_restarted_since.since(since), 1);
    let new_pod = ContainerRestarts {
        pod_created: Some(at(1010)),
        count: 5,
        last_finished: Some(at(1300)),
    };
    assert_eq!(new_pod.since(since), 5);

    // A rollback target whose pods restarted long ago is not a crash loop.
    let observed = WorkloadObservation {
        revision: Some("v2".into()),
        generation_observed: true,
        desired: 1,
        total: 1,
        updated: 1,
        ready_updated: 0,
        max_restarts: 40,
        restarts: vec![old_pod],
        ..WorkloadObservation::default()
    };
    let tracking = RolloutTracking {
        revision: Some("v2".into()),
        revision_since: Some(Time(since)),
        last_good_revision: Some("v1".into()),
        ..RolloutTracking::default()
    };
    let (health, _) = assess(&policy(), &observed, &tracking, at(1060));
    assert!(matches!(health, Health::Progressing { .. }), "{health:?}");
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta::default()),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "db".into(),
                image: Some(image.into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

#[test]
fn a_database_is_never_rolled_back_across_a_major_version() {
    let good = template("mongo:7.0");
    assert!(
        database_downgrade(Component::MongoDb, Some(&template("mongo:8.0.1")), &good).is_some()
    );
    assert!(
        database_downgrade(Component::MongoDb, Some(&template("mongo:7.0.9")), &good).is_none()
    );
    assert!(
        database_downgrade(
            Component::MongoDb,
            Some(&template("mongo@sha256:0123")),
            &good
        )
        .is_some(),
        "an untold version is not guessed"
    );
    assert!(
        database_downgrade(
            Component::Redis,
            Some(&template("redis:8.0-alpine")),
            &template("redis:7.4-alpine")
        )
        .is_some()
    );
    assert!(
        database_downgrade(
            Component::Signaling,
            Some(&template("s:2.0")),
            &template("s:1.0")
        )
        .is_none()
    );

    // mongo:8.0 crash loops; the last good revision ran mongo:7.0.
    let observed = WorkloadObservation {
        revision: Some("v8".into()),
        generation_observed: true,
        desired: 1,
        total: 1,
        updated: 1,
        ready_updated: 0,
        max_restarts: 9,
        template: Some(template("mongo:8.0")),
        ..WorkloadObservation::default()
    };
    let tracking = RolloutTracking {
        revision: Some("v8".into()),
        revision_since: Some(Time(at(0))),
        last_good_revision: Some("v7".into()),
        ..RolloutTracking::default()
    };
    let last_good = RevisionRecord {
        revision: "v7".into(),
        template: good,
    };
    let decision = decide_rollout(&RolloutInput {
        component: Component::MongoDb,
        policy: &policy(),
        generation: 2,
        desired_revision: "v8",
        observed: Some(&observed),
        last_good: Some(&last_good),
        tracking: &tracking,
        now: at(60),
    });
    assert!(
        !decision
            .actions
            .iter()
            .any(|a| matches!(a, RolloutAction::Rollback { .. })),
        "{:?}",
        decision.actions
    );
    let degraded = decision.degraded.expect("reported");
    assert_eq!(degraded.reason, DATABASE_ROLLBACK_BLOCKED);
    assert!(
        degraded.message.contains("major version"),
        "{}",
        degraded.message
    );
}

fn loaded(name: &str, load: f64) -> PodLoad {
    PodLoad {
        name: name.into(),
        ready: true,
        load: Some(load),
        ..PodLoad::default()
    }
}

#[test]
fn a_scale_down_waits_while_the_component_rolls_out() {
    let policy = AutoscalePolicy {
        target_load_per_pod: Some(100.0),
        scale_down_window_seconds: 0,
        ..AutoscalePolicy::default()
    };
    let pods = [loaded("a", 0.0), loaded("b", 0.0), loaded("c", 50.0)];
    let plan = plan_scaling(
        Component::Turn,
        &policy,
        3,
        &pods,
        &AutoscaleStatus::default(),
        at(0),
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, ScaleAction::DrainPod { .. })),
        "a scale-down is wanted: {:?}",
        plan.actions
    );
    let held = hold_scale_down(plan, 3, &AutoscaleStatus::default(), "turn revision abc");
    assert_eq!(held.replicas, 3);
    assert!(held.actions.is_empty(), "{:?}", held.actions);
    assert!(held.status.draining_pods.is_empty());
    assert_eq!(
        held.status.last_decision_reason.as_deref(),
        Some("RolloutInProgress")
    );

    // A Deployment still running pods of its previous template rolls out.
    let mut deployment = Deployment {
        status: Some(DeploymentStatus {
            replicas: Some(4),
            updated_replicas: Some(2),
            conditions: Some(vec![DeploymentCondition::default()]),
            ..DeploymentStatus::default()
        }),
        ..Deployment::default()
    };
    assert!(rolling_out(Component::Turn, None, &deployment, &[]).is_some());
    deployment.status = Some(DeploymentStatus {
        replicas: Some(3),
        updated_replicas: Some(3),
        ..DeploymentStatus::default()
    });
    assert!(rolling_out(Component::Turn, None, &deployment, &[]).is_none());
}

#[test]
fn a_rotation_interval_under_a_minute_is_refused_and_reported() {
    let mut cluster: VideoChatCluster = sample("minimal");
    for (interval, valid) in [
        ("30s", false),
        ("59s", false),
        ("60s", true),
        ("1h30m", true),
        ("7d", true),
    ] {
        cluster.spec.turn.secret_rotation =
            Some(videochat_operator::resource::SecretRotationSpec {
                interval: interval.into(),
            });
        let errors = videochat_operator::resource::validation_errors(&cluster);
        assert_eq!(errors.is_empty(), valid, "{interval}: {errors:?}");
        if !valid {
            assert!(
                errors.iter().any(|e| e.contains("at least 60s")),
                "{interval}: {errors:?}"
            );
            // What an older CRD let through is a Degraded condition, and
            // the plan (the reconcile) does not fail.
            let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
            let degraded = condition(&plan.status, "Degraded");
            assert_eq!(
                (degraded.status.as_str(), degraded.reason.as_str()),
                ("True", "InvalidSpec")
            );
        }
    }
}

#[test]
fn database_storage_cannot_change_once_set() {
    let old: VideoChatCluster = sample("minimal");
    let mut resized = old.clone();
    if let Some(managed) = resized.spec.mongodb.managed.as_mut() {
        managed.storage.size = "20Gi".into();
    }
    let errors = kube::core::cel::validate_cel_update(&resized, &old)
        .expect_err("a storage change is refused");
    assert!(
        errors.to_string().contains("cannot change once set"),
        "{errors}"
    );
    let mut reclassed = old.clone();
    if let Some(managed) = reclassed.spec.redis.managed.as_mut() {
        managed.storage.storage_class_name = Some("fast".into());
    }
    assert!(kube::core::cel::validate_cel_update(&reclassed, &old).is_err());
    let mut other_edit = old.clone();
    other_edit.spec.signaling.replicas = 5;
    assert!(kube::core::cel::validate_cel_update(&other_edit, &old).is_ok());
    assert!(videochat_operator::resource::validation_errors(&resized).is_empty());
}

#[test]
fn placement_reaches_every_components_pods_and_rolls_them() {
    let plain: VideoChatCluster = sample("minimal");
    let mut placed = plain.clone();
    let placement: videochat_operator::resource::PodPlacementSpec = serde_json::from_value(json!({
        "nodeSelector": {"pool": "media"},
        "tolerations": [{"key": "media", "operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway"}],
        "imagePullSecrets": [{"name": "registry"}],
    }))
    .expect("placement");
    placed.spec.turn.placement = placement.clone();
    placed.spec.signaling.placement = placement.clone();
    if let Some(managed) = placed.spec.mongodb.managed.as_mut() {
        managed.placement = placement.clone();
    }
    if let Some(managed) = placed.spec.redis.managed.as_mut() {
        managed.placement = placement;
    }
    let before = plan_with(&plain, &Observed::default(), "a", NOW);
    let after = plan_with(&placed, &Observed::default(), "a", NOW);
    for (kind, name) in [
        ("Deployment", "demo-turn"),
        ("Deployment", "demo-signaling"),
        ("StatefulSet", "demo-mongodb"),
        ("StatefulSet", "demo-redis"),
    ] {
        let pod = json(find(&after, kind, name))["spec"]["template"]["spec"].clone();
        assert_eq!(pod["nodeSelector"], json!({"pool": "media"}), "{name}");
        assert_eq!(pod["tolerations"][0]["key"], json!("media"), "{name}");
        assert_eq!(
            pod["imagePullSecrets"],
            json!([{"name": "registry"}]),
            "{name}"
        );
        assert_eq!(
            pod["topologySpreadConstraints"][0]["maxSkew"],
            json!(1),
            "{name}"
        );
        let revision = |plan: &Plan| {
            json(find(plan, kind, name))["spec"]["template"]["metadata"]["annotations"]
                ["videochat.dev/revision"]
                .clone()
        };
        assert_ne!(revision(&before), revision(&after), "{name} rolls");
    }
}
