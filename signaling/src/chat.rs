//! Chat's one way in, for WebSocket `chat` and `POST /api/messages` alike:
//! the message is made durable first (the store gives it its `seq`, and a
//! resent client id gets the first copy back), and only then published to
//! the room's connections. A lost publish is repaired by the receivers' gap
//! fill from the store; a lost write is never published.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use crate::bus::{Bus, Delivery};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::protocol::{ChatMessage, ServerMessage};
use crate::store::{Appended, NewChat, Store};

/// Commits and publishes chat. Cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
}

/// A durable message not yet published: whoever committed it answers its
/// sender first (the WebSocket's `ack`, the REST reply), then publishes.
#[must_use = "a committed message reaches the room only when published"]
pub struct Committed {
    pub appended: Appended,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
}

impl ChatService {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            bus,
            metrics,
        }
    }

    /// Makes `chat` durable. The future owns what it needs, so a connection
    /// can keep several in flight.
    pub fn commit(
        &self,
        chat: NewChat,
    ) -> impl std::future::Future<Output = Result<Committed>> + Send + 'static {
        let store = self.store.clone();
        let bus = self.bus.clone();
        let metrics = self.metrics.clone();
        async move {
            let appended = store.append_chat(chat).await?;
            if let Some(timing) = appended.timing {
                metrics.chat_stage("batch_wait", timing.batch_wait);
                metrics.chat_stage("store_round_trip", timing.store_round_trip);
            }
            Ok(Committed {
                appended,
                bus,
                metrics,
            })
        }
    }
}

impl Committed {
    /// Sends the message to every connection in its room (the sender's
    /// too). A resend of a message already stored is not sent again.
    pub async fn publish(self) {
        if self.appended.duplicate {
            return;
        }
        let room = self.appended.message.room.clone();
        let started = std::time::Instant::now();
        let published = self
            .bus
            .publish(&room, chat_delivery(&self.appended.message), None)
            .await;
        self.metrics.chat_stage("publish", started.elapsed());
        if let Err(e) = published {
            // Durable already; the receivers' gap fill repairs this.
            tracing::warn!(error = %e, %room, seq = self.appended.message.seq, "publish failed");
        }
    }
}

/// A chat message as its connections' writers take it: with its room and
/// `seq`, so that they keep each room in order.
pub fn chat_delivery(message: &ChatMessage) -> Delivery {
    Delivery::Chat {
        room: Arc::from(message.room.as_str()),
        seq: message.seq,
        frame: Utf8Bytes::from(ServerMessage::Chat(message).to_json()),
    }
}
