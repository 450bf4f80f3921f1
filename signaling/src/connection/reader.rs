//! The reader: this task reads the client's frames, limits and decodes
//! them, and dispatches each message; replies go through the outbox to the
//! writer. Room commands are in `rooms`, chat in `chat_pipeline`.

use std::net::IpAddr;

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt;
use futures::stream::SplitStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::End;
use super::chat_pipeline::{ChatOutcome, ChatPipeline};
use super::closing::{CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG};
use super::limiter::{Admit, FrameLimiter};
use super::replies::{frame, internal, message_kind, rate_limited, with_ref};
use crate::auth::Claims;
use crate::bus::{Delivery, Outbox};
use crate::history::history_page;
use crate::protocol::{
    ClientMessage, Decoded, ErrorCode, ProtocolError, ServerMessage, adapt_for, check_chat_body,
    decode, error_json,
};
use crate::sessions::SessionState;
use crate::state::AppState;
use crate::store::NewChat;
use crate::time::{now_rfc3339, unix_now};

/// One connection as its reader sees it: the session, the outbox to the
/// writer, the token's claims, the limits and the chat in flight.
pub(super) struct Conn {
    pub(super) state: AppState,
    /// Chat awaiting durability, acked in the order received.
    pub(super) chats: ChatPipeline,
    pub(super) session: SessionState,
    pub(super) tx: Outbox,
    /// Cancelled when the client does not read: the connection closes.
    pub(super) overflow: CancellationToken,
    pub(super) ip: IpAddr,
    pub(super) claims: Option<Claims>,
    pub(super) limiter: FrameLimiter,
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

    pub(super) async fn send(&self, msg: &ServerMessage<'_>) {
        self.push(frame(msg)).await;
    }

    pub(super) async fn send_error(&self, e: &ProtocolError) {
        self.state.metrics.error(e.code.as_str());
        self.push(Delivery::Frame {
            kind: "error",
            frame: error_json(e).into(),
        })
        .await;
    }

    pub(super) async fn close(&self, code: u16, reason: &'static str) {
        self.push(Delivery::Close { code, reason }).await;
    }

    pub(super) async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) -> End {
        let idle = self.state.config.heartbeat * 3;
        let mut drain = self.state.drain_watch();
        let mut told_drain = false;
        loop {
            let inflight = self.chats.len();
            let may_read = self.chats.has_room();
            let next = tokio::select! {
                next = tokio::time::timeout(idle, stream.next()), if may_read => next,
                done = self.chats.next(), if inflight > 0 => {
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

    /// Checks a chat message and starts committing it; [`Self::complete_chat`]
    /// answers it.
    async fn chat(&mut self, room: String, id: String, body: String) -> Result<(), ProtocolError> {
        let name = self.membership(&room, &id)?.name.clone();
        if let Err(e) = check_chat_body(&body, self.state.config.max_chat_bytes) {
            return Err(ProtocolError::new(ErrorCode::BadRequest, e, Some(id)));
        }
        let chat = NewChat {
            room,
            peer: self.session.peer.clone(),
            client_id: id,
            name,
            body,
            ts: now_rfc3339(),
        };
        self.chats.start(&self.state.chat, chat);
        Ok(())
    }

    /// Acks a durable chat message and publishes it, or says why it is not.
    async fn complete_chat(&self, outcome: ChatOutcome) {
        let ChatOutcome {
            id,
            started,
            result,
        } = outcome;
        let committed = match result {
            Ok(c) => c,
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
            seq: committed.appended.message.seq,
        })
        .await;
        committed.publish().await;
    }
}
