//! The pods, as the controller reads and changes them: read the pods' load
//! (their `/metrics`) and CPU (metrics.k8s.io when installed) into the
//! observed set, and carry out the drain and pod deletion actions of a plan.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    TypeMeta,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::pod_admin::{PodAdmin, PodTarget};
use crate::autoscale::pod_load_object;
use crate::error::{Error, Result};
use crate::labels::{
    self, ADMIN_TOKEN_KEY, Component, DRAINING_DELETION_COST, DRAINING_SINCE_ANNOTATION,
    POD_DELETION_COST_ANNOTATION, admin_token_secret_name,
};
use crate::observed::Observed;
use crate::plan::Action;
use crate::resource::VideoChatCluster;
use crate::rollout::health::pod_is_ready;
use crate::write_failure::{FailedWrite, WriteFailure};

/// Pods scraped at once.
const SCRAPE_CONCURRENCY: usize = 16;

fn component_of(pod: &Pod) -> Option<Component> {
    let name = pod.metadata.labels.as_ref()?.get(labels::COMPONENT)?;
    Component::ALL.into_iter().find(|c| c.as_str() == name)
}

/// The cluster's admin token, from the observed Secret.
pub fn admin_token(observed: &Observed, cluster: &str) -> Option<String> {
    let secret: Secret = observed.typed("Secret", &admin_token_secret_name(cluster))?;
    let bytes = secret.data?.remove(ADMIN_TOKEN_KEY)?.0;
    String::from_utf8(bytes)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Lists the cluster's pods and, with autoscaling on, records each running
/// signaling and TURN pod's load (a `PodLoad` per pod that answered) and
/// CPU (`PodMetrics`, when the metrics API exists). A pod that cannot be
/// scraped is logged and left without a figure: the scaler then never
/// scales down on its account.
pub async fn observe_pods(
    client: &Client,
    pod_admin: &dyn PodAdmin,
    cluster: &VideoChatCluster,
    observed: &mut Observed,
) -> Result<()> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = pods
        .list(&ListParams::default().labels(&pods_selector(&name)))
        .await
        .map_err(|e| Error::kube(format!("listing pods of {namespace}/{name}"), e))?;
    record_pods(client, pod_admin, cluster, list.items, observed).await
}

/// Label selector of a cluster's pods.
pub fn pods_selector(cluster: &str) -> String {
    format!(
        "{}={},{}={}",
        labels::NAME,
        labels::APP_NAME,
        labels::INSTANCE,
        cluster
    )
}

/// Whether the operator asked the pod to drain.
fn is_draining(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DRAINING_SINCE_ANNOTATION))
}

/// [`observe_pods`] on pods already read (from the watch cache).
pub async fn record_pods(
    client: &Client,
    pod_admin: &dyn PodAdmin,
    cluster: &VideoChatCluster,
    pods: Vec<Pod>,
    observed: &mut Observed,
) -> Result<()> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    let selector = pods_selector(&name);
    let token = admin_token(observed, &name);
    let scrape = cluster.spec.autoscaling.enabled;
    let mut targets = Vec::new();
    for pod in pods {
        let pod_name = pod.name_any();
        // A draining pod is NotReady by design, and its load reaching zero
        // is exactly what the scale-down waits for: it is scraped too.
        if scrape
            && let Some(component) =
                component_of(&pod).filter(|c| matches!(c, Component::Signaling | Component::Turn))
            && pod.metadata.deletion_timestamp.is_none()
            && (pod_is_ready(&pod) || is_draining(&pod))
            && let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref())
        {
            targets.push(PodTarget::for_pod(&pod_name, component, ip, token.clone()));
        }
        let mut object = crate::objects::to_dynamic(&pod)?;
        object.types = Some(TypeMeta {
            api_version: "v1".into(),
            kind: "Pod".into(),
        });
        observed.insert(object);
    }
    // A few pods at a time, so one slow pod does not hold up the rest.
    let scraped: Vec<(String, Result<f64>)> = futures::stream::iter(targets)
        .map(|target| async move {
            let load = pod_admin.scrape_load(&target).await;
            (target.name, load)
        })
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect()
        .await;
    for (pod_name, load) in scraped {
        match load {
            Ok(load) => observed.insert(pod_load_object(&namespace, &pod_name, load)),
            Err(error) => {
                tracing::warn!(cluster = %name, %namespace, pod = %pod_name, %error, "cannot read pod load");
            }
        }
    }
    if scrape {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "metrics.k8s.io",
            "v1beta1",
            "PodMetrics",
        ));
        let metrics: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &resource);
        match metrics.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => {
                for mut object in list.items {
                    object.types = Some(TypeMeta {
                        api_version: resource.api_version.clone(),
                        kind: "PodMetrics".into(),
                    });
                    observed.insert(object);
                }
            }
            // No metrics-server: scale on load alone.
            Err(error) => tracing::debug!(cluster = %name, %error, "no pod CPU metrics"),
        }
    }
    Ok(())
}

/// Carries out the plan's drain and pod deletion actions. Each one stands
/// alone: a failure is logged and returned, and the others still run. A pod
/// whose drain failed stays unmarked, and replicas only drop for pods seen
/// marked (see `plan_scaling`), so no pod leaves that was not drained.
pub async fn run_pod_actions(
    client: &Client,
    pod_admin: &dyn PodAdmin,
    cluster: &VideoChatCluster,
    observed: &Observed,
    actions: &[Action],
    now: Timestamp,
) -> Result<Vec<WriteFailure>> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let token = admin_token(observed, &name);
    let mut failures = Vec::new();
    for action in actions {
        let (write, pod, result) = match action {
            Action::Drain { component, pod } => {
                let Some(component) = Component::ALL.into_iter().find(|c| c.as_str() == component)
                else {
                    continue;
                };
                let result = drain_pod(
                    &pods,
                    pod_admin,
                    observed,
                    pod,
                    component,
                    token.clone(),
                    now,
                )
                .await;
                if result.is_ok() {
                    tracing::info!(cluster = %name, %namespace, pod = %pod, component = component.as_str(), "pod draining");
                }
                (FailedWrite::Drain, pod, result)
            }
            Action::DeletePod { pod, reason, .. } => {
                let result = match pods.delete(pod, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(cluster = %name, %namespace, pod = %pod, %reason, "pod deleted");
                        Ok(())
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(e) => Err(Error::kube(format!("deleting pod {namespace}/{pod}"), e)),
                };
                (FailedWrite::DeletePod, pod, result)
            }
            _ => continue,
        };
        if let Err(error) = result {
            tracing::warn!(cluster = %name, %namespace, pod = %pod, %error, "pod action failed");
            failures.push(WriteFailure {
                write,
                object: format!("Pod/{pod}"),
                message: error.to_string(),
            });
        }
    }
    Ok(failures)
}

/// Asks one pod to drain, then marks it draining and cheapest to delete.
async fn drain_pod(
    pods: &Api<Pod>,
    pod_admin: &dyn PodAdmin,
    observed: &Observed,
    pod: &str,
    component: Component,
    token: Option<String>,
    now: Timestamp,
) -> Result<()> {
    let observed_pod: Option<Pod> = observed.typed("Pod", pod);
    let Some(ip) = observed_pod
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.pod_ip.clone())
    else {
        return Err(Error::PodEndpoint {
            pod: pod.to_owned(),
            action: "drain request".into(),
            message: "the pod has no IP".into(),
        });
    };
    let target = PodTarget::for_pod(pod, component, &ip, token);
    pod_admin.drain(&target).await?;
    let patch = json!({
        "metadata": {
            "annotations": BTreeMap::from([
                (DRAINING_SINCE_ANNOTATION, now.to_string()),
                (POD_DELETION_COST_ANNOTATION, DRAINING_DELETION_COST.to_string()),
            ])
        }
    });
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("marking pod {pod} draining"), e))?;
    Ok(())
}
