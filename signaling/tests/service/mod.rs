//! Starting the service on loopback and talking to it over real WebSockets.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use videochat_signaling::{Config, RunningServer};

pub const WAIT: Duration = Duration::from_secs(5);

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "videochat-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Defaults for tests: loopback port 0, fresh data dir, no TURN relay, short resume window.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: temp_dir("data"),
        no_embedded_turn: true,
        resume_window: Duration::from_secs(1),
        // Tests open many connections from one address at once; the
        // connection rate has its own test.
        connect_rate_per_ip: 100_000.0,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> RunningServer {
    videochat_signaling::start(config)
        .await
        .expect("server starts")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub peer: String,
    pub session: String,
    pub resume_token: String,
}

pub fn ws_url(server: &RunningServer) -> String {
    format!("ws://{}/ws", server.local_addr())
}

pub fn http_url(server: &RunningServer, path: &str) -> String {
    format!("http://{}{path}", server.local_addr())
}

impl Client {
    /// Connects without saying hello.
    pub async fn raw(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client {
            ws,
            peer: String::new(),
            session: String::new(),
            resume_token: String::new(),
        }
    }

    /// Connects, says hello and reads the welcome.
    pub async fn connect(server: &RunningServer) -> Client {
        let mut c = Client::raw(&ws_url(server)).await;
        c.hello(json!({"type":"hello"})).await;
        c
    }

    pub async fn hello(&mut self, hello: Value) -> Value {
        self.send(&hello).await;
        let w = self.recv_type("welcome").await;
        self.peer = w["peer"].as_str().unwrap().to_owned();
        self.session = w["session"].as_str().unwrap().to_owned();
        self.resume_token = w["resume_token"].as_str().unwrap().to_owned();
        w
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_owned().into()))
            .await
            .expect("send");
    }

    /// Next JSON message (WebSocket pings skipped); panics after `WAIT`.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("no message within {WAIT:?}"),
        }
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => {
                    return Some(serde_json::from_str(&t).expect("server sends JSON"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips messages until one of `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The close code once the server closes (skipping other messages).
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(&json!({"type":"join","room":room,"name":name}))
            .await;
        self.recv_type("joined").await
    }

    /// Sends a chat and returns its ack's seq.
    pub async fn chat(&mut self, room: &str, id: &str, body: &str) -> u64 {
        self.send(&json!({"type":"chat","room":room,"id":id,"body":body}))
            .await;
        loop {
            let v = self.recv().await;
            if v["type"] == "ack" && v["id"] == id {
                return v["seq"].as_u64().unwrap();
            }
            assert_ne!(v["type"], "error", "chat refused: {v}");
        }
    }

    /// Drops the TCP connection without a close handshake (a network failure).
    pub fn drop_hard(self) {
        drop(self.ws);
    }
}

/// A request with headers, for Origin and token tests.
pub async fn connect_with_headers(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(Client {
        ws,
        peer: String::new(),
        session: String::new(),
        resume_token: String::new(),
    })
}

/// A tiny HTTP/1.1 client over a TCP socket (no HTTP client crate needed).
pub async fn http(
    server: &RunningServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        server.local_addr(),
        body.len()
    );
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !typed {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A TCP connection to the server from a chosen loopback address (all of
/// 127.0.0.0/8 is local on Linux), to act as a second client address.
pub async fn tcp_from(local_ip: &str, server: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{local_ip}:0").parse().unwrap())?;
    socket.connect(server).await
}

/// A WebSocket from `local_ip`; the server's refusal comes back as the error.
pub async fn connect_from(
    local_ip: &str,
    server: &RunningServer,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let tcp = tcp_from(local_ip, server.local_addr()).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(ws_url(server), MaybeTlsStream::Plain(tcp)).await?;
    Ok(Client {
        ws,
        peer: String::new(),
        session: String::new(),
        resume_token: String::new(),
    })
}

/// The value of an unlabelled or labelled metric line, e.g. `name{code="x"}`.
pub async fn metric(server: &RunningServer, line_start: &str) -> f64 {
    let (_, _, text) = http(server, "GET", "/metrics", &[], None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The real binary on loopback with `data` as its data dir and `args`
/// after the test defaults; its child and `host:port`, read from the line
/// it prints when it listens.
pub fn spawn_binary(data: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_videochat-signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-embedded-turn",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line)
        .to_owned();
    (child, addr)
}
