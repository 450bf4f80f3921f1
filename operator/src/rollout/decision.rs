//! The rollback decision for one component, and the rollout order applied
//! across components.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::jiff::Timestamp;

use super::health::{FailureReason, Health, WorkloadObservation, assess};
use super::history::RevisionRecord;
use super::order::{Gate, RolloutState, gate_rollouts};
use super::policy::RolloutPolicy;
use crate::labels::Component;
use crate::resource::RolloutTracking;

/// Everything the rollback decision of one component looks at.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    pub component: Component,
    pub policy: &'a RolloutPolicy,
    /// metadata.generation of the VideoChatCluster.
    pub generation: i64,
    /// Revision of the template the spec asks for.
    pub desired_revision: &'a str,
    /// The workload as observed; None before it exists.
    pub observed: Option<&'a WorkloadObservation>,
    /// The last good template, read back from its ControllerRevision.
    pub last_good: Option<&'a RevisionRecord>,
    /// Tracking from the previous status.
    pub tracking: &'a RolloutTracking,
    pub now: Timestamp,
}

/// Which pod template to apply to the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The template rendered from the spec.
    Desired,
    /// The last good template (rollback, or a failed revision held back).
    LastGood { revision: String },
    /// The template the workload runs now: the rollout waits for an earlier
    /// component, or a failed revision has no good one to return to.
    Current,
}

/// Side effects of the decision, carried out by the I/O layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Keep the running template of `revision` in a ControllerRevision.
    RecordGoodRevision {
        component: Component,
        revision: String,
    },
    /// Replace `from_revision` by `to_revision`; a Warning Event says why.
    Rollback {
        component: Component,
        from_revision: String,
        to_revision: String,
        reason: FailureReason,
        message: String,
    },
}

/// Why the component is rolled back (condition RolledBack=True).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolledBack {
    pub bad_revision: String,
    pub good_revision: Option<String>,
    pub reason: String,
    pub message: String,
}

/// Why the component is degraded without a rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DegradedReason {
    pub reason: String,
    pub message: String,
}

/// Outcome of the decision for one component.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutDecision {
    pub component: Component,
    pub template: TemplateChoice,
    /// None when the workload does not exist yet.
    pub health: Option<Health>,
    pub tracking: RolloutTracking,
    pub actions: Vec<RolloutAction>,
    pub rolled_back: Option<RolledBack>,
    pub degraded: Option<DegradedReason>,
    pub state: RolloutState,
    /// Set when the template change waits for an earlier component.
    pub waiting_for: Option<Component>,
    /// The revision the spec asks for.
    pub desired_revision: String,
}

/// Decides what one component runs next: keep rolling, record a good
/// revision, roll back a bad one, or hold a bad one back.
pub fn decide_rollout(input: &RolloutInput<'_>) -> RolloutDecision {
    let mut tracking = input.tracking.clone();
    // A new generation is a new intent: the failed revision may be tried again.
    if tracking
        .failed_generation
        .is_some_and(|g| g != input.generation)
    {
        tracking.failed_revision = None;
        tracking.failed_generation = None;
        tracking.failure_reason = None;
    }
    let mut decision = RolloutDecision {
        component: input.component,
        template: TemplateChoice::Desired,
        health: None,
        tracking,
        actions: Vec::new(),
        rolled_back: None,
        degraded: None,
        state: RolloutState::Absent,
        waiting_for: None,
        desired_revision: input.desired_revision.to_owned(),
    };
    let Some(observed) = input.observed else {
        return decision;
    };
    let (health, tracking) = assess(input.policy, observed, &decision.tracking, input.now);
    decision.tracking = tracking;
    decision.health = Some(health.clone());
    let desired = input.desired_revision;
    let runs_desired = observed.revision.as_deref() == Some(desired);
    let blocked = decision.tracking.failed_revision.as_deref() == Some(desired);
    let settled = matches!(health, Health::Healthy | Health::Stalled { .. });

    if blocked {
        let reason = decision
            .tracking
            .failure_reason
            .clone()
            .unwrap_or_else(|| "RevisionFailed".to_owned());
        let good = input.last_good.map(|r| r.revision.clone());
        decision.template = match &good {
            Some(revision) => TemplateChoice::LastGood {
                revision: revision.clone(),
            },
            None => TemplateChoice::Current,
        };
        decision.rolled_back = Some(RolledBack {
            bad_revision: desired.to_owned(),
            good_revision: good.clone(),
            message: format!(
                "{} revision {desired} failed ({reason}) and was rolled back to {}; it is not retried until the spec changes",
                input.component.as_str(),
                good.as_deref().unwrap_or("the running template")
            ),
            reason,
        });
        record_if_good(&mut decision, observed, &health);
        decision.state = if settled && !runs_desired {
            RolloutState::Settled
        } else {
            RolloutState::Rolling
        };
        return decision;
    }

    if !runs_desired {
        // The template changes with this apply; the new revision's clocks
        // start when it is observed.
        decision.state = RolloutState::Rolling;
        return decision;
    }

    match &health {
        Health::Healthy => {
            record_if_good(&mut decision, observed, &health);
            decision.state = RolloutState::Settled;
        }
        Health::Progressing { .. } => decision.state = RolloutState::Rolling,
        Health::Stalled { message } => {
            decision.degraded = Some(DegradedReason {
                reason: "RolloutStalled".to_owned(),
                message: format!("{}: {message}", input.component.as_str()),
            });
            decision.state = RolloutState::Settled;
        }
        Health::Failed { reason, message } => {
            decision.state = RolloutState::Rolling;
            let good = input.last_good.filter(|r| r.revision != desired);
            let blocked_downgrade = good.and_then(|good| {
                database_downgrade(input.component, observed.template.as_ref(), &good.template)
            });
            if let Some(why) = blocked_downgrade {
                decision.degraded = Some(DegradedReason {
                    reason: DATABASE_ROLLBACK_BLOCKED.to_owned(),
                    message: format!(
                        "{}: {message}; not rolled back automatically: {why}",
                        input.component.as_str()
                    ),
                });
                return decision;
            }
            match (input.policy.auto_rollback, good) {
                (true, Some(good)) => {
                    decision.tracking.failed_revision = Some(desired.to_owned());
                    decision.tracking.failed_generation = Some(input.generation);
                    decision.tracking.failure_reason = Some(reason.as_str().to_owned());
                    decision.template = TemplateChoice::LastGood {
                        revision: good.revision.clone(),
                    };
                    let text = format!(
                        "{} revision {desired} rolled back to {}: {message}",
                        input.component.as_str(),
                        good.revision
                    );
                    decision.actions.push(RolloutAction::Rollback {
                        component: input.component,
                        from_revision: desired.to_owned(),
                        to_revision: good.revision.clone(),
                        reason: *reason,
                        message: text.clone(),
                    });
                    decision.rolled_back = Some(RolledBack {
                        bad_revision: desired.to_owned(),
                        good_revision: Some(good.revision.clone()),
                        reason: reason.as_str().to_owned(),
                        message: text,
                    });
                }
                (auto_rollback, _) => {
                    let why = if !auto_rollback {
                        "automatic rollback is disabled (rollout.autoRollback: false)"
                    } else {
                        "there is no earlier healthy revision to roll back to"
                    };
                    decision.degraded = Some(DegradedReason {
                        reason: reason.as_str().to_owned(),
                        message: format!("{}: {message}; {why}", input.component.as_str()),
                    });
                }
            }
        }
    }
    decision
}

/// Degraded reason of a failed database revision whose rollback would cross
/// a major version.
pub const DATABASE_ROLLBACK_BLOCKED: &str = "DatabaseRollbackBlocked";

/// Major version in an image reference's tag (`mongo:7.0.4` -> 7,
/// `redis:7.4-alpine` -> 7); None without a tag that starts with a number
/// (a digest, `latest`).
pub fn image_major_version(image: &str) -> Option<u64> {
    let name_and_tag = image.split('@').next()?;
    let last_segment = name_and_tag.rsplit('/').next()?;
    let (_, tag) = last_segment.split_once(':')?;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn first_image(template: &PodTemplateSpec) -> Option<&str> {
    template.spec.as_ref()?.containers.first()?.image.as_deref()
}

/// Why rolling `component` from `failed` back to `good` is unsafe, when it
/// is: a database's on-disk format follows its major version (MongoDB's
/// feature compatibility version, Redis's RDB/AOF format), so going back a
/// major version can leave data the older server cannot read. Unknown
/// versions count as different when the images differ.
pub fn database_downgrade(
    component: Component,
    failed: Option<&PodTemplateSpec>,
    good: &PodTemplateSpec,
) -> Option<String> {
    if !matches!(component, Component::MongoDb | Component::Redis) {
        return None;
    }
    let failed_image = failed.and_then(first_image)?;
    let good_image = first_image(good)?;
    if failed_image == good_image {
        return None;
    }
    match (
        image_major_version(failed_image),
        image_major_version(good_image),
    ) {
        (Some(a), Some(b)) if a == b => None,
        (Some(a), Some(b)) => Some(format!(
            "the last good image {good_image} is major version {b}, the failed {failed_image} is {a}; a database is never moved across a major version without an operator (check the data, then set the image you want)"
        )),
        _ => Some(format!(
            "the major versions of {failed_image} and the last good {good_image} cannot be told apart from their tags; set the image you want"
        )),
    }
}

fn record_if_good(decision: &mut RolloutDecision, observed: &WorkloadObservation, health: &Health) {
    let (Health::Healthy, Some(revision)) = (health, observed.revision.as_ref()) else {
        return;
    };
    if decision.tracking.last_good_revision.as_ref() != Some(revision) {
        decision.tracking.last_good_revision = Some(revision.clone());
        decision.actions.push(RolloutAction::RecordGoodRevision {
            component: decision.component,
            revision: revision.clone(),
        });
    }
}

/// Applies the rollout order: a component whose template would change while
/// an earlier component is still rolling keeps its current template.
/// Rollbacks are never held: they return to a known good state. A
/// component that never had a good revision is still being set up, like a
/// new one: it holds nobody back.
pub fn apply_rollout_order(decisions: &mut BTreeMap<Component, RolloutDecision>) {
    let states = decisions
        .iter()
        .map(|(component, decision)| {
            let state = if decision.tracking.last_good_revision.is_none() {
                RolloutState::Absent
            } else {
                decision.state
            };
            (*component, state)
        })
        .collect();
    for (component, gate) in gate_rollouts(&states) {
        let Some(decision) = decisions.get_mut(&component) else {
            continue;
        };
        if let Gate::Wait { behind } = gate
            && decision.template == TemplateChoice::Desired
            && decision.state == RolloutState::Rolling
        {
            decision.template = TemplateChoice::Current;
            decision.waiting_for = Some(behind);
        }
    }
}

/// Starts the clocks of the revision each component is about to get, once
/// the template choices are final: the progress deadline of a revision
/// counts from when the operator applied it.
pub fn start_revision_clocks(decisions: &mut BTreeMap<Component, RolloutDecision>, now: Timestamp) {
    for decision in decisions.values_mut() {
        let applied = match &decision.template {
            TemplateChoice::Desired => Some(decision.desired_revision.clone()),
            TemplateChoice::LastGood { revision } => Some(revision.clone()),
            TemplateChoice::Current => None,
        };
        if let Some(revision) = applied
            && decision.tracking.revision.as_ref() != Some(&revision)
        {
            decision.tracking.revision = Some(revision);
            decision.tracking.revision_since = Some(now.into());
            decision.tracking.ready_since = None;
        }
    }
}
