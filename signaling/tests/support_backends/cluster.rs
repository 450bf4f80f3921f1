//! Signaling instances as real processes (the built binary) sharing Redis
//! and MongoDB, and a WebSocket client that records every chat it receives.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{TempDir, kill_child};

/// One `videochat-signaling` process in cluster mode.
pub struct Instance {
    child: Option<Child>,
    pub id: String,
    pub addr: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Instance {
    /// Starts an instance on a free loopback port; `extra` are more flags.
    pub fn start(
        id: &str,
        redis_url: &str,
        mongo_uri: &str,
        dir: &TempDir,
        extra: &[&str],
    ) -> Self {
        let mut backends = vec!["--redis-url", redis_url, "--mongodb-uri", mongo_uri];
        backends.extend_from_slice(extra);
        Self::start_with(id, dir, &backends)
    }

    /// Starts an instance with only the given flags (no backend flags: embedded).
    pub fn start_with(id: &str, dir: &TempDir, extra: &[&str]) -> Self {
        let defaults = [
            ("--listen", "127.0.0.1:0"),
            ("--log", "warn"),
            ("--rate-per-connection", "100000"),
            ("--rate-per-ip", "1000000"),
            ("--connect-rate-per-ip", "100000"),
            ("--resume-window", "20s"),
            ("--chat-sweep", "300ms"),
            ("--instance-ttl", "2s"),
            ("--backend-timeout", "1s"),
        ];
        let mut args: Vec<String> = vec![
            "--no-embedded-turn".into(),
            "--instance-id".into(),
            id.into(),
        ];
        for (flag, value) in defaults {
            // A flag given in `extra` replaces the default.
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut instance = Instance {
            child: None,
            id: id.to_owned(),
            addr: String::new(),
            args,
            log: dir.path().join(format!("{id}.log")),
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("instance log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_videochat-signaling"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("videochat-signaling starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("first line");
        self.addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log: {}", self.log_text()))
            .to_owned();
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny HTTP/1.1 request over a TCP socket; returns (status, JSON body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let (status, text) = http_text(addr, method, path, body, bearer).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// [`http`] with the body as text (`/metrics`).
pub async fn http_text(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, rest)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A WebSocket client whose reader task records every chat message and
/// passes every message on to `next`.
pub struct WsClient {
    sink: futures::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    rx: mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
    /// Every chat message received on any of this client's connections.
    pub chats: Arc<Mutex<Vec<Value>>>,
    pub peer: String,
    pub session: String,
    pub token: String,
    pub resumed: bool,
}

impl WsClient {
    /// Connects and says hello (resuming `previous` when given).
    pub async fn connect(url: &str, previous: Option<&ResumeInfo>) -> Result<WsClient, String> {
        let chats = previous.map(|p| p.chats.clone()).unwrap_or_default();
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let log = chats.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    if v["type"] == "chat" {
                        log.lock().unwrap().push(v.clone());
                    }
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut c = WsClient {
            sink,
            rx,
            reader,
            chats,
            peer: String::new(),
            session: String::new(),
            token: String::new(),
            resumed: false,
        };
        let hello = match previous {
            Some(p) => {
                // The last seq seen per room, so the resume replays only newer chat.
                let mut last_seq = serde_json::Map::new();
                for chat in p.chats.lock().unwrap().iter() {
                    if let (Some(room), Some(seq)) = (chat["room"].as_str(), chat["seq"].as_u64()) {
                        let entry = last_seq.entry(room).or_insert(json!(0));
                        if entry.as_u64().unwrap_or(0) < seq {
                            *entry = json!(seq);
                        }
                    }
                }
                json!({"type":"hello","resume":{"session":p.session,"token":p.token,
                    "last_seq":last_seq}})
            }
            None => json!({"type":"hello"}),
        };
        c.send(&hello).await?;
        let w = c.recv_type("welcome", Duration::from_secs(5)).await?;
        c.peer = w["peer"].as_str().unwrap_or_default().to_owned();
        c.session = w["session"].as_str().unwrap_or_default().to_owned();
        c.token = w["resume_token"].as_str().unwrap_or_default().to_owned();
        c.resumed = w["resumed"] == true;
        Ok(c)
    }

    pub async fn send(&mut self, v: &Value) -> Result<(), String> {
        self.sink
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next message, or an error when the connection ended or `wait` passed.
    pub async fn recv(&mut self, wait: Duration) -> Result<Value, String> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err("connection closed".into()),
            Err(_) => Err(format!("nothing within {wait:?}")),
        }
    }

    pub async fn recv_type(&mut self, kind: &str, wait: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv(left).await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> Result<Value, String> {
        self.send(&json!({"type":"join","room":room,"name":name}))
            .await?;
        self.recv_type("joined", Duration::from_secs(5)).await
    }

    /// Sends a chat and waits for its ack (`Ok(seq)`) or an error reply
    /// (`Err(code)`); other messages are skipped.
    pub async fn chat(
        &mut self,
        room: &str,
        id: &str,
        body: &str,
        wait: Duration,
    ) -> Result<Result<u64, String>, String> {
        self.send(&json!({"type":"chat","room":room,"id":id,"body":body}))
            .await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv(left).await?;
            if v["type"] == "ack" && v["id"] == id {
                return Ok(Ok(v["seq"].as_u64().unwrap_or(0)));
            }
            if v["type"] == "error" && v["ref"] == id {
                return Ok(Err(v["code"].as_str().unwrap_or("").to_owned()));
            }
        }
    }

    /// What a later connection needs to resume this session.
    pub fn resume_info(&self) -> ResumeInfo {
        ResumeInfo {
            session: self.session.clone(),
            token: self.token.clone(),
            chats: self.chats.clone(),
        }
    }

    /// Ends the connection without a close handshake (a dropped network).
    pub fn drop_hard(self) -> ResumeInfo {
        let info = self.resume_info();
        self.reader.abort();
        drop(self.sink);
        info
    }

    /// The seqs of `room`'s chat received so far, in arrival order.
    pub fn seqs(&self, room: &str) -> Vec<u64> {
        self.chats
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c["room"] == room)
            .filter_map(|c| c["seq"].as_u64())
            .collect()
    }
}

pub struct ResumeInfo {
    pub session: String,
    pub token: String,
    pub chats: Arc<Mutex<Vec<Value>>>,
}

/// Drops what a client already had (as clients do by `seq`) and returns the rest.
pub fn without_repeats(seqs: &[u64]) -> (Vec<u64>, usize) {
    let mut out = Vec::new();
    let mut max = 0;
    let mut repeats = 0;
    for &s in seqs {
        if s > max {
            out.push(s);
            max = s;
        } else {
            repeats += 1;
        }
    }
    (out, repeats)
}
