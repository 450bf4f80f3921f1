//! Room membership in Redis, shared by every instance: a hash per room
//! (peer → display name) and a set of non-empty rooms. Membership follows
//! the session: a crashed instance's peers leave when the session reaper
//! ends their sessions after the resume window; room hashes also expire
//! after a day without joins so nothing outlives a whole-cluster loss.

use async_trait::async_trait;

use super::connection::RedisConnection;
use crate::error::Result;
use crate::presence::{JoinOutcome, Presence};
use crate::protocol::PeerInfo;

const ROOM_TTL_SECS: u64 = 24 * 3600;

// KEYS: members hash, rooms set. ARGV: room, peer, name, max_peers, ttl.
// Returns {new (0/1/-1 for full), peer1, name1, …} of the other members.
const JOIN_SCRIPT: &str = r#"
local new = 1
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  new = 0
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return {-1}
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('SADD', KEYS[2], ARGV[1])
local out = {new}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[2] then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
"#;

// KEYS: members hash, rooms set. ARGV: room, peer.
const LEAVE_SCRIPT: &str = r#"
local was = redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return was
"#;

pub struct RedisPresence {
    redis: RedisConnection,
    join: redis::Script,
    leave: redis::Script,
}

impl RedisPresence {
    pub fn new(redis: RedisConnection) -> Self {
        RedisPresence {
            redis,
            join: redis::Script::new(JOIN_SCRIPT),
            leave: redis::Script::new(LEAVE_SCRIPT),
        }
    }

    fn members_key(&self, room: &str) -> String {
        self.redis.key(&format!("presence:room:{room}"))
    }

    fn rooms_key(&self) -> String {
        self.redis.key("presence:rooms")
    }
}

fn pairs(values: &[redis::Value]) -> Vec<PeerInfo> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    values
        .chunks_exact(2)
        .map(|c| PeerInfo {
            peer: text(&c[0]),
            name: text(&c[1]),
        })
        .collect()
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(
        &self,
        room: &str,
        peer: &str,
        name: &str,
        max_peers: u32,
    ) -> Result<JoinOutcome> {
        let (members, rooms) = (self.members_key(room), self.rooms_key());
        let script = self.join.clone();
        let reply: Vec<redis::Value> = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&members)
                    .key(&rooms)
                    .arg(room)
                    .arg(peer)
                    .arg(name)
                    .arg(max_peers)
                    .arg(ROOM_TTL_SECS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let flag = match reply.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -2,
        };
        match flag {
            -1 => Ok(JoinOutcome::Full),
            0 | 1 => {
                let mut others = pairs(&reply[1..]);
                others.sort_by(|a, b| a.peer.cmp(&b.peer));
                Ok(JoinOutcome::Joined {
                    others,
                    new: flag == 1,
                })
            }
            _ => Err(super::BackendError::Protocol {
                backend: "redis",
                reason: "unexpected presence join reply".into(),
            }
            .into()),
        }
    }

    async fn leave(&self, room: &str, peer: &str) -> Result<bool> {
        let (members, rooms) = (self.members_key(room), self.rooms_key());
        let script = self.leave.clone();
        let n: i64 = self
            .redis
            .call(|mut c| async move {
                script
                    .key(&members)
                    .key(&rooms)
                    .arg(room)
                    .arg(peer)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn members(&self, room: &str) -> Result<Vec<PeerInfo>> {
        let key = self.members_key(room);
        let all: std::collections::HashMap<String, String> = self
            .redis
            .call(|mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await })
            .await?;
        let mut members: Vec<PeerInfo> = all
            .into_iter()
            .map(|(peer, name)| PeerInfo { peer, name })
            .collect();
        members.sort_by(|a, b| a.peer.cmp(&b.peer));
        Ok(members)
    }

    async fn is_member(&self, room: &str, peer: &str) -> Result<bool> {
        let key = self.members_key(room);
        let n: i64 = self
            .redis
            .call(|mut c| async move {
                redis::cmd("HEXISTS")
                    .arg(&key)
                    .arg(peer)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn room_count(&self) -> Result<usize> {
        let key = self.rooms_key();
        let n: usize = self
            .redis
            .call(|mut c| async move { redis::cmd("SCARD").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(n)
    }
}
