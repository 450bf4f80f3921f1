//! A reliable work queue on Redis Streams with a consumer group, for work
//! that must happen even while its target is down.
//!
//! Keys (under the connection's prefix, `<p>:queue:<name>`):
//! - `…:stream`  entries ready to run (fields `kind`, `payload`, `attempt`,
//!   and `last_error` after a failure); read with XREADGROUP.
//! - `…:delayed` a sorted set of entries waiting for their retry time
//!   (score = due time in ms); promoted back into the stream when due.
//! - `…:dead`    the dead-letter stream: entries whose last attempt failed,
//!   with `last_error`, `attempts`, `failed_at_ms`, `source_id`.
//!
//! Every move between these keys is one Lua script, so an entry is never
//! lost or duplicated by a crash between two steps. A consumer that dies
//! with entries in flight leaves them pending in the group; another consumer
//! claims them with XAUTOCLAIM once they have been idle for `claim_idle`.
//! Delivery is at least once: handlers must be idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::connection::{RedisConnection, manager_config};
use super::error::BackendError;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Queue name, part of the keys.
    pub name: String,
    /// Consumer group shared by every instance.
    pub group: String,
    /// This consumer's name, unique per instance (e.g. the pod name).
    pub consumer: String,
    /// Attempts in total, the first one included; after the last failure
    /// the entry goes to the dead-letter stream.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each attempt.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Pending entries idle this long belong to a dead consumer and are claimed.
    pub claim_idle: Duration,
    /// Entries read per round.
    pub batch: usize,
    /// How long one XREADGROUP waits for new entries; also bounds how late
    /// a due retry is promoted.
    pub block: Duration,
}

impl QueueConfig {
    pub fn new(name: impl Into<String>, consumer: impl Into<String>) -> Self {
        QueueConfig {
            name: name.into(),
            group: "workers".to_string(),
            consumer: consumer.into(),
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            claim_idle: Duration::from_secs(30),
            batch: 32,
            block: Duration::from_millis(200),
        }
    }

    /// The delay before attempt `next_attempt` (2, 3, …): exponential,
    /// capped, with "equal jitter" (between half and all of it) so a burst
    /// of failures does not retry in lockstep.
    pub fn backoff_before(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let full = self
            .base_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// One unit of work as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Stream entry id of this delivery.
    pub id: String,
    pub kind: String,
    pub payload: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// Worth retrying later (target down, timeout).
    Retry(String),
    /// Will never succeed as it is (malformed, rejected): dead-letter now.
    Permanent(String),
}

impl JobFailure {
    fn message(&self) -> &str {
        match self {
            JobFailure::Retry(m) | JobFailure::Permanent(m) => m,
        }
    }
}

#[async_trait::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &Job) -> Result<(), JobFailure>;
}

/// An entry of the dead-letter stream, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    pub payload: String,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at_ms: u64,
    /// The stream entry id of the last failed delivery.
    pub source_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct QueueDepth {
    /// In the stream, not yet delivered to any consumer.
    pub ready: u64,
    /// Delivered and not yet acknowledged (in flight or of a dead consumer).
    pub pending: u64,
    /// Waiting for a retry.
    pub delayed: u64,
    pub dead: u64,
}

impl QueueDepth {
    pub fn outstanding(&self) -> u64 {
        self.ready + self.pending + self.delayed
    }
}

/// Queue metrics; no per-entry labels.
#[derive(Debug, Clone, Default)]
pub struct QueueMetrics {
    pub enqueued: Counter,
    pub processed: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub redriven: Counter,
    pub claimed: Counter,
    pub depth: Gauge,
    pub dead_letters: Gauge,
}

impl QueueMetrics {
    /// The process's queue metrics, registered by [`crate::metrics::Metrics`].
    pub fn global() -> &'static QueueMetrics {
        static GLOBAL: std::sync::OnceLock<QueueMetrics> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(QueueMetrics::default)
    }

    /// Registers as `videochat_signaling_queue_*`.
    pub fn register(&self, registry: &mut Registry) {
        let p = "videochat_signaling_queue_";
        registry.register(
            format!("{p}enqueued"),
            "Entries added to the reliable queue",
            self.enqueued.clone(),
        );
        registry.register(
            format!("{p}processed"),
            "Entries handled successfully",
            self.processed.clone(),
        );
        registry.register(
            format!("{p}retries"),
            "Failed attempts scheduled for a retry",
            self.retries.clone(),
        );
        registry.register(
            format!("{p}dead_lettered"),
            "Entries moved to the dead-letter stream",
            self.dead_lettered.clone(),
        );
        registry.register(
            format!("{p}redriven"),
            "Dead letters re-driven into the queue",
            self.redriven.clone(),
        );
        registry.register(
            format!("{p}claimed"),
            "Pending entries claimed from a dead consumer",
            self.claimed.clone(),
        );
        registry.register(
            format!("{p}depth"),
            "Entries ready, in flight or waiting for a retry",
            self.depth.clone(),
        );
        registry.register(
            format!("{p}dead_letters"),
            "Entries in the dead-letter stream",
            self.dead_letters.clone(),
        );
    }
}

// KEYS: stream. ARGV: group, id. Acknowledges and deletes a finished entry.
const ACK_SCRIPT: &str = r#"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return n
"#;

// KEYS: stream, delayed. ARGV: group, id, due_ms, member (JSON).
// Only the consumer whose XACK succeeds moves the entry, so a slow consumer
// racing a claimer cannot schedule it twice.
const RETRY_SCRIPT: &str = r#"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return n
"#;

// KEYS: stream, dead. ARGV: group, id, kind, payload, attempts, last_error, failed_at_ms.
const DEAD_SCRIPT: &str = r#"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 then
  redis.call('XADD', KEYS[2], '*', 'kind', ARGV[3], 'payload', ARGV[4], 'attempts', ARGV[5],
             'last_error', ARGV[6], 'failed_at_ms', ARGV[7], 'source_id', ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return n
"#;

// KEYS: stream, delayed. ARGV: now_ms, limit. Moves due retries back.
const PROMOTE_SCRIPT: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local e = cjson.decode(member)
  redis.call('XADD', KEYS[1], '*', 'kind', e.kind, 'payload', e.payload,
             'attempt', tostring(e.attempt), 'last_error', e.last_error)
  redis.call('ZREM', KEYS[2], member)
end
return #due
"#;

// KEYS: stream, dead. ARGV: dead id. Re-drives one dead letter with a fresh
// set of attempts; returns the new entry id, or false when there is none.
const REDRIVE_SCRIPT: &str = r#"
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local kind, payload = '', ''
for i = 1, #f, 2 do
  if f[i] == 'kind' then kind = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
end
local id = redis.call('XADD', KEYS[1], '*', 'kind', kind, 'payload', payload, 'attempt', '1',
                      'redriven_from', ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
return id
"#;

struct Keys {
    stream: String,
    delayed: String,
    dead: String,
}

/// The queue: producers call [`ReliableQueue::enqueue`]; one worker per
/// instance runs [`ReliableQueue::run`] with a handler.
pub struct ReliableQueue {
    conn: RedisConnection,
    config: QueueConfig,
    keys: Keys,
    metrics: QueueMetrics,
    ack: redis::Script,
    retry: redis::Script,
    dead: redis::Script,
    promote: redis::Script,
    redrive: redis::Script,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn field_str(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn is_busygroup(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP")
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

impl ReliableQueue {
    pub fn new(conn: RedisConnection, config: QueueConfig, metrics: QueueMetrics) -> Arc<Self> {
        let base = conn.key(&format!("queue:{}", config.name));
        Arc::new(ReliableQueue {
            keys: Keys {
                stream: format!("{base}:stream"),
                delayed: format!("{base}:delayed"),
                dead: format!("{base}:dead"),
            },
            conn,
            config,
            metrics,
            ack: redis::Script::new(ACK_SCRIPT),
            retry: redis::Script::new(RETRY_SCRIPT),
            dead: redis::Script::new(DEAD_SCRIPT),
            promote: redis::Script::new(PROMOTE_SCRIPT),
            redrive: redis::Script::new(REDRIVE_SCRIPT),
        })
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }

    /// Creates the stream and the consumer group when missing. Called by
    /// `run` and after a Redis restart that lost them.
    pub async fn ensure_group(&self) -> Result<(), BackendError> {
        let stream = self.keys.stream.clone();
        let group = self.config.group.clone();
        self.conn
            .call(|mut c| async move {
                let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(&group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await;
                match r {
                    Err(e) if is_busygroup(&e) => Ok(()),
                    other => other,
                }
            })
            .await
    }

    /// Adds an entry; once this returns, the entry is in Redis (and its AOF)
    /// and will be handled. Returns the entry id.
    pub async fn enqueue(&self, kind: &str, payload: &str) -> Result<String, BackendError> {
        let stream = self.keys.stream.clone();
        let (kind, payload) = (kind.to_string(), payload.to_string());
        let id = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("kind")
                    .arg(&kind)
                    .arg("payload")
                    .arg(&payload)
                    .arg("attempt")
                    .arg(1)
                    .query_async::<String>(&mut c)
                    .await
            })
            .await?;
        self.metrics.enqueued.inc();
        Ok(id)
    }

    /// Dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let dead = self.keys.dead.clone();
        let reply: redis::streams::StreamRangeReply = self
            .conn
            .call(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| DeadLetter {
                kind: field_str(&e.map, "kind").unwrap_or_default(),
                payload: field_str(&e.map, "payload").unwrap_or_default(),
                attempts: field_str(&e.map, "attempts")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                last_error: field_str(&e.map, "last_error").unwrap_or_default(),
                failed_at_ms: field_str(&e.map, "failed_at_ms")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                source_id: field_str(&e.map, "source_id").unwrap_or_default(),
                id: e.id,
            })
            .collect())
    }

    /// Moves one dead letter back into the queue with a fresh set of
    /// attempts. `Ok(None)` when no dead letter has that id.
    pub async fn redrive(&self, dead_id: &str) -> Result<Option<String>, BackendError> {
        if !is_stream_id(dead_id) {
            return Ok(None);
        }
        let (stream, dead) = (self.keys.stream.clone(), self.keys.dead.clone());
        let script = self.redrive.clone();
        let dead_id = dead_id.to_string();
        let id: Option<String> = self
            .conn
            .call(|mut c| async move {
                script
                    .key(&stream)
                    .key(&dead)
                    .arg(&dead_id)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if id.is_some() {
            self.metrics.redriven.inc();
            self.metrics.dead_letters.dec();
        }
        Ok(id)
    }

    /// Counts of each part of the queue; also refreshes the gauges.
    pub async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let (stream, delayed, dead, group) = (
            self.keys.stream.clone(),
            self.keys.delayed.clone(),
            self.keys.dead.clone(),
            self.config.group.clone(),
        );
        let (len, delayed_n, dead_n, pending): (u64, u64, u64, Value) = self
            .conn
            .call(|mut c| async move {
                let (len, delayed_n, dead_n): (u64, u64, u64) = redis::pipe()
                    .cmd("XLEN")
                    .arg(&stream)
                    .cmd("ZCARD")
                    .arg(&delayed)
                    .cmd("XLEN")
                    .arg(&dead)
                    .query_async(&mut c)
                    .await?;
                let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(&group)
                    .query_async(&mut c)
                    .await;
                let pending = match pending {
                    Err(e) if is_nogroup(&e) => Value::Nil,
                    other => other?,
                };
                Ok((len, delayed_n, dead_n, pending))
            })
            .await?;
        let pending_n = match pending {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        // Acked entries are deleted, so the stream holds exactly the entries
        // not yet delivered plus those pending.
        let depth = QueueDepth {
            ready: len.saturating_sub(pending_n),
            pending: pending_n,
            delayed: delayed_n,
            dead: dead_n,
        };
        self.metrics.depth.set(depth.outstanding() as i64);
        self.metrics.dead_letters.set(depth.dead as i64);
        Ok(depth)
    }

    /// Runs the worker until `shutdown`: promotes due retries, claims
    /// entries of dead consumers, reads new entries and hands each to
    /// `handler`. Redis outages are waited out with backoff.
    pub async fn run(self: Arc<Self>, handler: Arc<dyn JobHandler>, shutdown: CancellationToken) {
        // A connection of its own: XREADGROUP BLOCK would hold up every
        // other command on the shared multiplexed connection.
        let mut config = self.conn.config().clone();
        config.response_timeout += self.config.block;
        let mut reader = match ConnectionManager::new_lazy_with_config(
            self.conn.client().clone(),
            manager_config(&config),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(queue = %self.config.name, error = %e, "queue worker cannot create its connection");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        let mut group_ready = false;
        let mut last_claim = std::time::Instant::now() - self.config.claim_idle;
        let mut last_depth = std::time::Instant::now() - Duration::from_secs(10);
        while !shutdown.is_cancelled() {
            let round = async {
                if !group_ready {
                    self.ensure_group().await?;
                    group_ready = true;
                }
                self.promote_due().await?;
                let claim_every = (self.config.claim_idle / 2).max(Duration::from_millis(50));
                if last_claim.elapsed() >= claim_every {
                    last_claim = std::time::Instant::now();
                    self.claim_stale(&handler).await?;
                }
                if last_depth.elapsed() >= Duration::from_secs(1) {
                    last_depth = std::time::Instant::now();
                    self.depth().await?;
                }
                self.read_new(&mut reader, &handler).await
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = round => r,
            };
            match result {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    if e.to_string().contains("NOGROUP") {
                        // Redis lost the group (restart without AOF): recreate.
                        group_ready = false;
                    }
                    tracing::warn!(queue = %self.config.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "queue worker round failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One round without blocking, for tests and tools: promote, claim,
    /// read. Returns how many entries were handled.
    pub async fn run_once(&self, handler: &Arc<dyn JobHandler>) -> Result<usize, BackendError> {
        self.ensure_group().await?;
        self.promote_due().await?;
        let mut n = self.claim_stale(handler).await?;
        let mut reader = self
            .conn
            .client()
            .get_multiplexed_async_connection()
            .await?;
        n += self.read_new_on(&mut reader, handler, false).await?;
        Ok(n)
    }

    async fn promote_due(&self) -> Result<usize, BackendError> {
        let (stream, delayed) = (self.keys.stream.clone(), self.keys.delayed.clone());
        let script = self.promote.clone();
        let batch = self.config.batch;
        self.conn
            .call(|mut c| async move {
                script
                    .key(&stream)
                    .key(&delayed)
                    .arg(now_ms())
                    .arg(batch)
                    .invoke_async::<usize>(&mut c)
                    .await
            })
            .await
    }

    async fn claim_stale(&self, handler: &Arc<dyn JobHandler>) -> Result<usize, BackendError> {
        let (stream, group, consumer) = (
            self.keys.stream.clone(),
            self.config.group.clone(),
            self.config.consumer.clone(),
        );
        let idle_ms = self.config.claim_idle.as_millis() as u64;
        let batch = self.config.batch;
        let mut start = "0-0".to_string();
        let mut handled = 0;
        // Bounded: at most a few pages per round so new work is not starved.
        for _ in 0..4 {
            let from = start.clone();
            let (stream, group, consumer) = (stream.clone(), group.clone(), consumer.clone());
            let reply: redis::streams::StreamAutoClaimReply = self
                .conn
                .call(|mut c| async move {
                    redis::cmd("XAUTOCLAIM")
                        .arg(&stream)
                        .arg(&group)
                        .arg(&consumer)
                        .arg(idle_ms)
                        .arg(&from)
                        .arg("COUNT")
                        .arg(batch)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for entry in &reply.claimed {
                self.metrics.claimed.inc();
                tracing::info!(queue = %self.config.name, id = %entry.id, consumer = %self.config.consumer, "claimed an entry of a dead consumer");
                self.handle_entry(entry, handler).await?;
                handled += 1;
            }
            if reply.next_stream_id == "0-0" || reply.claimed.is_empty() {
                break;
            }
            start = reply.next_stream_id;
        }
        Ok(handled)
    }

    async fn read_new(
        &self,
        reader: &mut ConnectionManager,
        handler: &Arc<dyn JobHandler>,
    ) -> Result<usize, BackendError> {
        self.read_new_on(reader, handler, true).await
    }

    async fn read_new_on<C: redis::aio::ConnectionLike + Send>(
        &self,
        reader: &mut C,
        handler: &Arc<dyn JobHandler>,
        block: bool,
    ) -> Result<usize, BackendError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.batch);
        if block {
            cmd.arg("BLOCK").arg(self.config.block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.keys.stream).arg(">");
        let reply: Option<redis::streams::StreamReadReply> = cmd.query_async(reader).await?;
        let mut handled = 0;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in &key.ids {
                self.handle_entry(entry, handler).await?;
                handled += 1;
            }
        }
        Ok(handled)
    }

    async fn handle_entry(
        &self,
        entry: &redis::streams::StreamId,
        handler: &Arc<dyn JobHandler>,
    ) -> Result<(), BackendError> {
        let job = Job {
            id: entry.id.clone(),
            kind: field_str(&entry.map, "kind").unwrap_or_default(),
            payload: field_str(&entry.map, "payload").unwrap_or_default(),
            attempt: field_str(&entry.map, "attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1)
                .max(1),
        };
        let outcome = handler.handle(&job).await;
        let (stream, delayed, dead, group) = (
            self.keys.stream.clone(),
            self.keys.delayed.clone(),
            self.keys.dead.clone(),
            self.config.group.clone(),
        );
        match outcome {
            Ok(()) => {
                let script = self.ack.clone();
                let id = job.id.clone();
                self.conn
                    .call(|mut c| async move {
                        script
                            .key(&stream)
                            .arg(&group)
                            .arg(&id)
                            .invoke_async::<i64>(&mut c)
                            .await
                    })
                    .await?;
                self.metrics.processed.inc();
            }
            Err(failure) => {
                let permanent = matches!(failure, JobFailure::Permanent(_));
                let error = failure.message().to_string();
                if !permanent && job.attempt < self.config.max_attempts {
                    let next = job.attempt + 1;
                    let delay = self.config.backoff_before(next);
                    let member = serde_json::json!({
                        "kind": job.kind,
                        "payload": job.payload,
                        "attempt": next,
                        "last_error": error,
                        // Makes the member unique even for equal payloads.
                        "source_id": job.id,
                    })
                    .to_string();
                    let script = self.retry.clone();
                    let id = job.id.clone();
                    let due = now_ms() + delay.as_millis() as u64;
                    let moved: i64 = self
                        .conn
                        .call(|mut c| async move {
                            script
                                .key(&stream)
                                .key(&delayed)
                                .arg(&group)
                                .arg(&id)
                                .arg(due)
                                .arg(&member)
                                .invoke_async(&mut c)
                                .await
                        })
                        .await?;
                    if moved == 1 {
                        self.metrics.retries.inc();
                        tracing::info!(queue = %self.config.name, id = %job.id, kind = %job.kind, attempt = job.attempt, retry_in_ms = delay.as_millis() as u64, error = %error, "job failed; retrying later");
                    }
                } else {
                    let script = self.dead.clone();
                    let id = job.id.clone();
                    let (kind, payload) = (job.kind.clone(), job.payload.clone());
                    let attempts = job.attempt;
                    let err = error.clone();
                    let moved: i64 = self
                        .conn
                        .call(|mut c| async move {
                            script
                                .key(&stream)
                                .key(&dead)
                                .arg(&group)
                                .arg(&id)
                                .arg(&kind)
                                .arg(&payload)
                                .arg(attempts)
                                .arg(&err)
                                .arg(now_ms())
                                .invoke_async(&mut c)
                                .await
                        })
                        .await?;
                    if moved == 1 {
                        self.metrics.dead_lettered.inc();
                        self.metrics.dead_letters.inc();
                        tracing::warn!(queue = %self.config.name, id = %job.id, kind = %job.kind, attempts = job.attempt, permanent, error = %error, "job moved to the dead-letter stream");
                    }
                }
            }
        }
        Ok(())
    }
}

/// `<ms>-<seq>`: the only ids the admin API passes on to Redis.
pub fn is_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or("");
    let seq = parts.next().unwrap_or("");
    !ms.is_empty()
        && !seq.is_empty()
        && ms.len() <= 20
        && seq.len() <= 20
        && ms.bytes().all(|b| b.is_ascii_digit())
        && seq.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut c = QueueConfig::new("q", "c");
        c.base_backoff = Duration::from_millis(100);
        c.max_backoff = Duration::from_millis(1000);
        for _ in 0..50 {
            let d2 = c.backoff_before(2);
            assert!(
                d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100),
                "{d2:?}"
            );
            let d3 = c.backoff_before(3);
            assert!(
                d3 >= Duration::from_millis(100) && d3 <= Duration::from_millis(200),
                "{d3:?}"
            );
            let d20 = c.backoff_before(20);
            assert!(
                d20 >= Duration::from_millis(500) && d20 <= Duration::from_millis(1000),
                "{d20:?}"
            );
        }
    }

    #[test]
    fn only_stream_ids_pass() {
        assert!(is_stream_id("1700000000000-0"));
        assert!(!is_stream_id("-"));
        assert!(!is_stream_id("+"));
        assert!(!is_stream_id("1-"));
        assert!(!is_stream_id("abc-1"));
        assert!(!is_stream_id("1-2-3"));
    }
}
