//! Autoscaling of signaling and TURN: replicas from per-pod load (scraped
//! from the pods' `/metrics`) and CPU, within bounds and stabilization
//! windows, and a scale-down that drains the least-loaded pods first so no
//! live call is cut short of the grace period.
//!
//! Pure decisions; the controller (`crate::io`) scrapes, drains and scales,
//! and rendering writes the replicas decided here.

pub mod decide;
pub mod drain;
pub mod load;
pub mod load_document;
pub mod metrics_text;
pub mod policy;
pub mod replicas;
pub mod rolling;

pub use decide::{decide_scaling, held_replicas, load_metric, policy_of};
pub use drain::{
    DRAINING_DELETION_COST, DRAINING_SINCE_ANNOTATION, POD_DELETION_COST_ANNOTATION,
    ROLLOUT_IN_PROGRESS, ScaleAction, ScalingPlan, hold_scale_down, plan_scaling,
};
pub use load::{LoadMetric, PodLoad, pod_load};
pub use load_document::{POD_LOAD_API_VERSION, POD_LOAD_KIND, pod_load_object};
pub use metrics_text::{MAX_METRICS_BYTES, parse_gauge};
pub use policy::AutoscalePolicy;
pub use replicas::{ReplicaDecision, ScaleReason, recommend_replicas};
pub use rolling::rolling_out;

/// The autoscaling state kept in the resource's status (a CRD type).
pub use crate::resource::{AutoscaleStatus, Recommendation};
