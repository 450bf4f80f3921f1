//! The history attack (issue "memory amplification through history"): a
//! room filled with chat whose bodies are control characters (each 6 bytes
//! once JSON-escaped, so the largest accepted body is about 8 KiB on the
//! wire), then clients that ask for `history` of 1,000 messages many times
//! and never read. Reports the server's RSS before, at its peak while the
//! attack runs (sampled every 20 ms) and after, and how many of the
//! attackers the server closed as slow consumers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{
    connect_from, hello_and_join, load_average, metric, proc_sample, ws_authority,
};

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryAttackArgs {
    /// WebSocket URL of the server.
    #[arg(
        long,
        env = "VIDEOCHAT_BENCH_URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: String,
    /// Server process id, for its RSS from /proc.
    #[arg(long, env = "VIDEOCHAT_BENCH_SERVER_PID")]
    pub server_pid: u32,
    /// Messages stored in the attacked room first.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
    /// Control characters per message body (1,365 is 8,190 bytes escaped,
    /// the most the default --max-chat-bytes takes).
    #[arg(long, default_value_t = 1365)]
    pub body_chars: usize,
    /// Connections that ask for history and never read.
    #[arg(long, default_value_t = 10)]
    pub attackers: usize,
    /// `history` requests (limit 1000) each attacker sends.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// How long RSS is watched after the requests went out.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub watch: Duration,
    /// Local address of the attackers (another loopback address keeps the
    /// per-address limits of the filler apart).
    #[arg(long, default_value = "127.0.0.2")]
    pub attacker_address: IpAddr,
}

#[derive(Debug, Serialize)]
pub struct HistoryAttackReport {
    pub messages: usize,
    pub attackers: usize,
    pub requests_per_attacker: usize,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
    pub slow_consumers_closed: f64,
    pub load_average: Option<f64>,
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let (kib, _) = proc_sample(pid).context("cannot read the server's /proc status")?;
    Ok(kib as f64 / 1024.0)
}

pub async fn run(args: HistoryAttackArgs) -> anyhow::Result<HistoryAttackReport> {
    let server = ws_authority(&args.url)?;
    let room = format!("history-attack-{:08x}", rand::random::<u32>());

    // Fill the room, paced by the acks.
    let mut filler = connect_from(server.ip(), &args.url).await?;
    hello_and_join(&mut filler, &room).await?;
    let body = "\u{1}".repeat(args.body_chars);
    let mut acked = 0;
    for chunk in (0..args.messages).collect::<Vec<_>>().chunks(100) {
        for i in chunk {
            let chat =
                serde_json::json!({"type":"chat","room":room,"id":format!("m{i}"),"body":body});
            filler.feed(Message::Text(chat.to_string().into())).await?;
        }
        filler.flush().await?;
        let want = acked + chunk.len();
        while acked < want {
            let msg = tokio::time::timeout(Duration::from_secs(30), filler.next())
                .await
                .context("no ack within 30 s while filling the room")?
                .context("the filler was closed")??;
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => {
                    anyhow::bail!("filling the room: {t} (run the server with high rate limits)")
                }
                _ => {}
            }
        }
    }
    eprintln!("room filled with {acked} messages");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_mib = rss_mib(args.server_pid)?;
    let closed_before = metric(server, "videochat_signaling_slow_consumers_total").await?;

    // The attack: every attacker sends all its requests and never reads.
    let request = Message::Text(
        serde_json::json!({"type":"history","room":room,"after":0,"limit":1000})
            .to_string()
            .into(),
    );
    let mut attackers = Vec::with_capacity(args.attackers);
    for _ in 0..args.attackers {
        let mut ws = connect_from(args.attacker_address, &args.url).await?;
        ws.send(Message::Text(r#"{"type":"hello"}"#.into())).await?;
        attackers.push(ws);
    }
    let mut peak = rss_before_mib;
    for ws in &mut attackers {
        for _ in 0..args.requests {
            // A full socket buffer is the attack working: stop sending, keep the socket.
            match tokio::time::timeout(Duration::from_millis(200), ws.feed(request.clone())).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.flush()).await;
        peak = peak.max(rss_mib(args.server_pid)?);
    }
    let until = Instant::now() + args.watch;
    while Instant::now() < until {
        peak = peak.max(rss_mib(args.server_pid)?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow_consumers_closed =
        metric(server, "videochat_signaling_slow_consumers_total").await? - closed_before;
    drop(attackers);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = HistoryAttackReport {
        messages: args.messages,
        attackers: args.attackers,
        requests_per_attacker: args.requests,
        rss_before_mib,
        rss_peak_mib: peak,
        rss_after_mib: rss_mib(args.server_pid)?,
        slow_consumers_closed,
        load_average: load_average(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}
