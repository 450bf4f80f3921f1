//! The plan of one reconcile: decide (the pure deciders, see
//! [`crate::decisions`]), render (see [`crate::render`]), then the writes,
//! the status and the events. The `plan` subcommand, the controller and the
//! tests all run this same code.

mod action;
mod conditions;
mod day_two;
mod diff;
mod events;
mod failures;
mod planner;
mod status;

pub use crate::render::{FreshSecrets, TURN_SECRET_KEY};
pub use crate::write_failure::{FailedWrite, WriteFailure};
pub use action::{Action, Change, PRUNABLE_KINDS};
pub use conditions::{DEGRADED, PROGRESSING, READY, ROLLED_BACK};
pub use day_two::needs_prompt_recheck;
pub use diff::is_subset;
pub use events::PlannedEvent;
pub use failures::report_write_failures;
pub use planner::{Plan, PlanInput, cluster_key, parse_now, plan};
