//! The listener `Conn` handed to the `turn` crate. It looks at each packet
//! before the crate does and enforces what the crate has no hook for:
//! credentials against several secrets, peer policy, quotas, draining, and
//! form checks on malformed, unknown or oversized packets.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    CODE_BAD_REQUEST, CODE_FORBIDDEN, CODE_INSUFFICIENT_CAPACITY, CODE_UNAUTHORIZED, ErrorCode,
    ErrorCodeAttribute,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, MAGIC_COOKIE, METHOD_ALLOCATE,
    METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
    Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use crate::credentials::{check_username, password};
use crate::error::TurnError;
use crate::fast_path::{Change, ClientOut, parse_send_indication};
use crate::metrics::{AuthFailure, BadPacket, QuotaRefusal};
use crate::state::Shared;
use crate::tcp::{TcpEvent, TcpMux};
use crate::udp_batch::{BATCH, with_scratch};

const CODE_ALLOC_QUOTA_REACHED: ErrorCode = ErrorCode(486);
const CODE_WRONG_CREDENTIALS: ErrorCode = ErrorCode(441);
/// The crate reads into a buffer of this size; a datagram that fills it was
/// probably truncated by the kernel.
const INBOUND_MTU: usize = 1500;

pub(crate) enum Transport {
    Udp(Arc<UdpSocket>),
    Tcp(Arc<TcpMux>),
}

/// What the last authenticated request on a TCP connection carried, so the
/// allocation can be released when the connection closes (RFC 6062 2.3 spirit:
/// the allocation's lifetime is tied to its control connection).
#[derive(Clone)]
struct TcpSession {
    username: String,
    realm: String,
    nonce: String,
    key: Vec<u8>,
}

pub(crate) struct GuardedConn {
    transport: Transport,
    shared: Arc<Shared>,
    local: SocketAddr,
    realm: String,
    tcp_sessions: Mutex<HashMap<SocketAddr, TcpSession>>,
    /// A nonce the crate issued recently, handed to unauthenticated requests
    /// instead of letting each one through: the crate stores every nonce it
    /// issues and never bounds that map, so a flood of unauthenticated
    /// requests would otherwise grow memory without limit.
    challenge_nonce: Mutex<Option<(String, Instant)>>,
    /// Datagrams of the last receive batch that go the crate's way, handed
    /// to it one per `recv_from` call.
    slow: Mutex<VecDeque<(Vec<u8>, SocketAddr)>>,
}

/// How long a captured nonce is handed out; the crate accepts a nonce for an
/// hour after issuing it, so clients given it late still have half an hour.
const CHALLENGE_NONCE_REUSE: Duration = Duration::from_secs(30 * 60);

enum Verdict {
    Pass,
    Drop,
    Reply(Vec<u8>),
}

impl GuardedConn {
    pub fn new(transport: Transport, shared: Arc<Shared>, realm: &str) -> std::io::Result<Self> {
        let local = match &transport {
            Transport::Udp(s) => s.local_addr()?,
            Transport::Tcp(t) => t.local,
        };
        Ok(GuardedConn {
            transport,
            shared,
            local,
            realm: realm.to_owned(),
            tcp_sessions: Mutex::new(HashMap::new()),
            challenge_nonce: Mutex::new(None),
            slow: Mutex::new(VecDeque::new()),
        })
    }

    fn is_tcp(&self) -> bool {
        matches!(self.transport, Transport::Tcp(_))
    }

    fn client_out(&self) -> ClientOut {
        match &self.transport {
            Transport::Udp(s) => ClientOut::Udp(Arc::clone(s)),
            Transport::Tcp(t) => ClientOut::Stream(Arc::clone(t)),
        }
    }

    /// Relays a client's ChannelData or Send indication on the fast path
    /// when its channel or permission is live; false leaves the packet to
    /// the guard and the crate.
    fn fast_from_client(&self, pkt: &[u8], from: SocketAddr) -> bool {
        let fast = &self.shared.fast;
        if !fast.enabled || pkt.len() < 4 {
            return false;
        }
        let five_tuple = (from, self.local);
        match pkt[0] >> 6 {
            1 => {
                let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
                if 4 + len > pkt.len() {
                    return false;
                }
                let number = u16::from_be_bytes([pkt[0], pkt[1]]);
                fast.channel_to_peer(five_tuple, number, &pkt[4..4 + len])
            }
            0 => match parse_send_indication(pkt, |ip| self.shared.policy.check(ip).is_ok()) {
                Some((peer, data)) => fast.indication_to_peer(five_tuple, peer, data),
                None => false,
            },
            _ => false,
        }
    }

    /// Takes a receive batch through the fast path; the rest is queued for
    /// the guard and the crate, which see it one datagram at a time, in
    /// order, as before (the guard's checks and the crate's handling of one
    /// request must not be separated by the guard's checks of the next).
    /// Once a client has a datagram queued, its later datagrams in the batch
    /// are queued behind it, so that nothing of it overtakes a request the
    /// crate has not handled yet (a Refresh(0), a ChannelBind).
    fn on_batch<'a>(&self, datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>) {
        let mut queued_from = [None; BATCH];
        let mut queued = 0;
        for (pkt, from) in datagrams {
            let waiting = queued_from[..queued].contains(&Some(from));
            if !waiting && self.fast_from_client(pkt, from) {
                continue;
            }
            if !waiting && queued < BATCH {
                queued_from[queued] = Some(from);
                queued += 1;
            }
            self.slow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((pkt.to_vec(), from));
        }
    }

    fn bad(&self, why: BadPacket, from: SocketAddr) -> Verdict {
        self.shared.bad_packet(why, from);
        Verdict::Drop
    }

    /// Decides what to do with one packet from a client.
    fn inspect(&self, pkt: &[u8], from: SocketAddr) -> Verdict {
        let Some(&first) = pkt.first() else {
            return self.bad(BadPacket::Malformed, from);
        };
        match first >> 6 {
            // ChannelData: the hot path; the length and that the client
            // holds an allocation are checked here (the crate would log an
            // error line for each packet without one).
            1 => {
                if pkt.len() < 4 {
                    return self.bad(BadPacket::Malformed, from);
                }
                let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
                if 4 + len > pkt.len() {
                    return self.bad(
                        if pkt.len() >= INBOUND_MTU {
                            BadPacket::Oversized
                        } else {
                            BadPacket::Malformed
                        },
                        from,
                    );
                }
                if !self.shared.has_allocation((from, self.local)) {
                    return self.bad(BadPacket::NoAllocation, from);
                }
                Verdict::Pass
            }
            0 => self.inspect_stun(pkt, from),
            _ => self.bad(BadPacket::Malformed, from),
        }
    }

    fn inspect_stun(&self, pkt: &[u8], from: SocketAddr) -> Verdict {
        if pkt.len() < 20 || pkt[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return self.bad(BadPacket::Malformed, from);
        }
        let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        if 20 + len > pkt.len() {
            return self.bad(
                if pkt.len() >= INBOUND_MTU {
                    BadPacket::Oversized
                } else {
                    BadPacket::Malformed
                },
                from,
            );
        }
        let mut m = Message {
            raw: pkt.to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() {
            return self.bad(BadPacket::Malformed, from);
        }
        if m.typ.class == CLASS_INDICATION {
            if m.typ.method != METHOD_SEND {
                return self.bad(BadPacket::UnknownMethod, from);
            }
            // A Send indication cannot be answered; a refused peer is dropped.
            return match self.check_peers(&m) {
                Ok(()) => Verdict::Pass,
                Err(PeerCheck::Unparsable) => self.bad(BadPacket::Malformed, from),
                Err(PeerCheck::Refused) => Verdict::Drop,
            };
        }
        if m.typ.class != CLASS_REQUEST {
            // Responses have no business arriving at a server.
            return self.bad(BadPacket::Malformed, from);
        }
        let method = m.typ.method;
        if method == METHOD_BINDING {
            return Verdict::Pass;
        }
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            self.shared.bad_packet(BadPacket::UnknownMethod, from);
            return reply(&m, method, CODE_BAD_REQUEST, "unknown method", None);
        }
        if method == METHOD_ALLOCATE
            && let Some(resp) = self
                .shared
                .cached_allocate_response(from, m.transaction_id.0)
        {
            // A retransmission of an Allocate that already succeeded: the
            // crate would answer 437 Allocation Mismatch; repeat the success.
            return Verdict::Reply(resp);
        }
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            // Answer the 401 challenge with the recent nonce when there is
            // one; otherwise the crate answers with a fresh nonce, which
            // `outbound` captures.
            return match self.recent_nonce() {
                Some(nonce) => self.challenge(&m, method, nonce),
                None => Verdict::Pass,
            };
        }
        let (Ok(username), Ok(realm)) = (
            TextAttribute::get_from_as(&m, ATTR_USERNAME),
            TextAttribute::get_from_as(&m, ATTR_REALM),
        ) else {
            // The crate answers 400.
            return Verdict::Pass;
        };
        let key = match self.authenticate(&mut m, &username.text, &realm.text) {
            Ok(key) => key,
            Err(why) => {
                self.shared.metrics.auth_failure(why);
                tracing::debug!(%from, reason = ?why, "credentials refused");
                return reply(&m, method, CODE_UNAUTHORIZED, auth_reason(why), None);
            }
        };

        if method != METHOD_ALLOCATE
            && let Some(owner) = self.shared.allocation_owner((from, self.local))
            && owner != username.text
        {
            // RFC 5766 4: every request on an allocation carries the
            // credentials it was created with; anyone else's, however valid,
            // must not refresh, extend or delete it.
            self.shared.metrics.auth_failure(AuthFailure::WrongUser);
            tracing::debug!(%from, "request signed by another user than the allocation's");
            return reply(
                &m,
                method,
                CODE_WRONG_CREDENTIALS,
                "Wrong Credentials: not the allocation's user",
                Some(&key),
            );
        }

        if method == METHOD_ALLOCATE {
            if self.shared.is_draining() {
                self.shared.metrics.drain_refusals.inc();
                return reply(
                    &m,
                    method,
                    CODE_INSUFFICIENT_CAPACITY,
                    "draining: try another relay",
                    Some(&key),
                );
            }
            if let Err(why) = self
                .shared
                .reserve_allocation(&username.text, m.transaction_id.0)
            {
                self.shared.metrics.quota_refused(why);
                tracing::debug!(%from, reason = ?why, "allocation quota reached");
                let text = match why {
                    QuotaRefusal::PerUser => "allocation quota reached for this user",
                    QuotaRefusal::Total => "allocation quota reached on this relay",
                };
                return reply(&m, method, CODE_ALLOC_QUOTA_REACHED, text, Some(&key));
            }
        } else if method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND {
            match self.check_peers(&m) {
                Ok(()) => {}
                Err(PeerCheck::Unparsable) => {
                    self.shared.bad_packet(BadPacket::Malformed, from);
                    return reply(
                        &m,
                        method,
                        CODE_BAD_REQUEST,
                        "bad XOR-PEER-ADDRESS",
                        Some(&key),
                    );
                }
                Err(PeerCheck::Refused) => {
                    return reply(
                        &m,
                        method,
                        CODE_FORBIDDEN,
                        "peer address not allowed",
                        Some(&key),
                    );
                }
            }
        }

        if self.is_tcp()
            && let Ok(nonce) = TextAttribute::get_from_as(&m, ATTR_NONCE)
        {
            let mut sessions = self.tcp_sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.insert(
                from,
                TcpSession {
                    username: username.text.clone(),
                    realm: realm.text.clone(),
                    nonce: nonce.text,
                    key: key.clone(),
                },
            );
        }
        if let Transport::Tcp(mux) = &self.transport {
            mux.mark_authenticated(from);
        }
        self.shared.put_key(from, &username.text, key);
        if let Some(change) = requested_change(&m) {
            self.shared
                .fast
                .record((from, self.local), m.transaction_id.0, change);
        }
        Verdict::Pass
    }

    /// Finds the secret whose key verifies the request's MESSAGE-INTEGRITY.
    fn authenticate(
        &self,
        m: &mut Message,
        username: &str,
        realm: &str,
    ) -> Result<Vec<u8>, AuthFailure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        check_username(username, now).map_err(|e| match e {
            TurnError::UsernameExpired => AuthFailure::Expired,
            _ => AuthFailure::MalformedUsername,
        })?;
        for secret in self.shared.secrets.current().iter() {
            let pass = password(secret, username);
            let key = turn::auth::generate_auth_key(username, realm, &pass);
            if MessageIntegrity(key.clone()).check(m).is_ok() {
                return Ok(key);
            }
        }
        Err(AuthFailure::BadPassword)
    }

    /// Checks every XOR-PEER-ADDRESS against the peer policy.
    fn check_peers(&self, m: &Message) -> Result<(), PeerCheck> {
        let mut seen = false;
        for attr in m
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        {
            seen = true;
            let ip = xor_peer_ip(&attr.value, &m.transaction_id).ok_or(PeerCheck::Unparsable)?;
            if let Err(why) = self.shared.policy.check(ip) {
                self.shared.metrics.permission_refused(why);
                tracing::debug!(peer = %ip, reason = why.label(), "peer refused by policy");
                return Err(PeerCheck::Refused);
            }
        }
        if seen {
            Ok(())
        } else {
            Err(PeerCheck::Unparsable)
        }
    }

    fn recent_nonce(&self) -> Option<String> {
        let guard = self
            .challenge_nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|(_, at)| at.elapsed() < CHALLENGE_NONCE_REUSE)
            .map(|(n, _)| n.clone())
    }

    fn challenge(&self, m: &Message, method: Method, nonce: String) -> Verdict {
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(Message {
                transaction_id: m.transaction_id,
                ..Default::default()
            }),
            Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: vec![],
            }),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())),
        ];
        let mut out = Message::new();
        match out.build(&setters) {
            Ok(()) => Verdict::Reply(out.raw),
            Err(_) => Verdict::Pass,
        }
    }

    /// Keeps the nonce of a 401 or 438 the crate sends, for `challenge`.
    fn capture_nonce(&self, pkt: &[u8]) {
        let mut m = Message {
            raw: pkt.to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() {
            return;
        }
        if let Ok(nonce) = TextAttribute::get_from_as(&m, ATTR_NONCE) {
            let mut guard = self
                .challenge_nonce
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let stale = guard
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= CHALLENGE_NONCE_REUSE);
            if stale {
                *guard = Some((nonce.text, Instant::now()));
            }
        }
    }

    /// Watches our own answers: settles quota reservations on Allocate
    /// answers, captures challenge nonces from error responses, and tells
    /// the fast path what the crate accepted.
    fn outbound(&self, pkt: &[u8], to: SocketAddr) {
        if pkt.len() < 20 || pkt[0] >> 6 != 0 {
            return;
        }
        let typ = u16::from_be_bytes([pkt[0], pkt[1]]);
        // Error-response class bits (0x0110) on a message that carries a
        // NONCE: 401 and 438 answers of the crate.
        if typ & 0x0110 == 0x0110 && pkt.len() > 20 {
            self.capture_nonce(pkt);
        }
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&pkt[8..20]);
        // Allocate, Refresh, CreatePermission, ChannelBind: success (0x01xx)
        // or error (0x011x) responses.
        if matches!(typ & !0x0110, 0x0003 | 0x0004 | 0x0008 | 0x0009) && typ & 0x0100 != 0 {
            let success = typ & 0x0010 == 0;
            self.shared
                .fast
                .answered((to, self.local), txid, success, pkt, self.client_out());
        }
        let success = match typ {
            0x0103 => true,
            0x0113 => false,
            _ => return,
        };
        if success {
            self.shared.remember_allocate_response(to, txid, pkt);
        }
        self.shared
            .allocate_answered((to, self.local), &txid, success);
    }

    /// A Refresh with lifetime 0 on behalf of a TCP client that went away,
    /// so its allocation ends now rather than at its lifetime.
    fn release_request(&self, from: SocketAddr, buf: &mut [u8]) -> Option<usize> {
        let session = self
            .tcp_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&from)?;
        let mut msg = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
            Box::new(turn::proto::lifetime::Lifetime(std::time::Duration::ZERO)),
            Box::new(TextAttribute::new(ATTR_USERNAME, session.username.clone())),
            Box::new(TextAttribute::new(ATTR_REALM, session.realm)),
            Box::new(TextAttribute::new(ATTR_NONCE, session.nonce)),
            Box::new(MessageIntegrity(session.key.clone())),
        ];
        msg.build(&setters).ok()?;
        if msg.raw.len() > buf.len() {
            return None;
        }
        buf[..msg.raw.len()].copy_from_slice(&msg.raw);
        self.shared.put_key(from, &session.username, session.key);
        Some(msg.raw.len())
    }

    async fn send_raw(&self, pkt: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        match &self.transport {
            Transport::Udp(s) => s.send_to(pkt, to).await,
            // A gone or stalled TCP client loses the frame, as UDP would.
            Transport::Tcp(t) => {
                t.send(pkt, to);
                Ok(pkt.len())
            }
        }
    }
}

enum PeerCheck {
    Unparsable,
    Refused,
}

/// What an authenticated request asks the crate to change, read the way
/// the crate reads it (first XOR-PEER-ADDRESS only; LIFETIME of an hour or
/// more means the default), for the fast path's mirror.
fn requested_change(m: &Message) -> Option<Change> {
    use stun::message::Getter;
    use turn::proto::channum::ChannelNumber;
    use turn::proto::lifetime::{DEFAULT_LIFETIME, Lifetime};
    use turn::proto::peeraddr::PeerAddress;
    let lifetime_ms = || {
        let mut l = Lifetime::default();
        let d = if l.get_from(m).is_ok() && l.0 < Duration::from_secs(3600) {
            l.0
        } else {
            DEFAULT_LIFETIME
        };
        d.as_millis() as u64
    };
    let peer = || {
        let mut p = PeerAddress::default();
        p.get_from(m).ok().map(|_| SocketAddr::new(p.ip, p.port))
    };
    match m.typ.method {
        METHOD_ALLOCATE => Some(Change::Allocate {
            lifetime_ms: lifetime_ms(),
        }),
        METHOD_REFRESH => Some(Change::Refresh {
            lifetime_ms: lifetime_ms(),
        }),
        METHOD_CREATE_PERMISSION => Some(Change::Permission { ip: peer()?.ip() }),
        METHOD_CHANNEL_BIND => {
            let mut number = ChannelNumber::default();
            number.get_from(m).ok()?;
            Some(Change::Channel {
                number: number.0,
                peer: peer()?,
            })
        }
        _ => None,
    }
}

fn auth_reason(why: AuthFailure) -> &'static str {
    match why {
        AuthFailure::Expired => "credentials expired",
        AuthFailure::MalformedUsername => "username is not <expiry>[:<user>]",
        AuthFailure::BadPassword => "bad credentials",
        AuthFailure::WrongUser => "Wrong Credentials",
    }
}

/// Decodes the IP of an XOR-PEER-ADDRESS value (RFC 5389 15.2).
fn xor_peer_ip(v: &[u8], txid: &TransactionId) -> Option<IpAddr> {
    if v.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match v[1] {
        0x01 if v.len() == 8 => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        0x02 if v.len() == 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(&txid.0);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// Builds an error response, with MESSAGE-INTEGRITY when the request was authenticated.
fn reply(
    m: &Message,
    method: Method,
    code: ErrorCode,
    reason: &str,
    key: Option<&[u8]>,
) -> Verdict {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(Message {
            transaction_id: m.transaction_id,
            ..Default::default()
        }),
        Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    let mut out = Message::new();
    match out.build(&setters) {
        Ok(()) => Verdict::Reply(out.raw),
        Err(_) => Verdict::Drop,
    }
}

fn io_err(msg: &str) -> webrtc_util::Error {
    std::io::Error::other(msg.to_owned()).into()
}

#[async_trait]
impl Conn for GuardedConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(io_err("a listener does not connect"))
    }
    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(io_err("use recv_from"))
    }

    /// The listener's receive loop: batches of datagrams (one `recvmmsg`
    /// each) go through the fast path and the guard; the crate gets back
    /// only what is its to handle.
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let queued = self
                .slow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some((pkt, from)) = queued {
                match self.inspect(&pkt, from) {
                    Verdict::Pass => {
                        let n = pkt.len().min(buf.len());
                        buf[..n].copy_from_slice(&pkt[..n]);
                        return Ok((n, from));
                    }
                    Verdict::Drop => {}
                    Verdict::Reply(msg) => {
                        if let Err(err) = self.send_raw(&msg, from).await {
                            tracing::debug!(error = %err, %from, "sending error response failed");
                        }
                    }
                }
                continue;
            }
            let (n, from) = match &self.transport {
                Transport::Udp(s) => {
                    let received = match s.readable().await {
                        Ok(()) => {
                            with_scratch(|sc| sc.recv_with(s, |sc| self.on_batch(sc.received())))
                        }
                        Err(err) => Err(err),
                    };
                    match received {
                        Ok(_) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(err) => {
                            // Transient (e.g. ICMP-reported) errors must not end the
                            // crate's receive loop, which would stop the listener.
                            tracing::debug!(error = %err, "udp receive error");
                            tokio::task::yield_now().await;
                        }
                    }
                    continue;
                }
                Transport::Tcp(t) => match t.next_event().await {
                    Some(TcpEvent::Frame(from, frame)) => {
                        if self.fast_from_client(&frame, from) {
                            continue;
                        }
                        let n = frame.len().min(buf.len());
                        buf[..n].copy_from_slice(&frame[..n]);
                        (n, from)
                    }
                    Some(TcpEvent::Closed(from)) => match self.release_request(from, buf) {
                        Some(n) => return Ok((n, from)),
                        None => continue,
                    },
                    None => return Err(io_err("tcp listener closed")),
                },
            };
            match self.inspect(&buf[..n], from) {
                Verdict::Pass => return Ok((n, from)),
                Verdict::Drop => {}
                Verdict::Reply(msg) => {
                    if let Err(err) = self.send_raw(&msg, from).await {
                        tracing::debug!(error = %err, %from, "sending error response failed");
                    }
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(io_err("use send_to"))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.outbound(buf, target);
        Ok(self.send_raw(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The crate closes the listener's Conn whenever an allocation ends; the
    /// listener must outlive allocations, so this does nothing.
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The crate's auth hook: returns the key the guard found for this request.
pub(crate) struct VerifiedKeys(pub Arc<Shared>);

impl turn::auth::AuthHandler for VerifiedKeys {
    fn auth_handle(
        &self,
        username: &str,
        _realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.0
            .take_key(src_addr, username)
            .ok_or(turn::Error::ErrNoSuchUser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::xoraddr::XorMappedAddress;

    fn encoded(ip: IpAddr, txid: TransactionId) -> Vec<u8> {
        let mut m = Message::new();
        m.transaction_id = txid;
        m.write_header();
        XorMappedAddress { ip, port: 5000 }
            .add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS)
            .expect("encode");
        m.attributes.0[0].value.clone()
    }

    #[test]
    fn xor_peer_address_decodes_both_families() {
        let txid = TransactionId([7u8; 12]);
        for ip in ["169.254.169.254", "203.0.113.5", "fe80::1", "2001:db8::42"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(xor_peer_ip(&encoded(ip, txid), &txid), Some(ip));
        }
        assert_eq!(xor_peer_ip(&[0, 1, 0], &txid), None);
        assert_eq!(xor_peer_ip(&[0, 3, 0, 0, 1, 2, 3, 4], &txid), None);
    }
}
