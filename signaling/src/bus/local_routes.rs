//! Routing to this instance's connections, shared by every bus: which
//! connection is which peer (a slot per peer, with the signals queued while
//! it is detached), which local peers are in which room, and delivery into
//! their outboxes. The buses add only what crosses instances.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Outbox};

/// Signals queued for one detached peer, at most; the oldest go first.
pub const MAX_QUEUED: usize = 256;

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
    /// Queues `d`; a full outbox ends the connection (it resumes and reads
    /// the chat it missed from the store), a closed one drops it.
    fn deliver(&self, d: Delivery) {
        match self.sender.try_send(d) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflow.cancel(),
        }
    }
}

#[derive(Default)]
struct PeerSlot {
    inbox: Option<Inbox>,
    queued: VecDeque<Delivery>,
}

/// The local half of a bus. Plain data: the bus holds it under its lock.
#[derive(Default)]
pub struct LocalRoutes {
    peers: HashMap<String, PeerSlot>,
    rooms: HashMap<String, HashSet<String>>,
}

impl LocalRoutes {
    /// Routes `peer` to `inbox`, first handing it the signals queued while
    /// the peer was away. A connection it replaces (a resumed session whose
    /// old socket is not yet known dead) is told to close.
    pub fn attach(&mut self, peer: &str, inbox: Inbox) {
        let slot = self.peers.entry(peer.to_owned()).or_default();
        for d in slot.queued.drain(..) {
            inbox.deliver(d);
        }
        let connection = inbox.connection;
        if let Some(old) = slot.inbox.replace(inbox)
            && old.connection != connection
        {
            old.overflow.cancel();
        }
    }

    /// Connection `connection` of `peer` ended: queue its signals from now
    /// on. A newer connection of the same peer stays attached.
    pub fn detach(&mut self, peer: &str, connection: u64) {
        if let Some(slot) = self.peers.get_mut(peer)
            && slot.inbox.as_ref().map(|i| i.connection) == Some(connection)
        {
            slot.inbox = None;
        }
    }

    /// The session is over: drops its slot and memberships. Returns the
    /// rooms that have no local member left.
    pub fn forget(&mut self, peer: &str) -> Vec<String> {
        self.peers.remove(peer);
        self.remove_from_rooms(peer)
    }

    /// The peer now lives elsewhere: drops it here and returns what was
    /// queued for it (to forward) and the rooms left without local members.
    /// A socket of it still open here is told to close.
    pub fn hand_over(&mut self, peer: &str) -> (Vec<Delivery>, Vec<String>) {
        let queued = match self.peers.remove(peer) {
            Some(slot) => {
                if let Some(inbox) = slot.inbox {
                    inbox.overflow.cancel();
                }
                slot.queued.into_iter().collect()
            }
            None => Vec::new(),
        };
        (queued, self.remove_from_rooms(peer))
    }

    fn remove_from_rooms(&mut self, peer: &str) -> Vec<String> {
        let mut emptied = Vec::new();
        self.rooms.retain(|room, members| {
            members.remove(peer);
            if members.is_empty() {
                emptied.push(room.clone());
                false
            } else {
                true
            }
        });
        emptied
    }

    /// Adds `peer` to `room`; true when it is the room's first local member.
    pub fn subscribe(&mut self, room: &str, peer: &str) -> bool {
        let members = self.rooms.entry(room.to_owned()).or_default();
        let first = members.is_empty();
        members.insert(peer.to_owned());
        first
    }

    /// Removes `peer` from `room`; true when that emptied the room here.
    pub fn unsubscribe(&mut self, room: &str, peer: &str) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        members.remove(peer);
        if members.is_empty() {
            self.rooms.remove(room);
            true
        } else {
            false
        }
    }

    /// Delivers to every attached local member of `room` but `except`.
    /// Detached members get room chat by replay when they resume.
    pub fn deliver_room(&self, room: &str, d: &Delivery, except: Option<&str>) {
        let Some(members) = self.rooms.get(room) else {
            return;
        };
        for peer in members {
            if Some(peer.as_str()) == except {
                continue;
            }
            if let Some(inbox) = self.peers.get(peer).and_then(|s| s.inbox.as_ref()) {
                inbox.deliver(d.clone());
            }
        }
    }

    /// Delivers to a local peer, or queues while it is detached; false when
    /// this instance does not know the peer (never attached, or its session
    /// ended).
    pub fn deliver_peer(&mut self, peer: &str, d: Delivery) -> bool {
        let Some(slot) = self.peers.get_mut(peer) else {
            return false;
        };
        match &slot.inbox {
            Some(inbox) => inbox.deliver(d),
            None => {
                if slot.queued.len() >= MAX_QUEUED {
                    slot.queued.pop_front();
                }
                slot.queued.push_back(d);
            }
        }
        true
    }

    /// Peers with a connection here now.
    pub fn attached_peers(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, s)| s.inbox.is_some())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Rooms with at least one attached local member.
    pub fn rooms_with_attached_members(&self) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, members)| {
                members
                    .iter()
                    .any(|p| self.peers.get(p).is_some_and(|s| s.inbox.is_some()))
            })
            .map(|(r, _)| r.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{OutboxReceiver, outbox};
    use axum::extract::ws::Utf8Bytes;

    fn inbox(connection: u64, capacity: usize) -> (Inbox, OutboxReceiver) {
        let (sender, rx) = outbox(capacity);
        (
            Inbox {
                connection,
                sender,
                overflow: CancellationToken::new(),
            },
            rx,
        )
    }

    fn frame(text: &str) -> Delivery {
        Delivery::Frame {
            kind: "signal",
            frame: Utf8Bytes::from(text.to_owned()),
        }
    }

    fn text(d: Option<Delivery>) -> Option<String> {
        match d? {
            Delivery::Frame { frame, .. } => Some(frame.as_str().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn room_delivery_skips_the_sender_and_detached_members() {
        let mut routes = LocalRoutes::default();
        let (a, mut a_rx) = inbox(1, 1 << 16);
        let (b, mut b_rx) = inbox(2, 1 << 16);
        let (c, mut c_rx) = inbox(3, 1 << 16);
        routes.attach("a", a);
        routes.attach("b", b);
        routes.attach("c", c);
        assert!(routes.subscribe("r", "a"));
        assert!(!routes.subscribe("r", "b"));
        assert!(!routes.subscribe("r", "c"));
        routes.detach("c", 3);
        routes.deliver_room("r", &frame("hi"), Some("a"));
        assert_eq!(text(b_rx.try_recv()).as_deref(), Some("hi"));
        assert!(a_rx.try_recv().is_none());
        assert!(c_rx.try_recv().is_none());
        assert_eq!(routes.rooms_with_attached_members(), vec!["r".to_owned()]);
        assert!(!routes.unsubscribe("r", "a"));
        assert!(!routes.unsubscribe("r", "b"));
        assert!(routes.unsubscribe("r", "c"));
        assert!(routes.rooms_with_attached_members().is_empty());
    }

    #[test]
    fn signals_wait_for_a_detached_peer_up_to_the_bound() {
        let mut routes = LocalRoutes::default();
        assert!(!routes.deliver_peer("nobody", frame("x")));
        let (a, _a_rx) = inbox(1, 1 << 16);
        routes.attach("a", a);
        routes.detach("a", 1);
        for n in 0..MAX_QUEUED + 5 {
            assert!(routes.deliver_peer("a", frame(&n.to_string())));
        }
        let (again, mut rx) = inbox(2, 1 << 20);
        routes.attach("a", again);
        // The oldest five gave way; the rest arrive in order.
        assert_eq!(text(rx.try_recv()).as_deref(), Some("5"));
        let rest = std::iter::from_fn(|| rx.try_recv()).count();
        assert_eq!(rest, MAX_QUEUED - 1);
    }

    #[test]
    fn a_newer_connection_replaces_the_old_and_survives_its_detach() {
        let mut routes = LocalRoutes::default();
        let (old, _old_rx) = inbox(1, 1 << 16);
        let old_overflow = old.overflow.clone();
        routes.attach("a", old);
        let (new, mut new_rx) = inbox(2, 1 << 16);
        routes.attach("a", new);
        assert!(old_overflow.is_cancelled(), "the old socket is closed");
        // The old connection's late detach does not unroute the new one.
        routes.detach("a", 1);
        assert!(routes.deliver_peer("a", frame("still here")));
        assert_eq!(text(new_rx.try_recv()).as_deref(), Some("still here"));
        assert_eq!(routes.attached_peers(), vec!["a".to_owned()]);
    }

    #[test]
    fn a_full_outbox_closes_the_connection() {
        let mut routes = LocalRoutes::default();
        let (a, _rx) = inbox(1, 1);
        let overflow = a.overflow.clone();
        routes.attach("a", a);
        routes.subscribe("r", "a");
        routes.deliver_room("r", &frame("one fits an empty outbox"), None);
        assert!(!overflow.is_cancelled());
        routes.deliver_room("r", &frame("two do not"), None);
        assert!(overflow.is_cancelled());
    }

    #[test]
    fn forget_and_hand_over_report_the_rooms_they_empty() {
        let mut routes = LocalRoutes::default();
        let (a, _a_rx) = inbox(1, 1 << 16);
        let (b, _b_rx) = inbox(2, 1 << 16);
        routes.attach("a", a);
        routes.attach("b", b);
        routes.subscribe("shared", "a");
        routes.subscribe("shared", "b");
        routes.subscribe("solo", "a");
        assert_eq!(routes.forget("a"), vec!["solo".to_owned()]);
        assert!(!routes.deliver_peer("a", frame("gone")));

        routes.detach("b", 2);
        routes.deliver_peer("b", frame("queued"));
        let (queued, emptied) = routes.hand_over("b");
        assert_eq!(queued.len(), 1);
        assert_eq!(emptied, vec!["shared".to_owned()]);
        assert!(routes.attached_peers().is_empty());
    }
}
