//! The running relay: listeners, the `turn` crate's server, the admin port
//! and the housekeeping tasks, started and stopped together.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use turn::allocation::AllocationInfo;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};

use crate::admin::{AdminState, app};
use crate::advertised::{AdvertisedAddress, watch_address_file};
use crate::config::RelayConfig;
use crate::error::TurnError;
use crate::fast_path::FastPath;
use crate::guard::{GuardedConn, Transport, VerifiedKeys};
use crate::metrics::Metrics;
use crate::readiness::ReadinessInputs;
use crate::relay_ports::{RelayIp, RelayPorts, udp_socket};
use crate::secrets::{SecretStore, watch_secret_file};
use crate::state::Shared;
use crate::tcp::{StreamLimits, TcpMux};
use crate::tls::{CertFiles, TlsServer, watch_cert_files};

/// Channel binding lifetime (RFC 5766 11: 10 minutes), given to the crate
/// and to the fast path's mirror alike.
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// A running TURN relay.
pub struct Relay {
    shared: Arc<Shared>,
    server: Server,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    relay_ip: RelayIp,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable handle for drain and metrics from other tasks.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    pub fn begin_drain(&self) {
        self.shared.begin_drain();
    }
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }
    pub fn active_allocations(&self) -> u64 {
        self.shared.metrics.allocations_active.get().max(0) as u64
    }
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }
    /// What `/readyz` answers now.
    pub fn readiness(&self) -> crate::readiness::Readiness {
        self.shared.readiness()
    }
    /// Waits until no allocation is live or `timeout` passes; true when empty.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.active_allocations() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Relay {
    /// Validates `config`, binds every listener and starts relaying.
    pub async fn start(config: RelayConfig) -> Result<Relay, TurnError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let secrets = Arc::new(SecretStore::load(
            config
                .secrets
                .iter()
                .map(|s| s.trim().as_bytes().to_vec())
                .collect(),
            config.secret_file.clone(),
        )?);
        metrics.secrets_loaded.set(secrets.current().len() as i64);
        // A certificate that is missing, unreadable, expired or not matching
        // its key stops the start, like any other bad setting.
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsServer::load(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })?),
            // validate() refused one without the other.
            _ => None,
        };
        let drain_token = match &config.admin_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let relay_bind_ip = config.relay_bind_address.unwrap_or(config.listen_address);
        let learned = config.relay_address_dir.as_ref().map(|dir| {
            Arc::new(AdvertisedAddress::from_dir(
                dir,
                config.relay_address_key.as_deref().unwrap_or_default(),
                relay_bind_ip.is_ipv4(),
            ))
        });
        let relay_ip = match &learned {
            Some(address) => RelayIp::Learned(Arc::clone(address)),
            None => RelayIp::Fixed(advertised_ip(&config)?),
        };
        if let RelayIp::Fixed(relay_ip) = relay_ip
            && relay_bind_ip.is_ipv4() != relay_ip.is_ipv4()
        {
            return Err(TurnError::config(
                "--relay-address",
                format!(
                    "{relay_ip} is not of the same family as the relay bind address {relay_bind_ip}"
                ),
            ));
        }

        // Peers at this relay's own relay addresses are its own sockets when
        // the address clients are given is the one the sockets are bound to.
        let local_ip = match relay_ip {
            RelayIp::Fixed(ip)
                if ip == relay_bind_ip && !ip.is_unspecified() && !config.no_local_delivery =>
            {
                Some(ip)
            }
            _ => None,
        };
        let fast = Arc::new(FastPath::new(
            !config.no_fast_path,
            local_ip,
            CHANNEL_LIFETIME,
            Arc::clone(&metrics),
        ));
        let shared = Arc::new(Shared::new(
            Arc::clone(&metrics),
            Arc::clone(&secrets),
            config.peer_policy(),
            config.max_allocations_per_user,
            config.max_allocations,
            Arc::clone(&fast),
        ));
        shared.set_readiness_inputs(ReadinessInputs {
            advertised: learned.clone(),
            drain_readiness: config.drain_readiness,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        // UDP: several sockets on one port so the kernel spreads client flows
        // over several receive loops (a flow always hashes to the same one,
        // which keeps its allocation on the same allocation manager).
        let udp_sockets = bind_udp(&config)?;
        let udp_addr = udp_sockets[0].local_addr()?;

        let tcp = if config.no_tcp {
            None
        } else {
            let port = config.tcp_port.unwrap_or(if config.listen_port == 0 {
                udp_addr.port()
            } else {
                config.listen_port
            });
            let addr = SocketAddr::new(config.listen_address, port);
            let listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                // Port 0 asked for any free port; the UDP port may be taken on TCP.
                Err(_) if config.listen_port == 0 && config.tcp_port.is_none() => {
                    TcpListener::bind(SocketAddr::new(config.listen_address, 0))
                        .await
                        .map_err(|source| TurnError::Bind {
                            setting: "--tcp-port",
                            addr,
                            source,
                        })?
                }
                Err(source) => {
                    return Err(TurnError::Bind {
                        setting: if config.tcp_port.is_some() {
                            "--tcp-port"
                        } else {
                            "--listen-port"
                        },
                        addr,
                        source,
                    });
                }
            };
            Some(listener)
        };

        let mut tls_listeners = Vec::new();
        if tls.is_some() {
            for port in config.tls_listen_ports() {
                let addr = SocketAddr::new(config.listen_address, port);
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| TurnError::Bind {
                        setting: "--tls-ports",
                        addr,
                        source,
                    })?;
                tls_listeners.push(listener);
            }
        }

        let admin_listener = match config.admin_addr() {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| TurnError::Bind {
                            setting: "--admin-listen",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };

        let ports = |fast: &Arc<FastPath>| RelayPorts {
            bind_ip: relay_bind_ip,
            advertised_ip: relay_ip.clone(),
            min_port: config.relay_min_port,
            max_port: config.relay_max_port,
            buffer_bytes: config.socket_buffer_bytes,
            fast: Arc::clone(fast),
        };
        let mut conn_configs = Vec::new();
        for sock in udp_sockets {
            conn_configs.push(ConnConfig {
                conn: Arc::new(GuardedConn::new(
                    Transport::Udp(Arc::new(sock)),
                    Arc::clone(&shared),
                    &config.realm,
                )?),
                relay_addr_generator: Box::new(ports(&fast)),
            });
        }
        let stream_limits = Arc::new(StreamLimits::new(
            config.max_tcp_connections,
            config.max_connections_per_address,
            config.stream_auth_timeout,
        ));
        let mut tcp_addr = None;
        let mut tls_addrs = Vec::new();
        let (tls_server, tls_seen) = match tls {
            Some((server, seen)) => (Some(server), Some(seen)),
            None => (None, None),
        };
        let stream_listeners = tcp
            .map(|l| (l, None))
            .into_iter()
            .chain(tls_listeners.into_iter().map(|l| (l, tls_server.clone())));
        for (listener, tls) in stream_listeners {
            let local = listener.local_addr()?;
            match tls {
                None => tcp_addr = Some(local),
                Some(_) => tls_addrs.push(local),
            }
            let (mux, task) = TcpMux::start(
                listener,
                tls,
                Arc::clone(&metrics),
                Arc::clone(&stream_limits),
                shutdown_rx.clone(),
            )?;
            tasks.push(task);
            conn_configs.push(ConnConfig {
                conn: Arc::new(GuardedConn::new(
                    Transport::Tcp(Arc::new(mux)),
                    Arc::clone(&shared),
                    &config.realm,
                )?),
                relay_addr_generator: Box::new(ports(&fast)),
            });
        }
        if let (Some(server), Some(seen)) = (tls_server, tls_seen) {
            tasks.push(tokio::spawn(watch_cert_files(
                server,
                seen,
                Arc::clone(&metrics),
                config.tls_reload_interval,
            )));
        }

        let (closed_tx, closed_rx) = mpsc::channel::<AllocationInfo>(4096);
        tasks.push(tokio::spawn(count_closed_allocations(
            closed_rx,
            Arc::clone(&shared),
        )));

        let server = Server::new(ServerConfig {
            conn_configs,
            realm: config.realm.clone(),
            auth_handler: Arc::new(VerifiedKeys(Arc::clone(&shared))),
            channel_bind_timeout: CHANNEL_LIFETIME,
            alloc_close_notify: Some(closed_tx),
        })
        .await?;

        tasks.push(tokio::spawn(watch_secret_file(
            Arc::clone(&secrets),
            Arc::clone(&metrics),
            config.secret_reload_interval,
        )));
        tasks.push(tokio::spawn(housekeeping(Arc::clone(&shared))));
        if let Some(address) = &learned {
            tasks.push(tokio::spawn(watch_address_file(
                Arc::clone(address),
                config.relay_address_reload_interval,
            )));
        }

        let mut admin_addr = None;
        if let Some(listener) = admin_listener {
            admin_addr = Some(listener.local_addr()?);
            let router = app(AdminState {
                shared: Arc::clone(&shared),
                drain_token: drain_token.map(Arc::from),
            });
            let mut stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "admin server failed");
                }
            }));
        }

        tracing::info!(
            udp = %udp_addr,
            tcp = ?tcp_addr,
            tls = ?tls_addrs,
            admin = ?admin_addr,
            relay_address = ?relay_ip.current(),
            relay_address_file = ?learned.as_ref().map(|a| a.file().display().to_string()),
            relay_ports = %format!("{}-{}", config.relay_min_port, config.relay_max_port),
            realm = %config.realm,
            secrets = secrets.current().len(),
            "TURN relay listening"
        );

        Ok(Relay {
            shared,
            server,
            udp_addr,
            tcp_addr,
            tls_addrs,
            admin_addr,
            relay_ip,
            shutdown,
            tasks,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }
    /// The TLS (`turns:`) listeners' addresses, empty without a certificate.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }
    /// The relay address given to clients in allocations (unspecified while
    /// an address file holds none yet).
    pub fn relay_ip(&self) -> IpAddr {
        self.relay_address()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
    /// The relay address given to clients now, if known.
    pub fn relay_address(&self) -> Option<IpAddr> {
        self.relay_ip.current()
    }
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }
    /// New allocations refused (508); live ones keep relaying. Readiness
    /// stays on unless `--drain-readiness not-ready`.
    pub fn begin_drain(&self) {
        self.shared.begin_drain();
    }
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }
    pub fn active_allocations(&self) -> u64 {
        self.handle().active_allocations()
    }
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        self.handle().wait_drained(timeout).await
    }
    /// What `/readyz` answers now.
    pub fn readiness(&self) -> crate::readiness::Readiness {
        self.shared.readiness()
    }

    /// Stops everything: allocations end, listeners close.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(err) = self.server.close().await {
            tracing::debug!(error = %err, "closing TURN server");
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn count_closed_allocations(mut rx: mpsc::Receiver<AllocationInfo>, shared: Arc<Shared>) {
    while let Some(info) = rx.recv().await {
        shared.allocation_closed(
            (info.five_tuple.src_addr, info.five_tuple.dst_addr),
            &info.username,
        );
    }
}

async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        shared.sweep_pending();
    }
}

fn read_token(path: &std::path::Path) -> Result<String, TurnError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TurnError::config("--admin-token-file", format!("{}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(TurnError::config(
            "--admin-token-file",
            format!("{} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// The relay address clients are told: configured, else the listen address,
/// else (listening on 0.0.0.0) the source address of the default route.
fn advertised_ip(config: &RelayConfig) -> Result<IpAddr, TurnError> {
    if let Some(ip) = config.relay_address {
        return Ok(ip);
    }
    let listen = config.listen_address;
    if !listen.is_unspecified() {
        return Ok(listen);
    }
    // Connecting a UDP socket sends nothing; it only selects a route.
    let probe = if listen.is_ipv4() {
        StdUdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
    } else {
        StdUdpSocket::bind("[::]:0").and_then(|s| s.connect("[2001:db8::1]:9").map(|_| s))
    };
    match probe.and_then(|s| s.local_addr()) {
        Ok(addr) if !addr.ip().is_unspecified() => Ok(addr.ip()),
        _ => Err(TurnError::config(
            "--relay-address",
            "not given and no default route to guess it from; set the external IP clients reach",
        )),
    }
}

/// Binds the UDP listening sockets, refusing a port another process holds.
fn bind_udp(config: &RelayConfig) -> Result<Vec<tokio::net::UdpSocket>, TurnError> {
    let count = if config.udp_listeners == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        config.udp_listeners
    };
    let mut addr = SocketAddr::new(config.listen_address, config.listen_port);
    let bind_err = |addr, source| TurnError::Bind {
        setting: "--listen-port",
        addr,
        source,
    };
    if config.listen_port != 0 {
        // SO_REUSEPORT would let us share a port with another process of the
        // same user; probe with a plain bind first so "port in use" is an error.
        let probe = StdUdpSocket::bind(addr).map_err(|e| bind_err(addr, e))?;
        drop(probe);
    }
    let reuse = count > 1;
    let first =
        udp_socket(addr, config.socket_buffer_bytes, reuse).map_err(|e| bind_err(addr, e))?;
    addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(
            udp_socket(addr, config.socket_buffer_bytes, true).map_err(|e| bind_err(addr, e))?,
        );
    }
    Ok(sockets)
}
