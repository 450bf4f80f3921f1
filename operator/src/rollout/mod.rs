//! Health-based rollback: revision hashing of pod templates, health
//! assessment of a revision from observed workload status, the rollback
//! decision, and the one-component-at-a-time rollout order.
//!
//! Everything here is pure (spec + observed state + `now` in, actions and
//! status out) so that `plan` and the controller make the same decisions.

pub mod day_two;
pub mod decision;
pub mod health;
pub mod history;
pub mod in_plan;
pub mod order;
pub mod policy;
pub mod revision;

pub use decision::{RolloutAction, RolloutDecision, RolloutInput, TemplateChoice, decide_rollout};
pub use health::{FailureReason, Health, WorkloadObservation, assess};
pub use history::{RevisionRecord, controller_revision, last_good_record};
pub use order::{Component, Gate, ROLLOUT_ORDER, RolloutState, gate_rollouts};
pub use policy::RolloutPolicy;
pub use revision::{REVISION_ANNOTATION, pod_revision, revision_hash, revision_of, stamp_revision};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator remembers about one component's rollout between
/// reconciles; lives in the resource's status so that a restarted (or newly
/// elected) operator continues where the previous one stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTracking {
    /// Revision (pod template hash) currently running or rolling out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the operator first saw `revision` on the workload; the progress
    /// deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_since: Option<Time>,
    /// When all desired replicas of `revision` were first seen ready; the
    /// stabilization period counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// Last revision that became healthy; its template is kept in a
    /// ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    /// A revision that failed and was rolled back; not tried again while the
    /// resource's generation stays `failedGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// Why `failedRevision` was judged bad (a `FailureReason` name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}
