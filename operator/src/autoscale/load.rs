//! Per-pod load: the scraped gauge, CPU, readiness and drain state.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;

use crate::labels::DRAINING_SINCE_ANNOTATION;
use crate::rollout::health::pod_is_ready;

/// The gauge a component's load is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMetric {
    /// Open WebSocket connections of a signaling pod.
    SignalingConnections,
    /// Live allocations of a TURN pod.
    TurnAllocations,
}

impl LoadMetric {
    /// Name of the gauge in the pod's `/metrics`.
    pub fn gauge_name(self) -> &'static str {
        match self {
            Self::SignalingConnections => "videochat_signaling_connections",
            Self::TurnAllocations => "videochat_turn_allocations_active",
        }
    }
}

/// What the scaler knows about one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodLoad {
    pub name: String,
    pub ready: bool,
    /// Being deleted already: neither counted nor chosen.
    pub terminating: bool,
    /// The load gauge; None when the pod could not be scraped.
    pub load: Option<f64>,
    /// CPU in use, from the metrics API; None when not available.
    pub cpu_millicores: Option<f64>,
    /// CPU request of the pod's containers together.
    pub cpu_request_millicores: Option<f64>,
    /// Set once the operator asked the pod to drain.
    pub draining_since: Option<Timestamp>,
}

/// Builds the scaler's view of a pod from the Pod object and the figures
/// read for it. A draining annotation that does not parse counts as "now"
/// so the grace period starts over instead of cutting calls short.
pub fn pod_load(
    pod: &Pod,
    load: Option<f64>,
    cpu_millicores: Option<f64>,
    now: Timestamp,
) -> PodLoad {
    let draining_since = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRAINING_SINCE_ANNOTATION))
        .map(|value| value.parse::<Timestamp>().unwrap_or(now));
    let cpu_request_millicores = pod.spec.as_ref().and_then(|spec| {
        let requests: Vec<Option<f64>> = spec
            .containers
            .iter()
            .map(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get("cpu"))
                    .and_then(cpu_millicores_of)
            })
            .collect();
        // Utilisation is only meaningful when every container requests CPU.
        requests
            .iter()
            .all(Option::is_some)
            .then(|| requests.into_iter().flatten().sum())
    });
    PodLoad {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready: pod_is_ready(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        load,
        cpu_millicores,
        cpu_request_millicores: cpu_request_millicores.filter(|r| *r > 0.0),
        draining_since,
    }
}

/// CPU quantity in millicores: `2`, `0.5`, `250m`, `1500000n` (the metrics
/// API reports nanocores), `300u`.
pub fn cpu_millicores_of(quantity: &Quantity) -> Option<f64> {
    let text = quantity.0.trim();
    let (number, scale) = match text.char_indices().last()? {
        (i, 'n') => (&text[..i], 1e-6),
        (i, 'u') => (&text[..i], 1e-3),
        (i, 'm') => (&text[..i], 1.0),
        (i, 'k') => (&text[..i], 1e6),
        _ => (text, 1000.0),
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}
