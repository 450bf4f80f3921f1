//! Tests of the built `videochat-turn` binary: configuration errors, the
//! admin port, SIGTERM drain, and interop with coturn's `turnutils_uclient`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_videochat-turn");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vt-bin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs the binary expecting it to refuse its configuration at start.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("run videochat-turn");
    assert_eq!(out.status.code(), Some(2), "should exit 2: {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected, got:\n{stderr}"
    );
    stderr
}

#[test]
fn bad_configuration_exits_with_one_line_naming_the_setting() {
    let dir = temp_dir("cfg");
    let secret = dir.join("secret");
    std::fs::write(&secret, "s\n").expect("write");
    let secret = secret.to_str().expect("utf-8 path");
    let base = [
        "--listen-address",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--no-admin",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let e = run(&[
        "--secret-file",
        secret,
        "--relay-min-port",
        "60000",
        "--relay-max-port",
        "50000",
    ]);
    assert!(
        e.contains("--relay-min-port") && e.contains("inverted"),
        "{e}"
    );

    let e = run(&["--secret-file", secret, "--deny-peer", "10.0.0.0/33"]);
    assert!(
        e.contains("--deny-peer") && e.contains("10.0.0.0/33"),
        "{e}"
    );

    let e = run(&["--secret-file", "/nonexistent/secret"]);
    assert!(
        e.contains("--secret-file") && e.contains("/nonexistent/secret"),
        "{e}"
    );

    let empty = dir.join("empty");
    std::fs::write(&empty, "# only a comment\n\n").expect("write");
    let e = run(&["--secret-file", empty.to_str().expect("path")]);
    assert!(
        e.contains("--secret-file") && e.contains("no secret"),
        "{e}"
    );

    let e = run(&[]);
    assert!(e.contains("--secret-file"), "{e}");

    let busy = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let args = [
        "--listen-address",
        "127.0.0.1",
        "--listen-port",
        &port,
        "--no-admin",
        "--secret-file",
        secret,
    ];
    let e = refused(&args);
    assert!(e.contains("--listen-port") && e.contains("in use"), "{e}");

    let busy_admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = busy_admin.local_addr().expect("addr").to_string();
    let args = [
        "--listen-address",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--admin-listen",
        &admin,
        "--secret-file",
        secret,
    ];
    let e = refused(&args);
    assert!(e.contains("--admin-listen") && e.contains("in use"), "{e}");

    // TLS: an expired certificate, a key of another certificate, and TLS
    // ports without a certificate.
    let ca = common::tls::TestCa::new();
    let expired = ca.leaf((2020, 2021));
    let (cert, key) = (dir.join("expired.crt"), dir.join("expired.key"));
    std::fs::write(&cert, &expired.cert_pem).expect("write");
    std::fs::write(&key, &expired.key_pem).expect("write");
    let (cert, key) = (cert.to_str().expect("path"), key.to_str().expect("path"));
    let e = run(&[
        "--secret-file",
        secret,
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
    ]);
    assert!(
        e.starts_with("videochat-turn: --tls-cert-file:") && e.contains("expired"),
        "{e}"
    );
    let valid = ca.valid_leaf();
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, ca.valid_leaf().key_pem).expect("write");
    let valid_cert = dir.join("valid.crt");
    std::fs::write(&valid_cert, &valid.cert_pem).expect("write");
    let e = run(&[
        "--secret-file",
        secret,
        "--tls-cert-file",
        valid_cert.to_str().expect("path"),
        "--tls-key-file",
        other_key.to_str().expect("path"),
    ]);
    assert!(
        e.contains("--tls-key-file") && e.contains("does not belong"),
        "{e}"
    );
    let e = run(&["--secret-file", secret, "--tls-ports", "5349"]);
    assert!(e.contains("--tls-ports"), "{e}");
    let e = run(&["--secret-file", secret, "--tls-cert-file", cert]);
    assert!(e.starts_with("videochat-turn: --tls-key-file:"), "{e}");
}

/// A running binary, killed when dropped.
struct Server {
    child: Child,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &line[start..];
    rest[..rest.find('"')?].parse().ok()
}

fn field_opt(line: &str, key: &str) -> Option<SocketAddr> {
    // Option fields are logged with Debug: "Some(127.0.0.1:1234)".
    let start = line.find(&format!("\"{key}\":\"Some("))? + key.len() + 9;
    let rest = &line[start..];
    rest[..rest.find(')')?].parse().ok()
}

fn field_list(line: &str, key: &str) -> Vec<SocketAddr> {
    // Vec fields are logged with Debug: "[127.0.0.1:1234, 127.0.0.1:5678]".
    let Some(start) = line.find(&format!("\"{key}\":\"[")) else {
        return Vec::new();
    };
    let rest = &line[start + key.len() + 5..];
    rest[..rest.find(']').unwrap_or(0)]
        .split(", ")
        .filter_map(|a| a.parse().ok())
        .collect()
}

fn spawn(extra: &[&str]) -> Server {
    let dir = temp_dir("srv");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let mut child = Command::new(BIN)
        .args([
            "--listen-address",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--allow-loopback-peers",
            "--relay-min-port",
            "30000",
            "--relay-max-port",
            "39999",
            "--log-format",
            "json",
            "--max-allocations-per-user",
            "0",
            "--max-allocations",
            "0",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .args(extra)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn videochat-turn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("videochat-turn exited before listening")
            .expect("read log");
        if line.contains("TURN relay listening") {
            break line;
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Server {
        udp: field(&line, "udp").expect("udp address in log"),
        tcp: field_opt(&line, "tcp").expect("tcp address in log"),
        tls: field_list(&line, "tls"),
        admin: field_opt(&line, "admin"),
        child,
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn uclient_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("turnutils_uclient"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "turnutils_uclient not found on PATH: install Debian package `coturn` \
                 (scripts/setup.d/turn.sh does this when run through scripts/test)"
            )
        })
}

/// How uclient reaches the relay.
enum Over<'a> {
    Udp,
    Tcp,
    /// TLS, verifying the relay's certificate against this CA file.
    Tls(&'a std::path::Path),
}

/// Runs turnutils_uclient in client-to-client mode and returns
/// (sent, received, lost) from its summary.
fn uclient(server: &Server, over: Over<'_>, sessions: u32, messages: u32) -> (u64, u64, u64) {
    let mut cmd = Command::new(uclient_path());
    let port = match over {
        Over::Udp => server.udp.port(),
        Over::Tcp => {
            cmd.arg("-t");
            server.tcp.port()
        }
        Over::Tls(ca) => {
            cmd.args(["-t", "-S", "-E"]).arg(ca);
            server.tls[0].port()
        }
    };
    cmd.args([
        "-y", "-c", "-W", SECRET, "-u", "interop", "-l", "172", "-z", "5",
    ])
    .args(["-m", &sessions.to_string(), "-n", &messages.to_string()])
    .args(["-p", &port.to_string(), "127.0.0.1"]);
    let out = cmd.output().expect("run turnutils_uclient");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let num_after = |key: &str| -> u64 {
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no {key:?} in uclient output:\n{text}"));
        let rest = &line[line.find(key).expect("key") + key.len()..];
        rest.trim_start_matches(['=', ' '])
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad {key:?} line: {line}"))
    };
    (
        num_after("tot_send_msgs"),
        num_after("tot_recv_msgs"),
        num_after("Total lost packets"),
    )
}

#[test]
fn coturn_uclient_relays_without_loss_over_udp_and_tcp() {
    let server = spawn(&["--no-admin"]);
    for tcp in [false, true] {
        let over = if tcp { Over::Tcp } else { Over::Udp };
        let (sent, received, lost) = uclient(&server, over, 20, 40);
        let proto = if tcp { "TCP" } else { "UDP" };
        assert_eq!(sent, 20 * 40, "{proto}: all messages sent");
        assert_eq!(received, sent, "{proto}: every message came back");
        assert_eq!(lost, 0, "{proto}: no packet lost");
    }
}

#[test]
fn coturn_uclient_relays_without_loss_over_tls() {
    let dir = temp_dir("tls");
    let ca = common::tls::TestCa::new();
    let leaf = ca.valid_leaf();
    let (ca_file, cert, key) = (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&ca_file, ca.cert_pem()).expect("write");
    std::fs::write(&cert, &leaf.cert_pem).expect("write");
    std::fs::write(&key, &leaf.key_pem).expect("write");
    let server = spawn(&[
        "--no-admin",
        "--tls-cert-file",
        cert.to_str().expect("path"),
        "--tls-key-file",
        key.to_str().expect("path"),
        "--tls-ports",
        "0",
    ]);
    assert_eq!(server.tls.len(), 1, "one TLS listener");
    let (sent, received, lost) = uclient(&server, Over::Tls(&ca_file), 20, 40);
    assert_eq!(sent, 20 * 40, "TLS: all messages sent");
    assert_eq!(received, sent, "TLS: every message came back");
    assert_eq!(lost, 0, "TLS: no packet lost");
}

#[test]
fn drain_is_refused_when_no_admin_token_is_configured() {
    let server = spawn(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.expect("admin address");
    let (code, body) = http(admin, "POST", "/drain", None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--admin-token-file"), "{body}");
    assert_eq!(http(admin, "POST", "/drain", Some("guess")).0, 403);
    assert_eq!(http(admin, "GET", "/readyz", None).0, 200, "still ready");
}

#[test]
fn admin_port_serves_health_metrics_and_token_protected_drain() {
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "let-me-drain\n").expect("write");
    let server = spawn(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        token_file.to_str().expect("path"),
    ]);
    let admin = server.admin.expect("admin address");
    assert_eq!(http(admin, "GET", "/healthz", None).0, 200);
    assert_eq!(http(admin, "GET", "/readyz", None).0, 200);
    let (code, body) = http(admin, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(metric(&body, "videochat_turn_allocations_active"), 0.0);
    assert_eq!(metric(&body, "videochat_turn_draining"), 0.0);

    assert_eq!(http(admin, "POST", "/drain", None).0, 401);
    assert_eq!(http(admin, "POST", "/drain", Some("wrong")).0, 401);
    assert_eq!(
        http(admin, "GET", "/readyz", None).0,
        200,
        "refused drain changes nothing"
    );
    assert_eq!(http(admin, "POST", "/drain", Some("let-me-drain")).0, 202);
    // Draining is not readiness: the relay stays Ready (docs/turn.md, "Drain").
    let (code, body) = http(admin, "GET", "/readyz", None);
    assert_eq!(code, 200);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(
        metric(
            &http(admin, "GET", "/metrics", None).1,
            "videochat_turn_draining"
        ),
        1.0
    );
}

#[tokio::test]
async fn sigterm_drains_keeps_live_allocation_then_exits_zero() {
    let mut server = spawn(&["--admin-listen", "127.0.0.1:0", "--drain-timeout", "2s"]);
    let admin = server.admin.expect("admin");
    let udp = server.udp;
    let new_client = |user: &str| {
        let c = cred(SECRET, user);
        async move {
            let conn = std::sync::Arc::new(
                tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            );
            client_at(udp, conn, &c).await
        }
    };
    let live = new_client("live").await;
    let conn = live.allocate().await.expect("allocate");
    round_trip(&conn, b"before SIGTERM").await;

    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let h = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let (code, body) = http(admin, "GET", "/readyz", None);
            if code == 200 && body.contains("draining") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    assert!(
        h.await.expect("join"),
        "after SIGTERM /readyz says draining and stays 200"
    );

    let late = new_client("late").await;
    let err = late.allocate().await.err().expect("new allocation refused");
    assert!(err.to_string().contains("508"), "{err}");
    round_trip(&conn, b"after SIGTERM").await;

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().expect("wait");
        (status, server)
    })
    .await
    .expect("join")
    .0;
    assert!(status.success(), "exit 0 after drain, got {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
