//! Prometheus metrics through `prometheus-client`, prefix `videochat_turn_`.
//! Label values come from fixed sets only (never users or addresses), and
//! every labelled series exists from the start at 0.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::peer_policy::PeerRefusal;

type Label = [(&'static str, &'static str); 1];

/// Why a client's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Expired,
    MalformedUsername,
    BadPassword,
    /// Valid credentials, but not those the allocation was created with (441).
    WrongUser,
}

impl AuthFailure {
    const ALL: [AuthFailure; 4] = [
        AuthFailure::Expired,
        AuthFailure::MalformedUsername,
        AuthFailure::BadPassword,
        AuthFailure::WrongUser,
    ];
    fn label(self) -> &'static str {
        match self {
            AuthFailure::Expired => "expired",
            AuthFailure::MalformedUsername => "malformed_username",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::WrongUser => "wrong_user",
        }
    }
}

/// Why an Allocate request was refused by our limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    PerUser,
    Total,
}

impl QuotaRefusal {
    const ALL: [QuotaRefusal; 2] = [QuotaRefusal::PerUser, QuotaRefusal::Total];
    fn label(self) -> &'static str {
        match self {
            QuotaRefusal::PerUser => "per_user",
            QuotaRefusal::Total => "total",
        }
    }
}

/// Why a packet from a client was dropped or answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    Malformed,
    Oversized,
    UnknownMethod,
    /// ChannelData from a client that holds no allocation.
    NoAllocation,
}

impl BadPacket {
    const ALL: [BadPacket; 4] = [
        BadPacket::Malformed,
        BadPacket::Oversized,
        BadPacket::UnknownMethod,
        BadPacket::NoAllocation,
    ];
    pub fn label(self) -> &'static str {
        match self {
            BadPacket::Malformed => "malformed",
            BadPacket::Oversized => "oversized",
            BadPacket::UnknownMethod => "unknown_method",
            BadPacket::NoAllocation => "no_allocation",
        }
    }
}

/// Why a TCP or TLS connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// `--max-tcp-connections` reached.
    Total,
    /// `--max-connections-per-address` reached for the client's address.
    PerAddress,
}

impl StreamRefusal {
    const ALL: [StreamRefusal; 2] = [StreamRefusal::Total, StreamRefusal::PerAddress];
    fn label(self) -> &'static str {
        match self {
            StreamRefusal::Total => "total",
            StreamRefusal::PerAddress => "per_address",
        }
    }
}

/// Why the relay closed a TCP or TLS connection before it authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClose {
    /// No authenticated request within `--stream-auth-timeout`.
    AuthTimeout,
    TlsHandshake,
}

impl StreamClose {
    const ALL: [StreamClose; 2] = [StreamClose::AuthTimeout, StreamClose::TlsHandshake];
    fn label(self) -> &'static str {
        match self {
            StreamClose::AuthTimeout => "auth_timeout",
            StreamClose::TlsHandshake => "tls_handshake",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub allocations_active: Gauge,
    pub allocations_total: Counter,
    auth_failures: Family<Label, Counter>,
    permission_refusals: Family<Label, Counter>,
    quota_refusals: Family<Label, Counter>,
    pub drain_refusals: Counter,
    bad_packets: Family<Label, Counter>,
    relayed_bytes: Family<Label, Counter>,
    relayed_packets: Family<Label, Counter>,
    /// The four relayed series, held directly: they change per datagram.
    relayed_bytes_to_peer: Counter,
    relayed_bytes_from_peer: Counter,
    relayed_packets_to_peer: Counter,
    relayed_packets_from_peer: Counter,
    fast_path_packets: Family<Label, Counter>,
    /// Datagrams the fast path relayed, by direction (also counted in relayed_*).
    pub fast_path_to_peer: Counter,
    pub fast_path_from_peer: Counter,
    /// Datagrams between two of this relay's own sockets handed over without the kernel.
    pub local_deliveries: Counter,
    pub tcp_connections_active: Gauge,
    tcp_connections_refused: Family<Label, Counter>,
    tcp_connections_closed: Family<Label, Counter>,
    pub draining: Gauge,
    pub secrets_loaded: Gauge,
    secret_reloads: Family<Label, Counter>,
    /// Unix time the served TLS certificate expires (0 without TLS).
    pub tls_cert_expiry: Gauge,
    tls_reloads: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter family with one series per label value, each created at 0 so
/// that dashboards and `rate()` see them before the first event.
fn family(name: &'static str, values: &[&'static str]) -> Family<Label, Counter> {
    let f = Family::<Label, Counter>::default();
    for v in values {
        let _created = f.get_or_create(&[(name, *v)]);
    }
    f
}

impl Metrics {
    pub fn new() -> Self {
        let relayed_bytes = family("direction", &["to_peer", "from_peer"]);
        let relayed_packets = family("direction", &["to_peer", "from_peer"]);
        let fast_path_packets = family("direction", &["to_peer", "from_peer"]);
        let m = Metrics {
            fast_path_to_peer: Self::labelled(&fast_path_packets, "direction", "to_peer"),
            fast_path_from_peer: Self::labelled(&fast_path_packets, "direction", "from_peer"),
            fast_path_packets,
            local_deliveries: Counter::default(),
            relayed_bytes_to_peer: Self::labelled(&relayed_bytes, "direction", "to_peer"),
            relayed_bytes_from_peer: Self::labelled(&relayed_bytes, "direction", "from_peer"),
            relayed_packets_to_peer: Self::labelled(&relayed_packets, "direction", "to_peer"),
            relayed_packets_from_peer: Self::labelled(&relayed_packets, "direction", "from_peer"),
            registry: Registry::default(),
            allocations_active: Gauge::default(),
            allocations_total: Counter::default(),
            auth_failures: family("reason", &AuthFailure::ALL.map(AuthFailure::label)),
            permission_refusals: family("reason", &PeerRefusal::ALL.map(PeerRefusal::label)),
            quota_refusals: family("reason", &QuotaRefusal::ALL.map(QuotaRefusal::label)),
            drain_refusals: Counter::default(),
            bad_packets: family("reason", &BadPacket::ALL.map(BadPacket::label)),
            relayed_bytes,
            relayed_packets,
            tcp_connections_active: Gauge::default(),
            tcp_connections_refused: family(
                "reason",
                &StreamRefusal::ALL.map(StreamRefusal::label),
            ),
            tcp_connections_closed: family("reason", &StreamClose::ALL.map(StreamClose::label)),
            draining: Gauge::default(),
            secrets_loaded: Gauge::default(),
            secret_reloads: family("result", &["ok", "error"]),
            tls_cert_expiry: Gauge::default(),
            tls_reloads: family("result", &["ok", "error"]),
        };
        m.register()
    }

    /// Registers every metric under its exposition name. Counters are
    /// registered without `_total`; the encoder appends it.
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        let p = "videochat_turn_";
        r.register(
            format!("{p}allocations_active"),
            "Allocations currently live",
            self.allocations_active.clone(),
        );
        r.register(
            format!("{p}allocations"),
            "Allocations created since start",
            self.allocations_total.clone(),
        );
        r.register(
            format!("{p}auth_failures"),
            "Requests refused for their credentials",
            self.auth_failures.clone(),
        );
        r.register(
            format!("{p}permission_refusals"),
            "Peer addresses refused by the peer policy",
            self.permission_refusals.clone(),
        );
        r.register(
            format!("{p}quota_refusals"),
            "Allocate requests refused with 486 Allocation Quota Reached",
            self.quota_refusals.clone(),
        );
        r.register(
            format!("{p}drain_refusals"),
            "Allocate requests refused with 508 while draining",
            self.drain_refusals.clone(),
        );
        r.register(
            format!("{p}bad_packets"),
            "Client packets dropped or answered with an error for their form",
            self.bad_packets.clone(),
        );
        r.register(
            format!("{p}relayed_bytes"),
            "Payload bytes relayed, by direction",
            self.relayed_bytes.clone(),
        );
        r.register(
            format!("{p}relayed_packets"),
            "Datagrams relayed, by direction",
            self.relayed_packets.clone(),
        );
        r.register(
            format!("{p}fast_path_packets"),
            "Datagrams relayed by the fast path (bound channels and permissions), by direction; a subset of relayed_packets",
            self.fast_path_packets.clone(),
        );
        r.register(
            format!("{p}local_deliveries"),
            "Datagrams from one of this relay's allocations to another's relay address, handed over without the kernel (also counted in relayed_packets both ways)",
            self.local_deliveries.clone(),
        );
        r.register(
            format!("{p}tcp_connections_active"),
            "Client TCP and TLS connections open",
            self.tcp_connections_active.clone(),
        );
        r.register(
            format!("{p}tcp_connections_refused"),
            "Client TCP and TLS connections closed at once because a limit was reached",
            self.tcp_connections_refused.clone(),
        );
        r.register(
            format!("{p}tcp_connections_closed"),
            "Client TCP and TLS connections closed before they authenticated",
            self.tcp_connections_closed.clone(),
        );
        r.register(
            format!("{p}draining"),
            "1 while the relay drains (readiness false, new allocations refused)",
            self.draining.clone(),
        );
        r.register(
            format!("{p}secrets_loaded"),
            "Shared secrets currently accepted",
            self.secrets_loaded.clone(),
        );
        r.register(
            format!("{p}secret_reloads"),
            "Secret file reloads, by result",
            self.secret_reloads.clone(),
        );
        r.register(
            format!("{p}tls_certificate_expiry_timestamp_seconds"),
            "Unix time the served TLS certificate expires (0 without TLS)",
            self.tls_cert_expiry.clone(),
        );
        r.register(
            format!("{p}tls_certificate_reloads"),
            "TLS certificate file changes, by result",
            self.tls_reloads.clone(),
        );
        self
    }

    fn labelled(f: &Family<Label, Counter>, name: &'static str, value: &'static str) -> Counter {
        f.get_or_create(&[(name, value)]).clone()
    }

    pub fn auth_failure(&self, why: AuthFailure) {
        Self::labelled(&self.auth_failures, "reason", why.label()).inc();
    }
    pub fn permission_refused(&self, why: PeerRefusal) {
        Self::labelled(&self.permission_refusals, "reason", why.label()).inc();
    }
    pub fn quota_refused(&self, why: QuotaRefusal) {
        Self::labelled(&self.quota_refusals, "reason", why.label()).inc();
    }
    pub fn bad_packet(&self, why: BadPacket) {
        Self::labelled(&self.bad_packets, "reason", why.label()).inc();
    }
    pub fn stream_refused(&self, why: StreamRefusal) {
        Self::labelled(&self.tcp_connections_refused, "reason", why.label()).inc();
    }
    pub fn stream_closed(&self, why: StreamClose) {
        Self::labelled(&self.tcp_connections_closed, "reason", why.label()).inc();
    }
    pub fn secret_reload(&self, ok: bool) {
        Self::labelled(
            &self.secret_reloads,
            "result",
            if ok { "ok" } else { "error" },
        )
        .inc();
    }
    pub fn tls_reload(&self, ok: bool) {
        Self::labelled(&self.tls_reloads, "result", if ok { "ok" } else { "error" }).inc();
    }
    /// One datagram of `bytes` relayed from the client towards a peer.
    pub fn relayed_to_peer(&self, bytes: usize) {
        self.relayed_packets_to_peer.inc();
        self.relayed_bytes_to_peer.inc_by(bytes as u64);
    }
    /// One datagram of `bytes` relayed from a peer towards the client.
    pub fn relayed_from_peer(&self, bytes: usize) {
        self.relayed_packets_from_peer.inc();
        self.relayed_bytes_from_peer.inc_by(bytes as u64);
    }
    pub fn auth_failures_for(&self, why: AuthFailure) -> u64 {
        Self::labelled(&self.auth_failures, "reason", why.label()).get()
    }
    pub fn bad_packets_for(&self, why: BadPacket) -> u64 {
        Self::labelled(&self.bad_packets, "reason", why.label()).get()
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_keeps_the_metric_names_and_every_label_value() {
        let m = Metrics::default();
        m.allocations_active.set(3);
        m.auth_failure(AuthFailure::Expired);
        m.permission_refused(PeerRefusal::LinkLocal);
        m.relayed_to_peer(100);
        let text = m.render();
        assert!(
            text.contains("\nvideochat_turn_allocations_active 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE videochat_turn_allocations_active gauge"));
        assert!(
            text.contains("\nvideochat_turn_allocations_total 0\n"),
            "{text}"
        );
        assert!(text.contains("videochat_turn_auth_failures_total{reason=\"expired\"} 1"));
        assert!(text.contains("videochat_turn_auth_failures_total{reason=\"bad_password\"} 0"));
        assert!(text.contains("videochat_turn_permission_refusals_total{reason=\"link_local\"} 1"));
        assert!(text.contains("videochat_turn_relayed_bytes_total{direction=\"to_peer\"} 100"));
        assert!(text.contains("videochat_turn_relayed_packets_total{direction=\"from_peer\"} 0"));
        assert!(text.contains("videochat_turn_secret_reloads_total{result=\"error\"} 0"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
