//! Starting and stopping the service: backends from configuration, the
//! in-process TURN relay, the HTTP listener, the session reaper, and drain.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use videochat_turn::{Relay, RelayConfig};

use crate::api::app;
use crate::auth::TokenVerifier;
use crate::backends::Backends;
use crate::config::{Config, read_secret};
use crate::connection::end_session;
use crate::error::{Result, SignalingError};
use crate::ice::{IceConfig, turn_uris};
use crate::ids::random_id;
use crate::origin::OriginPolicy;
use crate::state::AppState;

/// A started server.
pub struct RunningServer {
    pub state: AppState,
    addr: SocketAddr,
    relay: Option<Relay>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound HTTP/WebSocket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The in-process TURN relay's UDP and TCP addresses, when it runs.
    pub fn turn_addrs(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        self.relay.as_ref().map(|r| (r.udp_addr(), r.tcp_addr()))
    }

    /// Whether the in-process relay is draining (None without one).
    pub fn turn_draining(&self) -> Option<bool> {
        self.relay.as_ref().map(|r| r.is_draining())
    }

    /// What SIGTERM does before exit: readiness off, no new sessions, clients told.
    pub fn begin_drain(&self) {
        self.state.begin_drain();
    }

    /// Waits until every connection is gone or `timeout` passes; true when empty.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.state.connection_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Resolves when a drain was requested over the admin API (or by `begin_drain`).
    pub async fn drain_requested(&self) {
        let mut w = self.state.drain_watch();
        let _ = w.wait_for(|d| *d).await;
    }

    /// Stops serving and the relay.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Some(r) = self.relay {
            r.shutdown().await;
        }
    }
}

async fn start_relay(config: &Config) -> Result<(Relay, IceConfig)> {
    let mut relay = RelayConfig::local(String::new());
    relay.secrets.clear();
    relay.listen_address = config.turn_listen.ip();
    relay.listen_port = config.turn_listen.port();
    relay.relay_min_port = config.turn_relay_ports.0;
    relay.relay_max_port = config.turn_relay_ports.1;
    relay.allow_loopback_peers = config.loopback_peers_allowed();
    // One secret shared in memory unless the operator gave a secret file.
    let secret = match &config.turn_secret_file {
        Some(path) => {
            relay.secret_file = Some(path.clone());
            None
        }
        None => {
            let s = random_id("", 24);
            relay.secrets = vec![s.clone()];
            Some(s)
        }
    };
    let relay = Relay::start(relay).await.map_err(|e| {
        SignalingError::Turn(format!("{e} (settings --turn-listen, --turn-relay-ports)"))
    })?;
    let host = if relay.udp_addr().ip().is_unspecified() {
        relay.relay_ip()
    } else {
        relay.udp_addr().ip()
    };
    let host = match host {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let uris = turn_uris(
        &host,
        relay.udp_addr().port(),
        relay.tcp_addr().map(|a| a.port()),
    );
    let ice = match (secret, &config.turn_secret_file) {
        (Some(s), _) => IceConfig::with_secret(uris, s.into_bytes()),
        (None, Some(path)) => IceConfig::with_secret_file(uris, path.clone())?,
        (None, None) => IceConfig::none(),
    };
    Ok((relay, ice))
}

/// Validates `config`, opens the backends, starts the relay and the listener.
pub async fn start(config: Config) -> Result<RunningServer> {
    config.validate()?;
    // Key files are checked before the store is opened: a bad key must not
    // leave a data directory behind.
    let auth = room_token_verifier(&config)?;
    // Background tasks of the backends live as long as the process.
    let backends = crate::backends::open(&config, CancellationToken::new()).await?;
    start_serving(config, backends, auth).await
}

/// As [`start`], with backends chosen by the caller (other deployments, fault tests).
pub async fn start_with_backends(config: Config, backends: Backends) -> Result<RunningServer> {
    config.validate()?;
    let auth = room_token_verifier(&config)?;
    start_serving(config, backends, auth).await
}

/// The room token verifier the configuration asks for, its key read.
fn room_token_verifier(config: &Config) -> Result<Option<TokenVerifier>> {
    config
        .room_token_algorithm()?
        .map(|(algorithm, setting, path)| {
            TokenVerifier::from_file(algorithm, setting, path.to_path_buf())
        })
        .transpose()
}

async fn start_serving(
    config: Config,
    backends: Backends,
    auth: Option<TokenVerifier>,
) -> Result<RunningServer> {
    let admin_token = config
        .admin_token_file
        .as_deref()
        .map(|p| read_secret("--admin-token-file", p))
        .transpose()?;
    let (relay, ice) = if config.embedded_turn() {
        let (relay, ice) = start_relay(&config).await?;
        (Some(relay), ice)
    } else if let Some(path) = &config.turn_secret_file {
        let ice = IceConfig::with_secret_file(config.turn_uris.clone(), path.clone())?;
        let ice = match &config.turn_uris_file {
            Some(uris) => ice.with_uris_file(uris.clone())?,
            None => ice,
        };
        (None, ice)
    } else {
        (None, IceConfig::none())
    };
    if let Some(r) = &relay {
        let tcp = r.tcp_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %r.udp_addr(), tcp_addr = %tcp, loopback_peers = config.loopback_peers_allowed(), "TURN relay listening");
    }
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        SignalingError::config("--listen", format!("cannot bind {}: {e}", config.listen))
    })?;
    let addr = listener.local_addr()?;
    let reap_every =
        (config.resume_window / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let origins = OriginPolicy::new(&config.allowed_origins, &config.public_origins, addr);
    let origins = match &config.public_origins_file {
        Some(path) => origins.with_public_origins_file(path.clone())?,
        None => origins,
    };
    let state = AppState::new(config, backends, ice, auth, admin_token, origins);
    if let Some(r) = &relay {
        // POST /api/admin/drain drains the in-process relay as SIGTERM does.
        let handle = r.handle();
        state.on_drain(move || handle.begin_drain());
    }
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(crate::http_server::serve(
        listener,
        app(state.clone()),
        state.clone(),
        shutdown.clone(),
    ));
    let reaper = tokio::spawn(reap(state.clone(), reap_every, shutdown.clone()));
    tracing::info!(%addr, store = state.store.kind(), bus = state.bus.kind(), "signaling listening");
    Ok(RunningServer {
        state,
        addr,
        relay,
        shutdown,
        tasks: vec![serve, reaper],
    })
}

/// Ends sessions whose resume window passed: others see `peer-left` now.
async fn reap(state: AppState, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.sessions.take_expired().await {
            Ok(expired) => {
                for session in expired {
                    tracing::debug!(peer = %session.peer, "resume window passed");
                    end_session(&state, &session).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "session reaper failed"),
        }
    }
}
