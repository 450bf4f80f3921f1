//! Autoscaling of signaling and TURN: replicas from per-pod load (scraped
//! from the pods' `/metrics`) and CPU, within bounds and stabilization
//! windows, and a scale-down that drains the least-loaded pods first so no
//! live call is cut short of the grace period.
//!
//! Pure decisions; the controller scrapes, drains and scales.

pub mod controller_io;
pub mod drain;
pub mod in_plan;
pub mod load;
pub mod metrics_text;
pub mod pod_admin;
pub mod policy;
pub mod replicas;

pub use drain::{
    DRAINING_DELETION_COST, DRAINING_SINCE_ANNOTATION, POD_DELETION_COST_ANNOTATION,
    ROLLOUT_IN_PROGRESS, ScaleAction, hold_scale_down, plan_scaling,
};
pub use load::{LoadMetric, PodLoad, pod_load};
pub use metrics_text::{MAX_METRICS_BYTES, parse_gauge};
pub use policy::AutoscalePolicy;
pub use replicas::{Recommendation, ReplicaDecision, ScaleReason, recommend_replicas};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Autoscaling state of one component, in the resource's status: what the
/// user sees, and what the next decision needs (the recommendations inside
/// the stabilization windows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Sum of the load gauge (connections or allocations) over the pods that
    /// reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_load: Option<i64>,
    /// Replicas the scaler wants now (after windows, step and bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Reason of the last decision (a `ScaleReason` name) and its explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_message: Option<String>,
    /// When replicas last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Pods asked to drain before a scale-down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining_pods: Vec<String>,
    /// Recent raw recommendations, newest last, kept for the stabilization windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
}
