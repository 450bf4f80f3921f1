//! One Redis dependency: URL validation at start, a lazily connecting
//! multiplexed connection that reconnects with exponential backoff and
//! jitter, a circuit breaker in front of every call, and a health probe
//! that drives readiness and the breaker's recovery.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::breaker::{CircuitBreaker, spawn_probe_loop};
use super::error::BackendError;
use super::secret::redact_url;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`.
    pub url: String,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls before one trial.
    pub breaker_open_for: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            key_prefix: "videochat".to_string(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(1),
        }
    }
}

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    breaker: CircuitBreaker,
    healthy: AtomicBool,
    redacted_url: String,
    key_prefix: String,
    config: RedisConfig,
}

/// A shared, cheaply clonable handle to one Redis server.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &self.inner.redacted_url)
            .finish()
    }
}

pub(crate) fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        // Few quick retries inside a call; the breaker and the health probe
        // take over for longer outages so callers are not held up.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

impl RedisConnection {
    /// Validates the URL and prepares the connection without waiting for
    /// the server: an unreachable Redis at start is retried in the
    /// background (see [`RedisConnection::spawn_health_probe`]), a malformed
    /// URL is a configuration error.
    pub fn connect(config: RedisConfig) -> Result<Self, BackendError> {
        let redacted_url = redact_url(&config.url);
        if !(config.url.starts_with("redis://")
            || config.url.starts_with("rediss://")
            || config.url.starts_with("redis+unix://")
            || config.url.starts_with("unix://"))
        {
            return Err(BackendError::Config {
                setting: "VIDEOCHAT_REDIS_URL",
                reason: format!("{redacted_url} is not a redis:// or rediss:// URL"),
            });
        }
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| BackendError::Config {
                setting: "VIDEOCHAT_REDIS_URL",
                // The parser's message never contains the password, but the
                // URL we echo is the redacted one.
                reason: format!("{redacted_url}: {}", e.category()),
            })?;
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(&config))
                .map_err(|e| BackendError::Config {
                    setting: "VIDEOCHAT_REDIS_URL",
                    reason: format!("{redacted_url}: {e}"),
                })?;
        Ok(RedisConnection {
            inner: Arc::new(Inner {
                client,
                manager,
                breaker: CircuitBreaker::new(
                    "redis",
                    config.breaker_failures,
                    config.breaker_open_for,
                ),
                healthy: AtomicBool::new(false),
                redacted_url,
                key_prefix: config.key_prefix.clone(),
                config,
            }),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The URL with its password replaced, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.inner.redacted_url
    }

    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// `<prefix>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.key_prefix)
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Last health probe answered and the breaker is closed.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed) && !self.inner.breaker.is_tripped()
    }

    /// Runs one call behind the circuit breaker. While the breaker is open
    /// the call fails at once with `Unavailable`.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.inner.breaker.allow() {
            return Err(BackendError::Unavailable {
                backend: "redis",
                reason: "circuit breaker open".to_string(),
            });
        }
        match f(self.inner.manager.clone()).await {
            Ok(v) => {
                self.inner.breaker.record_success();
                Ok(v)
            }
            Err(e) => {
                let err = BackendError::from(e);
                if err.is_unavailable() {
                    self.inner.breaker.record_failure();
                } else {
                    // The server answered: the dependency itself is up.
                    self.inner.breaker.record_success();
                }
                Err(err)
            }
        }
    }

    /// One PING, bypassing the breaker (this is what closes it again).
    pub async fn probe(&self) -> bool {
        let mut conn = self.inner.manager.clone();
        let ok = redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok();
        let was = self.inner.healthy.swap(ok, Ordering::Relaxed);
        if ok {
            self.inner.breaker.record_success();
            if !was {
                tracing::info!(url = %self.inner.redacted_url, "redis reachable");
            }
        } else {
            self.inner.breaker.record_failure();
            if was {
                tracing::warn!(url = %self.inner.redacted_url, "redis unreachable; degraded, reconnecting with backoff");
            }
        }
        ok
    }

    /// Probes every `interval` while healthy; while down, probes with
    /// exponential backoff (capped at `max_backoff`) and logs each attempt
    /// at debug level and the outage once at warn level.
    pub fn spawn_health_probe(
        &self,
        interval: Duration,
        max_backoff: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let url = self.inner.redacted_url.clone();
        spawn_probe_loop(
            interval,
            max_backoff,
            shutdown,
            move || {
                let this = this.clone();
                async move { this.probe().await }
            },
            move |first, retry_in| {
                if first {
                    tracing::warn!(url = %url, "redis not reachable yet; retrying with backoff");
                }
                tracing::debug!(url = %url, retry_in_ms = retry_in.as_millis() as u64, "redis probe failed");
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_url_is_a_config_error_without_the_password() {
        let err = RedisConnection::connect(RedisConfig::new("http://u:hunter2@h:1")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("VIDEOCHAT_REDIS_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err =
            RedisConnection::connect(RedisConfig::new("redis://u:hunter2@h:notaport")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
