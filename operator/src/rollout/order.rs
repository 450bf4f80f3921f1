//! One component rolls at a time, databases first, then signaling, then
//! TURN: a bad signaling image must not take TURN down with it.

use std::collections::BTreeMap;

pub use crate::labels::Component;

/// Safe rollout order: stores before their clients, signaling before TURN.
pub const ROLLOUT_ORDER: [Component; 4] = [
    Component::Redis,
    Component::MongoDb,
    Component::Signaling,
    Component::Turn,
];

/// Where a component's rollout stands, for ordering purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Not created yet: creation is not a rollout and is never held back.
    Absent,
    /// Runs its target template and is healthy (or stalled but not bad).
    Settled,
    /// Its template must change, or the change is still progressing or has
    /// failed: later components wait.
    Rolling,
}

/// Whether a component may apply a new template now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Proceed,
    /// Keep the currently running template until `behind` settles.
    Wait {
        behind: Component,
    },
}

/// Gates every component on the ones before it in [`ROLLOUT_ORDER`]; a
/// component absent from `states` counts as absent.
pub fn gate_rollouts(states: &BTreeMap<Component, RolloutState>) -> BTreeMap<Component, Gate> {
    let mut gates = BTreeMap::new();
    let mut blocker: Option<Component> = None;
    for component in ROLLOUT_ORDER {
        let state = states
            .get(&component)
            .copied()
            .unwrap_or(RolloutState::Absent);
        let gate = match (blocker, state) {
            (Some(behind), RolloutState::Rolling) => Gate::Wait { behind },
            _ => Gate::Proceed,
        };
        gates.insert(component, gate);
        if blocker.is_none() && state == RolloutState::Rolling {
            blocker = Some(component);
        }
    }
    gates
}
