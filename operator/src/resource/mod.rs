//! The `VideoChatCluster` custom resource (group `videochat.dev`, version
//! `v1alpha1`): spec blocks per component, defaults and validation rules that
//! land in the CRD's OpenAPI schema, and the status the operator writes.

mod autoscaling;
mod database;
mod placement;
mod rollout;
mod secret_ref;
mod signaling;
mod status;
mod turn;

pub use autoscaling::{AutoscalingSpec, ComponentAutoscalingSpec};
pub use database::{
    ExternalDatabaseSpec, ManagedMongoDbSpec, ManagedRedisSpec, MongoDbSpec, RedisSpec, StorageSpec,
};
pub use placement::PodPlacementSpec;
pub use rollout::RolloutSpec;
pub use secret_ref::{IMAGE_REGISTRY, SecretKeyRef};
pub use signaling::{
    IngressSpec, ServiceExposureSpec, ServiceType, SignalingLimitsSpec, SignalingSpec,
};
pub use status::{
    AutoscaleStatus, ComponentStatus, ComponentsStatus, Condition, Endpoints, Phase,
    Recommendation, RolloutTracking, TurnUri, VideoChatClusterStatus,
};
pub use turn::{
    MAX_LOAD_BALANCER_LISTENERS, MIN_ROTATION_INTERVAL_SECONDS, NodeAddressType, PortRangeSpec,
    SecretRotationSpec, TurnExposureMode, TurnExposureSpec, TurnQuotasSpec, TurnSpec, TurnTlsSpec,
    parse_rotation_interval,
};

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one videochat appliance: signaling, TURN, Redis and MongoDB.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "videochat.dev",
    version = "v1alpha1",
    kind = "VideoChatCluster",
    namespaced,
    shortname = "vcc",
    category = "videochat",
    status = "VideoChatClusterStatus",
    cel,
    doc = "A videochat appliance: WebSocket signaling, a TURN relay, Redis and MongoDB, run and kept healthy by videochat-operator.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Signaling","type":"string","description":"ready/desired signaling pods","jsonPath":".status.components.signaling.summary"}"#,
    printcolumn = r#"{"name":"TURN","type":"string","description":"ready/desired TURN pods","jsonPath":".status.components.turn.summary"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.turn) || !has(self.turn.exposure) || !has(self.turn.exposure.advertisedAddress) || !has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.turn.maxReplicas == 1").message("turn.exposure.advertisedAddress is one address for a single relay: with autoscaling on, autoscaling.turn.maxReplicas must be 1 (use turn.exposure.addressOverrides for one address per node or pod)")
)]
pub struct VideoChatClusterSpec {
    /// The WebSocket signaling service.
    #[serde(default)]
    pub signaling: SignalingSpec,
    /// The TURN relay.
    #[serde(default)]
    pub turn: TurnSpec,
    /// Redis: the message bus and queue between signaling instances.
    #[serde(default)]
    pub redis: RedisSpec,
    /// MongoDB: the durable store for rooms and chat history.
    #[serde(default)]
    pub mongodb: MongoDbSpec,
    /// How new revisions roll out and when they are rolled back.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Replicas from load (connections, allocations) and CPU.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
}

/// The CRD as YAML, exactly what `videochat-operator crd` prints and
/// `crds/videochatcluster.yaml` holds.
/// Keys are sorted at every level, so the text does not depend on whether
/// serde_json's `preserve_order` feature is on (other crates in the same
/// build, e.g. bson through the MongoDB driver, turn it on).
pub fn crd_yaml() -> Result<String, crate::error::Error> {
    let fail = |message: String| crate::error::Error::Serialize {
        what: "CustomResourceDefinition".into(),
        message,
    };
    let value = serde_json::to_value(VideoChatCluster::crd()).map_err(|e| fail(e.to_string()))?;
    serde_yaml::to_string(&sorted_keys(value)).map_err(|e| fail(e.to_string()))
}

/// The value with every object's keys in sorted order (canonical JSON for
/// hashes and generated files).
pub(crate) fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}

/// Evaluates the CRD's schema rules (CEL `x-kubernetes-validations`) on a
/// resource, the same rules the API server enforces, so a resource that got
/// past an older CRD is reported instead of half-applied.
pub fn validation_errors(cluster: &VideoChatCluster) -> Vec<String> {
    let mut errors: Vec<String> = match cluster.validate_cel() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
    };
    // What the schema cannot say, or an older CRD did not: the same rules
    // the plan applies, so a bad value is a Degraded condition and not a
    // reconcile that fails on every try.
    if errors.is_empty()
        && let Some(rotation) = &cluster.spec.turn.secret_rotation
        && let Err(message) = turn::parse_rotation_interval(&rotation.interval)
    {
        errors.push(format!("turn.secretRotation.interval: {message}"));
    }
    errors
}

// `JsonSchema` is used by the derives above.
#[allow(unused_imports)]
use JsonSchema as _;
