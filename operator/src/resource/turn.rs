//! Spec of the TURN relay component.

use super::{IMAGE_REGISTRY, SecretKeyRef};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The TURN relay (UDP and TCP listeners, a relay port range, admin port 9090).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TurnSpec {
    /// Container image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pod count (when autoscaling is off).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Realm of the long-term credentials.
    #[serde(default = "default_realm")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub realm: String,
    /// UDP listening port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub udp_port: i32,
    /// TCP listening port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: i32,
    /// Ports the relay allocates for peers.
    #[serde(default)]
    pub relay_port_range: PortRangeSpec,
    /// How clients reach the relay.
    #[serde(default)]
    pub exposure: TurnExposureSpec,
    /// The shared secret of the TURN REST API credentials (one secret per
    /// line, newest last). Generated into `<name>-turn-secret` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret_ref: Option<SecretKeyRef>,
    /// Lifetime of the credentials signaling hands out, in seconds.
    #[serde(default = "default_credential_ttl")]
    #[schemars(range(min = 60, max = 604800))]
    pub credential_ttl_seconds: i32,
    /// Allocation quotas.
    #[serde(default)]
    pub quotas: TurnQuotasSpec,
    /// Rotate the generated shared secret (not a `sharedSecretRef`): a new
    /// secret every interval, the previous one kept until every credential
    /// signed with it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotation: Option<SecretRotationSpec>,
    /// Container resources. Defaults: requests cpu 100m, memory 64Mi; limit memory 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selection, affinity, tolerations, topology spread and image
    /// pull Secrets of the pods.
    #[serde(default, skip_serializing_if = "super::PodPlacementSpec::is_empty")]
    pub placement: super::PodPlacementSpec,
}

impl Default for TurnSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            replicas: default_replicas(),
            realm: default_realm(),
            udp_port: default_port(),
            tcp_port: default_port(),
            relay_port_range: PortRangeSpec::default(),
            exposure: TurnExposureSpec::default(),
            shared_secret_ref: None,
            credential_ttl_seconds: default_credential_ttl(),
            quotas: TurnQuotasSpec::default(),
            secret_rotation: None,
            resources: None,
            placement: super::PodPlacementSpec::default(),
        }
    }
}

fn default_image() -> String {
    format!("{IMAGE_REGISTRY}/videochat-turn:{}", crate::VERSION)
}
fn default_replicas() -> i32 {
    2
}
fn default_realm() -> String {
    "videochat".into()
}
fn default_port() -> i32 {
    3478
}
fn default_credential_ttl() -> i32 {
    86400
}

/// TURN shared-secret rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // CEL's duration() has no `d`: a whole day or more is long enough as is.
    validation = Rule::new("self.interval.matches('[1-9][0-9]*d') || duration(self.interval) >= duration('60s')").message("turn.secretRotation.interval must be at least 60s")
)]
pub struct SecretRotationSpec {
    /// How often a new secret is added, e.g. `24h`, `7d`, `1h30m` (at least 60s).
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+[smhd])+$"))]
    pub interval: String,
}

/// An inclusive port range for relayed transport addresses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.min <= self.max").message("relayPortRange.min must not exceed relayPortRange.max"),
    validation = Rule::new("self.max - self.min < 1000").message("relayPortRange may span at most 1000 ports (each one is a Service port)")
)]
pub struct PortRangeSpec {
    /// First relay port.
    #[schemars(range(min = 1024, max = 65535))]
    pub min: i32,
    /// Last relay port.
    #[schemars(range(min = 1024, max = 65535))]
    pub max: i32,
}

impl Default for PortRangeSpec {
    fn default() -> Self {
        Self {
            min: 49152,
            max: 49251,
        }
    }
}

/// How clients reach the relay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.hostNetwork || self.serviceType != 'LoadBalancer' || has(self.advertisedAddress)").message("hostNetwork with a LoadBalancer service needs advertisedAddress (the relay must announce one address)"),
    validation = Rule::new("!has(self.advertisedAddress) || isIP(self.advertisedAddress)").message("advertisedAddress must be an IP address (the relay puts it in relayed transport addresses)")
)]
pub struct TurnExposureSpec {
    /// Type of the UDP and TCP Services.
    #[serde(default = "default_turn_service_type")]
    pub service_type: super::signaling::ServiceType,
    /// The public IP the relay announces in relayed addresses and TURN URIs;
    /// the load-balancer address (or the node IP with hostNetwork) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub advertised_address: Option<String>,
    /// Run the relay in the node's network namespace (one pod per node).
    #[serde(default)]
    pub host_network: bool,
}

impl Default for TurnExposureSpec {
    fn default() -> Self {
        Self {
            service_type: default_turn_service_type(),
            advertised_address: None,
            host_network: false,
        }
    }
}

fn default_turn_service_type() -> super::signaling::ServiceType {
    super::signaling::ServiceType::LoadBalancer
}

/// Allocation quotas of the relay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TurnQuotasSpec {
    /// Allocations per pod.
    #[serde(default = "default_max_allocations")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_allocations: i32,
    /// Allocations per user (credential user id).
    #[serde(default = "default_max_allocations_per_user")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_allocations_per_user: i32,
}

impl Default for TurnQuotasSpec {
    fn default() -> Self {
        Self {
            max_allocations: default_max_allocations(),
            max_allocations_per_user: default_max_allocations_per_user(),
        }
    }
}

fn default_max_allocations() -> i32 {
    1000
}
fn default_max_allocations_per_user() -> i32 {
    10
}
