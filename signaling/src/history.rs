//! Pages of a room's chat bounded by bytes as well as by count, for
//! `history`, the replay after `joined` and `GET /api/messages`: one reply
//! never holds more than `--max-reply-bytes` of chat, whatever the bodies.

use crate::error::Result;
use crate::protocol::ChatMessage;
use crate::store::Store;

/// Messages read from the store per call while filling a page.
const READ_CHUNK: usize = 100;

/// Chat after some `seq`, in `seq` order.
#[derive(Debug, Default)]
pub struct HistoryPage {
    pub messages: Vec<ChatMessage>,
    /// Size of the messages as JSON.
    pub bytes: usize,
    /// Whether the page ended at the byte limit with more messages left.
    pub truncated: bool,
}

/// Counts the bytes written through it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `message` as JSON.
pub fn json_size(message: &ChatMessage) -> usize {
    let mut count = ByteCount(0);
    match serde_json::to_writer(&mut count, message) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// Up to `limit` messages of `room` after `after`, stopping before the one
/// that would take the page over `max_bytes` (a page holds at least one).
pub async fn read_page(
    store: &dyn Store,
    room: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<HistoryPage> {
    let mut page = HistoryPage::default();
    let mut cursor = after;
    while page.messages.len() < limit {
        let want = (limit - page.messages.len()).min(READ_CHUNK);
        let chunk = store.history(room, cursor, want).await?;
        let got = chunk.len();
        for message in chunk {
            let size = json_size(&message);
            if !page.messages.is_empty() && page.bytes + size > max_bytes {
                page.truncated = true;
                return Ok(page);
            }
            cursor = message.seq;
            page.bytes += size;
            page.messages.push(message);
        }
        if got < want {
            break;
        }
    }
    Ok(page)
}

/// [`read_page`] with the configured reply limit.
pub async fn history_page(
    state: &crate::state::AppState,
    room: &str,
    after: u64,
    limit: usize,
) -> Result<HistoryPage> {
    read_page(
        state.store.as_ref(),
        room,
        after,
        limit,
        state.config.max_reply_bytes,
    )
    .await
}
