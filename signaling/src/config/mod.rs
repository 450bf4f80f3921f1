//! Command-line and environment configuration. Every flag has a `VIDEOCHAT_`
//! environment variable; secrets can come from files.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::auth::TokenAlgorithm;
use crate::error::{Result, SignalingError};

mod cluster;

pub use cluster::{ClusterArgs, ClusterUrls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// The signaling server's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address for HTTP and WebSocket; port 0 picks a free port (printed at start).
    #[arg(long, env = "VIDEOCHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded store (single-machine mode).
    #[arg(long, env = "VIDEOCHAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Redis URL for the cross-instance bus, presence and sessions.
    #[arg(long, env = "VIDEOCHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// File holding the Redis URL (preferred over --redis-url: not visible in `ps`).
    #[arg(long, env = "VIDEOCHAT_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,

    /// MongoDB connection string for rooms and chat history.
    #[arg(long, env = "VIDEOCHAT_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// File holding the MongoDB connection string.
    #[arg(long, env = "VIDEOCHAT_MONGODB_URI_FILE")]
    pub mongodb_uri_file: Option<PathBuf>,

    /// Do not run the in-process TURN relay (single-machine mode runs one by default).
    #[arg(long, env = "VIDEOCHAT_NO_EMBEDDED_TURN")]
    pub no_embedded_turn: bool,

    /// Address of the in-process TURN relay, UDP and TCP; port 0 picks a free one.
    #[arg(long, env = "VIDEOCHAT_TURN_LISTEN", default_value = "127.0.0.1:3478")]
    pub turn_listen: SocketAddr,

    /// Relay port range of the in-process TURN relay.
    #[arg(long, env = "VIDEOCHAT_TURN_RELAY_PORTS", default_value = "49160-49359", value_parser = parse_port_range)]
    pub turn_relay_ports: (u16, u16),

    /// External TURN server URIs to hand to clients (comma-separated), e.g.
    /// `turn:turn.example.com:3478?transport=udp`. Needs --turn-secret-file.
    #[arg(long = "turn-uri", env = "VIDEOCHAT_TURN_URIS", value_delimiter = ',')]
    pub turn_uris: Vec<String>,

    /// File of TURN server URIs (comma- or line-separated), re-read when it
    /// changes, so relays that come and go reach clients without a restart
    /// (the operator keeps it). Instead of --turn-uri; needs
    /// --turn-secret-file.
    #[arg(long, env = "VIDEOCHAT_TURN_URIS_FILE", conflicts_with = "turn_uris")]
    pub turn_uris_file: Option<PathBuf>,

    /// File of TURN shared secrets, one per line, newest last: credentials are
    /// made with the newest; the file is re-read when it changes.
    #[arg(long, env = "VIDEOCHAT_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,

    /// Lifetime of the TURN credentials handed to clients.
    #[arg(long, env = "VIDEOCHAT_TURN_CREDENTIAL_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub turn_credential_ttl: Duration,

    /// Let the in-process relay relay to loopback peers (two browsers on one
    /// machine). A switch; `--allow-loopback-peers=false` turns it off.
    /// Default: on in single-machine mode with a loopback TURN address.
    #[arg(
        long,
        env = "VIDEOCHAT_ALLOW_LOOPBACK_PEERS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub allow_loopback_peers: Option<bool>,

    /// File holding the HS256 secret of room tokens; when set, /ws and every
    /// REST call on a room need a valid token. Re-read when it changes.
    #[arg(long, env = "VIDEOCHAT_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,

    /// File holding the PEM public key (`-----BEGIN PUBLIC KEY-----`) that
    /// room tokens signed by your auth server verify with; needs
    /// --auth-algorithm RS256 or ES256. Re-read when it changes.
    #[arg(long, env = "VIDEOCHAT_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,

    /// The one algorithm room tokens may be signed with: HS256 (with
    /// --auth-secret-file, the default there), RS256 or ES256 (with
    /// --auth-public-key-file). Tokens naming another are refused.
    #[arg(long, env = "VIDEOCHAT_AUTH_ALGORITHM", value_enum)]
    pub auth_algorithm: Option<TokenAlgorithm>,

    /// File holding the bearer token of /api/admin/*; admin calls are refused without it.
    #[arg(long, env = "VIDEOCHAT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Origins allowed for CORS, on /ws and on REST writes (comma-separated,
    /// `scheme://host[:port]`, or `*` for any). Clients that send no Origin
    /// (not browsers) are always allowed.
    #[arg(long, env = "VIDEOCHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// The origins this service itself is served under (the demo page's), e.g.
    /// `https://chat.example.com` behind an Ingress. Default: `http://localhost:PORT`
    /// and `http://127.0.0.1:PORT` (and the listen address) of the bound port.
    /// Same-origin is decided from this, never from the request's Host header.
    #[arg(
        long = "public-origin",
        env = "VIDEOCHAT_PUBLIC_ORIGINS",
        value_delimiter = ','
    )]
    pub public_origins: Vec<String>,

    /// File of more public origins (comma- or line-separated, `#` comments),
    /// re-read when it changes and merged with --public-origin: the operator
    /// keeps the address the Service is published under there, so a new
    /// load-balancer address reaches signaling without a restart.
    #[arg(long, env = "VIDEOCHAT_PUBLIC_ORIGINS_FILE")]
    pub public_origins_file: Option<PathBuf>,

    /// Largest WebSocket frame, in bytes; larger ones get `too_large` and close 1009.
    #[arg(long, env = "VIDEOCHAT_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest REST request body, in bytes (413 above).
    #[arg(long, env = "VIDEOCHAT_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest chat body, in bytes, counted as JSON-escaped (a control
    /// character counts 6 bytes, as it is sent: `\u0001`).
    #[arg(long, env = "VIDEOCHAT_MAX_CHAT_BYTES", default_value_t = 8 * 1024)]
    pub max_chat_bytes: usize,

    /// Largest `history` reply, join replay or `GET /api/messages` page, in
    /// bytes of chat JSON; a page ends early when the next message would pass it.
    #[arg(long, env = "VIDEOCHAT_MAX_REPLY_BYTES", default_value_t = 1024 * 1024)]
    pub max_reply_bytes: usize,

    /// Bytes queued for one connection; a client that does not read so much
    /// for a heartbeat interval is closed as a slow consumer (it can resume).
    #[arg(long, env = "VIDEOCHAT_MAX_OUTBOX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_outbox_bytes: usize,

    /// Messages per second per connection (burst: twice as many).
    #[arg(long, env = "VIDEOCHAT_RATE_PER_CONNECTION", default_value_t = 50.0)]
    pub rate_per_connection: f64,

    /// Messages per second per client IP over all its connections (burst: twice as many).
    #[arg(long, env = "VIDEOCHAT_RATE_PER_IP", default_value_t = 2000.0)]
    pub rate_per_ip: f64,

    /// Rate-limited messages in a row after which the connection is closed (1008).
    #[arg(long, env = "VIDEOCHAT_ABUSE_LIMIT", default_value_t = 100)]
    pub abuse_limit: u32,

    /// New WebSocket connections per second per client IP (burst: twice as
    /// many; 429 above). Without it a client closed for abuse reconnects at
    /// once and floods again.
    #[arg(long, env = "VIDEOCHAT_CONNECT_RATE_PER_IP", default_value_t = 10.0)]
    pub connect_rate_per_ip: f64,

    /// Reverse proxies (networks or addresses, comma-separated) whose
    /// X-Forwarded-For names the client: the Ingress controller's pods, a
    /// cloud L7 balancer. Per-address limits then key on the client, not on
    /// the proxy. Empty: the header is ignored.
    #[arg(
        long,
        env = "VIDEOCHAT_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = crate::client_address::parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Peers per room, unless the room was created with its own max_peers.
    #[arg(long, env = "VIDEOCHAT_MAX_PEERS_PER_ROOM", default_value_t = 16)]
    pub max_peers_per_room: u32,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "VIDEOCHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = 8)]
    pub max_rooms_per_connection: usize,

    /// WebSocket connections this instance accepts at once.
    #[arg(long, env = "VIDEOCHAT_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// WebSocket connections one client address may hold at once (429 above).
    #[arg(long, env = "VIDEOCHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    pub max_connections_per_ip: usize,

    /// TCP connections of one client address whose first HTTP request is not
    /// answered yet (headers or body still arriving); more are closed at once.
    #[arg(long, env = "VIDEOCHAT_MAX_HANDSHAKES_PER_IP", default_value_t = 32)]
    pub max_handshakes_per_ip: usize,

    /// Time a client has to send a request's headers (also: how long an idle
    /// keep-alive connection stays open).
    #[arg(long, env = "VIDEOCHAT_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a REST request's body (408 after).
    #[arg(long, env = "VIDEOCHAT_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// How long a dropped session can be resumed (and keeps its place in its rooms).
    #[arg(long, env = "VIDEOCHAT_RESUME_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub resume_window: Duration,

    /// Interval of WebSocket pings; a client silent for three intervals is dropped.
    #[arg(long, env = "VIDEOCHAT_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// After SIGTERM or POST /api/admin/drain, how long clients get to move before exit.
    #[arg(long, env = "VIDEOCHAT_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Delay suggested to draining clients before they reconnect.
    #[arg(long, env = "VIDEOCHAT_RECONNECT_AFTER", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reconnect_after: Duration,

    /// Chat messages replayed after `joined` at most; older ones via `history`.
    #[arg(long, env = "VIDEOCHAT_MAX_REPLAY", default_value_t = 1000)]
    pub max_replay: usize,

    /// Log format.
    #[arg(long, env = "VIDEOCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "VIDEOCHAT_LOG", default_value = "info")]
    pub log: String,

    /// Cluster mode (with --redis-url / --mongodb-uri).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn parse_port_range(s: &str) -> std::result::Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a port range like 49160-49359"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("`{s}`: need 1 <= low <= high"));
    }
    Ok((a, b))
}

impl Default for Config {
    /// The command line's defaults (for embedding and tests).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        // Parse an empty command line, without the environment's VIDEOCHAT_ variables.
        let cmd = <Wrapper as clap::CommandFactory>::command();
        let cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let matches = cmd.get_matches_from(["videochat-signaling"]);
        <Wrapper as clap::FromArgMatches>::from_arg_matches(&matches)
            .map(|w| w.config)
            .unwrap_or_else(|e| panic!("defaults must parse: {e}"))
    }
}

/// Reads a one-line secret file (trailing newline removed), refusing empty files.
pub fn read_secret(setting: &'static str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SignalingError::config(setting, format!("cannot read {}: {e}", path.display()))
    })?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(SignalingError::config(
            setting,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(value)
}

impl Config {
    /// Checks what clap cannot: combinations and ranges.
    pub fn validate(&self) -> Result<()> {
        // Connection strings (value or file, not both) and their combinations.
        ClusterUrls::read(self)?;
        self.room_token_algorithm()?;
        if !self.turn_uris.is_empty() && self.turn_secret_file.is_none() {
            return Err(SignalingError::config(
                "--turn-uri",
                "external TURN URIs need --turn-secret-file to make credentials",
            ));
        }
        if self.turn_uris_file.is_some() && self.turn_secret_file.is_none() {
            return Err(SignalingError::config(
                "--turn-uris-file",
                "external TURN URIs need --turn-secret-file to make credentials",
            ));
        }
        for uri in &self.turn_uris {
            crate::ice::check_uri(uri).map_err(|why| SignalingError::config("--turn-uri", why))?;
        }
        for origin in &self.allowed_origins {
            if origin != "*" {
                crate::origin::Origin::parse(origin)
                    .map_err(|e| SignalingError::config("--allowed-origins", e))?;
            }
        }
        for origin in &self.public_origins {
            crate::origin::Origin::parse(origin)
                .map_err(|e| SignalingError::config("--public-origin", e))?;
        }
        let checks: [(&'static str, bool); 16] = [
            ("--max-frame-bytes", self.max_frame_bytes >= 256),
            ("--max-body-bytes", self.max_body_bytes >= 256),
            ("--max-chat-bytes", self.max_chat_bytes >= 1),
            (
                "--max-reply-bytes",
                self.max_reply_bytes >= 2 * self.max_chat_bytes,
            ),
            (
                "--max-outbox-bytes",
                self.max_outbox_bytes >= 2 * self.max_reply_bytes,
            ),
            ("--max-connections-per-ip", self.max_connections_per_ip >= 1),
            ("--max-handshakes-per-ip", self.max_handshakes_per_ip >= 1),
            (
                "--header-timeout",
                self.header_timeout >= Duration::from_millis(100),
            ),
            (
                "--body-timeout",
                self.body_timeout >= Duration::from_millis(100),
            ),
            ("--rate-per-connection", self.rate_per_connection > 0.0),
            ("--rate-per-ip", self.rate_per_ip > 0.0),
            ("--connect-rate-per-ip", self.connect_rate_per_ip > 0.0),
            ("--max-peers-per-room", self.max_peers_per_room >= 1),
            (
                "--max-rooms-per-connection",
                self.max_rooms_per_connection >= 1,
            ),
            ("--max-connections", self.max_connections >= 1),
            ("--heartbeat", self.heartbeat >= Duration::from_millis(100)),
        ];
        // Durations beyond a month are typos (and `Instant + d` must not overflow).
        let durations: [(&'static str, Duration); 14] = [
            ("--turn-credential-ttl", self.turn_credential_ttl),
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--resume-window", self.resume_window),
            ("--heartbeat", self.heartbeat),
            ("--drain-timeout", self.drain_timeout),
            ("--reconnect-after", self.reconnect_after),
            ("--backend-timeout", self.cluster.backend_timeout),
            ("--breaker-open-for", self.cluster.breaker_open_for),
            ("--queue-backoff", self.cluster.queue_backoff),
            ("--queue-max-backoff", self.cluster.queue_max_backoff),
            ("--queue-claim-idle", self.cluster.queue_claim_idle),
            ("--chat-sweep", self.cluster.chat_sweep),
            ("--instance-ttl", self.cluster.instance_ttl),
        ];
        for (setting, value) in durations {
            if value > MAX_DURATION {
                return Err(SignalingError::config(
                    setting,
                    format!(
                        "{} is longer than 30 days",
                        humantime::format_duration(value)
                    ),
                ));
            }
        }
        for (setting, ok) in checks {
            if !ok {
                return Err(SignalingError::config(
                    setting,
                    match setting {
                        "--max-reply-bytes" => "must be at least twice --max-chat-bytes",
                        "--max-outbox-bytes" => "must be at least twice --max-reply-bytes",
                        _ => "value is out of range",
                    },
                ));
            }
        }
        Ok(())
    }

    /// Room tokens: the pinned algorithm, the setting naming the key file
    /// and its path; `None` when tokens are off.
    pub fn room_token_algorithm(
        &self,
    ) -> Result<Option<(TokenAlgorithm, &'static str, &std::path::Path)>> {
        match (
            &self.auth_secret_file,
            &self.auth_public_key_file,
            self.auth_algorithm,
        ) {
            (Some(_), Some(_), _) => Err(SignalingError::config(
                "--auth-public-key-file",
                "set either --auth-secret-file (HS256) or --auth-public-key-file (RS256, ES256), not both",
            )),
            (Some(secret), None, None | Some(TokenAlgorithm::Hs256)) => Ok(Some((
                TokenAlgorithm::Hs256,
                "--auth-secret-file",
                secret.as_path(),
            ))),
            (Some(_), None, Some(other)) => Err(SignalingError::config(
                "--auth-algorithm",
                format!(
                    "{} verifies with a public key: set --auth-public-key-file instead of --auth-secret-file",
                    other.name()
                ),
            )),
            (None, Some(key), Some(alg @ (TokenAlgorithm::Rs256 | TokenAlgorithm::Es256))) => {
                Ok(Some((alg, "--auth-public-key-file", key.as_path())))
            }
            (None, Some(_), _) => Err(SignalingError::config(
                "--auth-algorithm",
                "a public key file needs RS256 or ES256, the algorithm your auth server signs with",
            )),
            (None, None, Some(_)) => Err(SignalingError::config(
                "--auth-algorithm",
                "needs --auth-secret-file or --auth-public-key-file",
            )),
            (None, None, None) => Ok(None),
        }
    }

    /// Whether the in-process TURN relay runs.
    pub fn embedded_turn(&self) -> bool {
        !self.no_embedded_turn && self.turn_uris.is_empty() && self.turn_uris_file.is_none()
    }

    /// Loopback peers are allowed by default only for a loopback in-process relay.
    pub fn loopback_peers_allowed(&self) -> bool {
        self.allow_loopback_peers
            .unwrap_or_else(|| self.embedded_turn() && is_loopback(self.turn_listen.ip()))
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boolean_flags_are_switches_that_also_take_a_value() {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let parse = |args: &[&str]| {
            let cmd =
                <Wrapper as clap::CommandFactory>::command().mut_args(|a| a.env(None::<&str>));
            let argv = std::iter::once("videochat-signaling").chain(args.iter().copied());
            cmd.try_get_matches_from(argv).and_then(|m| {
                <Wrapper as clap::FromArgMatches>::from_arg_matches(&m).map(|w| w.config)
            })
        };
        let on = parse(&["--allow-loopback-peers"]).expect("a bare switch");
        assert_eq!(on.allow_loopback_peers, Some(true));
        let off = parse(&["--allow-loopback-peers=false", "--no-embedded-turn"]).expect("=false");
        assert_eq!(off.allow_loopback_peers, Some(false));
        assert!(!off.loopback_peers_allowed());
        assert!(
            parse(&["--no-embedded-turn"])
                .expect("switch")
                .no_embedded_turn
        );
        assert!(parse(&["--allow-loopback-peers=maybe"]).is_err());
    }

    #[test]
    fn defaults_are_single_machine() {
        let c = Config::default();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.turn_listen.port(), 3478);
        assert!(c.embedded_turn());
        assert!(c.loopback_peers_allowed());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_combinations_name_the_setting() {
        let mut c = Config {
            turn_uris: vec!["turn:x:3478".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--turn-uri"), "{e}");
        c.turn_secret_file = Some("/x".into());
        c.turn_uris = vec!["http://x".into()];
        assert!(c.validate().unwrap_err().to_string().contains("--turn-uri"));
    }
}
