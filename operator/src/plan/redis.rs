//! Managed Redis: StatefulSet (append-only file on a volume) and a headless Service.

use super::{Built, Ctx, pods, to_dynamic, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::resource::ManagedRedisSpec;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const PORT: i32 = 6379;
const REDIS_COMMAND: &str = "exec redis-server --appendonly yes --appendfsync everysec \
     --dir /data --requirepass \"$REDIS_PASSWORD\"";

pub(crate) fn desired(ctx: &Ctx<'_>, spec: &ManagedRedisSpec) -> Result<Built> {
    let component = Component::Redis;
    let name = component.workload_name(&ctx.name);
    let container = Container {
        name: "redis".into(),
        image: Some(spec.image.clone()),
        // One shell string: the password stays out of the pod spec, and no
        // bare `yes` reaches YAML 1.1 readers that would turn it into `true`.
        command: Some(["sh", "-c", REDIS_COMMAND].map(String::from).to_vec()),
        env: Some(vec![EnvVar {
            name: "REDIS_PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: labels::redis_secret_name(&ctx.name),
                    key: "password".into(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(
                    [
                        "sh",
                        "-c",
                        "redis-cli -a \"$REDIS_PASSWORD\" --no-auth-warning ping | grep -q PONG",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(pods::resources(
            spec.resources.as_ref(),
            "50m",
            "64Mi",
            "512Mi",
        )),
        security_context: Some(pods::container_security()),
        volume_mounts: Some(vec![
            pods::mount("data", "/data", false),
            pods::mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::selector(&ctx.name, component)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![pods::empty_dir("tmp")]),
            security_context: Some(pods::pod_security(pods::DATABASE_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
    };
    let (template, revision) = workload::with_revision(template);
    let stateful_set = workload::stateful_set(
        ctx,
        component,
        template,
        &spec.storage.size,
        spec.storage.storage_class_name.as_ref(),
    );
    let service = Service {
        metadata: ctx.meta(name, Some(component)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::selector(&ctx.name, component)),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: PORT,
                target_port: Some(IntOrString::String("redis".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(Built {
        objects: vec![to_dynamic(&service)?, to_dynamic(&stateful_set)?],
        revision,
    })
}
