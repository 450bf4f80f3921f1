//! The rollout decisions of one reconcile: for every workload the spec asks
//! for, judge the revision the cluster runs, pick the template to apply (the
//! spec's, the last good one, or the running one while an earlier component
//! rolls), and name the good templates to keep and the records to prune.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;

use super::decision::{
    RolloutAction, RolloutDecision, RolloutInput, TemplateChoice, apply_rollout_order,
    decide_rollout, start_revision_clocks,
};
use super::health::{WorkloadObservation, pod_is_ready};
use super::history::{RevisionRecord, last_good_record, revisions_to_prune};
use super::order::ROLLOUT_ORDER;
use super::policy::RolloutPolicy;
use super::revision::pod_revision;
use crate::labels::Component;
use crate::observed::Observed;
use crate::resource::{RolloutSpec, RolloutTracking, VideoChatCluster};

/// What the rollout decisions read.
pub struct RolloutsInput<'a> {
    pub cluster: &'a VideoChatCluster,
    /// The resource's name.
    pub name: &'a str,
    pub observed: &'a Observed,
    /// Revision of the pod template the spec asks for, per workload the
    /// spec asks for.
    pub desired_revisions: &'a BTreeMap<Component, String>,
    pub now: Timestamp,
}

/// A pod template applied instead of the spec's: the last good one (a
/// rollback) or the one running now (the rollout waits).
#[derive(Clone, Debug, PartialEq)]
pub struct KeptTemplate {
    pub template: PodTemplateSpec,
    pub revision: String,
}

/// Everything the rollout step decided.
#[derive(Debug, Default)]
pub struct RolloutDecisions {
    pub decisions: BTreeMap<Component, RolloutDecision>,
    /// Workloads that get another template than the spec's.
    pub kept_templates: BTreeMap<Component, KeptTemplate>,
    /// Newly good revisions whose running template is kept in a
    /// ControllerRevision.
    pub records: Vec<(Component, RevisionRecord)>,
    /// ControllerRevisions beyond the history limit.
    pub prune: Vec<String>,
    /// Pods of a rolled-back StatefulSet still on the bad revision and not
    /// ready: a StatefulSet does not replace them by itself (it waits for
    /// them to become ready), so they are deleted.
    pub stuck_pods: Vec<(Component, String)>,
}

/// The rollout rules of the spec, as the decisions read them.
pub fn policy_of(spec: &RolloutSpec) -> RolloutPolicy {
    RolloutPolicy {
        progress_deadline_seconds: i64::from(spec.progress_deadline_seconds),
        stabilization_seconds: i64::from(spec.stabilization_seconds),
        max_restarts: spec.crash_loop_restarts,
        min_ready_percent: spec.min_ready_percent,
        auto_rollback: spec.auto_rollback,
    }
}

/// The kind of workload a component runs as: TURN with a Service per relay
/// pod is a StatefulSet (stable pod names for the Services' selectors).
pub fn workload_kind(component: Component, cluster: &VideoChatCluster) -> &'static str {
    match component {
        Component::Signaling => "Deployment",
        Component::Turn => cluster.spec.turn.exposure.mode.workload_kind(),
        Component::Redis | Component::MongoDb => "StatefulSet",
    }
}

fn observe_workload(
    observed: &Observed,
    name: &str,
    kind: &str,
    component: Component,
    pods: &[Pod],
) -> Option<WorkloadObservation> {
    let workload = component.workload_name(name);
    match kind {
        "Deployment" => observed
            .typed::<Deployment>("Deployment", &workload)
            .map(|d| WorkloadObservation::from_deployment(&d, pods)),
        _ => observed
            .typed::<StatefulSet>("StatefulSet", &workload)
            .map(|s| WorkloadObservation::from_stateful_set(&s, pods)),
    }
}

/// Decides every tracked workload's rollout.
pub fn decide_rollouts(input: &RolloutsInput<'_>) -> RolloutDecisions {
    let cluster = input.cluster;
    let now = input.now;
    let policy = policy_of(&cluster.spec.rollout);
    let generation = cluster.metadata.generation.unwrap_or(0);
    let previous = cluster.status.clone().unwrap_or_default().components;
    let stored: Vec<ControllerRevision> = input.observed.all_typed("ControllerRevision");

    let mut step = RolloutDecisions::default();
    let mut observations = BTreeMap::new();
    let mut records = BTreeMap::new();
    let mut all_pods = BTreeMap::new();
    for component in ROLLOUT_ORDER {
        let Some(desired) = input.desired_revisions.get(&component) else {
            continue;
        };
        let pods = input.observed.component_pods(input.name, component);
        let kind = workload_kind(component, cluster);
        let observed = observe_workload(input.observed, input.name, kind, component, &pods);
        all_pods.insert(component, pods);
        let tracking: RolloutTracking = previous
            .get(component)
            .and_then(|s| s.rollout.clone())
            .unwrap_or_default();
        let last_good = tracking
            .last_good_revision
            .as_deref()
            .and_then(|revision| last_good_record(&stored, input.name, component, revision));
        let decision = decide_rollout(&RolloutInput {
            component,
            policy: &policy,
            generation,
            desired_revision: desired,
            observed: observed.as_ref(),
            last_good: last_good.as_ref(),
            tracking: &tracking,
            now,
        });
        observations.insert(component, observed);
        records.insert(component, last_good);
        step.decisions.insert(component, decision);
    }
    apply_rollout_order(&mut step.decisions);
    start_revision_clocks(&mut step.decisions, now);
    for (component, decision) in &step.decisions {
        let (TemplateChoice::LastGood { .. }, Some(bad), "StatefulSet") = (
            &decision.template,
            decision.tracking.failed_revision.as_deref(),
            workload_kind(*component, cluster),
        ) else {
            continue;
        };
        for pod in all_pods.get(component).into_iter().flatten() {
            if pod_revision(pod) == Some(bad)
                && pod.metadata.deletion_timestamp.is_none()
                && !pod_is_ready(pod)
                && let Some(name) = pod.metadata.name.clone()
            {
                step.stuck_pods.push((*component, name));
            }
        }
    }

    for (component, decision) in &step.decisions {
        let component = *component;
        let observed = observations.get(&component).and_then(Option::as_ref);
        let kept = match &decision.template {
            TemplateChoice::Desired => None,
            TemplateChoice::LastGood { revision } => records
                .get(&component)
                .and_then(Option::as_ref)
                .map(|r: &RevisionRecord| KeptTemplate {
                    template: r.template.clone(),
                    revision: revision.clone(),
                }),
            TemplateChoice::Current => observed.and_then(|o| {
                Some(KeptTemplate {
                    template: o.template.clone()?,
                    revision: o.revision.clone()?,
                })
            }),
        };
        if let Some(kept) = kept {
            step.kept_templates.insert(component, kept);
        }
        // A newly good revision: keep its running template.
        if let (Some(good), Some(observation)) =
            (decision.tracking.last_good_revision.as_ref(), observed)
            && decision
                .actions
                .iter()
                .any(|a| matches!(a, RolloutAction::RecordGoodRevision { .. }))
            && let Some(template) = observation.template.clone()
        {
            step.records.push((
                component,
                RevisionRecord {
                    revision: good.clone(),
                    template,
                },
            ));
        }
        if let Some(good) = decision.tracking.last_good_revision.as_ref() {
            step.prune
                .extend(revisions_to_prune(&stored, input.name, component, good));
        }
    }
    step
}

impl RolloutDecisions {
    /// The revision a component's workload gets: the kept template's, else
    /// the spec's.
    pub fn applied_revision<'a>(&'a self, component: Component, desired: &'a str) -> &'a str {
        self.kept_templates
            .get(&component)
            .map_or(desired, |kept| kept.revision.as_str())
    }
}
