//! Per-pod figures as observed objects: a `PodLoad` document per pod (what
//! the controller scraped from the pod's `/metrics`, or what a user feeds to
//! `plan -f`) and metrics.k8s.io `PodMetrics` for CPU.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::DynamicObject;
use serde_json::json;

use super::load::cpu_millicores_of;
use crate::observed::Observed;

/// apiVersion of the load documents.
pub const POD_LOAD_API_VERSION: &str = "videochat.dev/v1alpha1";
/// Kind of the load documents: one per pod, `load` = the component's gauge.
pub const POD_LOAD_KIND: &str = "PodLoad";

/// A `PodLoad` document, as the controller records a scrape.
pub fn pod_load_object(namespace: &str, pod: &str, load: f64) -> DynamicObject {
    let mut object = DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: POD_LOAD_API_VERSION.into(),
            kind: POD_LOAD_KIND.into(),
        }),
        metadata: Default::default(),
        data: json!({ "load": load }),
    };
    object.metadata.name = Some(pod.to_owned());
    object.metadata.namespace = Some(namespace.to_owned());
    object
}

/// Load recorded for a pod, when a valid figure was observed.
pub fn observed_load(observed: &Observed, pod: &str) -> Option<f64> {
    observed
        .get(POD_LOAD_KIND, pod)?
        .data
        .get("load")?
        .as_f64()
        .filter(|l| l.is_finite() && *l >= 0.0)
}

/// CPU in use by a pod, from a metrics.k8s.io `PodMetrics` object.
pub fn observed_cpu(observed: &Observed, pod: &str) -> Option<f64> {
    let containers = observed
        .get("PodMetrics", pod)?
        .data
        .get("containers")?
        .as_array()?
        .clone();
    let mut total = 0.0;
    for container in containers {
        let cpu = container.get("usage")?.get("cpu")?.as_str()?;
        total += cpu_millicores_of(&Quantity(cpu.to_owned()))?;
    }
    Some(total)
}
