//! The writer task: takes deliveries from the connection's outbox and
//! writes them to the socket, batching what is queued into one flush;
//! keeps each room's chat in order through [`RoomOrder`] and reads the
//! gaps it reports from the store; sends pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio_util::sync::CancellationToken;

use super::closing::CLOSE_TRY_AGAIN;
use super::room_order::RoomOrder;
use crate::bus::{Delivery, JoinedRoom, OutboxReceiver};
use crate::protocol::ServerMessage;
use crate::state::AppState;

/// Deliveries written before one flush, at most.
const BATCH: usize = 64;

type Sink = SplitSink<WebSocket, Message>;

struct Writer {
    state: AppState,
    sink: Sink,
    order: RoomOrder<Utf8Bytes>,
}

impl Writer {
    async fn feed(&mut self, kind: &'static str, frame: Utf8Bytes) -> Result<(), axum::Error> {
        self.state.metrics.message_out(kind);
        self.sink.feed(Message::Text(frame)).await
    }

    async fn feed_chat(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), axum::Error> {
        for frame in frames {
            self.feed("chat", frame).await?;
        }
        Ok(())
    }

    /// Returns false when the connection must end.
    async fn handle(&mut self, d: Delivery) -> Result<bool, axum::Error> {
        match d {
            Delivery::Frame { kind, frame } => self.feed(kind, frame).await?,
            Delivery::Chat { room, seq, frame } => {
                let offered = self.order.offer(&room, seq, frame, Instant::now());
                self.feed_chat(offered.send).await?;
                if offered.resume {
                    // The gap cannot be read and the chat behind it is at
                    // its bound: the client resumes, and the replay from
                    // its last seq fills the gap once the store answers.
                    self.state.metrics.gap_resumes.inc();
                    tracing::warn!(%room, "chat gap unreadable while the store is down; closing for the client to resume");
                    self.sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CLOSE_TRY_AGAIN,
                            reason: "store unavailable; resume".into(),
                        })))
                        .await?;
                    return Ok(false);
                }
                if offered.fill_now {
                    Box::pin(self.fill_gap(&room)).await?;
                }
            }
            Delivery::Joining { room } => self.order.joining(room),
            Delivery::Joined(joined) => {
                let JoinedRoom {
                    room,
                    frame,
                    replay,
                    cursor,
                } = *joined;
                self.feed("joined", frame).await?;
                self.feed_chat(replay.into_iter().map(|(_, f)| f).collect())
                    .await?;
                let held = self.order.joined(room, cursor, Instant::now());
                self.feed_chat(held).await?;
            }
            Delivery::Left { room } => self.order.left(&room),
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

    /// Reads a room's missing `seq`s from the store and sends what follows;
    /// what a working store does not have is skipped (the client can ask
    /// `history`); a failed read is tried again later.
    async fn fill_gap(&mut self, room: &str) -> Result<(), axum::Error> {
        let Some(read) = self.order.gap(room) else {
            return Ok(());
        };
        self.state.metrics.gap_fills.inc();
        let fetched = match self.state.store.history(room, read.after, read.want).await {
            Ok(messages) => messages
                .iter()
                .map(|m| (m.seq, Utf8Bytes::from(ServerMessage::Chat(m).to_json())))
                .collect::<Vec<_>>(),
            Err(e) => {
                self.state.metrics.gap_read_failures.inc();
                tracing::warn!(error = %e, %room, "gap fill failed; trying again");
                self.order.read_failed(room, Instant::now());
                return Ok(());
            }
        };
        let filled = self.order.fill(room, fetched, Instant::now());
        if let Some((from, to)) = filled.skipped {
            tracing::warn!(%room, from, to, "chat gap skipped");
        }
        self.feed_chat(filled.send).await
    }

    async fn fill_due_gaps(&mut self) -> Result<(), axum::Error> {
        for room in self.order.due_gaps(Instant::now()) {
            Box::pin(self.fill_gap(&room)).await?;
        }
        Ok(())
    }
}

/// The writer task; returns the highest chat `seq` sent per room.
pub(super) async fn write_loop(
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
        order: RoomOrder::default(),
    };
    let result: Result<(), axum::Error> = async {
        loop {
            let gap = w
                .order
                .next_gap_deadline()
                .map(tokio::time::Instant::from_std);
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
                    while more < BATCH {
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
    w.order.into_delivered()
}
