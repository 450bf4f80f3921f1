//! The durable chat that is in the log but not yet in redb: what reads see
//! on top of redb. A message enters only once its log sync returned, so no
//! read can show a message that a crash could still take back; it leaves once
//! a redb commit holds it, so memory holds the last fraction of a second of
//! chat, not the history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::ChatMessage;

/// A durable message, with what the checkpoint needs to write it to redb.
#[derive(Clone)]
pub(super) struct TailEntry {
    pub message: Arc<ChatMessage>,
    /// The message as the store keeps it (JSON).
    pub json: Arc<[u8]>,
    /// Unix seconds it was written, for the idempotency key's expiry.
    pub written_at: u64,
    /// The log segment that holds it.
    pub segment: u64,
}

#[derive(Default)]
struct Inner {
    /// In log order.
    entries: VecDeque<TailEntry>,
    /// Per room, in `seq` order: the room's newest messages, contiguous.
    rooms: HashMap<Arc<str>, VecDeque<Arc<ChatMessage>>>,
    bytes: usize,
}

#[derive(Default)]
pub(super) struct ChatTail {
    inner: Mutex<Inner>,
}

impl ChatTail {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds messages that are now durable, in log order.
    pub(super) fn push(&self, entries: Vec<TailEntry>) {
        let mut inner = self.lock();
        for entry in entries {
            inner.bytes += entry.json.len();
            let room: &str = &entry.message.room;
            match inner.rooms.get_mut(room) {
                Some(queue) => queue.push_back(entry.message.clone()),
                None => {
                    let key = Arc::from(room);
                    inner
                        .rooms
                        .insert(key, VecDeque::from([entry.message.clone()]));
                }
            }
            inner.entries.push_back(entry);
        }
    }

    /// Messages waiting for redb, and their JSON bytes.
    pub(super) fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    /// Up to `max` of the oldest entries, left in place until [`Self::applied`].
    pub(super) fn oldest(&self, max: usize) -> Vec<TailEntry> {
        self.lock().entries.iter().take(max).cloned().collect()
    }

    /// Drops the `count` oldest entries, which a redb commit now holds.
    pub(super) fn applied(&self, count: usize) {
        let mut inner = self.lock();
        for _ in 0..count {
            let Some(entry) = inner.entries.pop_front() else {
                break;
            };
            inner.bytes -= entry.json.len();
            let room: &str = &entry.message.room;
            if let Some(queue) = inner.rooms.get_mut(room) {
                queue.pop_front();
                if queue.is_empty() {
                    inner.rooms.remove(room);
                }
            }
        }
    }

    /// The room's messages with `seq > after`, at most `limit`, oldest
    /// first: always the newest part of what the room holds.
    pub(super) fn after(&self, room: &str, after: u64, limit: usize) -> Vec<ChatMessage> {
        let inner = self.lock();
        let Some(queue) = inner.rooms.get(room) else {
            return Vec::new();
        };
        let Some(first) = queue.front().map(|m| m.seq) else {
            return Vec::new();
        };
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        queue
            .iter()
            .skip(skip)
            .take(limit)
            .map(|m| ChatMessage::clone(m))
            .collect()
    }

    /// The room's highest durable `seq`, when redb does not hold it yet.
    pub(super) fn last_seq(&self, room: &str) -> Option<u64> {
        self.lock()
            .rooms
            .get(room)
            .and_then(|q| q.back())
            .map(|m| m.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &str, seq: u64) -> TailEntry {
        let message = ChatMessage {
            room: room.into(),
            seq,
            id: format!("c{seq}"),
            from: "p".into(),
            name: "n".into(),
            body: "b".into(),
            ts: "t".into(),
        };
        TailEntry {
            json: Arc::from(serde_json::to_vec(&message).unwrap()),
            message: Arc::new(message),
            written_at: 0,
            segment: 1,
        }
    }

    #[test]
    fn reads_see_each_rooms_newest_messages_until_they_are_applied() {
        let tail = ChatTail::default();
        tail.push(vec![
            entry("a", 5),
            entry("b", 1),
            entry("a", 6),
            entry("a", 7),
        ]);
        let seqs = |v: Vec<ChatMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(tail.after("a", 0, 10)), [5, 6, 7]);
        assert_eq!(seqs(tail.after("a", 5, 10)), [6, 7]);
        assert_eq!(seqs(tail.after("a", 5, 1)), [6]);
        assert_eq!(seqs(tail.after("a", 7, 10)), Vec::<u64>::new());
        assert_eq!(tail.last_seq("a"), Some(7));
        assert_eq!(tail.size().0, 4);
        assert_eq!(tail.oldest(2).len(), 2);
        tail.applied(2);
        assert_eq!(seqs(tail.after("a", 0, 10)), [6, 7]);
        assert_eq!(tail.last_seq("b"), None, "b is all in redb now");
        tail.applied(2);
        assert_eq!(tail.size(), (0, 0));
        assert_eq!(tail.last_seq("a"), None);
    }
}
