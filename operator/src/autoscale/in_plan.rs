//! Autoscaling inside `plan`: per-pod load from observed `PodLoad`
//! documents (what the controller scraped from the pods' `/metrics`, or
//! what a user feeds to `plan -f`), CPU from observed `PodMetrics` (the
//! metrics.k8s.io API), replicas written on the Deployment, drain and pod
//! deletion actions for the controller.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::json;

use super::drain::{ScalingPlan, hold_scale_down, plan_scaling};
use super::load::{LoadMetric, cpu_millicores_of, pod_load};
use super::policy::AutoscalePolicy;
use crate::labels::Component;
use crate::observed::Observed;
use crate::plan::{Ctx, type_of};
use crate::resource::AutoscalingSpec;
use crate::rollout::in_plan::{component_pods, component_status};
use crate::rollout::{RolloutDecision, TemplateChoice, pod_revision, revision_of};
use k8s_openapi::api::core::v1::Pod;

/// apiVersion of the load documents.
pub const POD_LOAD_API_VERSION: &str = "videochat.dev/v1alpha1";
/// Kind of the load documents: one per pod, `load` = the component's gauge.
pub const POD_LOAD_KIND: &str = "PodLoad";

/// The autoscaling rules of one component, as the decisions read them.
pub fn policy_of(spec: &AutoscalingSpec, component: Component) -> Option<AutoscalePolicy> {
    let bounds = match component {
        Component::Signaling => &spec.signaling,
        Component::Turn => &spec.turn,
        Component::Redis | Component::MongoDb => return None,
    };
    Some(AutoscalePolicy {
        min_replicas: bounds.min_replicas,
        max_replicas: bounds.max_replicas,
        target_load_per_pod: bounds.target_load_per_pod.map(f64::from),
        target_cpu_percent: Some(f64::from(bounds.target_cpu_percent)),
        scale_up_window_seconds: i64::from(spec.scale_up_stabilization_seconds),
        scale_down_window_seconds: i64::from(spec.scale_down_stabilization_seconds),
        max_step: bounds.max_step,
        drain_grace_seconds: i64::from(spec.drain_grace_seconds),
        tolerance: 0.1,
    })
}

/// The gauge a component's load comes from.
pub fn load_metric(component: Component) -> Option<LoadMetric> {
    match component {
        Component::Signaling => Some(LoadMetric::SignalingConnections),
        Component::Turn => Some(LoadMetric::TurnAllocations),
        Component::Redis | Component::MongoDb => None,
    }
}

/// A `PodLoad` document, as the controller records a scrape.
pub fn pod_load_object(namespace: &str, pod: &str, load: f64) -> DynamicObject {
    let mut object = DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: POD_LOAD_API_VERSION.into(),
            kind: POD_LOAD_KIND.into(),
        }),
        metadata: Default::default(),
        data: json!({ "load": load }),
    };
    object.metadata.name = Some(pod.to_owned());
    object.metadata.namespace = Some(namespace.to_owned());
    object
}

/// Load recorded for a pod, when a valid figure was observed.
fn observed_load(observed: &Observed, pod: &str) -> Option<f64> {
    observed
        .get(POD_LOAD_KIND, pod)?
        .data
        .get("load")?
        .as_f64()
        .filter(|l| l.is_finite() && *l >= 0.0)
}

/// CPU in use by a pod, from a metrics.k8s.io `PodMetrics` object.
fn observed_cpu(observed: &Observed, pod: &str) -> Option<f64> {
    let containers = observed
        .get("PodMetrics", pod)?
        .data
        .get("containers")?
        .as_array()?
        .clone();
    let mut total = 0.0;
    for container in containers {
        let cpu = container.get("usage")?.get("cpu")?.as_str()?;
        total += cpu_millicores_of(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            cpu.to_owned(),
        ))?;
    }
    Some(total)
}

/// Scaling plans for the autoscaled components; the Deployments in
/// `objects` get the replicas decided.
pub(crate) fn apply_autoscaling(
    ctx: &Ctx<'_>,
    objects: &mut [DynamicObject],
    rollouts: &BTreeMap<Component, RolloutDecision>,
    now: Timestamp,
) -> BTreeMap<Component, ScalingPlan> {
    let spec = &ctx.cluster.spec.autoscaling;
    let mut plans = BTreeMap::new();
    if !spec.enabled {
        return plans;
    }
    let previous = ctx.cluster.status.clone().unwrap_or_default().components;
    for component in [Component::Signaling, Component::Turn] {
        let Some(policy) = policy_of(spec, component) else {
            continue;
        };
        let name = component.workload_name(&ctx.name);
        // Before the Deployment exists there is nothing to measure.
        let Some(deployment) = ctx.observed.typed::<Deployment>("Deployment", &name) else {
            continue;
        };
        let Some(current) = deployment.spec.replicas else {
            continue;
        };
        let pod_objects = component_pods(ctx.observed, &ctx.name, component);
        let pods: Vec<_> = pod_objects
            .iter()
            .map(|pod| {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                pod_load(
                    pod,
                    observed_load(ctx.observed, &pod_name),
                    observed_cpu(ctx.observed, &pod_name),
                    now,
                )
            })
            .collect();
        let previous_status = component_status(&previous, component)
            .and_then(|s| s.autoscaling.clone())
            .unwrap_or_default();
        let mut plan = plan_scaling(component, &policy, current, &pods, &previous_status, now);
        if let Some(rolling) = rolling_out(
            component,
            rollouts.get(&component),
            &deployment,
            &pod_objects,
        ) {
            plan = hold_scale_down(plan, current, &previous_status, &rolling);
        }
        if let Some(object) = objects.iter_mut().find(|o| {
            type_of(o).1 == "Deployment" && o.metadata.name.as_deref() == Some(name.as_str())
        }) && let Some(spec) = object.data.get_mut("spec").and_then(|s| s.as_object_mut())
        {
            spec.insert("replicas".into(), json!(plan.replicas));
        }
        plans.insert(component, plan);
    }
    plans
}

/// What rolls out in `component`, when something does: this plan changes
/// the Deployment's template, the Deployment still runs pods of an older
/// template, or the live pods carry more than one revision.
pub fn rolling_out(
    component: Component,
    decision: Option<&RolloutDecision>,
    deployment: &Deployment,
    pods: &[Pod],
) -> Option<String> {
    let running = revision_of(&deployment.spec.template);
    let applied = decision.and_then(|d| match &d.template {
        TemplateChoice::Desired => Some(d.desired_revision.as_str()),
        TemplateChoice::LastGood { revision } => Some(revision.as_str()),
        TemplateChoice::Current => None,
    });
    // (A template without a revision was not rendered by the operator,
    // e.g. a trimmed `plan` input: it tells nothing.)
    if let (Some(applied), Some(running)) = (applied, running)
        && running != applied
    {
        return Some(format!("{} revision {applied}", component.as_str()));
    }
    if let Some(status) = &deployment.status
        && status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0)
    {
        return Some(format!(
            "{} (old pods still running: {} of {} updated)",
            component.as_str(),
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0)
        ));
    }
    let mut revisions: Vec<&str> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(pod_revision)
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    (revisions.len() > 1).then(|| {
        format!(
            "{} (pods of revisions {})",
            component.as_str(),
            revisions.join(", ")
        )
    })
}
