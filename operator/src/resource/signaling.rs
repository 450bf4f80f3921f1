//! Spec of the signaling component.

use super::secret_ref::{IMAGE_REGISTRY, SecretKeyRef};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The WebSocket signaling service (HTTP + WebSocket on port 8080 in the pod).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.trustedProxies) || self.trustedProxies.all(p, isCIDR(p) || isIP(p))").message("signaling.trustedProxies entries are networks in CIDR form (10.0.0.0/8) or single addresses"))]
pub struct SignalingSpec {
    /// Container image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pod count (when autoscaling is off).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Container resources. Defaults: requests cpu 100m, memory 128Mi; limit memory 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceExposureSpec,
    /// Optional Ingress; when set the published URL uses its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Limits passed to the server.
    #[serde(default)]
    pub limits: SignalingLimitsSpec,
    /// Reverse proxies in front of signaling (networks in CIDR form or
    /// addresses): the Ingress controller's pods, a cloud L7 balancer. Their
    /// X-Forwarded-For names the client, so per-address limits apply per
    /// client. Empty: the header is ignored, and behind an Ingress every
    /// client shares the controller's address for those limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub trusted_proxies: Vec<String>,
    /// Optional HS256 secret for room tokens (JWT); without it rooms are open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// Node selection, affinity, tolerations, topology spread and image
    /// pull Secrets of the pods.
    #[serde(
        default,
        skip_serializing_if = "super::placement::PodPlacementSpec::is_empty"
    )]
    pub placement: super::placement::PodPlacementSpec,
}

impl Default for SignalingSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            replicas: default_replicas(),
            resources: None,
            service: ServiceExposureSpec::default(),
            ingress: None,
            limits: SignalingLimitsSpec::default(),
            auth_secret_ref: None,
            trusted_proxies: Vec::new(),
            placement: super::placement::PodPlacementSpec::default(),
        }
    }
}

fn default_image() -> String {
    format!(
        "{IMAGE_REGISTRY}/videochat-signaling:{}",
        crate::version::VERSION
    )
}

fn default_replicas() -> i32 {
    2
}

/// Kubernetes Service type.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Service type and port of the signaling Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExposureSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port (the pods listen on 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceExposureSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// An Ingress for the signaling Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// DNS name clients use.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub host: String,
    /// TLS Secret (kubernetes.io/tls) for the host; makes the URL wss://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// IngressClass to use; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

/// Limits that the signaling server enforces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SignalingLimitsSpec {
    /// Largest WebSocket frame accepted, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    #[schemars(range(min = 1024, max = 16777216))]
    pub max_frame_bytes: i32,
    /// Messages per second per connection.
    #[serde(default = "default_messages_per_second")]
    #[schemars(range(min = 1, max = 10000))]
    pub messages_per_second: i32,
    /// Peers per room.
    #[serde(default = "default_max_peers_per_room")]
    #[schemars(range(min = 2, max = 1000))]
    pub max_peers_per_room: i32,
    /// WebSocket connections per pod.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
}

impl Default for SignalingLimitsSpec {
    fn default() -> Self {
        Self {
            max_frame_bytes: default_max_frame_bytes(),
            messages_per_second: default_messages_per_second(),
            max_peers_per_room: default_max_peers_per_room(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_frame_bytes() -> i32 {
    65536
}
fn default_messages_per_second() -> i32 {
    50
}
fn default_max_peers_per_room() -> i32 {
    16
}
fn default_max_connections() -> i32 {
    10000
}
