//! A connection's chat on its way to durability: several commits in flight
//! at once (so a connection's throughput is not one message per fsync),
//! completed in the order the client sent them, so acks go out in order.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;

use crate::chat::{ChatService, Committed};
use crate::error::SignalingError;
use crate::store::NewChat;

/// Chat messages of one connection waiting for durability at once; the
/// reader pauses beyond that.
pub(super) const MAX_INFLIGHT: usize = 256;

/// A commit that finished.
pub(super) struct ChatOutcome {
    /// The client's id of the message.
    pub(super) id: String,
    pub(super) started: Instant,
    pub(super) result: Result<Committed, SignalingError>,
}

type PendingChat = Pin<Box<dyn Future<Output = ChatOutcome> + Send>>;

/// The commits in flight. Created on the first chat so idle connections do
/// not pay for it.
#[derive(Default)]
pub(super) struct ChatPipeline {
    /// The mutex only makes the connection `Sync`; it is reached through
    /// `get_mut`, never locked.
    inflight: std::sync::Mutex<Option<FuturesOrdered<PendingChat>>>,
}

impl ChatPipeline {
    fn queue(&mut self) -> &mut Option<FuturesOrdered<PendingChat>> {
        self.inflight.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits in flight.
    pub(super) fn len(&mut self) -> usize {
        self.queue().as_ref().map_or(0, FuturesOrdered::len)
    }

    /// Whether the reader may take another message.
    pub(super) fn has_room(&mut self) -> bool {
        self.len() < MAX_INFLIGHT
    }

    /// Starts committing `chat` through `service`.
    pub(super) fn start(&mut self, service: &ChatService, chat: NewChat) {
        let id = chat.client_id.clone();
        let commit = service.commit(chat);
        let started = Instant::now();
        let pending: PendingChat = Box::pin(async move {
            ChatOutcome {
                id,
                started,
                result: commit.await,
            }
        });
        self.queue()
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(pending);
    }

    /// The oldest commit, once it finished; `None` when none is in flight.
    pub(super) async fn next(&mut self) -> Option<ChatOutcome> {
        match self.queue() {
            Some(queue) => queue.next().await,
            None => None,
        }
    }
}
