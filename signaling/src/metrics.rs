//! Prometheus metrics, prefix `videochat_signaling_`. Labels only take values
//! from small fixed sets (message types, error codes), never per-object ids.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections: the autoscaler's load signal.
    pub connections: Gauge,
    pub rooms: Gauge,
    pub sessions: Gauge,
    pub messages_in: Family<Label, Counter>,
    pub messages_out: Family<Label, Counter>,
    pub errors: Family<Label, Counter>,
    /// Connections and requests refused by a limit, by limit.
    pub refused: Family<Label, Counter>,
    pub ack_latency: Histogram,
    /// Where a chat message's commit and publish spent their time, by stage
    /// (`batch_wait`, `store_round_trip`, `publish`).
    pub chat_stage: Family<Label, Histogram, fn() -> Histogram>,
    pub resumes: Counter,
    pub resume_failures: Counter,
    pub slow_consumers: Counter,
    pub gap_fills: Counter,
    pub gap_read_failures: Counter,
    pub gap_resumes: Counter,
    pub draining: Gauge,
    pub store_up: Gauge,
    pub bus_up: Gauge,
    pub dead_letters: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let sessions = Gauge::default();
        let messages_in = Family::<Label, Counter>::default();
        let messages_out = Family::<Label, Counter>::default();
        let errors = Family::<Label, Counter>::default();
        let refused = Family::<Label, Counter>::default();
        // 0.1 ms .. ~3.3 s
        let ack_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let chat_stage: Family<Label, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        let resumes = Counter::default();
        let resume_failures = Counter::default();
        let slow_consumers = Counter::default();
        let gap_fills = Counter::default();
        let gap_read_failures = Counter::default();
        let gap_resumes = Counter::default();
        let draining = Gauge::default();
        let store_up = Gauge::default();
        let bus_up = Gauge::default();
        let dead_letters = Gauge::default();
        let p = "videochat_signaling_";
        // Queue depth, retries and dead letters of the Redis Streams queue.
        crate::redis::QueueMetrics::global().register(&mut registry);
        registry.register(
            format!("{p}connections"),
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            format!("{p}rooms"),
            "Rooms with members on this instance's presence backend",
            rooms.clone(),
        );
        registry.register(
            format!("{p}sessions"),
            "Sessions, connected or within their resume window",
            sessions.clone(),
        );
        registry.register(
            format!("{p}messages_in"),
            "Client messages received, by type",
            messages_in.clone(),
        );
        registry.register(
            format!("{p}messages_out"),
            "Messages sent to clients, by type",
            messages_out.clone(),
        );
        registry.register(
            format!("{p}errors"),
            "Error replies, by code",
            errors.clone(),
        );
        registry.register(
            format!("{p}chat_stage_seconds"),
            "Time of a chat message's stages: waiting for its store batch, the batch's store round trip, the bus publish",
            chat_stage.clone(),
        );
        registry.register(
            format!("{p}refused"),
            "Connections and requests refused by a limit, by limit",
            refused.clone(),
        );
        registry.register(
            format!("{p}ack_latency_seconds"),
            "From chat received to durable ack",
            ack_latency.clone(),
        );
        registry.register(format!("{p}resumes"), "Sessions resumed", resumes.clone());
        registry.register(
            format!("{p}resume_failures"),
            "Resume requests refused (unknown, expired or bad token)",
            resume_failures.clone(),
        );
        registry.register(
            format!("{p}slow_consumers"),
            "Connections closed because they did not read fast enough",
            slow_consumers.clone(),
        );
        registry.register(
            format!("{p}gap_fills"),
            "Chat gaps filled from the store",
            gap_fills.clone(),
        );
        registry.register(
            format!("{p}gap_read_failures"),
            "Gap reads the store failed (tried again with back-off; nothing skipped)",
            gap_read_failures.clone(),
        );
        registry.register(
            format!("{p}gap_resumes"),
            "Connections closed (1013) to resume because a gap stayed unreadable while chat piled up behind it",
            gap_resumes.clone(),
        );
        registry.register(
            format!("{p}draining"),
            "1 while this instance drains",
            draining.clone(),
        );
        registry.register(
            format!("{p}store_up"),
            "1 when the store accepts durable writes",
            store_up.clone(),
        );
        registry.register(
            format!("{p}bus_up"),
            "1 when the bus is connected",
            bus_up.clone(),
        );
        registry.register(
            format!("{p}dead_letters"),
            "Entries in the dead-letter stream",
            dead_letters.clone(),
        );
        Self {
            registry,
            connections,
            rooms,
            sessions,
            messages_in,
            messages_out,
            errors,
            refused,
            ack_latency,
            chat_stage,
            resumes,
            resume_failures,
            slow_consumers,
            gap_fills,
            gap_read_failures,
            gap_resumes,
            draining,
            store_up,
            bus_up,
            dead_letters,
        }
    }

    pub fn message_in(&self, kind: &'static str) {
        self.messages_in.get_or_create(&[("type", kind)]).inc();
    }

    pub fn message_out(&self, kind: &'static str) {
        self.messages_out.get_or_create(&[("type", kind)]).inc();
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&[("code", code)]).inc();
    }

    /// A chat stage (a fixed name) took `elapsed`.
    pub fn chat_stage(&self, stage: &'static str, elapsed: std::time::Duration) {
        self.chat_stage
            .get_or_create(&[("stage", stage)])
            .observe(elapsed.as_secs_f64());
    }

    /// Something was refused by the limit named `limit` (a fixed name).
    pub fn refused(&self, limit: &'static str) {
        self.refused.get_or_create(&[("limit", limit)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
