//! Spec of the TURN relay component.

use super::secret_ref::{IMAGE_REGISTRY, SecretKeyRef};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The TURN relay (UDP and TCP listeners, a relay port range, admin port 9090).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.exposure) || self.exposure.mode != 'LoadBalancer' || !has(self.relayPortRange) || (self.relayPortRange.max - self.relayPortRange.min + 1) + 2 + (has(self.tls) ? self.tls.ports.size() : 0) <= 50").message("with exposure.mode LoadBalancer, the relay port range plus the TURN UDP, TCP and TLS ports may be at most 50 ports: each is a listener of the relay's load balancer, and AWS Network Load Balancers allow 50 by default (46 relay ports with the two default TLS ports)"),
    validation = Rule::new("!has(self.exposure) || !has(self.exposure.advertisedAddress) || self.replicas == 1").message("exposure.advertisedAddress is one address for every relay, so it needs replicas: 1 (a second relay behind the same address gets the first one's traffic); use exposure.addressOverrides for one address per node or pod"),
    validation = Rule::new("!has(self.tls) || (has(self.exposure) && has(self.exposure.host))").message("tls needs exposure.host: clients check the relay's certificate against the host name in the turns: URI"),
    validation = Rule::new("!has(self.tls) || !self.tls.ports.exists(p, p == self.tcpPort)").message("tls.ports must differ from tcpPort (TLS and plain TCP cannot share a port)")
)]
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
    /// Ports the relay allocates for peers, one per allocation. Default
    /// 49152-49251, or 49152-49199 in mode LoadBalancer (listener limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port_range: Option<PortRangeSpec>,
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
    #[serde(
        default,
        skip_serializing_if = "super::placement::PodPlacementSpec::is_empty"
    )]
    pub placement: super::placement::PodPlacementSpec,
    /// TURN over TLS (`turns:`) from a Secret holding `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TurnTlsSpec>,
}

impl TurnSpec {
    /// The relay port range: the spec's, else the mode's default.
    pub fn relay_ports(&self) -> PortRangeSpec {
        self.relay_port_range
            .clone()
            .unwrap_or_else(|| match self.exposure.mode {
                TurnExposureMode::LoadBalancer => PortRangeSpec {
                    min: 49152,
                    max: 49152 + MAX_LOAD_BALANCER_LISTENERS
                        - 2
                        - self.tls_ports().len() as i32
                        - 1,
                },
                _ => PortRangeSpec::default(),
            })
    }

    /// Ports of the TLS listeners, none without `tls`.
    pub fn tls_ports(&self) -> Vec<i32> {
        self.tls
            .as_ref()
            .map(|t| t.ports.clone())
            .unwrap_or_default()
    }
}

/// Most ports on one relay's load balancer in mode LoadBalancer (TURN UDP
/// and TCP, the TLS ports, every relay port): AWS Network Load Balancers
/// allow 50 listeners by default, the tightest of the common clouds.
pub const MAX_LOAD_BALANCER_LISTENERS: i32 = 50;

/// TURN over TLS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.ports.all(p, p >= 1 && p <= 65535)").message("tls.ports must be between 1 and 65535"),
    validation = Rule::new("self.ports.all(p, self.ports.filter(q, q == p).size() == 1)").message("tls.ports must not repeat a port")
)]
pub struct TurnTlsSpec {
    /// Secret with `tls.crt` (the chain) and `tls.key`, e.g. a cert-manager
    /// Certificate's; the relay re-reads it when it changes.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Ports of the TLS listeners. 443 passes firewalls that only allow web
    /// traffic; 5349 is the standard `turns:` port.
    #[serde(default = "default_tls_ports")]
    #[schemars(length(min = 1, max = 4))]
    pub ports: Vec<i32>,
}

fn default_tls_ports() -> Vec<i32> {
    vec![5349, 443]
}

impl Default for TurnSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            replicas: default_replicas(),
            realm: default_realm(),
            udp_port: default_port(),
            tcp_port: default_port(),
            relay_port_range: None,
            exposure: TurnExposureSpec::default(),
            shared_secret_ref: None,
            credential_ttl_seconds: default_credential_ttl(),
            quotas: TurnQuotasSpec::default(),
            secret_rotation: None,
            resources: None,
            placement: super::placement::PodPlacementSpec::default(),
            tls: None,
        }
    }
}

fn default_image() -> String {
    format!(
        "{IMAGE_REGISTRY}/videochat-turn:{}",
        crate::version::VERSION
    )
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
    // The interval in seconds, term by term, as humantime reads it (CEL's
    // duration() knows neither days nor humantime's spellings).
    validation = Rule::new("self.interval.findAll('[0-9]+[a-zA-Z]+').map(t, int(t.find('[0-9]+')) * (t.matches('^[0-9]+(s|sec|secs|second|seconds)$') ? 1 : t.matches('^[0-9]+(m|min|mins|minute|minutes)$') ? 60 : t.matches('^[0-9]+(h|hr|hrs|hour|hours)$') ? 3600 : t.matches('^[0-9]+(d|day|days)$') ? 86400 : t.matches('^[0-9]+(w|wk|wks|week|weeks)$') ? 604800 : t.matches('^[0-9]+(M|month|months)$') ? 2630016 : 31557600)).sum() >= 60").message("turn.secretRotation.interval must be at least 60s")
)]
pub struct SecretRotationSpec {
    /// How often a new secret is added, e.g. `24h`, `7d`, `1h30m`, `1h 30m`,
    /// `2w` (at least 60s): whole numbers with units from seconds
    /// (`s`, `sec`, `m`, `min`, `h`, `hr`, `d`, `day`, `w`, `week`, `M`,
    /// `month`, `y`, `year`, plurals too) written together or separated by
    /// one space.
    #[schemars(length(min = 2, max = 32), regex(pattern = crate::duration::SPEC_DURATION_PATTERN))]
    pub interval: String,
}

/// Shortest rotation interval accepted.
pub const MIN_ROTATION_INTERVAL_SECONDS: i64 = 60;

/// Parses a rotation interval such as `24h`, `90m`, `7d` or `1h30m` into
/// seconds; shorter than [`MIN_ROTATION_INTERVAL_SECONDS`] is an error.
pub fn parse_rotation_interval(text: &str) -> Result<i64, String> {
    let total = crate::duration::parse_seconds(text)?;
    if total < MIN_ROTATION_INTERVAL_SECONDS {
        return Err(format!(
            "{text:?} is shorter than the minimum rotation interval of {MIN_ROTATION_INTERVAL_SECONDS}s"
        ));
    }
    Ok(total)
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

/// How each relay is reached from outside; see docs/operator.md.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum TurnExposureMode {
    /// The relay in the node's network namespace, one per node, announcing
    /// the node's address. No load balancer or kube-proxy in the path.
    #[default]
    HostNetwork,
    /// One LoadBalancer Service per relay pod (a StatefulSet), announcing
    /// that Service's ingress IP.
    LoadBalancer,
    /// Pod IPs only, for media servers inside the cluster.
    ClusterInternal,
}

impl TurnExposureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnExposureMode::HostNetwork => "HostNetwork",
            TurnExposureMode::LoadBalancer => "LoadBalancer",
            TurnExposureMode::ClusterInternal => "ClusterInternal",
        }
    }

    /// Kind of the TURN workload: per-pod Services need stable pod names.
    pub fn workload_kind(self) -> &'static str {
        match self {
            TurnExposureMode::LoadBalancer => "StatefulSet",
            TurnExposureMode::HostNetwork | TurnExposureMode::ClusterInternal => "Deployment",
        }
    }
}

/// Which Node address a host-network relay announces.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum NodeAddressType {
    #[default]
    ExternalIP,
    InternalIP,
}

impl NodeAddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAddressType::ExternalIP => "ExternalIP",
            NodeAddressType::InternalIP => "InternalIP",
        }
    }
}

/// How clients reach the relays.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.hostNetwork) && self.hostNetwork && has(self.serviceType) && self.serviceType == 'LoadBalancer')").message("hostNetwork with a shared LoadBalancer Service cannot work: the balancer spreads each relay port over every relay, not to the one holding the allocation; use mode: HostNetwork (no Service in the path) or mode: LoadBalancer (one per relay pod)"),
    validation = Rule::new("!has(self.serviceType)").message("serviceType is replaced by mode (HostNetwork, LoadBalancer or ClusterInternal): one Service in front of several relays cannot route each relay's ports to its own pod"),
    validation = Rule::new("!has(self.hostNetwork) || self.hostNetwork == (self.mode == 'HostNetwork')").message("hostNetwork is replaced by mode: HostNetwork and must agree with mode"),
    validation = Rule::new("self.mode == 'LoadBalancer' || (!has(self.serviceAnnotations) && !has(self.loadBalancerClass))").message("serviceAnnotations and loadBalancerClass apply only to mode LoadBalancer (the other modes put no load balancer in front of the relays)"),
    validation = Rule::new("self.mode != 'ClusterInternal' || (!has(self.advertisedAddress) && !has(self.addressOverrides))").message("mode ClusterInternal announces pod IPs; advertisedAddress and addressOverrides apply to HostNetwork and LoadBalancer"),
    validation = Rule::new("!has(self.advertisedAddress) || isIP(self.advertisedAddress)").message("advertisedAddress must be an IP address (the relay puts it in relayed transport addresses)"),
    validation = Rule::new("!has(self.addressOverrides) || self.addressOverrides.all(k, isIP(self.addressOverrides[k]))").message("addressOverrides values must be IP addresses")
)]
pub struct TurnExposureSpec {
    /// HostNetwork (default), LoadBalancer or ClusterInternal.
    #[serde(default)]
    pub mode: TurnExposureMode,
    /// DNS name clients use in turn: and turns: URIs, resolving to the
    /// relays' addresses (e.g. kept by external-dns). Without it the status
    /// lists each relay's address; `tls` needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub host: Option<String>,
    /// One public IP announced by the single relay (replicas: 1), e.g. a
    /// static IP mapped 1:1 to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub advertised_address: Option<String>,
    /// Addresses that replace the discovered ones: node name (HostNetwork)
    /// or pod name (LoadBalancer) to the IP that relay announces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 5000, "additionalProperties" = {"type": "string", "maxLength": 45}))]
    pub address_overrides: BTreeMap<String, String>,
    /// HostNetwork: the Node address announced (ExternalIP by default).
    #[serde(default)]
    pub node_address_type: NodeAddressType,
    /// LoadBalancer: annotations on each relay's Services (cloud settings,
    /// e.g. the load balancer type).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    /// LoadBalancer: `spec.loadBalancerClass` of each relay's Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub load_balancer_class: Option<String>,
    /// Replaced by `mode`; kept so old resources get a clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// Replaced by `mode`; kept so old resources get a clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<super::signaling::ServiceType>,
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
