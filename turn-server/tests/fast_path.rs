//! The fast path relays exactly what the `turn` crate's own path would, and
//! stops when the crate would: each scenario runs once with the fast path
//! and once without it (`--no-fast-path`) and expects the same datagrams to
//! arrive and the same ones to be dropped.
//!
//! Lifetimes are the real ones (permissions 300 s, channels 600 s): the
//! tests run on tokio's paused clock, which the crate's timers and the fast
//! path's deadlines both follow, and move it forward with `advance`. A
//! ticker task keeps the clock from jumping further than 1 ms while the
//! runtime waits for a datagram on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use stun::agent::TransactionId;
use stun::message::{
    CLASS_INDICATION, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_DATA, METHOD_REFRESH, METHOD_SEND, Message, MessageType, Setter,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use videochat_turn::{Relay, RelayConfig};

/// How long a test waits on the paused clock before it decides that a
/// datagram was dropped.
const SILENCE: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq)]
enum ToClient {
    Channel(u16, Vec<u8>),
    Indication(SocketAddr, Vec<u8>),
}

struct Call {
    relay: Relay,
    turn: RawTurn,
    alice: videochat_turn::credentials::Credential,
    relayed: SocketAddr,
}

fn fast_label(fast: bool) -> &'static str {
    if fast { "fast path" } else { "crate path" }
}

/// Keeps the paused clock moving in 1 ms steps while the runtime idles.
fn start_ticker() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

async fn call(fast: bool, tweak: impl FnOnce(&mut RelayConfig)) -> Call {
    let relay = relay_with(|c| {
        c.no_fast_path = !fast;
        tweak(c);
    })
    .await;
    let alice = cred(SECRET, "alice");
    let mut turn = RawTurn::new(relay.udp_addr()).await;
    let resp = turn
        .request(METHOD_ALLOCATE, &alice, allocate_attrs)
        .await
        .expect("allocates");
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&resp).expect("XOR-RELAYED-ADDRESS");
    Call {
        relay,
        turn,
        alice,
        relayed: SocketAddr::new(relayed.ip, relayed.port),
    }
}

async fn peer_socket(ip: &str) -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind((ip, 0)).await.expect("peer socket");
    let a = s.local_addr().expect("addr");
    (s, a)
}

impl Call {
    async fn permit(&mut self, peer: SocketAddr) {
        let alice = self.alice.clone();
        self.turn
            .request(METHOD_CREATE_PERMISSION, &alice, || common::peer(peer))
            .await
            .expect("CreatePermission");
    }

    async fn bind(&mut self, number: u16, peer: SocketAddr) {
        let alice = self.alice.clone();
        self.turn
            .request(METHOD_CHANNEL_BIND, &alice, || {
                let mut a = common::peer(peer);
                a.push(Box::new(ChannelNumber(number)));
                a
            })
            .await
            .expect("ChannelBind");
    }

    async fn refresh(&mut self, secs: u64) {
        let alice = self.alice.clone();
        self.turn
            .request(METHOD_REFRESH, &alice, || lifetime(secs))
            .await
            .expect("Refresh");
    }

    async fn send_channel(&self, number: u16, data: &[u8]) {
        let mut pkt = number.to_be_bytes().to_vec();
        pkt.extend_from_slice(&(data.len() as u16).to_be_bytes());
        pkt.extend_from_slice(data);
        self.turn
            .sock
            .send_to(&pkt, self.turn.server)
            .await
            .expect("send ChannelData");
    }

    /// A Send indication with one XOR-PEER-ADDRESS per entry of `peers`.
    async fn send_indication(&self, peers: &[SocketAddr], data: &[u8]) {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
        ];
        for p in peers {
            setters.push(Box::new(PeerAddress {
                ip: p.ip(),
                port: p.port(),
            }));
        }
        setters.push(Box::new(Data(data.to_vec())));
        let mut m = Message::new();
        m.build(&setters).expect("build Send indication");
        self.turn
            .sock
            .send_to(&m.raw, self.turn.server)
            .await
            .expect("send indication");
    }

    /// The next datagram relayed to the client, or None after [`SILENCE`].
    async fn client_gets(&self) -> Option<ToClient> {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(SILENCE, self.turn.sock.recv_from(&mut buf))
            .await
            .ok()?
            .expect("client recv");
        let pkt = &buf[..n];
        if pkt[0] >> 6 == 1 {
            let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
            return Some(ToClient::Channel(
                u16::from_be_bytes([pkt[0], pkt[1]]),
                pkt[4..4 + len].to_vec(),
            ));
        }
        let mut m = Message {
            raw: pkt.to_vec(),
            ..Default::default()
        };
        m.decode().expect("STUN to the client");
        assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
        let mut p = PeerAddress::default();
        p.get_from(&m).expect("peer address");
        let mut d = Data::default();
        d.get_from(&m).expect("data");
        Some(ToClient::Indication(SocketAddr::new(p.ip, p.port), d.0))
    }

    fn fast_packets(&self, direction: &str) -> f64 {
        metric(
            &self.relay.metrics_text(),
            &format!("videochat_turn_fast_path_packets_total{{direction=\"{direction}\"}}"),
        )
    }

    fn relayed_packets(&self, direction: &str) -> f64 {
        metric(
            &self.relay.metrics_text(),
            &format!("videochat_turn_relayed_packets_total{{direction=\"{direction}\"}}"),
        )
    }
}

/// The next datagram a peer gets, or None after [`SILENCE`].
async fn peer_gets(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(SILENCE, sock.recv_from(&mut buf))
        .await
        .ok()?
        .expect("peer recv");
    Some((buf[..n].to_vec(), from))
}

async fn advance_to(t: Instant) {
    let now = Instant::now();
    assert!(t > now, "the scenario is already past its next step");
    tokio::time::advance(t - now).await;
}

/// Both ways through a permission (Send and Data indications) until it
/// expires, then nothing either way.
async fn permission_expiry(fast: bool) {
    let mode = fast_label(fast);
    let mut call = call(fast, |_| {}).await;
    let (peer, peer_addr) = peer_socket("127.0.0.1").await;
    let t0 = Instant::now();
    call.permit(peer_addr).await;

    let check_live = async |call: &Call, step: &str| {
        call.send_indication(&[peer_addr], step.as_bytes()).await;
        assert_eq!(
            peer_gets(&peer).await,
            Some((step.as_bytes().to_vec(), call.relayed)),
            "{mode}: the peer gets the client's data {step}"
        );
        peer.send_to(step.as_bytes(), call.relayed)
            .await
            .expect("peer sends");
        assert_eq!(
            call.client_gets().await,
            Some(ToClient::Indication(peer_addr, step.as_bytes().to_vec())),
            "{mode}: the client gets the peer's data {step}"
        );
    };
    check_live(&call, "at once").await;
    advance_to(t0 + Duration::from_millis(299_000)).await;
    check_live(&call, "a second before the permission expires").await;
    let fast_before = (call.fast_packets("to_peer"), call.fast_packets("from_peer"));
    if fast {
        assert_eq!(fast_before, (2.0, 2.0), "the fast path relayed them");
    } else {
        assert_eq!(fast_before, (0.0, 0.0), "{mode}: nothing on the fast path");
    }

    advance_to(t0 + Duration::from_millis(301_000)).await;
    call.send_indication(&[peer_addr], b"late").await;
    assert_eq!(
        peer_gets(&peer).await,
        None,
        "{mode}: client data after the permission expired is dropped"
    );
    peer.send_to(b"late", call.relayed).await.expect("send");
    assert_eq!(
        call.client_gets().await,
        None,
        "{mode}: peer data after the permission expired is dropped"
    );
    assert_eq!(
        (call.fast_packets("to_peer"), call.fast_packets("from_peer")),
        fast_before,
        "{mode}: the fast path relayed nothing after expiry"
    );

    // A new CreatePermission opens it again, on the fast path too.
    call.permit(peer_addr).await;
    check_live(&call, "after a new permission").await;
    if fast {
        assert_eq!(call.fast_packets("to_peer"), 3.0);
    }
    call.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_permission_expiring_mid_stream_stops_both_ways_as_on_the_crate_path() {
    start_ticker();
    permission_expiry(true).await;
    permission_expiry(false).await;
}

/// A channel expires while the peer's permission is still refreshed: peer
/// data then arrives as Data indications, and ChannelData from the client
/// is dropped.
async fn channel_expiry(fast: bool) {
    let mode = fast_label(fast);
    let mut call = call(fast, |_| {}).await;
    let (peer, peer_addr) = peer_socket("127.0.0.1").await;
    let t0 = Instant::now();
    call.bind(0x4000, peer_addr).await;

    let check_channel = async |call: &Call, step: &str| {
        call.send_channel(0x4000, step.as_bytes()).await;
        assert_eq!(
            peer_gets(&peer).await,
            Some((step.as_bytes().to_vec(), call.relayed)),
            "{mode}: ChannelData reaches the peer {step}"
        );
        peer.send_to(step.as_bytes(), call.relayed)
            .await
            .expect("peer sends");
        assert_eq!(
            call.client_gets().await,
            Some(ToClient::Channel(0x4000, step.as_bytes().to_vec())),
            "{mode}: the peer's data comes as ChannelData {step}"
        );
    };
    check_channel(&call, "at once").await;
    // Keep the allocation and the permission, not the channel.
    advance_to(t0 + Duration::from_secs(250)).await;
    call.refresh(1800).await;
    call.permit(peer_addr).await;
    advance_to(t0 + Duration::from_secs(500)).await;
    call.permit(peer_addr).await;
    advance_to(t0 + Duration::from_millis(599_000)).await;
    check_channel(&call, "a second before the channel expires").await;
    if fast {
        assert_eq!(call.fast_packets("to_peer"), 2.0);
        assert_eq!(call.fast_packets("from_peer"), 2.0);
    }

    advance_to(t0 + Duration::from_millis(601_000)).await;
    call.send_channel(0x4000, b"late").await;
    assert_eq!(
        peer_gets(&peer).await,
        None,
        "{mode}: ChannelData on an expired channel is dropped"
    );
    peer.send_to(b"late", call.relayed).await.expect("send");
    assert_eq!(
        call.client_gets().await,
        Some(ToClient::Indication(peer_addr, b"late".to_vec())),
        "{mode}: with the channel gone and the permission live, peer data comes as a Data indication"
    );
    call.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_channel_expiring_mid_stream_stops_as_on_the_crate_path() {
    start_ticker();
    channel_expiry(true).await;
    channel_expiry(false).await;
}

async fn refresh_zero(fast: bool) {
    let mode = fast_label(fast);
    let mut call = call(fast, |c| c.max_allocations_per_user = 1).await;
    let (peer, peer_addr) = peer_socket("127.0.0.1").await;
    call.bind(0x4001, peer_addr).await;
    for i in 0..5u8 {
        call.send_channel(0x4001, &[i; 100]).await;
        assert!(peer_gets(&peer).await.is_some(), "{mode}: relayed");
        peer.send_to(&[i; 50], call.relayed).await.expect("send");
        assert_eq!(
            call.client_gets().await,
            Some(ToClient::Channel(0x4001, vec![i; 50])),
            "{mode}"
        );
    }
    // Quotas count fast-path traffic like any other: five each way.
    assert_eq!(call.relayed_packets("to_peer"), 5.0, "{mode}");
    assert_eq!(call.relayed_packets("from_peer"), 5.0, "{mode}");
    if fast {
        assert_eq!(call.fast_packets("to_peer"), 5.0);
        assert_eq!(call.fast_packets("from_peer"), 5.0);
    }
    // One allocation per user: a second one is refused while this one lives.
    let mut second = RawTurn::new(call.relay.udp_addr()).await;
    assert_eq!(
        second
            .request(METHOD_ALLOCATE, &call.alice, allocate_attrs)
            .await
            .err(),
        Some(486),
        "{mode}: the allocation quota holds"
    );

    // Refresh(0) and ChannelData right behind it, in one receive batch:
    // the data must not overtake the request.
    let end = call.turn.signed(METHOD_REFRESH, &call.alice, lifetime(0));
    call.turn
        .sock
        .send_to(&end.raw, call.turn.server)
        .await
        .expect("send Refresh(0)");
    call.send_channel(0x4001, b"behind").await;
    assert_eq!(
        error_code(&call.turn.response_to(&end).await),
        None,
        "{mode}"
    );
    call.send_channel(0x4001, b"after").await;
    assert_eq!(
        peer_gets(&peer).await,
        None,
        "{mode}: nothing reaches the peer after Refresh(0), not even data sent right behind it"
    );
    peer.send_to(b"after", call.relayed).await.expect("send");
    assert_eq!(
        call.client_gets().await,
        None,
        "{mode}: nothing reaches the client after Refresh(0)"
    );
    assert_eq!(call.relay.active_allocations(), 0, "{mode}");
    second
        .request(METHOD_ALLOCATE, &call.alice, allocate_attrs)
        .await
        .expect("the quota is free again");
    call.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refresh_zero_ends_relaying_at_once_and_quotas_count() {
    start_ticker();
    refresh_zero(true).await;
    refresh_zero(false).await;
}

async fn peer_policy(fast: bool) {
    let mode = fast_label(fast);
    let mut call = call(fast, |c| {
        c.deny_peers = vec!["127.0.0.2/32".parse().expect("cidr")];
    })
    .await;
    let (allowed, allowed_addr) = peer_socket("127.0.0.1").await;
    let (internal, internal_addr) = peer_socket("127.0.0.2").await;
    call.permit(allowed_addr).await;
    call.send_indication(&[allowed_addr], b"ok").await;
    assert!(peer_gets(&allowed).await.is_some(), "{mode}: allowed peer");

    let alice = call.alice.clone();
    assert_eq!(
        call.turn
            .request(METHOD_CREATE_PERMISSION, &alice, || common::peer(
                internal_addr
            ))
            .await
            .err(),
        Some(403),
        "{mode}: no permission for a refused peer"
    );
    call.send_indication(&[internal_addr], b"in").await;
    assert_eq!(peer_gets(&internal).await, None, "{mode}: refused peer");
    // The first peer has a live permission, but the indication also names a
    // refused one: it is dropped whole, as the guard drops it.
    call.send_indication(&[allowed_addr, internal_addr], b"mixed")
        .await;
    assert_eq!(
        peer_gets(&allowed).await,
        None,
        "{mode}: an indication naming a refused peer is dropped"
    );
    assert_eq!(peer_gets(&internal).await, None, "{mode}");
    assert_eq!(
        metric(
            &call.relay.metrics_text(),
            "videochat_turn_permission_refusals_total{reason=\"denied\"}"
        ),
        3.0,
        "{mode}: each refusal counted"
    );
    call.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn peer_policy_holds_on_the_fast_path() {
    start_ticker();
    peer_policy(true).await;
    peer_policy(false).await;
}

/// The `turn` crate's own client, over UDP and over TCP: after its first
/// exchanges (CreatePermission, ChannelBind) its data takes the fast path
/// both ways.
#[tokio::test]
async fn a_turn_client_over_udp_and_tcp_is_relayed_on_the_fast_path() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let relay = relay_with(|_| {}).await;
        let c = client(&relay, transport, &cred(SECRET, "carol")).await;
        let conn = c.client.allocate().await.expect("allocate");
        for i in 0..20u8 {
            round_trip(&conn, &[i; 64]).await;
        }
        let text = relay.metrics_text();
        let fast_to = metric(
            &text,
            "videochat_turn_fast_path_packets_total{direction=\"to_peer\"}",
        );
        let fast_from = metric(
            &text,
            "videochat_turn_fast_path_packets_total{direction=\"from_peer\"}",
        );
        assert!(
            fast_to > 0.0 && fast_from > 0.0,
            "fast path used both ways: {fast_to} to peers, {fast_from} from peers"
        );
        assert_eq!(
            metric(
                &text,
                "videochat_turn_relayed_packets_total{direction=\"to_peer\"}"
            ),
            20.0,
            "every datagram counted once"
        );
        c.client.close().await.expect("close");
        relay.shutdown().await;
    }
}

/// Several signed requests from one client in one receive batch are each
/// authenticated and handled (the guard checks one and the crate handles it
/// before the guard checks the next).
async fn requests_in_one_batch(fast: bool) {
    let mode = fast_label(fast);
    let call = call(fast, |_| {}).await;
    let (peer, peer_addr) = peer_socket("127.0.0.1").await;
    let (_other, other_addr) = peer_socket("127.0.0.1").await;
    let requests = [
        call.turn.signed(
            METHOD_CREATE_PERMISSION,
            &call.alice,
            common::peer(other_addr),
        ),
        call.turn.signed(METHOD_CHANNEL_BIND, &call.alice, {
            let mut a = common::peer(peer_addr);
            a.push(Box::new(ChannelNumber(0x4002)));
            a
        }),
        call.turn.signed(METHOD_REFRESH, &call.alice, lifetime(600)),
    ];
    for r in &requests {
        call.turn
            .sock
            .send_to(&r.raw, call.turn.server)
            .await
            .expect("send");
    }
    call.send_channel(0x4002, b"right behind the bind").await;
    for r in &requests {
        assert_eq!(
            error_code(&call.turn.response_to(r).await),
            None,
            "{mode}: each request of the batch succeeds"
        );
    }
    assert_eq!(
        peer_gets(&peer).await,
        Some((b"right behind the bind".to_vec(), call.relayed)),
        "{mode}: ChannelData sent right behind its ChannelBind is relayed"
    );
    call.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn requests_in_one_receive_batch_are_each_handled() {
    start_ticker();
    requests_in_one_batch(true).await;
    requests_in_one_batch(false).await;
}

/// Two allocations of this relay relaying to each other's relay address
/// (both parties of a call on the same relay): the data goes as if through
/// the kernel, including being dropped where the receiving allocation has
/// no permission or has ended.
async fn between_own_allocations(fast: bool) {
    let mode = fast_label(fast);
    let mut alice = call(fast, |_| {}).await;
    let bob_cred = cred(SECRET, "bob");
    let mut bob_turn = RawTurn::new(alice.relay.udp_addr()).await;
    let resp = bob_turn
        .request(METHOD_ALLOCATE, &bob_cred, allocate_attrs)
        .await
        .expect("bob allocates");
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&resp).expect("XOR-RELAYED-ADDRESS");
    let bob_relayed = SocketAddr::new(relayed.ip, relayed.port);
    // Bob's calls go to alice's relay (his RawTurn talks to it); the relay
    // in his Call is an idle one that only fills the struct.
    let mut bob = Call {
        relay: relay_with(|_| {}).await,
        turn: bob_turn,
        alice: bob_cred,
        relayed: bob_relayed,
    };
    alice.bind(0x4000, bob.relayed).await;
    alice.send_channel(0x4000, b"too early").await;
    assert_eq!(
        bob.client_gets().await,
        None,
        "{mode}: bob has no permission for alice yet"
    );
    bob.bind(0x4001, alice.relayed).await;
    for i in 0..3u8 {
        alice.send_channel(0x4000, &[i; 80]).await;
        assert_eq!(
            bob.client_gets().await,
            Some(ToClient::Channel(0x4001, vec![i; 80])),
            "{mode}: alice to bob"
        );
        bob.send_channel(0x4001, &[i; 40]).await;
        assert_eq!(
            alice.client_gets().await,
            Some(ToClient::Channel(0x4000, vec![i; 40])),
            "{mode}: bob to alice"
        );
    }
    let local = metric(
        &alice.relay.metrics_text(),
        "videochat_turn_local_deliveries_total",
    );
    if fast {
        assert_eq!(local, 6.0, "handed over without the kernel");
    } else {
        assert_eq!(local, 0.0, "{mode}");
    }
    // The early datagram left alice's relay socket and reached bob's, where
    // it was dropped for want of a permission: counted both ways, as on the
    // crate's path.
    assert_eq!(alice.relayed_packets("to_peer"), 7.0, "{mode}");
    assert_eq!(alice.relayed_packets("from_peer"), 7.0, "{mode}");

    bob.refresh(0).await;
    alice.send_channel(0x4000, b"after bob left").await;
    assert_eq!(
        bob.client_gets().await,
        None,
        "{mode}: nothing for an allocation that ended"
    );
    bob.relay.shutdown().await;
    alice.relay.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn allocations_of_one_relay_reach_each_other_as_through_the_kernel() {
    start_ticker();
    between_own_allocations(true).await;
    between_own_allocations(false).await;
}
