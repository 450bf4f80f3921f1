//! Status conditions: their types, and transition times kept from the
//! previous status while a condition's status stays.

use crate::resource::{Condition, VideoChatClusterStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Condition type set when a component was rolled back.
pub const ROLLED_BACK: &str = "RolledBack";

/// A condition without its generation and transition time, which are filled in
/// against the previous status.
pub(crate) fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// Keeps the previous transition time when a condition's status did not change.
pub(crate) fn finish_conditions(
    mut conditions: Vec<Condition>,
    previous: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    for c in &mut conditions {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
    }
    conditions
}

/// Sets `condition` on the status, its transition time kept from `previous`
/// while its status stays.
pub(crate) fn set_condition(
    status: &mut VideoChatClusterStatus,
    previous: &[Condition],
    mut condition: Condition,
    now: &str,
) {
    condition.observed_generation = status.observed_generation;
    condition.last_transition_time = previous
        .iter()
        .find(|p| p.type_ == condition.type_ && p.status == condition.status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == condition.type_)
    {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}
