//! What every request and connection shares.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::TokenVerifier;
use crate::backends::Backends;
use crate::bus::Bus;
use crate::chat::ChatService;
use crate::config::Config;
use crate::dead_letters::DeadLetters;
use crate::ice::IceConfig;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;
use crate::presence::Presence;
use crate::rate_limit::{IpRateLimiter, PerIpCap, PerIpSlot};
use crate::sessions::Sessions;
use crate::store::Store;

pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub sessions: Arc<dyn Sessions>,
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Commit-then-publish of chat, for WebSocket and REST.
    pub chat: ChatService,
    pub metrics: Arc<Metrics>,
    pub ice: IceConfig,
    /// Room tokens, when required.
    pub auth: Option<TokenVerifier>,
    pub admin_token: Option<String>,
    pub ip_limiter: IpRateLimiter,
    /// New WebSocket connections per client address.
    pub connect_limiter: IpRateLimiter,
    /// Which browser origins may open `/ws` and make REST writes.
    pub origins: OriginPolicy,
    /// WebSocket connections per client address.
    pub connections_per_ip: Arc<PerIpCap>,
    /// TCP connections per client address whose first request is unanswered.
    pub handshakes_per_ip: Arc<PerIpCap>,
    draining: watch::Sender<bool>,
    /// Run once when draining starts (the in-process TURN relay drains too).
    drain_hooks: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
}

/// Cheap to clone; axum's state.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        backends: Backends,
        ice: IceConfig,
        auth: Option<TokenVerifier>,
        admin_token: Option<String>,
        origins: OriginPolicy,
    ) -> Self {
        let connections_per_ip = PerIpCap::new(config.max_connections_per_ip);
        let handshakes_per_ip = PerIpCap::new(config.max_handshakes_per_ip);
        let ip_limiter = IpRateLimiter::new(config.rate_per_ip, config.rate_per_ip * 2.0);
        let connect_limiter =
            IpRateLimiter::new(config.connect_rate_per_ip, config.connect_rate_per_ip * 2.0);
        let (draining, _) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        metrics.store_up.set(1);
        metrics.bus_up.set(1);
        let chat = ChatService::new(
            backends.store.clone(),
            backends.bus.clone(),
            metrics.clone(),
        );
        Self(Arc::new(Shared {
            config,
            store: backends.store,
            bus: backends.bus,
            presence: backends.presence,
            sessions: backends.sessions,
            dead_letters: backends.dead_letters,
            chat,
            metrics,
            ice,
            auth,
            admin_token,
            ip_limiter,
            connect_limiter,
            origins,
            connections_per_ip,
            handshakes_per_ip,
            draining,
            drain_hooks: std::sync::Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            // Random start: connection ids also name session owners across instances.
            next_connection: AtomicU64::new(rand::random::<u64>() >> 1),
        }))
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Starts draining: readiness fails, new sessions are refused, clients are told.
    pub fn begin_drain(&self) {
        if !self.draining.send_replace(true) {
            self.metrics.draining.set(1);
            tracing::info!(connections = self.connection_count(), "draining");
            if let Ok(hooks) = self.drain_hooks.lock() {
                for hook in hooks.iter() {
                    hook();
                }
            }
        }
    }

    /// Registers something to run when draining starts.
    pub fn on_drain(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.drain_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    pub fn drain_watch(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes a connection slot unless the instance, or the address's share
    /// of it, is full.
    pub fn try_open_connection(&self, ip: IpAddr) -> Result<ConnectionGuard, ConnectionRefused> {
        let per_ip = self
            .connections_per_ip
            .try_acquire(ip)
            .ok_or(ConnectionRefused::AddressFull)?;
        let max = self.config.max_connections;
        let mut current = self.connections.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return Err(ConnectionRefused::InstanceFull);
            }
            match self.connections.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.metrics.connections.inc();
        Ok(ConnectionGuard {
            state: self.clone(),
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            _per_ip: per_ip,
        })
    }

    pub fn resume_window(&self) -> Duration {
        self.config.resume_window
    }
}

/// Why a WebSocket was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// `--max-connections` reached.
    InstanceFull,
    /// The client address holds `--max-connections-per-ip` already.
    AddressFull,
}

/// Holds a connection slot (and the address's); released on drop.
pub struct ConnectionGuard {
    state: AppState,
    pub id: u64,
    _per_ip: PerIpSlot,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.connections.dec();
    }
}
