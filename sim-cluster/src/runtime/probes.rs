//! Readiness, liveness and startup probes, run as a kubelet runs them:
//! httpGet (2xx and 3xx pass) and tcpSocket against the pod's address, exec
//! inside the container's namespaces with its environment; each with its
//! timeout, period and thresholds.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A probe's spec and its running counts.
#[derive(Debug)]
pub struct Prober {
    spec: Value,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    next: Instant,
    running: Option<tokio::task::JoinHandle<bool>>,
}

/// What a probe's counts say now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Unknown,
    Passing,
    Failing,
}

/// Where and how to probe.
#[derive(Clone, Debug)]
pub struct Target {
    pub address: String,
    /// Container port names → numbers.
    pub ports: BTreeMap<String, u16>,
    /// The container's main process (for exec probes).
    pub pid: u32,
    pub env: BTreeMap<String, String>,
}

fn seconds(spec: &Value, field: &str, default: u64) -> Duration {
    Duration::from_secs(spec.get(field).and_then(Value::as_u64).unwrap_or(default))
}

impl Prober {
    pub fn new(spec: &Value, started: Instant) -> Self {
        let initial_delay = seconds(spec, "initialDelaySeconds", 0);
        Self {
            spec: spec.clone(),
            initial_delay,
            period: seconds(spec, "periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: seconds(spec, "timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: spec
                .get("successThreshold")
                .and_then(Value::as_u64)
                .unwrap_or(1) as u32,
            failure_threshold: spec
                .get("failureThreshold")
                .and_then(Value::as_u64)
                .unwrap_or(3) as u32,
            successes: 0,
            failures: 0,
            next: started + initial_delay,
            running: None,
        }
    }

    /// Starts a probe when one is due, collects a finished one; returns
    /// the verdict after this step.
    pub fn step(&mut self, target: &Target, now: Instant) -> Verdict {
        if let Some(running) = &self.running
            && running.is_finished()
        {
            let passed = self
                .running
                .take()
                .and_then(|h| h.now_or_never_result())
                .unwrap_or(false);
            if passed {
                self.successes += 1;
                self.failures = 0;
            } else {
                self.failures += 1;
                self.successes = 0;
            }
        }
        if self.running.is_none() && now >= self.next {
            self.next = now + self.period;
            let spec = self.spec.clone();
            let target = target.clone();
            let timeout = self.timeout;
            self.running = Some(tokio::spawn(async move {
                tokio::time::timeout(timeout, probe_once(&spec, &target, timeout))
                    .await
                    .unwrap_or(false)
            }));
        }
        self.verdict()
    }

    pub fn verdict(&self) -> Verdict {
        if self.failures >= self.failure_threshold {
            Verdict::Failing
        } else if self.successes >= self.success_threshold {
            Verdict::Passing
        } else {
            Verdict::Unknown
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }
}

/// A finished JoinHandle's value without awaiting.
trait NowOrNever {
    fn now_or_never_result(self) -> Option<bool>;
}

impl NowOrNever for tokio::task::JoinHandle<bool> {
    fn now_or_never_result(self) -> Option<bool> {
        futures::FutureExt::now_or_never(self).and_then(Result::ok)
    }
}

fn port_of(spec: &Value, target: &Target) -> Option<u16> {
    match spec.get("port")? {
        Value::Number(n) => n.as_u64().map(|p| p as u16),
        Value::String(s) => s.parse().ok().or_else(|| target.ports.get(s).copied()),
        _ => None,
    }
}

async fn probe_once(spec: &Value, target: &Target, timeout: Duration) -> bool {
    if let Some(http) = spec.get("httpGet") {
        let Some(port) = port_of(http, target) else {
            return false;
        };
        let host = http
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or(&target.address)
            .to_owned();
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        return http_get(&host, port, path)
            .await
            .is_some_and(|code| (200..400).contains(&code));
    }
    if let Some(tcp) = spec.get("tcpSocket") {
        let Some(port) = port_of(tcp, target) else {
            return false;
        };
        return tokio::net::TcpStream::connect((target.address.as_str(), port))
            .await
            .is_ok();
    }
    if let Some(exec) = spec.get("exec") {
        let command: Vec<String> = exec
            .get("command")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect();
        if command.is_empty() {
            return false;
        }
        let mut process = tokio::process::Command::new("nsenter");
        process
            .args([
                "--target",
                &target.pid.to_string(),
                "--net",
                "--mount",
                "--",
            ])
            .args(&command)
            .env_clear()
            .envs(&target.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let Ok(mut child) = process.spawn() else {
            return false;
        };
        return match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        };
    }
    tracing::warn!(probe = %spec, "probe without a handler");
    false
}

/// The status code of `GET path`, HTTP/1.1 with Connection: close.
async fn http_get(host: &str, port: u16, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..]).await.ok()?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}
