//! TURN: ConfigMap, Deployment, UDP and TCP Services.

use super::hash::short_hash;
use super::{Built, Ctx, pods, to_dynamic, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::resource::{SecretKeyRef, ServiceType};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Admin HTTP port of the relay (/healthz, /readyz, /metrics, POST /drain).
pub const ADMIN_PORT: i32 = 9090;
const SECRET_DIR: &str = "/etc/videochat/turn";
/// The relay's external address, put in XOR-RELAYED-ADDRESS (an IP).
const RELAY_ADDRESS_ENV: &str = "VIDEOCHAT_TURN_RELAY_ADDRESS";
const ADMIN_TOKEN_DIR: &str = "/etc/videochat/admin";

pub(crate) fn config(ctx: &Ctx<'_>) -> BTreeMap<String, String> {
    let spec = &ctx.cluster.spec.turn;
    let drain_grace = ctx.cluster.spec.autoscaling.drain_grace_seconds;
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
            spec.relay_port_range.min.to_string(),
        ),
        (
            "VIDEOCHAT_TURN_RELAY_MAX_PORT".to_string(),
            spec.relay_port_range.max.to_string(),
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
    ]);
    if let Some(address) = advertised_address(ctx) {
        env.insert(RELAY_ADDRESS_ENV.into(), address);
    }
    env
}

/// The address the relay announces: the spec's, else the load balancer's
/// IP once it has one (a hostname cannot go into a relayed address). `None`
/// means "the pod's own IP" (set from the downward API).
pub(crate) fn advertised_address(ctx: &Ctx<'_>) -> Option<String> {
    let exposure = &ctx.cluster.spec.turn.exposure;
    if let Some(address) = &exposure.advertised_address {
        return Some(address.clone());
    }
    if exposure.service_type == ServiceType::LoadBalancer && !exposure.host_network {
        return super::status::load_balancer_address(
            ctx,
            &labels::turn_udp_service_name(&ctx.name),
        )
        .filter(|address| address.parse::<std::net::IpAddr>().is_ok());
    }
    None
}

pub(crate) fn desired(ctx: &Ctx<'_>, secret: &SecretKeyRef) -> Result<Built> {
    let spec = &ctx.cluster.spec.turn;
    let component = Component::Turn;
    let config_name = labels::config_map_name(&ctx.name, component);
    let data = config(ctx);
    let config_hash = short_hash(&data);
    let has_address = data.contains_key(RELAY_ADDRESS_ENV);
    let config_map = ConfigMap {
        metadata: ctx.meta(config_name.clone(), Some(component)),
        data: Some(data),
        ..ConfigMap::default()
    };

    // Without a known public address the relay announces the node's IP with
    // host networking, the pod's IP otherwise (reachable inside the cluster).
    let env = (!has_address).then(|| {
        let field = if spec.exposure.host_network {
            "status.hostIP"
        } else {
            "status.podIP"
        };
        vec![EnvVar {
            name: RELAY_ADDRESS_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: field.into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]
    });

    let probe =
        |path: &str, period: i32, failures: i32| pods::http_probe("admin", path, period, failures);
    let port = |name: &str, port: i32, protocol: &str| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(protocol.into()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: "turn".into(),
        image: Some(spec.image.clone()),
        ports: Some(vec![
            port("turn-udp", spec.udp_port, "UDP"),
            port("turn-tcp", spec.tcp_port, "TCP"),
            port("admin", ADMIN_PORT, "TCP"),
        ]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_name,
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        env,
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(pods::resources(
            spec.resources.as_ref(),
            "100m",
            "64Mi",
            "256Mi",
        )),
        security_context: Some(pods::container_security()),
        volume_mounts: Some(vec![
            pods::mount("turn-secret", SECRET_DIR, true),
            pods::mount("admin-token", ADMIN_TOKEN_DIR, true),
            pods::mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let host_network = spec.exposure.host_network;
    let admin_token = crate::autoscale::controller_io::admin_token_ref(&ctx.name);
    let template = PodTemplateSpec {
        metadata: Some(workload::scraped_pod_metadata(
            ctx,
            component,
            config_hash,
            ADMIN_PORT,
        )),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![
                pods::secret_volume("turn-secret", secret, "secret"),
                pods::secret_volume("admin-token", &admin_token, "token"),
                pods::empty_dir("tmp"),
            ]),
            security_context: Some(pods::pod_security(pods::NONROOT_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_string()),
            // Live calls keep their allocation until they end or this passes.
            termination_grace_period_seconds: Some(i64::from(
                ctx.cluster.spec.autoscaling.drain_grace_seconds,
            )),
            ..PodSpec::default()
        }),
    };
    let replicas = workload::replicas(ctx, component, spec.replicas);
    let (template, revision) = workload::with_revision(workload::placed(ctx, component, template));
    let deployment: Deployment = workload::deployment(ctx, component, replicas, template);

    let mut udp_ports = vec![ServicePort {
        name: Some("turn-udp".into()),
        port: spec.udp_port,
        target_port: Some(IntOrString::Int(spec.udp_port)),
        protocol: Some("UDP".into()),
        ..ServicePort::default()
    }];
    // Peers send to relayed addresses, so the relay range is published too
    // (host networking exposes it on the node instead).
    if !host_network {
        for relay_port in spec.relay_port_range.min..=spec.relay_port_range.max {
            udp_ports.push(ServicePort {
                name: Some(format!("relay-{relay_port}")),
                port: relay_port,
                target_port: Some(IntOrString::Int(relay_port)),
                protocol: Some("UDP".into()),
                ..ServicePort::default()
            });
        }
    }
    let tcp_ports = vec![ServicePort {
        name: Some("turn-tcp".into()),
        port: spec.tcp_port,
        target_port: Some(IntOrString::Int(spec.tcp_port)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }];
    let service = |name: String, ports: Vec<ServicePort>| {
        let service_type = spec.exposure.service_type;
        let external = service_type != ServiceType::ClusterIP;
        Service {
            metadata: ctx.meta(name, Some(component)),
            spec: Some(ServiceSpec {
                type_: Some(service_type.as_str().into()),
                selector: Some(labels::selector(&ctx.name, component)),
                ports: Some(ports),
                // TURN authenticates and rate-limits by client address, and an
                // allocation lives on one pod: keep source IPs and stickiness.
                external_traffic_policy: external.then(|| "Local".to_string()),
                session_affinity: Some("ClientIP".into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    };
    let objects = vec![
        to_dynamic(&config_map)?,
        to_dynamic(&deployment)?,
        to_dynamic(&service(
            labels::turn_udp_service_name(&ctx.name),
            udp_ports,
        ))?,
        to_dynamic(&service(
            labels::turn_tcp_service_name(&ctx.name),
            tcp_ports,
        ))?,
    ];
    Ok(Built { objects, revision })
}
