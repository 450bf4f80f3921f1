//! A circuit breaker so that a dead dependency costs no latency per request:
//! after `failure_threshold` consecutive failures the breaker opens and
//! calls fail at once for `open_for`; then one trial call is let through
//! (half-open) and its outcome closes or re-opens the breaker.
//! Also the health-probe loop with backoff that the Redis and MongoDB
//! backends share.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
    /// Mirrors "not closed" for lock-free readers such as `/readyz`.
    tripped: AtomicBool,
}

impl CircuitBreaker {
    pub fn new(name: &'static str, failure_threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            name,
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                open_until: None,
                trial_in_flight: false,
            }),
            tripped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only counters behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to the dependency now.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                if inner.trial_in_flight {
                    false
                } else {
                    inner.trial_in_flight = true;
                    true
                }
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        let was_open = inner.open_until.is_some();
        inner.consecutive_failures = 0;
        inner.open_until = None;
        inner.trial_in_flight = false;
        self.tripped.store(false, Ordering::Relaxed);
        if was_open {
            tracing::info!(dependency = self.name, "circuit breaker closed");
        }
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let half_open_trial_failed = inner.trial_in_flight;
        inner.trial_in_flight = false;
        if half_open_trial_failed || inner.consecutive_failures >= self.failure_threshold {
            if inner.open_until.is_none() {
                tracing::warn!(
                    dependency = self.name,
                    failures = inner.consecutive_failures,
                    open_for_ms = self.open_for.as_millis() as u64,
                    "circuit breaker opened"
                );
            }
            inner.open_until = Some(Instant::now() + self.open_for);
            self.tripped.store(true, Ordering::Relaxed);
        }
    }

    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// True while the breaker is open or half-open.
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// Runs `probe` every `interval` while it succeeds and, while it fails, with
/// exponential backoff capped at `max_backoff`, until `shutdown`.
/// `on_failure(first, retry_in)` hears of each failed probe: `first` is true
/// for the first failure since the start or the last success, `retry_in` is
/// the wait before the next probe.
pub(crate) fn spawn_probe_loop<P, Fut>(
    interval: Duration,
    max_backoff: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    probe: P,
    on_failure: impl Fn(bool, Duration) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    P: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        let mut backoff = interval;
        let mut failing = false;
        loop {
            let wait = if probe().await {
                failing = false;
                backoff = interval;
                interval
            } else {
                on_failure(!failing, backoff);
                failing = true;
                let w = backoff;
                backoff = (backoff * 2).min(max_backoff);
                w
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_and_closes() {
        let b = CircuitBreaker::new("test", 3, Duration::from_millis(50));
        assert!(b.allow());
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(), "open breaker must fail fast");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow(), "one trial call in half-open");
        assert!(!b.allow(), "only one trial at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open, "failed trial re-opens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.is_tripped());
    }
}
