//! State shared by the listeners, the auth handler and the admin port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::fast_path::FastPath;
use crate::metrics::{BadPacket, Metrics, QuotaRefusal};
use crate::peer_policy::PeerPolicy;
use crate::readiness::{DEFAULT_INPUTS, Readiness, ReadinessInputs};
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
/// Bad packets are counted each, but logged at most once per this period:
/// a flood of them must not become a flood of log lines.
const BAD_PACKET_LOG_PERIOD: Duration = Duration::from_secs(10);
/// Bound on cached Allocate responses (each under 200 bytes).
const MAX_CACHED_RESPONSES: usize = 100_000;

pub(crate) struct Shared {
    pub metrics: Arc<Metrics>,
    pub secrets: Arc<SecretStore>,
    pub policy: PeerPolicy,
    pub max_per_user: u32,
    pub max_total: u32,
    /// The mirror of the crate's allocations, permissions and channels that
    /// the fast path relays by.
    pub fast: Arc<FastPath>,
    draining: AtomicBool,
    /// Set once at start (crate::readiness).
    pub(crate) readiness: std::sync::OnceLock<ReadinessInputs>,
    quotas: Mutex<Quotas>,
    auth_keys: Mutex<HashMap<(SocketAddr, String), Vec<u8>>>,
    /// (client, transaction id) -> the success response sent, so that a
    /// retransmitted Allocate gets the same answer instead of 437.
    allocate_responses: Mutex<HashMap<(SocketAddr, [u8; 12]), SentResponse>>,
    /// Live allocations by (client, relay listener) address: the username
    /// that created each, which every later request on it must carry.
    owners: RwLock<HashMap<FiveTuple, String>>,
    bad_packet_log: SampledLog,
}

/// State of the sampled bad-packet log line.
struct SampledLog {
    started: Instant,
    /// Milliseconds since `started` before which nothing is logged.
    quiet_until_ms: AtomicU64,
    /// Bad packets not logged since the last line.
    unlogged: AtomicU64,
}

/// A client and the relay listener address it talks to; the protocol is
/// implied by the listener.
pub(crate) type FiveTuple = (SocketAddr, SocketAddr);

/// A response as sent, and when.
type SentResponse = (Vec<u8>, Instant);

#[derive(Default)]
struct Quotas {
    total: u32,
    per_user: HashMap<String, u32>,
    /// Allocate transaction id -> reservation not answered yet.
    pending: HashMap<[u8; 12], Reservation>,
}

struct Reservation {
    /// Quota key (the user part of the username).
    user: String,
    /// The whole username, which owns the allocation once it exists.
    username: String,
    at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn set_readiness_inputs(&self, inputs: ReadinessInputs) {
        let _ = self.readiness.set(inputs);
    }

    /// What `/readyz` says now.
    pub fn readiness(&self) -> Readiness {
        self.readiness
            .get()
            .unwrap_or(&DEFAULT_INPUTS)
            .judge(self.is_draining())
    }
}

impl Shared {
    pub fn new(
        metrics: Arc<Metrics>,
        secrets: Arc<SecretStore>,
        policy: PeerPolicy,
        max_per_user: u32,
        max_total: u32,
        fast: Arc<FastPath>,
    ) -> Self {
        Shared {
            fast,
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
            owners: RwLock::new(HashMap::new()),
            bad_packet_log: SampledLog {
                started: Instant::now(),
                quiet_until_ms: AtomicU64::new(0),
                unlogged: AtomicU64::new(0),
            },
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

    /// Counts a bad packet and logs one line for it unless a line was
    /// logged within the last [`BAD_PACKET_LOG_PERIOD`]; the line says how
    /// many went unlogged since the previous one.
    pub fn bad_packet(&self, why: BadPacket, from: SocketAddr) {
        self.metrics.bad_packet(why);
        let log = &self.bad_packet_log;
        let now_ms = log.started.elapsed().as_millis() as u64;
        let quiet_until = log.quiet_until_ms.load(Ordering::Relaxed);
        let next = now_ms + BAD_PACKET_LOG_PERIOD.as_millis() as u64;
        if now_ms < quiet_until
            || log
                .quiet_until_ms
                .compare_exchange(quiet_until, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            log.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = log.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %from,
            reason = why.label(),
            unlogged_since_last_line = unlogged,
            "bad packet dropped (at most one such line per 10 s; all are counted in videochat_turn_bad_packets_total)"
        );
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

    /// Reserves one allocation for `username` under transaction `txid`, or
    /// says which quota is full. A retransmitted request does not reserve twice.
    pub fn reserve_allocation(&self, username: &str, txid: [u8; 12]) -> Result<(), QuotaRefusal> {
        let user = user_key(username);
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
        q.pending.insert(
            txid,
            Reservation {
                user: user.to_owned(),
                username: username.to_owned(),
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// The Allocate transaction `txid` of the client at `five_tuple` was
    /// answered: with success the reservation becomes a live allocation owned
    /// by its username, otherwise it is released.
    pub fn allocate_answered(&self, five_tuple: FiveTuple, txid: &[u8; 12], success: bool) {
        let mut q = lock(&self.quotas);
        let Some(r) = q.pending.remove(txid) else {
            return;
        };
        if success {
            drop(q);
            self.owners
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(five_tuple, r.username);
            self.metrics.allocations_active.inc();
            self.metrics.allocations_total.inc();
        } else {
            release(&mut q, &r.user);
        }
    }

    /// The username that created the allocation at `five_tuple`, if any.
    pub fn allocation_owner(&self, five_tuple: FiveTuple) -> Option<String> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&five_tuple)
            .cloned()
    }

    /// True when the client at `five_tuple` holds an allocation.
    pub fn has_allocation(&self, five_tuple: FiveTuple) -> bool {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&five_tuple)
    }

    /// A live allocation ended.
    pub fn allocation_closed(&self, five_tuple: FiveTuple, username: &str) {
        self.fast.allocation_closed(five_tuple);
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&five_tuple);
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
        self.fast.sweep();
        lock(&self.allocate_responses).retain(|_, (_, at)| at.elapsed() < ALLOCATE_RESPONSE_TTL);
        let mut q = lock(&self.quotas);
        let now = Instant::now();
        let stale: Vec<[u8; 12]> = q
            .pending
            .iter()
            .filter(|(_, r)| now.duration_since(r.at) > PENDING_ALLOCATE_TTL)
            .map(|(k, _)| *k)
            .collect();
        for txid in stale {
            if let Some(r) = q.pending.remove(&txid) {
                release(&mut q, &r.user);
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
