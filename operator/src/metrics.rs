//! Operator metrics: reconciles, errors by kind, reconcile duration, and the
//! day-two counters (rollbacks, scaling steps, drains) and leadership.
//! Labels are bounded (error kinds), never per-object.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

/// The operator's metrics and the registry that serves them.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge,
    pub rollbacks: Counter,
    pub scale_steps: Counter,
    pub pod_drains: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("videochat_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let leader = Gauge::default();
        let rollbacks = Counter::default();
        let scale_steps = Counter::default();
        let pod_drains = Counter::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "rollbacks",
            "Failed revisions replaced by the last good template",
            rollbacks.clone(),
        );
        registry.register(
            "scale_steps",
            "Replica changes made by the autoscaler",
            scale_steps.clone(),
        );
        registry.register(
            "pod_drains",
            "Pods asked to drain before a scale-down",
            pod_drains.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            rollbacks,
            scale_steps,
            pod_drains,
        }
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn observe_error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
