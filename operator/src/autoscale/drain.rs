//! Drain-aware scaling: on scale-down the least-loaded pods are asked to
//! drain, marked so the ReplicaSet deletes exactly them, and replicas drop
//! only when they are empty or their grace period has passed.

use k8s_openapi::jiff::Timestamp;

use super::load::PodLoad;
use super::policy::AutoscalePolicy;
use super::replicas::{ScaleReason, recommend_replicas};
use crate::labels::Component;
use crate::resource::AutoscaleStatus;

pub use crate::labels::{
    DRAINING_DELETION_COST, DRAINING_SINCE_ANNOTATION, POD_DELETION_COST_ANNOTATION,
};

/// What the controller does for the scaler.
#[derive(Clone, Debug, PartialEq)]
pub enum ScaleAction {
    /// Set the workload's replicas.
    Scale {
        component: Component,
        from: i32,
        to: i32,
        reason: String,
        message: String,
    },
    /// Ask the pod to drain (its admin endpoint), then annotate it with
    /// [`DRAINING_SINCE_ANNOTATION`] and [`POD_DELETION_COST_ANNOTATION`].
    DrainPod { component: Component, pod: String },
    /// A drained pod that is no longer to be removed by a scale-down (load
    /// rose again) and is now empty or past its grace: delete it so the
    /// ReplicaSet starts a fresh one in its place.
    DeletePod {
        component: Component,
        pod: String,
        reason: String,
    },
}

/// The scaler's output for one component.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingPlan {
    /// Replicas to write on the workload now.
    pub replicas: i32,
    pub actions: Vec<ScaleAction>,
    pub status: AutoscaleStatus,
}

/// A pod counts as drained once it is seen marked draining (so the
/// ReplicaSet removes exactly it: a pod whose drain request or mark failed is
/// never taken down by a lower replica count) and is empty or past its grace.
fn drained(pod: &PodLoad, policy: &AutoscalePolicy, now: Timestamp) -> bool {
    if pod.draining_since.is_none() {
        return false;
    }
    let empty = pod.load == Some(0.0);
    let grace_over = pod
        .draining_since
        .is_some_and(|since| now.as_second() - since.as_second() >= policy.drain_grace_seconds);
    empty || grace_over
}

/// Decides replicas, drains and deletions for one component.
pub fn plan_scaling(
    component: Component,
    policy: &AutoscalePolicy,
    current_replicas: i32,
    pods: &[PodLoad],
    previous: &AutoscaleStatus,
    now: Timestamp,
) -> ScalingPlan {
    let decision = recommend_replicas(
        policy,
        current_replicas,
        pods,
        &previous.recommendations,
        now,
    );
    let live: Vec<&PodLoad> = pods.iter().filter(|p| !p.terminating).collect();
    let mut actions = Vec::new();
    let mut replicas = current_replicas;
    let mut message = decision.message.clone();
    let mut chosen: Vec<&PodLoad> = Vec::new();

    if decision.desired < current_replicas {
        let remove = (current_replicas - decision.desired) as usize;
        let mut candidates = live.clone();
        // Pods already draining first (the choice must not wander between
        // reconciles), then pods that are not ready, then the least loaded;
        // a pod without a load figure last, since it may carry anything.
        candidates.sort_by(|a, b| {
            let key = |p: &PodLoad| (p.draining_since.is_none(), p.ready, p.load.is_none());
            key(a)
                .cmp(&key(b))
                .then(a.load.unwrap_or(0.0).total_cmp(&b.load.unwrap_or(0.0)))
                .then(a.name.cmp(&b.name))
        });
        chosen = candidates.into_iter().take(remove).collect();
        for pod in &chosen {
            if pod.draining_since.is_none() {
                actions.push(ScaleAction::DrainPod {
                    component,
                    pod: pod.name.clone(),
                });
            }
        }
        let waiting: Vec<&&PodLoad> = chosen.iter().filter(|p| !drained(p, policy, now)).collect();
        if waiting.is_empty() {
            replicas = decision.desired;
        } else {
            let sessions: f64 = waiting.iter().filter_map(|p| p.load).sum();
            let grace_end = waiting
                .iter()
                .map(|p| p.draining_since.unwrap_or(now).as_second() + policy.drain_grace_seconds)
                .max()
                .and_then(|s| Timestamp::from_second(s).ok())
                .unwrap_or(now);
            message = format!(
                "{message}; draining {} until empty ({sessions} sessions left) or the grace period ends at {grace_end}",
                waiting
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    } else {
        replicas = decision.desired;
    }

    // Draining pods that this scale-down no longer removes: once they are
    // done, replace them (a drained server takes no new sessions).
    for pod in &live {
        if pod.draining_since.is_some()
            && !chosen.iter().any(|c| c.name == pod.name)
            && drained(pod, policy, now)
        {
            actions.push(ScaleAction::DeletePod {
                component,
                pod: pod.name.clone(),
                reason: "drained pod no longer needed for a scale-down; replaced by a fresh one"
                    .to_owned(),
            });
        }
    }

    let mut status = AutoscaleStatus {
        current_load: decision.load.map(|l| l.round() as i64),
        desired_replicas: Some(decision.desired),
        last_decision_reason: Some(decision.reason.as_str().to_owned()),
        last_decision_message: Some(message.clone()),
        last_scale_time: previous.last_scale_time.clone(),
        draining_pods: live
            .iter()
            .filter(|p| p.draining_since.is_some())
            .map(|p| p.name.clone())
            .chain(actions.iter().filter_map(|a| match a {
                ScaleAction::DrainPod { pod, .. } => Some(pod.clone()),
                _ => None,
            }))
            .collect(),
        recommendations: decision.recommendations.clone(),
    };
    status.draining_pods.sort();
    status.draining_pods.dedup();
    if replicas != current_replicas {
        status.last_scale_time = Some(now.into());
        let reason = if replicas > current_replicas {
            ScaleReason::ScaleUp
        } else {
            ScaleReason::ScaleDown
        };
        actions.push(ScaleAction::Scale {
            component,
            from: current_replicas,
            to: replicas,
            reason: if decision.reason == ScaleReason::MaxStep
                || decision.reason == ScaleReason::Bounds
            {
                decision.reason.as_str().to_owned()
            } else {
                reason.as_str().to_owned()
            },
            message,
        });
    }
    ScalingPlan {
        replicas,
        actions,
        status,
    }
}

/// Reason of a scale-down held back by a rollout.
pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";

/// Holds a scale-down while the component rolls out: the deletion cost that
/// makes the ReplicaSet remove the drained pods only ranks pods within one
/// ReplicaSet, so during a rollout a lower replica count can take pods of
/// the other ReplicaSet that were never drained. Replicas stay, no new pod
/// is asked to drain, and the decision is made again once the rollout is
/// over. Scale-ups and replacing drained pods go ahead.
pub fn hold_scale_down(
    mut plan: ScalingPlan,
    current_replicas: i32,
    previous: &AutoscaleStatus,
    rolling: &str,
) -> ScalingPlan {
    let lowers = plan.replicas < current_replicas;
    let drains = plan
        .actions
        .iter()
        .any(|a| matches!(a, ScaleAction::DrainPod { .. }));
    if !lowers && !drains {
        return plan;
    }
    let new_drains: Vec<String> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            ScaleAction::DrainPod { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect();
    plan.actions.retain(|a| {
        !matches!(a, ScaleAction::DrainPod { .. })
            && !matches!(a, ScaleAction::Scale { to, .. } if *to < current_replicas)
    });
    plan.status
        .draining_pods
        .retain(|pod| !new_drains.contains(pod));
    if lowers {
        plan.replicas = current_replicas;
        plan.status.desired_replicas = Some(current_replicas);
        plan.status
            .last_scale_time
            .clone_from(&previous.last_scale_time);
    }
    plan.status.last_decision_reason = Some(ROLLOUT_IN_PROGRESS.to_owned());
    plan.status.last_decision_message = Some(format!(
        "scale-down held while {rolling} rolls out; replicas stay at {current_replicas}"
    ));
    plan
}
