//! Settings of cluster mode (flattened into [`Config`]) and the connection
//! strings they name. Choosing and opening the backends is `crate::backends`.

use std::time::Duration;

use super::Config;
use crate::error::{Result, SignalingError};
use crate::redis::read_secret;

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
    #[arg(long, env = "VIDEOCHAT_BACKEND_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub backend_timeout: Duration,

    /// Consecutive failures after which a dependency's circuit breaker opens.
    #[arg(long, env = "VIDEOCHAT_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,

    /// How long an open breaker fails calls at once before one trial call.
    #[arg(long, env = "VIDEOCHAT_BREAKER_OPEN_FOR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub breaker_open_for: Duration,

    /// POST every newly stored chat message as JSON to this http:// URL,
    /// through the reliable queue (needs --redis-url).
    #[arg(long, env = "VIDEOCHAT_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Attempts of a queued job before it moves to the dead-letter stream.
    #[arg(long, env = "VIDEOCHAT_QUEUE_MAX_ATTEMPTS", default_value_t = 8)]
    pub queue_max_attempts: u32,

    /// Delay before a job's second attempt; doubles per attempt, with jitter.
    #[arg(long, env = "VIDEOCHAT_QUEUE_BACKOFF", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub queue_backoff: Duration,

    /// Longest delay between two attempts of a job.
    #[arg(long, env = "VIDEOCHAT_QUEUE_MAX_BACKOFF", default_value = "60s", value_parser = humantime::parse_duration)]
    pub queue_max_backoff: Duration,

    /// A job in flight this long on a silent instance is claimed by another.
    #[arg(long, env = "VIDEOCHAT_QUEUE_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub queue_claim_idle: Duration,

    /// How often each instance re-checks its rooms' newest chat in the store
    /// (catches up chat that pub/sub lost during a Redis outage).
    #[arg(long, env = "VIDEOCHAT_CHAT_SWEEP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub chat_sweep: Duration,

    /// An instance silent this long counts as dead: its sessions can resume
    /// elsewhere and end after the resume window.
    #[arg(long, env = "VIDEOCHAT_INSTANCE_TTL", default_value = "6s", value_parser = humantime::parse_duration)]
    pub instance_ttl: Duration,
}

/// The connection strings, read from flags, env or files; never logged.
pub struct ClusterUrls {
    pub redis: Option<String>,
    pub mongodb: Option<String>,
}

impl ClusterUrls {
    /// Reads the connection strings (value or file, not both) and checks the
    /// settings that only make sense together.
    pub fn read(config: &Config) -> Result<Self> {
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
}
