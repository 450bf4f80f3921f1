//! The message bus: room events to every member's connection and signals
//! addressed to one peer, wherever that peer's connection lives.
//!
//! [`InProcessBus`] serves one instance; a Redis backend implements the same
//! trait across instances. A peer whose socket dropped stays attached to its
//! rooms for the resume window: signals for it wait in its queue and are
//! delivered when it resumes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// What travels to a connection's writer: encoded frames plus the markers the
/// writer needs to keep each room's chat in `seq` order.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A room chat message with its `seq` (ordered and de-duplicated by the writer).
    Chat {
        room: Arc<str>,
        seq: u64,
        frame: Utf8Bytes,
    },
    /// Any other frame, sent as is. `kind` is the message type, for metrics.
    Frame {
        kind: &'static str,
        frame: Utf8Bytes,
    },
    /// The connection is about to subscribe to `room`: hold its chat until `Joined`.
    Joining { room: Arc<str> },
    /// The `joined` frame, the replayed chat, and the highest `seq` the client now has.
    /// Boxed so that the common variants, and every queue slot, stay small.
    Joined(Box<JoinedRoom>),
    /// Stop delivering `room`'s chat.
    Left { room: Arc<str> },
    /// Send a close frame and end the connection.
    Close { code: u16, reason: &'static str },
}

/// What a queued delivery costs besides its frames (the queue slot, the
/// `Arc`s), so that a flood of tiny frames is bounded too.
const DELIVERY_OVERHEAD: usize = 64;

impl Delivery {
    /// Bytes this delivery holds while queued.
    pub fn queued_bytes(&self) -> usize {
        DELIVERY_OVERHEAD
            + match self {
                Self::Chat { frame, .. } | Self::Frame { frame, .. } => frame.len(),
                Self::Joined(j) => {
                    j.frame.len()
                        + j.replay
                            .iter()
                            .map(|(_, f)| f.len() + DELIVERY_OVERHEAD)
                            .sum::<usize>()
                }
                Self::Joining { .. } | Self::Left { .. } | Self::Close { .. } => 0,
            }
    }
}

#[derive(Debug, Clone)]
pub struct JoinedRoom {
    pub room: Arc<str>,
    pub frame: Utf8Bytes,
    pub replay: Vec<(u64, Utf8Bytes)>,
    pub cursor: u64,
}

/// A connection's outgoing queue: bounded in bytes, and without storage while empty
/// (a tokio mpsc channel keeps a 32-slot block per connection, which is most
/// of an idle connection's memory). One consumer: the connection's writer.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<OutboxInner>,
}

struct OutboxInner {
    queue: Mutex<Queue>,
    /// Most bytes queued at once ([`Delivery::queued_bytes`]).
    capacity: usize,
    /// Wakes the writer.
    filled: Notify,
    /// Wakes a sender waiting for room.
    drained: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    bytes: usize,
}

/// The writer's end of an [`Outbox`]; dropping it closes the outbox.
pub struct OutboxReceiver {
    inner: Arc<OutboxInner>,
}

/// A bounded outbox holding at most `capacity` bytes of deliveries (one
/// delivery always fits into an empty outbox).
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let inner = Arc::new(OutboxInner {
        queue: Mutex::new(Queue::default()),
        capacity,
        filled: Notify::new(),
        drained: Notify::new(),
        closed: AtomicBool::new(false),
    });
    (
        Outbox {
            inner: inner.clone(),
        },
        OutboxReceiver { inner },
    )
}

impl OutboxInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<Delivery> {
        let d = {
            let mut q = self.lock();
            let d = q.deliveries.pop_front();
            if let Some(d) = &d {
                q.bytes = q.bytes.saturating_sub(d.queued_bytes());
            }
            d
        };
        if d.is_some() {
            self.drained.notify_one();
        }
        d
    }
}

impl Outbox {
    /// Queues without waiting; `Full` when the writer is `capacity` bytes behind.
    pub fn try_send(&self, d: Delivery) -> Result<(), mpsc::error::TrySendError<Delivery>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(mpsc::error::TrySendError::Closed(d));
        }
        {
            let mut q = self.inner.lock();
            let size = d.queued_bytes();
            if !q.deliveries.is_empty() && q.bytes + size > self.inner.capacity {
                return Err(mpsc::error::TrySendError::Full(d));
            }
            q.bytes += size;
            q.deliveries.push_back(d);
        }
        self.inner.filled.notify_one();
        Ok(())
    }

    /// Queues, waiting for room; gives the delivery back when closed.
    pub async fn send(&self, mut d: Delivery) -> Result<(), Delivery> {
        loop {
            let drained = self.inner.drained.notified();
            match self.try_send(d) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(back)) => return Err(back),
                Err(mpsc::error::TrySendError::Full(back)) => d = back,
            }
            drained.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl OutboxReceiver {
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.inner.pop()
    }

    /// The next delivery. It never ends by itself (the bus keeps a sender):
    /// the writer stops on its cancellation token.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            let filled = self.inner.filled.notified();
            if let Some(d) = self.inner.pop() {
                return Some(d);
            }
            filled.await;
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        *self.inner.lock() = Queue::default();
        self.inner.drained.notify_waiters();
    }
}

/// A connection's inbox as the bus sees it.
#[derive(Clone)]
pub struct Inbox {
    pub connection: u64,
    pub sender: Outbox,
    /// Cancelled when the inbox overflows: the connection closes and the
    /// client resumes, receiving what it missed from the store.
    pub overflow: CancellationToken,
}

impl Inbox {
    fn deliver(&self, d: Delivery) -> bool {
        match self.sender.try_send(d) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Routes the peer's deliveries to `inbox` and first hands it the signals
    /// queued while the peer was away.
    async fn attach(&self, peer: &str, inbox: Inbox) -> Result<()>;
    /// The connection `connection` of `peer` ended; queue its signals from now on.
    async fn detach(&self, peer: &str, connection: u64) -> Result<()>;
    /// The session is over: drop its queue and its room subscriptions.
    async fn forget(&self, peer: &str) -> Result<()>;
    async fn subscribe(&self, room: &str, peer: &str) -> Result<()>;
    async fn unsubscribe(&self, room: &str, peer: &str) -> Result<()>;
    /// Delivers to every attached member of `room` except `except`.
    async fn publish(&self, room: &str, delivery: Delivery, except: Option<&str>) -> Result<()>;
    /// Delivers to one peer, or queues it while the peer is detached.
    async fn send_to_peer(&self, peer: &str, delivery: Delivery) -> Result<()>;
    async fn healthy(&self) -> bool;
    fn kind(&self) -> &'static str;
}

/// Signals queued for one detached peer, at most.
const MAX_QUEUED: usize = 256;

#[derive(Default)]
struct PeerSlot {
    inbox: Option<Inbox>,
    queued: VecDeque<Delivery>,
}

#[derive(Default)]
struct Inner {
    peers: HashMap<String, PeerSlot>,
    rooms: HashMap<String, HashSet<String>>,
}

/// The bus of one instance.
#[derive(Default)]
pub struct InProcessBus {
    inner: Mutex<Inner>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain maps behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn attach(&self, peer: &str, inbox: Inbox) -> Result<()> {
        let mut inner = self.lock();
        let slot = inner.peers.entry(peer.to_owned()).or_default();
        for d in slot.queued.drain(..) {
            inbox.deliver(d);
        }
        // A resumed session replaces a connection whose socket is not yet known dead.
        if let Some(old) = slot.inbox.replace(inbox)
            && Some(old.connection) != slot.inbox.as_ref().map(|i| i.connection)
        {
            old.overflow.cancel();
        }
        Ok(())
    }

    async fn detach(&self, peer: &str, connection: u64) -> Result<()> {
        let mut inner = self.lock();
        if let Some(slot) = inner.peers.get_mut(peer)
            && slot.inbox.as_ref().map(|i| i.connection) == Some(connection)
        {
            slot.inbox = None;
        }
        Ok(())
    }

    async fn forget(&self, peer: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.peers.remove(peer);
        inner.rooms.retain(|_, members| {
            members.remove(peer);
            !members.is_empty()
        });
        Ok(())
    }

    async fn subscribe(&self, room: &str, peer: &str) -> Result<()> {
        let mut inner = self.lock();
        inner
            .rooms
            .entry(room.to_owned())
            .or_default()
            .insert(peer.to_owned());
        Ok(())
    }

    async fn unsubscribe(&self, room: &str, peer: &str) -> Result<()> {
        let mut inner = self.lock();
        if let Some(members) = inner.rooms.get_mut(room) {
            members.remove(peer);
            if members.is_empty() {
                inner.rooms.remove(room);
            }
        }
        Ok(())
    }

    async fn publish(&self, room: &str, delivery: Delivery, except: Option<&str>) -> Result<()> {
        let inner = self.lock();
        let Some(members) = inner.rooms.get(room) else {
            return Ok(());
        };
        for peer in members {
            if Some(peer.as_str()) == except {
                continue;
            }
            // Detached members get room chat by replay when they resume.
            if let Some(inbox) = inner.peers.get(peer).and_then(|s| s.inbox.as_ref()) {
                inbox.deliver(delivery.clone());
            }
        }
        Ok(())
    }

    async fn send_to_peer(&self, peer: &str, delivery: Delivery) -> Result<()> {
        let mut inner = self.lock();
        // Peers that never attached or whose session ended get nothing.
        let Some(slot) = inner.peers.get_mut(peer) else {
            return Ok(());
        };
        match &slot.inbox {
            Some(inbox) => {
                inbox.deliver(delivery);
            }
            None => {
                if slot.queued.len() >= MAX_QUEUED {
                    slot.queued.pop_front();
                }
                slot.queued.push_back(delivery);
            }
        }
        Ok(())
    }

    async fn healthy(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64) -> Delivery {
        Delivery::Chat {
            room: Arc::from("r"),
            seq: n,
            frame: Utf8Bytes::from(n.to_string()),
        }
    }

    fn seq(d: Delivery) -> u64 {
        match d {
            Delivery::Chat { seq, .. } => seq,
            _ => 0,
        }
    }

    #[tokio::test]
    async fn outbox_is_bounded_fifo_and_closes_with_its_receiver() {
        let (tx, mut rx) = outbox(2 * d(1).queued_bytes());
        tx.try_send(d(1)).unwrap();
        tx.try_send(d(2)).unwrap();
        assert!(matches!(
            tx.try_send(d(3)),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        // A waiting sender gets in once the writer takes one.
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(d(3)).await.is_ok() })
        };
        assert_eq!(rx.recv().await.map(seq), Some(1));
        assert!(waiting.await.unwrap());
        assert_eq!(rx.recv().await.map(seq), Some(2));
        assert_eq!(rx.try_recv().map(seq), Some(3));
        assert!(rx.try_recv().is_none());
        // The writer wakes for a later delivery.
        let tx2 = tx.clone();
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            tx2.try_send(d(4)).unwrap();
        });
        assert_eq!(rx.recv().await.map(seq), Some(4));
        later.await.unwrap();
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.try_send(d(5)),
            Err(mpsc::error::TrySendError::Closed(_))
        ));
        assert!(tx.send(d(6)).await.is_err());
    }

    #[test]
    fn outbox_counts_bytes_not_deliveries() {
        let big = Delivery::Frame {
            kind: "history",
            frame: Utf8Bytes::from("x".repeat(1000)),
        };
        let (tx, rx) = outbox(1500);
        // One delivery always fits into an empty outbox, whatever its size.
        tx.try_send(big.clone()).unwrap();
        assert_eq!(tx.queued_bytes(), 1000 + DELIVERY_OVERHEAD);
        assert!(matches!(
            tx.try_send(big.clone()),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        // Small frames still fit beside it, up to the byte budget.
        let small = (0..)
            .take_while(|&n| tx.try_send(d(n % 10)).is_ok())
            .count();
        assert_eq!(
            small,
            (1500 - 1000 - DELIVERY_OVERHEAD) / d(1).queued_bytes()
        );
        drop(rx);
    }
}
