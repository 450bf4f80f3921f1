//! The admin API's view of the reliable queue's dead-letter stream.

use std::sync::Arc;

use async_trait::async_trait;

use super::queue::ReliableQueue;
use crate::dead_letters::{DeadLetter, DeadLetters};
use crate::error::Result;
use crate::time::rfc3339_millis;

pub struct QueueDeadLetters {
    queue: Arc<ReliableQueue>,
}

impl QueueDeadLetters {
    pub fn new(queue: Arc<ReliableQueue>) -> Self {
        QueueDeadLetters { queue }
    }
}

#[async_trait]
impl DeadLetters for QueueDeadLetters {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let letters = self.queue.dead_letters(limit.min(1000)).await?;
        Ok(letters
            .into_iter()
            .map(|l| DeadLetter {
                payload: serde_json::from_str(&l.payload)
                    .unwrap_or(serde_json::Value::String(l.payload)),
                id: l.id,
                kind: l.kind,
                attempts: l.attempts,
                last_error: l.last_error,
                failed_at: rfc3339_millis(l.failed_at_ms),
            })
            .collect())
    }

    async fn retry(&self, id: &str) -> Result<bool> {
        Ok(self.queue.redrive(id).await?.is_some())
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.queue.depth().await?.dead)
    }
}
