//! The deciders as plain functions: the spec, the observed objects and the
//! time in, one `Decisions` value out. No rendered object goes in; the only
//! thing they take from rendering is the revision of each desired template.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::autoscale::held_replicas;
use videochat_operator::decisions::{DecisionInput, Decisions, decide};
use videochat_operator::labels::{Component, SECRET_CREATED_ANNOTATION};
use videochat_operator::observed::Observed;
use videochat_operator::resource::{SecretKeyRef, SecretRotationSpec, TurnExposureMode};
use videochat_operator::rollout::TemplateChoice;
use videochat_operator::rotation::RotationStep;

fn observed(objects: &[Value]) -> Observed {
    Observed::new(
        objects
            .iter()
            .map(|o| serde_json::from_value(o.clone()).expect("object")),
    )
}

fn decide_at(
    cluster: &VideoChatCluster,
    observed: &Observed,
    desired: &[(Component, &str)],
    now: &str,
) -> Decisions {
    let desired: BTreeMap<Component, String> =
        desired.iter().map(|(c, r)| (*c, (*r).to_owned())).collect();
    decide(DecisionInput {
        cluster,
        name: "demo",
        observed,
        desired_revisions: &desired,
        held_replicas: held_replicas(cluster, observed, "demo"),
        fresh_turn_secret: "fresh",
        now: now.parse::<Timestamp>().expect("time"),
    })
}

fn turn_secret(file: &str, created: Option<&str>) -> Value {
    let mut secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-turn-secret", "namespace": "videochat"},
        "data": {"turn-secret": STANDARD.encode(file)},
    });
    if let Some(created) = created {
        secret["metadata"]["annotations"] = json!({ SECRET_CREATED_ANNOTATION: created });
    }
    secret
}

#[test]
fn the_generated_turn_secret_is_created_kept_and_rotated() {
    let mut cluster = sample("minimal");
    let none = Observed::default();
    let created = decide_at(&cluster, &none, &[], NOW)
        .turn_secret
        .expect("generated");
    assert_eq!(created.file, "fresh\n");
    assert_eq!(created.created_annotation, None, "no rotation asked for");

    let kept = observed(&[turn_secret("old\n", None)]);
    let decision = decide_at(&cluster, &kept, &[], NOW)
        .turn_secret
        .expect("generated");
    assert_eq!(decision.file, "old\n");
    assert!(decision.rotation.is_none());

    // Rotation every 12h; the observed secret is a day old: one is added.
    cluster.spec.turn.secret_rotation = Some(SecretRotationSpec {
        interval: "12h".into(),
    });
    let old = observed(&[turn_secret("old\n", Some("2025-12-31T00:00:00Z"))]);
    let decisions = decide_at(&cluster, &old, &[], NOW);
    let rotated = decisions.turn_secret.as_ref().expect("generated");
    assert_eq!(rotated.file, "old\nfresh\n");
    assert_eq!(
        rotated.created_annotation.as_deref(),
        Some("2025-12-31T00:00:00Z,2026-01-01T00:00:00Z")
    );
    let rotation = rotated.rotation.as_ref().expect("rotating");
    assert_eq!(rotation.plan.step, RotationStep::Added);
    assert_eq!(
        decisions.recheck_after_seconds(NOW.parse().expect("time")),
        Some(12 * 3600),
        "the next addition is due in one interval"
    );

    // A Secret the user supplies is theirs.
    cluster.spec.turn.shared_secret_ref = Some(SecretKeyRef {
        name: "mine".into(),
        key: "secret".into(),
    });
    assert_eq!(decide_at(&cluster, &old, &[], NOW).turn_secret, None);
}

#[test]
fn replicas_are_held_within_the_bounds_and_scaled_only_with_a_deployment() {
    let mut cluster = sample("minimal");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "demo-signaling", "namespace": "videochat"},
        "spec": {"replicas": 15, "selector": {}, "template": {}},
    });
    let seen = observed(&[deployment]);
    // Autoscaling off: the spec's count, whatever runs.
    let off = decide_at(&cluster, &seen, &[], NOW);
    assert_eq!(off.deployment_replicas(Component::Signaling), 2);
    assert!(off.scaling.is_empty());

    // On: the running count within the bounds (2-10); TURN has no
    // Deployment yet, so it starts at the minimum and is not scaled.
    cluster.spec.autoscaling.enabled = true;
    let on = decide_at(&cluster, &seen, &[], NOW);
    assert_eq!(on.held(Component::Signaling), 10);
    assert_eq!(on.held(Component::Turn), 2);
    assert!(on.scaling.contains_key(&Component::Signaling));
    assert!(!on.scaling.contains_key(&Component::Turn));
    assert_eq!(on.deployment_replicas(Component::Turn), 2);
}

#[test]
fn rollouts_are_decided_from_the_desired_revision_and_the_observed_workload() {
    let mut cluster = sample("minimal");
    let running = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "demo-signaling", "namespace": "videochat", "generation": 1},
        "spec": {"replicas": 2, "selector": {}, "template": {
            "metadata": {"annotations": {"videochat.dev/revision": "aaa"}}}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
    });
    let seen = observed(&[running]);
    let decisions = decide_at(
        &cluster,
        &seen,
        &[(Component::Signaling, "bbb"), (Component::Turn, "ccc")],
        NOW,
    );
    let signaling = &decisions.rollout.decisions[&Component::Signaling];
    assert_eq!(signaling.template, TemplateChoice::Desired);
    assert_eq!(signaling.desired_revision, "bbb");
    assert_eq!(
        decisions
            .rollout
            .applied_revision(Component::Signaling, "bbb"),
        "bbb"
    );
    assert!(decisions.rollout.kept_templates.is_empty());
    // TURN exists in the spec but not in the cluster: created, not rolled.
    assert!(
        decisions.rollout.decisions[&Component::Turn]
            .health
            .is_none()
    );

    // TURN with a Service per relay runs as a StatefulSet and is tracked
    // like the others: a StatefulSet of another revision is rolling.
    cluster.spec.turn.exposure.mode = TurnExposureMode::LoadBalancer;
    let relays = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo-turn", "namespace": "videochat", "generation": 1},
        "spec": {"replicas": 2, "selector": {}, "serviceName": "demo-turn", "template": {
            "metadata": {"annotations": {"videochat.dev/revision": "aaa"}}}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "currentRevision": "r1", "updateRevision": "r1"},
    });
    let seen = observed(&[relays]);
    let decisions = decide_at(&cluster, &seen, &[(Component::Turn, "ccc")], NOW);
    let turn = &decisions.rollout.decisions[&Component::Turn];
    assert_eq!(turn.template, TemplateChoice::Desired);
    assert_eq!(turn.desired_revision, "ccc");
    assert!(turn.health.is_some(), "the relays' StatefulSet is judged");
}
