//! Writes that failed while a plan was carried out: each one becomes part of
//! the Degraded condition and a Warning Event, and the rest of the plan is
//! still carried out, so one object the API refuses (an immutable field, a
//! webhook) does not stop every other component from being reconciled.

use super::conditions::{DEGRADED, condition};
use super::events::{PlannedEvent, event};
use crate::resource::{Phase, VideoChatClusterStatus};
use crate::write_failure::WriteFailure;

/// Folds failed writes into the status to write (Degraded=True with the
/// first failure's reason, every failure in the message, phase Degraded) and
/// returns a Warning Event per failure. A status without failures is left as
/// it is.
pub fn report_write_failures(
    status: &mut VideoChatClusterStatus,
    previous: Option<&VideoChatClusterStatus>,
    failures: &[WriteFailure],
    now: &str,
) -> Vec<PlannedEvent> {
    let Some(first) = failures.first() else {
        return Vec::new();
    };
    let mut message = failures
        .iter()
        .map(WriteFailure::describe)
        .collect::<Vec<_>>()
        .join("; ");
    let earlier = status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| c.message.clone());
    if let Some(earlier) = earlier {
        message = format!("{message}; {earlier}");
    }
    let mut condition = condition(DEGRADED, true, first.write.reason(), message);
    condition.observed_generation = status.observed_generation;
    condition.last_transition_time = previous
        .into_iter()
        .flat_map(|p| p.conditions.iter())
        .find(|p| p.type_ == condition.type_ && p.status == condition.status)
        .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
    match status.conditions.iter_mut().find(|c| c.type_ == DEGRADED) {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
    status.phase = Some(Phase::Degraded);
    failures
        .iter()
        .map(|f| event(true, f.write.reason(), "Reconcile", f.describe()))
        .collect()
}
