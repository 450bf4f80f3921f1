//! The message bus: room events to every member's connection and signals
//! addressed to one peer, wherever that peer's connection lives.
//!
//! [`InProcessBus`] serves one instance; a Redis backend implements the same
//! trait across instances. Both route to this instance's connections with
//! [`LocalRoutes`]. A peer whose socket dropped stays attached to its rooms
//! for the resume window: signals for it wait in its queue and are delivered
//! when it resumes. Each connection's writer reads its [`Outbox`].

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::error::Result;

mod in_process;
mod local_routes;
mod outbox;

pub use in_process::InProcessBus;
pub use local_routes::{Inbox, LocalRoutes};
pub use outbox::{Outbox, OutboxReceiver, outbox};

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
pub(crate) const DELIVERY_OVERHEAD: usize = 64;

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
