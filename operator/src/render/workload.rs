//! Deployments and StatefulSets: revision hashes, rollout strategy.

use super::context::{Ctx, SpecTemplate};
use super::hash::short_hash;
use super::pods;
use crate::error::Result;
use crate::labels::{self, Component};
use crate::objects::to_dynamic;
use crate::resource::StorageSpec;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Service,
    ServicePort, ServiceSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use std::collections::BTreeMap;

/// Pod template metadata of a component whose metrics Prometheus scrapes on
/// `metrics_port`; the configuration hash rolls the pods when the
/// configuration changes.
pub(crate) fn scraped_pod_metadata(
    ctx: &Ctx<'_>,
    component: Component,
    config_hash: String,
    metrics_port: i32,
) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels::selector(&ctx.name, component)),
        annotations: Some(BTreeMap::from([
            (labels::CONFIG_HASH_ANNOTATION.to_string(), config_hash),
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            ("prometheus.io/port".to_string(), metrics_port.to_string()),
        ])),
        ..ObjectMeta::default()
    }
}

/// Stamps the template with the hash of its content. Any change to the
/// template (image, configuration hash, resources) changes the revision, so
/// pods roll and the rollback logic can tell revisions apart.
pub(crate) fn with_revision(mut template: PodTemplateSpec) -> (PodTemplateSpec, String) {
    let revision = short_hash(&template);
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::REVISION_ANNOTATION.to_string(), revision.clone());
    (template, revision)
}

/// The component's placement (node selection, affinity, tolerations,
/// topology spread, image pull Secrets) on its pod template; applied before
/// the revision is stamped, so a placement change rolls the pods.
pub(crate) fn placed(
    ctx: &Ctx<'_>,
    component: Component,
    mut template: PodTemplateSpec,
) -> PodTemplateSpec {
    let spec = &ctx.cluster.spec;
    let placement = match component {
        Component::Signaling => Some(&spec.signaling.placement),
        Component::Turn => Some(&spec.turn.placement),
        Component::Redis => spec.redis.managed.as_ref().map(|m| &m.placement),
        Component::MongoDb => spec.mongodb.managed.as_ref().map(|m| &m.placement),
    };
    let (Some(placement), Some(pod)) = (placement, template.spec.as_mut()) else {
        return template;
    };
    if !placement.node_selector.is_empty() {
        pod.node_selector = Some(placement.node_selector.clone());
    }
    if let Some(user) = &placement.affinity {
        let own = pod.affinity.take();
        let mut merged = user.clone();
        // A rule the workload needs itself (one host-network relay per
        // node) stays beside the user's.
        if let Some(own_terms) = own
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution)
        {
            merged
                .pod_anti_affinity
                .get_or_insert_with(Default::default)
                .required_during_scheduling_ignored_during_execution
                .get_or_insert_with(Vec::new)
                .extend(own_terms);
        }
        pod.affinity = Some(merged);
    }
    if !placement.tolerations.is_empty() {
        pod.tolerations = Some(placement.tolerations.clone());
    }
    if !placement.topology_spread_constraints.is_empty() {
        pod.topology_spread_constraints = Some(placement.topology_spread_constraints.clone());
    }
    if !placement.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(placement.image_pull_secrets.clone());
    }
    template
}

pub(crate) fn deployment(
    ctx: &Ctx<'_>,
    component: Component,
    replicas: i32,
    template: PodTemplateSpec,
) -> Deployment {
    let rollout = &ctx.cluster.spec.rollout;
    Deployment {
        metadata: ctx.meta(component.workload_name(&ctx.name), Some(component)),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&ctx.name, component)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String(format!(
                        "{}%",
                        rollout.max_surge_percent
                    ))),
                    max_unavailable: Some(IntOrString::String(format!(
                        "{}%",
                        rollout.max_unavailable_percent
                    ))),
                }),
            }),
            progress_deadline_seconds: Some(rollout.progress_deadline_seconds),
            // Old ReplicaSets are what a rollback returns to.
            revision_history_limit: Some(10),
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A managed database's pod template: its single container (plus the given
/// scratch `volumes` and the `data` volume claim's mount).
pub(crate) fn database_template(
    ctx: &Ctx<'_>,
    component: Component,
    container: Container,
    volumes: Vec<Volume>,
) -> SpecTemplate {
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::selector(&ctx.name, component)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(pods::pod_security(pods::DATABASE_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
    };
    let (template, revision) = with_revision(placed(ctx, component, template));
    SpecTemplate {
        template,
        revision,
        config: BTreeMap::new(),
    }
}

/// A managed database: `template` in a one-replica StatefulSet with a
/// `data` volume claim, and a headless Service exposing the container's TCP
/// port `port_name`.
pub(crate) fn database_objects(
    ctx: &Ctx<'_>,
    component: Component,
    template: PodTemplateSpec,
    storage: &StorageSpec,
    port_name: &str,
    port: i32,
) -> Result<Vec<DynamicObject>> {
    let name = component.workload_name(&ctx.name);
    let stateful_set = stateful_set(
        ctx,
        component,
        template,
        &storage.size,
        storage.storage_class_name.as_ref(),
    );
    let service = Service {
        metadata: ctx.meta(name, Some(component)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::selector(&ctx.name, component)),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port,
                target_port: Some(IntOrString::String(port_name.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(vec![to_dynamic(&service)?, to_dynamic(&stateful_set)?])
}

fn stateful_set(
    ctx: &Ctx<'_>,
    component: Component,
    template: PodTemplateSpec,
    size: &str,
    storage_class: Option<&String>,
) -> StatefulSet {
    let name = component.workload_name(&ctx.name);
    StatefulSet {
        metadata: ctx.meta(name.clone(), Some(component)),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&ctx.name, component)),
                ..LabelSelector::default()
            },
            template,
            // Data outlives the cluster resource unless the user deletes it.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(labels::selector(&ctx.name, component)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage_class.cloned(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(size.to_string()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}
