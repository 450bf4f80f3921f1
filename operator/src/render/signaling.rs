//! Signaling: ConfigMap, Deployment, Service, optional Ingress.

use super::context::{Ctx, SpecTemplate};
use super::hash::short_hash;
use super::secrets::SecretRefs;
use super::{pods, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::objects::to_dynamic;
use crate::resource::{Endpoints, ServiceType};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource,
    KeyToPath, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use std::collections::BTreeMap;

/// The port the signaling server listens on inside the pod.
pub const CONTAINER_PORT: i32 = 8080;
/// Seconds a stopping pod has to tell clients to resume elsewhere.
const TERMINATION_GRACE_SECONDS: i64 = 60;

const TURN_SECRET_DIR: &str = "/etc/videochat/turn";
const ADMIN_TOKEN_DIR: &str = "/etc/videochat/admin";
const REDIS_DIR: &str = "/etc/videochat/redis";
const MONGODB_DIR: &str = "/etc/videochat/mongodb";
const AUTH_DIR: &str = "/etc/videochat/auth";
const TURN_URIS_DIR: &str = "/etc/videochat/turn-uris";
const TURN_URIS_KEY: &str = "uris";
const PUBLIC_ORIGINS_DIR: &str = "/etc/videochat/public-origins";
const PUBLIC_ORIGINS_KEY: &str = "origins";

/// The ConfigMap holding the TURN URIs signaling hands to clients.
pub fn turn_uris_config_map_name(cluster: &str) -> String {
    format!("{cluster}-signaling-turn-uris")
}

/// The TURN URIs ConfigMap: one URI per line. A file, not part of the pod
/// template, so relays that come and go (a scale-up, a node's address,
/// the first relay at install) reach clients without rolling signaling:
/// the kubelet swaps the file and signaling re-reads it.
fn turn_uris_config_map(ctx: &Ctx<'_>, endpoints: &Endpoints) -> ConfigMap {
    let uris: Vec<&str> = endpoints.turn_uris.iter().map(|u| u.uri.as_str()).collect();
    let mut text = uris.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    ConfigMap {
        metadata: ctx.meta(
            turn_uris_config_map_name(&ctx.name),
            Some(Component::Signaling),
        ),
        data: Some(BTreeMap::from([(TURN_URIS_KEY.to_string(), text)])),
        ..ConfigMap::default()
    }
}

/// The ConfigMap holding the origins signaling is published under.
pub fn public_origins_config_map_name(cluster: &str) -> String {
    format!("{cluster}-signaling-public-origins")
}

/// The origin of the demo page served at a published signaling WebSocket
/// URL (`ws://host:port/ws` gives `http://host:port`).
fn page_origin(signaling_url: &str) -> Option<String> {
    let (scheme, rest) = signaling_url.split_once("://")?;
    let scheme = match scheme {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}"))
}

/// The public origins ConfigMap: the origin of the page served at the
/// published signaling address, one per line, empty while the load balancer
/// has none. A file, not part of the pod template, so an address that comes
/// or changes reaches signaling's origin check without rolling it.
fn public_origins_config_map(ctx: &Ctx<'_>, endpoints: &Endpoints) -> ConfigMap {
    let text = endpoints
        .signaling_url
        .as_deref()
        .and_then(page_origin)
        .map(|origin| format!("{origin}\n"))
        .unwrap_or_default();
    ConfigMap {
        metadata: ctx.meta(
            public_origins_config_map_name(&ctx.name),
            Some(Component::Signaling),
        ),
        data: Some(BTreeMap::from([(PUBLIC_ORIGINS_KEY.to_string(), text)])),
        ..ConfigMap::default()
    }
}

/// The environment of the signaling container (the ConfigMap's data).
pub(crate) fn config(ctx: &Ctx<'_>, secrets: &SecretRefs) -> BTreeMap<String, String> {
    let spec = &ctx.cluster.spec;
    let limits = &spec.signaling.limits;
    let mut env = BTreeMap::from([
        (
            "VIDEOCHAT_LISTEN".to_string(),
            format!("0.0.0.0:{CONTAINER_PORT}"),
        ),
        ("VIDEOCHAT_LOG_FORMAT".to_string(), "json".to_string()),
        (
            "VIDEOCHAT_REDIS_URL_FILE".to_string(),
            format!("{REDIS_DIR}/url"),
        ),
        (
            "VIDEOCHAT_MONGODB_URI_FILE".to_string(),
            format!("{MONGODB_DIR}/uri"),
        ),
        (
            "VIDEOCHAT_TURN_SECRET_FILE".to_string(),
            format!("{TURN_SECRET_DIR}/secret"),
        ),
        // Admin calls (drain) need this token; the operator holds it.
        (
            "VIDEOCHAT_ADMIN_TOKEN_FILE".to_string(),
            format!("{ADMIN_TOKEN_DIR}/token"),
        ),
        // The TURN Deployment is the relay; no in-process one in a cluster.
        ("VIDEOCHAT_NO_EMBEDDED_TURN".to_string(), "true".to_string()),
        // Any local files go to the pod's scratch volume (read-only root).
        ("VIDEOCHAT_DATA_DIR".to_string(), "/tmp/data".to_string()),
        (
            "VIDEOCHAT_TURN_CREDENTIAL_TTL".to_string(),
            format!("{}s", spec.turn.credential_ttl_seconds),
        ),
        // Clients get time to resume elsewhere before the pod is killed.
        (
            "VIDEOCHAT_DRAIN_TIMEOUT".to_string(),
            format!("{}s", TERMINATION_GRACE_SECONDS - 10),
        ),
        (
            "VIDEOCHAT_MAX_FRAME_BYTES".to_string(),
            limits.max_frame_bytes.to_string(),
        ),
        (
            "VIDEOCHAT_RATE_PER_CONNECTION".to_string(),
            limits.messages_per_second.to_string(),
        ),
        (
            "VIDEOCHAT_MAX_PEERS_PER_ROOM".to_string(),
            limits.max_peers_per_room.to_string(),
        ),
        (
            "VIDEOCHAT_MAX_CONNECTIONS".to_string(),
            limits.max_connections.to_string(),
        ),
    ]);
    // Re-read when it changes; empty until a relay has an address.
    env.insert(
        "VIDEOCHAT_TURN_URIS_FILE".into(),
        format!("{TURN_URIS_DIR}/{TURN_URIS_KEY}"),
    );
    // The published address's origin, merged with the Ingress one below.
    env.insert(
        "VIDEOCHAT_PUBLIC_ORIGINS_FILE".into(),
        format!("{PUBLIC_ORIGINS_DIR}/{PUBLIC_ORIGINS_KEY}"),
    );
    if secrets.auth_ref.is_some() {
        env.insert(
            "VIDEOCHAT_AUTH_SECRET_FILE".into(),
            format!("{AUTH_DIR}/secret"),
        );
    }
    if !spec.signaling.trusted_proxies.is_empty() {
        env.insert(
            "VIDEOCHAT_TRUSTED_PROXIES".into(),
            spec.signaling.trusted_proxies.join(","),
        );
    }
    // The demo page served through the Ingress opens its WebSocket from the
    // Ingress origin; the service decides same-origin from this setting,
    // never from the Host header.
    if let Some(ingress) = &spec.signaling.ingress {
        let scheme = if ingress.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        env.insert(
            "VIDEOCHAT_PUBLIC_ORIGINS".into(),
            format!("{scheme}://{}", ingress.host),
        );
    }
    env
}

/// The pod template the spec asks for.
pub(crate) fn template(ctx: &Ctx<'_>, secrets: &SecretRefs) -> SpecTemplate {
    let spec = &ctx.cluster.spec.signaling;
    let component = Component::Signaling;
    let config_name = labels::config_map_name(&ctx.name, component);
    let data = config(ctx, secrets);
    let config_hash = short_hash(&data);

    let mut volumes = vec![
        pods::secret_volume("turn-secret", &secrets.turn_ref, "secret"),
        pods::secret_volume("admin-token", &secrets.admin_token_ref, "token"),
        pods::secret_volume("redis", &secrets.redis_url_ref, "url"),
        pods::secret_volume("mongodb", &secrets.mongodb_uri_ref, "uri"),
        pods::empty_dir("tmp"),
        Volume {
            name: "turn-uris".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: turn_uris_config_map_name(&ctx.name),
                items: Some(vec![KeyToPath {
                    key: TURN_URIS_KEY.into(),
                    path: TURN_URIS_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "public-origins".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: public_origins_config_map_name(&ctx.name),
                items: Some(vec![KeyToPath {
                    key: PUBLIC_ORIGINS_KEY.into(),
                    path: PUBLIC_ORIGINS_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        pods::mount("turn-secret", TURN_SECRET_DIR, true),
        pods::mount("admin-token", ADMIN_TOKEN_DIR, true),
        pods::mount("redis", REDIS_DIR, true),
        pods::mount("mongodb", MONGODB_DIR, true),
        pods::mount("tmp", "/tmp", false),
        pods::mount("turn-uris", TURN_URIS_DIR, true),
        pods::mount("public-origins", PUBLIC_ORIGINS_DIR, true),
    ];
    if let Some(auth) = &secrets.auth_ref {
        volumes.push(pods::secret_volume("auth", auth, "secret"));
        mounts.push(pods::mount("auth", AUTH_DIR, true));
    }

    let probe =
        |path: &str, period: i32, failures: i32| pods::http_probe("http", path, period, failures);
    let container = Container {
        name: "signaling".into(),
        image: Some(spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_name,
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(pods::resources(
            spec.resources.as_ref(),
            "100m",
            "128Mi",
            "512Mi",
        )),
        security_context: Some(pods::container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(workload::scraped_pod_metadata(
            ctx,
            component,
            config_hash,
            CONTAINER_PORT,
        )),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(pods::pod_security(pods::NONROOT_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
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

/// The ConfigMap, the Deployment running `template` with `replicas`, the
/// Service and the optional Ingress.
pub(crate) fn objects(
    ctx: &Ctx<'_>,
    config: &BTreeMap<String, String>,
    endpoints: &Endpoints,
    template: PodTemplateSpec,
    replicas: i32,
) -> Result<Vec<DynamicObject>> {
    let spec = &ctx.cluster.spec.signaling;
    let component = Component::Signaling;
    let name = component.workload_name(&ctx.name);
    let config_map = ConfigMap {
        metadata: ctx.meta(
            labels::config_map_name(&ctx.name, component),
            Some(component),
        ),
        data: Some(config.clone()),
        ..ConfigMap::default()
    };
    let deployment: Deployment = workload::deployment(ctx, component, replicas, template);

    let service = Service {
        metadata: ctx.meta(name.clone(), Some(component)),
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            // Signaling limits connections and messages per client address:
            // a balancer that SNATs through another node would make every
            // client one address. Local keeps the client's own.
            external_traffic_policy: (spec.service.type_ != ServiceType::ClusterIP)
                .then(|| "Local".into()),
            selector: Some(labels::selector(&ctx.name, component)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: spec.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let mut objects = vec![
        to_dynamic(&config_map)?,
        to_dynamic(&turn_uris_config_map(ctx, endpoints))?,
        to_dynamic(&public_origins_config_map(ctx, endpoints))?,
        to_dynamic(&deployment)?,
        to_dynamic(&service)?,
    ];
    if let Some(ingress) = &spec.ingress {
        let mut meta = ctx.meta(name.clone(), Some(component));
        // WebSockets stay open for a whole call; default proxy timeouts are 60s.
        meta.annotations = Some(BTreeMap::from([
            (
                "nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(),
                "3600".to_string(),
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-send-timeout".to_string(),
                "3600".to_string(),
            ),
        ]));
        let ingress = Ingress {
            metadata: meta,
            spec: Some(IngressSpec {
                ingress_class_name: ingress.class_name.clone(),
                tls: ingress.tls_secret_name.as_ref().map(|secret| {
                    vec![IngressTLS {
                        hosts: Some(vec![ingress.host.clone()]),
                        secret_name: Some(secret.clone()),
                    }]
                }),
                rules: Some(vec![IngressRule {
                    host: Some(ingress.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: name.clone(),
                                    port: Some(ServiceBackendPort {
                                        name: Some("http".into()),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        };
        objects.push(to_dynamic(&ingress)?);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::page_origin;

    #[test]
    fn the_page_origin_is_the_websocket_url_s_scheme_host_and_port() {
        assert_eq!(
            page_origin("ws://198.18.0.10:8080/ws").as_deref(),
            Some("http://198.18.0.10:8080")
        );
        assert_eq!(
            page_origin("wss://chat.example.com/ws").as_deref(),
            Some("https://chat.example.com")
        );
        assert_eq!(
            page_origin("ws://[2001:db8::1]:80/ws").as_deref(),
            Some("http://[2001:db8::1]:80")
        );
        assert_eq!(page_origin("http://x/ws"), None);
        assert_eq!(page_origin("ws:///ws"), None);
    }
}
