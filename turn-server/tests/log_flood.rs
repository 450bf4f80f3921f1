//! A flood of bad packets is counted, not logged line by line: the relay
//! runs in-process in the signaling service, whose default log filter
//! (`info`) lets through whatever the `turn` crate logs. Its own test
//! binary, because it installs the process-wide log subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn unauthenticated_channel_data_is_counted_and_logged_at_most_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    // The same filter as the signaling service's default; `init` also routes
    // the `log` records of the `turn` crate here.
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let relay = relay_with(|_| {}).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // ChannelData on channel 0x4000 with 4 bytes of payload: 8 bytes, from
    // a client that never allocated.
    let packet = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4];
    for _ in 0..500 {
        sock.send_to(&packet, relay.udp_addr()).await.expect("send");
    }
    let h = relay.handle();
    eventually("500 bad packets counted", || {
        metric(
            &h.metrics_text(),
            "videochat_turn_bad_packets_total{reason=\"no_allocation\"}",
        ) == 500.0
    })
    .await;

    // The relay still serves a real client.
    let c = client(&relay, Transport::Udp, &cred(SECRET, "after-flood")).await;
    let conn = c.client.allocate().await.expect("allocate after the flood");
    round_trip(&conn, b"still relaying").await;

    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(
        lines.len() <= 1,
        "at most one sampled line for 500 bad packets, got {}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|l| l.contains("no_allocation")),
        "the line names the reason: {lines:?}"
    );
    c.client.close().await.expect("close");
    relay.shutdown().await;
}
