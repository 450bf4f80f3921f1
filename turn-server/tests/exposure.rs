//! What the relay needs when it runs in a cluster: learning the address it
//! announces from a mounted file (a ConfigMap the operator keeps, named by
//! node or pod) and following changes, and draining without turning NotReady.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use videochat_turn::readiness::{DrainReadiness, Readiness};
use webrtc_util::Conn;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "videochat-turn-exposure-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `files` the way the kubelet updates a ConfigMap volume: a new
/// timestamped directory, then an atomic swap of the `..data` symlink that
/// each visible file points through.
fn publish_config_map(dir: &Path, generation: u32, files: &[(&str, &str)]) {
    let data = format!("..gen_{generation}");
    std::fs::create_dir_all(dir.join(&data)).expect("data dir");
    for (key, value) in files {
        std::fs::write(dir.join(&data).join(key), value).expect("write key");
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link).expect("key link");
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).expect("tmp link");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn relay_learns_its_address_from_the_mounted_map_and_follows_changes() {
    let dir = scratch("learn");
    // Another node's entry is there; this relay's is not yet.
    publish_config_map(&dir, 1, &[("node-b", "198.51.100.2")]);
    let relay = relay_with(|c| {
        c.relay_address_dir = Some(dir.clone());
        c.relay_address_key = Some("node-a".into());
        c.relay_address_reload_interval = Duration::from_millis(20);
        c.no_admin = false;
        c.admin_listen = "127.0.0.1:0".parse().expect("addr");
    })
    .await;
    let admin = relay.admin_addr().expect("admin");

    // Without its address the relay is not Ready and refuses allocations.
    assert_eq!(relay.relay_address(), None);
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no relay address"), "{body}");
    let early = client(&relay, Transport::Udp, &cred(SECRET, "early")).await;
    let err = early
        .client
        .allocate()
        .await
        .err()
        .expect("refused without an address");
    assert!(err.to_string().contains("508"), "{err}");

    // The operator writes this node's entry: Ready, and allocations carry it.
    publish_config_map(
        &dir,
        2,
        &[("node-a", "127.0.0.1\n"), ("node-b", "198.51.100.2")],
    );
    eventually("the relay learns 127.0.0.1", || {
        relay.relay_address() == Some("127.0.0.1".parse().expect("ip"))
    })
    .await;
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let first = client(&relay, Transport::Udp, &cred(SECRET, "first")).await;
    let conn = first.client.allocate().await.expect("allocate");
    assert_eq!(
        conn.local_addr().expect("relayed").ip().to_string(),
        "127.0.0.1"
    );
    round_trip(&conn, b"through the learned address").await;

    // A new address (e.g. the node's external IP changed) applies to new
    // allocations without a restart; the live one keeps relaying.
    publish_config_map(
        &dir,
        3,
        &[("node-a", "127.0.0.9"), ("node-b", "198.51.100.2")],
    );
    eventually("the relay follows the change", || {
        relay.relay_address() == Some("127.0.0.9".parse().expect("ip"))
    })
    .await;
    let second = client(&relay, Transport::Udp, &cred(SECRET, "second")).await;
    let conn2 = second
        .client
        .allocate()
        .await
        .expect("allocate after change");
    assert_eq!(
        conn2.local_addr().expect("relayed").ip().to_string(),
        "127.0.0.9"
    );
    round_trip(&conn, b"the first allocation still relays").await;

    // A garbage entry is no address: not Ready again.
    publish_config_map(&dir, 4, &[("node-a", "not-an-ip")]);
    eventually("a bad entry clears the address", || {
        relay.relay_address().is_none()
    })
    .await;
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    assert!(matches!(relay.readiness(), Readiness::NotReady(_)));

    first.client.close().await.expect("close");
    second.client.close().await.expect("close");
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn draining_relay_stays_ready_refuses_new_and_keeps_live_allocations() {
    let relay = relay_with(|c| {
        c.no_admin = false;
        c.admin_listen = "127.0.0.1:0".parse().expect("addr");
    })
    .await;
    let admin = relay.admin_addr().expect("admin");
    let live = client(&relay, Transport::Udp, &cred(SECRET, "live")).await;
    let conn = live.client.allocate().await.expect("allocate");
    round_trip(&conn, b"before drain").await;

    relay.begin_drain();
    // Still Ready: a Service routing UDP by readiness would otherwise flush
    // the live allocation's conntrack entries.
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(relay.readiness(), Readiness::ReadyDraining);
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(metric(&metrics, "videochat_turn_draining"), 1.0);

    let late = client(&relay, Transport::Udp, &cred(SECRET, "late")).await;
    let err = late.client.allocate().await.err().expect("refused");
    assert!(err.to_string().contains("508"), "{err}");
    round_trip(&conn, b"live allocation keeps relaying").await;
    assert_eq!(relay.active_allocations(), 1);

    live.client.close().await.expect("close");
    relay.shutdown().await;
}

#[tokio::test]
async fn drain_readiness_not_ready_turns_readiness_off() {
    let relay = relay_with(|c| {
        c.no_admin = false;
        c.admin_listen = "127.0.0.1:0".parse().expect("addr");
        c.drain_readiness = DrainReadiness::NotReady;
    })
    .await;
    let admin = relay.admin_addr().expect("admin");
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    relay.begin_drain();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("draining"), "{body}");
    relay.shutdown().await;
}
