//! Real backends for the cluster, fault and queue tests: Debian's
//! `redis-server` (AOF on) and the SecantusDB MongoDB wire-protocol server,
//! each on a free loopback port in its own temporary directory, with
//! start / stop / kill / restart so tests can inject faults.
//!
//! Paths come from `VIDEOCHAT_REDIS_SERVER` and `VIDEOCHAT_SECANTUSD`
//! (exported by scripts/setup.d/backends.sh), falling back to `redis-server`
//! on PATH and `.venv/bin/secantusd-py` in the repository.
#![allow(dead_code)]

pub mod cluster;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

/// A fresh directory under the system temp dir, removed by [`TempDir`]'s drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "videochat-{prefix}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_for_port(port: u16, within: Duration, what: &str, log: &Path) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not listen on 127.0.0.1:{port} within {within:?}; its log:\n{log_text}");
}

fn wait_port_closed(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM (graceful stop) to a child and waits for it.
fn terminate(child: &mut Child, within: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Graceful stop of a server's process, if running: SIGTERM with `grace`
/// to exit, then waits for its `port` to close.
fn stop_child(child: &mut Option<Child>, port: u16, grace: Duration) {
    if let Some(mut child) = child.take() {
        terminate(&mut child, grace);
    }
    wait_port_closed(port, Duration::from_secs(5));
}

/// kill -9 of a server's process, if running, and reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn redis_server_bin() -> String {
    std::env::var("VIDEOCHAT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

fn secantusd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VIDEOCHAT_SECANTUSD") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/secantusd-py")
}

/// A real `redis-server` with AOF on (fsync always), in its own directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(redis_server_bin())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                // "everysec" may postpone the AOF write while a slow fsync
                // runs and still answer, so a kill -9 could lose acked writes.
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install Debian redis-server or set VIDEOCHAT_REDIS_SERVER; scripts/setup.d/backends.sh does): {e}",
                    redis_server_bin()
                )
            });
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10), "redis-server", &log);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Graceful stop (SIGTERM): Redis flushes its AOF.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, self.port, Duration::from_secs(10));
    }

    /// kill -9: whatever was written to the AOF survives, as after a crash.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        wait_port_closed(self.port, Duration::from_secs(5));
    }

    /// Starts again on the same port and directory (so from the same AOF).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// A SecantusDB server speaking the MongoDB wire protocol, in its own
/// storage directory.
pub struct MongoServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl MongoServer {
    pub fn start() -> Self {
        let mut server = MongoServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("mongo"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("secantusd.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open secantusd log");
        let log_err = log_file.try_clone().expect("clone log handle");
        let bin = secantusd_bin();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .args(["--log-level", "WARNING"])
            // Own working directory so no stray secantusd.toml is discovered.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (pip install secantusdb into .venv or set VIDEOCHAT_SECANTUSD; scripts/setup.d/backends.sh does): {e}",
                    bin.display()
                )
            });
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30), "secantusd-py", &log);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for the official driver. `directConnection`
    /// because the server advertises itself as a one-node replica set.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000",
            self.port
        )
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child, self.port, Duration::from_secs(15));
    }

    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        wait_port_closed(self.port, Duration::from_secs(5));
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "secantusd-py is still running");
        self.spawn();
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
