//! TURN: the relay's ConfigMap, its address map, the workload and how each
//! relay is reached (docs/operator.md, "TURN exposure").
//!
//! Every address a relay announces must route to that relay's own pod for
//! its whole relay port range, so each mode gives every relay an address of
//! its own: the node's (HostNetwork), its own load balancer's
//! (LoadBalancer), or its pod IP (ClusterInternal). The relay learns an
//! address it cannot know at render time from the address ConfigMap,
//! mounted as files named by node or pod, and re-reads it when it changes.

use super::context::{Ctx, SpecTemplate};
use super::hash::short_hash;
use super::secrets::SecretRefs;
use super::{pods, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::objects::{to_dynamic, type_of};
use crate::resource::{TurnExposureMode, TurnUri};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, RollingUpdateDeployment, StatefulSet, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container,
    ContainerPort, EnvFromSource, EnvVar, EnvVarSource, KeyToPath, Node, ObjectFieldSelector, Pod,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Sysctl, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Admin HTTP port of the relay (/healthz, /readyz, /metrics, POST /drain).
pub const ADMIN_PORT: i32 = 9090;
const SECRET_DIR: &str = "/etc/videochat/turn";
const ADMIN_TOKEN_DIR: &str = "/etc/videochat/admin";
const TLS_DIR: &str = "/etc/videochat/turn-tls";
/// The address ConfigMap's mount: one file per node or pod name.
pub const ADDRESS_DIR: &str = "/etc/videochat/turn-addresses";
/// A fixed external address, put in XOR-RELAYED-ADDRESS (an IP).
const RELAY_ADDRESS_ENV: &str = "VIDEOCHAT_TURN_RELAY_ADDRESS";
const RELAY_ADDRESS_DIR_ENV: &str = "VIDEOCHAT_TURN_RELAY_ADDRESS_DIR";
const RELAY_ADDRESS_KEY_ENV: &str = "VIDEOCHAT_TURN_RELAY_ADDRESS_KEY";
/// Label the StatefulSet controller puts on each of its pods.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// Name of the ConfigMap mapping node or pod names to relay addresses.
pub fn address_config_map_name(cluster: &str) -> String {
    format!("{cluster}-turn-addresses")
}

fn mode(ctx: &Ctx<'_>) -> TurnExposureMode {
    ctx.cluster.spec.turn.exposure.mode
}

/// The address ConfigMap is used unless the mode or a fixed address makes
/// every relay's address known when the pod starts.
fn learns_address_from_map(ctx: &Ctx<'_>) -> bool {
    let exposure = &ctx.cluster.spec.turn.exposure;
    mode(ctx) != TurnExposureMode::ClusterInternal && exposure.advertised_address.is_none()
}

pub(crate) fn config(ctx: &Ctx<'_>) -> BTreeMap<String, String> {
    let spec = &ctx.cluster.spec.turn;
    let drain_grace = ctx.cluster.spec.autoscaling.drain_grace_seconds;
    let relay_ports = spec.relay_ports();
    let mut env = BTreeMap::from([
        (
            "VIDEOCHAT_TURN_LISTEN_ADDRESS".to_string(),
            "0.0.0.0".to_string(),
        ),
        (
            "VIDEOCHAT_TURN_LISTEN_PORT".to_string(),
            spec.udp_port.to_string(),
        ),
        (
            "VIDEOCHAT_TURN_TCP_PORT".to_string(),
            spec.tcp_port.to_string(),
        ),
        ("VIDEOCHAT_TURN_REALM".to_string(), spec.realm.clone()),
        (
            "VIDEOCHAT_TURN_SECRET_FILE".to_string(),
            format!("{SECRET_DIR}/secret"),
        ),
        // POST /drain needs this token (the operator drains before scale-down).
        (
            "VIDEOCHAT_TURN_ADMIN_TOKEN_FILE".to_string(),
            format!("{ADMIN_TOKEN_DIR}/token"),
        ),
        (
            "VIDEOCHAT_TURN_RELAY_MIN_PORT".to_string(),
            relay_ports.min.to_string(),
        ),
        (
            "VIDEOCHAT_TURN_RELAY_MAX_PORT".to_string(),
            relay_ports.max.to_string(),
        ),
        (
            "VIDEOCHAT_TURN_ADMIN_LISTEN".to_string(),
            format!("0.0.0.0:{ADMIN_PORT}"),
        ),
        (
            "VIDEOCHAT_TURN_MAX_ALLOCATIONS".to_string(),
            spec.quotas.max_allocations.to_string(),
        ),
        (
            "VIDEOCHAT_TURN_MAX_ALLOCATIONS_PER_USER".to_string(),
            spec.quotas.max_allocations_per_user.to_string(),
        ),
        ("VIDEOCHAT_TURN_LOG_FORMAT".to_string(), "json".to_string()),
        // Live allocations keep relaying until just before the pod is killed.
        (
            "VIDEOCHAT_TURN_DRAIN_TIMEOUT".to_string(),
            format!("{}s", (drain_grace - 5).max(0)),
        ),
        // Whether a draining relay stays Ready (see drain_readiness).
        (
            "VIDEOCHAT_TURN_DRAIN_READINESS".to_string(),
            drain_readiness(mode(ctx)).to_string(),
        ),
    ]);
    if let Some(tls) = &spec.tls {
        env.insert(
            "VIDEOCHAT_TURN_TLS_CERT_FILE".into(),
            format!("{TLS_DIR}/tls.crt"),
        );
        env.insert(
            "VIDEOCHAT_TURN_TLS_KEY_FILE".into(),
            format!("{TLS_DIR}/tls.key"),
        );
        let ports: Vec<String> = tls.ports.iter().map(i32::to_string).collect();
        env.insert("VIDEOCHAT_TURN_TLS_PORTS".into(), ports.join(","));
    }
    if mode(ctx) != TurnExposureMode::ClusterInternal
        && let Some(address) = &spec.exposure.advertised_address
    {
        env.insert(RELAY_ADDRESS_ENV.into(), address.clone());
    }
    if learns_address_from_map(ctx) {
        env.insert(RELAY_ADDRESS_DIR_ENV.into(), ADDRESS_DIR.into());
    }
    env
}

/// What readiness means while a relay drains. Where a Service routes UDP by
/// readiness, an endpoint turning NotReady makes kube-proxy flush its
/// conntrack entries and live allocations break (kubernetes#137986), so the
/// relay stays Ready and only refuses new allocations (508). Host-network
/// relays have no Service in the path and per-pod Services publish
/// not-ready addresses, but staying Ready costs nothing there and keeps a
/// Service a user puts in front safe. Cluster-internal clients find relays
/// through a headless Service's DNS and then talk to the pod IP directly (no
/// kube-proxy): there turning NotReady is what keeps new clients away.
pub fn drain_readiness(mode: TurnExposureMode) -> &'static str {
    match mode {
        TurnExposureMode::HostNetwork | TurnExposureMode::LoadBalancer => "ready",
        TurnExposureMode::ClusterInternal => "not-ready",
    }
}

/// The IP of a name in the address map, if it parses.
fn ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// Node name -> the address of the configured type, for every observed Node.
fn node_addresses(ctx: &Ctx<'_>) -> BTreeMap<String, String> {
    let wanted = ctx.cluster.spec.turn.exposure.node_address_type.as_str();
    ctx.observed
        .iter()
        .filter(|o| type_of(o).1 == "Node")
        .filter_map(|o| {
            let node: Node = serde_json::from_value(serde_json::to_value(o).ok()?).ok()?;
            let name = node.metadata.name.clone()?;
            let address = node
                .status?
                .addresses?
                .into_iter()
                .filter(|a| a.type_ == wanted)
                .find_map(|a| ip(&a.address))?;
            Some((name, address.to_string()))
        })
        .collect()
}

/// The first ingress IP of an observed load-balancer Service.
fn load_balancer_ip(ctx: &Ctx<'_>, service: &str) -> Option<String> {
    let service: Service = ctx.observed.typed("Service", service)?;
    let ingress = service.status?.load_balancer?.ingress?;
    ingress
        .into_iter()
        .find_map(|i| i.ip.as_deref().and_then(ip))
        .map(|ip| ip.to_string())
}

/// The address map: node name (HostNetwork) or pod name (LoadBalancer) to
/// the IP that relay announces. Overrides from the spec win.
pub(crate) fn address_map(ctx: &Ctx<'_>) -> BTreeMap<String, String> {
    let mut map = match mode(ctx) {
        TurnExposureMode::HostNetwork => node_addresses(ctx),
        TurnExposureMode::LoadBalancer => relay_pod_names(ctx)
            .into_iter()
            .filter_map(|pod| load_balancer_ip(ctx, &pod).map(|ip| (pod, ip)))
            .collect(),
        TurnExposureMode::ClusterInternal => BTreeMap::new(),
    };
    for (name, address) in &ctx.cluster.spec.turn.exposure.address_overrides {
        if let Some(ip) = ip(address) {
            map.insert(name.clone(), ip.to_string());
        }
    }
    map
}

/// Observed TURN pods of this cluster.
fn relay_pods(ctx: &Ctx<'_>) -> Vec<Pod> {
    let selector = labels::selector(&ctx.name, Component::Turn);
    ctx.observed
        .iter()
        .filter(|o| type_of(o).1 == "Pod")
        .filter(|o| {
            let labels = o.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter_map(|o| serde_json::from_value(serde_json::to_value(o).ok()?).ok())
        .collect()
}

/// LoadBalancer mode: the relay pods that get a Service. Pods past the
/// replica count are still draining after a scale-down; their Services stay
/// until the pod is gone, or their live calls would be cut.
pub(crate) fn relay_pod_names(ctx: &Ctx<'_>) -> Vec<String> {
    let workload = Component::Turn.workload_name(&ctx.name);
    let prefix = format!("{workload}-");
    let existing = relay_pods(ctx)
        .iter()
        .filter_map(|p| {
            p.metadata
                .name
                .as_deref()?
                .strip_prefix(&prefix)?
                .parse::<i32>()
                .ok()
        })
        .map(|ordinal| ordinal + 1)
        .max()
        .unwrap_or(0);
    let count = ctx.held(Component::Turn).max(existing).max(0);
    (0..count).map(|i| format!("{workload}-{i}")).collect()
}

/// Hosts clients are given in TURN URIs, from what is observed; empty while
/// unknown (no load-balancer address yet, no relay scheduled).
fn uri_hosts(ctx: &Ctx<'_>) -> Vec<String> {
    let exposure = &ctx.cluster.spec.turn.exposure;
    if let Some(host) = &exposure.host {
        return vec![host.clone()];
    }
    match exposure.mode {
        TurnExposureMode::ClusterInternal => {
            vec![ctx.service_host(&Component::Turn.workload_name(&ctx.name))]
        }
        _ if exposure.advertised_address.is_some() => {
            exposure.advertised_address.iter().cloned().collect()
        }
        TurnExposureMode::HostNetwork => {
            // The nodes running a relay that is not stopping.
            let addresses = address_map(ctx);
            let hosts: BTreeSet<String> = relay_pods(ctx)
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.spec.as_ref()?.node_name.as_ref())
                .filter_map(|node| addresses.get(node).cloned())
                .collect();
            hosts.into_iter().collect()
        }
        TurnExposureMode::LoadBalancer => {
            // Relays within the replica count; the ones past it are draining.
            let addresses = address_map(ctx);
            relay_pod_names(ctx)
                .into_iter()
                .take(usize::try_from(ctx.held(Component::Turn)).unwrap_or(0))
                .filter_map(|pod| addresses.get(&pod).cloned())
                .collect()
        }
    }
}

fn host_for_uri(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The TURN URIs clients get, per host: UDP first (cheapest), then TCP, then
/// TLS for networks that only let web traffic out (`turns:` only with a host
/// name, which the certificate is checked against).
pub(crate) fn uris(ctx: &Ctx<'_>) -> Vec<TurnUri> {
    let spec = &ctx.cluster.spec.turn;
    let mut uris = Vec::new();
    for host in uri_hosts(ctx) {
        let host = host_for_uri(&host);
        uris.push(TurnUri {
            uri: format!("turn:{host}:{}?transport=udp", spec.udp_port),
            transport: "udp".into(),
        });
        uris.push(TurnUri {
            uri: format!("turn:{host}:{}?transport=tcp", spec.tcp_port),
            transport: "tcp".into(),
        });
        if spec.exposure.host.is_some() {
            for port in spec.tls_ports() {
                uris.push(TurnUri {
                    uri: format!("turns:{host}:{port}?transport=tcp"),
                    transport: "tls".into(),
                });
            }
        }
    }
    uris
}

fn env_from_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Listening ports of the relay: (name, port, protocol).
fn listen_ports(ctx: &Ctx<'_>) -> Vec<(String, i32, &'static str)> {
    let spec = &ctx.cluster.spec.turn;
    let mut ports = vec![
        ("turn-udp".to_string(), spec.udp_port, "UDP"),
        ("turn-tcp".to_string(), spec.tcp_port, "TCP"),
    ];
    for port in spec.tls_ports() {
        ports.push((format!("turns-{port}"), port, "TCP"));
    }
    ports
}

fn service_port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..ServicePort::default()
    }
}

/// The pod template the spec asks for.
pub(crate) fn template(ctx: &Ctx<'_>, secrets: &SecretRefs) -> SpecTemplate {
    let spec = &ctx.cluster.spec.turn;
    let mode = mode(ctx);
    let component = Component::Turn;
    let config_name = labels::config_map_name(&ctx.name, component);
    let data = config(ctx);
    let config_hash = short_hash(&data);

    // How the relay learns its address: from the mounted map (re-read on
    // change, so a new load-balancer IP or node address needs no roll), or
    // from the downward API in cluster-internal mode.
    let learns = learns_address_from_map(ctx);
    let mut env = Vec::new();
    match mode {
        TurnExposureMode::ClusterInternal => {
            env.push(env_from_field(RELAY_ADDRESS_ENV, "status.podIP"));
        }
        TurnExposureMode::HostNetwork if learns => {
            env.push(env_from_field(RELAY_ADDRESS_KEY_ENV, "spec.nodeName"));
        }
        TurnExposureMode::LoadBalancer if learns => {
            env.push(env_from_field(RELAY_ADDRESS_KEY_ENV, "metadata.name"));
        }
        _ => {}
    }

    let host_network = mode == TurnExposureMode::HostNetwork;
    let listen = listen_ports(ctx);
    let lowest_port = listen.iter().map(|(_, p, _)| *p).min().unwrap_or(1024);
    let mut container_ports: Vec<ContainerPort> = listen
        .iter()
        .map(|(name, port, protocol)| ContainerPort {
            name: Some(name.clone()),
            container_port: *port,
            protocol: Some((*protocol).into()),
            // Declared host ports make the scheduler keep a second relay
            // (or anything else holding the port) off the node.
            host_port: host_network.then_some(*port),
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("admin".into()),
        container_port: ADMIN_PORT,
        protocol: Some("TCP".into()),
        host_port: host_network.then_some(ADMIN_PORT),
        ..ContainerPort::default()
    });

    let probe =
        |path: &str, period: i32, failures: i32| pods::http_probe("admin", path, period, failures);
    let mut security = pods::container_security();
    if host_network && lowest_port < 1024 {
        // Ports below 1024 on the node's own network (e.g. turns: on 443):
        // the only way is the capability; the image grants it to the binary.
        security.capabilities = Some(Capabilities {
            add: Some(vec!["NET_BIND_SERVICE".into()]),
            drop: Some(vec!["ALL".into()]),
        });
    }
    let mut mounts = vec![
        pods::mount("turn-secret", SECRET_DIR, true),
        pods::mount("admin-token", ADMIN_TOKEN_DIR, true),
        pods::mount("tmp", "/tmp", false),
    ];
    let mut volumes = vec![
        pods::secret_volume("turn-secret", &secrets.turn_ref, "secret"),
        pods::secret_volume("admin-token", &secrets.admin_token_ref, "token"),
        pods::empty_dir("tmp"),
    ];
    if learns {
        mounts.push(pods::mount("turn-addresses", ADDRESS_DIR, true));
        volumes.push(Volume {
            name: "turn-addresses".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: address_config_map_name(&ctx.name),
                // A missing map is an empty directory: the relay stays
                // unready until its address is known.
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(tls) = &spec.tls {
        mounts.push(pods::mount("turn-tls", TLS_DIR, true));
        volumes.push(Volume {
            name: "turn-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                items: Some(
                    ["tls.crt", "tls.key"]
                        .into_iter()
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: key.into(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "turn".into(),
        image: Some(spec.image.clone()),
        ports: Some(container_ports),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_name,
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(pods::resources(
            spec.resources.as_ref(),
            "100m",
            "64Mi",
            "256Mi",
        )),
        security_context: Some(security),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut pod_security = pods::pod_security(pods::NONROOT_UID);
    if !host_network && lowest_port < 1024 {
        // A namespaced, "safe" sysctl: lets the non-root relay bind e.g. 443
        // in its own network namespace.
        pod_security.sysctls = Some(vec![Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".into(),
            value: lowest_port.to_string(),
        }]);
    }
    let selector = labels::selector(&ctx.name, component);
    let template = PodTemplateSpec {
        metadata: Some(workload::scraped_pod_metadata(
            ctx,
            component,
            config_hash,
            ADMIN_PORT,
        )),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(pod_security),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_string()),
            // One relay per node: two would fight over the node's ports.
            affinity: host_network.then(|| Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(selector.clone()),
                                ..LabelSelector::default()
                            }),
                            topology_key: HOSTNAME_TOPOLOGY.into(),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            }),
            // Live calls keep their allocation until they end or this passes.
            termination_grace_period_seconds: Some(i64::from(
                ctx.cluster.spec.autoscaling.drain_grace_seconds,
            )),
            ..PodSpec::default()
        }),
    };
    let (template, revision) = workload::with_revision(workload::placed(ctx, component, template));
    SpecTemplate {
        template,
        revision,
        config: data,
    }
}

/// The ConfigMap, the address map the relays learn their address from, the
/// workload running `template` with `replicas`, and the Services.
pub(crate) fn objects(
    ctx: &Ctx<'_>,
    config: &BTreeMap<String, String>,
    template: PodTemplateSpec,
    replicas: i32,
) -> Result<Vec<DynamicObject>> {
    let mode = mode(ctx);
    let component = Component::Turn;
    let workload_name = component.workload_name(&ctx.name);
    let config_map = ConfigMap {
        metadata: ctx.meta(
            labels::config_map_name(&ctx.name, component),
            Some(component),
        ),
        data: Some(config.clone()),
        ..ConfigMap::default()
    };
    let mut objects = vec![to_dynamic(&config_map)?];
    if learns_address_from_map(ctx) {
        let map = ConfigMap {
            metadata: ctx.meta(address_config_map_name(&ctx.name), Some(component)),
            data: Some(address_map(ctx)),
            ..ConfigMap::default()
        };
        objects.push(to_dynamic(&map)?);
    }
    let listen = listen_ports(ctx);
    let selector = labels::selector(&ctx.name, component);

    match mode {
        TurnExposureMode::HostNetwork => {
            let mut deployment: Deployment =
                workload::deployment(ctx, component, replicas, template);
            // A surge pod would need a node without a relay, which with one
            // relay per node may not exist: replace in place, one at a time.
            deployment.spec.strategy = Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            });
            objects.push(to_dynamic(&deployment)?);
        }
        TurnExposureMode::ClusterInternal => {
            let deployment: Deployment = workload::deployment(ctx, component, replicas, template);
            objects.push(to_dynamic(&deployment)?);
            // Clients resolve this name to the ready relays' pod IPs and then
            // talk to the pod directly.
            objects.push(to_dynamic(&headless_service(ctx, &listen, false))?);
        }
        TurnExposureMode::LoadBalancer => {
            let stateful_set = StatefulSet {
                metadata: ctx.meta(workload_name.clone(), Some(component)),
                spec: StatefulSetSpec {
                    replicas: Some(replicas),
                    service_name: Some(workload_name.clone()),
                    selector: LabelSelector {
                        match_labels: Some(selector.clone()),
                        ..LabelSelector::default()
                    },
                    template,
                    // Relays do not depend on each other: start and stop in parallel.
                    pod_management_policy: Some("Parallel".into()),
                    update_strategy: Some(StatefulSetUpdateStrategy {
                        type_: Some("RollingUpdate".into()),
                        ..StatefulSetUpdateStrategy::default()
                    }),
                    revision_history_limit: Some(10),
                    ..StatefulSetSpec::default()
                },
                ..StatefulSet::default()
            };
            objects.push(to_dynamic(&stateful_set)?);
            objects.push(to_dynamic(&headless_service(ctx, &listen, true))?);
            for pod in relay_pod_names(ctx) {
                objects.push(to_dynamic(&relay_service(ctx, &pod, &listen))?);
            }
        }
    }
    Ok(objects)
}

/// The headless Service named like the workload: the StatefulSet's
/// governing Service, or the DNS name of cluster-internal relays.
fn headless_service(
    ctx: &Ctx<'_>,
    listen: &[(String, i32, &'static str)],
    publish_not_ready: bool,
) -> Service {
    let component = Component::Turn;
    Service {
        metadata: ctx.meta(component.workload_name(&ctx.name), Some(component)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::selector(&ctx.name, component)),
            ports: Some(
                listen
                    .iter()
                    .map(|(name, port, protocol)| service_port(name, *port, protocol))
                    .collect(),
            ),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// One relay pod's own load balancer: the TURN ports and its whole relay
/// port range, to that pod only.
fn relay_service(ctx: &Ctx<'_>, pod: &str, listen: &[(String, i32, &'static str)]) -> Service {
    let spec = &ctx.cluster.spec.turn;
    let component = Component::Turn;
    let mut selector = labels::selector(&ctx.name, component);
    selector.insert(POD_NAME_LABEL.into(), pod.into());
    let mut ports: Vec<ServicePort> = listen
        .iter()
        .map(|(name, port, protocol)| service_port(name, *port, protocol))
        .collect();
    let relay_ports = spec.relay_ports();
    for port in relay_ports.min..=relay_ports.max {
        ports.push(service_port(&format!("relay-{port}"), port, "UDP"));
    }
    let mut metadata = ctx.meta(pod.into(), Some(component));
    if !spec.exposure.service_annotations.is_empty() {
        metadata.annotations = Some(spec.exposure.service_annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(selector),
            ports: Some(ports),
            load_balancer_class: spec.exposure.load_balancer_class.clone(),
            // Client addresses stay visible (TURN answers with them and
            // limits by them) and every packet of a flow takes the same node.
            external_traffic_policy: Some("Local".into()),
            // The one endpoint stays while it drains: kube-proxy flushes the
            // UDP conntrack entries of endpoints that leave, which would move
            // live allocations' packets (kubernetes#137986).
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
