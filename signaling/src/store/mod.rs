//! Durable rooms and chat history.
//!
//! `append_chat` is the one write on the message path: it checks the
//! idempotency key `(room, peer, client id)`, allocates the room's next `seq`
//! and makes the message durable in one call, and returns only once it is
//! durable — so an ack can never name a message that could be lost, and `seq`
//! has no gaps. The embedded backend is [`EmbeddedStore`] (a chat log
//! checkpointed into redb); a MongoDB backend implements the same trait.

mod chat_log;
mod chat_tail;
mod embedded;
mod log_record;
mod tables;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::protocol::ChatMessage;

/// A room's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub id: String,
    pub name: String,
    pub max_peers: u32,
    pub created_at: String,
}

/// A chat message before it has a `seq`.
#[derive(Debug, Clone)]
pub struct NewChat {
    pub room: String,
    /// The sender: a peer id, or `api` for REST posts.
    pub peer: String,
    /// The client's idempotency id.
    pub client_id: String,
    pub name: String,
    pub body: String,
    pub ts: String,
}

/// The durable message, and whether it had been stored before (a resend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: ChatMessage,
    pub duplicate: bool,
    /// Where a remote store's commit spent its time, when it knows.
    pub timing: Option<CommitTiming>,
}

/// A group-committed append's time: waiting for its batch to start (behind
/// the batch in flight), then the batch's round trips to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTiming {
    pub batch_wait: std::time::Duration,
    pub store_round_trip: std::time::Duration,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a room; `RoomExists` when the id is taken.
    async fn create_room(&self, room: RoomRecord) -> Result<RoomRecord>;
    /// Returns the room, creating it with `default` when it does not exist yet
    /// (rooms joined by name without being created first).
    async fn ensure_room(&self, default: RoomRecord) -> Result<RoomRecord>;
    async fn get_room(&self, id: &str) -> Result<Option<RoomRecord>>;
    /// Idempotent, durable append; see the module docs.
    async fn append_chat(&self, chat: NewChat) -> Result<Appended>;
    /// Messages with `seq > after`, oldest first, at most `limit`.
    async fn history(&self, room: &str, after: u64, limit: usize) -> Result<Vec<ChatMessage>>;
    /// The room's highest `seq` (0 when it has none).
    async fn last_seq(&self, room: &str) -> Result<u64>;
    /// Whether writes can be made durable now (for `/readyz`).
    async fn healthy(&self) -> bool;
    /// Short backend name for logs and metrics.
    fn kind(&self) -> &'static str;
}
