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
