//! Managed MongoDB: single-node StatefulSet with a data volume, a headless
//! Service, root credentials from the generated Secret.

use super::{Built, Ctx, pods, to_dynamic, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::resource::ManagedMongoDbSpec;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const PORT: i32 = 27017;

pub(crate) fn desired(ctx: &Ctx<'_>, spec: &ManagedMongoDbSpec) -> Result<Built> {
    let component = Component::MongoDb;
    let name = component.workload_name(&ctx.name);
    let secret = labels::mongodb_secret_name(&ctx.name);
    let from_secret = |env: &str, key: &str| EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.clone(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let tcp_probe = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("mongodb".into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "mongodb".into(),
        image: Some(spec.image.clone()),
        args: Some(["--bind_ip_all"].map(String::from).to_vec()),
        env: Some(vec![
            from_secret("MONGO_INITDB_ROOT_USERNAME", "username"),
            from_secret("MONGO_INITDB_ROOT_PASSWORD", "password"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("mongodb".into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp_probe(5, 3)),
        liveness_probe: Some(tcp_probe(10, 6)),
        resources: Some(pods::resources(
            spec.resources.as_ref(),
            "100m",
            "256Mi",
            "1Gi",
        )),
        security_context: Some(pods::container_security()),
        volume_mounts: Some(vec![
            pods::mount("data", "/data/db", false),
            pods::mount("configdb", "/data/configdb", false),
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
            volumes: Some(vec![pods::empty_dir("configdb"), pods::empty_dir("tmp")]),
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
                name: Some("mongodb".into()),
                port: PORT,
                target_port: Some(IntOrString::String("mongodb".into())),
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
