//! Chat webhooks through the reliable queue: every newly stored chat
//! message is POSTed as JSON to `--webhook-url`. The receiver being down
//! costs retries with backoff, not messages; a receiver that refuses a
//! message (4xx) sends it to the dead-letter stream at once, where an
//! operator can inspect and re-drive it. Requests go through hyper-util's
//! HTTP client, with a connect timeout and a timeout on the whole request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::queue::{Job, JobFailure, JobHandler, ReliableQueue};
use crate::error::{Result, SignalingError};
use crate::protocol::ChatMessage;
use crate::store::{Appended, NewChat, RoomRecord, Store};

pub const CHAT_WEBHOOK: &str = "chat-webhook";

/// An `http://host[:port]/path` receiver. (In-cluster receivers; TLS
/// termination belongs to a sidecar or the receiver's Service mesh.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    host: String,
    port: u16,
    path: String,
}

impl WebhookTarget {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            SignalingError::config(
                "--webhook-url",
                format!("{}: {why}", super::redact_url(url)),
            )
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>().map_err(|_| bad("port is not a number"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() || path.contains(['\r', '\n', ' ']) {
            return Err(bad("missing host or invalid path"));
        }
        Ok(WebhookTarget {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

pub struct WebhookHandler {
    uri: hyper::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl WebhookHandler {
    /// A sender to `target`; connecting gets at most `timeout`, and so does
    /// the whole request (see `handle`).
    pub fn new(target: WebhookTarget, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let uri = format!("http://{}:{}{}", target.host, target.port, target.path)
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("http://invalid./"));
        WebhookHandler {
            uri,
            client,
            timeout,
        }
    }

    async fn post(&self, body: &str) -> std::result::Result<u16, String> {
        let request = hyper::Request::post(&self.uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "videochat-signaling")
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| format!("request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{}: {e}", self.uri))?;
        Ok(response.status().as_u16())
    }
}

#[async_trait]
impl JobHandler for WebhookHandler {
    async fn handle(&self, job: &Job) -> std::result::Result<(), JobFailure> {
        if job.kind != CHAT_WEBHOOK {
            return Err(JobFailure::Permanent(format!(
                "unknown job kind {}",
                job.kind
            )));
        }
        match tokio::time::timeout(self.timeout, self.post(&job.payload)).await {
            Err(_) => Err(JobFailure::Retry("webhook timed out".into())),
            Ok(Err(e)) => Err(JobFailure::Retry(format!("webhook unreachable: {e}"))),
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            // The receiver says this message will never do.
            Ok(Ok(status)) if (400..500).contains(&status) && status != 408 && status != 429 => {
                Err(JobFailure::Permanent(format!(
                    "webhook refused the message with HTTP {status}"
                )))
            }
            Ok(Ok(status)) => Err(JobFailure::Retry(format!("webhook answered HTTP {status}"))),
        }
    }
}

/// A store that queues a webhook job for every newly stored chat message.
/// The ack never waits for the receiver; only for the store and the queue.
pub struct WebhookStore {
    inner: Arc<dyn Store>,
    queue: Arc<ReliableQueue>,
}

impl WebhookStore {
    pub fn new(inner: Arc<dyn Store>, queue: Arc<ReliableQueue>) -> Self {
        WebhookStore { inner, queue }
    }
}

pub fn webhook_payload(m: &ChatMessage) -> String {
    serde_json::json!({
        "type": "chat",
        "room": m.room,
        "seq": m.seq,
        "id": m.id,
        "from": m.from,
        "name": m.name,
        "body": m.body,
        "ts": m.ts,
    })
    .to_string()
}

#[async_trait]
impl Store for WebhookStore {
    async fn create_room(&self, room: RoomRecord) -> Result<RoomRecord> {
        self.inner.create_room(room).await
    }

    async fn ensure_room(&self, default: RoomRecord) -> Result<RoomRecord> {
        self.inner.ensure_room(default).await
    }

    async fn get_room(&self, id: &str) -> Result<Option<RoomRecord>> {
        self.inner.get_room(id).await
    }

    async fn append_chat(&self, chat: NewChat) -> Result<Appended> {
        let appended = self.inner.append_chat(chat).await?;
        if !appended.duplicate
            && let Err(e) = self
                .queue
                .enqueue(CHAT_WEBHOOK, &webhook_payload(&appended.message))
                .await
        {
            // The message itself is durable; only its webhook is missed.
            tracing::warn!(room = %appended.message.room, seq = appended.message.seq, error = %e, "chat webhook not queued");
        }
        Ok(appended)
    }

    async fn history(&self, room: &str, after: u64, limit: usize) -> Result<Vec<ChatMessage>> {
        self.inner.history(room, after, limit).await
    }

    async fn last_seq(&self, room: &str) -> Result<u64> {
        self.inner.last_seq(room).await
    }

    async fn healthy(&self) -> bool {
        self.inner.healthy().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_targets_and_refuses_others() {
        assert_eq!(
            WebhookTarget::parse("http://hooks.svc:8081/chat").unwrap(),
            WebhookTarget {
                host: "hooks.svc".into(),
                port: 8081,
                path: "/chat".into()
            }
        );
        assert_eq!(
            WebhookTarget::parse("http://hooks").unwrap(),
            WebhookTarget {
                host: "hooks".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert!(WebhookTarget::parse("ftp://x/").is_err());
        assert!(
            WebhookTarget::parse("http://u:pw@x/")
                .unwrap_err()
                .to_string()
                .contains("--webhook-url")
        );
        assert!(WebhookTarget::parse("http://x:abc/").is_err());
    }
}
