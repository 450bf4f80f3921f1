//! Configuration: a clap `Args` struct (every flag also an environment
//! variable) that code can also build directly, e.g. with [`RelayConfig::local`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::TurnError;
use crate::peer_policy::{PeerPolicy, parse_cidr};
use crate::readiness::DrainReadiness;

pub const DEFAULT_PORT: u16 = 3478;
pub const DEFAULT_ADMIN_PORT: u16 = 9641;
pub const DEFAULT_TLS_PORT: u16 = 5349;

#[derive(Debug, Clone, clap::Args)]
pub struct RelayConfig {
    /// IP address the UDP and TCP listeners bind to.
    #[arg(long, env = "VIDEOCHAT_TURN_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// UDP (and, unless --tcp-port is given, TCP) listening port; 0 picks a free one.
    #[arg(long, env = "VIDEOCHAT_TURN_LISTEN_PORT", default_value_t = DEFAULT_PORT)]
    pub listen_port: u16,

    /// TCP listening port, when it differs from --listen-port.
    #[arg(long, env = "VIDEOCHAT_TURN_TCP_PORT")]
    pub tcp_port: Option<u16>,

    /// Do not listen on TCP.
    #[arg(long, env = "VIDEOCHAT_TURN_NO_TCP")]
    pub no_tcp: bool,

    /// Relay everything through the `turn` crate's own path instead of the
    /// fast path for bound channels and permissions (for comparison and as
    /// a fallback; the fast path is on by default).
    #[arg(long, env = "VIDEOCHAT_TURN_NO_FAST_PATH")]
    pub no_fast_path: bool,

    /// Send datagrams from one allocation to another allocation's relay
    /// address on this relay through the kernel, instead of handing them
    /// over directly (only done when the relay address is the address the
    /// relay sockets are bound to).
    #[arg(long, env = "VIDEOCHAT_TURN_NO_LOCAL_DELIVERY")]
    pub no_local_delivery: bool,

    /// UDP sockets sharing the listening port (SO_REUSEPORT), each with its own
    /// receive loop; 0 means one per CPU.
    #[arg(long, env = "VIDEOCHAT_TURN_UDP_LISTENERS", default_value_t = 0)]
    pub udp_listeners: usize,

    /// Relay address given to clients (the external IP). Defaults to the
    /// listen address, or the address of the default route when that is 0.0.0.0.
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_ADDRESS")]
    pub relay_address: Option<IpAddr>,

    /// Local address relay sockets bind to. Defaults to the listen address.
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_BIND_ADDRESS")]
    pub relay_bind_address: Option<IpAddr>,

    /// Lowest relay port.
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_MIN_PORT", default_value_t = 49152)]
    pub relay_min_port: u16,

    /// Highest relay port (inclusive).
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_MAX_PORT", default_value_t = 65535)]
    pub relay_max_port: u16,

    /// Authentication realm.
    #[arg(long, env = "VIDEOCHAT_TURN_REALM", default_value = "videochat")]
    pub realm: String,

    /// File of shared secrets (one per line, `#` comments), re-read when it changes.
    #[arg(long, env = "VIDEOCHAT_TURN_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Shared secrets given directly (comma-separated in the environment
    /// variable; prefer --secret-file, which is not visible in `ps`).
    #[arg(
        long = "secret",
        env = "VIDEOCHAT_TURN_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secrets: Vec<String>,

    /// How often the secret file is checked for changes.
    #[arg(long, env = "VIDEOCHAT_TURN_SECRET_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub secret_reload_interval: Duration,

    /// Peer range always allowed (CIDR or address; repeat or comma-separate).
    #[arg(long = "allow-peer", env = "VIDEOCHAT_TURN_ALLOW_PEERS", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow_peers: Vec<IpNet>,

    /// Peer range refused (CIDR or address; repeat or comma-separate).
    #[arg(long = "deny-peer", env = "VIDEOCHAT_TURN_DENY_PEERS", value_delimiter = ',', value_parser = parse_cidr)]
    pub deny_peers: Vec<IpNet>,

    /// Allow relaying to loopback peers (for tests on one machine only).
    #[arg(long, env = "VIDEOCHAT_TURN_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,

    /// Most live allocations one user may hold; 0 means no limit.
    #[arg(
        long,
        env = "VIDEOCHAT_TURN_MAX_ALLOCATIONS_PER_USER",
        default_value_t = 10
    )]
    pub max_allocations_per_user: u32,

    /// Most live allocations on this relay; 0 means no limit.
    #[arg(long, env = "VIDEOCHAT_TURN_MAX_ALLOCATIONS", default_value_t = 10_000)]
    pub max_allocations: u32,

    /// Most client TCP connections open at once.
    #[arg(
        long,
        env = "VIDEOCHAT_TURN_MAX_TCP_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_tcp_connections: u32,

    /// Kernel send and receive buffer size for the listening and relay sockets.
    #[arg(long, env = "VIDEOCHAT_TURN_SOCKET_BUFFER_BYTES", default_value_t = 4 << 20)]
    pub socket_buffer_bytes: usize,

    /// Admin HTTP address (/healthz, /readyz, /metrics, POST /drain).
    #[arg(long, env = "VIDEOCHAT_TURN_ADMIN_LISTEN", default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_ADMIN_PORT))]
    pub admin_listen: SocketAddr,

    /// Do not serve the admin HTTP port.
    #[arg(long, env = "VIDEOCHAT_TURN_NO_ADMIN")]
    pub no_admin: bool,

    /// File holding a bearer token that POST /drain requires.
    #[arg(long, env = "VIDEOCHAT_TURN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// After SIGTERM, how long live allocations may keep relaying before exit.
    #[arg(long, env = "VIDEOCHAT_TURN_DRAIN_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    // TLS (turns:) and the limits on client streams.
    /// PEM certificate chain for TLS listeners (leaf first); re-read when it changes.
    #[arg(long, env = "VIDEOCHAT_TURN_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "VIDEOCHAT_TURN_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// TLS listening ports (comma-separated); 5349 when a certificate is given
    /// and none are named; 0 picks a free one.
    #[arg(long, env = "VIDEOCHAT_TURN_TLS_PORTS", value_delimiter = ',')]
    pub tls_ports: Vec<u16>,

    /// How often the certificate and key files are checked for changes.
    #[arg(long, env = "VIDEOCHAT_TURN_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// A TCP or TLS client that has not sent an authenticated request this
    /// long after connecting is disconnected (TLS handshake included).
    #[arg(long, env = "VIDEOCHAT_TURN_STREAM_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub stream_auth_timeout: Duration,

    /// Most TCP and TLS connections open at once from one client IP address; 0 means no limit.
    #[arg(
        long,
        env = "VIDEOCHAT_TURN_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 64
    )]
    pub max_connections_per_address: u32,

    // Advertised address learned at run time, and readiness while draining
    // (docs/turn.md, "Address from a file" and "Drain").
    /// Directory of files named by node or pod, each holding that relay's
    /// external IP (a mounted ConfigMap); this relay reads the file named
    /// --relay-address-key and re-reads it when it changes. Not Ready and no
    /// new allocations until it holds an address.
    #[arg(
        long,
        env = "VIDEOCHAT_TURN_RELAY_ADDRESS_DIR",
        conflicts_with = "relay_address",
        requires = "relay_address_key"
    )]
    pub relay_address_dir: Option<PathBuf>,

    /// This relay's file name in --relay-address-dir (its node or pod name).
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_ADDRESS_KEY")]
    pub relay_address_key: Option<String>,

    /// How often the --relay-address-dir file is checked for changes.
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_ADDRESS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub relay_address_reload_interval: Duration,

    /// Readiness while draining: `ready` (only new allocations are refused;
    /// where a Service routes UDP by readiness, NotReady would flush live
    /// flows) or `not-ready` (for discovery by DNS without kube-proxy).
    #[arg(long, env = "VIDEOCHAT_TURN_DRAIN_READINESS", value_enum, default_value_t = DrainReadiness::Ready)]
    pub drain_readiness: DrainReadiness,
}

impl Default for RelayConfig {
    /// The same values as the command line's defaults.
    fn default() -> Self {
        RelayConfig {
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listen_port: DEFAULT_PORT,
            tcp_port: None,
            no_tcp: false,
            no_fast_path: false,
            no_local_delivery: false,
            udp_listeners: 0,
            relay_address: None,
            relay_bind_address: None,
            relay_min_port: 49152,
            relay_max_port: 65535,
            realm: "videochat".into(),
            secret_file: None,
            secrets: Vec::new(),
            secret_reload_interval: Duration::from_secs(2),
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            allow_loopback_peers: false,
            max_allocations_per_user: 10,
            max_allocations: 10_000,
            max_tcp_connections: 10_000,
            socket_buffer_bytes: 4 << 20,
            admin_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_ADMIN_PORT),
            no_admin: false,
            admin_token_file: None,
            drain_timeout: Duration::from_secs(600),
            tls_cert_file: None,
            tls_key_file: None,
            tls_ports: Vec::new(),
            tls_reload_interval: Duration::from_secs(2),
            stream_auth_timeout: Duration::from_secs(5),
            max_connections_per_address: 64,
            relay_address_dir: None,
            relay_address_key: None,
            relay_address_reload_interval: Duration::from_secs(2),
            drain_readiness: DrainReadiness::Ready,
        }
    }
}

impl RelayConfig {
    /// A relay for one machine: loopback listeners on free ports, loopback
    /// peers allowed, no admin port, the given in-memory secret.
    pub fn local(secret: impl Into<String>) -> Self {
        RelayConfig {
            listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            listen_port: 0,
            udp_listeners: 1,
            secrets: vec![secret.into()],
            allow_loopback_peers: true,
            no_admin: true,
            ..Default::default()
        }
    }

    /// The admin address, or None when the admin port is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        (!self.no_admin).then_some(self.admin_listen)
    }

    pub fn peer_policy(&self) -> PeerPolicy {
        PeerPolicy {
            allow: self.allow_peers.clone(),
            deny: self.deny_peers.clone(),
            allow_loopback: self.allow_loopback_peers,
        }
    }

    /// Checks what can be checked without touching the network or files.
    pub fn validate(&self) -> Result<(), TurnError> {
        if self.relay_min_port == 0 {
            return Err(TurnError::config("--relay-min-port", "must be 1 or more"));
        }
        if self.relay_min_port > self.relay_max_port {
            return Err(TurnError::config(
                "--relay-min-port",
                format!(
                    "{} is greater than --relay-max-port {} (inverted relay port range)",
                    self.relay_min_port, self.relay_max_port
                ),
            ));
        }
        if self.realm.trim().is_empty() {
            return Err(TurnError::config("--realm", "must not be empty"));
        }
        if self.udp_listeners > 64 {
            return Err(TurnError::config("--udp-listeners", "at most 64"));
        }
        if self.secrets.iter().any(|s| s.trim().is_empty()) {
            return Err(TurnError::config("--secret", "a secret must not be empty"));
        }
        if self.secret_file.is_none() && self.secrets.is_empty() {
            return Err(TurnError::config(
                "--secret-file",
                "no secret configured: give --secret-file (or VIDEOCHAT_TURN_SECRETS)",
            ));
        }
        if self.secret_reload_interval < Duration::from_millis(10) {
            return Err(TurnError::config(
                "--secret-reload-interval",
                "must be at least 10ms",
            ));
        }
        if let Some(ip) = self.relay_address
            && ip.is_unspecified()
        {
            return Err(TurnError::config(
                "--relay-address",
                "must be an address clients can reach, not 0.0.0.0 or ::",
            ));
        }
        self.validate_relay_address_source()?;
        if self.max_tcp_connections == 0 && (!self.no_tcp || self.tls_cert_file.is_some()) {
            return Err(TurnError::config(
                "--max-tcp-connections",
                "must be 1 or more (or give --no-tcp and no TLS certificate)",
            ));
        }
        self.validate_tls()?;
        Ok(())
    }

    /// TLS ports to listen on: the given ones, or 5349 with a certificate.
    pub fn tls_listen_ports(&self) -> Vec<u16> {
        match (&self.tls_cert_file, self.tls_ports.is_empty()) {
            (None, _) => Vec::new(),
            (Some(_), true) => vec![DEFAULT_TLS_PORT],
            (Some(_), false) => self.tls_ports.clone(),
        }
    }

    fn validate_tls(&self) -> Result<(), TurnError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(TurnError::config(
                    "--tls-key-file",
                    "--tls-cert-file needs --tls-key-file",
                ));
            }
            (None, Some(_)) => {
                return Err(TurnError::config(
                    "--tls-cert-file",
                    "--tls-key-file needs --tls-cert-file",
                ));
            }
            _ => {}
        }
        if self.tls_cert_file.is_none() && !self.tls_ports.is_empty() {
            return Err(TurnError::config(
                "--tls-ports",
                "TLS ports need --tls-cert-file and --tls-key-file",
            ));
        }
        if self.tls_reload_interval < Duration::from_millis(10) {
            return Err(TurnError::config(
                "--tls-reload-interval",
                "must be at least 10ms",
            ));
        }
        if self.stream_auth_timeout < Duration::from_millis(100) {
            return Err(TurnError::config(
                "--stream-auth-timeout",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

impl RelayConfig {
    /// The address file settings come together and name a plain file name.
    fn validate_relay_address_source(&self) -> Result<(), TurnError> {
        let Some(dir) = &self.relay_address_dir else {
            if self.relay_address_key.is_some() {
                return Err(TurnError::config(
                    "--relay-address-key",
                    "needs --relay-address-dir",
                ));
            }
            return Ok(());
        };
        if self.relay_address.is_some() {
            return Err(TurnError::config(
                "--relay-address-dir",
                "give either --relay-address or --relay-address-dir, not both",
            ));
        }
        let key = self.relay_address_key.as_deref().unwrap_or("").trim();
        // A node or pod name: one path component, never `..`.
        let plain = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !plain {
            return Err(TurnError::config(
                "--relay-address-key",
                format!(
                    "{key:?} must be a node or pod name (letters, digits, '-', '.', '_') to read from {}",
                    dir.display()
                ),
            ));
        }
        if self.relay_address_reload_interval < Duration::from_millis(10) {
            return Err(TurnError::config(
                "--relay-address-reload-interval",
                "must be at least 10ms",
            ));
        }
        Ok(())
    }
}

/// Longest duration a flag takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

/// A duration flag, in the workspace's one duration grammar (humantime's:
/// `500ms`, `30s`, `10m`, `1h 30m`, `2days`), at most 365 days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 10m or 1h 30m: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!("{s:?} is longer than 365 days"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert!(parse_duration("366d").is_err(), "past the limit");
        assert!(parse_duration("soon").is_err());
        // A unit is required: a bare number reads as seconds to some and
        // as milliseconds to others.
        assert!(parse_duration("3").is_err());
    }

    #[test]
    fn inverted_port_range_names_the_setting() {
        let c = RelayConfig {
            relay_min_port: 50000,
            relay_max_port: 40000,
            ..RelayConfig::local("s")
        };
        let err = c.validate().expect_err("inverted range");
        assert!(err.to_string().starts_with("--relay-min-port:"), "{err}");
    }

    #[test]
    fn missing_secret_names_the_setting() {
        let c = RelayConfig {
            secrets: vec![],
            ..RelayConfig::local("s")
        };
        let err = c.validate().expect_err("no secret");
        assert!(err.to_string().starts_with("--secret-file:"), "{err}");
    }

    #[test]
    fn relay_address_dir_needs_a_plain_key_and_no_fixed_address() {
        let base = RelayConfig {
            relay_address_dir: Some("/etc/addresses".into()),
            ..RelayConfig::local("s")
        };
        let err = base.validate().expect_err("no key");
        assert!(err.to_string().starts_with("--relay-address-key:"), "{err}");
        for bad in ["../secret", "a/b", "", ".."] {
            let c = RelayConfig {
                relay_address_key: Some(bad.into()),
                ..base.clone()
            };
            let err = c.validate().expect_err(bad);
            assert!(err.to_string().starts_with("--relay-address-key:"), "{err}");
        }
        let both = RelayConfig {
            relay_address_key: Some("node-a".into()),
            relay_address: Some("192.0.2.1".parse().expect("ip")),
            ..base.clone()
        };
        let err = both.validate().expect_err("both");
        assert!(err.to_string().starts_with("--relay-address-dir:"), "{err}");
        RelayConfig {
            relay_address_key: Some("ip-10-0-1-7.ec2.internal".into()),
            ..base
        }
        .validate()
        .expect("valid");
    }

    #[test]
    fn local_config_is_valid() {
        RelayConfig::local("s").validate().expect("valid");
    }
}
