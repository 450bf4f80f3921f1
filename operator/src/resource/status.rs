//! The status the operator writes on the status subresource.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a VideoChatCluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VideoChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary: Pending, Progressing, Running or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, Progressing, Degraded and RolledBack, one of each type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Per component: pods and revisions.
    #[serde(default)]
    pub components: ComponentsStatus,
    /// Where clients connect.
    #[serde(default)]
    pub endpoints: Endpoints,
}

/// Summary phase: Pending (no pod ready yet), Progressing (some ready or
/// rolling out), Running (Ready), Degraded (a failure, see the condition).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Progressing,
    Running,
    Degraded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Running => "Running",
            Phase::Degraded => "Degraded",
        }
    }
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Progressing, Degraded or RolledBack.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human readable detail.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of each component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<ComponentStatus>,
}

/// Pods and revisions of one component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods wanted.
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods running the current revision.
    pub updated: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
    /// Hash of the pod template the operator wants now.
    pub revision: String,
    /// The newest revision that was fully rolled out and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    /// Rollout tracking: revision clocks, last good and failed revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutTracking>,
    /// Autoscaling: current load, desired replicas, last decision, drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::autoscale::AutoscaleStatus>,
}

/// Where clients connect.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// WebSocket URL of signaling (`ws://` or `wss://`, path `/ws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling_url: Option<String>,
    /// TURN URIs handed to clients, one per transport.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_uris: Vec<TurnUri>,
}

/// A TURN URI with its transport.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TurnUri {
    /// e.g. `turn:203.0.113.7:3478?transport=udp`.
    pub uri: String,
    /// udp or tcp.
    pub transport: String,
}
