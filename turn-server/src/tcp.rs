//! The TCP listener, presented to the `turn` crate as one packet `Conn`:
//! frames from every client stream arrive through one queue tagged with the
//! client's address, and replies go to that client's writer task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::framing::{FrameError, read_frame};
use crate::metrics::{BadPacket, Metrics};

/// Frames queued per client before further ones are dropped (as UDP would).
const WRITER_QUEUE: usize = 512;
/// Frames from all clients waiting for the server's receive loop.
const INBOUND_QUEUE: usize = 4096;

pub(crate) enum TcpEvent {
    Frame(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

pub(crate) struct TcpMux {
    events: tokio::sync::Mutex<mpsc::Receiver<TcpEvent>>,
    writers: Writers,
    pub local: SocketAddr,
}

impl TcpMux {
    /// Starts accepting on `listener`; returns the mux and the acceptor task.
    pub fn start(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        max_connections: u32,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(TcpMux, tokio::task::JoinHandle<()>)> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let writers: Writers = Arc::default();
        let task = tokio::spawn(accept_loop(
            listener,
            tx,
            Arc::clone(&writers),
            metrics,
            max_connections,
            shutdown,
        ));
        Ok((
            TcpMux {
                events: tokio::sync::Mutex::new(rx),
                writers,
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
        let tx = {
            let writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            writers.get(&to).cloned()
        };
        match tx {
            Some(tx) => tx.try_send(frame.to_vec()).is_ok(),
            None => false,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::Sender<TcpEvent>,
    writers: Writers,
    metrics: Arc<Metrics>,
    max_connections: u32,
    mut shutdown: watch::Receiver<bool>,
) {
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if metrics.tcp_connections_active.get() >= i64::from(max_connections) {
            metrics.tcp_connections_refused.inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        metrics.tcp_connections_active.inc();
        tokio::spawn(serve_connection(
            stream,
            peer,
            events.clone(),
            Arc::clone(&writers),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
    writers: Writers,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (r, mut w) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITER_QUEUE);
    writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(peer, wtx);

    // Writer: batches whatever is queued into one write.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(16 * 1024);
        while let Some(first) = wrx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < 64 * 1024 {
                match wrx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if w.write_all(&batch).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });

    let mut reader = BufReader::with_capacity(16 * 1024, r);
    loop {
        let mut frame = Vec::with_capacity(256);
        let read = tokio::select! {
            r = read_frame(&mut reader, &mut frame) => r,
            _ = shutdown.changed() => break,
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
    writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&peer);
    writer.abort();
    metrics.tcp_connections_active.dec();
    let _ = events.send(TcpEvent::Closed(peer)).await;
}
