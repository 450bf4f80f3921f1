//! Helpers shared by the browser tests (browser_call.rs, browser_turns.rs,
//! and the simulated cluster's browsers.rs):
//! the Chromium flags, child processes with their output kept for failure
//! messages, finding chromium and chromedriver, free ports and scratch
//! folders.
#![allow(dead_code)]

pub mod page;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The flags named by the project for a closed-network, headless peer.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    // No user gesture in a test: let remote media start playing by itself.
    "--autoplay-policy=no-user-gesture-required",
    // Our TURN relay listens on loopback; without this flag Chromium leaves
    // loopback out of ICE gathering, so no relay candidate is found when the
    // machine has no other interface.
    "--allow-loopback-in-peer-connection",
    "--window-size=1280,720",
    "--mute-audio",
];

/// Output lines of a child process, kept for failure messages.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn collect(&self, stream: impl Read + Send + 'static, tag: &'static str) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(format!("[{tag}] {line}"));
                }
            }
        });
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A child process that is killed when the test ends, however it ends.
pub struct Process {
    pub child: Child,
    pub output: Output,
}

impl Process {
    pub fn spawn(command: &mut Command, what: &str) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({command:?}): {e}"));
        let output = Output::default();
        if let Some(out) = child.stdout.take() {
            output.collect(out, "stdout");
        }
        if let Some(err) = child.stderr.take() {
            output.collect(err, "stderr");
        }
        Self { child, output }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends before removing a pod.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        assert!(
            matches!(sent, Ok(status) if status.success()),
            "cannot send SIGTERM to {}: {sent:?}",
            self.child.id()
        );
    }

    /// Waits for the server's `listening on http://…` line and returns that
    /// base URL; fails with the server's output if it exits or stays silent.
    pub fn wait_for_url(&mut self, wait: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let url = self.output.lines().iter().find_map(|line| {
                line.split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .filter(|url| url.starts_with("http://"))
                    .map(|url| url.trim_end_matches('/').to_owned())
            });
            if let Some(url) = url {
                return url;
            }
            if let Some(status) = self.exited() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                panic!(
                    "videochat-signaling exited ({status}) before listening:\n{}",
                    self.output.tail(40)
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "videochat-signaling printed no `listening on http://…` line within {wait:?}:\n{}",
                self.output.tail(40)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a program: the environment variable when set, else the first of
/// `names` on PATH.
pub fn find_program(env_var: &str, names: &[&str], package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not name a file; unset it or point it at the {package} program",
            path.display()
        );
        return path;
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&dirs) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the browser test needs Debian's `{package}` ({} not found on PATH and {env_var} unset). \
         Install it with scripts/setup.d/browser.sh (apt-get install chromium chromium-driver), \
         or set {env_var} to the program's path.",
        names.join(" / ")
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

pub fn unique_dir(label: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("browser-{label}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
