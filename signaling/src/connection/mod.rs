//! One WebSocket connection: the hello/welcome handshake, then a reader
//! (this task: decode, limit, handle) and a writer (its own task: keeps each
//! room's chat in `seq` order, fills gaps from the store, sends pings),
//! joined with `select!`. When the socket drops, the session waits for a
//! resume.
//!
//! - `handshake`: `hello`, the token, resume or a new session
//! - `limiter`: the rate limit every client frame passes
//! - `reader`: reads, decodes and dispatches the client's messages
//! - `rooms`: join, leave, a resumed session's rooms, the end of a session
//! - `chat_pipeline`: chat commits in flight, completed in order
//! - `writer`: the socket's writer task
//! - `room_order`: the writer's per-room order and gap fill, as plain data
//! - `closing`: close frames without losing what was sent
//! - `replies`: frames and protocol errors

mod chat_pipeline;
mod closing;
mod handshake;
mod limiter;
mod reader;
mod replies;
mod room_order;
mod rooms;
mod writer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use futures::StreamExt;
use futures::stream::SplitStream;
use tokio_util::sync::CancellationToken;

use crate::bus::{Inbox, outbox};
use crate::protocol::ServerMessage;
use crate::state::{AppState, ConnectionGuard};
use chat_pipeline::ChatPipeline;
use closing::await_close_reply;
use limiter::FrameLimiter;
use reader::Conn;
use replies::frame;

pub use rooms::end_session;

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The socket closed or failed; the session waits for a resume.
    Dropped,
    /// We queued a close frame (too large, unauthorized, abuse); session waits too.
    CloseQueued,
    /// The client said `bye`; the session is over.
    Bye,
}

/// Serves an upgraded socket until it ends.
pub async fn serve(
    state: AppState,
    mut socket: WebSocket,
    guard: ConnectionGuard,
    ip: IpAddr,
    query_token: Option<String>,
) {
    let conn_id = guard.id;
    let mut limiter = FrameLimiter::new(&state);
    let Some((session, resumed, claims, client_seqs)) = Box::pin(handshake::handshake(
        &state,
        &mut socket,
        &mut limiter,
        ip,
        query_token,
        conn_id,
    ))
    .await
    else {
        return;
    };
    let (tx, rx) = outbox(state.config.max_outbox_bytes);
    let overflow = CancellationToken::new();
    let stop = CancellationToken::new();
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(writer::write_loop(state.clone(), sink, rx, stop.clone()));

    let ice = state
        .ice
        .ice_servers(Some(&session.peer), state.config.turn_credential_ttl);
    let welcome = ServerMessage::Welcome {
        session: &session.session,
        peer: &session.peer,
        resume_token: &session.resume_token,
        resumed,
        ice_servers: &ice,
        heartbeat_ms: state.config.heartbeat.as_millis() as u64,
    };
    // The queue is empty at this point.
    let _ = tx.try_send(frame(&welcome));
    let inbox = Inbox {
        connection: conn_id,
        sender: tx.clone(),
        overflow: overflow.clone(),
    };
    let mut conn = Conn {
        chats: ChatPipeline::default(),
        limiter,
        state: state.clone(),
        session,
        tx,
        overflow: overflow.clone(),
        ip,
        claims,
    };
    if let Err(e) = state.bus.attach(&conn.session.peer, inbox).await {
        tracing::warn!(error = %e, "bus attach failed");
    }
    if resumed {
        Box::pin(conn.restore_rooms(&client_seqs)).await;
    }
    tracing::debug!(peer = %conn.session.peer, session = %conn.session.session, resumed, %ip, "session open");

    let end = tokio::select! {
        end = conn.read_loop(&mut stream) => end,
        _ = overflow.cancelled() => {
            state.metrics.slow_consumers.inc();
            tracing::info!(peer = %conn.session.peer, "slow consumer closed; it can resume");
            End::Dropped
        }
        _ = stop.cancelled() => End::Dropped,
    };
    // Boxed: only needed once, at the end.
    Box::pin(finish(state, conn, writer, stream, stop, end, guard)).await;
}

/// After the reader stopped: collect what the writer delivered, then leave
/// the session resumable (or not, after `bye`).
async fn finish(
    state: AppState,
    mut conn: Conn,
    writer: tokio::task::JoinHandle<HashMap<Arc<str>, u64>>,
    mut stream: SplitStream<WebSocket>,
    stop: CancellationToken,
    end: End,
    guard: ConnectionGuard,
) {
    let conn_id = guard.id;
    // With a close queued, the writer sends what is queued first (the errors
    // that explain the close), then the close frame; the client answers it,
    // and only then does the socket go, so nothing sent is lost to a reset.
    let closing = end == End::CloseQueued || end == End::Bye;
    let delivered = if closing {
        match tokio::time::timeout(Duration::from_secs(2), writer).await {
            Ok(Ok(d)) => d,
            _ => HashMap::new(),
        }
    } else {
        stop.cancel();
        writer.await.unwrap_or_default()
    };
    let peer = conn.session.peer.clone();
    if end == End::Bye {
        await_close_reply(&mut stream).await;
        drop(guard);
        return;
    }
    for (room, seq) in delivered {
        if let Some(m) = conn.session.rooms.get_mut(&*room) {
            m.delivered_seq = m.delivered_seq.max(seq);
        }
    }
    if let Err(e) = state.bus.detach(&peer, conn_id).await {
        tracing::warn!(error = %e, "bus detach failed");
    }
    if let Err(e) = state
        .sessions
        .detach(&conn.session, conn_id, state.resume_window())
        .await
    {
        tracing::warn!(error = %e, "session detach failed");
    }
    // The others learn at once that this peer is away and for how long its
    // place is kept, so a page can show it as reconnecting and stop offering
    // to it until it is back.
    let resume_within_ms = u64::try_from(state.resume_window().as_millis()).unwrap_or(u64::MAX);
    for room in conn.session.rooms.keys() {
        let msg = ServerMessage::PeerAway {
            room,
            peer: &peer,
            resume_within_ms,
        };
        if let Err(e) = state.bus.publish(room, frame(&msg), Some(&peer)).await {
            tracing::warn!(error = %e, %room, "publish peer-away failed");
        }
    }
    tracing::debug!(%peer, "socket closed; session resumable");
    if closing {
        await_close_reply(&mut stream).await;
    }
    drop(guard);
}
