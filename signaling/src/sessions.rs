//! Session state for resume: peer id, rooms (with the last chat `seq` the
//! client received in each), resume token and last activity. A session whose
//! socket dropped can be resumed until its window ends; then the reaper ends
//! it. [`InProcessSessions`] serves one instance; a Redis backend lets a
//! session resume on any instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomMembership {
    pub name: String,
    /// Highest chat `seq` delivered to the client in this room.
    pub delivered_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub session: String,
    pub peer: String,
    pub resume_token: String,
    pub rooms: BTreeMap<String, RoomMembership>,
    /// Unix seconds of the last message from the client.
    pub last_activity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    Resumed(SessionState),
    /// Unknown, expired or a bad token.
    Refused,
}

#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Stores a new session attached to connection `owner` (unique per connection).
    async fn create(&self, state: SessionState, owner: u64) -> Result<()>;
    /// Saves the rooms and activity of an attached session.
    async fn save(&self, state: &SessionState) -> Result<()>;
    /// Claims a session for connection `owner`, checking its token: a detached
    /// one within its window, or an attached one whose old socket is not yet
    /// known to be dead (the new connection takes over).
    async fn resume(&self, session: &str, token: &str, owner: u64) -> Result<ResumeOutcome>;
    /// The socket of `owner` dropped: the session may be resumed for `window`.
    /// Ignored when another connection has taken the session over.
    async fn detach(&self, state: &SessionState, owner: u64, window: Duration) -> Result<()>;
    /// Ends a session now (bye).
    async fn remove(&self, session: &str) -> Result<Option<SessionState>>;
    /// Removes and returns the detached sessions whose window has ended.
    async fn take_expired(&self) -> Result<Vec<SessionState>>;
    /// Sessions stored, attached or detached.
    async fn count(&self) -> Result<usize>;
}

struct Entry {
    state: SessionState,
    owner: u64,
    /// `None` while attached; the end of the resume window once detached.
    expires: Option<Instant>,
}

#[derive(Default)]
pub struct InProcessSessions {
    sessions: Mutex<HashMap<String, Entry>>,
}

impl InProcessSessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Sessions for InProcessSessions {
    async fn create(&self, state: SessionState, owner: u64) -> Result<()> {
        self.lock().insert(
            state.session.clone(),
            Entry {
                state,
                owner,
                expires: None,
            },
        );
        Ok(())
    }

    async fn save(&self, state: &SessionState) -> Result<()> {
        if let Some(e) = self.lock().get_mut(&state.session) {
            e.state = state.clone();
        }
        Ok(())
    }

    async fn resume(&self, session: &str, token: &str, owner: u64) -> Result<ResumeOutcome> {
        let mut sessions = self.lock();
        let Some(entry) = sessions.get_mut(session) else {
            return Ok(ResumeOutcome::Refused);
        };
        if !constant_time_eq(entry.state.resume_token.as_bytes(), token.as_bytes()) {
            return Ok(ResumeOutcome::Refused);
        }
        match entry.expires {
            // The window has passed; the reaper ends it.
            Some(deadline) if deadline <= Instant::now() => Ok(ResumeOutcome::Refused),
            _ => {
                entry.expires = None;
                entry.owner = owner;
                Ok(ResumeOutcome::Resumed(entry.state.clone()))
            }
        }
    }

    async fn detach(&self, state: &SessionState, owner: u64, window: Duration) -> Result<()> {
        if let Some(e) = self.lock().get_mut(&state.session)
            && e.owner == owner
        {
            e.state = state.clone();
            e.expires = Some(Instant::now() + window);
        }
        Ok(())
    }

    async fn remove(&self, session: &str) -> Result<Option<SessionState>> {
        Ok(self.lock().remove(session).map(|e| e.state))
    }

    async fn take_expired(&self) -> Result<Vec<SessionState>> {
        let now = Instant::now();
        let mut sessions = self.lock();
        let expired: Vec<String> = sessions
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        Ok(expired
            .into_iter()
            .filter_map(|k| sessions.remove(&k).map(|e| e.state))
            .collect())
    }

    async fn count(&self) -> Result<usize> {
        Ok(self.lock().len())
    }
}
