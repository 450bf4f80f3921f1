//! Helpers shared by the integration tests: a relay on loopback, a TURN
//! client from the `turn` crate over UDP or TCP, and a peer socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use videochat_turn::credentials::{Credential, generate};
use videochat_turn::framing::TcpClientConn;
use videochat_turn::{Relay, RelayConfig};
use webrtc_util::Conn;

pub const SECRET: &str = "first-secret";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn cred(secret: &str, user: &str) -> Credential {
    generate(secret.as_bytes(), Some(user), now(), 600)
}

/// A relay on loopback with loopback peers allowed, tweaked by `f`.
pub async fn relay_with(f: impl FnOnce(&mut RelayConfig)) -> Relay {
    let mut c = RelayConfig::local(SECRET);
    c.relay_min_port = 40000;
    c.relay_max_port = 49999;
    f(&mut c);
    Relay::start(c).await.expect("relay starts")
}

pub enum Transport {
    Udp,
    Tcp,
}

pub struct TestClient {
    pub client: Client,
}

/// A `turn` crate client connected to `relay` over `transport`.
pub async fn client(relay: &Relay, transport: Transport, c: &Credential) -> TestClient {
    let (conn, server): (Arc<dyn Conn + Send + Sync>, SocketAddr) = match transport {
        Transport::Udp => (
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind client")),
            relay.udp_addr(),
        ),
        Transport::Tcp => {
            let server = relay.tcp_addr().expect("tcp listener");
            (
                TcpClientConn::connect(server).await.expect("tcp connect"),
                server,
            )
        }
    };
    TestClient {
        client: client_at(server, conn, c).await,
    }
}

/// A listening `turn` crate client of the relay at `server`, talking over
/// `conn` with credential `c`.
pub async fn client_at(
    server: SocketAddr,
    conn: Arc<dyn Conn + Send + Sync>,
    c: &Credential,
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: c.username.clone(),
        password: c.password.clone(),
        realm: "videochat".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

/// Sends `payload` through the relay to a fresh peer socket and back;
/// asserts both directions arrive intact.
pub async fn round_trip(relay_conn: &(impl Conn + Send + Sync), payload: &[u8]) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    let peer_addr = peer.local_addr().expect("peer addr");
    let relayed = relay_conn.local_addr().expect("relayed address");
    relay_conn
        .send_to(payload, peer_addr)
        .await
        .expect("send to peer through relay");
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("peer receives within 5s")
        .expect("peer recv");
    assert_eq!(&buf[..n], payload);
    assert_eq!(from, relayed, "datagram comes from the relayed address");
    let reply: Vec<u8> = payload.iter().rev().copied().collect();
    peer.send_to(&reply, relayed).await.expect("peer replies");
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay_conn.recv_from(&mut buf))
        .await
        .expect("client receives the reply within 5s")
        .expect("relay recv");
    assert_eq!(&buf[..n], &reply[..]);
    assert_eq!(from, peer_addr);
}

/// Polls `cond` for up to 5 seconds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of an unlabelled or labelled sample in Prometheus text.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in metrics:\n{text}"))
}

pub mod tls;

/// A TURN client made of raw STUN messages over one UDP socket, for requests
/// the `turn` crate's client would never send (another user's credentials
/// on an allocation, internal peers in odd IPv6 forms).
pub struct RawTurn {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    nonce: Option<String>,
}

impl RawTurn {
    pub async fn new(server: SocketAddr) -> RawTurn {
        RawTurn {
            sock: UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind raw client"),
            server,
            nonce: None,
        }
    }

    /// Sends `method` signed with `c` (fetching a nonce first when needed)
    /// and returns the success response, or the error code.
    pub async fn request(
        &mut self,
        method: stun::message::Method,
        c: &Credential,
        attrs: impl Fn() -> Vec<Box<dyn stun::message::Setter>>,
    ) -> Result<stun::message::Message, u16> {
        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        use stun::integrity::MessageIntegrity;
        use stun::message::{CLASS_REQUEST, MessageType, Setter};
        use stun::textattrs::TextAttribute;
        for _ in 0..3 {
            let mut setters: Vec<Box<dyn Setter>> = vec![
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ];
            setters.extend(attrs());
            if let Some(nonce) = &self.nonce {
                setters.push(Box::new(TextAttribute::new(
                    ATTR_USERNAME,
                    c.username.clone(),
                )));
                setters.push(Box::new(TextAttribute::new(ATTR_REALM, "videochat".into())));
                setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
                setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                    c.username.clone(),
                    "videochat".into(),
                    c.password.clone(),
                )));
            }
            let mut m = stun::message::Message::new();
            m.build(&setters).expect("build request");
            let resp = self.exchange(&m).await;
            match error_code(&resp) {
                None => return Ok(resp),
                // Challenge or stale nonce: take the nonce and sign again.
                Some(401 | 438) if TextAttribute::get_from_as(&resp, ATTR_NONCE).is_ok() => {
                    let fresh = TextAttribute::get_from_as(&resp, ATTR_NONCE)
                        .expect("nonce")
                        .text;
                    if self.nonce.as_deref() == Some(fresh.as_str())
                        && error_code(&resp) == Some(401)
                    {
                        return Err(401);
                    }
                    self.nonce = Some(fresh);
                }
                Some(code) => return Err(code),
            }
        }
        panic!("no answer after three challenges");
    }

    /// A request signed with `c` and the nonce of an earlier exchange,
    /// built but not sent (to send several at once).
    pub fn signed(
        &self,
        method: stun::message::Method,
        c: &Credential,
        attrs: Vec<Box<dyn stun::message::Setter>>,
    ) -> stun::message::Message {
        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
        use stun::integrity::MessageIntegrity;
        use stun::message::{CLASS_REQUEST, MessageType, Setter};
        use stun::textattrs::TextAttribute;
        let nonce = self.nonce.clone().expect("a nonce from an earlier request");
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attrs);
        setters.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            c.username.clone(),
        )));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, "videochat".into())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce)));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            c.username.clone(),
            "videochat".into(),
            c.password.clone(),
        )));
        let mut m = stun::message::Message::new();
        m.build(&setters).expect("build request");
        m
    }

    /// The response to transaction `m`, skipping anything else.
    pub async fn response_to(&self, m: &stun::message::Message) -> stun::message::Message {
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
                    .await
                    .expect("relay answers within 5s")
                    .expect("recv");
            let mut resp = stun::message::Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            if resp.decode().is_ok() && resp.transaction_id == m.transaction_id {
                return resp;
            }
        }
    }

    async fn exchange(&self, m: &stun::message::Message) -> stun::message::Message {
        self.sock.send_to(&m.raw, self.server).await.expect("send");
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) =
                tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
                    .await
                    .expect("relay answers within 5s")
                    .expect("recv");
            let mut resp = stun::message::Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            if resp.decode().is_ok() && resp.transaction_id == m.transaction_id {
                return resp;
            }
        }
    }
}

/// The error code of a STUN error response, None for a success.
pub fn error_code(m: &stun::message::Message) -> Option<u16> {
    use stun::error_code::ErrorCodeAttribute;
    use stun::message::{CLASS_ERROR_RESPONSE, Getter};
    if m.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).expect("ERROR-CODE in an error response");
    Some(e.code.0)
}

/// Attributes of an Allocate for a UDP relay.
pub fn allocate_attrs() -> Vec<Box<dyn stun::message::Setter>> {
    vec![Box::new(turn::proto::reqtrans::RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })]
}

/// A LIFETIME attribute.
pub fn lifetime(secs: u64) -> Vec<Box<dyn stun::message::Setter>> {
    vec![Box::new(turn::proto::lifetime::Lifetime(
        Duration::from_secs(secs),
    ))]
}

/// An XOR-PEER-ADDRESS attribute.
pub fn peer(addr: SocketAddr) -> Vec<Box<dyn stun::message::Setter>> {
    vec![Box::new(turn::proto::peeraddr::PeerAddress {
        ip: addr.ip(),
        port: addr.port(),
    })]
}
