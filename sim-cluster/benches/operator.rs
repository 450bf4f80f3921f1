//! Operator benchmark on the simulated cluster: the release operator binary,
//! run as its own process against the simulated API server, as a user runs
//! it against a real one (a kubeconfig, leader election on).
//!
//! For each spec it measures, three times (medians are printed):
//! - apply → every child object applied: from `kubectl apply` of the
//!   VideoChatCluster to the first write of the last object the operator
//!   ends up owning;
//! - apply → status Ready: with real pods (the default: the simulated
//!   kubelet runs the binaries in `VIDEOCHAT_SIM_BIN_DIR`, `target/debug`
//!   unless set (the pods' start time is not the operator's), redis-server and
//!   the MongoDB wire server, which needs root and iproute2, as the
//!   simulated-cluster tests do), or with `VIDEOCHAT_BENCH_RUN_PODS=0`
//!   without processes, where pods never turn Ready and only the
//!   operator's own share is measured;
//! - over one idle minute after the operator settled: reconciles (from its
//!   /metrics), writes it made, its CPU time and its RSS.
//!
//! Run: `cargo build --bins && cargo build --release -p videochat-operator && VIDEOCHAT_SIM_BIN_DIR=$PWD/target/debug cargo bench -p videochat-sim-cluster --bench operator`
//! (`VIDEOCHAT_BENCH_IDLE_SECONDS` shortens the idle window for a quick look).

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use videochat_sim_cluster::{SimCluster, SimClusterOptions};

const NAMESPACE: &str = "videochat";
const CLUSTER: &str = "bench";
const OPERATOR_FIELD_MANAGER: &str = "videochat-operator";
/// Runs per spec (`VIDEOCHAT_BENCH_RUNS`, default 3).
fn run_count() -> usize {
    std::env::var("VIDEOCHAT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}
/// No write for this long counts as settled.
const QUIET: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(120);

struct Run {
    objects_applied: Duration,
    ready: Option<Duration>,
    objects: usize,
    idle_reconciles: u64,
    idle_writes: usize,
    /// Who wrote what while idle: "METHOD path by manager" and a count.
    idle_writers: BTreeMap<String, usize>,
    idle_cpu: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    // The pods run the servers from `VIDEOCHAT_SIM_BIN_DIR`; without it,
    // from this benchmark's own profile directory (target/release).
    if run_pods() {
        let dir = videochat_sim_cluster::runtime::images::cargo_bin_dir();
        for binary in ["videochat-signaling", "videochat-turn"] {
            if !dir.join(binary).exists() {
                eprintln!(
                    "{} is missing: run `cargo build --bins` and set VIDEOCHAT_SIM_BIN_DIR=target/debug",
                    dir.join(binary).display()
                );
                std::process::exit(2);
            }
        }
    }
    let idle = std::env::var("VIDEOCHAT_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(60));
    let operator = operator_binary();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "operator benchmark: {} ({} runs each, idle window {} s, {})",
        operator.display(),
        run_count(),
        idle.as_secs(),
        if run_pods() {
            "pods run real processes"
        } else {
            "pods run nothing"
        }
    );
    let specs = [
        ("defaults", json!({})),
        (
            "autoscaling on, metricsIntervalSeconds 15",
            json!({"autoscaling": {"enabled": true, "metricsIntervalSeconds": 15}}),
        ),
    ];
    for (name, spec) in specs {
        let mut runs = Vec::new();
        for _ in 0..run_count() {
            runs.push(runtime.block_on(one_run(&operator, spec.clone(), idle)));
        }
        report(name, &runs, idle);
    }
}

fn operator_binary() -> PathBuf {
    // target/release/deps/operator-<hash> → target/release/videochat-operator
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/release");
    let binary = release.join("videochat-operator");
    if !binary.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release -p videochat-operator` first",
            binary.display()
        );
        std::process::exit(2);
    }
    binary
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn kubeconfig(api: SocketAddr, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: http://{api}\nusers:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {NAMESPACE}\ncurrent-context: sim\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

struct OperatorProcess {
    child: Child,
    admin: SocketAddr,
}

impl OperatorProcess {
    fn start(binary: &std::path::Path, kubeconfig: &std::path::Path) -> Self {
        let admin = free_port();
        let child = Command::new(binary)
            .args(["run", "--namespace", NAMESPACE])
            .arg(format!("--admin-listen={admin}"))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("POD_NAME", "operator-0")
            // VIDEOCHAT_BENCH_OPERATOR_LOG=info shows what each idle write was.
            .env(
                "VIDEOCHAT_LOG",
                std::env::var("VIDEOCHAT_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the operator");
        Self { child, admin }
    }

    /// (utime + stime, VmRSS KiB, VmHWM KiB) from /proc.
    fn usage(&self) -> (Duration, u64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // CLK_TCK is 100 on Linux x86_64.
        (
            Duration::from_millis(ticks * 10),
            kib("VmRSS:"),
            kib("VmHWM:"),
        )
    }

    async fn reconciles(&self) -> Option<u64> {
        let text = http_get(self.admin, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with("videochat_operator_reconciles_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET, enough for the operator's admin server.
async fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cluster_api(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "videochat.dev".into(),
        version: "v1alpha1".into(),
        api_version: "videochat.dev/v1alpha1".into(),
        kind: "VideoChatCluster".into(),
        plural: "videochatclusters".into(),
    };
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

fn is_ready(object: &DynamicObject) -> bool {
    object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn run_pods() -> bool {
    std::env::var("VIDEOCHAT_BENCH_RUN_PODS").map_or(true, |v| v != "0")
}

async fn one_run(operator: &std::path::Path, spec: Value, idle: Duration) -> Run {
    let sim = SimCluster::start(SimClusterOptions {
        run_pods: run_pods(),
        restart_backoff: Duration::from_secs(1),
        ..SimClusterOptions::default()
    })
    .await
    .expect("the simulated cluster starts (real pods need root and iproute2)");
    let client = sim.client().expect("client");
    let dir = std::env::temp_dir().join(format!(
        "videochat-operator-bench-{}-{}",
        std::process::id(),
        sim.address.port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let process = OperatorProcess::start(operator, &kubeconfig(sim.address, &dir));
    // Up and leading before the clock starts: apply time is the
    // operator's, not its start-up.
    poll("the operator's metrics", || process.reconciles()).await;
    poll("the operator holds the Lease", || async {
        sim.requests()
            .iter()
            .any(|r| r.is_write() && r.path.contains("/leases") && r.code < 300)
            .then_some(())
    })
    .await;

    let clusters = cluster_api(&client);
    let applied_at = Instant::now();
    clusters
        .patch(
            CLUSTER,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(json!({
                "apiVersion": "videochat.dev/v1alpha1",
                "kind": "VideoChatCluster",
                "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
                "spec": spec,
            })),
        )
        .await
        .expect("apply the VideoChatCluster");
    let ready_limit = if run_pods() {
        LIMIT
    } else {
        Duration::from_secs(1)
    };
    let ready_at = tokio::time::timeout(
        ready_limit,
        poll("status Ready", || async {
            let object = clusters.get(CLUSTER).await.ok()?;
            is_ready(&object).then(Instant::now)
        }),
    )
    .await
    .ok();

    // With real pods, a Ready revision is recorded as good after its
    // stabilization time (ControllerRevisions, status, an Event): one-time
    // work that belongs to the install, not to idleness.
    if run_pods() && ready_at.is_some() {
        poll("every revision recorded as good", || async {
            let object = clusters.get(CLUSTER).await.ok()?;
            let components = object.data.pointer("/status/components")?.as_object()?;
            components
                .values()
                // The rollback target (kept in a ControllerRevision after the
                // stabilization time), not the component's newest ready revision.
                .all(|c| {
                    c["revision"].is_string() && c["rollout"]["lastGoodRevision"] == c["revision"]
                })
                .then_some(())
        })
        .await;
    }
    // Settled: no write by the operator for QUIET.
    poll("the operator settles", || async {
        let last = sim
            .requests()
            .iter()
            .rev()
            .find(|r| r.is_write() && r.field_manager == OPERATOR_FIELD_MANAGER)
            .map(|r| r.at)?;
        (last.elapsed() > QUIET).then_some(())
    })
    .await;
    // The first write of each object the operator applied (its status
    // writes to the cluster resource are not objects it owns).
    let mut first_write: BTreeMap<String, Instant> = BTreeMap::new();
    for request in sim.requests() {
        if request.at < applied_at
            || !request.is_write()
            || request.code >= 300
            || request.field_manager != OPERATOR_FIELD_MANAGER
            || request.path.contains("/videochatclusters/")
            || request.path.contains("/leases")
            || request.path.contains("/events")
            // Recorded once a revision has been good for its stabilization
            // time: history, not the install.
            || request.path.contains("/controllerrevisions/")
        {
            continue;
        }
        first_write
            .entry(request.path.clone())
            .or_insert(request.at);
    }
    let objects_applied = first_write
        .values()
        .max()
        .map(|last| *last - applied_at)
        .unwrap_or_default();

    let reconciles_before = process.reconciles().await.unwrap_or(0);
    let (cpu_before, _, _) = process.usage();
    let idle_from = Instant::now();
    tokio::time::sleep(idle).await;
    let (cpu_after, rss_kib, peak_rss_kib) = process.usage();
    let idle_reconciles = process.reconciles().await.unwrap_or(0) - reconciles_before;
    let idle_requests: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.at >= idle_from && r.is_write() && !r.path.contains("/leases"))
        .collect();
    let idle_writes = idle_requests.len();
    let mut idle_writers = BTreeMap::new();
    for r in &idle_requests {
        *idle_writers
            .entry(format!("{} {} by {}", r.method, r.path, r.field_manager))
            .or_insert(0) += 1;
    }
    drop(process);
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        objects_applied,
        ready: ready_at.map(|at| at - applied_at),
        objects: first_write.len(),
        idle_reconciles,
        idle_writes,
        idle_writers,
        idle_cpu: cpu_after.saturating_sub(cpu_before),
        rss_kib,
        peak_rss_kib,
    }
}

fn median<T: Copy + Ord>(mut values: Vec<T>) -> T {
    values.sort();
    values[values.len() / 2]
}

fn report(name: &str, runs: &[Run], idle: Duration) {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let ready: Vec<Duration> = runs.iter().filter_map(|r| r.ready).collect();
    println!("\n{name}:");
    println!(
        "  apply -> all {} objects applied: median {} (runs: {})",
        median(runs.iter().map(|r| r.objects).collect()),
        ms(median(runs.iter().map(|r| r.objects_applied).collect())),
        runs.iter()
            .map(|r| ms(r.objects_applied))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if ready.len() == runs.len() {
        println!(
            "  apply -> status Ready:          median {}",
            ms(median(ready))
        );
    } else {
        println!(
            "  apply -> status Ready:          not reached in {} of {} runs",
            runs.len() - ready.len(),
            runs.len()
        );
    }
    println!(
        "  idle {} s: reconciles median {} (runs: {:?}), writes median {} (Lease renewals not counted)",
        idle.as_secs(),
        median(runs.iter().map(|r| r.idle_reconciles).collect()),
        runs.iter().map(|r| r.idle_reconciles).collect::<Vec<_>>(),
        median(runs.iter().map(|r| r.idle_writes).collect()),
    );
    for (what, count) in &runs[0].idle_writers {
        println!("    first run, idle write: {count} x {what}");
    }
    println!(
        "  idle CPU: median {} over {} s ({:.2} % of one core); RSS median {:.1} MiB, peak {:.1} MiB",
        ms(median(runs.iter().map(|r| r.idle_cpu).collect())),
        idle.as_secs(),
        median(runs.iter().map(|r| r.idle_cpu).collect()).as_secs_f64() / idle.as_secs_f64()
            * 100.0,
        median(runs.iter().map(|r| r.rss_kib).collect()) as f64 / 1024.0,
        median(runs.iter().map(|r| r.peak_rss_kib).collect()) as f64 / 1024.0,
    );
}
