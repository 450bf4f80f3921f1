//! The chat commit path of the embedded store: an append-only log.
//!
//! One writer thread takes every chat waiting, checks its idempotency key,
//! gives it the room's next `seq`, and writes the group's records with one
//! `pwrite` into a zero-filled segment. A second thread makes groups durable
//! with one `fdatasync` each and only then releases them: the messages become
//! readable (the [`ChatTail`]), then their senders get their answers, group by
//! group in log order. While one group's sync runs, the writer already writes
//! the next, so a message waits for at most the sync in flight and its own,
//! and when several groups queue up behind a sync they share the next one.
//!
//! A redb checkpoint later moves the durable messages out of memory into
//! redb (see `embedded.rs`); segments whose records are all in redb are
//! deleted. At start, whatever the log holds is replayed into redb first.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use redb::{Database, ReadOnlyTable};
use tokio::sync::{mpsc, oneshot};

use super::chat_tail::{ChatTail, TailEntry};
use super::log_record;
use super::tables::{CLIENT_KEYS, MESSAGES, ROOM_SEQ, client_key_hash};
use super::{Appended, NewChat};
use crate::error::{Result, SignalingError};
use crate::protocol::ChatMessage;

/// Most chat messages written in one group.
const MAX_GROUP: usize = 8192;
/// Syncs slower than this are logged: acks wait for them.
const SLOW_SYNC: Duration = Duration::from_millis(20);
/// A checkpoint is asked for when the tail holds this many messages, this
/// many bytes, or has waited this long.
/// Larger checkpoints spread redb's cost per commit over more messages, but
/// each takes a core for its length: at 16,384 messages (200-300 ms) the
/// fan-out p99 at 15,000 msgs/s was 88 ms, at 4,096 (50 ms) 12 ms.
const CHECKPOINT_ENTRIES: usize = 4096;
const CHECKPOINT_BYTES: usize = 2 << 20;
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// The writer waits while the tail holds more than this (redb fell behind):
/// the memory of the tail is bounded by these, not by the traffic.
const MAX_TAIL_ENTRIES: usize = 131_072;
const MAX_TAIL_BYTES: usize = 64 << 20;

/// How the log is laid out on disk.
#[derive(Debug, Clone)]
pub(super) struct LogSettings {
    pub dir: PathBuf,
    /// Size of a segment; records never span two.
    pub segment_bytes: u64,
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("chat-{id:016x}.log"))
}

fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("chat-")?.strip_suffix(".log")?;
    u64::from_str_radix(hex, 16).ok()
}

fn unavailable(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::StoreUnavailable(e.to_string())
}

/// Makes a directory entry (a new or renamed segment) durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Segment files in `dir`, oldest first.
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(segment_id) {
            found.push((id, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    Ok(found)
}

/// Writes a zero-filled file of `bytes` at `path` and makes it durable, so
/// that later writes into it change no file size or block map and a data
/// sync flushes only the data.
fn zero_filled(path: &Path, bytes: u64) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Asks for a checkpoint of the tail into redb, at most one at a time.
pub(super) struct CheckpointTrigger {
    pending: AtomicBool,
    nudge: Box<dyn Fn() -> bool + Send + Sync>,
}

impl CheckpointTrigger {
    /// `nudge` queues a checkpoint and says whether it could.
    pub(super) fn new(nudge: Box<dyn Fn() -> bool + Send + Sync>) -> Self {
        Self {
            pending: AtomicBool::new(false),
            nudge,
        }
    }

    fn request(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) && !(self.nudge)() {
            self.pending.store(false, Ordering::Release);
        }
    }

    /// Called by the checkpoint when it finished.
    pub(super) fn done(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

struct AppendRequest {
    chat: NewChat,
    reply: oneshot::Sender<Result<Appended>>,
}

/// A group written and waiting for its sync.
struct SyncJob {
    /// Every segment the group wrote to, in order.
    files: Vec<Arc<File>>,
    replies: Vec<(oneshot::Sender<Result<Appended>>, Result<Appended>)>,
    entries: Vec<TailEntry>,
}

/// The log's two threads, seen from the async side.
pub(super) struct ChatLog {
    appends: mpsc::Sender<AppendRequest>,
    failed: Arc<AtomicBool>,
}

impl ChatLog {
    /// Starts writing at a new segment `first_segment` (the ones before it
    /// are replayed and gone). `applied` brings the entries each checkpoint
    /// moved into redb.
    pub(super) fn start(
        settings: LogSettings,
        first_segment: u64,
        db: Arc<Database>,
        tail: Arc<ChatTail>,
        checkpoint: Arc<CheckpointTrigger>,
        applied: std_mpsc::Receiver<Vec<TailEntry>>,
    ) -> Result<Self> {
        let path = segment_path(&settings.dir, first_segment);
        let file = zero_filled(&path, settings.segment_bytes)?;
        sync_dir(&settings.dir)?;
        let failed = Arc::new(AtomicBool::new(false));
        let (appends, requests) = mpsc::channel(MAX_GROUP * 4);
        let (jobs, pending_jobs) = std_mpsc::channel();
        let (spare_tx, spares) = std_mpsc::sync_channel(1);
        let (want_spare, spare_wanted) = std_mpsc::channel();
        let spare_settings = settings.clone();
        std::thread::Builder::new()
            .name("chat-log-spare".into())
            .spawn(move || prepare_spares(&spare_settings, &spare_wanted, &spare_tx))?;
        let writer = LogWriter {
            settings,
            segment: Segment {
                id: first_segment,
                file: Arc::new(file),
                offset: 0,
            },
            db,
            tail: tail.clone(),
            checkpoint: checkpoint.clone(),
            applied,
            spares,
            want_spare,
            spare_asked: false,
            jobs,
            failed: failed.clone(),
            last_seq: HashMap::new(),
            unapplied_ids: HashMap::new(),
            next_number: 1,
            lookups: None,
        };
        std::thread::Builder::new()
            .name("chat-log-writer".into())
            .spawn(move || writer.run(requests))?;
        let sync_failed = failed.clone();
        std::thread::Builder::new()
            .name("chat-log-sync".into())
            .spawn(move || sync_loop(&pending_jobs, &tail, &checkpoint, &sync_failed))?;
        Ok(Self { appends, failed })
    }

    /// Returns once `chat` (or the first copy of a resend) is durable.
    pub(super) async fn append(&self, chat: NewChat) -> Result<Appended> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(AppendRequest { chat, reply })
            .await
            .map_err(|_| unavailable("chat log writer stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("chat log writer stopped"))?
    }

    /// Whether appends can be made durable.
    pub(super) fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && !self.appends.is_closed()
    }
}

/// Makes a zero-filled spare segment each time the writer asks (when its
/// segment is half full), so that moving to the next segment is a rename,
/// not 8 MiB of writes on the message path; an idle store has no spare.
fn prepare_spares(
    settings: &LogSettings,
    wanted: &std_mpsc::Receiver<()>,
    ready: &std_mpsc::SyncSender<PathBuf>,
) {
    // A name of this run's own: a stopping run's thread removes its spare.
    let run: u64 = rand::random();
    let mut n = 0u64;
    while wanted.recv().is_ok() {
        n += 1;
        let path = settings.dir.join(format!("chat-spare-{run:016x}-{n}.tmp"));
        if let Err(e) = zero_filled(&path, settings.segment_bytes) {
            // The writer makes the segment itself when no spare is ready.
            tracing::warn!(error = %e, path = %path.display(), "cannot prepare a chat log segment");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if ready.send(path.clone()).is_err() {
            let _ = std::fs::remove_file(&path);
            return;
        }
    }
}

struct Segment {
    id: u64,
    file: Arc<File>,
    offset: u64,
}

/// The idempotency key `(room, peer, client id)` as one byte string.
fn id_key(room: &str, peer: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + room.len() + peer.len() + client_id.len());
    // Lengths first, so no choice of strings makes two keys equal.
    key.extend_from_slice(&(room.len() as u32).to_le_bytes());
    key.extend_from_slice(&(peer.len() as u32).to_le_bytes());
    key.extend_from_slice(room.as_bytes());
    key.extend_from_slice(peer.as_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// Lookups in redb for what the log's memory no longer holds. The tables
/// the writer reads change only at checkpoints, so one read transaction
/// serves every group until the next checkpoint is applied.
struct RedbLookups {
    keys: ReadOnlyTable<(u64, u64), ()>,
    messages: ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    seqs: ReadOnlyTable<&'static str, u64>,
}

impl RedbLookups {
    fn open(db: &Database) -> Result<Self> {
        let txn = db.begin_read().map_err(unavailable)?;
        Ok(Self {
            keys: txn.open_table(CLIENT_KEYS).map_err(unavailable)?,
            messages: txn.open_table(MESSAGES).map_err(unavailable)?,
            seqs: txn.open_table(ROOM_SEQ).map_err(unavailable)?,
        })
    }
}

enum Assigned {
    New(Arc<ChatMessage>),
    Duplicate(ChatMessage),
}

struct LogWriter {
    settings: LogSettings,
    segment: Segment,
    db: Arc<Database>,
    tail: Arc<ChatTail>,
    checkpoint: Arc<CheckpointTrigger>,
    applied: std_mpsc::Receiver<Vec<TailEntry>>,
    spares: std_mpsc::Receiver<PathBuf>,
    want_spare: std_mpsc::Sender<()>,
    /// Whether a spare was asked for since the last move to a new segment.
    spare_asked: bool,
    jobs: std_mpsc::Sender<SyncJob>,
    failed: Arc<AtomicBool>,
    /// The last `seq` given out per room, for rooms with messages not yet
    /// in redb; redb has the others.
    last_seq: HashMap<Arc<str>, u64>,
    /// Idempotency keys of messages not yet in redb.
    unapplied_ids: HashMap<Vec<u8>, Arc<ChatMessage>>,
    /// The next record's number.
    next_number: u64,
    /// Open until the next checkpoint is applied.
    lookups: Option<RedbLookups>,
}

impl LogWriter {
    fn run(mut self, mut requests: mpsc::Receiver<AppendRequest>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut record = Vec::with_capacity(1024);
        let mut buf = Vec::with_capacity(1 << 20);
        while let Some(first) = requests.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.forget_applied();
            self.wait_for_checkpoints();
            if self.failed.load(Ordering::Relaxed) {
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(unavailable(
                        "the chat log could not be written; restart to recover",
                    )));
                }
                continue;
            }
            if let Err(e) = self.write_group(&mut group, &mut record, &mut buf) {
                // After a failed write the file's content is unknown, and the
                // seqs given out may be on disk or not: refuse appends until a
                // restart replays what the log holds.
                self.failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, group = group.len(), "chat log write failed; chat is refused until restart");
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(unavailable(&e)));
                }
            }
        }
    }

    /// Drops what redb now holds from the writer's memory.
    fn forget_applied(&mut self) {
        while let Ok(entries) = self.applied.try_recv() {
            // redb changed: later lookups need a newer snapshot.
            self.lookups = None;
            for entry in entries {
                let m = &entry.message;
                self.unapplied_ids.remove(&id_key(&m.room, &m.from, &m.id));
                if self.last_seq.get(m.room.as_str()) == Some(&m.seq) {
                    self.last_seq.remove(m.room.as_str());
                }
            }
        }
    }

    /// Holds new writes while redb is behind by more than the tail's bound.
    fn wait_for_checkpoints(&mut self) {
        loop {
            let (entries, bytes) = self.tail.size();
            if entries < MAX_TAIL_ENTRIES && bytes < MAX_TAIL_BYTES {
                return;
            }
            self.checkpoint.request();
            std::thread::sleep(Duration::from_millis(1));
            self.forget_applied();
        }
    }

    fn write_group(
        &mut self,
        group: &mut Vec<AppendRequest>,
        record: &mut Vec<u8>,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let now = crate::time::unix_now();
        let mut job = SyncJob {
            files: Vec::with_capacity(1),
            replies: Vec::with_capacity(group.len()),
            entries: Vec::with_capacity(group.len()),
        };
        buf.clear();
        for request in group.drain(..) {
            let assigned = match self.assign(&request.chat) {
                Ok(assigned) => assigned,
                Err(e) => {
                    job.replies.push((request.reply, Err(e)));
                    continue;
                }
            };
            let message = match assigned {
                Assigned::Duplicate(message) => {
                    // Answered with this group, so never before the first
                    // copy's own group is durable.
                    let appended = Appended {
                        message,
                        duplicate: true,
                        timing: None,
                    };
                    job.replies.push((request.reply, Ok(appended)));
                    continue;
                }
                Assigned::New(message) => message,
            };
            log_record::encode(now, self.next_number, &message, record);
            self.next_number += 1;
            if self.segment.offset + (buf.len() + record.len()) as u64 > self.settings.segment_bytes
            {
                self.segment.file.write_all_at(buf, self.segment.offset)?;
                job.files.push(self.segment.file.clone());
                buf.clear();
                self.next_segment()?;
            }
            log_record::seal(self.segment.id, record);
            buf.extend_from_slice(record);
            job.entries.push(TailEntry {
                json: Arc::from(log_record::message_json(record)),
                message: message.clone(),
                written_at: now,
                segment: self.segment.id,
            });
            job.replies.push((
                request.reply,
                Ok(Appended {
                    message: ChatMessage::clone(&message),
                    duplicate: false,
                    timing: None,
                }),
            ));
        }
        if !buf.is_empty() {
            self.segment.file.write_all_at(buf, self.segment.offset)?;
            self.segment.offset += buf.len() as u64;
        }
        if !self.spare_asked && self.segment.offset > self.settings.segment_bytes / 2 {
            // The spare thread only stops when this writer does.
            let _ = self.want_spare.send(());
            self.spare_asked = true;
        }
        job.files.push(self.segment.file.clone());
        // The sync thread only stops when this writer does.
        let _ = self.jobs.send(job);
        Ok(())
    }

    /// The first copy of a resend, or the message with the room's next seq.
    fn assign(&mut self, chat: &NewChat) -> Result<Assigned> {
        let key = id_key(&chat.room, &chat.peer, &chat.client_id);
        if let Some(first) = self.unapplied_ids.get(&key) {
            return Ok(Assigned::Duplicate(ChatMessage::clone(first)));
        }
        if self.lookups.is_none() {
            self.lookups = Some(RedbLookups::open(&self.db)?);
        }
        let Some(redb) = self.lookups.as_ref() else {
            return Err(unavailable("redb lookups"));
        };
        let room = chat.room.as_str();
        let hash = client_key_hash(room, &chat.peer, &chat.client_id);
        for candidate in redb
            .keys
            .range((hash, 0)..=(hash, u64::MAX))
            .map_err(unavailable)?
        {
            let seq = candidate.map_err(unavailable)?.0.value().1;
            let Some(bytes) = redb.messages.get((room, seq)).map_err(unavailable)? else {
                // Another room's key with the same hash.
                continue;
            };
            let message: ChatMessage = serde_json::from_slice(bytes.value())
                .map_err(|e| SignalingError::StoreCorrupt(e.to_string()))?;
            if message.from == chat.peer && message.id == chat.client_id {
                return Ok(Assigned::Duplicate(message));
            }
        }
        let last = match self.last_seq.get(room) {
            Some(last) => *last,
            None => redb
                .seqs
                .get(room)
                .map_err(unavailable)?
                .map_or(0, |v| v.value()),
        };
        let seq = last + 1;
        self.last_seq.insert(Arc::from(room), seq);
        let message = Arc::new(ChatMessage {
            room: chat.room.clone(),
            seq,
            id: chat.client_id.clone(),
            from: chat.peer.clone(),
            name: chat.name.clone(),
            body: chat.body.clone(),
            ts: chat.ts.clone(),
        });
        self.unapplied_ids.insert(key, message.clone());
        Ok(Assigned::New(message))
    }

    /// Moves to a new segment: the prepared spare when there is one.
    fn next_segment(&mut self) -> std::io::Result<()> {
        let id = self.segment.id + 1;
        let path = segment_path(&self.settings.dir, id);
        match self.spares.try_recv() {
            Ok(spare) => std::fs::rename(spare, &path)?,
            Err(_) => {
                drop(zero_filled(&path, self.settings.segment_bytes)?);
            }
        }
        // The name must be durable before any record in it is acked.
        sync_dir(&self.settings.dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        self.spare_asked = false;
        self.segment = Segment {
            id,
            file: Arc::new(file),
            offset: 0,
        };
        Ok(())
    }
}

/// Makes groups durable and releases them in log order.
fn sync_loop(
    jobs: &std_mpsc::Receiver<SyncJob>,
    tail: &ChatTail,
    checkpoint: &CheckpointTrigger,
    failed: &AtomicBool,
) {
    let mut batch = Vec::new();
    let mut last_checkpoint = Instant::now();
    while let Ok(job) = jobs.recv() {
        batch.push(job);
        // Groups written while the last sync ran share this one.
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        let started = Instant::now();
        let synced = if failed.load(Ordering::Relaxed) {
            Err(std::io::Error::other(
                "an earlier chat log write or sync failed",
            ))
        } else {
            sync_files(&batch)
        };
        let elapsed = started.elapsed();
        let messages: usize = batch.iter().map(|j| j.replies.len()).sum();
        if elapsed >= SLOW_SYNC {
            tracing::warn!(
                groups = batch.len(),
                messages,
                elapsed_ms = elapsed.as_millis() as u64,
                "slow chat log sync"
            );
        }
        match synced {
            Ok(()) => {
                for job in batch.drain(..) {
                    // Readable first, then answered: whoever learns a seq
                    // can read the message.
                    tail.push(job.entries);
                    for (reply, result) in job.replies {
                        let _ = reply.send(result);
                    }
                }
                let (entries, bytes) = tail.size();
                if entries >= CHECKPOINT_ENTRIES
                    || bytes >= CHECKPOINT_BYTES
                    || (entries > 0 && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
                {
                    checkpoint.request();
                    last_checkpoint = Instant::now();
                }
            }
            Err(e) => {
                // After a failed fsync the page cache no longer says what is
                // on disk (the kernel may have dropped the dirty pages), so
                // nothing in these groups is acked, and nothing after them.
                if !failed.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, messages, "chat log sync failed; chat is refused until restart");
                }
                for job in batch.drain(..) {
                    for (reply, _) in job.replies {
                        let _ = reply.send(Err(unavailable(format!(
                            "the chat log could not be made durable: {e}"
                        ))));
                    }
                }
            }
        }
    }
}

fn sync_files(batch: &[SyncJob]) -> std::io::Result<()> {
    let mut last: Option<&Arc<File>> = None;
    for file in batch.iter().flat_map(|j| &j.files) {
        if last.is_some_and(|l| Arc::ptr_eq(l, file)) {
            continue;
        }
        // Only the last file of the batch can have a sync of its own later;
        // a file synced here is not synced again for this batch.
        file.sync_data()?;
        last = Some(file);
    }
    Ok(())
}

/// A record the log held at start.
pub(super) struct ReplayedRecord {
    pub written_at: u64,
    pub message: ChatMessage,
    pub json: Vec<u8>,
}

/// What the log held at start: the records up to its first torn record or
/// hole, and every segment file (all of them go once redb holds the records).
pub(super) struct Replayed {
    pub records: Vec<ReplayedRecord>,
    pub segments: Vec<PathBuf>,
    /// The id the new run's first segment takes.
    pub next_segment: u64,
}

/// Reads the log in `dir` as a crash left it. Every acked record is in the
/// prefix this returns: a group is acked only after the syncs that cover it
/// and every record before it. What follows the first torn record or hole
/// was never acked, so it is dropped (and logged).
pub(super) fn read_log(dir: &Path) -> Result<Replayed> {
    let found = segments(dir)?;
    let next_segment = found.last().map_or(1, |(id, _)| id + 1);
    let mut records = Vec::new();
    let mut expected: Option<u64> = None;
    'segments: for (id, path) in &found {
        let bytes = std::fs::read(path)?;
        let (scanned, end) = log_record::scan(*id, &bytes);
        for record in scanned {
            if let Some(expected) = expected
                && record.number != expected
            {
                tracing::warn!(
                    segment = %path.display(),
                    record = record.number,
                    expected,
                    "chat log has a hole (a write lost in a crash); the log ends before it"
                );
                break 'segments;
            }
            expected = Some(record.number + 1);
            records.push(ReplayedRecord {
                written_at: record.written_at,
                json: record.json.to_vec(),
                message: record.message,
            });
        }
        if let log_record::ScanEnd::Torn { offset, reason } = end {
            tracing::warn!(
                segment = %path.display(),
                offset,
                reason,
                "chat log ends in a torn or corrupt record (a write cut by a crash); it is cut there"
            );
            break;
        }
    }
    Ok(Replayed {
        records,
        segments: found.into_iter().map(|(_, path)| path).collect(),
        next_segment,
    })
}

/// Removes spare segments a stopped run left behind.
pub(super) fn remove_spares(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("chat-spare-") && name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
