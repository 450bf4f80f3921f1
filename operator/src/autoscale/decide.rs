//! The autoscaling decisions of one reconcile: replicas for signaling and
//! TURN from per-pod load and CPU, drains and pod deletions, and the
//! replicas every workload keeps before the scaler speaks.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;

use super::drain::{ScalingPlan, hold_scale_down, plan_scaling};
use super::load::{LoadMetric, pod_load};
use super::load_document::{observed_cpu, observed_load};
use super::policy::AutoscalePolicy;
use super::rolling::rolling_out;
use crate::labels::Component;
use crate::observed::Observed;
use crate::resource::{AutoscalingSpec, VideoChatCluster};
use crate::rollout::decision::RolloutDecision;

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

/// The replicas of a component's workload before this reconcile's scaling
/// decision: the spec's; with autoscaling on, the workload's current count
/// (observed on a workload of `kind`) kept within the bounds.
fn bounded_replicas(
    cluster: &VideoChatCluster,
    observed: &Observed,
    name: &str,
    component: Component,
    kind: &str,
    spec_replicas: i32,
) -> i32 {
    let autoscaling = &cluster.spec.autoscaling;
    if !autoscaling.enabled {
        return spec_replicas;
    }
    let bounds = match component {
        Component::Signaling => &autoscaling.signaling,
        Component::Turn => &autoscaling.turn,
        _ => return spec_replicas,
    };
    let workload = component.workload_name(name);
    let current = match kind {
        "StatefulSet" => observed
            .typed::<StatefulSet>("StatefulSet", &workload)
            .and_then(|s| s.spec.replicas),
        _ => observed
            .typed::<Deployment>("Deployment", &workload)
            .and_then(|d| d.spec.replicas),
    }
    .unwrap_or(bounds.min_replicas);
    current.clamp(
        bounds.min_replicas,
        bounds.max_replicas.max(bounds.min_replicas),
    )
}

/// Replicas each workload keeps before the scaler speaks: the spec's, or
/// with autoscaling on the current count within the bounds (the scaler owns
/// it); one for each database.
pub fn held_replicas(
    cluster: &VideoChatCluster,
    observed: &Observed,
    name: &str,
) -> BTreeMap<Component, i32> {
    let spec = &cluster.spec;
    // TURN with a Service per relay runs as a StatefulSet.
    let turn_kind = spec.turn.exposure.mode.workload_kind();
    BTreeMap::from([
        (
            Component::Signaling,
            bounded_replicas(
                cluster,
                observed,
                name,
                Component::Signaling,
                "Deployment",
                spec.signaling.replicas,
            ),
        ),
        (
            Component::Turn,
            bounded_replicas(
                cluster,
                observed,
                name,
                Component::Turn,
                turn_kind,
                spec.turn.replicas,
            ),
        ),
        (Component::Redis, 1),
        (Component::MongoDb, 1),
    ])
}

/// Scaling plans for the autoscaled components (those whose Deployment
/// exists: before that there is nothing to measure).
pub fn decide_scaling(
    cluster: &VideoChatCluster,
    observed: &Observed,
    name: &str,
    rollouts: &BTreeMap<Component, RolloutDecision>,
    now: Timestamp,
) -> BTreeMap<Component, ScalingPlan> {
    let spec = &cluster.spec.autoscaling;
    let mut plans = BTreeMap::new();
    if !spec.enabled {
        return plans;
    }
    let previous = cluster.status.clone().unwrap_or_default().components;
    for component in [Component::Signaling, Component::Turn] {
        let Some(policy) = policy_of(spec, component) else {
            continue;
        };
        let workload = component.workload_name(name);
        let Some(deployment) = observed.typed::<Deployment>("Deployment", &workload) else {
            continue;
        };
        let Some(current) = deployment.spec.replicas else {
            continue;
        };
        let pod_objects = observed.component_pods(name, component);
        let pods: Vec<_> = pod_objects
            .iter()
            .map(|pod| {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                pod_load(
                    pod,
                    observed_load(observed, &pod_name),
                    observed_cpu(observed, &pod_name),
                    now,
                )
            })
            .collect();
        let previous_status = previous
            .get(component)
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
        plans.insert(component, plan);
    }
    plans
}
