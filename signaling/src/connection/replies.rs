//! What the connection sends back: frames for the writer, protocol errors
//! for backend failures, and the names of client messages (metrics, errors).

use axum::extract::ws::Utf8Bytes;

use crate::bus::Delivery;
use crate::error::SignalingError;
use crate::protocol::{ClientMessage, ErrorCode, ProtocolError, ServerMessage};

pub(super) fn frame(msg: &ServerMessage<'_>) -> Delivery {
    Delivery::Frame {
        kind: msg.type_name(),
        frame: Utf8Bytes::from(msg.to_json()),
    }
}

pub(super) fn internal(e: &SignalingError, what: &str) -> ProtocolError {
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

pub(super) fn with_ref(mut e: ProtocolError, reference: &str) -> ProtocolError {
    if e.reference.is_none() {
        e.reference = Some(reference.to_owned());
    }
    e
}

pub(super) fn message_kind(m: &ClientMessage) -> &'static str {
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

pub(super) fn rate_limited() -> ProtocolError {
    ProtocolError::new(ErrorCode::RateLimited, "too many messages; slow down", None)
}
