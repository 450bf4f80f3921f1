//! Session state in Redis, so a client can resume on any instance.
//!
//! Keys under the prefix: `session:<id>` (hash: state JSON, owner
//! connection, instance, expires ms — 0 while attached), `sessions:all`,
//! `sessions:detached` (sorted by the end of the resume window),
//! `sessions:on:<instance>` (attached sessions per instance), `instances`
//! and `instance:<id>:alive` (a heartbeat with expiry). When an instance's
//! heartbeat expires (kill -9, node loss), its attached sessions become
//! detached with a full resume window, so their peers can resume elsewhere
//! and otherwise leave their rooms when the window passes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::connection::RedisConnection;
use crate::error::Result;
use crate::sessions::{ResumeOutcome, RoomMembership, SessionState, Sessions, constant_time_eq};

#[derive(Serialize, Deserialize)]
struct StoredSession {
    session: String,
    peer: String,
    resume_token: String,
    rooms: BTreeMap<String, (String, u64)>,
    last_activity: u64,
}

impl From<&SessionState> for StoredSession {
    fn from(s: &SessionState) -> Self {
        StoredSession {
            session: s.session.clone(),
            peer: s.peer.clone(),
            resume_token: s.resume_token.clone(),
            rooms: s
                .rooms
                .iter()
                .map(|(k, v)| (k.clone(), (v.name.clone(), v.delivered_seq)))
                .collect(),
            last_activity: s.last_activity,
        }
    }
}

impl From<StoredSession> for SessionState {
    fn from(s: StoredSession) -> Self {
        SessionState {
            session: s.session,
            peer: s.peer,
            resume_token: s.resume_token,
            rooms: s
                .rooms
                .into_iter()
                .map(|(k, (name, delivered_seq))| {
                    (
                        k,
                        RoomMembership {
                            name,
                            delivered_seq,
                        },
                    )
                })
                .collect(),
            last_activity: s.last_activity,
        }
    }
}

fn encode(s: &SessionState) -> String {
    serde_json::to_string(&StoredSession::from(s)).unwrap_or_default()
}

fn decode(json: &str) -> Option<SessionState> {
    serde_json::from_str::<StoredSession>(json)
        .ok()
        .map(Into::into)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// KEYS: session, all, on. ARGV: state, owner, instance, sid.
const CREATE: &str = r#"
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'owner', ARGV[2], 'instance', ARGV[3], 'expires', '0')
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"#;

// KEYS: session. ARGV: state.
const SAVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'state', ARGV[1]) return 1 end
return 0
"#;

// KEYS: session, detached, old on-set, new on-set. ARGV: expected owner, new owner, instance, sid, now ms.
const CLAIM: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
if expires ~= 0 and expires <= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'instance', ARGV[3], 'expires', '0')
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
return 1
"#;

// KEYS: session, detached, on-set, orphaned set. ARGV: owner, state, expires ms, sid.
const DETACH: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'expires', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SREM', KEYS[4], ARGV[4])
return 1
"#;

// KEYS: session, detached, all. ARGV: sid, on-set prefix.
const REMOVE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
local instance = redis.call('HGET', KEYS[1], 'instance')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if instance then redis.call('SREM', ARGV[2] .. instance, ARGV[1]) end
return state
"#;

// KEYS: session, detached, all. ARGV: sid. Only the caller whose ZREM wins gets it.
const TAKE: &str = r#"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return false end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return state
"#;

// KEYS: on-set of the dead instance, detached, instances, its orphaned set,
// its heartbeat key. ARGV: expires ms, session key prefix, dead instance id,
// "1" when another instance found the heartbeat missing ("0" when a
// restarted process adopts its previous life). Detaches every session
// still attached there. A heartbeat that is back by now means the
// instance lives: nothing is detached (-1). Otherwise the detached sids are
// remembered for the resume window, so that an instance that was only cut
// off from Redis for a while (a Redis restart) takes back the sessions it
// still serves (REVIVE) instead of having them reaped under its clients.
const ORPHAN: &str = r#"
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return -1 end
local sids = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, sid in ipairs(sids) do
  local key = ARGV[2] .. sid
  if redis.call('HGET', key, 'instance') == ARGV[3] and redis.call('HGET', key, 'expires') == '0' then
    redis.call('HSET', key, 'expires', ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[1], sid)
    if ARGV[4] == '1' then redis.call('SADD', KEYS[4], sid) end
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
if ARGV[4] == '1' and n > 0 then
  redis.call('PEXPIREAT', KEYS[4], ARGV[1])
else
  redis.call('DEL', KEYS[4])
end
redis.call('SREM', KEYS[3], ARGV[3])
return n
"#;

// KEYS: this instance's orphaned set, detached, on-set. ARGV: session key
// prefix, instance id. Re-attaches the sessions another instance detached
// while this one's heartbeat was missing, unless they were resumed
// elsewhere, detached here since, or reaped already.
const REVIVE: &str = r#"
local sids = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, sid in ipairs(sids) do
  local key = ARGV[1] .. sid
  if redis.call('HGET', key, 'instance') == ARGV[2] and redis.call('ZREM', KEYS[2], sid) == 1 then
    redis.call('HSET', key, 'expires', '0')
    redis.call('SADD', KEYS[3], sid)
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
"#;

pub struct RedisSessions {
    redis: RedisConnection,
    instance: String,
    /// The resume window a dead instance's sessions get.
    window: Duration,
    heartbeat_ttl: Duration,
    last_orphan_scan: Mutex<Option<Instant>>,
    scripts: [redis::Script; 8],
}

impl RedisSessions {
    pub fn new(redis: RedisConnection, instance: String, window: Duration) -> Self {
        RedisSessions {
            redis,
            instance,
            window,
            heartbeat_ttl: Duration::from_secs(6),
            last_orphan_scan: Mutex::new(None),
            scripts: [CREATE, SAVE, CLAIM, DETACH, REMOVE, TAKE, ORPHAN, REVIVE]
                .map(redis::Script::new),
        }
    }

    /// How long an instance may be silent before its sessions are detached.
    pub fn with_heartbeat_ttl(mut self, ttl: Duration) -> Self {
        self.heartbeat_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    fn k(&self, suffix: &str) -> String {
        self.redis.key(suffix)
    }

    fn session_key(&self, sid: &str) -> String {
        self.k(&format!("session:{sid}"))
    }

    fn on_key(&self, instance: &str) -> String {
        self.k(&format!("sessions:on:{instance}"))
    }

    fn alive_key(&self, instance: &str) -> String {
        self.k(&format!("instance:{instance}:alive"))
    }

    fn orphaned_key(&self, instance: &str) -> String {
        self.k(&format!("sessions:orphaned:{instance}"))
    }

    /// Refreshes this instance's heartbeat every third of its TTL.
    pub fn spawn_heartbeat(self: &std::sync::Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let every = this.heartbeat_ttl / 3;
            loop {
                let (alive, instances, me) = (
                    this.alive_key(&this.instance),
                    this.k("instances"),
                    this.instance.clone(),
                );
                let ttl_ms = this.heartbeat_ttl.as_millis() as u64;
                let r = this
                    .redis
                    .call(|mut c| async move {
                        redis::pipe()
                            .cmd("SET")
                            .arg(&alive)
                            .arg(1)
                            .arg("PX")
                            .arg(ttl_ms)
                            .ignore()
                            .cmd("SADD")
                            .arg(&instances)
                            .arg(&me)
                            .ignore()
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
                match r {
                    Ok(()) => {
                        if let Err(e) = this.revive().await {
                            tracing::debug!(error = %e, "taking back orphaned sessions failed");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "session heartbeat failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    /// Sessions left attached to this instance id by a previous process of
    /// the same name (a restarted pod keeps its name) are detached with a
    /// fresh resume window; call before accepting connections.
    pub async fn adopt_previous_life(&self) -> Result<()> {
        let n = self.detach_sessions_of(&self.instance, false).await?;
        if n > 0 {
            tracing::info!(
                sessions = n,
                "sessions of this instance's previous process may now resume"
            );
        }
        Ok(())
    }

    /// Detaches every session attached to `instance`, giving each a fresh
    /// resume window; returns how many were detached. `presumed_dead`: its
    /// heartbeat was found missing (it may take them back if it lives).
    async fn detach_sessions_of(&self, instance: &str, presumed_dead: bool) -> Result<i64> {
        let expires = now_ms() + self.window.as_millis() as u64;
        let (on, detached, instances, orphaned, alive, prefix) = (
            self.on_key(instance),
            self.k("sessions:detached"),
            self.k("instances"),
            self.orphaned_key(instance),
            self.alive_key(instance),
            self.k("session:"),
        );
        let script = self.scripts[6].clone();
        let instance = instance.to_owned();
        let n: i64 = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&on)
                    .key(&detached)
                    .key(&instances)
                    .key(&orphaned)
                    .key(&alive)
                    .arg(expires)
                    .arg(&prefix)
                    .arg(&instance)
                    .arg(if presumed_dead { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n)
    }

    /// Takes back the sessions of this instance that another one detached
    /// while this one's heartbeat was missing (Redis restarted or was out
    /// of reach longer than the heartbeat TTL): their clients are still
    /// connected here, and the reaper must not end them.
    pub async fn revive(&self) -> Result<i64> {
        let (orphaned, detached, on, prefix) = (
            self.orphaned_key(&self.instance),
            self.k("sessions:detached"),
            self.on_key(&self.instance),
            self.k("session:"),
        );
        let script = self.scripts[7].clone();
        let instance = self.instance.clone();
        let n: i64 = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&orphaned)
                    .key(&detached)
                    .key(&on)
                    .arg(&prefix)
                    .arg(&instance)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n > 0 {
            tracing::warn!(
                sessions = n,
                "this instance's heartbeat had lapsed and its sessions were detached; attached again"
            );
        }
        Ok(n)
    }

    /// Detaches the sessions of instances whose heartbeat expired.
    async fn detach_orphans(&self) -> Result<()> {
        {
            let mut last = self
                .last_orphan_scan
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let key = self.k("instances");
        let instances: Vec<String> = self
            .redis
            .call(|mut c| async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut c).await })
            .await?;
        for other in instances.into_iter().filter(|i| *i != self.instance) {
            let alive = self.alive_key(&other);
            let exists: bool =
                self.redis
                    .call(|mut c| async move {
                        redis::cmd("EXISTS").arg(&alive).query_async(&mut c).await
                    })
                    .await?;
            if exists {
                continue;
            }
            let n = self.detach_sessions_of(&other, true).await?;
            if n < 0 {
                // Its heartbeat came back between the two reads.
                continue;
            }
            tracing::warn!(instance = %other, sessions = n, "instance stopped sending heartbeats; its sessions may resume elsewhere within the resume window");
        }
        Ok(())
    }
}

#[async_trait]
impl Sessions for RedisSessions {
    async fn create(&self, state: SessionState, owner: u64) -> Result<()> {
        let (key, all, on) = (
            self.session_key(&state.session),
            self.k("sessions:all"),
            self.on_key(&self.instance),
        );
        let script = self.scripts[0].clone();
        let json = encode(&state);
        let (instance, sid) = (self.instance.clone(), state.session.clone());
        self.redis
            .call(|mut c| async move {
                script
                    .key(&key)
                    .key(&all)
                    .key(&on)
                    .arg(&json)
                    .arg(owner.to_string())
                    .arg(&instance)
                    .arg(&sid)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn save(&self, state: &SessionState) -> Result<()> {
        let key = self.session_key(&state.session);
        let script = self.scripts[1].clone();
        let json = encode(state);
        self.redis
            .call(|mut c| async move {
                script
                    .key(&key)
                    .arg(&json)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn resume(&self, session: &str, token: &str, owner: u64) -> Result<ResumeOutcome> {
        let key = self.session_key(session);
        let k = key.clone();
        let fields: std::collections::HashMap<String, String> = self
            .redis
            .call(|mut c| async move { redis::cmd("HGETALL").arg(&k).query_async(&mut c).await })
            .await?;
        let (Some(json), Some(old_owner), Some(old_instance)) = (
            fields.get("state"),
            fields.get("owner"),
            fields.get("instance"),
        ) else {
            return Ok(ResumeOutcome::Refused);
        };
        let Some(state) = decode(json) else {
            return Ok(ResumeOutcome::Refused);
        };
        if !constant_time_eq(state.resume_token.as_bytes(), token.as_bytes()) {
            return Ok(ResumeOutcome::Refused);
        }
        let (detached, old_on, new_on) = (
            self.k("sessions:detached"),
            self.on_key(old_instance),
            self.on_key(&self.instance),
        );
        let script = self.scripts[2].clone();
        let (old_owner, instance, sid) =
            (old_owner.clone(), self.instance.clone(), session.to_owned());
        let claimed: i64 = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&key)
                    .key(&detached)
                    .key(&old_on)
                    .key(&new_on)
                    .arg(&old_owner)
                    .arg(owner.to_string())
                    .arg(&instance)
                    .arg(&sid)
                    .arg(now_ms())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if claimed == 1 {
            ResumeOutcome::Resumed(state)
        } else {
            ResumeOutcome::Refused
        })
    }

    async fn detach(&self, state: &SessionState, owner: u64, window: Duration) -> Result<()> {
        let (key, detached, on, orphaned) = (
            self.session_key(&state.session),
            self.k("sessions:detached"),
            self.on_key(&self.instance),
            self.orphaned_key(&self.instance),
        );
        let script = self.scripts[3].clone();
        let json = encode(state);
        let expires = now_ms() + window.as_millis() as u64;
        let sid = state.session.clone();
        self.redis
            .call(|mut c| async move {
                script
                    .key(&key)
                    .key(&detached)
                    .key(&on)
                    .key(&orphaned)
                    .arg(owner.to_string())
                    .arg(&json)
                    .arg(expires)
                    .arg(&sid)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn remove(&self, session: &str) -> Result<Option<SessionState>> {
        let (key, detached, all, prefix) = (
            self.session_key(session),
            self.k("sessions:detached"),
            self.k("sessions:all"),
            self.k("sessions:on:"),
        );
        let script = self.scripts[4].clone();
        let sid = session.to_owned();
        let json: Option<String> = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&key)
                    .key(&detached)
                    .key(&all)
                    .arg(&sid)
                    .arg(&prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(json.as_deref().and_then(decode))
    }

    async fn take_expired(&self) -> Result<Vec<SessionState>> {
        self.detach_orphans().await?;
        let detached = self.k("sessions:detached");
        let d = detached.clone();
        let due: Vec<String> = self
            .redis
            .call(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&d)
                    .arg("-inf")
                    .arg(now_ms())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for sid in due {
            let (key, detached, all) = (
                self.session_key(&sid),
                detached.clone(),
                self.k("sessions:all"),
            );
            let script = self.scripts[5].clone();
            let json: Option<String> = self
                .redis
                .call(|mut c| async move {
                    script
                        .key(&key)
                        .key(&detached)
                        .key(&all)
                        .arg(&sid)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if let Some(state) = json.as_deref().and_then(decode) {
                out.push(state);
            }
        }
        Ok(out)
    }

    async fn count(&self) -> Result<usize> {
        let all = self.k("sessions:all");
        Ok(self
            .redis
            .call(|mut c| async move {
                redis::cmd("SCARD")
                    .arg(&all)
                    .query_async::<usize>(&mut c)
                    .await
            })
            .await?)
    }
}
