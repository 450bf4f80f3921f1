//! The rollout settings that the decisions read, independent of how the
//! custom resource spells them.

/// Rollout health rules of one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// A revision that is not healthy this long after it appeared is judged
    /// by its readiness; Deployments also report ProgressDeadlineExceeded.
    pub progress_deadline_seconds: i64,
    /// All desired replicas must stay ready this long before a revision is good.
    pub stabilization_seconds: i64,
    /// A container of the new revision restarting more often than this is a crash loop.
    pub max_restarts: i32,
    /// At the deadline, fewer ready replicas than this share of desired is bad.
    pub min_ready_percent: i32,
    /// Replace a bad revision by the last good one (otherwise only report Degraded).
    pub auto_rollback: bool,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            progress_deadline_seconds: 600,
            stabilization_seconds: 60,
            max_restarts: 3,
            min_ready_percent: 100,
            auto_rollback: true,
        }
    }
}
