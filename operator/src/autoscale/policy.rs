//! Autoscaling settings of one component, as the decisions read them.

/// Bounds, targets and windows for one component.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalePolicy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Connections (signaling) or allocations (TURN) one pod should carry.
    pub target_load_per_pod: Option<f64>,
    /// CPU use per pod, percent of its request.
    pub target_cpu_percent: Option<f64>,
    /// A higher recommendation must hold this long before scaling up.
    pub scale_up_window_seconds: i64,
    /// A lower recommendation must hold this long before scaling down.
    pub scale_down_window_seconds: i64,
    /// Most pods added or removed in one step.
    pub max_step: i32,
    /// Longest a draining pod keeps its sessions before it is removed anyway.
    pub drain_grace_seconds: i64,
    /// No change while the load is within this share of the target (0.1 =
    /// 10 %), as the HorizontalPodAutoscaler does, so replicas do not flap.
    pub tolerance: f64,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            target_load_per_pod: None,
            target_cpu_percent: None,
            scale_up_window_seconds: 0,
            scale_down_window_seconds: 300,
            max_step: 2,
            drain_grace_seconds: 3600,
            tolerance: 0.1,
        }
    }
}
