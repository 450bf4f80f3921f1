//! The status the operator writes on the status subresource.

use crate::labels::Component;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
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
    pub rollout: Option<RolloutTracking>,
    /// Autoscaling: current load, desired replicas, last decision, drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscaleStatus>,
}

impl ComponentsStatus {
    /// A component's slot.
    pub fn get(&self, component: Component) -> Option<&ComponentStatus> {
        match component {
            Component::Signaling => self.signaling.as_ref(),
            Component::Turn => self.turn.as_ref(),
            Component::Redis => self.redis.as_ref(),
            Component::MongoDb => self.mongodb.as_ref(),
        }
    }

    /// Mutable access to a component's slot.
    pub fn get_mut(&mut self, component: Component) -> Option<&mut ComponentStatus> {
        match component {
            Component::Signaling => self.signaling.as_mut(),
            Component::Turn => self.turn.as_mut(),
            Component::Redis => self.redis.as_mut(),
            Component::MongoDb => self.mongodb.as_mut(),
        }
    }
}

/// What the operator remembers about one component's rollout between
/// reconciles; lives in the resource's status so that a restarted (or newly
/// elected) operator continues where the previous one stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTracking {
    /// Revision (pod template hash) currently running or rolling out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the operator first saw `revision` on the workload; the progress
    /// deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_since: Option<Time>,
    /// When all desired replicas of `revision` were first seen ready; the
    /// stabilization period counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// Last revision that became healthy; its template is kept in a
    /// ControllerRevision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    /// A revision that failed and was rolled back; not tried again while the
    /// resource's generation stays `failedGeneration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// Why `failedRevision` was judged bad (a `FailureReason` name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// Autoscaling state of one component, in the resource's status: what the
/// user sees, and what the next decision needs (the recommendations inside
/// the stabilization windows).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Sum of the load gauge (connections or allocations) over the pods that
    /// reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_load: Option<i64>,
    /// Replicas the scaler wants now (after windows, step and bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Reason of the last decision (a `ScaleReason` name) and its explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_message: Option<String>,
    /// When replicas last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Pods asked to drain before a scale-down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining_pods: Vec<String>,
    /// Recent raw recommendations, newest last, kept for the stabilization windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
}

/// A raw recommendation at a point in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recommendation {
    pub time: Time,
    pub replicas: i32,
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
