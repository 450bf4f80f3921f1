//! In-process tests: the `turn` crate's client against a relay on loopback.

mod common;

use std::time::Duration;

use common::*;
use videochat_turn::credentials::generate;
use webrtc_util::Conn;

#[tokio::test]
async fn udp_allocation_relays_both_ways() {
    let relay = relay_with(|_| {}).await;
    let c = client(&relay, Transport::Udp, &cred(SECRET, "alice")).await;
    let conn = c.client.allocate().await.expect("allocate over UDP");
    round_trip(&conn, b"hello over udp").await;
    assert_eq!(relay.active_allocations(), 1);
    let text = relay.metrics_text();
    assert_eq!(metric(&text, "videochat_turn_allocations_total"), 1.0);
    assert!(
        metric(
            &text,
            "videochat_turn_relayed_packets_total{direction=\"to_peer\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "videochat_turn_relayed_bytes_total{direction=\"from_peer\"}"
        ) >= 14.0
    );
    c.client.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn tcp_allocation_relays_both_ways_and_ends_with_the_connection() {
    let relay = relay_with(|_| {}).await;
    {
        let c = client(&relay, Transport::Tcp, &cred(SECRET, "bob")).await;
        let conn = c.client.allocate().await.expect("allocate over TCP");
        round_trip(&conn, b"hello over tcp").await;
        // A second datagram, odd-sized, exercises ChannelData padding on TCP.
        round_trip(&conn, b"12345").await;
        assert_eq!(relay.active_allocations(), 1);
        c.client.close().await.expect("close");
    }
    // Closing the control connection releases the allocation.
    let h = relay.handle();
    eventually("allocation released after TCP close", || {
        h.active_allocations() == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn wrong_password_expired_username_and_unknown_secret_are_refused() {
    let relay = relay_with(|_| {}).await;
    let mut bad = cred(SECRET, "mallory");
    bad.password = "not-the-password".into();
    let c = client(&relay, Transport::Udp, &bad).await;
    let err = c
        .client
        .allocate()
        .await
        .err()
        .expect("wrong password refused");
    assert!(err.to_string().contains("401"), "{err}");

    let expired = generate(SECRET.as_bytes(), Some("mallory"), now() - 100, 10);
    let c = client(&relay, Transport::Udp, &expired).await;
    let err = c.client.allocate().await.err().expect("expired refused");
    assert!(err.to_string().contains("401"), "{err}");

    let other = cred("some-other-secret", "mallory");
    let c = client(&relay, Transport::Udp, &other).await;
    assert!(c.client.allocate().await.is_err(), "unknown secret refused");

    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_auth_failures_total{reason=\"bad_password\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "videochat_turn_auth_failures_total{reason=\"expired\"}"
        ),
        1.0
    );
    assert_eq!(relay.active_allocations(), 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn secret_file_rotation_without_restart() {
    let dir = std::env::temp_dir().join(format!("vt-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("secrets");
    std::fs::write(&file, "# current\nold-secret\n").expect("write");
    let relay = relay_with(|c| {
        c.secrets.clear();
        c.secret_file = Some(file.clone());
        c.secret_reload_interval = Duration::from_millis(50);
    })
    .await;

    // Not yet in the file: refused.
    let c = client(&relay, Transport::Udp, &cred("new-secret", "u1")).await;
    assert!(
        c.client.allocate().await.is_err(),
        "new secret not yet valid"
    );

    // Added to the file: accepted without restart, old one still valid.
    std::fs::write(&file, "old-secret\nnew-secret\n").expect("write");
    let h = relay.handle();
    eventually("reload", || {
        metric(&h.metrics_text(), "videochat_turn_secrets_loaded") == 2.0
    })
    .await;
    let c_new = client(&relay, Transport::Udp, &cred("new-secret", "u2")).await;
    let conn = c_new.client.allocate().await.expect("new secret accepted");
    round_trip(&conn, b"rotated").await;
    let c_old = client(&relay, Transport::Udp, &cred("old-secret", "u3")).await;
    c_old
        .client
        .allocate()
        .await
        .expect("old secret still accepted");

    // Rotated out: refused.
    std::fs::write(&file, "new-secret\n").expect("write");
    eventually("reload", || {
        metric(&h.metrics_text(), "videochat_turn_secrets_loaded") == 1.0
    })
    .await;
    let c = client(&relay, Transport::Udp, &cred("old-secret", "u4")).await;
    let err = c
        .client
        .allocate()
        .await
        .err()
        .expect("rotated-out secret refused");
    assert!(err.to_string().contains("401"), "{err}");
    relay.shutdown().await;
}

#[tokio::test]
async fn quotas_refuse_with_486() {
    let relay = relay_with(|c| {
        c.max_allocations_per_user = 1;
        c.max_allocations = 2;
    })
    .await;
    let a1 = client(&relay, Transport::Udp, &cred(SECRET, "carol")).await;
    let _conn = a1.client.allocate().await.expect("first allocation");
    let a2 = client(&relay, Transport::Udp, &cred(SECRET, "carol")).await;
    let err = a2.client.allocate().await.err().expect("per-user quota");
    assert!(err.to_string().contains("486"), "{err}");

    let b1 = client(&relay, Transport::Udp, &cred(SECRET, "dave")).await;
    let _conn_b = b1.client.allocate().await.expect("second user allowed");
    let e1 = client(&relay, Transport::Udp, &cred(SECRET, "erin")).await;
    let err = e1.client.allocate().await.err().expect("total quota");
    assert!(err.to_string().contains("486"), "{err}");

    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_quota_refusals_total{reason=\"per_user\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "videochat_turn_quota_refusals_total{reason=\"total\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "videochat_turn_allocations_active"), 2.0);
    relay.shutdown().await;
}

#[tokio::test]
async fn default_peer_policy_refuses_loopback_and_metadata() {
    let relay = relay_with(|c| c.allow_loopback_peers = false).await;
    let c = client(&relay, Transport::Udp, &cred(SECRET, "frank")).await;
    let conn = c.client.allocate().await.expect("allocate");
    let err = conn
        .send_to(b"x", "127.0.0.1:9".parse().expect("addr"))
        .await
        .expect_err("loopback peer refused");
    assert!(err.to_string().contains("403"), "{err}");
    let err = conn
        .send_to(b"x", "169.254.169.254:80".parse().expect("addr"))
        .await
        .expect_err("metadata peer refused");
    assert!(err.to_string().contains("403"), "{err}");
    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_permission_refusals_total{reason=\"loopback\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "videochat_turn_permission_refusals_total{reason=\"link_local\"}"
        ),
        1.0
    );
    relay.shutdown().await;

    // With --allow-loopback-peers the same client relays to loopback.
    let relay = relay_with(|c| c.allow_loopback_peers = true).await;
    let c = client(&relay, Transport::Udp, &cred(SECRET, "frank")).await;
    let conn = c.client.allocate().await.expect("allocate");
    round_trip(&conn, b"loopback allowed").await;
    let err = conn
        .send_to(b"x", "169.254.169.254:80".parse().expect("addr"))
        .await
        .expect_err("metadata still refused");
    assert!(err.to_string().contains("403"), "{err}");
    relay.shutdown().await;
}

#[tokio::test]
async fn drain_refuses_new_allocations_while_live_ones_relay() {
    let relay = relay_with(|_| {}).await;
    let live = client(&relay, Transport::Udp, &cred(SECRET, "gina")).await;
    let conn = live.client.allocate().await.expect("allocate before drain");
    round_trip(&conn, b"before drain").await;

    relay.begin_drain();
    assert!(relay.is_draining());
    let late = client(&relay, Transport::Udp, &cred(SECRET, "hank")).await;
    let err = late
        .client
        .allocate()
        .await
        .err()
        .expect("refused while draining");
    assert!(err.to_string().contains("508"), "{err}");

    round_trip(&conn, b"still relaying while draining").await;
    assert_eq!(relay.active_allocations(), 1);
    assert!(!relay.wait_drained(Duration::from_millis(200)).await);
    assert_eq!(
        metric(&relay.metrics_text(), "videochat_turn_drain_refusals_total"),
        1.0
    );
    live.client.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn retransmitted_allocate_gets_the_same_success_not_437() {
    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
    use stun::error_code::ErrorCodeAttribute;
    use stun::integrity::MessageIntegrity;
    use stun::message::Getter;
    use stun::message::{
        CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, Message, MessageType, Setter,
    };
    use stun::textattrs::TextAttribute;
    use turn::proto::reqtrans::RequestedTransport;

    let relay = relay_with(|_| {}).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = relay.udp_addr();
    let exchange = |raw: Vec<u8>| {
        let sock = &sock;
        async move {
            sock.send_to(&raw, server).await.expect("send");
            let mut buf = [0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
                .await
                .expect("answer within 2s")
                .expect("recv");
            let mut m = Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            m.decode().expect("decode answer");
            m
        }
    };
    let transport = || {
        Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })
    };

    let mut first = Message::new();
    first
        .build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            transport(),
        ])
        .expect("build");
    let challenge = exchange(first.raw.clone()).await;
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&challenge).expect("error code");
    assert_eq!(code.code.0, 401);
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).expect("nonce");

    let c = cred(SECRET, "retry");
    let mut req = Message::new();
    req.build(&[
        Box::new(TransactionId::new()) as Box<dyn Setter>,
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        transport(),
        Box::new(TextAttribute::new(ATTR_USERNAME, c.username.clone())),
        Box::new(TextAttribute::new(ATTR_REALM, "videochat".into())),
        Box::new(nonce),
        Box::new(MessageIntegrity::new_long_term_integrity(
            c.username.clone(),
            "videochat".into(),
            c.password.clone(),
        )),
    ])
    .expect("build");
    let ok = exchange(req.raw.clone()).await;
    assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE, "{}", ok.typ);
    // The same request again, as a client retransmits when the answer is late.
    let again = exchange(req.raw.clone()).await;
    assert_eq!(again.typ.class, CLASS_SUCCESS_RESPONSE, "{}", again.typ);
    assert_eq!(again.raw, ok.raw);
    assert_eq!(relay.active_allocations(), 1);
    assert_eq!(
        metric(&relay.metrics_text(), "videochat_turn_allocations_total"),
        1.0
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_requests_share_one_challenge_nonce() {
    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_NONCE, ATTR_REALM};
    use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE, Message, MessageType, Setter};
    use stun::textattrs::TextAttribute;

    let relay = relay_with(|_| {}).await;
    let mut nonces = std::collections::HashSet::new();
    for _ in 0..30 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut req = Message::new();
        req.build(&[
            Box::new(TransactionId::new()) as Box<dyn Setter>,
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ])
        .expect("build");
        sock.send_to(&req.raw, relay.udp_addr())
            .await
            .expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("challenge within 2s")
            .expect("recv");
        let mut m = Message {
            raw: buf[..n].to_vec(),
            ..Default::default()
        };
        m.decode().expect("decode");
        assert_eq!(m.transaction_id, req.transaction_id);
        let realm = TextAttribute::get_from_as(&m, ATTR_REALM).expect("realm");
        assert_eq!(realm.text, "videochat");
        nonces.insert(
            TextAttribute::get_from_as(&m, ATTR_NONCE)
                .expect("nonce")
                .text,
        );
    }
    // One nonce issued by the TURN server, then handed out again: a flood of
    // unauthenticated requests does not grow its nonce table.
    assert_eq!(nonces.len(), 1, "{nonces:?}");

    // And the shared nonce authenticates a real client.
    let c = client(&relay, Transport::Udp, &cred(SECRET, "nonce")).await;
    let conn = c
        .client
        .allocate()
        .await
        .expect("allocate with the shared nonce");
    round_trip(&conn, b"nonce ok").await;
    relay.shutdown().await;
}
