//! The rollout decisions inside `plan`: for every workload the plan
//! renders, judge the revision the cluster runs, pick the template to apply
//! (the spec's, the last good one, or the running one while an earlier
//! component rolls), and keep good templates in ControllerRevisions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;

use super::decision::{
    RolloutDecision, RolloutInput, TemplateChoice, apply_rollout_order, decide_rollout,
    start_revision_clocks,
};
use super::health::WorkloadObservation;
use super::history::{RevisionRecord, controller_revision, last_good_record, revisions_to_prune};
use super::order::{Component, ROLLOUT_ORDER};
use super::policy::RolloutPolicy;
use super::{RolloutTracking, revision_of};
use crate::error::{Error, Result};
use crate::labels;
use crate::observed::Observed;
use crate::plan::{Ctx, to_dynamic, type_of};
use crate::resource::{ComponentStatus, ComponentsStatus, RolloutSpec, VideoChatCluster};

/// What the rollout step decided for the plan.
#[derive(Debug, Default)]
pub struct RolloutStep {
    pub decisions: BTreeMap<Component, RolloutDecision>,
    /// ControllerRevisions keeping newly good templates.
    pub revision_objects: Vec<DynamicObject>,
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

/// A component's slot in the status.
pub fn component_status(
    status: &ComponentsStatus,
    component: Component,
) -> Option<&ComponentStatus> {
    match component {
        Component::Signaling => status.signaling.as_ref(),
        Component::Turn => status.turn.as_ref(),
        Component::Redis => status.redis.as_ref(),
        Component::MongoDb => status.mongodb.as_ref(),
    }
}

/// Mutable access to a component's slot in the status.
pub fn component_status_mut(
    status: &mut ComponentsStatus,
    component: Component,
) -> Option<&mut ComponentStatus> {
    match component {
        Component::Signaling => status.signaling.as_mut(),
        Component::Turn => status.turn.as_mut(),
        Component::Redis => status.redis.as_mut(),
        Component::MongoDb => status.mongodb.as_mut(),
    }
}

/// Observed pods of one component of a cluster.
pub fn component_pods(observed: &Observed, cluster: &str, component: Component) -> Vec<Pod> {
    observed
        .iter()
        .filter(|o| type_of(o).1 == "Pod")
        .filter(|o| {
            let labels = o.metadata.labels.as_ref();
            let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
            label(labels::INSTANCE) == Some(cluster)
                && label(labels::COMPONENT) == Some(component.as_str())
        })
        .filter_map(|o| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
        })
        .collect()
}

fn workload_kind(component: Component) -> &'static str {
    match component {
        Component::Signaling | Component::Turn => "Deployment",
        Component::Redis | Component::MongoDb => "StatefulSet",
    }
}

fn template_of(object: &DynamicObject) -> Option<PodTemplateSpec> {
    serde_json::from_value(object.data.get("spec")?.get("template")?.clone()).ok()
}

fn set_template(object: &mut DynamicObject, template: &PodTemplateSpec) -> Result<()> {
    let value = serde_json::to_value(template).map_err(|e| Error::Serialize {
        what: "pod template".into(),
        message: e.to_string(),
    })?;
    if let Some(spec) = object.data.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.insert("template".into(), value);
    }
    Ok(())
}

fn observe_workload(
    ctx: &Ctx<'_>,
    component: Component,
    pods: &[Pod],
) -> Option<WorkloadObservation> {
    let name = component.workload_name(&ctx.name);
    match workload_kind(component) {
        "Deployment" => ctx
            .observed
            .typed::<Deployment>("Deployment", &name)
            .map(|d| WorkloadObservation::from_deployment(&d, pods)),
        _ => ctx
            .observed
            .typed::<StatefulSet>("StatefulSet", &name)
            .map(|s| WorkloadObservation::from_stateful_set(&s, pods)),
    }
}

/// Runs the rollout decisions over the workloads in `objects`, rewrites
/// their templates where a rollback or the rollout order says so, and
/// updates `revisions` to the revision actually applied.
pub(crate) fn apply_rollouts(
    ctx: &Ctx<'_>,
    objects: &mut [DynamicObject],
    revisions: &mut BTreeMap<Component, String>,
    now: Timestamp,
) -> Result<RolloutStep> {
    let cluster: &VideoChatCluster = ctx.cluster;
    let policy = policy_of(&cluster.spec.rollout);
    let generation = cluster.metadata.generation.unwrap_or(0);
    let previous = cluster.status.clone().unwrap_or_default().components;
    let stored: Vec<ControllerRevision> = ctx
        .observed
        .iter()
        .filter(|o| type_of(o).1 == "ControllerRevision")
        .filter_map(|o| {
            serde_json::to_value(o)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
        })
        .collect();

    let mut step = RolloutStep::default();
    let mut observations = BTreeMap::new();
    let mut records = BTreeMap::new();
    let mut all_pods = BTreeMap::new();
    for component in ROLLOUT_ORDER {
        let kind = workload_kind(component);
        let name = component.workload_name(&ctx.name);
        let Some(object) = objects
            .iter()
            .find(|o| type_of(o).1 == kind && o.metadata.name.as_deref() == Some(name.as_str()))
        else {
            continue;
        };
        let Some(desired) = template_of(object)
            .as_ref()
            .and_then(|t| revision_of(t).map(str::to_owned))
        else {
            continue;
        };
        let pods = component_pods(ctx.observed, &ctx.name, component);
        let observed = observe_workload(ctx, component, &pods);
        all_pods.insert(component, pods);
        let tracking: RolloutTracking = component_status(&previous, component)
            .and_then(|s| s.rollout.clone())
            .unwrap_or_default();
        let last_good = tracking
            .last_good_revision
            .as_deref()
            .and_then(|revision| last_good_record(&stored, &ctx.name, component, revision));
        let decision = decide_rollout(&RolloutInput {
            component,
            policy: &policy,
            generation,
            desired_revision: &desired,
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
            workload_kind(*component),
        ) else {
            continue;
        };
        for pod in all_pods.get(component).into_iter().flatten() {
            if super::revision::pod_revision(pod) == Some(bad)
                && pod.metadata.deletion_timestamp.is_none()
                && !super::health::pod_is_ready(pod)
                && let Some(name) = pod.metadata.name.clone()
            {
                step.stuck_pods.push((*component, name));
            }
        }
    }

    for (component, decision) in &step.decisions {
        let component = *component;
        let observed = observations.get(&component).and_then(Option::as_ref);
        let chosen: Option<(PodTemplateSpec, String)> = match &decision.template {
            TemplateChoice::Desired => None,
            TemplateChoice::LastGood { revision } => records
                .get(&component)
                .and_then(Option::as_ref)
                .map(|r: &RevisionRecord| (r.template.clone(), revision.clone())),
            TemplateChoice::Current => {
                observed.and_then(|o| Some((o.template.clone()?, o.revision.clone()?)))
            }
        };
        if let Some((template, revision)) = chosen {
            let kind = workload_kind(component);
            let name = component.workload_name(&ctx.name);
            if let Some(object) = objects
                .iter_mut()
                .find(|o| type_of(o).1 == kind && o.metadata.name.as_deref() == Some(name.as_str()))
            {
                set_template(object, &template)?;
            }
            revisions.insert(component, revision);
        }
        // A newly good revision: keep its running template.
        if let (Some(good), Some(observation)) =
            (decision.tracking.last_good_revision.as_ref(), observed)
            && decision
                .actions
                .iter()
                .any(|a| matches!(a, super::RolloutAction::RecordGoodRevision { .. }))
            && let Some(template) = observation.template.clone()
        {
            let record = RevisionRecord {
                revision: good.clone(),
                template,
            };
            let revision = controller_revision(
                &ctx.name,
                &ctx.namespace,
                ctx.owner.clone(),
                component,
                &record,
                generation,
            );
            let mut object = to_dynamic(&revision)?;
            object.types = Some(kube::api::TypeMeta {
                api_version: "apps/v1".into(),
                kind: "ControllerRevision".into(),
            });
            step.revision_objects.push(object);
        }
        if let Some(good) = decision.tracking.last_good_revision.as_ref() {
            step.prune
                .extend(revisions_to_prune(&stored, &ctx.name, component, good));
        }
    }
    Ok(step)
}
