//! Room commands of a connection: join (with the replay of missed chat),
//! leave, the rooms of a resumed session, and the end of a session.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::reader::Conn;
use super::replies::{frame, internal, with_ref};
use crate::bus::{Delivery, JoinedRoom};
use crate::history::history_page;
use crate::protocol::{ErrorCode, PeerInfo, ProtocolError, ServerMessage};
use crate::sessions::{RoomMembership, SessionState};
use crate::state::AppState;
use crate::store::RoomRecord;
use crate::time::now_rfc3339;

impl Conn {
    /// Whether the connection's token admits to `room` (always, with tokens off).
    pub(super) fn check_claims(&self, room: &str) -> Result<(), ProtocolError> {
        match &self.claims {
            Some(c) if !c.allows_room(room) => Err(ProtocolError::new(
                ErrorCode::Unauthorized,
                "the token does not admit to this room",
                Some(room.to_owned()),
            )),
            _ => Ok(()),
        }
    }

    /// The session's membership of `room`, or `not_in_room` naming `reference`.
    pub(super) fn membership(
        &self,
        room: &str,
        reference: &str,
    ) -> Result<&RoomMembership, ProtocolError> {
        self.session.rooms.get(room).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::NotInRoom,
                format!("not in room `{room}`; join it first"),
                Some(reference.to_owned()),
            )
        })
    }

    pub(super) async fn join(
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
    pub(super) async fn restore_rooms(&mut self, client_seqs: &BTreeMap<String, u64>) {
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

    pub(super) async fn leave(&mut self, room: &str) -> Result<(), ProtocolError> {
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

    /// `bye`: leave every room now and forget the session.
    pub(super) async fn end_session(&mut self) {
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
