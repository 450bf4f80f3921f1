//! Who is in which room, with their display names.
//!
//! Membership lasts for the whole session, including its resume window, so a
//! reconnecting peer keeps its place. [`InProcessPresence`] serves one
//! instance; a Redis backend with expiring entries serves a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;
use crate::protocol::PeerInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined (or already a member); the other members.
    Joined {
        others: Vec<PeerInfo>,
        new: bool,
    },
    Full,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Adds `peer` unless the room already holds `max_peers` others.
    async fn join(&self, room: &str, peer: &str, name: &str, max_peers: u32)
    -> Result<JoinOutcome>;
    /// Removes `peer`; true when it was a member.
    async fn leave(&self, room: &str, peer: &str) -> Result<bool>;
    async fn members(&self, room: &str) -> Result<Vec<PeerInfo>>;
    async fn is_member(&self, room: &str, peer: &str) -> Result<bool>;
    /// Rooms with at least one member.
    async fn room_count(&self) -> Result<usize>;
}

#[derive(Default)]
pub struct InProcessPresence {
    rooms: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl InProcessPresence {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, String>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Presence for InProcessPresence {
    async fn join(
        &self,
        room: &str,
        peer: &str,
        name: &str,
        max_peers: u32,
    ) -> Result<JoinOutcome> {
        let mut rooms = self.lock();
        let members = rooms.entry(room.to_owned()).or_default();
        let new = !members.contains_key(peer);
        if new && members.len() >= max_peers as usize {
            if members.is_empty() {
                rooms.remove(room);
            }
            return Ok(JoinOutcome::Full);
        }
        members.insert(peer.to_owned(), name.to_owned());
        let others = members
            .iter()
            .filter(|(p, _)| p.as_str() != peer)
            .map(|(p, n)| PeerInfo {
                peer: p.clone(),
                name: n.clone(),
            })
            .collect();
        Ok(JoinOutcome::Joined { others, new })
    }

    async fn leave(&self, room: &str, peer: &str) -> Result<bool> {
        let mut rooms = self.lock();
        let Some(members) = rooms.get_mut(room) else {
            return Ok(false);
        };
        let was = members.remove(peer).is_some();
        if members.is_empty() {
            rooms.remove(room);
        }
        Ok(was)
    }

    async fn members(&self, room: &str) -> Result<Vec<PeerInfo>> {
        Ok(self
            .lock()
            .get(room)
            .map(|m| {
                m.iter()
                    .map(|(p, n)| PeerInfo {
                        peer: p.clone(),
                        name: n.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn is_member(&self, room: &str, peer: &str) -> Result<bool> {
        Ok(self.lock().get(room).is_some_and(|m| m.contains_key(peer)))
    }

    async fn room_count(&self) -> Result<usize> {
        Ok(self.lock().len())
    }
}
