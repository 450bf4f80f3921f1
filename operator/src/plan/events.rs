//! Events worth a human's attention, derived from the plan: objects created
//! or workloads changed, and transitions of phase or of the Degraded reason.
//! A reconcile that changes nothing produces none.

use super::action::{Action, Change};
use super::conditions::DEGRADED;
use crate::resource::VideoChatClusterStatus;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub type_: String,
    /// CamelCase reason.
    pub reason: String,
    /// CamelCase action.
    pub action: String,
    pub note: String,
}

/// An event, its note cut to what the Events API accepts.
pub(crate) fn event(warning: bool, reason: &str, action: &str, note: String) -> PlannedEvent {
    PlannedEvent {
        type_: if warning { "Warning" } else { "Normal" }.into(),
        reason: reason.into(),
        action: action.into(),
        // The Events API limits notes to 1 kB.
        note: note.chars().take(1000).collect(),
    }
}

pub(crate) fn planned_events(
    previous: Option<&VideoChatClusterStatus>,
    next: &VideoChatClusterStatus,
    actions: &[Action],
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    let list = |wanted: Change, workloads_only: bool| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Apply {
                    kind, name, change, ..
                } if *change == wanted
                    && (!workloads_only || kind == "Deployment" || kind == "StatefulSet") =>
                {
                    Some(format!("{kind}/{name}"))
                }
                _ => None,
            })
            .collect()
    };
    let created = list(Change::Create, false);
    if !created.is_empty() {
        events.push(event(
            false,
            "Created",
            "Apply",
            format!("created {}", created.join(", ")),
        ));
    }
    let updated = list(Change::Update, true);
    if !updated.is_empty() {
        events.push(event(
            false,
            "Updated",
            "Apply",
            format!("updated {}", updated.join(", ")),
        ));
    }
    let deleted: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { kind, name, .. } => Some(format!("{kind}/{name}")),
            _ => None,
        })
        .collect();
    if !deleted.is_empty() {
        events.push(event(
            false,
            "Pruned",
            "Delete",
            format!("deleted {}", deleted.join(", ")),
        ));
    }

    let degraded = |s: Option<&VideoChatClusterStatus>| {
        s.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == DEGRADED && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()))
        })
    };
    let (before, after) = (degraded(previous), degraded(Some(next)));
    if let Some((reason, message)) = &after
        && before.as_ref().map(|b| &b.0) != Some(reason)
    {
        events.push(event(true, reason, "Reconcile", message.clone()));
    }
    let phase_before = previous.and_then(|s| s.phase);
    if let Some(phase) = next.phase
        && phase_before != Some(phase)
        && phase == crate::resource::Phase::Running
    {
        events.push(event(
            false,
            "Ready",
            "Reconcile",
            "all components are ready".into(),
        ));
    }
    events
}
