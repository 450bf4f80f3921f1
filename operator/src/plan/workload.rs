//! Deployments and StatefulSets: revision hashes, replica counts, rollout
//! strategy.

use super::Ctx;
use super::hash::short_hash;
use crate::labels::{self, Component};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

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

/// The replica count to apply. With autoscaling on, the current count is
/// kept within the bounds (the scaler owns it); otherwise the spec's.
pub(crate) fn replicas(ctx: &Ctx<'_>, component: Component, spec_replicas: i32) -> i32 {
    let autoscaling = &ctx.cluster.spec.autoscaling;
    if !autoscaling.enabled {
        return spec_replicas;
    }
    let bounds = match component {
        Component::Signaling => &autoscaling.signaling,
        Component::Turn => &autoscaling.turn,
        _ => return spec_replicas,
    };
    let current = ctx
        .observed
        .typed::<Deployment>("Deployment", &component.workload_name(&ctx.name))
        .and_then(|d| d.spec.replicas)
        .unwrap_or(bounds.min_replicas);
    current.clamp(
        bounds.min_replicas,
        bounds.max_replicas.max(bounds.min_replicas),
    )
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

pub(crate) fn stateful_set(
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
