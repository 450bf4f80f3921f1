//! The first exchange: wait for `hello` (rate-limited like every frame),
//! check the room token, then resume the session or create one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};

use super::closing::{CLOSE_POLICY, CLOSE_TOO_BIG, close_now};
use super::limiter::{Admit, FrameLimiter};
use super::replies::{internal, message_kind, rate_limited};
use crate::auth::Claims;
use crate::ids::random_id;
use crate::protocol::{
    ClientMessage, Decoded, ErrorCode, ProtocolError, ServerMessage, decode, error_json,
};
use crate::sessions::{ResumeOutcome, SessionState};
use crate::state::AppState;
use crate::time::unix_now;

/// Time a new connection has to send `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The session a handshake opened: the session, whether it was resumed,
/// the token's claims, and the client's last `seq` per room (on resume).
pub(super) type Opened = (SessionState, bool, Option<Claims>, BTreeMap<String, u64>);

async fn send_now(socket: &mut WebSocket, state: &AppState, err: &ProtocolError) {
    state.metrics.error(err.code.as_str());
    let _ = socket.send(Message::Text(error_json(err).into())).await;
}

/// Waits for `hello`, checks the token, resumes or creates the session.
pub(super) async fn handshake(
    state: &AppState,
    socket: &mut WebSocket,
    limiter: &mut FrameLimiter,
    ip: IpAddr,
    query_token: Option<String>,
    owner: u64,
) -> Option<Opened> {
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
        let claims = match &state.auth {
            None => None,
            Some(verifier) => {
                let token = token.or(query_token.clone()).unwrap_or_default();
                match verifier.verify(&token) {
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
