//! Chat load on `/ws`: N clients in
//! rooms of K send chat at a total rate; reports delivered messages per
//! second, ack and fan-out latency percentiles, and the server's CPU and RSS
//! read from /proc. Speaks only the chat subset of the protocol, so it runs
//! unchanged against the Node.js reference server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{TICKS, Ws, percentile, proc_sample};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of the server; several, comma-separated, get the
    /// clients round-robin (so rooms span instances of a cluster).
    #[arg(
        long,
        env = "VIDEOCHAT_BENCH_URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: String,
    /// Clients (WebSocket connections).
    #[arg(long, env = "VIDEOCHAT_BENCH_CLIENTS", default_value_t = 400)]
    pub clients: usize,
    /// Clients per room.
    #[arg(long, env = "VIDEOCHAT_BENCH_ROOM_SIZE", default_value_t = 4)]
    pub room_size: usize,
    /// Chat messages per second, over all clients.
    #[arg(long, env = "VIDEOCHAT_BENCH_RATE", default_value_t = 5000.0)]
    pub rate: f64,
    /// Measured time.
    #[arg(long, env = "VIDEOCHAT_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before measuring starts.
    #[arg(long, env = "VIDEOCHAT_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Connect, join and stay idle; report RSS per connection instead.
    #[arg(long, env = "VIDEOCHAT_BENCH_IDLE")]
    pub idle: bool,
    /// Server process id, for CPU and RSS from /proc.
    #[arg(long, env = "VIDEOCHAT_BENCH_SERVER_PID")]
    pub server_pid: Option<u32>,
    /// Connections opened at once while connecting.
    #[arg(
        long,
        env = "VIDEOCHAT_BENCH_CONNECT_PARALLELISM",
        default_value_t = 64
    )]
    pub connect_parallelism: usize,
    /// Label printed with the results.
    #[arg(long, env = "VIDEOCHAT_BENCH_LABEL", default_value = "server")]
    pub label: String,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    body: Option<&'a str>,
    #[serde(default, borrow)]
    from: Option<&'a str>,
}

#[derive(Default)]
struct Samples {
    ack_us: Vec<u32>,
    fanout_us: Vec<u32>,
}

/// Results of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub label: String,
    pub clients: usize,
    pub room_size: usize,
    pub offered_rate: f64,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    pub delivered_per_sec: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub fanout_p50_ms: f64,
    pub fanout_p99_ms: f64,
    pub fanout_max_ms: f64,
    pub errors: u64,
    pub server_cpu_percent: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub rss_per_connection_kib: Option<f64>,
}

async fn connect(url: &str, room: &str, name: &str) -> anyhow::Result<(Ws, String)> {
    // TCP_NODELAY, as browsers do: no Nagle delay on small frames.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    ws.send(Message::Text(r#"{"type":"hello"}"#.into())).await?;
    let mut peer = String::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed during hello"))??;
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("welcome") => {
                    peer = v["peer"].as_str().unwrap_or_default().to_owned();
                    let join = serde_json::json!({"type":"join","room":room,"name":name});
                    ws.send(Message::Text(join.to_string().into())).await?;
                }
                Some("joined") => return Ok((ws, peer)),
                Some("error") => anyhow::bail!("refused: {t}"),
                _ => {}
            }
        }
    }
}

/// Runs the benchmark and prints a report.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.clients > 0 && args.room_size > 0,
        "--clients and --room-size must be positive"
    );
    let before = args.server_pid.and_then(proc_sample);
    let run_id: u32 = rand::random();
    let started = Instant::now();
    // Connect in waves.
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_parallelism.max(1)));
    let mut handles = Vec::with_capacity(args.clients);
    let urls: Vec<String> = args
        .url
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    anyhow::ensure!(!urls.is_empty(), "--url needs at least one WebSocket URL");
    for i in 0..args.clients {
        let url = urls[i % urls.len()].clone();
        let room = format!("bench-{run_id:08x}-{}", i / args.room_size);
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            connect(&url, &room, &format!("c{i}")).await
        }));
    }
    let mut sockets = Vec::with_capacity(args.clients);
    for h in handles {
        sockets.push(h.await??);
    }
    eprintln!(
        "{} clients connected in {:.1}s",
        sockets.len(),
        started.elapsed().as_secs_f64()
    );

    if args.idle {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = args.server_pid.and_then(proc_sample);
        let per_conn = match (before, after) {
            (Some((b, _)), Some((a, _))) => Some((a as f64 - b as f64) / args.clients as f64),
            _ => None,
        };
        let report = Report {
            label: args.label.clone(),
            clients: args.clients,
            room_size: args.room_size,
            offered_rate: 0.0,
            sent_per_sec: 0.0,
            acked_per_sec: 0.0,
            delivered_per_sec: 0.0,
            ack_p50_ms: f64::NAN,
            ack_p99_ms: f64::NAN,
            fanout_p50_ms: f64::NAN,
            fanout_p99_ms: f64::NAN,
            fanout_max_ms: f64::NAN,
            errors: 0,
            server_cpu_percent: None,
            server_rss_mib: after.map(|(rss, _)| rss as f64 / 1024.0),
            rss_per_connection_kib: per_conn,
        };
        println!("{}", serde_json::to_string(&report)?);
        drop(sockets);
        return Ok(report);
    }

    let base = Instant::now();
    let measure_from = base + args.warmup;
    let measure_to = measure_from + args.duration;
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let period = Duration::from_secs_f64(args.clients as f64 / args.rate);
    let mut tasks = Vec::new();
    for (i, (ws, peer)) in sockets.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let stop = stop_sending.clone();
        let sent = sent.clone();
        let room = format!("bench-{run_id:08x}-{}", i / args.room_size);
        // Spread the clients' send times over one period.
        let phase = period.mul_f64(i as f64 / args.clients as f64);
        let sender = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::from_std(base + phase), period);
            let mut k: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now_us = base.elapsed().as_micros() as u64;
                let text = format!(
                    r#"{{"type":"chat","room":"{room}","id":"{now_us}-{k}","body":"{now_us}"}}"#
                );
                k += 1;
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
                let at = Instant::now();
                if at >= measure_from && at < measure_to {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = sink.close().await;
        });
        let (acked, delivered, errors, samples) = (
            acked.clone(),
            delivered.clone(),
            errors.clone(),
            samples.clone(),
        );
        let receiver = tokio::spawn(async move {
            let mut local = Samples::default();
            // Stop reading at the deadline even when the server is still
            // sending a backlog, and keep the samples taken so far.
            let deadline = tokio::time::Instant::from_std(measure_to + Duration::from_secs(2));
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = tokio::time::sleep_until(deadline) => None,
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(t) = msg else { continue };
                let now = Instant::now();
                let in_window = now >= measure_from && now < measure_to;
                let Ok(m) = serde_json::from_str::<Incoming>(&t) else {
                    continue;
                };
                let now_us = now.duration_since(base).as_micros() as u64;
                match m.kind {
                    "ack" if in_window => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(t0) =
                            m.id.and_then(|id| id.split('-').next())
                                .and_then(|s| s.parse::<u64>().ok())
                        {
                            local
                                .ack_us
                                .push(now_us.saturating_sub(t0).min(u64::from(u32::MAX)) as u32);
                        }
                    }
                    "chat" if in_window && m.from != Some(peer.as_str()) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(t0) = m.body.and_then(|b| b.parse::<u64>().ok()) {
                            local
                                .fanout_us
                                .push(now_us.saturating_sub(t0).min(u64::from(u32::MAX)) as u32);
                        }
                    }
                    "error" => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            let mut s = samples.lock().await;
            s.ack_us.extend(local.ack_us);
            s.fanout_us.extend(local.fanout_us);
        });
        tasks.push((sender, receiver));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let cpu_start = args.server_pid.and_then(proc_sample);
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_to)).await;
    let cpu_end = args.server_pid.and_then(proc_sample);
    stop_sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (s, r) in tasks {
        s.abort();
        let _ = r.await;
    }
    let secs = args.duration.as_secs_f64();
    let mut s = samples.lock().await;
    s.ack_us.sort_unstable();
    s.fanout_us.sort_unstable();
    let server_cpu_percent = match (cpu_start, cpu_end) {
        (Some((_, a)), Some((_, b))) => Some((b - a) as f64 / TICKS / secs * 100.0),
        _ => None,
    };
    let report = Report {
        label: args.label.clone(),
        clients: args.clients,
        room_size: args.room_size,
        offered_rate: args.rate,
        sent_per_sec: sent.load(Ordering::Relaxed) as f64 / secs,
        acked_per_sec: acked.load(Ordering::Relaxed) as f64 / secs,
        delivered_per_sec: delivered.load(Ordering::Relaxed) as f64 / secs,
        ack_p50_ms: percentile(&s.ack_us, 0.50),
        ack_p99_ms: percentile(&s.ack_us, 0.99),
        fanout_p50_ms: percentile(&s.fanout_us, 0.50),
        fanout_p99_ms: percentile(&s.fanout_us, 0.99),
        fanout_max_ms: s
            .fanout_us
            .last()
            .map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        errors: errors.load(Ordering::Relaxed),
        server_cpu_percent,
        server_rss_mib: cpu_end.map(|(rss, _)| rss as f64 / 1024.0),
        rss_per_connection_kib: None,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}
