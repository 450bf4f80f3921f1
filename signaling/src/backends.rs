//! Which backends serve this instance, chosen by configuration: the
//! single-machine ones (embedded store, in-process bus, presence and
//! sessions), or cluster mode's (Redis for the bus, presence, sessions and
//! the reliable queue, MongoDB for rooms and chat) when `--redis-url` /
//! `--mongodb-uri` (or their `*_FILE` variants) are set.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, InProcessBus};
use crate::config::{ClusterUrls, Config};
use crate::dead_letters::{DeadLetters, NoDeadLetters};
use crate::error::Result;
use crate::mongo::{MongoConfig, MongoStore};
use crate::presence::{InProcessPresence, Presence};
use crate::redis::bus::RedisBus;
use crate::redis::dead_letters::QueueDeadLetters;
use crate::redis::presence::RedisPresence;
use crate::redis::sessions::RedisSessions;
use crate::redis::webhook::{WebhookHandler, WebhookStore, WebhookTarget};
use crate::redis::{QueueConfig, QueueMetrics, RedisConfig, RedisConnection, ReliableQueue};
use crate::sessions::{EmbeddedSessions, InProcessSessions, Sessions};
use crate::store::{EmbeddedStore, Store};

/// The backends, chosen by configuration.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub sessions: Arc<dyn Sessions>,
    pub dead_letters: Arc<dyn DeadLetters>,
}

/// Opens the backends `config` names: cluster mode's when a Redis URL or
/// MongoDB URI is set, else the single-machine ones. Background tasks of
/// the backends stop when `shutdown` is cancelled.
pub async fn open(config: &Config, shutdown: CancellationToken) -> Result<Backends> {
    if is_cluster_mode(config) {
        cluster_backends(config, shutdown).await
    } else {
        embedded_backends(config)
    }
}

/// The single-machine backends: embedded store under `--data-dir`, in-process the rest.
pub fn embedded_backends(config: &Config) -> Result<Backends> {
    let store = Arc::new(EmbeddedStore::open(&config.data_dir)?);
    let sessions = EmbeddedSessions::open(store.clone(), config.resume_window)?;
    Ok(Backends {
        store,
        bus: Arc::new(InProcessBus::new()),
        presence: Arc::new(InProcessPresence::new()),
        sessions: Arc::new(sessions),
        dead_letters: Arc::new(NoDeadLetters),
    })
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
    let urls = ClusterUrls::read(config)?;
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
