//! Facts about the cluster resource that every builder needs.

use std::collections::BTreeMap;

use crate::labels::{self, Component};
use crate::observed::Observed;
use crate::resource::VideoChatCluster;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The resource, its identity and what was observed, plus the replicas the
/// workloads keep before scaling (a decision the TURN addresses and
/// endpoints depend on).
pub struct Ctx<'a> {
    pub cluster: &'a VideoChatCluster,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub observed: &'a Observed,
    pub held_replicas: &'a BTreeMap<Component, i32>,
}

impl Ctx<'_> {
    pub fn meta(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Cluster-local DNS name of a Service.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }

    /// Replicas a component keeps before scaling.
    pub fn held(&self, component: Component) -> i32 {
        self.held_replicas.get(&component).copied().unwrap_or(1)
    }
}

/// A component's pod template as the spec asks for it, with its revision
/// and the configuration its ConfigMap carries.
#[derive(Clone, Debug)]
pub struct SpecTemplate {
    pub template: PodTemplateSpec,
    pub revision: String,
    /// The ConfigMap data (the container's environment), for the components
    /// that have one.
    pub config: BTreeMap<String, String>,
}
