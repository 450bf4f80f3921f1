//! Autoscaling settings. The scaler (load from the pods' `/metrics`, CPU,
//! drain-aware scale-down) is the next operator milestone; the fields and
//! defaults are fixed here so resources written today stay valid.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Replicas from load and CPU, within bounds, with stabilization windows.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// When on, `replicas` of signaling and TURN are decided by the operator.
    #[serde(default)]
    pub enabled: bool,
    /// Signaling: load is `videochat_signaling_connections` per pod.
    #[serde(default = "ComponentAutoscalingSpec::signaling_default")]
    pub signaling: ComponentAutoscalingSpec,
    /// TURN: load is `videochat_turn_allocations_active` per pod.
    #[serde(default = "ComponentAutoscalingSpec::turn_default")]
    pub turn: ComponentAutoscalingSpec,
    /// Seconds a higher recommendation must hold before scaling up.
    #[serde(default = "default_scale_up_window")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_up_stabilization_seconds: i32,
    /// Seconds a lower recommendation must hold before scaling down.
    #[serde(default = "default_scale_down_window")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i32,
    /// Longest time a draining pod keeps its live calls before it is removed.
    #[serde(default = "default_drain_grace")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_grace_seconds: i32,
    /// How often the pods' metrics are read.
    #[serde(default = "default_metrics_interval")]
    #[schemars(range(min = 5, max = 600))]
    pub metrics_interval_seconds: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            signaling: ComponentAutoscalingSpec::signaling_default(),
            turn: ComponentAutoscalingSpec::turn_default(),
            scale_up_stabilization_seconds: default_scale_up_window(),
            scale_down_stabilization_seconds: default_scale_down_window(),
            drain_grace_seconds: default_drain_grace(),
            metrics_interval_seconds: default_metrics_interval(),
        }
    }
}

fn default_scale_up_window() -> i32 {
    30
}
fn default_scale_down_window() -> i32 {
    300
}
fn default_drain_grace() -> i32 {
    3600
}
fn default_metrics_interval() -> i32 {
    15
}

/// Bounds and targets for one component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling minReplicas must not exceed maxReplicas"))]
pub struct ComponentAutoscalingSpec {
    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target load per pod (connections or allocations); 500 connections
    /// for signaling, 200 allocations for TURN when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_load_per_pod: Option<i32>,
    /// Target CPU use, percent of the CPU request.
    #[serde(default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_percent: i32,
    /// Most pods added or removed in one scaling step.
    #[serde(default = "default_max_step")]
    #[schemars(range(min = 1, max = 100))]
    pub max_step: i32,
}

impl ComponentAutoscalingSpec {
    pub fn signaling_default() -> Self {
        Self {
            min_replicas: 2,
            max_replicas: 10,
            target_load_per_pod: Some(500),
            target_cpu_percent: 70,
            max_step: default_max_step(),
        }
    }

    pub fn turn_default() -> Self {
        Self {
            min_replicas: 2,
            max_replicas: 10,
            target_load_per_pod: Some(200),
            target_cpu_percent: 70,
            max_step: default_max_step(),
        }
    }
}

fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_cpu() -> i32 {
    70
}
fn default_max_step() -> i32 {
    2
}
