//! One WebSocket connection: the hello/welcome handshake, then a reader (this
//! task: decode, limit, handle) and a writer (its own task: keeps each room's
//! chat in `seq` order, fills gaps from the store, sends pings), joined with
//! `select!`. When the socket drops, the session waits for a resume.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Claims};
use crate::bus::{Delivery, Inbox, JoinedRoom, Outbox, OutboxReceiver, outbox};
use crate::error::SignalingError;
use crate::history::history_page;
use crate::protocol::{
    ChatMessage, ClientMessage, Decoded, ErrorCode, PeerInfo, ProtocolError, ServerMessage,
    adapt_for, check_chat_body, decode, error_json,
};
use crate::rate_limit::TokenBucket;
use crate::sessions::{ResumeOutcome, RoomMembership, SessionState};
use crate::state::{AppState, ConnectionGuard};
use crate::store::{NewChat, RoomRecord};
use crate::time::{now_rfc3339, unix_now};

/// How long the writer waits for a missing `seq` before reading it from the store.
const GAP_WAIT: Duration = Duration::from_millis(50);
/// Out-of-order chat held per room before the gap is filled at once.
const MAX_PENDING: usize = 1024;
/// Chat messages of one connection waiting for durability at once; reading
/// pauses beyond that. Pipelining keeps a connection's throughput from being
/// one message per fsync.
const MAX_INFLIGHT: usize = 256;
/// Time a new connection has to send `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the client has to answer our close frame before the socket goes.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Close codes.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buf.as_mut_slice());
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(buf))
}

fn frame(msg: &ServerMessage<'_>) -> Delivery {
    Delivery::Frame {
        kind: msg.type_name(),
        frame: Utf8Bytes::from(msg.to_json()),
    }
}

fn chat_delivery(message: &ChatMessage) -> Delivery {
    Delivery::Chat {
        room: Arc::from(message.room.as_str()),
        seq: message.seq,
        frame: Utf8Bytes::from(ServerMessage::Chat(message).to_json()),
    }
}

fn internal(e: &SignalingError, what: &str) -> ProtocolError {
    match e {
        SignalingError::StoreUnavailable(_) | SignalingError::BusUnavailable(_) => {
            tracing::warn!(error = %e, what, "backend unavailable");
            ProtocolError::new(
                ErrorCode::Unavailable,
                format!("{what} is not possible right now; retry"),
                None,
            )
        }
        _ => {
            tracing::error!(error = %e, what, "internal error");
            ProtocolError::new(ErrorCode::Internal, "internal error", None)
        }
    }
}

fn with_ref(mut e: ProtocolError, reference: &str) -> ProtocolError {
    if e.reference.is_none() {
        e.reference = Some(reference.to_owned());
    }
    e
}

fn message_kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Hello { .. } => "hello",
        ClientMessage::Join { .. } => "join",
        ClientMessage::Leave { .. } => "leave",
        ClientMessage::Signal { .. } => "signal",
        ClientMessage::Chat { .. } => "chat",
        ClientMessage::History { .. } => "history",
        ClientMessage::Stats { .. } => "stats",
        ClientMessage::Ping => "ping",
        ClientMessage::Bye => "bye",
    }
}

/// Every frame a client sends (text, binary, ping or pong; before `hello`
/// or after) takes a token from the connection's bucket and the address's.
struct FrameLimiter {
    bucket: TokenBucket,
    /// Rate-limited frames in a row.
    abuse: u32,
}

enum Admit {
    Pass,
    /// Over the rate: answer `rate_limited`, drop the frame.
    Limited,
    /// Over the rate `--abuse-limit` times in a row: close 1008.
    Abuse,
}

impl FrameLimiter {
    fn new(state: &AppState) -> Self {
        Self {
            bucket: TokenBucket::new(
                state.config.rate_per_connection,
                state.config.rate_per_connection * 2.0,
            ),
            abuse: 0,
        }
    }

    fn admit(&mut self, state: &AppState, ip: IpAddr) -> Admit {
        if self.bucket.try_take() && state.ip_limiter.try_take(ip) {
            self.abuse = 0;
            return Admit::Pass;
        }
        self.abuse += 1;
        if self.abuse >= state.config.abuse_limit {
            Admit::Abuse
        } else {
            Admit::Limited
        }
    }
}

fn rate_limited() -> ProtocolError {
    ProtocolError::new(ErrorCode::RateLimited, "too many messages; slow down", None)
}

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
    let Some((session, resumed, claims, client_seqs)) = Box::pin(handshake(
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
    let writer = tokio::spawn(write_loop(state.clone(), sink, rx, stop.clone()));

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
        inflight: std::sync::Mutex::new(None),
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

async fn send_now(socket: &mut WebSocket, state: &AppState, err: &ProtocolError) {
    state.metrics.error(err.code.as_str());
    let _ = socket.send(Message::Text(error_json(err).into())).await;
}

/// Sends a close frame and waits for the client's, reading (and dropping)
/// what it still sends: closing a socket with unread input resets it, and
/// the client would lose what we sent before.
async fn close_now(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let sent = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    if sent.is_ok() {
        await_close_reply(socket).await;
    }
}

/// Reads until the client's close frame (or the end), for at most
/// [`CLOSE_HANDSHAKE_TIMEOUT`].
async fn await_close_reply<S>(stream: &mut S)
where
    S: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Waits for `hello`, checks the token, resumes or creates the session.
async fn handshake(
    state: &AppState,
    socket: &mut WebSocket,
    limiter: &mut FrameLimiter,
    ip: IpAddr,
    query_token: Option<String>,
    owner: u64,
) -> Option<(SessionState, bool, Option<Claims>, BTreeMap<String, u64>)> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                close_now(socket, CLOSE_POLICY, "hello expected").await;
                return None;
            }
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(m))) => m,
        };
        if matches!(msg, Message::Close(_)) {
            return None;
        }
        match limiter.admit(state, ip) {
            Admit::Pass => {}
            Admit::Limited => {
                send_now(socket, state, &rate_limited()).await;
                continue;
            }
            Admit::Abuse => {
                send_now(socket, state, &rate_limited()).await;
                tracing::info!(%ip, "closed before hello for repeated abuse");
                close_now(socket, CLOSE_POLICY, "rate limit").await;
                return None;
            }
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let e = ProtocolError::new(ErrorCode::BadRequest, "frames must be text", None);
                send_now(socket, state, &e).await;
                continue;
            }
        };
        if text.len() > state.config.max_frame_bytes {
            let e = ProtocolError::new(ErrorCode::TooLarge, "frame is over the size limit", None);
            send_now(socket, state, &e).await;
            close_now(socket, CLOSE_TOO_BIG, "frame too large").await;
            return None;
        }
        let (token, resume) = match decode(&text) {
            Ok(Decoded::Message(ClientMessage::Hello { token, resume })) => {
                let entries = resume
                    .as_ref()
                    .and_then(|r| r.last_seq.as_ref())
                    .map_or(0, BTreeMap::len);
                if entries > state.config.max_rooms_per_connection {
                    let e = ProtocolError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "field `resume.last_seq` has more than {} rooms",
                            state.config.max_rooms_per_connection
                        ),
                        Some("hello".into()),
                    );
                    send_now(socket, state, &e).await;
                    continue;
                }
                (token, resume)
            }
            Ok(Decoded::Message(ClientMessage::Ping)) => {
                let _ = socket
                    .send(Message::Text(ServerMessage::Pong.to_json().into()))
                    .await;
                continue;
            }
            Ok(Decoded::Ignore) => continue,
            Ok(Decoded::Message(other)) => {
                let e = ProtocolError::new(
                    ErrorCode::BadRequest,
                    "the first message must be hello",
                    Some(message_kind(&other).to_owned()),
                );
                send_now(socket, state, &e).await;
                continue;
            }
            Err(e) => {
                send_now(socket, state, &e).await;
                continue;
            }
        };
        state.metrics.message_in("hello");
        let claims = match &state.auth_secret {
            None => None,
            Some(secret) => {
                let token = token.or(query_token.clone()).unwrap_or_default();
                match auth::verify(secret, &token) {
                    Ok(c) => Some(c),
                    Err(err) => {
                        tracing::info!(%ip, error = %err, "refused token");
                        let e = ProtocolError::new(
                            ErrorCode::Unauthorized,
                            err.to_string(),
                            Some("hello".into()),
                        );
                        send_now(socket, state, &e).await;
                        close_now(socket, CLOSE_POLICY, "unauthorized").await;
                        return None;
                    }
                }
            }
        };
        if let Some(r) = resume {
            match state.sessions.resume(&r.session, &r.token, owner).await {
                Ok(ResumeOutcome::Resumed(s)) => {
                    state.metrics.resumes.inc();
                    return Some((s, true, claims, r.last_seq.unwrap_or_default()));
                }
                Ok(ResumeOutcome::Refused) => {
                    state.metrics.resume_failures.inc();
                    tracing::debug!(session = %r.session, "resume refused; new session");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session backend failed on resume");
                    state.metrics.resume_failures.inc();
                }
            }
        }
        let session = SessionState {
            session: random_id("s-", 12),
            peer: random_id("p-", 9),
            resume_token: random_id("", 24),
            rooms: HashMap::new(),
            last_activity: unix_now(),
        };
        if let Err(e) = state.sessions.create(session.clone(), owner).await {
            let e = internal(&e, "creating a session");
            send_now(socket, state, &e).await;
            return None;
        }
        return Some((session, false, claims, BTreeMap::new()));
    }
}

/// A chat message on its way to durability.
struct ChatOutcome {
    room: String,
    id: String,
    started: Instant,
    result: Result<crate::store::Appended, SignalingError>,
}

type PendingChat = std::pin::Pin<Box<dyn std::future::Future<Output = ChatOutcome> + Send>>;

struct Conn {
    state: AppState,
    /// Chat awaiting durability, acked in the order received. Created on the
    /// first chat so idle connections do not pay for it. The mutex only makes
    /// `Conn` `Sync`; it is reached through `get_mut`, never locked.
    inflight: std::sync::Mutex<Option<FuturesOrdered<PendingChat>>>,
    session: SessionState,
    tx: Outbox,
    /// Cancelled when the client does not read: the connection closes.
    overflow: CancellationToken,
    ip: IpAddr,
    claims: Option<Claims>,
    limiter: FrameLimiter,
}

impl Conn {
    /// Queues for the writer. When the outbox is full the reader waits (and
    /// reads nothing more) for at most a heartbeat interval; a client that
    /// has not read by then is closed as a slow consumer. The awaiting path
    /// is boxed: it is rare, and an inline future would make every idle
    /// connection bigger.
    async fn push(&self, d: Delivery) {
        if let Err(mpsc::error::TrySendError::Full(d)) = self.tx.try_send(d) {
            let wait = self.state.config.heartbeat;
            if Box::pin(tokio::time::timeout(wait, self.tx.send(d)))
                .await
                .is_err()
            {
                tracing::info!(peer = %self.session.peer, ip = %self.ip, queued_bytes = self.tx.queued_bytes(), "client does not read its replies");
                self.overflow.cancel();
            }
        }
    }

    async fn send(&self, msg: &ServerMessage<'_>) {
        self.push(frame(msg)).await;
    }

    async fn send_error(&self, e: &ProtocolError) {
        self.state.metrics.error(e.code.as_str());
        self.push(Delivery::Frame {
            kind: "error",
            frame: error_json(e).into(),
        })
        .await;
    }

    async fn close(&self, code: u16, reason: &'static str) {
        self.push(Delivery::Close { code, reason }).await;
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) -> End {
        let idle = self.state.config.heartbeat * 3;
        let mut drain = self.state.drain_watch();
        let mut told_drain = false;
        loop {
            let inflight = match self.inflight.get_mut() {
                Ok(Some(f)) => f.len(),
                _ => 0,
            };
            let next = tokio::select! {
                next = tokio::time::timeout(idle, stream.next()), if inflight < MAX_INFLIGHT => next,
                done = async {
                    match self.inflight.get_mut() {
                        Ok(Some(f)) => f.next().await,
                        _ => None,
                    }
                }, if inflight > 0 => {
                    if let Some(outcome) = done {
                        self.complete_chat(outcome).await;
                    }
                    continue;
                }
                changed = drain.changed(), if !told_drain => {
                    if changed.is_ok() && *drain.borrow() {
                        told_drain = true;
                        let ms = self.state.config.reconnect_after.as_millis() as u64;
                        self.send(&ServerMessage::Draining { reconnect_after_ms: ms }).await;
                    }
                    continue;
                }
            };
            let msg = match next {
                Err(_) => {
                    tracing::debug!(peer = %self.session.peer, "idle connection closed");
                    self.close(CLOSE_GOING_AWAY, "idle").await;
                    return End::CloseQueued;
                }
                Ok(None) => return End::Dropped,
                Ok(Some(Err(e))) => {
                    // tungstenite refuses frames over its own cap before we see them.
                    if matches!(e.to_string(), s if s.contains("Space limit") || s.contains("too long") || s.contains("capacity"))
                    {
                        let err = ProtocolError::new(
                            ErrorCode::TooLarge,
                            "frame is over the size limit",
                            None,
                        );
                        self.send_error(&err).await;
                        self.close(CLOSE_TOO_BIG, "frame too large").await;
                        return End::CloseQueued;
                    }
                    return End::Dropped;
                }
                Ok(Some(Ok(m))) => m,
            };
            if matches!(msg, Message::Close(_)) {
                return End::Dropped;
            }
            match self.limiter.admit(&self.state, self.ip) {
                Admit::Pass => {}
                Admit::Limited => {
                    self.send_error(&rate_limited()).await;
                    continue;
                }
                Admit::Abuse => {
                    self.send_error(&rate_limited()).await;
                    tracing::info!(peer = %self.session.peer, ip = %self.ip, "closed for repeated abuse");
                    self.close(CLOSE_POLICY, "rate limit").await;
                    return End::CloseQueued;
                }
            }
            let text = match msg {
                Message::Text(t) => t,
                Message::Binary(b) => {
                    if b.len() > self.state.config.max_frame_bytes {
                        return self.too_large().await;
                    }
                    let e = ProtocolError::new(ErrorCode::BadRequest, "frames must be text", None);
                    self.send_error(&e).await;
                    continue;
                }
                Message::Close(_) => return End::Dropped,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if text.len() > self.state.config.max_frame_bytes {
                return self.too_large().await;
            }
            self.session.last_activity = unix_now();
            let message = match decode(&text) {
                Ok(Decoded::Message(m)) => m,
                Ok(Decoded::Ignore) => continue,
                Err(e) => {
                    self.state.metrics.message_in("invalid");
                    tracing::debug!(peer = %self.session.peer, code = e.code.as_str(), error = %e.message, "bad message");
                    self.send_error(&e).await;
                    continue;
                }
            };
            let kind = message_kind(&message);
            self.state.metrics.message_in(kind);
            // Boxed: the handlers' state is large and only needed while one runs,
            // so idle connections stay small.
            match Box::pin(self.handle(message)).await {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(e) => {
                    let e = with_ref(e, kind);
                    if e.code == ErrorCode::Unauthorized {
                        self.send_error(&e).await;
                        self.close(CLOSE_POLICY, "unauthorized").await;
                        return End::CloseQueued;
                    }
                    self.send_error(&e).await;
                }
            }
        }
    }

    async fn too_large(&self) -> End {
        let e = ProtocolError::new(ErrorCode::TooLarge, "frame is over the size limit", None);
        self.send_error(&e).await;
        self.close(CLOSE_TOO_BIG, "frame too large").await;
        End::CloseQueued
    }

    fn check_claims(&self, room: &str) -> Result<(), ProtocolError> {
        match &self.claims {
            Some(c) if !c.allows_room(room) => Err(ProtocolError::new(
                ErrorCode::Unauthorized,
                "the token does not admit to this room",
                Some(room.to_owned()),
            )),
            _ => Ok(()),
        }
    }

    fn membership(&self, room: &str, reference: &str) -> Result<&RoomMembership, ProtocolError> {
        self.session.rooms.get(room).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotInRoom,
                format!("not in room `{room}`; join it first"),
                Some(reference.to_owned()),
            )
        })
    }

    async fn handle(&mut self, message: ClientMessage) -> Result<Option<End>, ProtocolError> {
        match message {
            ClientMessage::Hello { .. } => Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "hello was already received",
                None,
            )),
            ClientMessage::Ping => {
                self.send(&ServerMessage::Pong).await;
                Ok(None)
            }
            ClientMessage::Join {
                room,
                name,
                last_seq,
            } => self.join(room, name, last_seq).await.map(|_| None),
            ClientMessage::Leave { room } => self.leave(&room).await.map(|_| None),
            ClientMessage::Signal { room, to, data } => {
                self.membership(&room, "signal")?;
                if to == self.session.peer
                    || !self
                        .state
                        .presence
                        .is_member(&room, &to)
                        .await
                        .map_err(|e| internal(&e, "signal"))?
                {
                    return Err(ProtocolError::new(
                        ErrorCode::UnknownPeer,
                        format!("peer `{to}` is not in room `{room}`"),
                        Some(to),
                    ));
                }
                let msg = ServerMessage::Signal {
                    room: &room,
                    from: &self.session.peer,
                    data: &data,
                };
                self.state
                    .bus
                    .send_to_peer(&to, frame(&msg))
                    .await
                    .map_err(|e| internal(&e, "signal"))?;
                Ok(None)
            }
            ClientMessage::Chat { room, id, body } => self.chat(room, id, body).await.map(|_| None),
            ClientMessage::History { room, after, limit } => {
                self.check_claims(&room)?;
                let limit = limit.unwrap_or(100).clamp(1, 1000) as usize;
                let page = history_page(&self.state, &room, after, limit)
                    .await
                    .map_err(|e| internal(&e, "history"))?;
                self.send(&ServerMessage::History {
                    room: &room,
                    messages: &page.messages,
                })
                .await;
                Ok(None)
            }
            ClientMessage::Stats { room, data } => {
                self.membership(&room, "stats")?;
                let (max_bitrate_kbps, audio_only) = adapt_for(&data);
                self.send(&ServerMessage::Adapt {
                    room: &room,
                    max_bitrate_kbps,
                    audio_only,
                })
                .await;
                Ok(None)
            }
            ClientMessage::Bye => {
                self.end_session().await;
                self.close(CLOSE_NORMAL, "bye").await;
                Ok(Some(End::Bye))
            }
        }
    }

    async fn join(
        &mut self,
        room: String,
        name: Option<String>,
        last_seq: Option<u64>,
    ) -> Result<(), ProtocolError> {
        self.check_claims(&room)?;
        let state = self.state.clone();
        let peer = self.session.peer.clone();
        let room_arc: Arc<str> = Arc::from(room.as_str());
        if self.session.rooms.contains_key(&room) {
            // Already a member: send the room's state again (a client re-syncing).
            let others = self.others(&room).await?;
            let (last, replay, cursor) = self.catch_up(&room, last_seq, "join").await?;
            self.send_joined(room_arc, &others, last, replay, cursor)
                .await;
            return Ok(());
        }
        if self.session.rooms.len() >= state.config.max_rooms_per_connection {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!(
                    "already in {} rooms, the limit per connection",
                    state.config.max_rooms_per_connection
                ),
                Some(room),
            ));
        }
        let record = state
            .store
            .ensure_room(RoomRecord {
                id: room.clone(),
                name: room.clone(),
                max_peers: state.config.max_peers_per_room,
                created_at: now_rfc3339(),
            })
            .await
            .map_err(|e| internal(&e, "join"))?;
        let display = self
            .claims
            .as_ref()
            .and_then(|c| c.name.clone())
            .or(name)
            .unwrap_or_else(|| "Guest".to_owned());
        let outcome = state
            .presence
            .join(&room, &peer, &display, record.max_peers)
            .await
            .map_err(|e| internal(&e, "join"))?;
        let (others, new) = match outcome {
            crate::presence::JoinOutcome::Full => {
                return Err(ProtocolError::new(
                    ErrorCode::RoomFull,
                    format!("room `{room}` has its {} peers", record.max_peers),
                    Some(room),
                ));
            }
            crate::presence::JoinOutcome::Joined { others, new } => (others, new),
        };
        // Hold the room's chat in the writer until the replay is queued.
        let _ = self
            .tx
            .send(Delivery::Joining {
                room: room_arc.clone(),
            })
            .await;
        state
            .bus
            .subscribe(&room, &peer)
            .await
            .map_err(|e| internal(&e, "join"))?;
        if new {
            let msg = ServerMessage::PeerJoined {
                room: &room,
                peer: &peer,
                name: &display,
            };
            state
                .bus
                .publish(&room, frame(&msg), Some(&peer))
                .await
                .map_err(|e| internal(&e, "join"))?;
        }
        let (last, replay, cursor) = self.catch_up(&room, last_seq, "join").await?;
        self.session.rooms.insert(
            room.clone(),
            RoomMembership {
                name: display,
                delivered_seq: cursor,
            },
        );
        if let Err(e) = state.sessions.save(&self.session).await {
            tracing::warn!(error = %e, "session save failed");
        }
        self.send_joined(room_arc, &others, last, replay, cursor)
            .await;
        Ok(())
    }

    async fn others(&self, room: &str) -> Result<Vec<PeerInfo>, ProtocolError> {
        Ok(self
            .state
            .presence
            .members(room)
            .await
            .map_err(|e| internal(&e, "join"))?
            .into_iter()
            .filter(|p| p.peer != self.session.peer)
            .collect())
    }

    /// The room's last `seq` (a store failure is reported as during
    /// `context`), then [`Self::replay`] of the chat after `after`.
    async fn catch_up(
        &self,
        room: &str,
        after: Option<u64>,
        context: &'static str,
    ) -> Result<(u64, Vec<(u64, Utf8Bytes)>, u64), ProtocolError> {
        let last = self
            .state
            .store
            .last_seq(room)
            .await
            .map_err(|e| internal(&e, context))?;
        let (replay, cursor) = self.replay(room, after, last).await?;
        Ok((last, replay, cursor))
    }

    /// Chat after `after` (when given) up to the replay limit, and the highest
    /// `seq` the client will then have.
    async fn replay(
        &self,
        room: &str,
        after: Option<u64>,
        last: u64,
    ) -> Result<(Vec<(u64, Utf8Bytes)>, u64), ProtocolError> {
        let Some(after) = after else {
            return Ok((Vec::new(), last));
        };
        // Bounded by bytes too; whatever is left the client reads with `history`.
        let messages = history_page(&self.state, room, after, self.state.config.max_replay)
            .await
            .map_err(|e| internal(&e, "replay"))?
            .messages;
        let cursor = messages.last().map_or(last, |m| m.seq.max(last));
        let frames = messages
            .iter()
            .map(|m| (m.seq, Utf8Bytes::from(ServerMessage::Chat(m).to_json())))
            .collect();
        Ok((frames, cursor))
    }

    async fn send_joined(
        &self,
        room: Arc<str>,
        others: &[PeerInfo],
        last: u64,
        replay: Vec<(u64, Utf8Bytes)>,
        cursor: u64,
    ) {
        let joined = ServerMessage::Joined {
            room: &room,
            peers: others,
            last_seq: last,
        };
        let frame = Utf8Bytes::from(joined.to_json());
        let _ = self
            .tx
            .send(Delivery::Joined(Box::new(JoinedRoom {
                room,
                frame,
                replay,
                cursor,
            })))
            .await;
    }

    /// Rooms of a resumed session: re-subscribe, then `joined` plus the chat
    /// the client missed while away: after the saved position, or after the
    /// client's own last `seq` for the room when that is further (capped at
    /// the room's last `seq`; rooms the session is not in are ignored).
    async fn restore_rooms(&mut self, client_seqs: &BTreeMap<String, u64>) {
        // The token presented now decides, not the one the rooms were joined with.
        let refused: Vec<String> = self
            .session
            .rooms
            .keys()
            .filter(|room| self.check_claims(room).is_err())
            .cloned()
            .collect();
        for room in refused {
            self.leave_refused_room(&room).await;
        }
        let rooms: Vec<(String, u64, String)> = self
            .session
            .rooms
            .iter()
            .map(|(r, m)| (r.clone(), m.delivered_seq, m.name.clone()))
            .collect();
        for (room, delivered, name) in rooms {
            let room_arc: Arc<str> = Arc::from(room.as_str());
            let _ = self
                .tx
                .send(Delivery::Joining {
                    room: room_arc.clone(),
                })
                .await;
            let result = async {
                let peer = &self.session.peer;
                // The place is kept; after a restart (or expired presence) it is taken again.
                let outcome = self
                    .state
                    .presence
                    .join(&room, peer, &name, u32::MAX)
                    .await
                    .map_err(|e| internal(&e, "resume"))?;
                // Others saw `peer-away` (or, after a restart, nothing):
                // `peer-joined` tells them it is back either way.
                if matches!(outcome, crate::presence::JoinOutcome::Joined { .. }) {
                    let msg = ServerMessage::PeerJoined {
                        room: &room,
                        peer,
                        name: &name,
                    };
                    self.state
                        .bus
                        .publish(&room, frame(&msg), Some(peer))
                        .await
                        .map_err(|e| internal(&e, "resume"))?;
                }
                self.state
                    .bus
                    .subscribe(&room, peer)
                    .await
                    .map_err(|e| internal(&e, "resume"))?;
                let others = self.others(&room).await?;
                let last = self
                    .state
                    .store
                    .last_seq(&room)
                    .await
                    .map_err(|e| internal(&e, "resume"))?;
                let after = client_seqs
                    .get(&room)
                    .map_or(delivered, |&seen| delivered.max(seen.min(last)));
                let (replay, cursor) = self.replay(&room, Some(after), last).await?;
                self.send_joined(room_arc, &others, last, replay, cursor)
                    .await;
                Ok::<_, ProtocolError>(())
            }
            .await;
            if let Err(e) = result {
                self.send_error(&with_ref(e, &room)).await;
            }
        }
    }

    /// A resumed session's room that the presented token does not admit:
    /// leave it (others see `peer-left`) and tell the client why.
    async fn leave_refused_room(&mut self, room: &str) {
        let state = self.state.clone();
        let peer = self.session.peer.clone();
        tracing::info!(%peer, %room, ip = %self.ip, "resumed session left a room its token does not admit");
        if let Err(e) = state.presence.leave(room, &peer).await {
            tracing::warn!(error = %e, "presence leave failed");
        }
        if let Err(e) = state.bus.unsubscribe(room, &peer).await {
            tracing::warn!(error = %e, "bus unsubscribe failed");
        }
        let msg = ServerMessage::PeerLeft { room, peer: &peer };
        if let Err(e) = state.bus.publish(room, frame(&msg), Some(&peer)).await {
            tracing::warn!(error = %e, "publish peer-left failed");
        }
        self.session.rooms.remove(room);
        if let Err(e) = state.sessions.save(&self.session).await {
            tracing::warn!(error = %e, "session save failed");
        }
        let e = ProtocolError::new(
            ErrorCode::Unauthorized,
            format!("the token does not admit to room `{room}`; the session left it"),
            Some(room.to_owned()),
        );
        self.send_error(&e).await;
    }

    async fn leave(&mut self, room: &str) -> Result<(), ProtocolError> {
        self.membership(room, "leave")?;
        let state = self.state.clone();
        let peer = self.session.peer.clone();
        state
            .presence
            .leave(room, &peer)
            .await
            .map_err(|e| internal(&e, "leave"))?;
        state
            .bus
            .unsubscribe(room, &peer)
            .await
            .map_err(|e| internal(&e, "leave"))?;
        let _ = self
            .tx
            .send(Delivery::Left {
                room: Arc::from(room),
            })
            .await;
        let msg = ServerMessage::PeerLeft { room, peer: &peer };
        state
            .bus
            .publish(room, frame(&msg), Some(&peer))
            .await
            .map_err(|e| internal(&e, "leave"))?;
        self.session.rooms.remove(room);
        if let Err(e) = state.sessions.save(&self.session).await {
            tracing::warn!(error = %e, "session save failed");
        }
        self.send(&ServerMessage::Left { room }).await;
        Ok(())
    }

    async fn chat(&mut self, room: String, id: String, body: String) -> Result<(), ProtocolError> {
        let name = self.membership(&room, &id)?.name.clone();
        if let Err(e) = check_chat_body(&body, self.state.config.max_chat_bytes) {
            return Err(ProtocolError::new(ErrorCode::BadRequest, e, Some(id)));
        }
        let chat = NewChat {
            room: room.clone(),
            peer: self.session.peer.clone(),
            client_id: id.clone(),
            name,
            body,
            ts: now_rfc3339(),
        };
        let store = self.state.store.clone();
        let started = Instant::now();
        let pending: PendingChat = Box::pin(async move {
            let result = store.append_chat(chat).await;
            ChatOutcome {
                room,
                id,
                started,
                result,
            }
        });
        let slot = self.inflight.get_mut().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(FuturesOrdered::new)
            .push_back(pending);
        Ok(())
    }

    /// Acks a durable chat message and broadcasts it, or says why it is not.
    async fn complete_chat(&self, outcome: ChatOutcome) {
        let ChatOutcome {
            room,
            id,
            started,
            result,
        } = outcome;
        let appended = match result {
            Ok(a) => a,
            Err(e) => {
                let e = with_ref(internal(&e, "storing the message"), &id);
                self.send_error(&e).await;
                return;
            }
        };
        self.state
            .metrics
            .ack_latency
            .observe(started.elapsed().as_secs_f64());
        self.send(&ServerMessage::Ack {
            id: &id,
            seq: appended.message.seq,
        })
        .await;
        if !appended.duplicate {
            // Durable already; a failed publish is repaired by the receivers' gap fill.
            if let Err(e) = self
                .state
                .bus
                .publish(&room, chat_delivery(&appended.message), None)
                .await
            {
                tracing::warn!(error = %e, %room, "publish failed");
            }
        }
    }

    /// `bye`: leave every room now and forget the session.
    async fn end_session(&mut self) {
        let state = self.state.clone();
        end_session(&state, &self.session).await;
        self.session.rooms.clear();
    }
}

/// Ends a session: others see `peer-left`, its queue and state are dropped.
pub async fn end_session(state: &AppState, session: &SessionState) {
    let peer = &session.peer;
    for room in session.rooms.keys() {
        if let Err(e) = state.presence.leave(room, peer).await {
            tracing::warn!(error = %e, "presence leave failed");
        }
        let _ = state.bus.unsubscribe(room, peer).await;
        let msg = ServerMessage::PeerLeft { room, peer };
        if let Err(e) = state.bus.publish(room, frame(&msg), Some(peer)).await {
            tracing::warn!(error = %e, "publish peer-left failed");
        }
    }
    if let Err(e) = state.bus.forget(peer).await {
        tracing::warn!(error = %e, "bus forget failed");
    }
    if let Err(e) = state.sessions.remove(&session.session).await {
        tracing::warn!(error = %e, "session remove failed");
    }
}

#[derive(Default)]
struct Cursor {
    /// Highest `seq` sent; `None` until the room's `joined` went out.
    delivered: Option<u64>,
    pending: BTreeMap<u64, Utf8Bytes>,
    gap_since: Option<Instant>,
}

type Sink = SplitSink<WebSocket, Message>;

struct Writer {
    state: AppState,
    sink: Sink,
    cursors: HashMap<Arc<str>, Cursor>,
}

impl Writer {
    async fn feed(&mut self, kind: &'static str, frame: Utf8Bytes) -> Result<(), axum::Error> {
        self.state.metrics.message_out(kind);
        self.sink.feed(Message::Text(frame)).await
    }

    /// Sends what is contiguous after `delivered`; notes a gap otherwise.
    async fn drain_pending(&mut self, room: &Arc<str>) -> Result<(), axum::Error> {
        let mut ready = Vec::new();
        if let Some(c) = self.cursors.get_mut(room)
            && let Some(mut d) = c.delivered
        {
            while let Some((&seq, _)) = c.pending.first_key_value() {
                if seq <= d {
                    c.pending.pop_first();
                } else if seq == d + 1 {
                    if let Some((_, f)) = c.pending.pop_first() {
                        ready.push(f);
                    }
                    d = seq;
                } else {
                    break;
                }
            }
            c.delivered = Some(d);
            c.gap_since = if c.pending.is_empty() {
                None
            } else {
                c.gap_since.or(Some(Instant::now()))
            };
        }
        for f in ready {
            self.feed("chat", f).await?;
        }
        Ok(())
    }

    /// Returns false when the connection must end.
    async fn handle(&mut self, d: Delivery) -> Result<bool, axum::Error> {
        match d {
            Delivery::Frame { kind, frame } => self.feed(kind, frame).await?,
            Delivery::Chat { room, seq, frame } => {
                let Some(c) = self.cursors.get_mut(&room) else {
                    return Ok(true);
                };
                match c.delivered {
                    Some(d) if seq <= d => {}
                    Some(d) if seq == d + 1 && c.pending.is_empty() => {
                        c.delivered = Some(seq);
                        self.feed("chat", frame).await?;
                    }
                    _ => {
                        c.pending.insert(seq, frame);
                        let fill_now = c.pending.len() > MAX_PENDING;
                        self.drain_pending(&room).await?;
                        if fill_now {
                            Box::pin(self.fill_gap(&room)).await?;
                        }
                    }
                }
            }
            Delivery::Joining { room } => {
                self.cursors.entry(room).or_default();
            }
            Delivery::Joined(joined) => {
                let JoinedRoom {
                    room,
                    frame,
                    replay,
                    cursor,
                } = *joined;
                self.feed("joined", frame).await?;
                for (_, f) in replay {
                    self.feed("chat", f).await?;
                }
                let c = self.cursors.entry(room.clone()).or_default();
                c.delivered = Some(c.delivered.unwrap_or(0).max(cursor));
                self.drain_pending(&room).await?;
            }
            Delivery::Left { room } => {
                self.cursors.remove(&room);
            }
            Delivery::Close { code, reason } => {
                self.sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads a room's missing `seq`s from the store; if they cannot be had,
    /// moves past the gap so the room does not stall (the client can ask `history`).
    async fn fill_gap(&mut self, room: &Arc<str>) -> Result<(), axum::Error> {
        let Some(c) = self.cursors.get(room) else {
            return Ok(());
        };
        let (Some(delivered), Some(&first)) = (c.delivered, c.pending.keys().next()) else {
            return Ok(());
        };
        let want = (first - delivered - 1).min(MAX_PENDING as u64) as usize;
        self.state.metrics.gap_fills.inc();
        match self.state.store.history(room, delivered, want).await {
            Ok(messages) => {
                let mut d = delivered;
                for m in messages {
                    if m.seq == d + 1 {
                        d = m.seq;
                        self.feed("chat", Utf8Bytes::from(ServerMessage::Chat(&m).to_json()))
                            .await?;
                    }
                }
                if let Some(c) = self.cursors.get_mut(room) {
                    c.delivered = Some(d);
                }
            }
            Err(e) => tracing::warn!(error = %e, room = %room, "gap fill failed"),
        }
        // Whatever is still missing is skipped rather than waited for forever.
        if let Some(c) = self.cursors.get_mut(room)
            && let (Some(d), Some(&first)) = (c.delivered, c.pending.keys().next())
            && first > d + 1
        {
            tracing::warn!(room = %room, from = d + 1, to = first - 1, "chat gap skipped");
            c.delivered = Some(first - 1);
        }
        self.drain_pending(room).await
    }

    fn next_gap_deadline(&self) -> Option<tokio::time::Instant> {
        self.cursors
            .values()
            .filter_map(|c| c.gap_since)
            .min()
            .map(|t| tokio::time::Instant::from_std(t + GAP_WAIT))
    }

    async fn fill_due_gaps(&mut self) -> Result<(), axum::Error> {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .cursors
            .iter()
            .filter(|(_, c)| c.gap_since.is_some_and(|t| t + GAP_WAIT <= now))
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            Box::pin(self.fill_gap(&room)).await?;
        }
        Ok(())
    }
}

/// The writer task; returns the highest chat `seq` sent per room.
async fn write_loop(
    state: AppState,
    sink: Sink,
    mut rx: OutboxReceiver,
    stop: CancellationToken,
) -> HashMap<Arc<str>, u64> {
    let mut ping = tokio::time::interval(state.config.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut w = Writer {
        state,
        sink,
        cursors: HashMap::new(),
    };
    let result: Result<(), axum::Error> = async {
        loop {
            let gap = w.next_gap_deadline();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                d = rx.recv() => {
                    let Some(d) = d else { break };
                    if !w.handle(d).await? {
                        return Ok(());
                    }
                    // Batch what is already queued into one flush.
                    let mut more = 0;
                    while more < 64 {
                        match rx.try_recv() {
                            Some(d) => {
                                if !w.handle(d).await? {
                                    return Ok(());
                                }
                                more += 1;
                            }
                            None => break,
                        }
                    }
                    w.sink.flush().await?;
                }
                _ = ping.tick() => {
                    w.sink.send(Message::Ping(Default::default())).await?;
                }
                _ = async { tokio::time::sleep_until(gap.unwrap_or_else(tokio::time::Instant::now)).await }, if gap.is_some() => {
                    Box::pin(w.fill_due_gaps()).await?;
                    w.sink.flush().await?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "socket write ended");
    }
    stop.cancel();
    w.cursors
        .into_iter()
        .filter_map(|(room, c)| c.delivered.map(|d| (room, d)))
        .collect()
}
