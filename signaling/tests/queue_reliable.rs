//! The Redis Streams reliable queue against a real redis-server: retries
//! with exponential backoff, dead-lettering after the last attempt, re-drive,
//! claiming a dead consumer's pending entries, and surviving Redis restarts.

mod support_backends;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support_backends::RedisServer;
use tokio_util::sync::CancellationToken;
use videochat_signaling::redis::{
    Job, JobFailure, JobHandler, QueueConfig, QueueMetrics, RedisConfig, RedisConnection,
    ReliableQueue,
};

/// Records every attempt; fails as the test says.
struct Recorder {
    seen: Mutex<Vec<(Job, Instant)>>,
    /// Attempts (1-based) below this fail with `Retry`.
    fail_before_attempt: u32,
    /// While set, every attempt fails permanently.
    permanent: AtomicBool,
    /// While set, every attempt fails with `Retry`.
    down: AtomicBool,
}

impl Recorder {
    fn new(fail_before_attempt: u32) -> Arc<Self> {
        Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            fail_before_attempt,
            permanent: AtomicBool::new(false),
            down: AtomicBool::new(false),
        })
    }
    fn seen(&self) -> Vec<(Job, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl JobHandler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), JobFailure> {
        self.seen
            .lock()
            .unwrap()
            .push((job.clone(), Instant::now()));
        if self.permanent.load(Ordering::SeqCst) {
            return Err(JobFailure::Permanent(format!("rejected {}", job.payload)));
        }
        if self.down.load(Ordering::SeqCst) || job.attempt < self.fail_before_attempt {
            return Err(JobFailure::Retry(format!(
                "target down (attempt {})",
                job.attempt
            )));
        }
        Ok(())
    }
}

fn connect(redis: &RedisServer) -> RedisConnection {
    RedisConnection::connect(RedisConfig::new(redis.url())).expect("valid redis url")
}

fn config(consumer: &str, max_attempts: u32, base: Duration) -> QueueConfig {
    let mut c = QueueConfig::new("test", consumer);
    c.max_attempts = max_attempts;
    c.base_backoff = base;
    c.max_backoff = Duration::from_secs(2);
    c.block = Duration::from_millis(50);
    c.claim_idle = Duration::from_secs(30);
    c
}

async fn wait_until<F: Fn() -> bool>(what: &str, within: Duration, f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_worker(
    queue: &Arc<ReliableQueue>,
    handler: Arc<Recorder>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(queue.clone().run(handler, stop.clone()));
    (stop, task)
}

#[tokio::test]
async fn retries_with_exponential_backoff_then_succeeds() {
    let redis = RedisServer::start();
    let queue = ReliableQueue::new(
        connect(&redis),
        config("w1", 5, Duration::from_millis(200)),
        QueueMetrics::default(),
    );
    queue.ensure_group().await.unwrap();
    let handler = Recorder::new(3);
    let (stop, task) = spawn_worker(&queue, handler.clone());
    queue.enqueue("persist", r#"{"n":1}"#).await.unwrap();

    wait_until("third attempt", Duration::from_secs(10), || {
        handler.seen().len() >= 3
    })
    .await;
    let seen = handler.seen();
    let attempts: Vec<u32> = seen.iter().map(|(j, _)| j.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(
        seen.iter()
            .all(|(j, _)| j.kind == "persist" && j.payload == r#"{"n":1}"#)
    );
    // Equal jitter: the delay before attempt n is in [d/2, d], d = 200ms * 2^(n-2).
    let first_gap = seen[1].1 - seen[0].1;
    let second_gap = seen[2].1 - seen[1].1;
    assert!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(200), "{second_gap:?}");

    // Acked and gone; nothing dead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.outstanding(), 0, "{depth:?}");
    assert_eq!(depth.dead, 0);
    assert_eq!(queue.metrics().retries.get(), 2);
    assert_eq!(queue.metrics().processed.get(), 1);
    assert_eq!(handler.seen().len(), 3, "no extra delivery after success");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn dead_letters_after_the_last_attempt_and_redrives() {
    let redis = RedisServer::start();
    let queue = ReliableQueue::new(
        connect(&redis),
        config("w1", 3, Duration::from_millis(40)),
        QueueMetrics::default(),
    );
    let handler = Recorder::new(0);
    handler.down.store(true, Ordering::SeqCst);
    let (stop, task) = spawn_worker(&queue, handler.clone());
    let source = queue.enqueue("webhook", "payload-7").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = queue.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter after the last attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.kind, "webhook");
    assert_eq!(letter.payload, "payload-7");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.last_error, "target down (attempt 3)");
    assert!(letter.failed_at_ms > 0);
    assert_ne!(letter.source_id, source, "retries are new stream entries");
    assert_eq!(handler.seen().len(), 3, "exactly max_attempts attempts");
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth.outstanding(), 0, "{depth:?}");
    assert_eq!(depth.dead, 1);
    assert_eq!(queue.metrics().dead_lettered.get(), 1);

    // The target is back: re-drive runs it again from attempt 1.
    handler.down.store(false, Ordering::SeqCst);
    let redriven = queue.redrive(&letter.id).await.unwrap();
    assert!(redriven.is_some());
    wait_until("re-driven attempt", Duration::from_secs(5), || {
        handler.seen().len() >= 4
    })
    .await;
    let last = handler.seen().last().cloned().unwrap().0;
    assert_eq!(
        (last.kind.as_str(), last.payload.as_str(), last.attempt),
        ("webhook", "payload-7", 1)
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(queue.dead_letters(10).await.unwrap().is_empty());
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.outstanding(), depth.dead), (0, 0), "{depth:?}");

    // Unknown or malformed ids re-drive nothing.
    assert_eq!(queue.redrive(&letter.id).await.unwrap(), None);
    assert_eq!(queue.redrive("+").await.unwrap(), None);
    assert_eq!(queue.redrive("nonsense").await.unwrap(), None);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn permanent_failure_goes_to_dead_letters_without_retries() {
    let redis = RedisServer::start();
    let queue = ReliableQueue::new(
        connect(&redis),
        config("w1", 5, Duration::from_millis(40)),
        QueueMetrics::default(),
    );
    let handler = Recorder::new(0);
    handler.permanent.store(true, Ordering::SeqCst);
    let (stop, task) = spawn_worker(&queue, handler.clone());
    queue.enqueue("webhook", "bad").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue.dead_letters(10).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "permanent failure not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error, "rejected bad");
    assert_eq!(handler.seen().len(), 1);
    assert_eq!(queue.metrics().retries.get(), 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn claims_the_pending_entries_of_a_dead_consumer() {
    let redis = RedisServer::start();
    let conn = connect(&redis);
    let mut cfg = config("survivor", 3, Duration::from_millis(40));
    cfg.claim_idle = Duration::from_millis(400);
    let queue = ReliableQueue::new(conn.clone(), cfg, QueueMetrics::default());
    queue.ensure_group().await.unwrap();
    for n in 0..3 {
        queue
            .enqueue("persist", &format!("entry-{n}"))
            .await
            .unwrap();
    }
    // A consumer reads the entries and dies before acknowledging them.
    let mut raw = conn
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("crashed")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(conn.key("queue:test:stream"))
        .arg(">")
        .query_async(&mut raw)
        .await
        .unwrap();
    let read_at = Instant::now();
    assert_eq!(read.keys[0].ids.len(), 3);
    assert_eq!(queue.depth().await.unwrap().pending, 3);

    let handler = Recorder::new(0);
    let (stop, task) = spawn_worker(&queue, handler.clone());
    wait_until("claimed entries handled", Duration::from_secs(10), || {
        handler.seen().len() >= 3
    })
    .await;
    let seen = handler.seen();
    let mut payloads: Vec<&str> = seen.iter().map(|(j, _)| j.payload.as_str()).collect();
    payloads.sort();
    assert_eq!(payloads, vec!["entry-0", "entry-1", "entry-2"]);
    assert!(
        seen[0].1 - read_at >= Duration::from_millis(400),
        "claimed before the dead consumer's entries were idle for claim_idle"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.pending, depth.outstanding()), (0, 0), "{depth:?}");
    assert_eq!(queue.metrics().claimed.get(), 3);
    assert_eq!(
        handler.seen().len(),
        3,
        "each entry handled once by the survivor"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn entries_survive_redis_crash_and_the_worker_reconnects() {
    let mut redis = RedisServer::start();
    let queue = ReliableQueue::new(
        connect(&redis),
        config("w1", 3, Duration::from_millis(40)),
        QueueMetrics::default(),
    );
    queue.ensure_group().await.unwrap();
    for n in 0..3 {
        queue
            .enqueue("persist", &format!("before-{n}"))
            .await
            .unwrap();
    }
    // kill -9: enqueue returned, so the entries are in the AOF (fsync always).
    redis.kill();
    assert!(
        queue.enqueue("persist", "while-down").await.is_err(),
        "enqueue must fail while Redis is down"
    );
    redis.start_again();
    let handler = Recorder::new(0);
    let (stop, task) = spawn_worker(&queue, handler.clone());
    wait_until(
        "entries from before the crash",
        Duration::from_secs(15),
        || handler.seen().len() >= 3,
    )
    .await;

    // A graceful restart while the worker runs: it reconnects and goes on.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match queue.enqueue("persist", "after-restart").await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(Instant::now() < deadline, "queue did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    wait_until("entry after the restart", Duration::from_secs(15), || {
        handler.seen().len() >= 4
    })
    .await;
    let mut payloads: Vec<String> = handler
        .seen()
        .iter()
        .map(|(j, _)| j.payload.clone())
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        vec!["after-restart", "before-0", "before-1", "before-2"]
    );
    stop.cancel();
    task.await.unwrap();
}
