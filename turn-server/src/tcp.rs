//! TCP and TLS listeners, each presented to the `turn` crate as one packet
//! `Conn`: frames from every client stream arrive through one queue tagged
//! with the client's address, and replies go to that client's writer task.
//! TLS streams are framed exactly as TCP ones once the handshake is done.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::framing::{FrameError, read_frame};
use crate::metrics::{BadPacket, Metrics, StreamClose, StreamRefusal};
use crate::tls::TlsServer;

/// Frames queued per client before further ones are dropped (as UDP would).
const WRITER_QUEUE: usize = 512;
/// Frames from all clients waiting for the server's receive loop.
const INBOUND_QUEUE: usize = 4096;

pub(crate) enum TcpEvent {
    Frame(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// A connected client as the mux sees it.
struct Client {
    tx: mpsc::Sender<Vec<u8>>,
    /// Set by the guard once a request from this client passed authentication.
    authenticated: Arc<AtomicBool>,
}

type Clients = Arc<Mutex<HashMap<SocketAddr, Client>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Limits shared by every TCP and TLS listener of a relay.
pub(crate) struct StreamLimits {
    pub max_total: u32,
    /// 0 means no limit.
    pub max_per_address: u32,
    /// Time from accept to the first authenticated request.
    pub auth_timeout: Duration,
    open: Mutex<OpenStreams>,
}

#[derive(Default)]
struct OpenStreams {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

impl StreamLimits {
    pub fn new(max_total: u32, max_per_address: u32, auth_timeout: Duration) -> Self {
        StreamLimits {
            max_total,
            max_per_address,
            auth_timeout,
            open: Mutex::default(),
        }
    }

    /// Takes a connection slot for a client at `ip`, or says which limit is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, StreamRefusal> {
        let mut open = lock(&self.open);
        if open.total >= self.max_total {
            return Err(StreamRefusal::Total);
        }
        let held = open.per_address.get(&ip).copied().unwrap_or(0);
        if self.max_per_address > 0 && held >= self.max_per_address {
            return Err(StreamRefusal::PerAddress);
        }
        open.total += 1;
        *open.per_address.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            ip,
        })
    }
}

/// One admitted connection; gives its slot back when dropped.
struct Slot {
    limits: Arc<StreamLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.open);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

pub(crate) struct TcpMux {
    events: tokio::sync::Mutex<mpsc::Receiver<TcpEvent>>,
    clients: Clients,
    pub local: SocketAddr,
}

/// What every connection task of one listener shares.
#[derive(Clone)]
struct Listening {
    events: mpsc::Sender<TcpEvent>,
    clients: Clients,
    metrics: Arc<Metrics>,
    limits: Arc<StreamLimits>,
    tls: Option<TlsServer>,
    shutdown: watch::Receiver<bool>,
}

impl TcpMux {
    /// Starts accepting on `listener` (TLS when `tls` is given); returns the
    /// mux and the acceptor task.
    pub fn start(
        listener: TcpListener,
        tls: Option<TlsServer>,
        metrics: Arc<Metrics>,
        limits: Arc<StreamLimits>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(TcpMux, tokio::task::JoinHandle<()>)> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let clients: Clients = Arc::default();
        let listening = Listening {
            events: tx,
            clients: Arc::clone(&clients),
            metrics,
            limits,
            tls,
            shutdown,
        };
        let task = tokio::spawn(accept_loop(listener, listening));
        Ok((
            TcpMux {
                events: tokio::sync::Mutex::new(rx),
                clients,
                local,
            },
            task,
        ))
    }

    pub async fn next_event(&self) -> Option<TcpEvent> {
        self.events.lock().await.recv().await
    }

    /// Queues `frame` for the client at `to`; false when it is gone or not reading.
    pub fn send(&self, frame: &[u8], to: SocketAddr) -> bool {
        let tx = lock(&self.clients).get(&to).map(|c| c.tx.clone());
        match tx {
            Some(tx) => tx.try_send(frame.to_vec()).is_ok(),
            None => false,
        }
    }

    /// The client at `peer` sent a request that passed authentication, so it
    /// may stay connected past the authentication timeout.
    pub fn mark_authenticated(&self, peer: SocketAddr) {
        if let Some(c) = lock(&self.clients).get(&peer) {
            c.authenticated.store(true, Ordering::Relaxed);
        }
    }
}

async fn accept_loop(listener: TcpListener, listening: Listening) {
    let mut shutdown = listening.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(err) => {
                // EMFILE and the like: back off a little instead of spinning.
                tracing::warn!(error = %err, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match listening.limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                listening.metrics.stream_refused(why);
                tracing::debug!(%peer, reason = ?why, "connection refused: limit reached");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_client(stream, peer, slot, listening.clone()));
    }
}

/// Runs one client connection: the TLS handshake when needed, then frames.
async fn serve_client(stream: TcpStream, peer: SocketAddr, slot: Slot, listening: Listening) {
    let metrics = Arc::clone(&listening.metrics);
    metrics.tcp_connections_active.inc();
    let auth_deadline = Instant::now() + slot.limits.auth_timeout;
    match listening.tls.clone() {
        None => serve_stream(stream, peer, auth_deadline, false, listening).await,
        Some(tls) => {
            let mut shutdown = listening.shutdown.clone();
            tokio::select! {
                accepted = tokio::time::timeout_at(auth_deadline, tls.accept(stream)) => match accepted {
                    Ok(Ok(tls_stream)) => serve_stream(tls_stream, peer, auth_deadline, true, listening).await,
                    Ok(Err(err)) => {
                        metrics.stream_closed(StreamClose::TlsHandshake);
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.stream_closed(StreamClose::AuthTimeout);
                        tracing::debug!(%peer, "TLS handshake not finished in time, closing");
                    }
                },
                _ = shutdown.changed() => {}
            }
        }
    }
    metrics.tcp_connections_active.dec();
    drop(slot);
}

/// Serves frames on one client stream. With `record_per_frame` (TLS) every
/// frame goes out in its own TLS record: some clients (coturn's
/// `turnutils_uclient` among them) take one STUN message per record read
/// and drop the rest of a record that carries several.
async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    auth_deadline: Instant,
    record_per_frame: bool,
    listening: Listening,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Listening {
        events,
        clients,
        metrics,
        mut shutdown,
        ..
    } = listening;
    let (r, mut w) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    let authenticated = Arc::new(AtomicBool::new(false));
    lock(&clients).insert(
        peer,
        Client {
            tx: wtx,
            authenticated: Arc::clone(&authenticated),
        },
    );

    // Writer: whatever is queued goes out together, then one flush.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(16 * 1024);
        while let Some(first) = wrx.recv().await {
            let mut written = if record_per_frame {
                w.write_all(&first).await
            } else {
                batch.clear();
                batch.extend_from_slice(&first);
                Ok(())
            };
            while written.is_ok() && batch.len() < 64 * 1024 {
                match wrx.try_recv() {
                    Ok(more) if record_per_frame => written = w.write_all(&more).await,
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if !record_per_frame && written.is_ok() {
                written = w.write_all(&batch).await;
            }
            if written.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });

    let mut reader = BufReader::with_capacity(16 * 1024, r);
    let auth_timer = tokio::time::sleep_until(auth_deadline);
    tokio::pin!(auth_timer);
    let mut auth_checked = false;
    loop {
        let mut frame = Vec::with_capacity(256);
        let read = tokio::select! {
            r = read_frame(&mut reader, &mut frame) => r,
            _ = shutdown.changed() => break,
            _ = &mut auth_timer, if !auth_checked => {
                auth_checked = true;
                if authenticated.load(Ordering::Relaxed) {
                    continue;
                }
                // Idle or unauthenticated sockets would otherwise hold
                // connection slots for ever.
                metrics.stream_closed(StreamClose::AuthTimeout);
                tracing::debug!(%peer, "no authenticated request in time, closing");
                break;
            }
        };
        match read {
            Ok(Ok(true)) => {
                if events.send(TcpEvent::Frame(peer, frame)).await.is_err() {
                    break;
                }
            }
            Ok(Ok(false)) | Err(_) => break,
            Ok(Err(e)) => {
                // A stream cannot be resynchronised after a bad frame.
                metrics.bad_packet(match e {
                    FrameError::Malformed => BadPacket::Malformed,
                    FrameError::Oversized => BadPacket::Oversized,
                });
                tracing::debug!(%peer, error = ?e, "closing tcp client after bad frame");
                break;
            }
        }
    }
    lock(&clients).remove(&peer);
    writer.abort();
    let _ = events.send(TcpEvent::Closed(peer)).await;
}
