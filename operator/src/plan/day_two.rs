//! The day-two decisions in the plan: rollbacks, scalings, drains, pod
//! deletions and pruned ControllerRevisions as actions; rollout tracking and
//! autoscaling state, RolledBack, Degraded and Progressing in the status; and
//! the events that go with them.

use super::action::Action;
use super::conditions::{ROLLED_BACK, condition, set_condition};
use super::events::{PlannedEvent, event};
use crate::autoscale::ScaleAction;
use crate::decisions::Decisions;
use crate::resource::{Phase, VideoChatClusterStatus};
use crate::rollout::RolloutAction;
use crate::rotation::RotationStep;

/// Adds the actions, status and events of the day-two decisions (rollback
/// and rollout order, autoscaling with drains, TURN secret rotation) to the
/// plan's.
pub(crate) fn report(
    decisions: &Decisions,
    previous: Option<&VideoChatClusterStatus>,
    actions: &mut Vec<Action>,
    status: &mut VideoChatClusterStatus,
    events: &mut Vec<PlannedEvent>,
    now: &str,
) {
    let previous_conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let mut rolled_back = Vec::new();
    let mut degraded = Vec::new();
    let mut waiting = Vec::new();
    for (component, decision) in &decisions.rollout.decisions {
        if let Some(slot) = status.components.get_mut(*component) {
            slot.rollout = Some(decision.tracking.clone());
            // The rollback target, once a revision stayed ready for the
            // stabilization period; until then what the status saw ready.
            if decision.tracking.last_good_revision.is_some() {
                slot.last_good_revision
                    .clone_from(&decision.tracking.last_good_revision);
            }
        }
        for action in &decision.actions {
            match action {
                RolloutAction::Rollback {
                    component,
                    from_revision,
                    to_revision,
                    reason,
                    message,
                } => {
                    actions.push(Action::Rollback {
                        component: component.as_str().into(),
                        from_revision: from_revision.clone(),
                        to_revision: to_revision.clone(),
                        reason: reason.as_str().into(),
                        message: message.clone(),
                    });
                    events.push(event(true, ROLLED_BACK, "Rollback", message.clone()));
                }
                RolloutAction::RecordGoodRevision {
                    component,
                    revision,
                } => events.push(event(
                    false,
                    "RevisionHealthy",
                    "RecordRevision",
                    format!(
                        "{} revision {revision} is healthy and kept as the rollback target",
                        component.as_str()
                    ),
                )),
            }
        }
        if let Some(r) = &decision.rolled_back {
            rolled_back.push(r.clone());
        }
        if let Some(d) = &decision.degraded {
            degraded.push(d.clone());
        }
        if let Some(behind) = decision.waiting_for {
            waiting.push(format!(
                "{} waits for {} to finish rolling out",
                component.as_str(),
                behind.as_str()
            ));
        }
    }
    for (component, pod) in &decisions.rollout.stuck_pods {
        actions.push(Action::DeletePod {
            component: component.as_str().into(),
            pod: pod.clone(),
            reason: "pod of a rolled-back revision that never became ready; the StatefulSet recreates it from the restored template".into(),
        });
    }
    for name in &decisions.rollout.prune {
        actions.push(Action::Delete {
            api_version: "apps/v1".into(),
            kind: "ControllerRevision".into(),
            name: name.clone(),
        });
    }

    for (component, plan) in &decisions.scaling {
        if let Some(slot) = status.components.get_mut(*component) {
            slot.autoscaling = Some(plan.status.clone());
            slot.desired = plan.replicas;
            slot.summary = format!("{}/{}", slot.ready, slot.desired);
        }
        for action in &plan.actions {
            match action {
                ScaleAction::Scale {
                    component,
                    from,
                    to,
                    reason,
                    message,
                } => {
                    actions.push(Action::Scale {
                        component: component.as_str().into(),
                        from: *from,
                        to: *to,
                        reason: reason.clone(),
                        message: message.clone(),
                    });
                    events.push(event(
                        false,
                        "Scaled",
                        "Scale",
                        format!(
                            "{} scaled from {from} to {to}: {message}",
                            component.as_str()
                        ),
                    ));
                }
                ScaleAction::DrainPod { component, pod } => {
                    actions.push(Action::Drain {
                        component: component.as_str().into(),
                        pod: pod.clone(),
                    });
                    events.push(event(
                        false,
                        "Draining",
                        "Drain",
                        format!(
                            "{} pod {pod} asked to drain before a scale-down",
                            component.as_str()
                        ),
                    ));
                }
                ScaleAction::DeletePod {
                    component,
                    pod,
                    reason,
                } => {
                    actions.push(Action::DeletePod {
                        component: component.as_str().into(),
                        pod: pod.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }

    if let Some(rotation) = decisions
        .turn_secret
        .as_ref()
        .and_then(|t| t.rotation.as_ref())
        && matches!(
            rotation.plan.step,
            RotationStep::Added | RotationStep::Removed | RotationStep::AddedAndRemoved
        )
    {
        events.push(event(
            false,
            "SecretRotated",
            "Rotate",
            format!("Secret {}: {}", rotation.secret, rotation.plan.message),
        ));
    }

    // Conditions: RolledBack always present; Degraded and Progressing
    // refined by the rollout decisions.
    let rolled_back_condition = if rolled_back.is_empty() {
        condition(
            ROLLED_BACK,
            false,
            "NoRollback",
            "no revision was rolled back".into(),
        )
    } else {
        let reason = rolled_back[0].reason.clone();
        let message = rolled_back
            .iter()
            .map(|r| r.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        condition(ROLLED_BACK, true, &reason, message)
    };
    set_condition(status, &previous_conditions, rolled_back_condition, now);

    let theirs_degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .is_some_and(|c| c.status == "True" && c.reason != "ProgressDeadlineExceeded");
    if !theirs_degraded {
        let mut reasons: Vec<(String, String)> = rolled_back
            .iter()
            .map(|r| (ROLLED_BACK.to_owned(), r.message.clone()))
            .collect();
        reasons.extend(
            degraded
                .iter()
                .map(|d| (d.reason.clone(), d.message.clone())),
        );
        if let Some((reason, _)) = reasons.first() {
            let message = reasons
                .iter()
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let reason = reason.clone();
            set_condition(
                status,
                &previous_conditions,
                condition("Degraded", true, &reason, message),
                now,
            );
            status.phase = Some(Phase::Degraded);
        }
    }
    if !waiting.is_empty() {
        let message = match status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing" && c.status == "True")
        {
            Some(c) => format!("{}; {}", c.message, waiting.join("; ")),
            None => waiting.join("; "),
        };
        set_condition(
            status,
            &previous_conditions,
            condition("Progressing", true, "RolloutInProgress", message),
            now,
        );
        if status.phase == Some(Phase::Running) {
            status.phase = Some(Phase::Progressing);
        }
    }
}

/// True while a day-two decision waits on time rather than on a change the
/// controller would be told about: a revision stabilizing before it counts
/// as good, or pods draining before a scale-down. The controller then looks
/// again soon instead of at the next resync.
pub fn needs_prompt_recheck(status: &VideoChatClusterStatus) -> bool {
    let c = &status.components;
    [&c.signaling, &c.turn, &c.redis, &c.mongodb]
        .into_iter()
        .flatten()
        .any(|component| {
            let stabilizing = component.rollout.as_ref().is_some_and(|r| {
                r.ready_since.is_some()
                    && r.revision.is_some()
                    && r.revision != r.last_good_revision
            });
            let draining = component
                .autoscaling
                .as_ref()
                .is_some_and(|a| !a.draining_pods.is_empty());
            stabilizing || draining
        })
}
