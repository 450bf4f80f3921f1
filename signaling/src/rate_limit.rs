//! Token buckets (messages per second per connection and per client IP) and
//! per-address caps on things held open (connections, unfinished handshakes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, holding at most `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }
}

/// One bucket per client IP, shared by all its connections.
pub struct IpRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// Buckets kept before idle ones are swept.
const SWEEP_AT: usize = 10_000;

impl IpRateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn try_take(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT {
            // A full bucket is the same as no bucket; forget those.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                now.saturating_duration_since(b.last).as_secs_f64() * rate + b.tokens < burst
            });
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .try_take_at(now)
    }
}

/// At most `limit` of something held at once per client address.
pub struct PerIpCap {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One unit of a [`PerIpCap`]; given back on drop.
pub struct PerIpSlot {
    cap: Arc<PerIpCap>,
    ip: IpAddr,
}

impl PerIpCap {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or None when it holds `limit` already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            cap: self.clone(),
            ip,
        })
    }

    /// Slots `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self.cap.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        let granted = (0..8).filter(|_| b.try_take_at(start)).count();
        assert_eq!(granted, 5);
        assert!(!b.try_take_at(start + Duration::from_millis(50)));
        assert!(b.try_take_at(start + Duration::from_millis(160)));
    }

    #[test]
    fn ip_limiter_is_per_address() {
        let l = IpRateLimiter::new(1.0, 2.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.try_take(a) && l.try_take(a));
        assert!(!l.try_take(a));
        assert!(l.try_take(b));
    }

    #[test]
    fn per_ip_cap_counts_slots_and_frees_on_drop() {
        let cap = PerIpCap::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = cap.try_acquire(a).unwrap();
        let _s2 = cap.try_acquire(a).unwrap();
        assert!(cap.try_acquire(a).is_none());
        assert!(cap.try_acquire(b).is_some());
        drop(s1);
        assert_eq!(cap.held(a), 1);
        assert!(cap.try_acquire(a).is_some());
    }
}
