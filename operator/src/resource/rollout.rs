//! How revisions roll out and when one is rolled back. The rollback
//! behaviour itself is the next operator milestone; the fields, their
//! defaults and the Deployment strategy they drive are in place now.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Rollout and rollback settings, shared by signaling and TURN.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Seconds a new revision has to become healthy before it counts as failed.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30, max = 7200))]
    pub progress_deadline_seconds: i32,
    /// Extra pods during a rollout, percent of replicas.
    #[serde(default = "default_max_surge")]
    #[schemars(range(min = 0, max = 100))]
    pub max_surge_percent: i32,
    /// Pods that may be unavailable during a rollout, percent of replicas.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub max_unavailable_percent: i32,
    /// Seconds all replicas of a new revision must stay ready before it
    /// counts as good (and becomes the rollback target).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_seconds: i32,
    /// Share of pods that must be ready for a revision to count as healthy.
    #[serde(default = "default_min_ready")]
    #[schemars(range(min = 1, max = 100))]
    pub min_ready_percent: i32,
    /// Container restarts within the deadline that mark a revision as crash looping.
    #[serde(default = "default_crash_loop_restarts")]
    #[schemars(range(min = 1, max = 100))]
    pub crash_loop_restarts: i32,
    /// Replace a failed revision with the last good one.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            progress_deadline_seconds: default_progress_deadline(),
            max_surge_percent: default_max_surge(),
            max_unavailable_percent: 0,
            stabilization_seconds: default_stabilization(),
            min_ready_percent: default_min_ready(),
            crash_loop_restarts: default_crash_loop_restarts(),
            auto_rollback: true,
        }
    }
}

fn default_progress_deadline() -> i32 {
    600
}
fn default_stabilization() -> i32 {
    60
}
fn default_max_surge() -> i32 {
    25
}
fn default_min_ready() -> i32 {
    100
}
fn default_crash_loop_restarts() -> i32 {
    3
}
fn default_true() -> bool {
    true
}
