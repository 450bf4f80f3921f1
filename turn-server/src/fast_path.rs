//! The fast path: relaying for bound channels and installed permissions in
//! our own receive loops, without the `turn` crate's per-packet allocations,
//! async mutexes and linear channel scans.
//!
//! The crate stays the only authority on allocations, permissions and
//! channels: it handles every request. This module keeps a mirror of its
//! state, changed only when the crate answers a request with success (the
//! guard records the request before the crate sees it and [`FastPath::answered`]
//! applies it when the answer goes out), with deadlines that are never later
//! than the crate's own timers (they start when the request arrived, before
//! the crate started its timer). Whenever the mirror is not sure that the
//! crate would relay a datagram, the datagram takes the crate's path, so the
//! fast path relays a subset of what the slow path would, never more.
//!
//! Reads are lock-free (`arc-swap` snapshots of immutable maps, atomics for
//! deadlines); writes (a request answered, an allocation closed) copy the
//! small map under a mutex. `arc-swap` was picked over a concurrent map
//! (`dashmap`, `papaya`) because the tables change a few times per
//! allocation lifetime and are read per datagram: a snapshot read is one
//! atomic load with no shard lock, and a whole allocation's bindings are
//! swapped at once.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use stun::message::{MAGIC_COOKIE, Message};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::tcp::TcpMux;
use crate::udp_batch::{OUT_SLOT, Scratch};

/// The crate's permission lifetime (RFC 5766 8: 300 s; not configurable in
/// the crate).
pub(crate) const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// A refresh that arrives this close to (or after) the mirror's deadline
/// may race the crate's own timer (the crate resets a timer that may be
/// firing); the mirror then stops trusting that entry until the next
/// successful request, and the crate decides.
const RACE_MARGIN_MS: u64 = 1000;
/// Expired channels and permissions stay in the mirror this long, so that
/// peer data for a channel the crate may still hold is deferred to the crate
/// rather than relayed as a Data indication.
const KEEP_EXPIRED_MS: u64 = 60_000;
/// Requests waiting for the crate's answer; an unanswered one is forgotten
/// after this long.
const PENDING_TTL_MS: u64 = 60_000;
const MAX_PENDING: usize = 65_536;
/// Datagrams for the crate's path waiting in one relay socket.
const MAX_SLOW_QUEUE: usize = 1024;

/// A client's address and the listener address it talks to.
pub(crate) type FiveTuple = (SocketAddr, SocketAddr);

/// Where datagrams for a client go out.
#[derive(Clone)]
pub(crate) enum ClientOut {
    Udp(Arc<UdpSocket>),
    Stream(Arc<TcpMux>),
}

struct Route {
    five_tuple: FiveTuple,
    out: ClientOut,
}

/// Milliseconds on the mirror's clock before which an entry is live; 0 when
/// not live or not trusted.
struct Deadline(AtomicU64);

impl Deadline {
    fn new(at: u64, lifetime_ms: u64) -> Self {
        Deadline(AtomicU64::new(at + lifetime_ms))
    }
    fn live(&self, now: u64) -> bool {
        now < self.0.load(Ordering::Acquire)
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    /// A request that arrived at `at` renewed this entry in the crate.
    fn renew(&self, at: u64, lifetime_ms: u64) {
        let old = self.get();
        let next = if old == 0 || old > at + RACE_MARGIN_MS || old + RACE_MARGIN_MS < at {
            // Not near the old deadline: the crate either refreshed a live
            // timer or, long after it fired, created a new entry.
            at + lifetime_ms
        } else {
            0
        };
        self.0.store(next, Ordering::Release);
    }
}

struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Deadline,
}

/// One allocation's channels and permissions, swapped whole.
#[derive(Clone, Default)]
struct Bindings {
    channels: HashMap<u16, Arc<Channel>>,
    by_peer: HashMap<SocketAddr, Arc<Channel>>,
    permissions: HashMap<IpAddr, Arc<Deadline>>,
}

impl Bindings {
    fn prune(&mut self, now: u64) -> bool {
        let stale = |d: &Deadline| d.get() + KEEP_EXPIRED_MS < now;
        let before = self.channels.len() + self.permissions.len();
        self.channels.retain(|_, c| !stale(&c.expires));
        self.by_peer.retain(|_, c| !stale(&c.expires));
        self.permissions.retain(|_, d| !stale(d));
        before != self.channels.len() + self.permissions.len()
    }
}

/// A request the crate has not answered yet.
pub(crate) enum Change {
    Allocate { lifetime_ms: u64 },
    Refresh { lifetime_ms: u64 },
    Permission { ip: IpAddr },
    Channel { number: u16, peer: SocketAddr },
}

struct Pending {
    change: Change,
    at: u64,
    entry: Option<Arc<RelayEntry>>,
}

impl Pending {
    /// Forgets the request without an answer.
    fn forget(self) {
        if let (Change::Channel { .. }, Some(e)) = (&self.change, &self.entry) {
            e.binds_pending.fetch_sub(1, Ordering::AcqRel);
        }
        // A Refresh(0) never answered leaves its allocation suspended: the
        // crate's path relays for it, whatever became of it.
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct FastPath {
    pub enabled: bool,
    /// The relay sockets' own IP when it is also the advertised one: a
    /// peer address with this IP and the port of one of our relay sockets
    /// is that socket, and the kernel would hand a datagram sent there
    /// straight back to it.
    local_ip: Option<IpAddr>,
    /// Claimed relay sockets by port, for that local delivery.
    by_port: ArcSwap<HashMap<u16, Arc<RelayEntry>>>,
    base: Instant,
    channel_lifetime_ms: u64,
    metrics: Arc<Metrics>,
    /// Relay sockets made for an Allocate not answered yet, by port.
    unclaimed: Mutex<HashMap<u16, Weak<RelayEntry>>>,
    clients: ArcSwap<HashMap<FiveTuple, Arc<RelayEntry>>>,
    clients_write: Mutex<()>,
    pending: Mutex<HashMap<(FiveTuple, [u8; 12]), Pending>>,
}

impl FastPath {
    pub fn new(
        enabled: bool,
        local_ip: Option<IpAddr>,
        channel_lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        FastPath {
            enabled,
            local_ip,
            by_port: ArcSwap::from_pointee(HashMap::new()),
            base: Instant::now(),
            channel_lifetime_ms: channel_lifetime.as_millis() as u64,
            metrics,
            unclaimed: Mutex::new(HashMap::new()),
            clients: ArcSwap::from_pointee(HashMap::new()),
            clients_write: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The mirror's clock: whole milliseconds since start, rounded down, on
    /// tokio's clock (the one the crate's timers run on).
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A relay socket was bound for an allocation about to be created.
    pub fn new_relay(self: &Arc<Self>, sock: UdpSocket, port: u16) -> Arc<RelayEntry> {
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        let entry = Arc::new(RelayEntry {
            sock,
            local,
            fast: Arc::clone(self),
            route: OnceLock::new(),
            alive: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            expires: Deadline(AtomicU64::new(0)),
            binds_pending: AtomicU32::new(0),
            bindings: ArcSwap::from_pointee(Bindings::default()),
            write: Mutex::new(()),
            slow: Mutex::new(VecDeque::new()),
            slow_len: AtomicUsize::new(0),
        });
        let mut unclaimed = lock(&self.unclaimed);
        unclaimed.retain(|_, w| w.strong_count() > 0);
        unclaimed.insert(port, Arc::downgrade(&entry));
        entry
    }

    /// The guard passed a request on to the crate; remember what it asks
    /// for until the crate answers. A Refresh(0) stops the fast path for its
    /// allocation now, before the crate deletes it.
    pub fn record(&self, five_tuple: FiveTuple, txid: [u8; 12], change: Change) {
        if !self.enabled {
            return;
        }
        let at = self.now_ms();
        let entry = self.clients.load().get(&five_tuple).cloned();
        if let Some(e) = &entry {
            match change {
                Change::Refresh { lifetime_ms: 0 } => e.suspended.store(true, Ordering::Release),
                Change::Channel { .. } => {
                    e.binds_pending.fetch_add(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            for (_, p) in pending.drain() {
                p.forget();
            }
        }
        if let Some(old) = pending.insert((five_tuple, txid), Pending { change, at, entry }) {
            old.forget();
        }
    }

    /// The crate answered request `txid` of the client at `five_tuple`.
    pub fn answered(
        &self,
        five_tuple: FiveTuple,
        txid: [u8; 12],
        success: bool,
        response: &[u8],
        out: ClientOut,
    ) {
        let Some(p) = lock(&self.pending).remove(&(five_tuple, txid)) else {
            return;
        };
        let at = p.at;
        match (p.change, p.entry) {
            (Change::Allocate { lifetime_ms }, _) => {
                if success {
                    self.claim(five_tuple, response, at, lifetime_ms, out);
                }
            }
            (Change::Refresh { lifetime_ms: 0 }, Some(e)) => {
                if success {
                    e.end();
                } else {
                    e.suspended.store(false, Ordering::Release);
                }
            }
            (Change::Refresh { lifetime_ms }, Some(e)) => {
                if success {
                    e.expires.renew(at, lifetime_ms);
                }
            }
            (Change::Permission { ip }, Some(e)) => {
                if success {
                    e.update(|b| permit(b, ip, at));
                }
            }
            (Change::Channel { number, peer }, Some(e)) => {
                if success {
                    let lifetime = self.channel_lifetime_ms;
                    e.update(|b| {
                        match b.channels.get(&number) {
                            Some(c) if c.peer == peer => c.expires.renew(at, lifetime),
                            _ => {
                                let c = Arc::new(Channel {
                                    number,
                                    peer,
                                    expires: Deadline::new(at, lifetime),
                                });
                                b.channels.insert(number, Arc::clone(&c));
                                b.by_peer.insert(peer, c);
                            }
                        }
                        // The crate installs or refreshes the peer's
                        // permission with every successful ChannelBind.
                        permit(b, peer.ip(), at);
                    });
                }
                e.binds_pending.fetch_sub(1, Ordering::AcqRel);
            }
            (_, None) => {}
        }
    }

    /// An Allocate succeeded: tie its relay socket to the client.
    fn claim(
        &self,
        five_tuple: FiveTuple,
        response: &[u8],
        at: u64,
        lifetime_ms: u64,
        out: ClientOut,
    ) {
        let Some(port) = relayed_port(response) else {
            return;
        };
        let Some(entry) = lock(&self.unclaimed)
            .remove(&port)
            .and_then(|w| w.upgrade())
        else {
            return;
        };
        if entry.route.set(Route { five_tuple, out }).is_err() {
            return;
        }
        entry.expires.0.store(at + lifetime_ms, Ordering::Release);
        entry.alive.store(true, Ordering::Release);
        let _w = lock(&self.clients_write);
        let mut ports = HashMap::clone(&self.by_port.load());
        ports.insert(port, Arc::clone(&entry));
        self.by_port.store(Arc::new(ports));
        let mut next = HashMap::clone(&self.clients.load());
        next.insert(five_tuple, entry);
        self.clients.store(Arc::new(next));
    }

    /// Takes `entry` out of the client table.
    fn forget_client(&self, entry: &Arc<RelayEntry>) {
        let Some(route) = entry.route.get() else {
            return;
        };
        let _w = lock(&self.clients_write);
        let current = self.clients.load();
        if current
            .get(&route.five_tuple)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            let mut next = HashMap::clone(&current);
            next.remove(&route.five_tuple);
            self.clients.store(Arc::new(next));
        }
        let ports = self.by_port.load();
        if ports
            .get(&entry.local.port())
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            let mut next = HashMap::clone(&ports);
            next.remove(&entry.local.port());
            self.by_port.store(Arc::new(next));
        }
    }

    /// The allocation at `five_tuple` ended (the crate's close notice).
    pub fn allocation_closed(&self, five_tuple: FiveTuple) {
        if let Some(e) = self.clients.load().get(&five_tuple).cloned() {
            e.end();
        }
    }

    /// Forgets unanswered requests and long-expired bindings.
    pub fn sweep(&self) {
        let now = self.now_ms();
        {
            let mut pending = lock(&self.pending);
            let old: Vec<_> = pending
                .iter()
                .filter(|(_, p)| p.at + PENDING_TTL_MS < now)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                if let Some(p) = pending.remove(&k) {
                    p.forget();
                }
            }
        }
        lock(&self.unclaimed).retain(|_, w| w.strong_count() > 0);
        for e in self.clients.load().values() {
            if Bindings::clone(&e.bindings.load()).prune(now) {
                e.update(|b| {
                    b.prune(now);
                });
            }
        }
    }

    /// ChannelData from the client at `five_tuple`: relayed here when its
    /// channel is bound and live; false leaves it to the crate.
    pub fn channel_to_peer(&self, five_tuple: FiveTuple, number: u16, data: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        let clients = self.clients.load();
        let Some(e) = clients.get(&five_tuple) else {
            return false;
        };
        let now = self.now_ms();
        if !e.live(now) {
            return false;
        }
        let bindings = e.bindings.load();
        match bindings.channels.get(&number) {
            Some(c) if c.expires.live(now) => {
                e.send_to_peer(data, c.peer);
                true
            }
            _ => false,
        }
    }

    /// A Send indication's data for `peer` (already checked against the
    /// peer policy): relayed here when a live permission covers the peer.
    pub fn indication_to_peer(&self, five_tuple: FiveTuple, peer: SocketAddr, data: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        let clients = self.clients.load();
        let Some(e) = clients.get(&five_tuple) else {
            return false;
        };
        let now = self.now_ms();
        if !e.live(now) {
            return false;
        }
        let bindings = e.bindings.load();
        match bindings.permissions.get(&peer.ip()) {
            Some(d) if d.live(now) => {
                e.send_to_peer(data, peer);
                true
            }
            _ => false,
        }
    }

    /// True when the client at `five_tuple` has an allocation the fast path serves.
    #[cfg(test)]
    fn serves(&self, five_tuple: FiveTuple) -> bool {
        self.clients
            .load()
            .get(&five_tuple)
            .is_some_and(|e| e.live(self.now_ms()))
    }
}

fn permit(b: &mut Bindings, ip: IpAddr, at: u64) {
    let lifetime = PERMISSION_LIFETIME.as_millis() as u64;
    match b.permissions.get(&ip) {
        Some(d) => d.renew(at, lifetime),
        None => {
            b.permissions
                .insert(ip, Arc::new(Deadline::new(at, lifetime)));
        }
    }
}

/// The port of an Allocate success response's XOR-RELAYED-ADDRESS.
fn relayed_port(response: &[u8]) -> Option<u16> {
    use stun::message::Getter;
    let mut m = Message {
        raw: response.to_vec(),
        ..Default::default()
    };
    m.decode().ok()?;
    let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
    relayed.get_from(&m).ok()?;
    Some(relayed.port)
}

/// An allocation's relay socket and the mirror of its crate state.
pub(crate) struct RelayEntry {
    pub sock: UdpSocket,
    /// The socket's own address (the source peers see).
    local: SocketAddr,
    fast: Arc<FastPath>,
    route: OnceLock<Route>,
    /// Set once the Allocate succeeded, cleared when the allocation ends.
    alive: AtomicBool,
    /// A Refresh(0) is with the crate.
    suspended: AtomicBool,
    expires: Deadline,
    /// ChannelBind requests with the crate: until they are answered the
    /// crate may hold a channel the mirror does not, so peer data without a
    /// known channel goes the crate's way.
    binds_pending: AtomicU32,
    bindings: ArcSwap<Bindings>,
    write: Mutex<()>,
    /// Peer datagrams for the crate's path, handed over by `take_slow`.
    slow: Mutex<VecDeque<(Vec<u8>, SocketAddr)>>,
    /// Length of `slow`, read without its lock on every wake-up.
    slow_len: AtomicUsize,
}

impl RelayEntry {
    fn live(&self, now: u64) -> bool {
        self.alive.load(Ordering::Acquire)
            && !self.suspended.load(Ordering::Acquire)
            && self.expires.live(now)
    }

    fn update(&self, f: impl FnOnce(&mut Bindings)) {
        let _w = lock(&self.write);
        let mut next = Bindings::clone(&self.bindings.load());
        f(&mut next);
        self.bindings.store(Arc::new(next));
    }

    /// The allocation ended: nothing more goes the fast way.
    pub fn end(self: &Arc<Self>) {
        self.alive.store(false, Ordering::Release);
        self.fast.forget_client(self);
    }

    /// The crate relayed `n` bytes to a peer through this socket.
    pub fn relayed_to_peer(&self, n: usize) {
        self.fast.metrics.relayed_to_peer(n);
    }

    fn send_to_peer(&self, data: &[u8], peer: SocketAddr) {
        if self.fast.local_ip == Some(peer.ip()) {
            let ports = self.fast.by_port.load();
            if let Some(target) = ports.get(&peer.port())
                && target.deliver_local(self.local, data)
            {
                self.fast.metrics.relayed_to_peer(data.len());
                self.fast.metrics.fast_path_to_peer.inc();
                self.fast.metrics.local_deliveries.inc();
                return;
            }
        }
        match self.sock.try_send_to(data, peer) {
            Ok(n) => {
                self.fast.metrics.relayed_to_peer(n);
                self.fast.metrics.fast_path_to_peer.inc();
            }
            // A full socket buffer drops the datagram, as the kernel would.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => tracing::debug!(error = %err, %peer, "relay send failed"),
        }
    }

    /// A datagram the crate's path is to handle, if one waits.
    pub fn take_slow(&self) -> Option<(Vec<u8>, SocketAddr)> {
        if self.slow_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = lock(&self.slow);
        let next = q.pop_front();
        self.slow_len.store(q.len(), Ordering::Release);
        next
    }

    fn queue_slow(&self, pkt: &[u8], from: SocketAddr) {
        let mut q = lock(&self.slow);
        if q.len() < MAX_SLOW_QUEUE {
            q.push_back((pkt.to_vec(), from));
            self.slow_len.store(q.len(), Ordering::Release);
        }
    }

    /// How peer data from `from` goes to the client on the fast path, if it
    /// may: ChannelData on a live channel, a Data indication on a live
    /// permission when the peer has no channel (and no ChannelBind is with
    /// the crate); None leaves it to the crate.
    fn delivery(
        bindings: &Bindings,
        from: SocketAddr,
        now: u64,
        indications: bool,
    ) -> Option<Delivery> {
        match bindings.by_peer.get(&from) {
            Some(c) if c.expires.live(now) => Some(Delivery::Channel(c.number)),
            // A channel the crate may still hold: the crate decides.
            Some(_) => None,
            None if indications => bindings
                .permissions
                .get(&from.ip())
                .filter(|d| d.live(now))
                .map(|_| Delivery::Indication),
            None => None,
        }
    }

    /// A datagram from another of this relay's sockets, at `from`, handed
    /// over without the kernel: relayed to the client as the kernel path
    /// would, or false (nothing done) when the fast path may not, and the
    /// sender then sends it through the kernel.
    fn deliver_local(&self, from: SocketAddr, data: &[u8]) -> bool {
        let now = self.fast.now_ms();
        let Some(route) = self.route.get().filter(|_| self.live(now)) else {
            return false;
        };
        let bindings = self.bindings.load();
        let indications = self.binds_pending.load(Ordering::Acquire) == 0;
        let Some(delivery) = Self::delivery(&bindings, from, now, indications) else {
            return false;
        };
        let mut buf = [0u8; OUT_SLOT];
        let n = delivery.write(&mut buf, from, data);
        if n == 0 {
            return false;
        }
        let client = route.five_tuple.0;
        match &route.out {
            ClientOut::Udp(sock) => {
                // A full socket buffer drops it, as the kernel path would.
                let _ = sock.try_send_to(&buf[..n], client);
            }
            ClientOut::Stream(mux) => {
                mux.send(&buf[..n], client);
            }
        }
        self.fast.metrics.relayed_from_peer(data.len());
        self.fast.metrics.fast_path_from_peer.inc();
        true
    }

    /// Handles the peer datagrams just received into `sc`: those for a live
    /// channel go to the client as ChannelData, those covered by a live
    /// permission (and no channel) as Data indications, in one `sendmmsg`;
    /// the rest wait for the crate.
    pub fn relay_received(&self, sc: &mut Scratch) {
        let metrics = &self.fast.metrics;
        let now = self.fast.now_ms();
        let route = self
            .route
            .get()
            .filter(|_| self.fast.enabled && self.live(now));
        let bindings = self.bindings.load();
        let indications = self.binds_pending.load(Ordering::Acquire) == 0;
        sc.for_each_received(|pkt, from, out| {
            metrics.relayed_from_peer(pkt.len());
            if let Some(route) = route
                && let Some(delivery) = Self::delivery(&bindings, from, now, indications)
            {
                out.push(route.five_tuple.0, |buf| delivery.write(buf, from, pkt));
                metrics.fast_path_from_peer.inc();
                return;
            }
            self.queue_slow(pkt, from);
        });
        match route.map(|r| &r.out) {
            Some(ClientOut::Udp(sock)) => sc.flush(sock),
            Some(ClientOut::Stream(mux)) => {
                for (datagram, to) in sc.out.datagrams() {
                    mux.send(datagram, to);
                }
                sc.out.clear();
            }
            None => sc.out.clear(),
        }
    }
}

/// How peer data reaches a client.
#[derive(Clone, Copy)]
enum Delivery {
    Channel(u16),
    Indication,
}

impl Delivery {
    fn write(self, buf: &mut [u8], from: SocketAddr, data: &[u8]) -> usize {
        match self {
            Delivery::Channel(number) => write_channel_data(buf, number, data),
            Delivery::Indication => write_data_indication(buf, from, data),
        }
    }
}

/// ChannelData as the crate encodes it: header, data, zero padding to four
/// bytes (required on streams, harmless on UDP). Returns the length, 0 when
/// it does not fit.
pub(crate) fn write_channel_data(buf: &mut [u8], number: u16, data: &[u8]) -> usize {
    let total = (4 + data.len()).div_ceil(4) * 4;
    if total > buf.len() {
        return 0;
    }
    buf[0..2].copy_from_slice(&number.to_be_bytes());
    buf[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
    buf[4..4 + data.len()].copy_from_slice(data);
    buf[4 + data.len()..total].fill(0);
    total
}

const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const TYPE_SEND_INDICATION: u16 = 0x0016;
const TYPE_DATA_INDICATION: u16 = 0x0017;

/// A Data indication as the crate builds it: XOR-PEER-ADDRESS, then DATA, a
/// random transaction id, no FINGERPRINT. Returns the length, 0 when it does
/// not fit.
pub(crate) fn write_data_indication(buf: &mut [u8], peer: SocketAddr, data: &[u8]) -> usize {
    let txid: [u8; 12] = rand::random();
    let peer_len = if peer.is_ipv4() { 8 } else { 20 };
    let data_padded = data.len().div_ceil(4) * 4;
    let body = 4 + peer_len + 4 + data_padded;
    let total = 20 + body;
    if total > buf.len() || data.len() > u16::MAX as usize {
        return 0;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    buf[0..2].copy_from_slice(&TYPE_DATA_INDICATION.to_be_bytes());
    buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&cookie);
    buf[8..20].copy_from_slice(&txid);
    let a = &mut buf[20..];
    a[0..2].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    a[2..4].copy_from_slice(&(peer_len as u16).to_be_bytes());
    a[4] = 0;
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    a[6..8].copy_from_slice(&port.to_be_bytes());
    match peer.ip() {
        IpAddr::V4(ip) => {
            a[5] = 0x01;
            for (i, o) in ip.octets().iter().enumerate() {
                a[8 + i] = o ^ cookie[i];
            }
        }
        IpAddr::V6(ip) => {
            a[5] = 0x02;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(&txid);
            for (i, o) in ip.octets().iter().enumerate() {
                a[8 + i] = o ^ mask[i];
            }
        }
    }
    let d = &mut a[4 + peer_len..];
    d[0..2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    d[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
    d[4..4 + data.len()].copy_from_slice(data);
    d[4 + data.len()..4 + data_padded].fill(0);
    total
}

/// Decodes an XOR-PEER-ADDRESS value (RFC 5389 15.2).
pub(crate) fn xor_peer_addr(v: &[u8], txid: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match v[1] {
        0x01 if v.len() == 8 => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        0x02 if v.len() == 20 && txid.len() == 12 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(txid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A Send indication read in place: the first XOR-PEER-ADDRESS and the
/// first DATA (what the crate uses), when the message is well formed and
/// `peer_allowed` accepts every XOR-PEER-ADDRESS in it (what the guard
/// requires). None sends the packet the slow way, where it is judged in full.
pub(crate) fn parse_send_indication(
    pkt: &[u8],
    mut peer_allowed: impl FnMut(IpAddr) -> bool,
) -> Option<(SocketAddr, &[u8])> {
    if pkt.len() < 20
        || u16::from_be_bytes([pkt[0], pkt[1]]) != TYPE_SEND_INDICATION
        || pkt[4..8] != MAGIC_COOKIE.to_be_bytes()
        || 20 + u16::from_be_bytes([pkt[2], pkt[3]]) as usize != pkt.len()
    {
        return None;
    }
    let txid = &pkt[8..20];
    let mut peer = None;
    let mut data = None;
    let mut at = 20;
    while at < pkt.len() {
        let header = pkt.get(at..at + 4)?;
        let typ = u16::from_be_bytes([header[0], header[1]]);
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        let value = pkt.get(at + 4..at + 4 + len)?;
        let next = at + 4 + len.div_ceil(4) * 4;
        if next > pkt.len() {
            return None;
        }
        match typ {
            ATTR_XOR_PEER_ADDRESS => {
                let addr = xor_peer_addr(value, txid)?;
                if !peer_allowed(addr.ip()) {
                    return None;
                }
                peer.get_or_insert(addr);
            }
            ATTR_DATA => {
                data.get_or_insert(value);
            }
            _ => {}
        }
        at = next;
    }
    Some((peer?, data?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::{CLASS_INDICATION, METHOD_DATA, METHOD_SEND, MessageType, Setter};
    use turn::proto::data::Data;
    use turn::proto::peeraddr::PeerAddress;

    fn crate_indication(method: stun::message::Method, peer: SocketAddr, data: &[u8]) -> Message {
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_INDICATION)),
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
            Box::new(Data(data.to_vec())),
        ];
        m.build(&setters).expect("build");
        m
    }

    #[test]
    fn data_indication_decodes_as_the_crates_own() {
        use stun::message::Getter;
        for peer in ["203.0.113.7:5000", "[2001:db8::9]:61000"] {
            let peer: SocketAddr = peer.parse().expect("addr");
            for len in [0usize, 1, 3, 4, 172, 1500] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut buf = [0u8; 1600];
                let n = write_data_indication(&mut buf, peer, &data);
                let expected = crate_indication(METHOD_DATA, peer, &data);
                assert_eq!(n, expected.raw.len(), "same length as the crate's");
                let mut m = Message {
                    raw: buf[..n].to_vec(),
                    ..Default::default()
                };
                m.decode().expect("decodes");
                assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
                let mut p = PeerAddress::default();
                p.get_from(&m).expect("peer");
                assert_eq!(SocketAddr::new(p.ip, p.port), peer);
                let mut d = Data::default();
                d.get_from(&m).expect("data");
                assert_eq!(d.0, data);
            }
        }
    }

    #[test]
    fn channel_data_matches_the_crates_encoding() {
        for len in [0usize, 1, 2, 3, 4, 5, 172, 1500] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut ours = [0u8; 1600];
            let n = write_channel_data(&mut ours, 0x4001, &data);
            let mut theirs = turn::proto::chandata::ChannelData {
                data: data.clone(),
                number: turn::proto::channum::ChannelNumber(0x4001),
                raw: vec![],
            };
            theirs.encode();
            assert_eq!(&ours[..n], &theirs.raw[..]);
        }
    }

    #[test]
    fn send_indications_parse_only_when_whole_and_allowed() {
        let peer: SocketAddr = "198.51.100.4:7000".parse().expect("addr");
        let m = crate_indication(METHOD_SEND, peer, b"hello");
        assert_eq!(
            parse_send_indication(&m.raw, |_| true),
            Some((peer, &b"hello"[..]))
        );
        assert_eq!(parse_send_indication(&m.raw, |_| false), None);
        // Cut short, or with trailing bytes: left to the slow path.
        assert_eq!(
            parse_send_indication(&m.raw[..m.raw.len() - 4], |_| true),
            None
        );
        let mut longer = m.raw.clone();
        longer.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_send_indication(&longer, |_| true), None);
        let v6: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        let m = crate_indication(METHOD_SEND, v6, b"x");
        assert_eq!(
            parse_send_indication(&m.raw, |_| true),
            Some((v6, &b"x"[..]))
        );
    }

    #[test]
    fn a_refresh_near_the_deadline_is_not_trusted() {
        let d = Deadline::new(0, 10_000);
        d.renew(5_000, 10_000);
        assert_eq!(d.get(), 15_000, "well before the deadline");
        d.renew(14_500, 10_000);
        assert_eq!(d.get(), 0, "within the race margin: the crate decides");
        d.renew(20_000, 10_000);
        assert_eq!(d.get(), 30_000, "the next success is trusted again");
        d.renew(45_000, 10_000);
        assert_eq!(
            d.get(),
            55_000,
            "long after expiry the crate made a new one"
        );
    }

    #[tokio::test]
    async fn the_mirror_follows_answers_only() {
        let fast = Arc::new(FastPath::new(
            true,
            None,
            Duration::from_secs(600),
            Arc::new(Metrics::default()),
        ));
        let client: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let listener: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
        let five = (client, listener);
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let entry = fast.new_relay(sock, port);
        let out = ClientOut::Udp(Arc::new(
            UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        ));
        fast.record(
            five,
            [1; 12],
            Change::Allocate {
                lifetime_ms: 600_000,
            },
        );
        assert!(!fast.serves(five), "not before the crate answers");
        let mut resp = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId([1; 12])),
            Box::new(MessageType::new(
                stun::message::METHOD_ALLOCATE,
                stun::message::CLASS_SUCCESS_RESPONSE,
            )),
            Box::new(turn::proto::relayaddr::RelayedAddress {
                ip: "127.0.0.1".parse().expect("ip"),
                port,
            }),
        ];
        resp.build(&setters).expect("build");
        fast.answered(five, [2; 12], true, &resp.raw, out.clone());
        assert!(!fast.serves(five), "an answer to another transaction");
        fast.answered(five, [1; 12], true, &resp.raw, out.clone());
        assert!(fast.serves(five));

        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        fast.record(
            five,
            [3; 12],
            Change::Channel {
                number: 0x4000,
                peer,
            },
        );
        fast.answered(five, [3; 12], false, &[], out.clone());
        assert!(!fast.channel_to_peer(five, 0x4000, b"x"), "refused bind");
        assert_eq!(entry.binds_pending.load(Ordering::Acquire), 0);

        fast.record(five, [4; 12], Change::Refresh { lifetime_ms: 0 });
        assert!(!fast.serves(five), "suspended while the crate deletes it");
        fast.answered(five, [4; 12], false, &[], out.clone());
        assert!(fast.serves(five), "a refused Refresh(0) leaves it");
        fast.record(five, [5; 12], Change::Refresh { lifetime_ms: 0 });
        fast.answered(five, [5; 12], true, &[], out);
        assert!(!fast.serves(five));
        assert!(fast.clients.load().is_empty());
    }
}
