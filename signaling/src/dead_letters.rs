//! The retry queue's dead letters, as the admin endpoints see them.
//!
//! Single-machine mode has no retry queue (the embedded store commits
//! synchronously), so [`NoDeadLetters`] is always empty; the Redis Streams
//! queue implements the same trait.

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: String,
    pub payload: serde_json::Value,
}

#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Puts the entry back on the queue; false when there is no such entry.
    async fn retry(&self, id: &str) -> Result<bool>;
    async fn count(&self) -> Result<u64>;
}

pub struct NoDeadLetters;

#[async_trait]
impl DeadLetters for NoDeadLetters {
    async fn list(&self, _limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(Vec::new())
    }

    async fn retry(&self, _id: &str) -> Result<bool> {
        Ok(false)
    }

    async fn count(&self) -> Result<u64> {
        Ok(0)
    }
}
