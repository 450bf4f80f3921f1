//! The one decisions value of a reconcile: what the pure deciders (rollout,
//! autoscale, TURN secret rotation) made of the spec and the observed state.
//! Rendering builds every object from the spec and this value; nothing here
//! reads or writes rendered objects.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::autoscale::{ScalingPlan, decide_scaling};
use crate::labels::Component;
use crate::observed::Observed;
use crate::resource::VideoChatCluster;
use crate::rollout::{RolloutDecisions, RolloutsInput, decide_rollouts};
use crate::rotation::{TurnSecret, TurnSecretInput, decide_turn_secret};

/// What the deciders read.
pub struct DecisionInput<'a> {
    pub cluster: &'a VideoChatCluster,
    /// The resource's name.
    pub name: &'a str,
    pub observed: &'a Observed,
    /// Revision of the pod template the spec asks for, per workload.
    pub desired_revisions: &'a BTreeMap<Component, String>,
    /// Replicas before scaling ([`crate::autoscale::held_replicas`]).
    pub held_replicas: BTreeMap<Component, i32>,
    /// A freshly generated TURN secret, used only when one is created or
    /// added by a rotation.
    pub fresh_turn_secret: &'a str,
    pub now: Timestamp,
}

/// Everything decided for one reconcile.
#[derive(Debug)]
pub struct Decisions {
    /// Replicas before scaling: the spec's, or with autoscaling the current
    /// count within the bounds.
    pub held_replicas: BTreeMap<Component, i32>,
    pub rollout: RolloutDecisions,
    pub scaling: BTreeMap<Component, ScalingPlan>,
    /// The generated TURN secret; None when the user supplies it.
    pub turn_secret: Option<TurnSecret>,
}

/// Runs the deciders: rollout first (the scaler holds a scale-down while a
/// component rolls), then scaling, then the TURN secret.
pub fn decide(input: DecisionInput<'_>) -> Decisions {
    let rollout = decide_rollouts(&RolloutsInput {
        cluster: input.cluster,
        name: input.name,
        observed: input.observed,
        desired_revisions: input.desired_revisions,
        now: input.now,
    });
    let scaling = decide_scaling(
        input.cluster,
        input.observed,
        input.name,
        &rollout.decisions,
        input.now,
    );
    let turn_secret = decide_turn_secret(&TurnSecretInput {
        cluster: input.cluster,
        name: input.name,
        observed: input.observed,
        fresh_secret: input.fresh_turn_secret,
        now: input.now,
    });
    Decisions {
        held_replicas: input.held_replicas,
        rollout,
        scaling,
        turn_secret,
    }
}

impl Decisions {
    /// Replicas before scaling.
    pub fn held(&self, component: Component) -> i32 {
        self.held_replicas.get(&component).copied().unwrap_or(1)
    }

    /// Replicas a component's Deployment gets: the scaler's, else held.
    pub fn deployment_replicas(&self, component: Component) -> i32 {
        self.scaling
            .get(&component)
            .map_or_else(|| self.held(component), |plan| plan.replicas)
    }

    /// Seconds from `now` until the secret rotation's next change is due.
    pub fn recheck_after_seconds(&self, now: Timestamp) -> Option<i64> {
        let due = self
            .turn_secret
            .as_ref()?
            .rotation
            .as_ref()?
            .plan
            .next_change?;
        Some((due.as_second() - now.as_second()).max(1))
    }
}
