//! Cluster mode: the backends several instances share — Redis for the bus,
//! presence, sessions and the reliable queue, MongoDB for rooms and chat —
//! chosen by `--redis-url` / `--mongodb-uri` (or their `*_FILE` variants).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::bus::RedisBus;
use super::connection::{RedisConfig, RedisConnection};
use super::dead_letters::QueueDeadLetters;
use super::presence::RedisPresence;
use super::queue::{QueueConfig, QueueMetrics, ReliableQueue};
use super::secret::read_secret;
use super::sessions::RedisSessions;
use super::webhook::{WebhookHandler, WebhookStore, WebhookTarget};
use crate::bus::{Bus, InProcessBus};
use crate::config::{Config, parse_duration};
use crate::dead_letters::{DeadLetters, NoDeadLetters};
use crate::error::{Result, SignalingError};
use crate::mongo::{MongoConfig, MongoStore};
use crate::presence::{InProcessPresence, Presence};
use crate::sessions::{InProcessSessions, Sessions};
use crate::state::Backends;
use crate::store::{EmbeddedStore, Store};

/// Settings of cluster mode (flattened into [`Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// This instance's name in Redis (session ownership, queue consumer).
    /// Default: $HOSTNAME (the pod name in Kubernetes), else a random id.
    #[arg(long, env = "VIDEOCHAT_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, env = "VIDEOCHAT_REDIS_KEY_PREFIX", default_value = "videochat")]
    pub redis_key_prefix: String,

    /// Readiness while Redis is down: true keeps the instance in the Service
    /// (its local rooms keep working), false takes it out until Redis is back.
    /// The store being down always makes the instance unready.
    #[arg(long, env = "VIDEOCHAT_READY_WITHOUT_REDIS", default_value_t = true, action = clap::ArgAction::Set)]
    pub ready_without_redis: bool,

    /// Upper bound of one Redis or MongoDB call, connection included.
    #[arg(long, env = "VIDEOCHAT_BACKEND_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub backend_timeout: Duration,

    /// Consecutive failures after which a dependency's circuit breaker opens.
    #[arg(long, env = "VIDEOCHAT_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,

    /// How long an open breaker fails calls at once before one trial call.
    #[arg(long, env = "VIDEOCHAT_BREAKER_OPEN_FOR", default_value = "1s", value_parser = parse_duration)]
    pub breaker_open_for: Duration,

    /// POST every newly stored chat message as JSON to this http:// URL,
    /// through the reliable queue (needs --redis-url).
    #[arg(long, env = "VIDEOCHAT_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Attempts of a queued job before it moves to the dead-letter stream.
    #[arg(long, env = "VIDEOCHAT_QUEUE_MAX_ATTEMPTS", default_value_t = 8)]
    pub queue_max_attempts: u32,

    /// Delay before a job's second attempt; doubles per attempt, with jitter.
    #[arg(long, env = "VIDEOCHAT_QUEUE_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub queue_backoff: Duration,

    /// Longest delay between two attempts of a job.
    #[arg(long, env = "VIDEOCHAT_QUEUE_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub queue_max_backoff: Duration,

    /// A job in flight this long on a silent instance is claimed by another.
    #[arg(long, env = "VIDEOCHAT_QUEUE_CLAIM_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub queue_claim_idle: Duration,

    /// How often each instance re-checks its rooms' newest chat in the store
    /// (catches up chat that pub/sub lost during a Redis outage).
    #[arg(long, env = "VIDEOCHAT_CHAT_SWEEP", default_value = "2s", value_parser = parse_duration)]
    pub chat_sweep: Duration,

    /// An instance silent this long counts as dead: its sessions can resume
    /// elsewhere and end after the resume window.
    #[arg(long, env = "VIDEOCHAT_INSTANCE_TTL", default_value = "6s", value_parser = parse_duration)]
    pub instance_ttl: Duration,
}

/// The connection strings, read from flags, env or files; never logged.
pub struct ClusterUrls {
    pub redis: Option<String>,
    pub mongodb: Option<String>,
}

pub fn cluster_urls(config: &Config) -> Result<ClusterUrls> {
    let redis = read_secret(
        "VIDEOCHAT_REDIS_URL",
        "VIDEOCHAT_REDIS_URL_FILE",
        config.redis_url.as_deref(),
        config.redis_url_file.as_deref(),
    )?;
    let mongodb = read_secret(
        "VIDEOCHAT_MONGODB_URI",
        "VIDEOCHAT_MONGODB_URI_FILE",
        config.mongodb_uri.as_deref(),
        config.mongodb_uri_file.as_deref(),
    )?;
    if redis.is_some() && mongodb.is_none() {
        return Err(SignalingError::config(
            "VIDEOCHAT_REDIS_URL",
            "several instances need a shared store: set VIDEOCHAT_MONGODB_URI too",
        ));
    }
    if config.cluster.webhook_url.is_some() && redis.is_none() {
        return Err(SignalingError::config(
            "VIDEOCHAT_WEBHOOK_URL",
            "webhooks go through the Redis queue: set VIDEOCHAT_REDIS_URL too",
        ));
    }
    if config.cluster.redis_key_prefix.is_empty()
        || config.cluster.redis_key_prefix.len() > 64
        || config
            .cluster
            .redis_key_prefix
            .contains(char::is_whitespace)
    {
        return Err(SignalingError::config(
            "VIDEOCHAT_REDIS_KEY_PREFIX",
            "must be 1 to 64 characters without spaces",
        ));
    }
    if config.cluster.queue_max_attempts == 0 {
        return Err(SignalingError::config(
            "VIDEOCHAT_QUEUE_MAX_ATTEMPTS",
            "must be at least 1",
        ));
    }
    Ok(ClusterUrls { redis, mongodb })
}

/// True when a Redis URL or MongoDB URI is configured (by value or file).
pub fn is_cluster_mode(config: &Config) -> bool {
    config.redis_url.is_some()
        || config.redis_url_file.is_some()
        || config.mongodb_uri.is_some()
        || config.mongodb_uri_file.is_some()
}

fn instance_id(config: &Config) -> String {
    let raw = config
        .cluster
        .instance_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("i-{:016x}", rand::random::<u64>()));
    // Part of Redis keys and channel names: keep it tame.
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect()
}

/// Opens the configured backends. Unreachable dependencies are not an
/// error here: they are retried in the background with backoff and
/// reported on `/readyz`; malformed settings are.
pub async fn cluster_backends(config: &Config, shutdown: CancellationToken) -> Result<Backends> {
    let urls = cluster_urls(config)?;
    let c = &config.cluster;
    let probe_every = Duration::from_millis(500);
    let max_backoff = Duration::from_secs(5);

    let mut store: Arc<dyn Store> = match &urls.mongodb {
        Some(uri) => {
            let mut mc = MongoConfig::new(uri.clone());
            mc.op_timeout = c.backend_timeout;
            mc.breaker_failures = c.breaker_failures;
            mc.breaker_open_for = c.breaker_open_for;
            let mongo = Arc::new(MongoStore::connect(mc).await?);
            tracing::info!(uri = %mongo.redacted_uri(), "store: mongodb");
            mongo.spawn_health_probe(probe_every, max_backoff, shutdown.clone());
            mongo
        }
        None => Arc::new(EmbeddedStore::open(&config.data_dir)?),
    };

    let Some(redis_url) = urls.redis else {
        return Ok(Backends {
            store,
            bus: Arc::new(InProcessBus::new()),
            presence: Arc::new(InProcessPresence::new()),
            sessions: Arc::new(InProcessSessions::new()),
            dead_letters: Arc::new(NoDeadLetters),
        });
    };

    let instance = instance_id(config);
    let mut rc = RedisConfig::new(redis_url);
    rc.key_prefix = c.redis_key_prefix.clone();
    rc.connect_timeout = c.backend_timeout;
    rc.response_timeout = c.backend_timeout;
    rc.breaker_failures = c.breaker_failures;
    rc.breaker_open_for = c.breaker_open_for;
    let redis = RedisConnection::connect(rc)?;
    tracing::info!(url = %redis.redacted_url(), %instance, "bus, presence, sessions and queue: redis");
    redis.spawn_health_probe(probe_every, max_backoff, shutdown.clone());

    let mut qc = QueueConfig::new("jobs", instance.clone());
    qc.max_attempts = c.queue_max_attempts;
    qc.base_backoff = c.queue_backoff;
    qc.max_backoff = c.queue_max_backoff;
    qc.claim_idle = c.queue_claim_idle;
    let queue = ReliableQueue::new(redis.clone(), qc, QueueMetrics::global().clone());
    if let Some(url) = &c.webhook_url {
        let target = WebhookTarget::parse(url)?;
        let handler = Arc::new(WebhookHandler::new(target, c.backend_timeout * 5));
        tokio::spawn(queue.clone().run(handler, shutdown.clone()));
        store = Arc::new(WebhookStore::new(store, queue.clone()));
    }
    let dead_letters: Arc<dyn DeadLetters> = Arc::new(QueueDeadLetters::new(queue));

    let sessions = Arc::new(
        RedisSessions::new(redis.clone(), instance.clone(), config.resume_window)
            .with_heartbeat_ttl(c.instance_ttl),
    );
    if let Err(e) = sessions.adopt_previous_life().await {
        tracing::warn!(error = %e, "could not release sessions of a previous process of this instance");
    }
    sessions.spawn_heartbeat(shutdown.clone());
    let bus: Arc<dyn Bus> =
        RedisBus::start(&redis, instance, store.clone(), c.chat_sweep, shutdown)?;
    let presence: Arc<dyn Presence> = Arc::new(RedisPresence::new(redis));
    let sessions: Arc<dyn Sessions> = sessions;
    Ok(Backends {
        store,
        bus,
        presence,
        sessions,
        dead_letters,
    })
}
