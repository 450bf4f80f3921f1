//! Faults under load: clients send chat continuously to three signaling
//! processes (resending with the same id on `unavailable` or a dropped
//! connection, resuming on another instance) while one instance is killed
//! with SIGKILL, Redis restarts, and MongoDB is stopped for 20 s. Afterwards
//! every acked message is in history exactly once with the seq its ack
//! named, seq has no gaps, every client saw every message of the room in
//! order, and the dead-letter stream is empty — until a webhook receiver
//! refuses one message for good, which then shows up in
//! `GET /api/admin/dead-letters` and re-drives once the receiver accepts it.

mod support_backends;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support_backends::cluster::{Instance, ResumeInfo, WsClient, http, without_repeats};
use support_backends::{MongoServer, RedisServer, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ROOM: &str = "fault";
const ADMIN: &str = "admin-token-for-tests";

/// A webhook receiver: 200 for everything, except bodies containing
/// "poison" while `refuse_poison` is set (422: a permanent failure).
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    refuse_poison: Arc<AtomicBool>,
}

async fn start_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let refuse_poison = Arc::new(AtomicBool::new(true));
    let (b, r) = (bodies.clone(), refuse_poison.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (b, r) = (b.clone(), r.clone());
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    }
                };
                let refuse = body.contains("poison") && r.load(Ordering::SeqCst);
                if !refuse {
                    b.lock().unwrap().push(body);
                }
                let status = if refuse {
                    "422 Unprocessable Entity"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Receiver {
        port,
        bodies,
        refuse_poison,
    }
}

struct SenderReport {
    name: String,
    /// client id → seq named by its ack.
    acked: BTreeMap<String, u64>,
    resumes: usize,
    /// Still connected, so it keeps receiving until the checks.
    client: WsClient,
}

/// Connects to the first live instance from `start`, resuming `info`.
async fn reconnect(live: &Arc<Mutex<Vec<String>>>, start: usize, info: &ResumeInfo) -> WsClient {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = start;
    loop {
        let urls = live.lock().unwrap().clone();
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        match WsClient::connect(url, Some(info)).await {
            Ok(c) if c.resumed => return c,
            // Resume refused for now (a backend is down): try again later.
            Ok(_) | Err(_) => {}
        }
        assert!(Instant::now() < deadline, "could not resume within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sender(
    name: String,
    first: usize,
    live: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    joined: Arc<tokio::sync::Barrier>,
) -> SenderReport {
    let url = live.lock().unwrap()[first].clone();
    let mut client = WsClient::connect(&url, None).await.expect("connect");
    client.join(ROOM, &name).await.expect("join");
    // Everyone is in the room before the first message, so everyone gets all.
    joined.wait().await;
    let mut acked = BTreeMap::new();
    let mut resumes = 0;
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let id = format!("{name}-{n}");
        loop {
            match client
                .chat(
                    ROOM,
                    &id,
                    &format!("{name} says {n}"),
                    Duration::from_secs(3),
                )
                .await
            {
                Ok(Ok(seq)) => {
                    acked.insert(id.clone(), seq);
                    break;
                }
                // Not durable now: resend the same id a moment later.
                Ok(Err(code)) => {
                    assert!(
                        matches!(code.as_str(), "unavailable" | "rate_limited"),
                        "{name}: unexpected error {code}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Connection lost (or no answer): resume elsewhere, resend.
                Err(_) => {
                    let info = client.drop_hard();
                    client = reconnect(&live, first + 1 + resumes, &info).await;
                    resumes += 1;
                }
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    SenderReport {
        name,
        acked,
        resumes,
        client,
    }
}

async fn dead_letters(addr: &str) -> Vec<Value> {
    let (status, body) = http(addr, "GET", "/api/admin/dead-letters", None, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    body["dead_letters"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_chat_survives_instance_kill_redis_restart_and_store_outage() {
    let mut redis = RedisServer::start();
    let mut mongo = MongoServer::start();
    let dir = TempDir::new("fault");
    let receiver = start_receiver().await;
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).unwrap();
    let hook = format!("http://127.0.0.1:{}/hook", receiver.port);
    let extra = [
        "--webhook-url",
        hook.as_str(),
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--queue-backoff",
        "100ms",
        "--queue-max-attempts",
        "3",
        "--queue-claim-idle",
        "2s",
    ];
    let mut a = Instance::start("a", &redis.url(), &mongo.uri(), &dir, &extra);
    let b = Instance::start("b", &redis.url(), &mongo.uri(), &dir, &extra);
    let c = Instance::start("c", &redis.url(), &mongo.uri(), &dir, &extra);
    for i in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(&i.addr, "GET", "/readyz", None, None).await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                i.id,
                i.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A listener on C that never disconnects, and four senders, two on A.
    let mut listener = WsClient::connect(&c.ws_url(), None).await.unwrap();
    listener.join(ROOM, "listener").await.unwrap();
    let live = Arc::new(Mutex::new(vec![a.ws_url(), b.ws_url(), c.ws_url()]));
    let stop = CancellationToken::new();
    let joined = Arc::new(tokio::sync::Barrier::new(4));
    let senders: Vec<_> = [("s0", 0), ("s1", 0), ("s2", 1), ("s3", 2)]
        .into_iter()
        .map(|(name, first)| {
            tokio::spawn(sender(
                name.to_owned(),
                first,
                live.clone(),
                stop.clone(),
                joined.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    // 1. kill -9 instance A: its clients resume on B or C and resend.
    live.lock().unwrap().remove(0);
    a.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. Redis restarts (AOF): the bus reconnects, chat goes on meanwhile.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.start_again();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. MongoDB stops for 20 s: chat is refused with `unavailable`, never acked.
    mongo.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    mongo.start_again();
    tokio::time::sleep(Duration::from_secs(4)).await;

    stop.cancel();
    let mut reports = Vec::new();
    for s in senders {
        reports.push(s.await.expect("sender"));
    }
    // Let the last fan-out and the catch-up sweep land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // On a loaded machine the store may take longer than that to answer
    // again: history is read once B says it is ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&b.addr, "GET", "/readyz", None, None).await.0 != 200 {
        assert!(Instant::now() < deadline, "B not ready again within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acked message is in history exactly once, with its acked seq.
    // History in pages (the API returns at most 1,000 per call).
    let mut history: Vec<Value> = Vec::new();
    loop {
        let after = history.last().and_then(|m| m["seq"].as_u64()).unwrap_or(0);
        let (status, body) = http(
            &b.addr,
            "GET",
            &format!("/api/messages?room={ROOM}&after={after}&limit=1000"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let page = body["messages"].as_array().cloned().unwrap();
        if page.is_empty() {
            break;
        }
        history.extend(page);
    }
    let n = history.len() as u64;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "seq has no gaps");
    let mut ids = HashSet::new();
    for m in &history {
        assert!(
            ids.insert(m["id"].as_str().unwrap().to_owned()),
            "stored twice: {m}"
        );
    }
    let mut total_acked = 0;
    for r in &reports {
        assert!(
            r.acked.len() > 20,
            "{} sent too little to mean anything: {}",
            r.name,
            r.acked.len()
        );
        for (id, seq) in &r.acked {
            let stored = &history[(*seq - 1) as usize];
            assert_eq!(stored["id"], json!(id), "ack of {id} named seq {seq}");
            total_acked += 1;
        }
    }
    assert_eq!(
        total_acked,
        history.len(),
        "every stored message was acked to its sender"
    );
    assert!(
        reports[0].resumes + reports[1].resumes >= 2,
        "the clients of the killed instance resumed elsewhere"
    );

    // The listener never dropped: every message once, in order.
    assert_eq!(
        listener.seqs(ROOM),
        (1..=n).collect::<Vec<u64>>(),
        "listener saw every message once, in order"
    );
    // The senders, after their resumes: every message, in order, none twice
    // (the resume names the last seq the client saw).
    for r in &reports {
        let got: Vec<u64> = r
            .client
            .chats
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c["room"] == ROOM)
            .filter_map(|c| c["seq"].as_u64())
            .collect();
        let (ordered, repeats) = without_repeats(&got);
        if ordered != (1..=n).collect::<Vec<u64>>() {
            // What the instances said about this peer, and about sessions
            // moving between instances, says why its deliveries stopped.
            let logs: String = [&a, &b, &c]
                .iter()
                .flat_map(|i| {
                    i.log_text()
                        .lines()
                        .filter(|l| {
                            l.contains(&r.client.peer)
                                || l.contains(&r.client.session)
                                || l.contains("heartbeat")
                                || l.contains("sessions")
                                || l.contains("gap")
                        })
                        .map(|l| format!("{}: {l}\n", i.id))
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "{} missed or reordered chat: got {} seqs ({:?}..{:?}) of 1..={n}, {} resumes, peer {} session {}\n{logs}",
                r.name,
                ordered.len(),
                ordered.first(),
                ordered.last(),
                r.resumes,
                r.client.peer,
                r.client.session
            );
        }
        eprintln!(
            "{}: {} acked, {} resumes, {} replayed twice",
            r.name,
            r.acked.len(),
            r.resumes,
            repeats
        );
        assert_eq!(repeats, 0, "{}: chat replayed twice after a resume", r.name);
    }

    // Nothing failed for good.
    assert_eq!(dead_letters(&b.addr).await, Vec::<Value>::new());

    // Force a permanent failure: the receiver refuses this one message.
    let (status, body) = http(
        &c.addr,
        "POST",
        "/api/messages",
        Some(&json!({"room": ROOM, "id": "poison-1", "body": "poison pill"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let letter = loop {
        let letters = dead_letters(&b.addr).await;
        if let Some(l) = letters.first() {
            assert_eq!(letters.len(), 1);
            break l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "refused webhook not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["kind"], "chat-webhook");
    assert_eq!(letter["attempts"], 1, "permanent failures are not retried");
    assert!(
        letter["last_error"].as_str().unwrap().contains("422"),
        "{letter}"
    );
    assert_eq!(letter["payload"]["id"], "poison-1");
    let (status, _) = http(&b.addr, "GET", "/api/admin/dead-letters", None, None).await;
    assert_eq!(status, 401, "admin API needs the token");

    // The receiver is fixed; re-drive.
    receiver.refuse_poison.store(false, Ordering::SeqCst);
    let id = letter["id"].as_str().unwrap();
    let (status, body) = http(
        &c.addr,
        "POST",
        &format!("/api/admin/dead-letters/{id}/retry"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.contains("poison-1"))
    {
        assert!(Instant::now() < deadline, "re-driven webhook not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead_letters(&b.addr).await, Vec::<Value>::new());
    let (status, _) = http(
        &c.addr,
        "POST",
        &format!("/api/admin/dead-letters/{id}/retry"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 404, "a re-driven letter is gone");
}
