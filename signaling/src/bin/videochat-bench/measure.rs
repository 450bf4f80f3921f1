//! What the scenarios measure with: the server's RSS and CPU from /proc,
//! a metric from its `/metrics`, percentiles, and WebSocket connections from
//! a chosen local address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The `p` quantile of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// RSS in KiB and CPU ticks (user + system) of `pid`.
pub fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((rss, utime + stime))
}

/// Clock ticks per second for /proc CPU times (USER_HZ, 100 on Linux).
pub const TICKS: f64 = 100.0;

/// The 1-minute load average, to print beside figures taken on a shared machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `host:port` of a `ws://host:port/path` URL.
pub fn ws_authority(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("the URL must start with ws://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .with_context(|| format!("`{authority}` is not an IP address and port"))
}

/// The value of the first line of the server's `/metrics` that starts with `name`.
pub async fn metric(server: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(server).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// A WebSocket to `url` from local address `from` (any port); the server
/// counts per-address limits by it.
pub async fn connect_from(from: IpAddr, url: &str) -> anyhow::Result<Ws> {
    let server = ws_authority(url)?;
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Says `hello`, waits for `welcome`, joins `room` and waits for `joined`.
pub async fn hello_and_join(ws: &mut Ws, room: &str) -> anyhow::Result<()> {
    ws.send(Message::Text(r#"{"type":"hello"}"#.into())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no reply to hello or join within 30 s")?
            .context("closed during hello")??;
        let Message::Text(t) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(&t)?;
        match v["type"].as_str() {
            Some("welcome") => {
                let join = serde_json::json!({"type":"join","room":room,"name":"bench"});
                ws.send(Message::Text(join.to_string().into())).await?;
            }
            Some("joined") => return Ok(()),
            Some("error") => anyhow::bail!("refused: {t}"),
            _ => {}
        }
    }
}
