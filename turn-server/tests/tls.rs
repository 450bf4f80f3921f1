//! TURN over TLS (`turns:`): the `turn` crate's client over a rustls stream
//! that trusts a test CA, ALPN, protocol versions, and certificate reload
//! through a Secret-volume symlink swap.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::tls::{SecretVolume, TestCa, connect, served_leaf};
use common::*;
use rustls::version::{TLS12, TLS13};
use tokio::io::AsyncReadExt;
use videochat_turn::framing::TcpClientConn;
use videochat_turn::{Relay, RelayConfig};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vt-tls-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn tls_relay(volume: &SecretVolume, f: impl FnOnce(&mut RelayConfig)) -> Relay {
    relay_with(|c| {
        c.tls_cert_file = Some(volume.cert());
        c.tls_key_file = Some(volume.key());
        c.tls_ports = vec![0];
        c.tls_reload_interval = Duration::from_millis(50);
        f(c);
    })
    .await
}

#[tokio::test]
async fn turns_allocation_relays_with_or_without_alpn_on_tls_1_2_and_1_3() {
    let ca = TestCa::new();
    let volume = SecretVolume::new(&temp_dir("alpn"), &ca.valid_leaf());
    let relay = tls_relay(&volume, |_| {}).await;
    let server = relay.tls_addrs()[0];

    // (protocols the client offers, protocol the relay should pick)
    type AlpnCase = (&'static [&'static [u8]], Option<&'static [u8]>);
    let cases: [AlpnCase; 4] = [
        (&[], None),
        (&[b"stun.turn"], Some(b"stun.turn")),
        (&[b"stun.nat-discovery"], Some(b"stun.nat-discovery")),
        // A client offering only unrelated protocols is not refused.
        (&[b"h2", b"http/1.1"], None),
    ];
    for (i, (offered, negotiated)) in cases.into_iter().enumerate() {
        for version in [&TLS13, &TLS12] {
            let stream = connect(server, ca.client_config(offered, &[version])).await;
            let (_, session) = stream.get_ref();
            assert_eq!(session.alpn_protocol(), negotiated, "case {i}");
            assert_eq!(session.protocol_version(), Some(version.version));
            let local = stream.get_ref().0.local_addr().expect("local");
            let conn = TcpClientConn::over(stream, local, server);
            let user = format!("tls-{i}-{:?}", version.version);
            let c = client_at(server, conn, &cred(SECRET, &user)).await;
            let relayed = c.allocate().await.expect("allocate over TLS");
            round_trip(&relayed, format!("over TLS, case {i}").as_bytes()).await;
            c.close().await.expect("close");
        }
    }
    let h = relay.handle();
    eventually("TLS allocations end with their connections", || {
        h.active_allocations() == 0
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn certificate_swapped_in_the_secret_volume_is_served_and_a_bad_one_is_not() {
    let ca = TestCa::new();
    let first = ca.valid_leaf();
    let mut volume = SecretVolume::new(&temp_dir("reload"), &first);
    let relay = tls_relay(&volume, |_| {}).await;
    let server = relay.tls_addrs()[0];
    let config = ca.client_config(&[], &[&TLS13]);
    assert_eq!(
        served_leaf(&connect(server, Arc::clone(&config)).await),
        first.cert_der
    );

    // A client connected before the change keeps its session.
    let stream = connect(server, Arc::clone(&config)).await;
    let local = stream.get_ref().0.local_addr().expect("local");
    let live = client_at(
        server,
        TcpClientConn::over(stream, local, server),
        &cred(SECRET, "live"),
    )
    .await;
    let relayed = live.allocate().await.expect("allocate");

    let second = ca.valid_leaf();
    volume.update(&second.cert_pem, &second.key_pem);
    let h = relay.handle();
    eventually("reload counted", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_tls_certificate_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(
        served_leaf(&connect(server, Arc::clone(&config)).await),
        second.cert_der
    );
    round_trip(&relayed, b"across the certificate change").await;

    // A certificate with another leaf's key, then an expired one: both are
    // refused once each and the second certificate keeps serving.
    let third = ca.valid_leaf();
    volume.update(&third.cert_pem, &first.key_pem);
    eventually("mismatched pair refused", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_tls_certificate_reloads_total{result=\"error\"}",
        ) == 1.0
    })
    .await;
    let expired = ca.leaf((2020, 2021));
    volume.update(&expired.cert_pem, &expired.key_pem);
    eventually("expired certificate refused", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_tls_certificate_reloads_total{result=\"error\"}",
        ) == 2.0
    })
    .await;
    // Many reload intervals later the bad files have not been counted (or
    // logged) again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = relay.metrics_text();
    assert_eq!(
        metric(
            &text,
            "videochat_turn_tls_certificate_reloads_total{result=\"error\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "videochat_turn_tls_certificate_reloads_total{result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        served_leaf(&connect(server, Arc::clone(&config)).await),
        second.cert_der
    );
    live.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn expired_wrong_or_missing_certificate_stops_the_start() {
    let ca = TestCa::new();
    let dir = temp_dir("start");
    let write = |name: &str, leaf: &common::tls::Leaf, key_pem: &str| {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &leaf.cert_pem).expect("write");
        std::fs::write(&key, key_pem).expect("write");
        (cert, key)
    };
    let start = |(cert, key): (PathBuf, PathBuf)| async move {
        let mut c = RelayConfig::local(SECRET);
        c.tls_cert_file = Some(cert);
        c.tls_key_file = Some(key);
        c.tls_ports = vec![0];
        Relay::start(c)
            .await
            .err()
            .expect("start refused")
            .to_string()
    };
    let expired = ca.leaf((2020, 2021));
    let e = start(write("expired", &expired, &expired.key_pem)).await;
    assert!(
        e.starts_with("--tls-cert-file:") && e.contains("expired"),
        "{e}"
    );

    let good = ca.valid_leaf();
    let other = ca.valid_leaf();
    let e = start(write("wrong", &good, &other.key_pem)).await;
    assert!(
        e.starts_with("--tls-key-file:") && e.contains("does not belong"),
        "{e}"
    );

    let e = start((dir.join("missing.crt"), dir.join("missing.key"))).await;
    assert!(
        e.starts_with("--tls-cert-file:") && e.contains("missing.crt"),
        "{e}"
    );

    let e = start(write("notpem", &good, "not a key")).await;
    assert!(e.starts_with("--tls-key-file:"), "{e}");
}

#[tokio::test]
async fn a_tls_connection_that_never_handshakes_is_closed() {
    let ca = TestCa::new();
    let volume = SecretVolume::new(&temp_dir("idle"), &ca.valid_leaf());
    let relay = tls_relay(&volume, |c| {
        c.stream_auth_timeout = Duration::from_millis(300)
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(relay.tls_addrs()[0])
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    let h = relay.handle();
    eventually("counted as an authentication timeout", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_tcp_connections_closed_total{reason=\"auth_timeout\"}",
        ) == 1.0
    })
    .await;
    relay.shutdown().await;
}
