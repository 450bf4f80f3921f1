//! The HTTP/1.1 accept loop. `axum::serve` has no header read timeout and no
//! per-address limits, so a few hundred connections that send half a request
//! hold the server; this loop bounds them:
//! - request headers must arrive within `--header-timeout` (hyper's header
//!   read timer, which also closes idle keep-alive connections),
//! - one address may have `--max-handshakes-per-ip` connections whose first
//!   request is not answered yet; more are closed at once,
//! - bodies are read under `--body-timeout` by the JSON extractor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::client_address::client_ip;
use crate::rate_limit::PerIpSlot;
use crate::state::AppState;

/// The client's address of a request (behind trusted proxies, from their
/// X-Forwarded-For; else the TCP peer's).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub std::net::IpAddr);

/// Accepts until `stop`, serving each connection on its own task.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    stop: CancellationToken,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A trusted proxy carries many clients' requests; the header timeout
        // still bounds it, and the limits after the headers key on the client.
        let slot = if crate::client_address::is_trusted(&state.config.trusted_proxies, addr.ip()) {
            None
        } else {
            let Some(slot) = state.handshakes_per_ip.try_acquire(addr.ip()) else {
                state.metrics.refused("handshakes_per_ip");
                tracing::debug!(ip = %addr.ip(), "connection closed: too many unfinished requests from this address");
                drop(tcp);
                continue;
            };
            Some(slot)
        };
        // Small frames go out at once: with Nagle's algorithm a frame can wait
        // for the peer's delayed ACK (40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        tokio::spawn(serve_connection(
            tcp,
            addr,
            slot,
            router.clone(),
            state.clone(),
            stop.clone(),
        ));
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    slot: Option<PerIpSlot>,
    router: Router,
    state: AppState,
    stop: CancellationToken,
) {
    // Held until the first response is ready (or the connection ends).
    let unanswered = Arc::new(Mutex::new(slot));
    let pending = unanswered.clone();
    let trusted_proxies = state.config.trusted_proxies.clone();
    let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        let client = client_ip(&trusted_proxies, addr.ip(), req.headers());
        req.extensions_mut().insert(ConnectInfo(addr));
        req.extensions_mut().insert(ClientAddress(client));
        let router = router.clone();
        let pending = pending.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await;
            pending.lock().unwrap_or_else(|p| p.into_inner()).take();
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, ip = %addr.ip(), "HTTP connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(unanswered);
}
