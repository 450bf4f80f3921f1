//! State shared by the listeners, the auth handler and the admin port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, QuotaRefusal};
use crate::peer_policy::PeerPolicy;
use crate::secrets::SecretStore;

/// Bound on remembered auth keys; they are taken on use, so the map only
/// grows when requests are refused later in the chain (e.g. stale nonce).
const MAX_PENDING_KEYS: usize = 65_536;
/// An Allocate request is answered within milliseconds; a reservation still
/// pending after this long was never answered and is released.
const PENDING_ALLOCATE_TTL: Duration = Duration::from_secs(60);
/// How long a successful Allocate response is kept to answer retransmissions
/// (RFC 5766 6.2 suggests the client transaction timeout, 39.5 s).
const ALLOCATE_RESPONSE_TTL: Duration = Duration::from_secs(40);
/// Bound on cached Allocate responses (each under 200 bytes).
const MAX_CACHED_RESPONSES: usize = 100_000;

pub(crate) struct Shared {
    pub metrics: Arc<Metrics>,
    pub secrets: Arc<SecretStore>,
    pub policy: PeerPolicy,
    pub max_per_user: u32,
    pub max_total: u32,
    draining: AtomicBool,
    /// Set once at start (crate::readiness).
    pub(crate) readiness: std::sync::OnceLock<crate::readiness::ReadinessInputs>,
    quotas: Mutex<Quotas>,
    auth_keys: Mutex<HashMap<(SocketAddr, String), Vec<u8>>>,
    /// (client, transaction id) -> the success response sent, so that a
    /// retransmitted Allocate gets the same answer instead of 437.
    allocate_responses: Mutex<HashMap<(SocketAddr, [u8; 12]), SentResponse>>,
}

/// A response as sent, and when.
type SentResponse = (Vec<u8>, Instant);

#[derive(Default)]
struct Quotas {
    total: u32,
    per_user: HashMap<String, u32>,
    /// Allocate transaction id -> (user, when) for reservations not answered yet.
    pending: HashMap<[u8; 12], (String, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        metrics: Arc<Metrics>,
        secrets: Arc<SecretStore>,
        policy: PeerPolicy,
        max_per_user: u32,
        max_total: u32,
    ) -> Self {
        Shared {
            metrics,
            secrets,
            policy,
            max_per_user,
            max_total,
            draining: AtomicBool::new(false),
            readiness: std::sync::OnceLock::new(),
            quotas: Mutex::new(Quotas::default()),
            auth_keys: Mutex::new(HashMap::new()),
            allocate_responses: Mutex::new(HashMap::new()),
        }
    }

    pub fn begin_drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.metrics.draining.set(1);
            tracing::info!(
                active_allocations = self.metrics.allocations_active.get(),
                "draining: new allocations refused, live ones keep relaying"
            );
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Remembers the key that verified a request so the crate's auth handler,
    /// called next for the same request, returns it.
    pub fn put_key(&self, from: SocketAddr, username: &str, key: Vec<u8>) {
        let mut keys = lock(&self.auth_keys);
        if keys.len() >= MAX_PENDING_KEYS {
            keys.clear();
        }
        keys.insert((from, username.to_owned()), key);
    }

    pub fn take_key(&self, from: SocketAddr, username: &str) -> Option<Vec<u8>> {
        lock(&self.auth_keys).remove(&(from, username.to_owned()))
    }

    /// Reserves one allocation for `user` under transaction `txid`, or says
    /// which quota is full. A retransmitted request does not reserve twice.
    pub fn reserve_allocation(&self, user: &str, txid: [u8; 12]) -> Result<(), QuotaRefusal> {
        let mut q = lock(&self.quotas);
        if q.pending.contains_key(&txid) {
            return Ok(());
        }
        if self.max_total > 0 && q.total >= self.max_total {
            return Err(QuotaRefusal::Total);
        }
        let held = q.per_user.get(user).copied().unwrap_or(0);
        if self.max_per_user > 0 && held >= self.max_per_user {
            return Err(QuotaRefusal::PerUser);
        }
        q.total += 1;
        *q.per_user.entry(user.to_owned()).or_insert(0) += 1;
        q.pending.insert(txid, (user.to_owned(), Instant::now()));
        Ok(())
    }

    /// The Allocate transaction `txid` was answered: with success the
    /// reservation becomes a live allocation, otherwise it is released.
    pub fn allocate_answered(&self, txid: &[u8; 12], success: bool) {
        let mut q = lock(&self.quotas);
        let Some((user, _)) = q.pending.remove(txid) else {
            return;
        };
        if success {
            self.metrics.allocations_active.inc();
            self.metrics.allocations_total.inc();
        } else {
            release(&mut q, &user);
        }
    }

    /// A live allocation ended.
    pub fn allocation_closed(&self, username: &str) {
        let user = user_key(username);
        let mut q = lock(&self.quotas);
        release(&mut q, user);
        drop(q);
        self.metrics.allocations_active.dec();
    }

    pub fn remember_allocate_response(&self, to: SocketAddr, txid: [u8; 12], response: &[u8]) {
        let mut cache = lock(&self.allocate_responses);
        if cache.len() >= MAX_CACHED_RESPONSES {
            return;
        }
        cache.insert((to, txid), (response.to_vec(), Instant::now()));
    }

    pub fn cached_allocate_response(&self, from: SocketAddr, txid: [u8; 12]) -> Option<Vec<u8>> {
        lock(&self.allocate_responses)
            .get(&(from, txid))
            .filter(|(_, at)| at.elapsed() < ALLOCATE_RESPONSE_TTL)
            .map(|(r, _)| r.clone())
    }

    /// Releases reservations whose Allocate was never answered and forgets
    /// old Allocate responses.
    pub fn sweep_pending(&self) {
        lock(&self.allocate_responses).retain(|_, (_, at)| at.elapsed() < ALLOCATE_RESPONSE_TTL);
        let mut q = lock(&self.quotas);
        let now = Instant::now();
        let stale: Vec<[u8; 12]> = q
            .pending
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > PENDING_ALLOCATE_TTL)
            .map(|(k, _)| *k)
            .collect();
        for txid in stale {
            if let Some((user, _)) = q.pending.remove(&txid) {
                release(&mut q, &user);
            }
        }
    }
}

fn release(q: &mut Quotas, user: &str) {
    q.total = q.total.saturating_sub(1);
    if let Some(n) = q.per_user.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            q.per_user.remove(user);
        }
    }
}

/// Quotas count per user: the `<user>` part of `<expiry>:<user>`, or the whole
/// username when it has no user part.
pub(crate) fn user_key(username: &str) -> &str {
    crate::credentials::user_of(username).unwrap_or(username)
}
