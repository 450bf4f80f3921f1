//! Embedded on-disk store for single-machine mode: chat is committed to an
//! append-only log (`chat_log.rs`) and checkpointed into redb, which also
//! keeps rooms and sessions.
//!
//! Rooms, sessions and checkpoints go through one redb writer thread that
//! commits in groups: every request waiting when a commit starts shares it.
//! A checkpoint moves the chat the log made durable (the tail) into redb's
//! tables in one transaction, then drops it from memory and deletes the log
//! segments that hold nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::chat_log::{self, ChatLog, CheckpointTrigger, LogSettings};
use super::chat_tail::{ChatTail, TailEntry};
use super::tables::{
    CLIENT_KEY_TIMES, CLIENT_KEYS, MESSAGES, OLD_CLIENT_ID_TIMES, OLD_CLIENT_IDS, ROOM_SEQ, ROOMS,
    SESSIONS, client_key_hash,
};
use super::{Appended, NewChat, RoomRecord, Store};
use crate::error::{Result, SignalingError};
use crate::protocol::ChatMessage;

/// How long a client id stays idempotent: a resend after this is a new
/// message. Keeps the key table as large as a day of chat, not all of it.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most keys dropped per commit, so that a backlog never makes one commit slow.
const EXPIRE_PER_COMMIT: usize = 1000;

/// redb page cache.
const CACHE_BYTES: usize = 32 << 20;

/// Commits slower than this are logged.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Most requests committed together.
const MAX_GROUP: usize = 8192;
/// Most chat messages one checkpoint moves into redb.
const MAX_CHECKPOINT: usize = 65_536;
/// Size of a chat log segment.
pub const SEGMENT_BYTES: u64 = 8 << 20;

enum WriteOp {
    CreateRoom(RoomRecord, bool, oneshot::Sender<Result<RoomRecord>>),
    /// Stores (Some) or deletes (None) a session record.
    Session(String, Option<Vec<u8>>, oneshot::Sender<Result<()>>),
    /// Moves the tail's chat into redb; answered (when asked) once done.
    Checkpoint(Option<oneshot::Sender<Result<()>>>),
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    #[cfg_attr(not(test), allow(dead_code))]
    idempotency_window: std::time::Duration,
    writes: mpsc::Sender<WriteOp>,
    healthy: Arc<AtomicBool>,
    log: ChatLog,
    tail: Arc<ChatTail>,
    #[cfg_attr(not(test), allow(dead_code))]
    log_dir: PathBuf,
}

fn unavailable(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreUnavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreCorrupt(e.to_string())
}

/// What the redb writer needs besides the database.
struct Checkpointer {
    tail: Arc<ChatTail>,
    trigger: Arc<CheckpointTrigger>,
    /// Tells the log writer what redb now holds.
    applied: std::sync::mpsc::Sender<Vec<TailEntry>>,
    log_dir: PathBuf,
    /// Segments below this id are deleted.
    retired_below: u64,
}

impl EmbeddedStore {
    /// Opens (or creates) `signaling.redb` and the chat log under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, IDEMPOTENCY_WINDOW, SEGMENT_BYTES)
    }

    /// As [`Self::open`], with client ids idempotent for `idempotency_window`.
    pub fn open_with_window(dir: &Path, idempotency_window: std::time::Duration) -> Result<Self> {
        Self::open_with(dir, idempotency_window, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        idempotency_window: std::time::Duration,
        segment_bytes: u64,
    ) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(SignalingError::config(
                "--data-dir",
                format!("{} is a file; the store needs a directory", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            SignalingError::config(
                "--data-dir",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let path = dir.join("signaling.redb");
        // Recent pages are what the message path reads; a small cache is enough.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                let reason = match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => format!(
                        "another instance is running with the store in {} (it holds the \
                         store's lock); stop it, or give this one another data directory",
                        dir.display()
                    ),
                    other => format!("cannot open store {}: {other}", path.display()),
                };
                SignalingError::config("--data-dir", reason)
            })?;
        {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.open_table(ROOMS).map_err(unavailable)?;
            txn.open_table(ROOM_SEQ).map_err(unavailable)?;
            txn.open_table(MESSAGES).map_err(unavailable)?;
            txn.open_table(CLIENT_KEYS).map_err(unavailable)?;
            txn.open_table(CLIENT_KEY_TIMES).map_err(unavailable)?;
            txn.open_table(SESSIONS).map_err(unavailable)?;
            migrate_client_ids(&txn)?;
            txn.commit().map_err(unavailable)?;
        }
        // The redb lock above is held: no other instance uses this log.
        let log_dir = dir.join("chat-log");
        std::fs::create_dir_all(&log_dir).map_err(|e| {
            SignalingError::config(
                "--data-dir",
                format!("cannot create {}: {e}", log_dir.display()),
            )
        })?;
        chat_log::remove_spares(&log_dir)?;
        let first_segment = replay_log(&db, &log_dir)?;
        let db = Arc::new(db);
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        // Weak: the store's own handle is what keeps the writer running.
        let nudge = tx.downgrade();
        let trigger = Arc::new(CheckpointTrigger::new(Box::new(move || {
            nudge
                .upgrade()
                .is_some_and(|tx| tx.try_send(WriteOp::Checkpoint(None)).is_ok())
        })));
        let tail = Arc::new(ChatTail::default());
        let (applied_tx, applied_rx) = std::sync::mpsc::channel();
        let log = ChatLog::start(
            LogSettings {
                dir: log_dir.clone(),
                segment_bytes,
            },
            first_segment,
            db.clone(),
            tail.clone(),
            trigger.clone(),
            applied_rx,
        )?;
        let checkpointer = Checkpointer {
            tail: tail.clone(),
            trigger,
            applied: applied_tx,
            log_dir: log_dir.clone(),
            retired_below: first_segment,
        };
        let writer_db = db.clone();
        let writer_health = healthy.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer_loop(
                    &writer_db,
                    rx,
                    &writer_health,
                    idempotency_window,
                    checkpointer,
                )
            })?;
        Ok(Self {
            db,
            idempotency_window,
            writes: tx,
            healthy,
            log,
            tail,
            log_dir,
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }

    /// Moves every durable message still only in the log into redb now.
    pub async fn checkpoint(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::Checkpoint(Some(tx)))
            .await
            .map_err(|_| unavailable("store writer stopped"))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }
}

/// Replays the chat log into redb, then deletes its segments; returns the
/// id of the first segment of this run.
fn replay_log(db: &Database, log_dir: &Path) -> Result<u64> {
    let replayed = chat_log::read_log(log_dir)?;
    if !replayed.records.is_empty() {
        let mut txn = db.begin_write().map_err(unavailable)?;
        txn.set_durability(Durability::Immediate);
        {
            let mut tables = ChatTables::open(&txn)?;
            for record in &replayed.records {
                tables.insert(&record.message, &record.json, record.written_at)?;
            }
            tables.finish()?;
        }
        txn.commit().map_err(unavailable)?;
        tracing::info!(
            messages = replayed.records.len(),
            segments = replayed.segments.len(),
            "chat log replayed into the store"
        );
    }
    // redb holds every record now (a crash before this line replays them
    // again, which writes the same values).
    for path in &replayed.segments {
        std::fs::remove_file(path)?;
    }
    chat_log::sync_dir(log_dir)?;
    Ok(replayed.next_segment)
}

/// Moves idempotency keys stored by strings (earlier versions) into the
/// hashed tables, once, so resends stay idempotent across the upgrade.
fn migrate_client_ids(txn: &redb::WriteTransaction) -> Result<()> {
    use redb::ReadableTableMetadata;
    let old_ids = txn.open_table(OLD_CLIENT_IDS).map_err(unavailable)?;
    let old_times = txn.open_table(OLD_CLIENT_ID_TIMES).map_err(unavailable)?;
    if old_times.is_empty().map_err(unavailable)? && old_ids.is_empty().map_err(unavailable)? {
        drop((old_ids, old_times));
        txn.delete_table(OLD_CLIENT_IDS).map_err(unavailable)?;
        txn.delete_table(OLD_CLIENT_ID_TIMES).map_err(unavailable)?;
        return Ok(());
    }
    let mut keys = txn.open_table(CLIENT_KEYS).map_err(unavailable)?;
    let mut times = txn.open_table(CLIENT_KEY_TIMES).map_err(unavailable)?;
    let mut moved = 0usize;
    for entry in old_times.iter().map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        let (t, room, peer, id) = key.value();
        let Some(seq) = old_ids.get((room, peer, id)).map_err(unavailable)? else {
            continue;
        };
        let seq = seq.value();
        let hash = client_key_hash(room, peer, id);
        keys.insert((hash, seq), ()).map_err(unavailable)?;
        times.insert((t, hash, seq), ()).map_err(unavailable)?;
        moved += 1;
    }
    drop((old_ids, old_times, keys, times));
    txn.delete_table(OLD_CLIENT_IDS).map_err(unavailable)?;
    txn.delete_table(OLD_CLIENT_ID_TIMES).map_err(unavailable)?;
    tracing::info!(keys = moved, "idempotency keys moved to hashed tables");
    Ok(())
}

/// The chat tables of one write transaction.
struct ChatTables<'txn> {
    seqs: redb::Table<'txn, &'static str, u64>,
    messages: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    keys: redb::Table<'txn, (u64, u64), ()>,
    times: redb::Table<'txn, (u64, u64, u64), ()>,
    /// Each room's highest seq written, stored once by [`Self::finish`].
    last_seqs: std::collections::HashMap<String, u64>,
}

impl<'txn> ChatTables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            seqs: txn.open_table(ROOM_SEQ).map_err(unavailable)?,
            messages: txn.open_table(MESSAGES).map_err(unavailable)?,
            keys: txn.open_table(CLIENT_KEYS).map_err(unavailable)?,
            times: txn.open_table(CLIENT_KEY_TIMES).map_err(unavailable)?,
            last_seqs: std::collections::HashMap::new(),
        })
    }

    /// Writes one durable message; writing it twice changes nothing.
    fn insert(&mut self, message: &ChatMessage, json: &[u8], written_at: u64) -> Result<()> {
        let room = message.room.as_str();
        self.messages
            .insert((room, message.seq), json)
            .map_err(unavailable)?;
        match self.last_seqs.get_mut(room) {
            Some(last) => *last = (*last).max(message.seq),
            None => {
                self.last_seqs.insert(room.to_owned(), message.seq);
            }
        }
        let hash = client_key_hash(room, &message.from, &message.id);
        self.keys
            .insert((hash, message.seq), ())
            .map_err(unavailable)?;
        self.times
            .insert((written_at, hash, message.seq), ())
            .map_err(unavailable)?;
        Ok(())
    }

    /// Stores each room's last seq (never lowering it).
    fn finish(mut self) -> Result<()> {
        for (room, seq) in self.last_seqs.drain() {
            let last = self
                .seqs
                .get(room.as_str())
                .map_err(unavailable)?
                .map_or(0, |v| v.value());
            if seq > last {
                self.seqs.insert(room.as_str(), seq).map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<WriteOp>,
    healthy: &AtomicBool,
    window: std::time::Duration,
    mut checkpointer: Checkpointer,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let checkpoint = group
            .iter()
            .any(|op| matches!(op, WriteOp::Checkpoint(_)))
            .then(|| checkpointer.tail.oldest(MAX_CHECKPOINT));
        let started = std::time::Instant::now();
        let committed = commit_group(db, &mut group, window, checkpoint.as_deref());
        let elapsed = started.elapsed();
        let moved = checkpoint.as_ref().map_or(0, Vec::len);
        // A checkpoint takes about 12 µs a message on the 2.8 GHz Xeon of
        // docs/benchmarks.md; slow is well past that.
        let expected = SLOW_COMMIT + std::time::Duration::from_micros(25 * moved as u64);
        if elapsed >= expected {
            tracing::warn!(
                group = group.len(),
                checkpointed = moved,
                elapsed_ms = elapsed.as_millis() as u64,
                "slow store commit"
            );
        }
        match committed {
            Ok(results) => {
                healthy.store(true, Ordering::Relaxed);
                if let Some(entries) = checkpoint {
                    checkpointer.applied(entries);
                }
                for (op, result) in group.drain(..).zip(results) {
                    reply(op, result);
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, group = group.len(), "store commit failed");
                if checkpoint.is_some() {
                    checkpointer.trigger.done();
                }
                for op in group.drain(..) {
                    reply(op, Err(unavailable(&e)));
                }
            }
        }
    }
}

impl Checkpointer {
    /// After a commit that holds `entries`: drops them from memory and
    /// deletes the segments nothing unapplied is left in.
    fn applied(&mut self, entries: Vec<TailEntry>) {
        self.tail.applied(entries.len());
        let last_segment = entries.last().map(|e| e.segment);
        // The log writer only stops when the store does.
        let _ = self.applied.send(entries);
        self.trigger.done();
        let Some(last_segment) = last_segment else {
            return;
        };
        // Every record before the last one applied is applied: the tail
        // holds the log's records in log order.
        while self.retired_below < last_segment {
            let path = chat_log::segment_path(&self.log_dir, self.retired_below);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete a checkpointed chat log segment");
                    return;
                }
            }
            self.retired_below += 1;
        }
    }
}

enum OpResult {
    Room(RoomRecord),
    Done,
    Failed(SignalingError),
}

fn reply(op: WriteOp, result: Result<OpResult>) {
    // A dropped receiver means the client went away; the write stands anyway.
    match op {
        WriteOp::Session(_, _, tx) => {
            let _ = tx.send(result.and_then(|r| match r {
                OpResult::Done => Ok(()),
                OpResult::Failed(e) => Err(e),
                _ => Err(unavailable("unexpected result")),
            }));
        }
        WriteOp::CreateRoom(_, _, tx) => {
            let _ = tx.send(result.and_then(|r| match r {
                OpResult::Room(room) => Ok(room),
                OpResult::Failed(e) => Err(e),
                _ => Err(unavailable("unexpected result")),
            }));
        }
        WriteOp::Checkpoint(tx) => {
            if let Some(tx) = tx {
                let _ = tx.send(result.and_then(|r| match r {
                    OpResult::Done => Ok(()),
                    OpResult::Failed(e) => Err(e),
                    _ => Err(unavailable("unexpected result")),
                }));
            }
        }
    }
}

fn commit_group(
    db: &Database,
    group: &mut [WriteOp],
    window: std::time::Duration,
    checkpoint: Option<&[TailEntry]>,
) -> Result<Vec<Result<OpResult>>> {
    let now = crate::time::unix_now();
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate);
    let mut results = Vec::with_capacity(group.len());
    {
        let mut rooms = txn.open_table(ROOMS).map_err(unavailable)?;
        let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
        if let Some(entries) = checkpoint {
            let mut chat = ChatTables::open(&txn)?;
            expire_keys(
                &mut chat.keys,
                &mut chat.times,
                now.saturating_sub(window.as_secs()),
            )?;
            for entry in entries {
                chat.insert(&entry.message, &entry.json, entry.written_at)?;
            }
            chat.finish()?;
        }
        for op in group.iter() {
            let result = match op {
                WriteOp::CreateRoom(room, must_be_new, _) => {
                    create_one(room, *must_be_new, &mut rooms).map(OpResult::Room)
                }
                WriteOp::Session(id, Some(bytes), _) => sessions
                    .insert(id.as_str(), bytes.as_slice())
                    .map(|_| OpResult::Done)
                    .map_err(unavailable),
                WriteOp::Session(id, None, _) => sessions
                    .remove(id.as_str())
                    .map(|_| OpResult::Done)
                    .map_err(unavailable),
                WriteOp::Checkpoint(_) => Ok(OpResult::Done),
            };
            // Per-request failures (a taken room id) do not fail the group.
            results.push(Ok(result.unwrap_or_else(OpResult::Failed)));
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(results)
}

/// Drops idempotency keys written before `cutoff` (unix seconds), oldest first.
fn expire_keys(
    keys: &mut redb::Table<(u64, u64), ()>,
    times: &mut redb::Table<(u64, u64, u64), ()>,
    cutoff: u64,
) -> Result<()> {
    let mut expired = Vec::new();
    for entry in times.range(..(cutoff, 0, 0)).map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        expired.push(key.value());
        if expired.len() >= EXPIRE_PER_COMMIT {
            break;
        }
    }
    for (t, hash, seq) in expired {
        keys.remove((hash, seq)).map_err(unavailable)?;
        times.remove((t, hash, seq)).map_err(unavailable)?;
    }
    Ok(())
}

fn create_one(
    room: &RoomRecord,
    must_be_new: bool,
    rooms: &mut redb::Table<&str, &[u8]>,
) -> Result<RoomRecord> {
    if let Some(existing) = rooms.get(room.id.as_str()).map_err(unavailable)? {
        if must_be_new {
            return Err(SignalingError::RoomExists(room.id.clone()));
        }
        return serde_json::from_slice(existing.value()).map_err(corrupt);
    }
    let bytes = serde_json::to_vec(room).map_err(corrupt)?;
    rooms
        .insert(room.id.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    Ok(room.clone())
}

impl EmbeddedStore {
    /// Durably stores (`Some`) or deletes (`None`) a session record.
    pub async fn write_session(&self, id: &str, record: Option<Vec<u8>>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::Session(id.to_owned(), record, tx))
            .await
            .map_err(|_| unavailable("store writer stopped"))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }

    /// Every stored session record.
    pub fn load_sessions(&self) -> Result<Vec<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(SESSIONS).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)? {
            let (_, v) = entry.map_err(unavailable)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    async fn write_room(&self, room: RoomRecord, must_be_new: bool) -> Result<RoomRecord> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::CreateRoom(room, must_be_new, tx))
            .await
            .map_err(|_| unavailable("store writer stopped"))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_room(&self, room: RoomRecord) -> Result<RoomRecord> {
        self.write_room(room, true).await
    }

    async fn ensure_room(&self, default: RoomRecord) -> Result<RoomRecord> {
        if let Some(room) = self.get_room(&default.id).await? {
            return Ok(room);
        }
        self.write_room(default, false).await
    }

    async fn get_room(&self, id: &str) -> Result<Option<RoomRecord>> {
        let id = id.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let rooms = txn.open_table(ROOMS).map_err(unavailable)?;
            match rooms.get(id.as_str()).map_err(unavailable)? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(corrupt)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn append_chat(&self, chat: NewChat) -> Result<Appended> {
        self.log.append(chat).await
    }

    async fn history(&self, room: &str, after: u64, limit: usize) -> Result<Vec<ChatMessage>> {
        // The tail first: a message leaves it only after redb holds it, so
        // redb, read next, has everything older than the tail's part.
        let newest = self.tail.after(room, after, limit);
        if newest
            .first()
            .is_some_and(|m| m.seq == after.saturating_add(1))
        {
            return Ok(newest);
        }
        let below = newest.first().map_or(u64::MAX, |m| m.seq);
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            let start = after.saturating_add(1);
            let mut out = Vec::new();
            if start < below {
                for entry in messages
                    .range((room.as_str(), start)..(room.as_str(), below))
                    .map_err(unavailable)?
                    .take(limit)
                {
                    let (_, v) = entry.map_err(unavailable)?;
                    out.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
                }
            }
            let room_left = limit - out.len();
            out.extend(newest.into_iter().take(room_left));
            Ok(out)
        })
        .await
    }

    async fn last_seq(&self, room: &str) -> Result<u64> {
        if let Some(seq) = self.tail.last_seq(room) {
            return Ok(seq);
        }
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let seqs = txn.open_table(ROOM_SEQ).map_err(unavailable)?;
            Ok(seqs
                .get(room.as_str())
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
        .await
    }

    async fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.writes.is_closed() && self.log.healthy()
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(room: &str, peer: &str, id: &str) -> NewChat {
        NewChat {
            room: room.into(),
            peer: peer.into(),
            client_id: id.into(),
            name: "n".into(),
            body: format!("body {id}"),
            ts: "t".into(),
        }
    }

    #[tokio::test]
    async fn idempotency_keys_expire_after_their_window() {
        let dir = tempdir();
        let store = EmbeddedStore::open_with_window(&dir, std::time::Duration::ZERO).unwrap();
        assert_eq!(store.idempotency_window, std::time::Duration::ZERO);
        let first = store.append_chat(chat("r", "p", "c1")).await.unwrap();
        store.checkpoint().await.unwrap();
        // The next checkpoint drops keys older than the window (here: all of them).
        let after = std::time::Instant::now();
        while crate::time::unix_now() == first_second(&store).await {
            assert!(after.elapsed() < std::time::Duration::from_secs(3));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.append_chat(chat("r", "p", "other")).await.unwrap();
        store.checkpoint().await.unwrap();
        let count = |store: &EmbeddedStore| {
            use redb::ReadableTableMetadata;
            let txn = store.db.begin_read().unwrap();
            let ids = txn.open_table(CLIENT_KEYS).unwrap().len().unwrap();
            let times = txn.open_table(CLIENT_KEY_TIMES).unwrap().len().unwrap();
            (ids, times)
        };
        assert_eq!(count(&store), (1, 1), "only the newest key is left");
        // A resend after the window is a new message; the messages themselves stay.
        let again = store.append_chat(chat("r", "p", "c1")).await.unwrap();
        assert!(!again.duplicate);
        assert_eq!(again.message.seq, 3);
        assert_eq!(store.history("r", 0, 10).await.unwrap()[0], first.message);
    }

    /// The second the oldest idempotency key was written.
    async fn first_second(store: &EmbeddedStore) -> u64 {
        let txn = store.db.begin_read().unwrap();
        let times = txn.open_table(CLIENT_KEY_TIMES).unwrap();
        let first = times.first().unwrap();
        first.map_or(0, |(k, _)| k.value().0)
    }

    #[tokio::test]
    async fn seq_is_gap_free_per_room_and_resends_are_idempotent() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir).unwrap();
        let a = store.append_chat(chat("r1", "p1", "c1")).await.unwrap();
        let b = store.append_chat(chat("r1", "p2", "c1")).await.unwrap();
        let c = store.append_chat(chat("r2", "p1", "c1")).await.unwrap();
        let again = store.append_chat(chat("r1", "p1", "c1")).await.unwrap();
        assert_eq!((a.message.seq, b.message.seq, c.message.seq), (1, 2, 1));
        assert!(!a.duplicate && !b.duplicate);
        assert!(again.duplicate);
        assert_eq!(again.message, a.message);
        assert_eq!(store.last_seq("r1").await.unwrap(), 2);
        let h = store.history("r1", 1, 10).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].seq, 2);
        // concurrent appends share commits and still get distinct, contiguous seqs
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.append_chat(chat("r3", "p", &format!("m{i}")))
                    .await
                    .unwrap()
                    .message
                    .seq
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn rooms_are_created_once() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir).unwrap();
        let room = RoomRecord {
            id: "r".into(),
            name: "Room".into(),
            max_peers: 4,
            created_at: "t".into(),
        };
        store.create_room(room.clone()).await.unwrap();
        assert!(matches!(
            store.create_room(room.clone()).await,
            Err(SignalingError::RoomExists(_))
        ));
        let mut other = room.clone();
        other.max_peers = 9;
        assert_eq!(store.ensure_room(other).await.unwrap(), room);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Opens the store in `dir` with segments of `segment_bytes`, once the
    /// last store on it has released redb's lock (dropping a redb database
    /// finishes with a commit, on the thread that dropped it last).
    fn reopen(dir: &Path, segment_bytes: u64) -> EmbeddedStore {
        let started = std::time::Instant::now();
        loop {
            match EmbeddedStore::open_with(dir, IDEMPOTENCY_WINDOW, segment_bytes) {
                Ok(store) => return store,
                Err(SignalingError::Config { reason, .. })
                    if reason.contains("another instance")
                        && started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn segment_files(store: &EmbeddedStore) -> Vec<std::path::PathBuf> {
        chat_log::segments(&store.log_dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    async fn seqs_of(store: &EmbeddedStore, room: &str) -> Vec<u64> {
        let page = store.history(room, 0, 1000).await.unwrap();
        page.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn chat_only_in_the_log_is_replayed_into_redb_at_start() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir).unwrap();
        let mut acked = Vec::new();
        for i in 0..50 {
            acked.push(
                store
                    .append_chat(chat("r", "p", &format!("c{i}")))
                    .await
                    .unwrap(),
            );
        }
        // Readable before any checkpoint, from memory.
        assert_eq!(seqs_of(&store, "r").await, (1..=50).collect::<Vec<_>>());
        assert_eq!(store.last_seq("r").await.unwrap(), 50);
        close(store);

        let store = reopen(&dir, SEGMENT_BYTES);
        assert_eq!(store.tail.size().0, 0, "replayed straight into redb");
        assert_eq!(
            segment_files(&store).len(),
            1,
            "the replayed segments are gone"
        );
        let history = store.history("r", 0, 1000).await.unwrap();
        assert_eq!(
            history,
            acked.iter().map(|a| a.message.clone()).collect::<Vec<_>>()
        );
        let again = store.append_chat(chat("r", "p", "c7")).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message, acked[7].message);
        let next = store.append_chat(chat("r", "p", "new")).await.unwrap();
        assert_eq!(next.message.seq, 51);
        close(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Drops the store and waits until its threads let go of the files.
    fn close(store: EmbeddedStore) {
        let db = Arc::downgrade(&store.db);
        drop(store);
        let started = std::time::Instant::now();
        while db.upgrade().is_some() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_and_its_seq_given_again() {
        let dir = tempdir();
        let store = EmbeddedStore::open(&dir).unwrap();
        for i in 0..3 {
            store
                .append_chat(chat("r", "p", &format!("c{i}")))
                .await
                .unwrap();
        }
        let segment = segment_files(&store).pop().unwrap();
        close(store);
        // Tear the third record as a crash in the middle of its write would:
        // its last bytes never reached the disk.
        let mut bytes = std::fs::read(&segment).unwrap();
        let (records, _) = super::super::log_record::scan(1, &bytes);
        assert_eq!(records.len(), 3);
        let used: usize = records
            .iter()
            .map(|r| super::super::log_record::HEADER_BYTES + 16 + r.json.len())
            .sum();
        drop(records);
        for b in &mut bytes[used - 10..used] {
            *b = 0;
        }
        std::fs::write(&segment, &bytes).unwrap();

        let store = reopen(&dir, SEGMENT_BYTES);
        assert_eq!(seqs_of(&store, "r").await, [1, 2], "the torn record is cut");
        let resent = store.append_chat(chat("r", "p", "c2")).await.unwrap();
        assert!(!resent.duplicate, "never stored, so never acked");
        assert_eq!(resent.message.seq, 3);
        assert!(
            store
                .append_chat(chat("r", "p", "c1"))
                .await
                .unwrap()
                .duplicate
        );
        close(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_hole_before_a_later_segment_ends_the_replay_there() {
        let dir = tempdir();
        let message = |seq: u64| ChatMessage {
            room: "r".into(),
            seq,
            id: format!("c{seq}"),
            from: "p".into(),
            name: "n".into(),
            body: "b".into(),
            ts: "t".into(),
        };
        // Segment 1 holds records 1 and 2; segment 2 starts at record 4:
        // record 3's page was lost, so 4 and 5 were never acked.
        let write = |id: u64, numbers: &[u64]| {
            let mut bytes = Vec::new();
            let mut record = Vec::new();
            for n in numbers {
                super::super::log_record::encode(0, *n, &message(*n), &mut record);
                super::super::log_record::seal(id, &mut record);
                bytes.extend_from_slice(&record);
            }
            bytes.resize(4096, 0);
            std::fs::write(chat_log::segment_path(&dir, id), bytes).unwrap();
        };
        write(1, &[1, 2]);
        write(2, &[4, 5]);
        let replayed = chat_log::read_log(&dir).unwrap();
        let seqs: Vec<u64> = replayed.records.iter().map(|r| r.message.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(replayed.segments.len(), 2);
        assert_eq!(replayed.next_segment, 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn idempotency_keys_of_an_earlier_version_still_dedupe_after_the_upgrade() {
        let dir = tempdir();
        let message = ChatMessage {
            room: "r".into(),
            seq: 1,
            id: "c1".into(),
            from: "p".into(),
            name: "n".into(),
            body: "body c1".into(),
            ts: "t".into(),
        };
        {
            // A store as the string-keyed version left it.
            let db = Database::create(dir.join("signaling.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let json = serde_json::to_vec(&message).unwrap();
                let mut messages = txn.open_table(MESSAGES).unwrap();
                messages.insert(("r", 1), json.as_slice()).unwrap();
                txn.open_table(ROOM_SEQ).unwrap().insert("r", 1).unwrap();
                let mut ids = txn.open_table(OLD_CLIENT_IDS).unwrap();
                ids.insert(("r", "p", "c1"), 1).unwrap();
                let mut times = txn.open_table(OLD_CLIENT_ID_TIMES).unwrap();
                times
                    .insert((crate::time::unix_now(), "r", "p", "c1"), ())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(&dir).unwrap();
        let again = store.append_chat(chat("r", "p", "c1")).await.unwrap();
        assert!(again.duplicate, "the old key is honoured");
        assert_eq!(again.message, message);
        assert_eq!(
            store
                .append_chat(chat("r", "p", "c2"))
                .await
                .unwrap()
                .message
                .seq,
            2
        );
        {
            use redb::ReadableTableMetadata;
            let txn = store.db.begin_read().unwrap();
            assert_eq!(txn.open_table(CLIENT_KEYS).unwrap().len().unwrap(), 1);
            assert!(
                txn.open_table(OLD_CLIENT_IDS).is_err(),
                "the old tables are gone"
            );
        }
        close(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn segments_roll_over_and_checkpointed_ones_are_deleted() {
        let dir = tempdir();
        // Small segments: a few records each.
        let store = reopen(&dir, 1024);
        for i in 0..60 {
            store
                .append_chat(chat("r", "p", &format!("c{i}")))
                .await
                .unwrap();
        }
        // Segment ids count up from 1 (periodic checkpoints may already
        // have deleted some of them).
        let newest = chat_log::segments(&store.log_dir)
            .unwrap()
            .last()
            .unwrap()
            .0;
        assert!(newest > 5, "segment {newest} is the newest");
        store.checkpoint().await.unwrap();
        assert_eq!(store.tail.size(), (0, 0));
        let left = segment_files(&store).len();
        assert!(
            left <= 1,
            "{left} segments left after a checkpoint of everything"
        );
        assert_eq!(seqs_of(&store, "r").await, (1..=60).collect::<Vec<_>>());
        // Resends of checkpointed messages are found in redb.
        let again = store.append_chat(chat("r", "p", "c3")).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message.seq, 4);
        for i in 60..70 {
            store
                .append_chat(chat("r", "p", &format!("c{i}")))
                .await
                .unwrap();
        }
        close(store);
        let store = reopen(&dir, 1024);
        assert_eq!(seqs_of(&store, "r").await, (1..=70).collect::<Vec<_>>());
        close(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "videochat-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
