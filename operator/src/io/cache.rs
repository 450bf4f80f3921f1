//! Watch caches of the clusters' children: one reflector store per kind,
//! filled by the same watches that wake the controller, so a reconcile reads
//! its observed objects from memory instead of listing nine kinds and the
//! pods from the API server every time.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DynamicObject, TypeMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::labels;

/// Longest a reconcile waits for the caches' first listing.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A watch stream of one kind that fills a store as it is polled.
pub type WatchStream<K> =
    std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send + 'static>>;

/// A store and the stream that fills it (which must be polled: the
/// controller polls the owned kinds' streams, a task the others').
pub fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, WatchStream<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .boxed();
    (reader, stream)
}

/// The stores of every kind a plan reads.
#[derive(Clone)]
pub struct ChildCaches {
    pub secrets: Store<Secret>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub ingresses: Store<Ingress>,
    pub network_policies: Store<NetworkPolicy>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub controller_revisions: Store<ControllerRevision>,
    pub pods: Store<Pod>,
}

fn matches(meta: &kube::api::ObjectMeta, namespace: &str, wanted: &[(&str, &str)]) -> bool {
    meta.namespace.as_deref() == Some(namespace)
        && wanted.iter().all(|(key, value)| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(*key))
                .is_some_and(|v| v == value)
        })
}

fn to_observed<K: Serialize>(object: &K, api_version: &str, kind: &str) -> Result<DynamicObject> {
    let mut object = crate::objects::to_dynamic(object)?;
    object.types = Some(TypeMeta {
        api_version: api_version.into(),
        kind: kind.into(),
    });
    Ok(object)
}

fn collect<K>(
    store: &Store<K>,
    namespace: &str,
    wanted: &[(&str, &str)],
    api_version: &str,
    kind: &str,
    out: &mut Vec<DynamicObject>,
) -> Result<()>
where
    K: Resource + Clone + Serialize + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    for object in store.state() {
        if matches(object.meta(), namespace, wanted) {
            out.push(to_observed(object.as_ref(), api_version, kind)?);
        }
    }
    Ok(())
}

async fn ready<K>(store: &Store<K>, kind: &str) -> Result<()>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::CacheNotReady { kind: kind.into() }),
    }
}

impl ChildCaches {
    /// Waits until every store has had its first listing.
    pub async fn wait_until_ready(&self) -> Result<()> {
        ready(&self.secrets, "Secret").await?;
        ready(&self.config_maps, "ConfigMap").await?;
        ready(&self.services, "Service").await?;
        ready(&self.deployments, "Deployment").await?;
        ready(&self.stateful_sets, "StatefulSet").await?;
        ready(&self.ingresses, "Ingress").await?;
        ready(&self.network_policies, "NetworkPolicy").await?;
        ready(&self.pod_disruption_budgets, "PodDisruptionBudget").await?;
        ready(&self.controller_revisions, "ControllerRevision").await?;
        ready(&self.pods, "Pod").await
    }

    /// The cluster's children, as the API lists them with the children
    /// selector, with apiVersion and kind set.
    pub fn children(&self, namespace: &str, cluster: &str) -> Result<Vec<DynamicObject>> {
        let wanted = [
            (labels::NAME, labels::APP_NAME),
            (labels::INSTANCE, cluster),
            (labels::MANAGED_BY, labels::MANAGER),
        ];
        let mut out = Vec::new();
        collect(&self.secrets, namespace, &wanted, "v1", "Secret", &mut out)?;
        collect(
            &self.config_maps,
            namespace,
            &wanted,
            "v1",
            "ConfigMap",
            &mut out,
        )?;
        collect(
            &self.services,
            namespace,
            &wanted,
            "v1",
            "Service",
            &mut out,
        )?;
        let apps = "apps/v1";
        collect(
            &self.deployments,
            namespace,
            &wanted,
            apps,
            "Deployment",
            &mut out,
        )?;
        collect(
            &self.stateful_sets,
            namespace,
            &wanted,
            apps,
            "StatefulSet",
            &mut out,
        )?;
        let networking = "networking.k8s.io/v1";
        collect(
            &self.ingresses,
            namespace,
            &wanted,
            networking,
            "Ingress",
            &mut out,
        )?;
        let kind = "NetworkPolicy";
        collect(
            &self.network_policies,
            namespace,
            &wanted,
            networking,
            kind,
            &mut out,
        )?;
        let kind = "PodDisruptionBudget";
        collect(
            &self.pod_disruption_budgets,
            namespace,
            &wanted,
            "policy/v1",
            kind,
            &mut out,
        )?;
        let kind = "ControllerRevision";
        collect(
            &self.controller_revisions,
            namespace,
            &wanted,
            apps,
            kind,
            &mut out,
        )?;
        Ok(out)
    }

    /// The cluster's pods (every component).
    pub fn pods(&self, namespace: &str, cluster: &str) -> Vec<Pod> {
        let wanted = [
            (labels::NAME, labels::APP_NAME),
            (labels::INSTANCE, cluster),
        ];
        self.pods
            .state()
            .into_iter()
            .filter(|p| matches(p.meta(), namespace, &wanted))
            .map(|p| p.as_ref().clone())
            .collect()
    }

    /// A Secret in the cache (any Secret the operator watches), by name.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets
            .state()
            .into_iter()
            .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
    }
}

/// Caches filled from a fixed set of objects (each with apiVersion and
/// kind), for tests of the reconciler's cached path.
#[cfg(any(test, feature = "test-double"))]
pub fn caches_from(objects: &[serde_json::Value]) -> ChildCaches {
    fn store<K>(objects: &[serde_json::Value], kind: &str) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects.iter().filter(|o| o["kind"] == kind) {
            if let Ok(typed) = serde_json::from_value::<K>(object.clone()) {
                writer.apply_watcher_event(&watcher::Event::InitApply(typed));
            }
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The store keeps what was written after the writer is gone.
        std::mem::forget(writer);
        reader
    }
    ChildCaches {
        secrets: store(objects, "Secret"),
        config_maps: store(objects, "ConfigMap"),
        services: store(objects, "Service"),
        deployments: store(objects, "Deployment"),
        stateful_sets: store(objects, "StatefulSet"),
        ingresses: store(objects, "Ingress"),
        network_policies: store(objects, "NetworkPolicy"),
        pod_disruption_budgets: store(objects, "PodDisruptionBudget"),
        controller_revisions: store(objects, "ControllerRevision"),
        pods: store(objects, "Pod"),
    }
}
