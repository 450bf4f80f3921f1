//! Managed MongoDB: single-node StatefulSet with a data volume, a headless
//! Service, root credentials from the generated Secret.

use super::context::{Ctx, SpecTemplate};
use super::{pods, workload};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::resource::ManagedMongoDbSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;

pub const PORT: i32 = 27017;

/// The pod template the spec asks for.
pub(crate) fn template(ctx: &Ctx<'_>, spec: &ManagedMongoDbSpec) -> SpecTemplate {
    let component = Component::MongoDb;
    let secret = labels::mongodb_secret_name(&ctx.name);
    let from_secret = |env: &str, key: &str| pods::env_from_secret(env, &secret, key);
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
        // First start initialises the data files and creates the root
        // user, and a start after an unclean stop replays the journal; both
        // can take minutes on a big volume. The liveness probe only starts
        // once this one passes, so it does not restart a recovering server.
        startup_probe: Some(tcp_probe(5, 120)),
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
    workload::database_template(
        ctx,
        component,
        container,
        vec![pods::empty_dir("configdb"), pods::empty_dir("tmp")],
    )
}

/// The StatefulSet running `template`, and its headless Service.
pub(crate) fn objects(
    ctx: &Ctx<'_>,
    spec: &ManagedMongoDbSpec,
    template: PodTemplateSpec,
) -> Result<Vec<DynamicObject>> {
    workload::database_objects(
        ctx,
        Component::MongoDb,
        template,
        &spec.storage,
        "mongodb",
        PORT,
    )
}
