//! Closing a socket without losing what was sent: a close frame, then the
//! client's reply (or a timeout) before the socket goes.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::StreamExt;

/// Time the client has to answer our close frame before the socket goes.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Close codes.
pub(super) const CLOSE_NORMAL: u16 = 1000;
pub(super) const CLOSE_GOING_AWAY: u16 = 1001;
pub(super) const CLOSE_POLICY: u16 = 1008;
pub(super) const CLOSE_TOO_BIG: u16 = 1009;
/// Try again later: resume after a moment (the store could not be read).
pub(super) const CLOSE_TRY_AGAIN: u16 = 1013;

/// Sends a close frame and waits for the client's, reading (and dropping)
/// what it still sends: closing a socket with unread input resets it, and
/// the client would lose what we sent before.
pub(super) async fn close_now(socket: &mut WebSocket, code: u16, reason: &'static str) {
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
pub(super) async fn await_close_reply<S>(stream: &mut S)
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
