//! What a hostile client tries against the relay: requests on someone
//! else's allocation, idle streams that hold connection slots, and internal
//! peers written in IPv6 forms that carry an IPv4 address.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use stun::message::{
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn requests_signed_by_another_user_get_441_and_cannot_delete_the_allocation() {
    let relay = relay_with(|_| {}).await;
    let alice = cred(SECRET, "alice");
    let mallory = cred(SECRET, "mallory");
    let mut raw = RawTurn::new(relay.udp_addr()).await;
    raw.request(METHOD_ALLOCATE, &alice, allocate_attrs)
        .await
        .expect("alice allocates");
    assert_eq!(relay.active_allocations(), 1);
    let peer_sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("peer");
    let peer_addr = peer_sock.local_addr().expect("addr");

    // Mallory's credentials are valid, but the allocation is Alice's.
    assert_eq!(
        raw.request(METHOD_REFRESH, &mallory, || lifetime(0))
            .await
            .err(),
        Some(441),
        "Refresh(0) signed by another user"
    );
    assert_eq!(
        raw.request(METHOD_REFRESH, &mallory, || lifetime(600))
            .await
            .err(),
        Some(441),
        "Refresh signed by another user"
    );
    assert_eq!(
        raw.request(METHOD_CREATE_PERMISSION, &mallory, || peer(peer_addr))
            .await
            .err(),
        Some(441),
        "CreatePermission signed by another user"
    );
    let bind = || {
        let mut a = peer(peer_addr);
        a.push(Box::new(turn::proto::channum::ChannelNumber(0x4001)));
        a
    };
    assert_eq!(
        raw.request(METHOD_CHANNEL_BIND, &mallory, bind).await.err(),
        Some(441),
        "ChannelBind signed by another user"
    );
    assert_eq!(
        relay.active_allocations(),
        1,
        "the allocation is still there"
    );
    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_auth_failures_total{reason=\"wrong_user\"}"
        ),
        4.0
    );

    // Alice still owns it and may use and end it.
    raw.request(METHOD_CREATE_PERMISSION, &alice, || peer(peer_addr))
        .await
        .expect("alice's permission");
    raw.request(METHOD_REFRESH, &alice, || lifetime(0))
        .await
        .expect("alice's Refresh(0)");
    let h = relay.handle();
    eventually("allocation deleted by its owner", || {
        h.active_allocations() == 0
    })
    .await;

    // A new allocation on the same 5-tuple belongs to whoever makes it.
    raw.request(METHOD_ALLOCATE, &mallory, allocate_attrs)
        .await
        .expect("mallory allocates afresh");
    assert_eq!(
        raw.request(METHOD_REFRESH, &alice, || lifetime(600))
            .await
            .err(),
        Some(441)
    );
    relay.shutdown().await;
}

/// Reads until the relay closes `s`; panics if it stays open for 5 s.
async fn closed_by_relay(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: still open after 5 s"),
        }
    }
}

async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    sock.connect(server).await.expect("connect")
}

#[tokio::test]
async fn idle_streams_are_closed_and_one_address_cannot_take_every_slot() {
    let relay = relay_with(|c| {
        c.max_tcp_connections = 6;
        c.max_connections_per_address = 3;
        c.stream_auth_timeout = Duration::from_millis(500);
    })
    .await;
    let tcp = relay.tcp_addr().expect("tcp");

    // An authenticated client connects first and keeps its connection
    // past the timeout.
    let c = client(&relay, Transport::Tcp, &cred(SECRET, "carol")).await;
    let conn = c.client.allocate().await.expect("allocate over TCP");

    // 127.0.0.1 now holds one slot; two idle sockets fill its share ...
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(connect_from("127.0.0.1", tcp).await);
    }
    // ... so a third from the same address is closed at once,
    let mut over = connect_from("127.0.0.1", tcp).await;
    closed_by_relay(&mut over, "connection over the per-address cap").await;
    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_tcp_connections_refused_total{reason=\"per_address\"}"
        ),
        1.0
    );
    // while another address still gets in.
    let mut other = connect_from("127.0.0.2", tcp).await;

    // The idle ones are closed once the authentication timeout passes.
    for (i, s) in idle.iter_mut().enumerate() {
        closed_by_relay(s, &format!("idle socket {i}")).await;
    }
    closed_by_relay(&mut other, "idle socket from another address").await;
    let h = relay.handle();
    eventually("idle sockets counted as closed", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_tcp_connections_closed_total{reason=\"auth_timeout\"}",
        ) == 3.0
    })
    .await;

    // The authenticated client outlived the timeout and still relays.
    round_trip(&conn, b"still here after the auth timeout").await;
    eventually("only the authenticated connection is open", || {
        metric(&h.metrics_text(), "videochat_turn_tcp_connections_active") == 1.0
    })
    .await;
    c.client.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn internal_peers_in_ipv6_forms_that_carry_ipv4_are_refused() {
    // Loopback peers are allowed here (the local config); the metadata
    // address 169.254.169.254 is not, in any form.
    let relay = relay_with(|_| {}).await;
    let alice = cred(SECRET, "alice");
    let mut raw = RawTurn::new(relay.udp_addr()).await;
    raw.request(METHOD_ALLOCATE, &alice, allocate_attrs)
        .await
        .expect("allocate");
    for form in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "::169.254.169.254",
        "::ffff:0:169.254.169.254",
        "2002:a9fe:a9fe::1",
        "64:ff9b::169.254.169.254",
        "64:ff9b:1::169.254.169.254",
        "2001:0:4136:e378:8000:63bf:5601:5601",
    ] {
        let addr = SocketAddr::new(form.parse().expect("address"), 80);
        assert_eq!(
            raw.request(METHOD_CREATE_PERMISSION, &alice, || peer(addr))
                .await
                .err(),
            Some(403),
            "{form} must be refused"
        );
    }
    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_permission_refusals_total{reason=\"link_local\"}"
        ),
        8.0
    );
    relay.shutdown().await;
}
