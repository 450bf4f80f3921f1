//! Embedded on-disk store on redb for single-machine mode.
//!
//! Writes go through one writer thread that commits in groups: every request
//! waiting when a commit starts shares its fsync, so durability costs one
//! fsync per group rather than per message.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewChat, RoomRecord, Store};
use crate::error::{Result, SignalingError};
use crate::protocol::ChatMessage;

const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const ROOM_SEQ: TableDefinition<&str, u64> = TableDefinition::new("room_seq");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (room, peer, client id) → seq, for idempotent resends.
const CLIENT_IDS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("client_ids");
/// (unix seconds, room, peer, client id): when each idempotency key was
/// written, in time order, so that expired keys are found without a scan.
const CLIENT_ID_TIMES: TableDefinition<(u64, &str, &str, &str), ()> =
    TableDefinition::new("client_id_times");

/// How long a client id stays idempotent: a resend after this is a new
/// message. Keeps the key table as large as a day of chat, not all of it.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most keys dropped per commit, so that a backlog never makes one commit slow.
const EXPIRE_PER_COMMIT: usize = 1000;
/// session id → encoded session state, so sessions (and with them the
/// idempotency of resends) survive a restart.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// redb page cache.
const CACHE_BYTES: usize = 32 << 20;

/// Commits slower than this are logged.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Most requests committed together.
const MAX_GROUP: usize = 8192;

enum WriteOp {
    Append(NewChat, oneshot::Sender<Result<Appended>>),
    CreateRoom(RoomRecord, bool, oneshot::Sender<Result<RoomRecord>>),
    /// Stores (Some) or deletes (None) a session record.
    Session(String, Option<Vec<u8>>, oneshot::Sender<Result<()>>),
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    #[cfg_attr(not(test), allow(dead_code))]
    idempotency_window: std::time::Duration,
    writes: mpsc::Sender<WriteOp>,
    healthy: Arc<AtomicBool>,
}

fn unavailable(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreUnavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreCorrupt(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `signaling.redb` under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_window(dir, IDEMPOTENCY_WINDOW)
    }

    /// As [`Self::open`], with client ids idempotent for `idempotency_window`.
    pub fn open_with_window(dir: &Path, idempotency_window: std::time::Duration) -> Result<Self> {
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
            txn.open_table(CLIENT_IDS).map_err(unavailable)?;
            txn.open_table(CLIENT_ID_TIMES).map_err(unavailable)?;
            txn.open_table(SESSIONS).map_err(unavailable)?;
            txn.commit().map_err(unavailable)?;
        }
        let db = Arc::new(db);
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        let writer_db = db.clone();
        let writer_health = healthy.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, &writer_health, idempotency_window))?;
        Ok(Self {
            db,
            idempotency_window,
            writes: tx,
            healthy,
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
}

fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<WriteOp>,
    healthy: &AtomicBool,
    window: std::time::Duration,
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
        let started = std::time::Instant::now();
        let committed = commit_group(db, &mut group, window);
        let elapsed = started.elapsed();
        if elapsed >= SLOW_COMMIT {
            // Acks wait for this; a slow disk shows up here first.
            tracing::warn!(
                group = group.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "slow store commit"
            );
        }
        match committed {
            Ok(results) => {
                healthy.store(true, Ordering::Relaxed);
                for (op, result) in group.drain(..).zip(results) {
                    reply(op, result);
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, group = group.len(), "store commit failed");
                for op in group.drain(..) {
                    reply(op, Err(unavailable(&e)));
                }
            }
        }
    }
}

enum OpResult {
    Appended(Appended),
    Room(RoomRecord),
    Done,
    Failed(SignalingError),
}

fn reply(op: WriteOp, result: Result<OpResult>) {
    // A dropped receiver means the client went away; the write stands anyway.
    match op {
        WriteOp::Append(_, tx) => {
            let _ = tx.send(result.and_then(|r| match r {
                OpResult::Appended(a) => Ok(a),
                OpResult::Failed(e) => Err(e),
                _ => Err(unavailable("unexpected result")),
            }));
        }
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
    }
}

fn commit_group(
    db: &Database,
    group: &mut [WriteOp],
    window: std::time::Duration,
) -> Result<Vec<Result<OpResult>>> {
    let now = crate::time::unix_now();
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate);
    let mut results = Vec::with_capacity(group.len());
    {
        let mut rooms = txn.open_table(ROOMS).map_err(unavailable)?;
        let mut seqs = txn.open_table(ROOM_SEQ).map_err(unavailable)?;
        let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        let mut ids = txn.open_table(CLIENT_IDS).map_err(unavailable)?;
        let mut times = txn.open_table(CLIENT_ID_TIMES).map_err(unavailable)?;
        let mut sessions = txn.open_table(SESSIONS).map_err(unavailable)?;
        expire_keys(&mut ids, &mut times, now.saturating_sub(window.as_secs()))?;
        for op in group.iter() {
            let result = match op {
                WriteOp::Append(chat, _) => {
                    append_one(chat, now, &mut seqs, &mut messages, &mut ids, &mut times)
                        .map(OpResult::Appended)
                }
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
    ids: &mut redb::Table<(&str, &str, &str), u64>,
    times: &mut redb::Table<(u64, &str, &str, &str), ()>,
    cutoff: u64,
) -> Result<()> {
    let mut expired = Vec::new();
    for entry in times.range(..(cutoff, "", "", "")).map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        let (t, room, peer, id) = key.value();
        expired.push((t, room.to_owned(), peer.to_owned(), id.to_owned()));
        if expired.len() >= EXPIRE_PER_COMMIT {
            break;
        }
    }
    for (t, room, peer, id) in &expired {
        ids.remove((room.as_str(), peer.as_str(), id.as_str()))
            .map_err(unavailable)?;
        times
            .remove((*t, room.as_str(), peer.as_str(), id.as_str()))
            .map_err(unavailable)?;
    }
    Ok(())
}

fn append_one(
    chat: &NewChat,
    now: u64,
    seqs: &mut redb::Table<&str, u64>,
    messages: &mut redb::Table<(&str, u64), &[u8]>,
    ids: &mut redb::Table<(&str, &str, &str), u64>,
    times: &mut redb::Table<(u64, &str, &str, &str), ()>,
) -> Result<Appended> {
    let key = (
        chat.room.as_str(),
        chat.peer.as_str(),
        chat.client_id.as_str(),
    );
    if let Some(seq) = ids.get(key).map_err(unavailable)? {
        let seq = seq.value();
        let bytes = messages
            .get((chat.room.as_str(), seq))
            .map_err(unavailable)?
            .ok_or_else(|| corrupt(format!("message {seq} of an idempotency key is missing")))?;
        let message: ChatMessage = serde_json::from_slice(bytes.value()).map_err(corrupt)?;
        return Ok(Appended {
            message,
            duplicate: true,
        });
    }
    let last = seqs
        .get(chat.room.as_str())
        .map_err(unavailable)?
        .map(|v| v.value())
        .unwrap_or(0);
    let seq = last + 1;
    let message = ChatMessage {
        room: chat.room.clone(),
        seq,
        id: chat.client_id.clone(),
        from: chat.peer.clone(),
        name: chat.name.clone(),
        body: chat.body.clone(),
        ts: chat.ts.clone(),
    };
    let bytes = serde_json::to_vec(&message).map_err(corrupt)?;
    messages
        .insert((chat.room.as_str(), seq), bytes.as_slice())
        .map_err(unavailable)?;
    seqs.insert(chat.room.as_str(), seq).map_err(unavailable)?;
    ids.insert(key, seq).map_err(unavailable)?;
    times
        .insert((now, key.0, key.1, key.2), ())
        .map_err(unavailable)?;
    Ok(Appended {
        message,
        duplicate: false,
    })
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
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(WriteOp::Append(chat, tx))
            .await
            .map_err(|_| unavailable("store writer stopped"))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }

    async fn history(&self, room: &str, after: u64, limit: usize) -> Result<Vec<ChatMessage>> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            let start = after.saturating_add(1);
            let mut out = Vec::new();
            for entry in messages
                .range((room.as_str(), start)..=(room.as_str(), u64::MAX))
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, v) = entry.map_err(unavailable)?;
                out.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
            }
            Ok(out)
        })
        .await
    }

    async fn last_seq(&self, room: &str) -> Result<u64> {
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
        self.healthy.load(Ordering::Relaxed) && !self.writes.is_closed()
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
        // The next commit drops keys older than the window (here: all of them).
        let after = std::time::Instant::now();
        while crate::time::unix_now() == first_second(&store).await {
            assert!(after.elapsed() < std::time::Duration::from_secs(3));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.append_chat(chat("r", "p", "other")).await.unwrap();
        let count = |store: &EmbeddedStore| {
            use redb::ReadableTableMetadata;
            let txn = store.db.begin_read().unwrap();
            let ids = txn.open_table(CLIENT_IDS).unwrap().len().unwrap();
            let times = txn.open_table(CLIENT_ID_TIMES).unwrap().len().unwrap();
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
        let times = txn.open_table(CLIENT_ID_TIMES).unwrap();
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
