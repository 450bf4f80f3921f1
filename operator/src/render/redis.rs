//! Managed Redis: StatefulSet (append-only file on a volume) and a headless Service.

use super::context::{Ctx, SpecTemplate};
use super::{pods, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::resource::ManagedRedisSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::{Container, ContainerPort, ExecAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;

pub const PORT: i32 = 6379;
const REDIS_COMMAND: &str = "exec redis-server --appendonly yes --appendfsync everysec \
     --dir /data --requirepass \"$REDIS_PASSWORD\"";

/// The pod template the spec asks for.
pub(crate) fn template(ctx: &Ctx<'_>, spec: &ManagedRedisSpec) -> SpecTemplate {
    let component = Component::Redis;
    let container = Container {
        name: "redis".into(),
        image: Some(spec.image.clone()),
        // One shell string: the password stays out of the pod spec, and no
        // bare `yes` reaches YAML 1.1 readers that would turn it into `true`.
        command: Some(["sh", "-c", REDIS_COMMAND].map(String::from).to_vec()),
        env: Some(vec![pods::env_from_secret(
            "REDIS_PASSWORD",
            &labels::redis_secret_name(&ctx.name),
            "password",
        )]),
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
    workload::database_template(ctx, component, container, vec![pods::empty_dir("tmp")])
}

/// The StatefulSet running `template`, and its headless Service.
pub(crate) fn objects(
    ctx: &Ctx<'_>,
    spec: &ManagedRedisSpec,
    template: PodTemplateSpec,
) -> Result<Vec<DynamicObject>> {
    workload::database_objects(
        ctx,
        Component::Redis,
        template,
        &spec.storage,
        "redis",
        PORT,
    )
}
