//! Health of a revision, from what the Deployment or StatefulSet and its pods
//! report.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;

use super::policy::RolloutPolicy;
use super::revision::{pod_revision, revision_of};
use crate::resource::RolloutTracking;

/// The facts about a workload that rollout health depends on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadObservation {
    /// Revision label of the workload's current pod template.
    pub revision: Option<String>,
    /// The controller has seen the latest spec (observedGeneration caught up).
    pub generation_observed: bool,
    pub desired: i32,
    /// All pods, of any revision (old ones still terminating count here).
    pub total: i32,
    /// Pods on the current template.
    pub updated: i32,
    /// Ready pods on the current template.
    pub ready_updated: i32,
    /// Deployment condition Progressing=False, reason ProgressDeadlineExceeded.
    pub progress_deadline_exceeded: bool,
    /// Highest container restart count among pods of the current revision,
    /// over each pod's lifetime (a figure for messages; judging uses
    /// [`Self::restarts_since`]).
    pub max_restarts: i32,
    /// Restart facts of every container of the current revision's pods.
    pub restarts: Vec<ContainerRestarts>,
    /// Pods of the current revision that are in CrashLoopBackOff right now.
    pub crash_looping_pods: Vec<String>,
    /// The current pod template, so a later rollback or a held rollout can re-apply it.
    pub template: Option<PodTemplateSpec>,
}

impl WorkloadObservation {
    /// Observation of a Deployment and its pods (pods may be empty when not
    /// observed; counts then come from the Deployment's status alone).
    pub fn from_deployment(deployment: &Deployment, pods: &[Pod]) -> Self {
        let spec = &deployment.spec;
        let status = deployment.status.clone().unwrap_or_default();
        let template = Some(spec.template.clone());
        let revision = revision_of(&spec.template).map(str::to_owned);
        let desired = spec.replicas.unwrap_or(1);
        let generation = deployment.metadata.generation.unwrap_or(0);
        // A status of an earlier generation describes the previous template:
        // its conditions say nothing about the revision applied now.
        let generation_observed = status.observed_generation.unwrap_or(0) >= generation;
        let progress_deadline_exceeded = generation_observed
            && status.conditions.iter().flatten().any(|c| {
                c.type_.as_deref() == Some("Progressing")
                    && c.status.as_deref() == Some("False")
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            });
        let mut observation = Self {
            generation_observed,
            desired,
            total: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready_updated: status
                .updated_replicas
                .unwrap_or(0)
                .min(status.ready_replicas.unwrap_or(0)),
            progress_deadline_exceeded,
            revision,
            template,
            ..Self::default()
        };
        observation.add_pods(pods);
        observation
    }

    /// Observation of a StatefulSet and its pods.
    pub fn from_stateful_set(stateful_set: &StatefulSet, pods: &[Pod]) -> Self {
        let spec = &stateful_set.spec;
        let status = stateful_set.status.clone().unwrap_or_default();
        let template = Some(spec.template.clone());
        let revision = revision_of(&spec.template).map(str::to_owned);
        let generation = stateful_set.metadata.generation.unwrap_or(0);
        let rolled =
            status.update_revision.is_none() || status.current_revision == status.update_revision;
        let updated = status.updated_replicas.unwrap_or(0);
        let mut observation = Self {
            generation_observed: status.observed_generation.unwrap_or(0) >= generation,
            desired: spec.replicas.unwrap_or(1),
            total: status.replicas,
            updated,
            ready_updated: if rolled {
                status.ready_replicas.unwrap_or(0)
            } else {
                updated.min(status.ready_replicas.unwrap_or(0))
            },
            revision,
            template,
            ..Self::default()
        };
        observation.add_pods(pods);
        observation
    }

    /// Refines the counts from the pods of the current revision: readiness,
    /// restarts and crash loops are per pod facts.
    fn add_pods(&mut self, pods: &[Pod]) {
        let Some(revision) = self.revision.clone() else {
            return;
        };
        let current: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| pod_revision(p) == Some(revision.as_str()))
            .collect();
        if current.is_empty() {
            return;
        }
        self.ready_updated = current.iter().filter(|p| pod_is_ready(p)).count() as i32;
        for pod in current {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten();
            let mut crash_looping = false;
            let pod_created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
            for container in statuses {
                self.max_restarts = self.max_restarts.max(container.restart_count);
                self.restarts.push(ContainerRestarts {
                    pod_created,
                    count: container.restart_count,
                    last_finished: container
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.finished_at.as_ref())
                        .map(|t| t.0),
                });
                let waiting_reason = container
                    .state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref());
                crash_looping |= waiting_reason == Some("CrashLoopBackOff");
            }
            if crash_looping {
                self.crash_looping_pods
                    .push(pod.metadata.name.clone().unwrap_or_default());
            }
        }
    }

    /// The most restarts of one container since `since`; without per-pod
    /// facts, the lifetime figure.
    pub fn restarts_since(&self, since: Timestamp) -> i32 {
        if self.restarts.is_empty() {
            return self.max_restarts;
        }
        self.restarts
            .iter()
            .map(|r| r.since(since))
            .max()
            .unwrap_or(0)
    }

    /// Every desired replica runs the current template and is ready, and no
    /// pod of an older template is left.
    pub fn all_ready(&self) -> bool {
        self.generation_observed
            && self.updated >= self.desired
            && self.ready_updated >= self.desired
            && self.total <= self.desired
    }
}

/// Restarts of one container, with what is needed to tell whether they
/// happened since a point in time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerRestarts {
    /// When the pod was created.
    pub pod_created: Option<Timestamp>,
    /// The container's restartCount (over the pod's lifetime).
    pub count: i32,
    /// When the container's last run ended (lastState.terminated.finishedAt).
    pub last_finished: Option<Timestamp>,
}

impl ContainerRestarts {
    /// Restarts since `since`: all of them for a pod created since (or of
    /// unknown age); for an older pod (a rollback to a revision whose pods still run) only its
    /// last restart when that came after `since`, since earlier ones cannot
    /// be dated.
    pub fn since(&self, since: Timestamp) -> i32 {
        match self.pod_created {
            Some(created) if created < since => {
                i32::from(self.count > 0 && self.last_finished.is_some_and(|t| t >= since))
            }
            // Created since, or of unknown age: every restart counts.
            _ => self.count,
        }
    }
}

/// Pod condition Ready=True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Why a revision is bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    ProgressDeadlineExceeded,
    CrashLoop,
    InsufficientReadiness,
}

impl FailureReason {
    /// CamelCase reason, as used in conditions and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::CrashLoop => "CrashLoop",
            Self::InsufficientReadiness => "InsufficientReadiness",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health of the revision a workload runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Still rolling out or stabilizing; `message` says what is awaited.
    Progressing { message: String },
    /// All desired replicas ready for the stabilization period.
    Healthy,
    /// Past the deadline, at least minReadyPercent ready but not all: not bad
    /// enough to roll back (often a capacity problem), reported as Degraded.
    Stalled { message: String },
    /// Bad: rolled back when allowed.
    Failed {
        reason: FailureReason,
        message: String,
    },
}

/// Updates the tracking with a new observation (revision changes restart the
/// clocks) and judges the revision's health at `now`.
pub fn assess(
    policy: &RolloutPolicy,
    observed: &WorkloadObservation,
    tracking: &RolloutTracking,
    now: Timestamp,
) -> (Health, RolloutTracking) {
    let mut next = tracking.clone();
    if next.revision != observed.revision || next.revision_since.is_none() {
        next.revision.clone_from(&observed.revision);
        next.revision_since = Some(now.into());
        next.ready_since = None;
    }
    let all_ready = observed.all_ready();
    if !all_ready {
        next.ready_since = None;
    } else if next.ready_since.is_none() {
        next.ready_since = Some(now.into());
    }
    let since = next.revision_since.as_ref().map_or(now, |t| t.0);
    let elapsed = now.as_second() - since.as_second();
    let revision = observed.revision.as_deref().unwrap_or("(unlabelled)");

    // A revision judged good stays good: deadlines and restarts judge a
    // rollout, and a later NotReady pod (a drain, a scale-up, a node going
    // away) is not a failed rollout.
    if observed.revision.is_some() && next.last_good_revision == observed.revision {
        return (Health::Healthy, next);
    }
    let restarts = observed.restarts_since(since);
    if restarts > policy.max_restarts {
        let pods = if observed.crash_looping_pods.is_empty() {
            String::new()
        } else {
            format!(
                " (crash looping: {})",
                observed.crash_looping_pods.join(", ")
            )
        };
        return (
            Health::Failed {
                reason: FailureReason::CrashLoop,
                message: format!(
                    "revision {revision}: a container restarted {restarts} times since the revision started, more than maxRestarts {}{pods}",
                    policy.max_restarts
                ),
            },
            next,
        );
    }
    if observed.progress_deadline_exceeded && !all_ready {
        return (
            Health::Failed {
                reason: FailureReason::ProgressDeadlineExceeded,
                message: format!(
                    "revision {revision}: the workload reports ProgressDeadlineExceeded with {}/{} ready",
                    observed.ready_updated, observed.desired
                ),
            },
            next,
        );
    }
    if all_ready {
        let ready_for = next
            .ready_since
            .as_ref()
            .map_or(0, |t| now.as_second() - t.0.as_second());
        if ready_for >= policy.stabilization_seconds {
            return (Health::Healthy, next);
        }
        return (
            Health::Progressing {
                message: format!(
                    "revision {revision}: all {} replicas ready for {ready_for}s of {}s stabilization",
                    observed.desired, policy.stabilization_seconds
                ),
            },
            next,
        );
    }
    if elapsed >= policy.progress_deadline_seconds {
        let desired = i64::from(observed.desired.max(0));
        let ready = i64::from(observed.ready_updated.max(0));
        let message = format!(
            "revision {revision}: {ready}/{desired} replicas ready after {elapsed}s (deadline {}s, minReadyPercent {})",
            policy.progress_deadline_seconds, policy.min_ready_percent
        );
        if ready * 100 < desired * i64::from(policy.min_ready_percent) {
            return (
                Health::Failed {
                    reason: FailureReason::InsufficientReadiness,
                    message,
                },
                next,
            );
        }
        return (Health::Stalled { message }, next);
    }
    (
        Health::Progressing {
            message: format!(
                "revision {revision}: {}/{} replicas ready, {}s of {}s deadline",
                observed.ready_updated, observed.desired, elapsed, policy.progress_deadline_seconds
            ),
        },
        next,
    )
}
