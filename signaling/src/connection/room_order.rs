//! The writer's per-room chat order, as plain data: chat reaches a client
//! in `seq` order, each message once, whatever order the bus delivers it in
//! (pub/sub across instances, the chat sweep, a replay racing live chat).
//! A gap waits a moment for the missing message, then is read from the
//! store; what a working store does not have is skipped so a room never
//! stalls. A read that fails (the store is down) skips nothing: the gap is
//! read again with back-off, and if the chat held behind it outgrows its
//! bound first, the connection is closed to be resumed, whose replay brings
//! the missing messages once the store is back.
//! No I/O and no clock here: the writer passes `now` and does the sending
//! and the store reads this type asks for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a gap may wait for its missing `seq` before it is read from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(50);
/// Out-of-order chat held per room; one more and the gap is filled at once.
pub const MAX_PENDING: usize = 1024;
/// First wait before a failed gap read is tried again; doubles per failure.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between gap reads of a store that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// One room's position.
#[derive(Debug)]
struct Cursor<F> {
    /// Highest `seq` sent; `None` while joining (until `joined` went out).
    delivered: Option<u64>,
    /// Chat after a gap (or while joining), by `seq`.
    pending: BTreeMap<u64, F>,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
    /// Store reads for the current gap that failed in a row.
    failed_reads: u32,
    /// When the next read is due after a failed one.
    retry_at: Option<Instant>,
}

impl<F> Default for Cursor<F> {
    fn default() -> Self {
        Self {
            delivered: None,
            pending: BTreeMap::new(),
            gap_since: None,
            failed_reads: 0,
            retry_at: None,
        }
    }
}

impl<F> Cursor<F> {
    /// Moves whatever is contiguous after `delivered` into `out`; notes
    /// when a gap is left.
    fn drain(&mut self, now: Instant, out: &mut Vec<F>) {
        let Some(mut d) = self.delivered else {
            return;
        };
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= d {
                entry.remove();
            } else if seq == d + 1 {
                out.push(entry.remove());
                d = seq;
            } else {
                break;
            }
        }
        self.delivered = Some(d);
        if self.pending.is_empty() {
            self.gap_since = None;
            self.failed_reads = 0;
            self.retry_at = None;
        } else {
            self.gap_since = self.gap_since.or(Some(now));
        }
    }

    /// When this room's gap is due for a store read.
    fn due_at(&self) -> Option<Instant> {
        self.retry_at.or(self.gap_since.map(|t| t + GAP_WAIT))
    }
}

/// What the writer does with one chat message.
#[derive(Debug, PartialEq, Eq)]
pub struct Offered<F> {
    /// Frames to send now, in order.
    pub send: Vec<F>,
    /// The room holds more out-of-order chat than it may: fill its gap now.
    pub fill_now: bool,
    /// The room holds more than it may while the store cannot be read: close
    /// the connection for the client to resume (the replay fills the gap).
    pub resume: bool,
}

/// The store read that fills a room's gap: `want` messages after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapRead {
    pub after: u64,
    pub want: usize,
}

/// The outcome of a gap fill.
#[derive(Debug, PartialEq, Eq)]
pub struct Filled<F> {
    /// Frames to send now, in order (from the store, then the pending ones).
    pub send: Vec<F>,
    /// `seq`s given up on (first, last): the client can ask `history`.
    pub skipped: Option<(u64, u64)>,
}

/// Every room of one connection. `F` is an encoded frame.
#[derive(Debug)]
pub struct RoomOrder<F> {
    rooms: HashMap<Arc<str>, Cursor<F>>,
}

impl<F> Default for RoomOrder<F> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
        }
    }
}

impl<F> RoomOrder<F> {
    /// The connection is subscribing to `room`: hold its chat until [`Self::joined`].
    pub fn joining(&mut self, room: Arc<str>) {
        self.rooms.entry(room).or_default();
    }

    /// `joined` and its replay went out; the client has every `seq` up to
    /// `cursor`. Returns held chat that follows on, in order.
    pub fn joined(&mut self, room: Arc<str>, cursor: u64, now: Instant) -> Vec<F> {
        let c = self.rooms.entry(room).or_default();
        c.delivered = Some(c.delivered.unwrap_or(0).max(cursor));
        let mut out = Vec::new();
        c.drain(now, &mut out);
        out
    }

    /// The connection left `room`: its chat is no longer sent.
    pub fn left(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// Chat `seq` of `room` arrived.
    pub fn offer(&mut self, room: &Arc<str>, seq: u64, frame: F, now: Instant) -> Offered<F> {
        let mut offered = Offered {
            send: Vec::new(),
            fill_now: false,
            resume: false,
        };
        let Some(c) = self.rooms.get_mut(room) else {
            // Not (or no longer) in the room.
            return offered;
        };
        match c.delivered {
            Some(d) if seq <= d => {}
            Some(d) if seq == d + 1 && c.pending.is_empty() => {
                c.delivered = Some(seq);
                offered.send.push(frame);
            }
            _ => {
                c.pending.insert(seq, frame);
                if c.pending.len() > MAX_PENDING {
                    if c.failed_reads > 0 {
                        offered.resume = true;
                    } else if c.delivered.is_some() {
                        offered.fill_now = true;
                    } else {
                        // Still joining: nothing to fill from yet. The oldest
                        // held message gives way; the gap fill after `joined`
                        // reads it from the store.
                        c.pending.pop_first();
                    }
                }
                c.drain(now, &mut offered.send);
            }
        }
        offered
    }

    /// The store read that would fill `room`'s gap, if it has one.
    pub fn gap(&self, room: &str) -> Option<GapRead> {
        let c = self.rooms.get(room)?;
        let delivered = c.delivered?;
        let first = *c.pending.keys().next()?;
        let missing = first.checked_sub(delivered + 1)?;
        Some(GapRead {
            after: delivered,
            want: usize::try_from(missing).map_or(MAX_PENDING, |m| m.min(MAX_PENDING)),
        })
    }

    /// Applies what the store gave for `room`'s gap (`seq` and frame, in
    /// `seq` order; empty when the read failed): sends what is contiguous,
    /// skips what is still missing, then sends the held chat after it.
    pub fn fill(
        &mut self,
        room: &str,
        fetched: impl IntoIterator<Item = (u64, F)>,
        now: Instant,
    ) -> Filled<F> {
        let mut filled = Filled {
            send: Vec::new(),
            skipped: None,
        };
        let Some(c) = self.rooms.get_mut(room) else {
            return filled;
        };
        let Some(mut d) = c.delivered else {
            return filled;
        };
        for (seq, frame) in fetched {
            if seq == d + 1 {
                d = seq;
                filled.send.push(frame);
            }
        }
        if let Some(&first) = c.pending.keys().next()
            && first > d + 1
        {
            filled.skipped = Some((d + 1, first - 1));
            d = first - 1;
        }
        c.delivered = Some(d);
        c.failed_reads = 0;
        c.retry_at = None;
        c.drain(now, &mut filled.send);
        filled
    }

    /// The store read for `room`'s gap failed: nothing is skipped, the gap
    /// is read again after a back-off (100 ms doubling to 5 s).
    pub fn read_failed(&mut self, room: &str, now: Instant) {
        let Some(c) = self.rooms.get_mut(room) else {
            return;
        };
        c.failed_reads = c.failed_reads.saturating_add(1);
        let wait = RETRY_MIN
            .saturating_mul(1 << (c.failed_reads - 1).min(6))
            .min(RETRY_MAX);
        c.retry_at = Some(now + wait);
    }

    /// When the earliest waiting gap is due for a store read.
    pub fn next_gap_deadline(&self) -> Option<Instant> {
        self.rooms.values().filter_map(Cursor::due_at).min()
    }

    /// Rooms whose gap has waited [`GAP_WAIT`] (or its retry back-off) by `now`.
    pub fn due_gaps(&self, now: Instant) -> Vec<Arc<str>> {
        self.rooms
            .iter()
            .filter(|(_, c)| c.due_at().is_some_and(|t| t <= now))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The highest `seq` sent per room (rooms whose `joined` went out).
    pub fn into_delivered(self) -> HashMap<Arc<str>, u64> {
        self.rooms
            .into_iter()
            .filter_map(|(room, c)| c.delivered.map(|d| (room, d)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Arc<str> {
        Arc::from("r")
    }

    /// A room joined with every `seq` up to `cursor` delivered.
    fn joined_at(cursor: u64, now: Instant) -> RoomOrder<u64> {
        let mut order = RoomOrder::default();
        order.joining(room());
        assert!(order.joined(room(), cursor, now).is_empty());
        order
    }

    #[test]
    fn in_order_chat_goes_straight_through() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        for seq in 1..=3 {
            let o = order.offer(&room(), seq, seq, now);
            assert_eq!(o.send, vec![seq]);
            assert!(!o.fill_now);
        }
        assert_eq!(order.next_gap_deadline(), None);
        assert_eq!(order.into_delivered()[&room()], 3);
    }

    #[test]
    fn duplicates_and_old_seqs_are_dropped() {
        let now = Instant::now();
        let mut order = joined_at(5, now);
        assert!(order.offer(&room(), 5, 5, now).send.is_empty());
        assert!(order.offer(&room(), 2, 2, now).send.is_empty());
        assert_eq!(order.offer(&room(), 6, 6, now).send, vec![6]);
        assert!(order.offer(&room(), 6, 6, now).send.is_empty());
        // A duplicate of a held message replaces it, and is sent once.
        assert!(order.offer(&room(), 8, 8, now).send.is_empty());
        assert!(order.offer(&room(), 8, 8, now).send.is_empty());
        assert_eq!(order.offer(&room(), 7, 7, now).send, vec![7, 8]);
    }

    #[test]
    fn out_of_order_chat_is_held_until_the_gap_closes() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        assert!(order.offer(&room(), 3, 3, now).send.is_empty());
        assert!(order.offer(&room(), 2, 2, now).send.is_empty());
        assert_eq!(order.next_gap_deadline(), Some(now + GAP_WAIT));
        assert_eq!(order.offer(&room(), 1, 1, now).send, vec![1, 2, 3]);
        assert_eq!(order.next_gap_deadline(), None);
    }

    #[test]
    fn a_gap_is_due_after_the_wait_and_filled_from_the_store() {
        let t0 = Instant::now();
        let mut order = joined_at(10, t0);
        order.offer(&room(), 14, 14, t0);
        assert!(order.due_gaps(t0).is_empty());
        let later = t0 + GAP_WAIT;
        assert_eq!(order.due_gaps(later), vec![room()]);
        assert_eq!(order.gap("r"), Some(GapRead { after: 10, want: 3 }));
        // The store has 11..=13: all of it goes out, then the held 14.
        let filled = order.fill("r", [(11, 11), (12, 12), (13, 13)], later);
        assert_eq!(filled.send, vec![11, 12, 13, 14]);
        assert_eq!(filled.skipped, None);
        assert!(order.due_gaps(later + GAP_WAIT).is_empty());
    }

    #[test]
    fn what_the_store_cannot_give_is_skipped_so_the_room_moves_on() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        order.offer(&room(), 5, 5, now);
        // The store gave 1 and 3 (2 is missing): 1 goes out, 2..=4 are skipped.
        let filled = order.fill("r", [(1, 1), (3, 3)], now);
        assert_eq!(filled.send, vec![1, 5]);
        assert_eq!(filled.skipped, Some((2, 4)));
        // A read that answered without them skips the whole gap.
        order.offer(&room(), 9, 9, now);
        let filled = order.fill("r", std::iter::empty(), now);
        assert_eq!(filled.send, vec![9]);
        assert_eq!(filled.skipped, Some((6, 8)));
        assert_eq!(order.into_delivered()[&room()], 9);
    }

    #[test]
    fn a_failed_read_skips_nothing_and_is_tried_again_with_back_off() {
        let t0 = Instant::now();
        let mut order = joined_at(10, t0);
        order.offer(&room(), 12, 12, t0);
        let due = t0 + GAP_WAIT;
        assert_eq!(order.due_gaps(due), vec![room()]);
        // The store is down: the gap stays, due again after the back-off.
        order.read_failed("r", due);
        assert!(order.due_gaps(due).is_empty());
        assert_eq!(order.next_gap_deadline(), Some(due + RETRY_MIN));
        order.read_failed("r", due + RETRY_MIN);
        assert_eq!(
            order.next_gap_deadline(),
            Some(due + RETRY_MIN + 2 * RETRY_MIN),
            "the wait doubles"
        );
        for _ in 0..20 {
            order.read_failed("r", due);
        }
        assert_eq!(order.next_gap_deadline(), Some(due + RETRY_MAX), "capped");
        // Still waiting for 11, nothing given up on.
        assert_eq!(order.gap("r"), Some(GapRead { after: 10, want: 1 }));
        // The store is back: 11 comes from it, then the held 12.
        let filled = order.fill("r", [(11, 11)], due + RETRY_MAX);
        assert_eq!(filled.send, vec![11, 12]);
        assert_eq!(filled.skipped, None);
        assert_eq!(order.next_gap_deadline(), None);
        // A later gap starts with the short wait again.
        order.offer(&room(), 14, 14, due + RETRY_MAX);
        assert_eq!(order.next_gap_deadline(), Some(due + RETRY_MAX + GAP_WAIT));
    }

    #[test]
    fn a_gap_the_store_cannot_fill_closes_the_connection_when_held_chat_outgrows_its_bound() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        order.offer(&room(), 2, 2, now);
        order.read_failed("r", now);
        let mut resume = false;
        for seq in 3..=(MAX_PENDING as u64 + 2) {
            let offered = order.offer(&room(), seq, seq, now);
            assert!(offered.send.is_empty());
            assert!(
                !offered.fill_now,
                "no store read per message while it fails"
            );
            resume |= offered.resume;
        }
        assert!(
            resume,
            "past {MAX_PENDING} held messages the client resumes"
        );
        // What was delivered stays the resume position: nothing skipped.
        assert_eq!(order.into_delivered()[&room()], 0);
    }

    #[test]
    fn chat_is_held_while_joining_and_follows_the_replay() {
        let now = Instant::now();
        let mut order = RoomOrder::default();
        order.joining(room());
        // Live chat races the replay, which covers up to 4.
        for seq in [3, 5, 4, 6] {
            assert!(order.offer(&room(), seq, seq, now).send.is_empty());
        }
        assert_eq!(order.gap("r"), None, "nothing to fill before joined");
        assert_eq!(order.joined(room(), 4, now), vec![5, 6]);
        assert_eq!(order.next_gap_deadline(), None);
    }

    #[test]
    fn chat_of_rooms_not_joined_or_left_is_dropped() {
        let now = Instant::now();
        let mut order: RoomOrder<u64> = RoomOrder::default();
        assert!(order.offer(&room(), 1, 1, now).send.is_empty());
        let mut order = joined_at(0, now);
        order.offer(&room(), 3, 3, now);
        order.left("r");
        assert!(order.offer(&room(), 1, 1, now).send.is_empty());
        assert_eq!(order.next_gap_deadline(), None);
        assert!(order.into_delivered().is_empty());
    }

    #[test]
    fn held_chat_is_bounded() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        // Seq 1 never comes: after MAX_PENDING held messages the next one
        // asks for the gap to be filled at once.
        for seq in 2..=(MAX_PENDING as u64 + 1) {
            assert!(!order.offer(&room(), seq, seq, now).fill_now);
        }
        let o = order.offer(&room(), MAX_PENDING as u64 + 2, 0, now);
        assert!(o.fill_now);
        assert_eq!(order.gap("r"), Some(GapRead { after: 0, want: 1 }));
        let filled = order.fill("r", [(1, 1)], now);
        assert_eq!(filled.send.len(), MAX_PENDING + 2);

        // While joining there is nothing to fill from: the oldest gives way.
        let mut joining = RoomOrder::default();
        joining.joining(room());
        for seq in 1..=(MAX_PENDING as u64 + 10) {
            assert!(!joining.offer(&room(), seq, seq, now).fill_now);
        }
        let sent = joining.joined(room(), 0, now);
        assert!(
            sent.is_empty(),
            "the first ones were dropped: a gap remains"
        );
        assert_eq!(joining.gap("r"), Some(GapRead { after: 0, want: 10 }));
    }

    #[test]
    fn a_gap_read_asks_for_at_most_the_pending_bound() {
        let now = Instant::now();
        let mut order = joined_at(0, now);
        order.offer(&room(), 1_000_000, 1, now);
        assert_eq!(
            order.gap("r"),
            Some(GapRead {
                after: 0,
                want: MAX_PENDING
            })
        );
    }
}
