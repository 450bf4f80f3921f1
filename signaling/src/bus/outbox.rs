//! A connection's outgoing queue, bounded in bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::Delivery;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::DELIVERY_OVERHEAD;
    use axum::extract::ws::Utf8Bytes;

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
