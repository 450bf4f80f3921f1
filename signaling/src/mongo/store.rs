//! [`MongoStore`]: the `Store` trait on MongoDB.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadConcern, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SignalingError};
use crate::protocol::ChatMessage;
use crate::redis::breaker::spawn_probe_loop;
use crate::redis::{CircuitBreaker, redact_url};
use crate::store::{Appended, CommitTiming, NewChat, RoomRecord, Store};

const DUPLICATE_KEY: i32 = 11000;
/// Attempts to win a `seq` against other instances before answering
/// `unavailable` (the client resends).
const MAX_SEQ_RACES: usize = 32;
/// Appends written in one `insert_many`, at most.
const MAX_BATCH: usize = 256;

struct PendingAppend {
    chat: NewChat,
    reply: tokio::sync::oneshot::Sender<Result<Appended>>,
    races: usize,
    /// When it joined the pending list.
    enqueued: std::time::Instant,
}

fn appended(chat: NewChat, seq: u64, timing: CommitTiming) -> Appended {
    Appended {
        timing: Some(timing),
        message: ChatMessage {
            room: chat.room,
            seq,
            id: chat.client_id,
            from: chat.peer,
            name: chat.name,
            body: chat.body,
            ts: chat.ts,
        },
        duplicate: false,
    }
}

/// Index and duplicate-key-ness of the first failed document of an ordered
/// `insert_many` (the ones before it were inserted, none after it).
fn first_write_error(e: &mongodb::error::Error) -> Option<(usize, bool)> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()?
            .iter()
            .min_by_key(|w| w.index)
            .map(|w| (w.index, w.code == DUPLICATE_KEY)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongodb://[user:password@]host[:port][,…]/[database][?options]`.
    pub uri: String,
    /// Used when the URI names no database.
    pub default_database: String,
    /// Upper bound of one store call, server selection included, so a dead
    /// server answers `unavailable` quickly instead of after 30 s.
    pub op_timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
}

impl MongoConfig {
    pub fn new(uri: impl Into<String>) -> Self {
        MongoConfig {
            uri: uri.into(),
            default_database: "videochat".to_string(),
            op_timeout: Duration::from_secs(2),
            breaker_failures: 3,
            breaker_open_for: Duration::from_secs(1),
        }
    }
}

pub struct MongoStore {
    rooms: Collection<Document>,
    messages: Collection<Document>,
    client: Client,
    config: MongoConfig,
    redacted_uri: String,
    breaker: CircuitBreaker,
    healthy: AtomicBool,
    indexes_ready: AtomicBool,
    /// Per room, a `seq` known to be stored (a lower bound of the last
    /// one): the first guess for the next append and the start of the
    /// range read that finds the last one. Never above the stored maximum.
    hints: Mutex<HashMap<String, u64>>,
    /// Appends waiting for the writer (see `append_chat`).
    pending: Mutex<Vec<PendingAppend>>,
    /// Held by the caller that currently writes a batch for everyone.
    writer: tokio::sync::Mutex<()>,
}

fn unavailable(reason: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreUnavailable(reason.to_string())
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

/// Errors that mean "the server cannot be used right now" (and so count
/// towards the breaker) rather than "it answered no".
fn is_outage(e: &mongodb::error::Error) -> bool {
    !matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(_))
            | ErrorKind::BsonDeserialization(_)
            | ErrorKind::BsonSerialization(_)
            | ErrorKind::InvalidArgument { .. }
    )
}

fn get_u64(doc: &Document, key: &str) -> Result<u64> {
    match doc.get(key) {
        Some(mongodb::bson::Bson::Int64(v)) if *v >= 0 => Ok(*v as u64),
        Some(mongodb::bson::Bson::Int32(v)) if *v >= 0 => Ok(*v as u64),
        other => Err(SignalingError::StoreCorrupt(format!(
            "field {key} is {other:?}, not a non-negative integer"
        ))),
    }
}

fn get_str(doc: &Document, key: &str) -> Result<String> {
    doc.get_str(key)
        .map(str::to_owned)
        .map_err(|e| SignalingError::StoreCorrupt(format!("field {key}: {e}")))
}

fn message_from(doc: &Document) -> Result<ChatMessage> {
    Ok(ChatMessage {
        room: get_str(doc, "room")?,
        seq: get_u64(doc, "seq")?,
        id: get_str(doc, "client_id")?,
        from: get_str(doc, "peer")?,
        name: get_str(doc, "name")?,
        body: get_str(doc, "body")?,
        ts: get_str(doc, "ts")?,
    })
}

fn room_from(doc: &Document) -> Result<RoomRecord> {
    Ok(RoomRecord {
        id: get_str(doc, "_id")?,
        name: get_str(doc, "name")?,
        max_peers: u32::try_from(get_u64(doc, "max_peers")?)
            .map_err(|e| SignalingError::StoreCorrupt(format!("max_peers: {e}")))?,
        created_at: get_str(doc, "created_at")?,
    })
}

fn room_doc(room: &RoomRecord) -> Document {
    doc! {
        "_id": &room.id,
        "name": &room.name,
        "max_peers": i64::from(room.max_peers),
        "created_at": &room.created_at,
    }
}

impl MongoStore {
    /// Parses and checks the URI (a bad one is a configuration error that
    /// names `VIDEOCHAT_MONGODB_URI`) and creates the client without waiting
    /// for the server: an unreachable MongoDB at start makes the store
    /// report unhealthy and answer `unavailable` until it is reachable.
    pub async fn connect(config: MongoConfig) -> Result<Self> {
        let redacted_uri = redact_url(&config.uri);
        let mut options = ClientOptions::parse(&config.uri).await.map_err(|e| {
            SignalingError::config(
                "VIDEOCHAT_MONGODB_URI",
                format!(
                    "{redacted_uri} is not a valid MongoDB connection string: {}",
                    match e.kind.as_ref() {
                        ErrorKind::InvalidArgument { message, .. } => message.clone(),
                        _ => "cannot be parsed".to_string(),
                    }
                ),
            )
        })?;
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(config.op_timeout);
        }
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(config.op_timeout);
        }
        options
            .app_name
            .get_or_insert_with(|| "videochat-signaling".to_string());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| config.default_database.clone());
        let client = Client::with_options(options).map_err(|e| {
            SignalingError::config("VIDEOCHAT_MONGODB_URI", format!("{redacted_uri}: {e}"))
        })?;
        let db = client.database(&database);
        // An ack means durable: majority of the replica set, on its journal.
        let durable = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .read_concern(ReadConcern::majority())
            .build();
        Ok(MongoStore {
            rooms: db.collection_with_options("rooms", durable.clone()),
            messages: db.collection_with_options("messages", durable),
            client,
            breaker: CircuitBreaker::new(
                "mongodb",
                config.breaker_failures,
                config.breaker_open_for,
            ),
            config,
            redacted_uri,
            healthy: AtomicBool::new(false),
            indexes_ready: AtomicBool::new(false),
            hints: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    pub fn redacted_uri(&self) -> &str {
        &self.redacted_uri
    }

    /// Runs one driver call behind the breaker and the operation timeout.
    async fn call<T, Fut>(&self, what: &'static str, fut: Fut) -> Result<T, mongodb::error::Error>
    where
        Fut: std::future::IntoFuture<Output = Result<T, mongodb::error::Error>>,
    {
        if !self.breaker.allow() {
            return Err(mongodb::error::Error::custom(CallRefused(
                "circuit breaker open",
            )));
        }
        let result = match tokio::time::timeout(self.config.op_timeout, fut.into_future()).await {
            Ok(r) => r,
            Err(_) => Err(mongodb::error::Error::custom(CallRefused("timed out"))),
        };
        match &result {
            Err(e) if is_outage(e) => {
                self.breaker.record_failure();
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(uri = %self.redacted_uri, op = what, error = %e, "mongodb unavailable; chat answers unavailable until it is back");
                }
            }
            _ => self.breaker.record_success(),
        }
        result
    }

    /// The two unique indexes; nothing is appended before they exist.
    async fn ensure_indexes(&self) -> Result<()> {
        if self.indexes_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let seq = IndexModel::builder()
            .keys(doc! {"room": 1, "seq": 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("room_seq".to_string())
                    .build(),
            )
            .build();
        let idempotency = IndexModel::builder()
            .keys(doc! {"room": 1, "peer": 1, "client_id": 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("room_peer_client_id".to_string())
                    .build(),
            )
            .build();
        self.call(
            "create_indexes",
            self.messages.create_indexes([seq, idempotency]),
        )
        .await
        .map_err(|e| unavailable(format!("cannot create indexes: {e}")))?;
        self.indexes_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// One `ping`, bypassing the breaker (this is what closes it), creating
    /// the indexes once the server is reachable.
    pub async fn probe(&self) -> bool {
        let ping = tokio::time::timeout(
            self.config.op_timeout,
            self.client.database("admin").run_command(doc! {"ping": 1}),
        )
        .await;
        let ok = matches!(ping, Ok(Ok(_)));
        if ok {
            self.breaker.record_success();
            if !self.indexes_ready.load(Ordering::Acquire)
                && let Err(e) = self.ensure_indexes().await
            {
                tracing::warn!(uri = %self.redacted_uri, error = %e, "mongodb reachable but indexes not ready");
                return false;
            }
            if !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(uri = %self.redacted_uri, "mongodb reachable");
            }
        } else {
            self.breaker.record_failure();
            if self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(uri = %self.redacted_uri, "mongodb unreachable; degraded");
            }
        }
        ok
    }

    /// Probes every `interval` while healthy and with exponential backoff
    /// (capped at `max_backoff`) while not.
    pub fn spawn_health_probe(
        self: &Arc<Self>,
        interval: Duration,
        max_backoff: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let uri = self.redacted_uri.clone();
        spawn_probe_loop(
            interval,
            max_backoff,
            shutdown,
            move || {
                let this = this.clone();
                async move { this.probe().await }
            },
            move |first, _retry_in| {
                if first {
                    tracing::warn!(uri = %uri, "mongodb not reachable; retrying with backoff");
                }
            },
        )
    }

    fn hint(&self, room: &str) -> u64 {
        let hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        hints.get(room).copied().unwrap_or(0)
    }

    fn raise_hint(&self, room: &str, seq: u64) {
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        if hints.len() > 100_000 {
            // Bounded: forgetting hints only costs reads.
            hints.clear();
        }
        let h = hints.entry(room.to_owned()).or_default();
        *h = (*h).max(seq);
    }

    async fn seq_exists(&self, room: &str, seq: u64) -> Result<bool> {
        let found = self
            .call(
                "seq_exists",
                self.messages
                    .find_one(doc! {"room": room, "seq": seq as i64})
                    .projection(doc! {"seq": 1, "_id": 0}),
            )
            .await
            .map_err(unavailable)?;
        Ok(found.is_some())
    }

    async fn find_by_client_id(&self, chat: &NewChat) -> Result<Option<ChatMessage>> {
        let found = self
            .call(
                "find_by_client_id",
                self.messages.find_one(doc! {
                    "room": &chat.room, "peer": &chat.peer, "client_id": &chat.client_id,
                }),
            )
            .await
            .map_err(unavailable)?;
        found.as_ref().map(message_from).transpose()
    }

    /// The room's highest stored `seq`. Reads the index range above a
    /// known lower bound; without one, first finds a bound with point reads
    /// at 1, 2, 4, … (seq has no gaps), because a sorted read over a whole
    /// room is slow on some MongoDB-compatible servers.
    async fn read_last_seq(&self, room: &str) -> Result<u64> {
        let mut lower = self.hint(room);
        if lower == 0 {
            if !self.seq_exists(room, 1).await? {
                return Ok(0);
            }
            lower = 1;
            while lower < (1 << 62) && self.seq_exists(room, lower * 2).await? {
                lower *= 2;
            }
        }
        let last = self
            .call(
                "last_seq",
                self.messages
                    .find_one(doc! {"room": room, "seq": {"$gte": lower as i64}})
                    .sort(doc! {"seq": -1})
                    .projection(doc! {"seq": 1, "_id": 0}),
            )
            .await
            .map_err(unavailable)?;
        let last = last.map(|d| get_u64(&d, "seq")).transpose()?.unwrap_or(0);
        self.raise_hint(room, last);
        Ok(last)
    }

    /// Raises the hints of `rooms` to their last stored seq: index range
    /// reads above the known hints, several at once. (One `$or` read is far
    /// slower on the SecantusDB stand-in than many small range reads.)
    async fn refresh_hints(&self, rooms: &[String]) -> Result<()> {
        for chunk in rooms.chunks(32) {
            let reads: Vec<_> = chunk.iter().map(|room| self.read_last_seq(room)).collect();
            for r in futures::future::join_all(reads).await {
                r?;
            }
        }
        Ok(())
    }

    /// Writes a batch of appends in as few ordered `insert_many` calls as
    /// races allow, answering each request.
    async fn write_batch(&self, mut batch: Vec<PendingAppend>) {
        if let Err(e) = self.ensure_indexes().await {
            for p in batch {
                let _ = p.reply.send(Err(unavailable(&e)));
            }
            return;
        }
        while !batch.is_empty() {
            let started = std::time::Instant::now();
            // Other instances may have appended to these rooms since we
            // last looked: one read brings every hint up to date, so the
            // insert rarely collides.
            let mut rooms: Vec<String> = batch.iter().map(|p| p.chat.room.clone()).collect();
            rooms.sort();
            rooms.dedup();
            if let Err(e) = self.refresh_hints(&rooms).await {
                for p in batch {
                    let _ = p.reply.send(Err(unavailable(&e)));
                }
                return;
            }
            let next: HashMap<String, u64> =
                rooms.iter().map(|r| (r.clone(), self.hint(r))).collect();
            let mut next = next;
            let mut seqs = Vec::with_capacity(batch.len());
            let docs: Vec<Document> = batch
                .iter()
                .map(|p| {
                    let c = &p.chat;
                    let seq = next.get_mut(&c.room).map_or(1, |s| {
                        *s += 1;
                        *s
                    });
                    seqs.push(seq);
                    doc! {
                        "room": &c.room,
                        "seq": seq as i64,
                        "peer": &c.peer,
                        "client_id": &c.client_id,
                        "name": &c.name,
                        "body": &c.body,
                        "ts": &c.ts,
                    }
                })
                .collect();
            let result = self
                .call("append_chat", self.messages.insert_many(docs).ordered(true))
                .await;
            let failed_at = match &result {
                Ok(_) => batch.len(),
                Err(e) => match first_write_error(e) {
                    Some((k, true)) if k < batch.len() => k,
                    _ => {
                        // Outage, timeout or an unknown outcome: nothing is
                        // acked; resends find what did land.
                        for p in batch {
                            let _ = p.reply.send(Err(unavailable(
                                result
                                    .as_ref()
                                    .err()
                                    .map_or(String::new(), |e| e.to_string()),
                            )));
                        }
                        return;
                    }
                },
            };
            let rest = batch.split_off(failed_at);
            let store_round_trip = started.elapsed();
            for (p, seq) in batch.into_iter().zip(seqs) {
                self.raise_hint(&p.chat.room, seq);
                let timing = CommitTiming {
                    batch_wait: started.saturating_duration_since(p.enqueued),
                    store_round_trip,
                };
                let _ = p.reply.send(Ok(appended(p.chat, seq, timing)));
            }
            batch = rest;
            if batch.is_empty() {
                return;
            }
            // The first unwritten one collided: a resend of a stored
            // message, or another instance took its seq.
            let mut failed = batch.remove(0);
            match self.find_by_client_id(&failed.chat).await {
                Ok(Some(message)) => {
                    self.raise_hint(&message.room, message.seq);
                    let _ = failed.reply.send(Ok(Appended {
                        message,
                        duplicate: true,
                        timing: None,
                    }));
                }
                Ok(None) => {
                    failed.races += 1;
                    let refreshed = self.read_last_seq(&failed.chat.room).await;
                    if failed.races >= MAX_SEQ_RACES {
                        let _ = failed.reply.send(Err(unavailable(format!(
                            "room {} is too contended to allocate a seq; retry",
                            failed.chat.room
                        ))));
                    } else if let Err(e) = refreshed {
                        let _ = failed.reply.send(Err(e));
                    } else {
                        batch.insert(0, failed);
                    }
                }
                Err(e) => {
                    let _ = failed.reply.send(Err(e));
                }
            }
        }
    }
}

#[derive(Debug)]
struct CallRefused(&'static str);

impl std::fmt::Display for CallRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CallRefused {}

#[async_trait]
impl Store for MongoStore {
    async fn create_room(&self, room: RoomRecord) -> Result<RoomRecord> {
        match self
            .call("create_room", self.rooms.insert_one(room_doc(&room)))
            .await
        {
            Ok(_) => Ok(room),
            Err(e) if is_duplicate_key(&e) => Err(SignalingError::RoomExists(room.id)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn ensure_room(&self, default: RoomRecord) -> Result<RoomRecord> {
        if let Some(room) = self.get_room(&default.id).await? {
            return Ok(room);
        }
        match self.create_room(default.clone()).await {
            Ok(room) => Ok(room),
            // Created by someone else meanwhile.
            Err(SignalingError::RoomExists(_)) => self
                .get_room(&default.id)
                .await?
                .ok_or_else(|| unavailable("room vanished while being created")),
            Err(e) => Err(e),
        }
    }

    async fn get_room(&self, id: &str) -> Result<Option<RoomRecord>> {
        let found = self
            .call("get_room", self.rooms.find_one(doc! {"_id": id}))
            .await
            .map_err(unavailable)?;
        found.as_ref().map(room_from).transpose()
    }

    /// Appends are combined: each request joins the pending list, and
    /// whoever holds the writer lock writes everything pending in one
    /// ordered `insert_many` (group commit), so a busy instance makes one
    /// round trip per batch rather than per message. Seqs are taken from
    /// the per-room hint and the unique indexes settle every race; no
    /// request is answered before its batch is durable.
    async fn append_chat(&self, chat: NewChat) -> Result<Appended> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(PendingAppend {
                chat,
                reply,
                races: 0,
                enqueued: std::time::Instant::now(),
            });
        loop {
            let _writer = self.writer.lock().await;
            match answer.try_recv() {
                Ok(result) => return result,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(unavailable("append abandoned; retry"));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<PendingAppend> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let n = pending.len().min(MAX_BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                // Ours is being written by a batch that was abandoned midway.
                return Err(unavailable("append abandoned; retry"));
            }
            self.write_batch(batch).await;
        }
    }

    async fn history(&self, room: &str, after: u64, limit: usize) -> Result<Vec<ChatMessage>> {
        let limit = i64::try_from(limit.min(10_000)).unwrap_or(10_000);
        let docs: Vec<Document> = self
            .call("history", async {
                self.messages
                    .find(doc! {"room": room, "seq": {"$gt": after as i64}})
                    .sort(doc! {"seq": 1})
                    .limit(limit)
                    .await?
                    .try_collect()
                    .await
            })
            .await
            .map_err(unavailable)?;
        docs.iter().map(message_from).collect()
    }

    async fn last_seq(&self, room: &str) -> Result<u64> {
        self.read_last_seq(room).await
    }

    async fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.breaker.is_tripped()
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }
}
