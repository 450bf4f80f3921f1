//! Three signaling processes on loopback sharing a real Redis and a real
//! MongoDB wire server: peers on different instances join one room,
//! exchange signals and chat in one order, and a client resumes on another
//! instance and gets every message it missed exactly once, in order, plus
//! the signal that waited for it.

mod support_backends;

use std::time::Duration;

use serde_json::json;
use support_backends::cluster::{Instance, WsClient, http};
use support_backends::{MongoServer, RedisServer, TempDir};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_different_instances_share_rooms_signals_chat_and_resume() {
    let redis = RedisServer::start();
    let mongo = MongoServer::start();
    let dir = TempDir::new("cluster");
    let a = Instance::start("a", &redis.url(), &mongo.uri(), &dir, &[]);
    let b = Instance::start("b", &redis.url(), &mongo.uri(), &dir, &[]);
    let c = Instance::start("c", &redis.url(), &mongo.uri(), &dir, &[]);
    for i in [&a, &b, &c] {
        // Ready once Redis and MongoDB answered.
        let body = wait_ready(
            i,
            Duration::from_secs(20),
            Duration::from_millis(100),
            |body| format!("{} not ready: {body}\n{}", i.id, i.log_text()),
        )
        .await;
        assert_eq!(body["store"]["kind"], "mongodb");
        assert_eq!(body["bus"]["kind"], "redis");
    }

    let mut alice = WsClient::connect(&a.ws_url(), None).await.unwrap();
    let mut bob = WsClient::connect(&b.ws_url(), None).await.unwrap();
    let joined = alice.join("r", "Alice").await.unwrap();
    assert_eq!(joined["peers"], json!([]));
    let joined = bob.join("r", "Bob").await.unwrap();
    assert_eq!(
        joined["peers"],
        json!([{"peer": alice.peer, "name": "Alice"}]),
        "presence is shared"
    );
    let seen = alice.recv_type("peer-joined", WAIT).await.unwrap();
    assert_eq!(
        (seen["peer"].as_str(), seen["name"].as_str()),
        (Some(bob.peer.as_str()), Some("Bob"))
    );

    // A signal from instance A to a peer on instance B, and back.
    alice
        .send(&json!({"type":"signal","room":"r","to":bob.peer,"data":{"sdp":"offer-1"}}))
        .await
        .unwrap();
    let s = bob.recv_type("signal", WAIT).await.unwrap();
    assert_eq!(
        (s["from"].as_str(), &s["data"]),
        (Some(alice.peer.as_str()), &json!({"sdp":"offer-1"}))
    );
    bob.send(&json!({"type":"signal","room":"r","to":alice.peer,"data":{"sdp":"answer-1"}}))
        .await
        .unwrap();
    let s = alice.recv_type("signal", WAIT).await.unwrap();
    assert_eq!(s["data"], json!({"sdp":"answer-1"}));

    // Chat from both instances at once: one seq order, seen by both.
    let (mut alice_acks, mut bob_acks) = (Vec::new(), Vec::new());
    for n in 0..10 {
        let (ida, idb) = (format!("a{n}"), format!("b{n}"));
        let (ba, bb) = (format!("from alice {n}"), format!("from bob {n}"));
        let (ra, rb) = tokio::join!(
            alice.chat("r", &ida, &ba, WAIT),
            bob.chat("r", &idb, &bb, WAIT),
        );
        alice_acks.push(ra.unwrap().unwrap());
        bob_acks.push(rb.unwrap().unwrap());
    }
    let mut all: Vec<u64> = alice_acks.iter().chain(&bob_acks).copied().collect();
    all.sort();
    assert_eq!(
        all,
        (1..=20).collect::<Vec<u64>>(),
        "acks name a gap-free seq"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alice.seqs("r"),
        (1..=20).collect::<Vec<u64>>(),
        "alice: every message once, in order"
    );
    assert_eq!(
        bob.seqs("r"),
        (1..=20).collect::<Vec<u64>>(),
        "bob: every message once, in order"
    );

    // Bob's socket drops; meanwhile chat goes on and Alice signals him.
    let old_peer = bob.peer.clone();
    let bob_info = bob.drop_hard();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 10..15 {
        assert_eq!(
            alice
                .chat("r", &format!("a{n}"), "while bob is away", WAIT)
                .await
                .unwrap(),
            Ok(11 + n)
        );
    }
    alice
        .send(&json!({"type":"signal","room":"r","to":old_peer,"data":{"ice":"candidate-2"}}))
        .await
        .unwrap();
    assert!(
        alice
            .recv_type("peer-left", Duration::from_millis(500))
            .await
            .is_err(),
        "within the resume window others see no peer-left"
    );

    // Bob resumes on instance C: same peer, his rooms, the missed chat once
    // and in order, and the signal that waited for him on instance B.
    let mut bob2 = WsClient::connect(&c.ws_url(), Some(&bob_info))
        .await
        .unwrap();
    assert!(bob2.resumed, "resumed on another instance");
    assert_eq!(bob2.peer, old_peer);
    let s = bob2.recv_type("signal", WAIT).await.unwrap();
    assert_eq!(s["data"], json!({"ice":"candidate-2"}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bob2.seqs("r"),
        (1..=25).collect::<Vec<u64>>(),
        "missed chat replayed once, in order"
    );

    // And he is live on C: chat both ways.
    assert_eq!(
        bob2.chat("r", "b-after", "back", WAIT).await.unwrap(),
        Ok(26)
    );
    assert_eq!(
        alice
            .chat("r", "a-after", "welcome back", WAIT)
            .await
            .unwrap(),
        Ok(27)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(alice.seqs("r"), (1..=27).collect::<Vec<u64>>());
    assert_eq!(bob2.seqs("r"), (1..=27).collect::<Vec<u64>>());

    // History is the same from every instance.
    for i in [&a, &b, &c] {
        let (status, body) = http(
            &i.addr,
            "GET",
            "/api/messages?room=r&after=0&limit=100",
            None,
            None,
        )
        .await;
        assert_eq!(status, 200);
        let seqs: Vec<u64> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=27).collect::<Vec<u64>>(), "history on {}", i.id);
    }
    let (status, body) = http(&b.addr, "GET", "/api/rooms/r", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_seq"], 27);
    assert_eq!(body["peers"].as_array().map(Vec::len), Some(2));
    // The autoscaler's load signal is per instance.
    let metrics = reqwest_text(&c.addr, "/metrics").await;
    assert!(
        metrics.contains("videochat_signaling_connections 1"),
        "{metrics}"
    );
    // Where the chat's time went, per stage: A committed and published
    // every one of its ten messages.
    let metrics = reqwest_text(&a.addr, "/metrics").await;
    for stage in ["batch_wait", "store_round_trip", "publish"] {
        let count = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "videochat_signaling_chat_stage_seconds_count{{stage=\"{stage}\"}} "
                ))
            })
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            count.is_some_and(|c| c >= 10.0),
            "{stage}: {count:?}\n{metrics}"
        );
    }
}

/// Presence with expiry and Redis degraded mode: the peers of a killed
/// instance leave their rooms once its heartbeat and their resume window
/// have passed; with Redis down an instance keeps its local rooms working
/// and reports it on `/readyz` (per its policy) and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_instance_peers_leave_and_local_rooms_survive_redis_outage() {
    let mut redis = RedisServer::start();
    let mongo = MongoServer::start();
    let dir = TempDir::new("cluster-degraded");
    let a = Instance::start(
        "a",
        &redis.url(),
        &mongo.uri(),
        &dir,
        &["--resume-window", "1s"],
    );
    let mut b = Instance::start(
        "b",
        &redis.url(),
        &mongo.uri(),
        &dir,
        &["--resume-window", "1s"],
    );
    let mut d = Instance::start(
        "d",
        &redis.url(),
        &mongo.uri(),
        &dir,
        &["--resume-window", "1s"],
    );
    let strict = Instance::start(
        "strict",
        &redis.url(),
        &mongo.uri(),
        &dir,
        &["--resume-window", "1s", "--ready-without-redis", "false"],
    );
    for i in [&a, &b, &d, &strict] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while http(&i.addr, "GET", "/readyz", None, None).await.1["bus"]["up"] != true {
            assert!(std::time::Instant::now() < deadline, "{} not ready", i.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut alice = WsClient::connect(&a.ws_url(), None).await.unwrap();
    let mut carol = WsClient::connect(&a.ws_url(), None).await.unwrap();
    let mut bob = WsClient::connect(&b.ws_url(), None).await.unwrap();
    alice.join("r2", "Alice").await.unwrap();
    carol.join("r2", "Carol").await.unwrap();
    bob.join("r2", "Bob").await.unwrap();
    let mut dave = WsClient::connect(&d.ws_url(), None).await.unwrap();
    dave.join("r2", "Dave").await.unwrap();
    for _ in 0..3 {
        alice.recv_type("peer-joined", WAIT).await.unwrap();
    }

    // kill -9 B: once Bob's resume window (1 s) passes, the others see him leave.
    b.kill();
    // Restarted at once under the same name (a pod keeps its name), so its
    // heartbeat never lapses: the new process releases the old sessions.
    let _b_again = Instance::start(
        "b",
        &redis.url(),
        &mongo.uri(),
        &dir,
        &["--resume-window", "1s"],
    );
    // kill -9 D and it stays away: after its heartbeat lapses (2 s) its
    // sessions get their resume window, then Dave leaves too.
    d.kill();
    let mut gone = Vec::new();
    for _ in 0..2 {
        let left = alice
            .recv_type("peer-left", Duration::from_secs(10))
            .await
            .unwrap();
        gone.push(left["peer"].as_str().unwrap().to_owned());
    }
    gone.sort();
    let mut expected = vec![bob.peer.clone(), dave.peer.clone()];
    expected.sort();
    assert_eq!(gone, expected);
    let (_, room) = http(&a.addr, "GET", "/api/rooms/r2", None, None).await;
    let mut names: Vec<&str> = room["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["Alice", "Carol"]);
    drop((bob, dave));

    // Redis goes away: A stays ready (default policy) and says degraded;
    // the strict instance leaves the load balancer.
    redis.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(&a.addr, "GET", "/readyz", None, None).await;
        if body["bus"]["up"] == false {
            assert_eq!(status, 200, "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A did not notice Redis is down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(&strict.addr, "GET", "/readyz", None, None).await.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "strict instance still ready without Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest_text(&a.addr, "/metrics").await;
    assert!(
        metrics.contains("videochat_signaling_bus_up 0"),
        "{metrics}"
    );

    // The local room keeps working: chat is acked (MongoDB is up) and fanned out.
    let seq = alice
        .chat("r2", "during-outage", "still here", WAIT)
        .await
        .unwrap()
        .unwrap();
    let got = carol.recv_type("chat", WAIT).await.unwrap();
    assert_eq!(
        (got["seq"].as_u64(), got["id"].as_str()),
        (Some(seq), Some("during-outage"))
    );

    // Redis is back: both report healthy again.
    redis.start_again();
    for i in [&a, &strict] {
        wait_ready(
            i,
            Duration::from_secs(15),
            Duration::from_millis(100),
            |body| format!("{} did not recover: {body}", i.id),
        )
        .await;
    }
    assert_eq!(
        alice.chat("r2", "after-outage", "ok", WAIT).await.unwrap(),
        Ok(seq + 1)
    );
}

/// A malformed connection string stops the program at start with one
/// message naming the setting (and never the password); an unreachable
/// Redis or MongoDB does not: the instance waits, unready, and becomes
/// ready once both are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_stop_at_start_and_unreachable_backends_are_awaited() {
    let bin = env!("CARGO_BIN_EXE_videochat-signaling");
    for (flag, value, setting) in [
        (
            "--redis-url",
            "http://app:hunter2@127.0.0.1:6379",
            "VIDEOCHAT_REDIS_URL",
        ),
        (
            "--mongodb-uri",
            "mongo://app:hunter2@127.0.0.1/x",
            "VIDEOCHAT_MONGODB_URI",
        ),
    ] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--no-embedded-turn", flag, value];
        if flag == "--redis-url" {
            args.extend(["--mongodb-uri", "mongodb://127.0.0.1:1/"]);
        }
        let out = std::process::Command::new(bin)
            .args(&args)
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(!stderr.contains("hunter2"), "password logged: {stderr}");
    }
    // Both set as value and as file: refused.
    let dir = TempDir::new("cluster-config");
    let file = dir.path().join("redis-url");
    std::fs::write(&file, "redis://127.0.0.1:1/\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--no-embedded-turn"])
        .args([
            "--redis-url",
            "redis://127.0.0.1:1/",
            "--mongodb-uri",
            "mongodb://127.0.0.1:1/",
        ])
        .arg("--redis-url-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));

    // Neither dependency is up when the instance starts.
    let mut redis = RedisServer::start();
    let mut mongo = MongoServer::start();
    redis.stop();
    mongo.stop();
    let url_file = dir.path().join("redis-url-ok");
    std::fs::write(&url_file, format!("{}\n", redis.url())).unwrap();
    let uri_file = dir.path().join("mongodb-uri");
    std::fs::write(&uri_file, format!("{}\n", mongo.uri())).unwrap();
    let i = Instance::start_with(
        "waiting",
        &dir,
        &[
            "--redis-url-file",
            url_file.to_str().unwrap(),
            "--mongodb-uri-file",
            uri_file.to_str().unwrap(),
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = http(&i.addr, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (body["store"]["up"].as_bool(), body["bus"]["up"].as_bool()),
        (Some(false), Some(false))
    );
    redis.start_again();
    mongo.start_again();
    wait_ready(
        &i,
        Duration::from_secs(20),
        Duration::from_millis(200),
        |body| format!("never became ready: {body}\n{}", i.log_text()),
    )
    .await;
    let mut c = WsClient::connect(&i.ws_url(), None).await.unwrap();
    c.join("late", "Late").await.unwrap();
    assert_eq!(c.chat("late", "x1", "hello", WAIT).await.unwrap(), Ok(1));
}

/// Polls `/readyz` of `i` every `every` until it answers 200 with the bus
/// up and returns that body; after `within`, fails with `failure(last body)`.
async fn wait_ready(
    i: &Instance,
    within: Duration,
    every: Duration,
    failure: impl Fn(&serde_json::Value) -> String,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, body) = http(&i.addr, "GET", "/readyz", None, None).await;
        if status == 200 && body["bus"]["up"] == true {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{}", failure(&body));
        tokio::time::sleep(every).await;
    }
}

async fn reqwest_text(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
