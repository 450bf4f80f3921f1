//! The cross-instance benchmark (not a timed test; ignored by default).
//! Two release instances sharing Redis and the MongoDB wire server, 400
//! clients in rooms of 4 spread over both, at 1,000, 5,000 and 15,000 chat msgs/s;
//! then the same load on one instance with embedded backends. Prints one
//! JSON report per run for docs/benchmarks.md:
//!
//!     cargo test --release -p videochat-signaling --test cluster_bench -- --ignored --nocapture
//!
//! `VIDEOCHAT_BENCH_RATES` (comma-separated) and `VIDEOCHAT_BENCH_DURATION`
//! change the rates and the measured time.

mod support_backends;

use std::time::Duration;

use support_backends::cluster::{Instance, http, http_text};
use support_backends::{MongoServer, RedisServer, TempDir};
/// Runs the `videochat-bench` binary for one load and returns its JSON report.
fn run(urls: &str, rate: f64, pid: Option<u32>, label: &str) -> serde_json::Value {
    let secs: u64 = std::env::var("VIDEOCHAT_BENCH_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_videochat-bench"));
    cmd.args(["--url", urls, "--clients", "400", "--room-size", "4"])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &format!("{secs}s"), "--warmup", "2s"])
        .args(["--label", label]);
    if let Some(pid) = pid {
        cmd.args(["--server-pid", &pid.to_string()]);
    }
    let out = cmd.output().expect("videochat-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "videochat-bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a report line");
    println!("{line}");
    serde_json::from_str(line).expect("the report is JSON")
}

fn rates() -> Vec<f64> {
    std::env::var("VIDEOCHAT_BENCH_RATES")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000.0, 5000.0, 15000.0])
}

async fn wait_ready(i: &Instance) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http(&i.addr, "GET", "/readyz", None, None).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} not ready:\n{}",
            i.id,
            i.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One histogram summed over instances: bucket bounds with cumulative
/// counts, the sum and the count.
#[derive(Default)]
struct Summed {
    buckets: std::collections::BTreeMap<u64, f64>,
    sum: f64,
    count: f64,
}

impl Summed {
    /// The smallest bucket bound (ms) under which `q` of the samples fall;
    /// None above the last bound.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| **c >= want)
            .filter(|(nanos, _)| **nanos != u64::MAX)
            .map(|(nanos, _)| *nanos as f64 / 1e6)
    }
}

/// Where the instances' chat time went: each stage's and the server-side
/// ack's mean and bucketed p50/p99, from their `/metrics`.
async fn stage_breakdown(instances: &[&Instance]) -> serde_json::Value {
    let mut series: std::collections::BTreeMap<String, Summed> = Default::default();
    for instance in instances {
        let (_, text) = http_text(&instance.addr, "GET", "/metrics", None, None).await;
        for line in text.lines() {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .map(|v| v.trim_end_matches(['"', '}']).to_owned())
            };
            let (series_name, part) = if let Some(base) =
                name.strip_prefix("videochat_signaling_chat_stage_seconds_")
            {
                (label("stage").unwrap_or_default(), base)
            } else if let Some(base) = name.strip_prefix("videochat_signaling_ack_latency_seconds_")
            {
                ("ack_in_server".to_owned(), base)
            } else {
                continue;
            };
            let entry = series.entry(series_name).or_default();
            match part {
                "sum" => entry.sum += value,
                "count" => entry.count += value,
                "bucket" => {
                    let le = label("le").unwrap_or_default();
                    let nanos = if le == "+Inf" {
                        u64::MAX
                    } else {
                        (le.parse::<f64>().unwrap_or(f64::MAX) * 1e9) as u64
                    };
                    *entry.buckets.entry(nanos).or_default() += value;
                }
                _ => {}
            }
        }
    }
    series
        .iter()
        .map(|(name, s)| {
            let mean_ms = if s.count > 0.0 {
                s.sum / s.count * 1e3
            } else {
                0.0
            };
            (
                name.clone(),
                serde_json::json!({
                    "count": s.count,
                    "mean_ms": (mean_ms * 100.0).round() / 100.0,
                    "p50_ms_at_most": s.quantile_ms(0.5),
                    "p99_ms_at_most": s.quantile_ms(0.99),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with --ignored --nocapture in release mode"]
async fn cross_instance_chat_fan_out() {
    let redis = RedisServer::start();
    let mongo = MongoServer::start();
    let dir = TempDir::new("bench");
    // Production rate limits would refuse a load generator on one IP.
    let limits = [
        "--rate-per-connection",
        "1000000",
        "--rate-per-ip",
        "100000000",
        // All 400 clients come from one address.
        "--connect-rate-per-ip",
        "100000",
        "--max-connections-per-ip",
        "100000",
        "--max-handshakes-per-ip",
        "100000",
        "--log",
        "error",
        // Production defaults, not the fault tests' short ones.
        "--chat-sweep",
        "2s",
        "--backend-timeout",
        "5s",
    ];
    // Fresh instances per rate, so a saturated run's backlog does not
    // spill into the next one.
    for rate in rates() {
        let a = Instance::start("a", &redis.url(), &mongo.uri(), &dir, &limits);
        let b = Instance::start("b", &redis.url(), &mongo.uri(), &dir, &limits);
        wait_ready(&a).await;
        wait_ready(&b).await;
        let urls = format!("{},{}", a.ws_url(), b.ws_url());
        let report = run(&urls, rate, a.pid(), "cluster-2x-redis-mongodb");
        assert!(
            report["sent_per_sec"].as_f64() > Some(0.0),
            "no load offered: {report}"
        );
        let stages = stage_breakdown(&[&a, &b]).await;
        println!(
            "{}",
            serde_json::json!({"label": "cluster-2x-stages", "rate": rate, "stages": stages})
        );
    }

    let data = TempDir::new("bench-embedded");
    let data_dir = data.path().to_str().unwrap().to_owned();
    let mut one = vec!["--data-dir", data_dir.as_str()];
    one.extend_from_slice(&limits);
    let single = Instance::start_with("single", &dir, &one);
    wait_ready(&single).await;
    for rate in rates() {
        let report = run(&single.ws_url(), rate, single.pid(), "single-embedded");
        assert!(
            report["sent_per_sec"].as_f64() > Some(0.0),
            "no load offered: {report}"
        );
    }
}
