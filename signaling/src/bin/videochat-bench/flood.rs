//! The frame flood (issue "floods that skip the rate limit"): connections
//! from another address send binary frames and pre-`hello` pings as fast
//! as they can, reading every reply, and reconnect whenever the server
//! closes them; meanwhile one client sends chat at a steady rate and times
//! each ack. With `--flooders 0` it gives the unloaded figures to compare with.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{
    TICKS, connect_from, hello_and_join, load_average, percentile, proc_sample, ws_authority,
};

#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// WebSocket URL of the server.
    #[arg(
        long,
        env = "VIDEOCHAT_BENCH_URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: String,
    /// Server process id, for its CPU from /proc.
    #[arg(long, env = "VIDEOCHAT_BENCH_SERVER_PID")]
    pub server_pid: Option<u32>,
    /// Flooding connections (0: the unloaded baseline).
    #[arg(long, default_value_t = 10)]
    pub flooders: usize,
    /// The measured client's chat messages per second (under the default
    /// per-connection limit of 50).
    #[arg(long, default_value_t = 20.0)]
    pub chat_rate: f64,
    /// Measured time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Flooding before measuring starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Local address of the flooders; the measured client uses the
    /// server's own address (loopback), so the per-address limits are apart.
    #[arg(long, default_value = "127.0.0.2")]
    pub flooder_address: IpAddr,
    /// Threads of the flooders' own runtime. They run apart from the
    /// measured client, so the client's latency is the server's, not the
    /// wait behind busy flooding tasks in this process; one thread keeps a
    /// local attacker from taking more than one core from the server.
    #[arg(long, default_value_t = 1)]
    pub flood_threads: usize,
}

#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub flooders: usize,
    pub acks: usize,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub chat_errors: u64,
    pub flood_frames_per_sec: f64,
    pub flood_replies_per_sec: f64,
    pub flood_reconnects: u64,
    pub server_cpu_percent: Option<f64>,
    pub load_average: Option<f64>,
}

#[derive(Default)]
struct FloodCounters {
    frames: AtomicU64,
    replies: AtomicU64,
    reconnects: AtomicU64,
}

/// One flooding connection, reconnecting until `stop`.
async fn flood(url: String, from: IpAddr, counters: Arc<FloodCounters>, stop: Arc<AtomicBool>) {
    let binary = Message::Binary(vec![0u8; 8].into());
    let ping = Message::Text(r#"{"type":"ping"}"#.into());
    while !stop.load(Ordering::Relaxed) {
        let Ok(ws) = connect_from(from, &url).await else {
            // Refused (the address's connection cap): try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let replies = {
            let counters = counters.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Text(_)) {
                        counters.replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) && !replies.is_finished() {
            let frame = if n.is_multiple_of(2) { &binary } else { &ping };
            if sink.feed(frame.clone()).await.is_err() {
                break;
            }
            n += 1;
            if n.is_multiple_of(32) && sink.flush().await.is_err() {
                break;
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
        }
        replies.abort();
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(args: FloodArgs) -> anyhow::Result<FloodReport> {
    let server = ws_authority(&args.url)?;
    let room = format!("flood-{:08x}", rand::random::<u32>());
    let mut client = connect_from(server.ip(), &args.url).await?;
    hello_and_join(&mut client, &room).await?;

    let counters = Arc::new(FloodCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.flood_threads.max(1))
        .thread_name("flooder")
        .enable_all()
        .build()?;
    let flooders: Vec<_> = (0..args.flooders)
        .map(|_| {
            flood_runtime.spawn(flood(
                args.url.clone(),
                args.flooder_address,
                counters.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let period = Duration::from_secs_f64(1.0 / args.chat_rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let measure_to = measure_from + args.duration;
    let mut ack_us: Vec<u32> = Vec::new();
    let mut chat_errors = 0;
    let mut frames_at_start = 0;
    let mut replies_at_start = 0;
    let mut cpu_start = None;
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= measure_to {
            break;
        }
        if now >= measure_from && cpu_start.is_none() {
            cpu_start = Some(args.server_pid.and_then(proc_sample));
            frames_at_start = counters.frames.load(Ordering::Relaxed);
            replies_at_start = counters.replies.load(Ordering::Relaxed);
        }
        n += 1;
        let id = format!("c{n}");
        let chat = serde_json::json!({"type":"chat","room":room,"id":id,"body":"timed"});
        let sent = Instant::now();
        client.send(Message::Text(chat.to_string().into())).await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), client.next())
                .await
                .context("no ack within 10 s")?
                .context("the measured client was closed")??;
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("ack") if v["id"] == id.as_str() => {
                    if sent >= measure_from {
                        let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        ack_us.push(us);
                    }
                    break;
                }
                Some("error") => {
                    chat_errors += 1;
                    if v["ref"] == id.as_str() {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let secs = args.duration.as_secs_f64();
    let cpu_end = args.server_pid.and_then(proc_sample);
    let frames = counters.frames.load(Ordering::Relaxed) - frames_at_start;
    let replies = counters.replies.load(Ordering::Relaxed) - replies_at_start;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
    }
    flood_runtime.shutdown_background();
    ack_us.sort_unstable();
    let server_cpu_percent = match (cpu_start.flatten(), cpu_end) {
        (Some((_, a)), Some((_, b))) => Some((b - a) as f64 / TICKS / secs * 100.0),
        _ => None,
    };
    let report = FloodReport {
        flooders: args.flooders,
        acks: ack_us.len(),
        ack_p50_ms: percentile(&ack_us, 0.50),
        ack_p99_ms: percentile(&ack_us, 0.99),
        ack_max_ms: ack_us.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        chat_errors,
        flood_frames_per_sec: frames as f64 / secs,
        flood_replies_per_sec: replies as f64 / secs,
        flood_reconnects: counters.reconnects.load(Ordering::Relaxed),
        server_cpu_percent,
        load_average: load_average(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}
