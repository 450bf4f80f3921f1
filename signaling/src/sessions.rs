//! Session state for resume: peer id, rooms (with the last chat `seq` the
//! client received in each), resume token and last activity. A session whose
//! socket dropped can be resumed until its window ends; then the reaper ends
//! it. [`InProcessSessions`] serves one instance; a Redis backend lets a
//! session resume on any instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::EmbeddedStore;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoomMembership {
    pub name: String,
    /// Highest chat `seq` delivered to the client in this room.
    pub delivered_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub session: String,
    pub peer: String,
    pub resume_token: String,
    /// A hash map: far smaller than a B-tree node for the usual one room.
    pub rooms: HashMap<String, RoomMembership>,
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

    /// Adds sessions as detached, resumable for `window` from now (after a restart).
    pub fn restore(&self, states: Vec<SessionState>, window: Duration) {
        let expires = Some(Instant::now() + window);
        let mut sessions = self.lock();
        for state in states {
            sessions.insert(
                state.session.clone(),
                Entry {
                    state,
                    owner: 0,
                    expires,
                },
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // `subtle` keeps the compiler from turning this into an early exit.
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
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

/// Sessions kept in memory and written through to the embedded store, so that
/// after a restart clients resume with the same peer id and resends stay
/// idempotent. Session writes share the store's group commits.
pub struct EmbeddedSessions {
    memory: InProcessSessions,
    store: Arc<EmbeddedStore>,
}

impl EmbeddedSessions {
    /// Loads the stored sessions as detached, each resumable for `window`.
    pub fn open(store: Arc<EmbeddedStore>, window: Duration) -> Result<Self> {
        let memory = InProcessSessions::new();
        let mut states = Vec::new();
        for record in store.load_sessions()? {
            match serde_json::from_slice::<SessionState>(&record) {
                Ok(s) => states.push(s),
                Err(e) => tracing::warn!(error = %e, "unreadable session record skipped"),
            }
        }
        if !states.is_empty() {
            tracing::info!(
                sessions = states.len(),
                "sessions restored; resumable for the resume window"
            );
        }
        memory.restore(states, window);
        Ok(Self { memory, store })
    }

    async fn persist(&self, state: &SessionState) -> Result<()> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| crate::error::SignalingError::StoreCorrupt(e.to_string()))?;
        self.store.write_session(&state.session, Some(bytes)).await
    }
}

#[async_trait]
impl Sessions for EmbeddedSessions {
    async fn create(&self, state: SessionState, owner: u64) -> Result<()> {
        self.persist(&state).await?;
        self.memory.create(state, owner).await
    }

    async fn save(&self, state: &SessionState) -> Result<()> {
        self.memory.save(state).await?;
        self.persist(state).await
    }

    async fn resume(&self, session: &str, token: &str, owner: u64) -> Result<ResumeOutcome> {
        self.memory.resume(session, token, owner).await
    }

    async fn detach(&self, state: &SessionState, owner: u64, window: Duration) -> Result<()> {
        self.memory.detach(state, owner, window).await?;
        self.persist(state).await
    }

    async fn remove(&self, session: &str) -> Result<Option<SessionState>> {
        let removed = self.memory.remove(session).await?;
        self.store.write_session(session, None).await?;
        Ok(removed)
    }

    async fn take_expired(&self) -> Result<Vec<SessionState>> {
        let expired = self.memory.take_expired().await?;
        // Concurrent deletes share group commits.
        let deletes = expired
            .iter()
            .map(|s| self.store.write_session(&s.session, None));
        for result in futures::future::join_all(deletes).await {
            result?;
        }
        Ok(expired)
    }

    async fn count(&self) -> Result<usize> {
        self.memory.count().await
    }
}
