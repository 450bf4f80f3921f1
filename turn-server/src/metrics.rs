//! Prometheus metrics, rendered by hand in the text exposition format.
//! Label values come from fixed sets only (never users or addresses).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::peer_policy::PeerRefusal;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a client's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Expired,
    MalformedUsername,
    BadPassword,
}

/// Why an Allocate request was refused by our limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    PerUser,
    Total,
}

/// Why a packet from a client was dropped or answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    Malformed,
    Oversized,
    UnknownMethod,
}

#[derive(Default)]
pub struct Metrics {
    pub allocations_active: Gauge,
    pub allocations_total: Counter,
    pub auth_failures: [Counter; 3],
    pub permission_refusals: [Counter; PeerRefusal::ALL.len()],
    pub quota_refusals: [Counter; 2],
    pub drain_refusals: Counter,
    pub bad_packets: [Counter; 3],
    pub relayed_bytes_to_peer: Counter,
    pub relayed_bytes_from_peer: Counter,
    pub relayed_packets_to_peer: Counter,
    pub relayed_packets_from_peer: Counter,
    pub tcp_connections_active: Gauge,
    pub tcp_connections_refused: Counter,
    pub draining: Gauge,
    pub secrets_loaded: Gauge,
    pub secret_reloads_ok: Counter,
    pub secret_reloads_failed: Counter,
}

const AUTH_LABELS: [&str; 3] = ["expired", "malformed_username", "bad_password"];
const QUOTA_LABELS: [&str; 2] = ["per_user", "total"];
const BAD_PACKET_LABELS: [&str; 3] = ["malformed", "oversized", "unknown_method"];

impl Metrics {
    pub fn auth_failure(&self, why: AuthFailure) {
        self.auth_failures[why as usize].inc();
    }
    pub fn permission_refused(&self, why: PeerRefusal) {
        self.permission_refusals[why.index()].inc();
    }
    pub fn quota_refused(&self, why: QuotaRefusal) {
        self.quota_refusals[why as usize].inc();
    }
    pub fn bad_packet(&self, why: BadPacket) {
        self.bad_packets[why as usize].inc();
    }
    pub fn auth_failures_for(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize].get()
    }
    pub fn bad_packets_for(&self, why: BadPacket) -> u64 {
        self.bad_packets[why as usize].get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let g = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let c = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        rows: &mut dyn Iterator<Item = (&str, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in rows {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        };
        g(
            &mut out,
            "videochat_turn_allocations_active",
            "Allocations currently live.",
            self.allocations_active.get(),
        );
        c(
            &mut out,
            "videochat_turn_allocations_total",
            "Allocations created since start.",
            self.allocations_total.get(),
        );
        labelled(
            &mut out,
            "videochat_turn_auth_failures_total",
            "Requests refused for their credentials.",
            "reason",
            &mut AUTH_LABELS
                .iter()
                .zip(&self.auth_failures)
                .map(|(l, c)| (*l, c.get())),
        );
        labelled(
            &mut out,
            "videochat_turn_permission_refusals_total",
            "Peer addresses refused by the peer policy.",
            "reason",
            &mut PeerRefusal::ALL
                .iter()
                .map(|r| (r.label(), self.permission_refusals[r.index()].get())),
        );
        labelled(
            &mut out,
            "videochat_turn_quota_refusals_total",
            "Allocate requests refused with 486 Allocation Quota Reached.",
            "reason",
            &mut QUOTA_LABELS
                .iter()
                .zip(&self.quota_refusals)
                .map(|(l, c)| (*l, c.get())),
        );
        c(
            &mut out,
            "videochat_turn_drain_refusals_total",
            "Allocate requests refused with 508 while draining.",
            self.drain_refusals.get(),
        );
        labelled(
            &mut out,
            "videochat_turn_bad_packets_total",
            "Client packets dropped or answered with an error for their form.",
            "reason",
            &mut BAD_PACKET_LABELS
                .iter()
                .zip(&self.bad_packets)
                .map(|(l, c)| (*l, c.get())),
        );
        labelled(
            &mut out,
            "videochat_turn_relayed_bytes_total",
            "Payload bytes relayed, by direction.",
            "direction",
            &mut [
                ("to_peer", self.relayed_bytes_to_peer.get()),
                ("from_peer", self.relayed_bytes_from_peer.get()),
            ]
            .into_iter(),
        );
        labelled(
            &mut out,
            "videochat_turn_relayed_packets_total",
            "Datagrams relayed, by direction.",
            "direction",
            &mut [
                ("to_peer", self.relayed_packets_to_peer.get()),
                ("from_peer", self.relayed_packets_from_peer.get()),
            ]
            .into_iter(),
        );
        g(
            &mut out,
            "videochat_turn_tcp_connections_active",
            "Client TCP connections open.",
            self.tcp_connections_active.get(),
        );
        c(
            &mut out,
            "videochat_turn_tcp_connections_refused_total",
            "Client TCP connections closed at once because the limit was reached.",
            self.tcp_connections_refused.get(),
        );
        g(
            &mut out,
            "videochat_turn_draining",
            "1 while the relay drains (readiness false, new allocations refused).",
            self.draining.get(),
        );
        g(
            &mut out,
            "videochat_turn_secrets_loaded",
            "Shared secrets currently accepted.",
            self.secrets_loaded.get(),
        );
        labelled(
            &mut out,
            "videochat_turn_secret_reloads_total",
            "Secret file reloads, by result.",
            "result",
            &mut [
                ("ok", self.secret_reloads_ok.get()),
                ("error", self.secret_reloads_failed.get()),
            ]
            .into_iter(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_unlabelled_active_gauge() {
        let m = Metrics::default();
        m.allocations_active.set(3);
        m.auth_failure(AuthFailure::Expired);
        m.permission_refused(PeerRefusal::LinkLocal);
        let text = m.render();
        assert!(
            text.contains("\nvideochat_turn_allocations_active 3\n"),
            "{text}"
        );
        assert!(text.contains("videochat_turn_auth_failures_total{reason=\"expired\"} 1"));
        assert!(text.contains("videochat_turn_permission_refusals_total{reason=\"link_local\"} 1"));
        assert!(text.contains("# TYPE videochat_turn_allocations_active gauge"));
    }
}
