//! Health-based rollback: revision hashing of pod templates, health
//! assessment of a revision from observed workload status, the rollback
//! decision, and the one-component-at-a-time rollout order.
//!
//! Everything here is pure (spec + observed state + `now` in, decisions
//! out) so that `plan` and the controller make the same decisions. Nothing
//! here reads or writes rendered objects: rendering reads these decisions.

pub mod decide;
pub mod decision;
pub mod health;
pub mod history;
pub mod order;
pub mod policy;
pub mod revision;

pub use decide::{KeptTemplate, RolloutDecisions, RolloutsInput, decide_rollouts, policy_of};
pub use decision::{RolloutAction, RolloutDecision, RolloutInput, TemplateChoice, decide_rollout};
pub use health::{FailureReason, Health, WorkloadObservation, assess};
pub use history::{RevisionRecord, controller_revision, last_good_record};
pub use order::{Component, Gate, ROLLOUT_ORDER, RolloutState, gate_rollouts};
pub use policy::RolloutPolicy;
pub use revision::{REVISION_ANNOTATION, pod_revision, revision_hash, revision_of, stamp_revision};

/// The rollout state kept in the resource's status (a CRD type).
pub use crate::resource::RolloutTracking;
