//! The signaling service over real WebSockets and HTTP on loopback: every
//! message type and error code of the contract, resume with replay,
//! idempotent resends, ordering under concurrent senders, limits, tokens,
//! Origin checks, drain, and the restart of the real binary after kill -9.

mod service;

use std::time::Duration;

use serde_json::{Value, json};
use service::*;
use videochat_signaling::RunningServer;
use videochat_signaling::auth::{Claims, sign};

#[tokio::test]
async fn welcome_has_turn_credentials_for_the_in_process_relay() {
    let dir = temp_dir("turn");
    let secret_file = dir.join("turn-secret");
    std::fs::write(&secret_file, "older\nnewest\n").unwrap();
    let admin_file = dir.join("admin");
    std::fs::write(&admin_file, "adm").unwrap();
    let config = videochat_signaling::Config {
        no_embedded_turn: false,
        turn_listen: "127.0.0.1:0".parse().unwrap(),
        turn_secret_file: Some(secret_file),
        admin_token_file: Some(admin_file),
        ..test_config()
    };
    let server = start(config).await;
    let (udp, tcp) = server.turn_addrs().expect("relay runs");
    let mut c = Client::raw(&ws_url(&server)).await;
    let w = c.hello(json!({"type":"hello"})).await;
    assert_eq!(w["resumed"], false);
    assert!(w["heartbeat_ms"].as_u64().unwrap() > 0);
    let ice = &w["ice_servers"][0];
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{}?transport=udp", udp.port()).as_str()),
        "{urls:?}"
    );
    let tcp = tcp.expect("relay listens on TCP");
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{}?transport=tcp", tcp.port()).as_str()),
        "{urls:?}"
    );
    let user = ice["username"].as_str().unwrap();
    assert_eq!(
        videochat_turn::credentials::user_of(user),
        Some(c.peer.as_str())
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verified = videochat_turn::credentials::verify(
        &[b"newest"],
        user,
        ice["credential"].as_str().unwrap(),
        now,
    );
    assert!(
        matches!(verified, Ok(0)),
        "credentials are made with the newest secret: {verified:?}"
    );
    // The REST call hands out credentials of the same relay.
    let (status, _, body) = http(&server, "GET", "/api/ice-servers?ttl=120", &[], None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ttl"], 120);
    let user = v["ice_servers"][0]["username"].as_str().unwrap();
    let expiry = videochat_turn::credentials::expiry_of(user).unwrap();
    assert!(
        expiry >= now + 110 && expiry <= now + 130,
        "{expiry} vs {now}"
    );
    // The admin drain drains the in-process relay too.
    assert_eq!(server.turn_draining(), Some(false));
    let (status, _, _) = http(
        &server,
        "POST",
        "/api/admin/drain",
        &[("Authorization", "Bearer adm")],
        None,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(server.turn_draining(), Some(true));
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_presence_signals_and_leave() {
    let server = start(test_config()).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let ja = a.join("r1", "Alice").await;
    assert_eq!(ja["peers"], json!([]));
    assert_eq!(ja["last_seq"], 0);
    let jb = b.join("r1", "Bob").await;
    assert_eq!(jb["peers"], json!([{"peer": a.peer, "name": "Alice"}]));
    let pj = a.recv_type("peer-joined").await;
    assert_eq!(
        pj,
        json!({"type":"peer-joined","room":"r1","peer":b.peer,"name":"Bob"})
    );

    let sdp = json!({"sdp": {"type": "offer", "sdp": "v=0..."}});
    a.send(&json!({"type":"signal","room":"r1","to":b.peer,"data":sdp}))
        .await;
    let s = b.recv_type("signal").await;
    assert_eq!(
        s,
        json!({"type":"signal","room":"r1","from":a.peer,"data":sdp})
    );

    a.send(&json!({"type":"signal","room":"r1","to":"p-nobody","data":{}}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(e["code"], "unknown_peer");
    assert_eq!(e["ref"], "p-nobody");

    a.send(&json!({"type":"signal","room":"r2","to":b.peer,"data":{}}))
        .await;
    assert_eq!(a.recv_type("error").await["code"], "not_in_room");
    a.send(&json!({"type":"leave","room":"r2"})).await;
    assert_eq!(a.recv_type("error").await["code"], "not_in_room");
    a.send(&json!({"type":"chat","room":"r2","id":"c1","body":"x"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("not_in_room"), Some("c1"))
    );

    b.send(&json!({"type":"leave","room":"r1"})).await;
    assert_eq!(b.recv_type("left").await["room"], "r1");
    assert_eq!(
        a.recv_type("peer-left").await,
        json!({"type":"peer-left","room":"r1","peer":b.peer})
    );

    // ping/pong, stats/adapt
    a.send(&json!({"type":"ping"})).await;
    assert_eq!(a.recv_type("pong").await, json!({"type":"pong"}));
    a.send(
        &json!({"type":"stats","room":"r1","data":{"rtt_ms":120,"loss":0.08,"bitrate_kbps":300}}),
    )
    .await;
    let adapt = a.recv_type("adapt").await;
    assert_eq!(adapt["room"], "r1");
    assert!(adapt["max_bitrate_kbps"].as_u64().unwrap() < 300);
    assert_eq!(adapt["audio_only"], false);
    a.send(
        &json!({"type":"stats","room":"r1","data":{"rtt_ms":100,"loss":0.4,"bitrate_kbps":120}}),
    )
    .await;
    assert_eq!(a.recv_type("adapt").await["audio_only"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn chat_is_acked_broadcast_stored_and_resends_are_idempotent() {
    let server = start(test_config()).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("room", "Alice").await;
    b.join("room", "Bob").await;
    a.send(&json!({"type":"chat","room":"room","id":"c-123","body":"hello"}))
        .await;
    assert_eq!(
        a.recv_type("ack").await,
        json!({"type":"ack","id":"c-123","seq":1})
    );
    let mine = a.recv_type("chat").await;
    let theirs = b.recv_type("chat").await;
    assert_eq!(mine, theirs);
    assert_eq!(theirs["seq"], 1);
    assert_eq!(theirs["from"], a.peer.as_str());
    assert_eq!(theirs["name"], "Alice");
    assert_eq!(theirs["body"], "hello");
    assert!(theirs["ts"].as_str().unwrap().ends_with('Z'));

    // The same id again: the first seq, and no second broadcast.
    assert_eq!(a.chat("room", "c-123", "hello again").await, 1);
    assert_eq!(a.chat("room", "c-124", "second").await, 2);
    let next = b.recv_type("chat").await;
    assert_eq!(next["seq"], 2, "the resend was not broadcast");
    // A different peer may use the same client id.
    assert_eq!(b.chat("room", "c-123", "bob's").await, 3);

    a.send(&json!({"type":"history","room":"room","after":1,"limit":10}))
        .await;
    let h = a.recv_type("history").await;
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);

    // Joining with last_seq replays what came after it, in order, right after `joined`.
    let mut c = Client::connect(&server).await;
    c.send(&json!({"type":"join","room":"room","name":"Cy","last_seq":1}))
        .await;
    let j = c.recv().await;
    assert_eq!(j["type"], "joined");
    assert_eq!(j["last_seq"], 3);
    assert_eq!(c.recv().await["seq"], 2);
    assert_eq!(c.recv().await["seq"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn each_connection_gets_a_rooms_chat_in_seq_order_under_concurrent_senders() {
    let server = start(test_config()).await;
    const SENDERS: usize = 4;
    const EACH: usize = 60;
    let mut clients = Vec::new();
    for i in 0..SENDERS {
        let mut c = Client::connect(&server).await;
        c.join("busy", &format!("n{i}")).await;
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for k in 0..EACH {
                c.send(&json!({"type":"chat","room":"busy","id":format!("{i}-{k}"),"body":"x"}))
                    .await;
            }
            let mut seen = Vec::new();
            let mut acks = 0;
            while seen.len() < SENDERS * EACH || acks < EACH {
                let v = c.recv().await;
                match v["type"].as_str() {
                    Some("chat") => seen.push(v["seq"].as_u64().unwrap()),
                    Some("ack") => acks += 1,
                    Some("peer-joined") => {}
                    other => panic!("unexpected {other:?}: {v}"),
                }
            }
            seen
        }));
    }
    for t in tasks {
        let seen = t.await.unwrap();
        let expected: Vec<u64> = (1..=(SENDERS * EACH) as u64).collect();
        assert_eq!(seen, expected, "every message once, in seq order");
    }
    server.shutdown().await;
}

/// What a client needs to resume a session whose socket dropped.
struct Dropped {
    peer: String,
    session: String,
    token: String,
}

/// Alice and Bob join room "r", Alice's first chat (seq 1) reaches Bob, then
/// Bob's socket drops without a goodbye. Returns Alice and Bob's resume data.
async fn alice_and_bob_who_dropped_after_one_chat(server: &RunningServer) -> (Client, Dropped) {
    let mut a = Client::connect(server).await;
    let mut b = Client::connect(server).await;
    a.join("r", "Alice").await;
    b.join("r", "Bob").await;
    a.recv_type("peer-joined").await;
    a.chat("r", "m1", "one").await;
    assert_eq!(b.recv_type("chat").await["seq"], 1);
    let dropped = Dropped {
        peer: b.peer.clone(),
        session: b.session.clone(),
        token: b.resume_token.clone(),
    };
    b.drop_hard();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (a, dropped)
}

#[tokio::test]
async fn resume_keeps_peer_and_rooms_and_replays_missed_chat_and_signals() {
    let server = start(videochat_signaling::Config {
        resume_window: Duration::from_secs(3),
        ..test_config()
    })
    .await;
    let (
        mut a,
        Dropped {
            peer: b_peer,
            session: b_session,
            token: b_token,
        },
    ) = alice_and_bob_who_dropped_after_one_chat(&server).await;
    for i in 2..=4 {
        a.chat("r", &format!("m{i}"), "while away").await;
    }
    a.send(&json!({"type":"signal","room":"r","to":b_peer,"data":{"candidate":"c1"}}))
        .await;

    // A wrong token does not resume.
    let mut intruder = Client::raw(&ws_url(&server)).await;
    let w = intruder
        .hello(json!({"type":"hello","resume":{"session":b_session,"token":"wrong"}}))
        .await;
    assert_eq!(w["resumed"], false);
    assert_ne!(w["peer"], b_peer.as_str());

    let mut b2 = Client::raw(&ws_url(&server)).await;
    let w = b2
        .hello(json!({"type":"hello","resume":{"session":b_session,"token":b_token}}))
        .await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["peer"], b_peer.as_str());
    let mut chats = Vec::new();
    let mut signals = 0;
    let mut joined = 0;
    while chats.len() < 3 || signals < 1 || joined < 1 {
        let v = b2.recv().await;
        match v["type"].as_str() {
            Some("chat") => chats.push(v["seq"].as_u64().unwrap()),
            Some("signal") => {
                assert_eq!(v["data"]["candidate"], "c1");
                signals += 1;
            }
            Some("joined") => {
                joined += 1;
                assert_eq!(v["last_seq"], 4);
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    assert_eq!(chats, vec![2, 3, 4], "missed chat once, in order");
    // Live again: new chat arrives, nothing replayed twice.
    a.chat("r", "m5", "back").await;
    assert_eq!(b2.recv_type("chat").await["seq"], 5);
    // Others never saw B leave.
    while let Some(v) = a.try_recv(Duration::from_millis(100)).await {
        assert_ne!(v["type"], "peer-left", "{v}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resume_with_last_seq_replays_only_newer_chat_exactly_once() {
    let server = start(videochat_signaling::Config {
        resume_window: Duration::from_secs(3),
        ..test_config()
    })
    .await;
    let (
        mut a,
        Dropped {
            session: b_session,
            token: b_token,
            ..
        },
    ) = alice_and_bob_who_dropped_after_one_chat(&server).await;
    for i in 2..=5 {
        a.chat("r", &format!("m{i}"), "while away").await;
    }

    // The client says it already has up to 3 (the server saved 1); a room
    // the session is not in is ignored.
    let mut b2 = Client::raw(&ws_url(&server)).await;
    let w = b2
        .hello(
            json!({"type":"hello","resume":{"session":b_session,"token":b_token,
            "last_seq":{"r":3,"elsewhere":99}}}),
        )
        .await;
    assert_eq!(w["resumed"], true);
    let joined = b2.recv_type("joined").await;
    assert_eq!(joined["room"], "r");
    assert_eq!(joined["last_seq"], 5);
    let mut chats = Vec::new();
    while let Some(v) = b2.try_recv(Duration::from_millis(300)).await {
        if v["type"] == "chat" {
            chats.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(chats, vec![4, 5], "only chat after the client's seq, once");
    let (b_session, b_token) = (b2.session.clone(), b2.resume_token.clone());
    b2.drop_hard();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A value past the room's last seq replays nothing and loses nothing.
    let mut b3 = Client::raw(&ws_url(&server)).await;
    let w = b3
        .hello(
            json!({"type":"hello","resume":{"session":b_session,"token":b_token,
            "last_seq":{"r":1000}}}),
        )
        .await;
    assert_eq!(w["resumed"], true);
    assert_eq!(b3.recv_type("joined").await["last_seq"], 5);
    while let Some(v) = b3.try_recv(Duration::from_millis(300)).await {
        assert_ne!(v["type"], "chat", "{v}");
    }
    a.chat("r", "m6", "live").await;
    assert_eq!(b3.recv_type("chat").await["seq"], 6);
    server.shutdown().await;
}

#[tokio::test]
async fn resume_with_a_bad_last_seq_is_a_bad_request() {
    let server = start(videochat_signaling::Config {
        max_rooms_per_connection: 2,
        ..test_config()
    })
    .await;
    let mut b = Client::connect(&server).await;
    b.join("r", "Bob").await;
    let (session, token) = (b.session.clone(), b.resume_token.clone());
    b.drop_hard();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b2 = Client::raw(&ws_url(&server)).await;
    for bad in [
        r#"{"r":-1}"#,
        r#"{"r":"3"}"#,
        r#"{"r":1.5}"#,
        r#"{"r":18446744073709551616}"#,
        r#"{"":1}"#,
        r#"{"r":1,"s":2,"t":3}"#,
        r#"[1]"#,
    ] {
        b2.send_text(&format!(
            r#"{{"type":"hello","resume":{{"session":"{session}","token":"{token}","last_seq":{bad}}}}}"#
        ))
        .await;
        let e = b2.recv().await;
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert_eq!(e["code"], "bad_request", "{bad}: {e}");
    }
    // The old form still resumes.
    let w = b2
        .hello(json!({"type":"hello","resume":{"session":session,"token":token}}))
        .await;
    assert_eq!(w["resumed"], true);
    server.shutdown().await;
}

/// A dropped socket is announced at once as `peer-away` with the time the
/// place is kept; a resume is announced as `peer-joined`, so a page can stop
/// offering to an away peer and start again when it is back.
#[tokio::test]
async fn others_see_peer_away_with_its_window_then_peer_joined_on_resume() {
    let server = start(videochat_signaling::Config {
        resume_window: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let (
        mut a,
        Dropped {
            peer: b_peer,
            session: b_session,
            token: b_token,
        },
    ) = alice_and_bob_who_dropped_after_one_chat(&server).await;
    let away = a.recv_type("peer-away").await;
    assert_eq!(
        away,
        json!({"type":"peer-away","room":"r","peer":b_peer,"resume_within_ms":5000})
    );
    let mut b2 = Client::raw(&ws_url(&server)).await;
    let w = b2
        .hello(json!({"type":"hello","resume":{"session":b_session,"token":b_token}}))
        .await;
    assert_eq!(w["resumed"], true);
    let back = a.recv_type("peer-joined").await;
    assert_eq!(back["peer"], b_peer.as_str());
    assert_eq!(back["room"], "r");
    // A `bye` is a leave, not an absence: no peer-away for it.
    b2.send(&json!({"type":"bye"})).await;
    assert_eq!(a.recv_type("peer-left").await["peer"], b_peer.as_str());
    while let Some(v) = a.try_recv(Duration::from_millis(200)).await {
        assert_ne!(v["type"], "peer-away", "{v}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn peer_left_only_after_the_resume_window_or_at_once_on_bye() {
    let server = start(test_config()).await; // 1 s window
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.join("w", "A").await;
    b.join("w", "B").await;
    c.join("w", "C").await;
    let b_peer = b.peer.clone();
    let dropped = std::time::Instant::now();
    b.drop_hard();
    let left = a.recv_type("peer-left").await;
    assert_eq!(left["peer"], b_peer.as_str());
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "{:?}",
        dropped.elapsed()
    );

    let c_peer = c.peer.clone();
    c.send(&json!({"type":"bye"})).await;
    let at = std::time::Instant::now();
    assert_eq!(a.recv_type("peer-left").await["peer"], c_peer.as_str());
    assert!(at.elapsed() < Duration::from_millis(900));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_messages_get_error_codes_and_the_connection_stays() {
    let server = start(test_config()).await;
    let mut a = Client::connect(&server).await;
    let cases: [(&str, &str); 7] = [
        ("not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"room":"r"}"#, "bad_request"),
        (r#"{"type":42}"#, "bad_request"),
        (r#"{"type":"join"}"#, "bad_request"),
        (
            r#"{"type":"chat","room":"r","id":"","body":"x"}"#,
            "bad_request",
        ),
        (r#"{"type":"teleport"}"#, "unknown_type"),
    ];
    for (frame, code) in cases {
        a.send_text(frame).await;
        let e = a.recv_type("error").await;
        assert_eq!(e["code"], code, "{frame}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    a.send(&json!({"type":"hello"})).await;
    assert_eq!(a.recv_type("error").await["code"], "bad_request");
    // Still open and working.
    a.send(&json!({"type":"ping"})).await;
    assert_eq!(a.recv_type("pong").await["type"], "pong");
    // Before hello, other messages are refused.
    let mut fresh = Client::raw(&ws_url(&server)).await;
    fresh.send(&json!({"type":"join","room":"r"})).await;
    let e = fresh.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("join"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn frame_size_limit_answers_too_large_and_closes_1009() {
    let server = start(videochat_signaling::Config {
        max_frame_bytes: 1024,
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    let big = "x".repeat(1500);
    a.send(&json!({"type":"chat","room":"r","id":"big","body":big}))
        .await;
    assert_eq!(a.recv_type("error").await["code"], "too_large");
    assert_eq!(a.close_code().await, Some(1009));
    // Far over tungstenite's own cap too.
    let mut b = Client::connect(&server).await;
    b.send_text(&"y".repeat(10_000)).await;
    assert_eq!(b.close_code().await, Some(1009));
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_per_connection_then_close_on_abuse() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 5.0,
        abuse_limit: 20,
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    for _ in 0..40 {
        a.send(&json!({"type":"ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match a.ws.next_message().await {
            Some(Ok(v)) if v["type"] == "pong" => pongs += 1,
            Some(Ok(v)) if v["code"] == "rate_limited" => limited += 1,
            Some(Ok(v)) => panic!("unexpected {v}"),
            Some(Err(code)) => break code,
            None => break None,
        }
    };
    // A burst of twice the rate passes, hello included (plus what refills
    // while sending on a slow machine); then 20 refusals in a row close the
    // connection.
    assert!(
        (9..=16).contains(&pongs),
        "burst of twice the rate: {pongs}"
    );
    assert!((20..=26).contains(&limited), "{limited}");
    assert_eq!(code, Some(1008), "closed after repeated abuse");

    // Per IP: all connections of one address share a bucket.
    let server = start(videochat_signaling::Config {
        rate_per_ip: 3.0,
        ..test_config()
    })
    .await;
    let mut x = Client::connect(&server).await;
    let mut y = Client::connect(&server).await;
    for _ in 0..4 {
        x.send(&json!({"type":"ping"})).await;
    }
    for _ in 0..4 {
        y.send(&json!({"type":"ping"})).await;
    }
    let mut errors = 0;
    for c in [&mut x, &mut y] {
        for _ in 0..4 {
            if c.recv().await["code"] == "rate_limited" {
                errors += 1;
            }
        }
    }
    // Hellos count too: the two hellos and 4 of the 8 pings pass (burst of
    // twice the rate), 5 if a token refills while sending on a slow machine.
    assert!((3..=4).contains(&errors), "{errors}");
    // REST writes from the same address share the budget: 429.
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/messages",
        &[],
        Some(r#"{"room":"r","body":"x"}"#),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "rate_limited"
    );
    server.shutdown().await;
}

/// Reads frames as JSON, or the close code.
trait NextMessage {
    async fn next_message(&mut self) -> Option<Result<Value, Option<u16>>>;
}

impl NextMessage
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn next_message(&mut self) -> Option<Result<Value, Option<u16>>> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(WAIT, self.next()).await.ok()?? {
                Ok(Message::Text(t)) => return Some(Ok(serde_json::from_str(&t).unwrap())),
                Ok(Message::Close(f)) => return Some(Err(f.map(|f| f.code.into()))),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

#[tokio::test]
async fn room_and_connection_limits() {
    let server = start(videochat_signaling::Config {
        max_peers_per_room: 2,
        max_rooms_per_connection: 2,
        max_connections: 4,
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.join("small", "A").await;
    b.join("small", "B").await;
    c.send(&json!({"type":"join","room":"small","name":"C"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("room_full"), Some("small"))
    );
    // A room created over REST keeps its own limit.
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/rooms",
        &[],
        Some(r#"{"name":"Duo","max_peers":1}"#),
    )
    .await;
    assert_eq!(status, 201);
    let room: Value = serde_json::from_str(&body).unwrap();
    let id = room["id"].as_str().unwrap();
    c.join(id, "C").await;
    a.send(&json!({"type":"join","room":id,"name":"A"})).await;
    assert_eq!(a.recv_type("error").await["code"], "room_full");
    // Rooms per connection.
    c.join("other", "C").await;
    c.send(&json!({"type":"join","room":"third","name":"C"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("limit"));
    // Connections per instance: the fifth is refused with 503.
    let _d = Client::connect(&server).await;
    match tokio_tungstenite::connect_async(ws_url(&server)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_gate_websocket_rooms_and_rest_writes() {
    let dir = temp_dir("auth");
    let secret_file = dir.join("auth");
    std::fs::write(&secret_file, "jwt-secret\n").unwrap();
    let server = start(videochat_signaling::Config {
        auth_secret_file: Some(secret_file),
        ..test_config()
    })
    .await;
    let exp = videochat_signaling::time::unix_now() + 600;
    let token = sign(
        b"jwt-secret",
        &Claims {
            room: Some("r1".into()),
            name: Some("Token Name".into()),
            sub: None,
            exp,
        },
    );

    // No token: unauthorized, then close 1008.
    let mut anon = Client::raw(&ws_url(&server)).await;
    anon.send(&json!({"type":"hello"})).await;
    assert_eq!(anon.recv_type("error").await["code"], "unauthorized");
    assert_eq!(anon.close_code().await, Some(1008));
    // Expired or forged tokens too.
    let expired = sign(
        b"jwt-secret",
        &Claims {
            room: Some("*".into()),
            name: None,
            sub: None,
            exp: 1,
        },
    );
    let forged = sign(
        b"other",
        &Claims {
            room: Some("*".into()),
            name: None,
            sub: None,
            exp,
        },
    );
    for bad in [expired, forged] {
        let mut c = Client::raw(&ws_url(&server)).await;
        c.send(&json!({"type":"hello","token":bad})).await;
        assert_eq!(c.recv_type("error").await["code"], "unauthorized");
        assert_eq!(c.close_code().await, Some(1008));
    }
    // Token in hello: the name comes from the token; another room is refused.
    let mut a = Client::raw(&ws_url(&server)).await;
    a.hello(json!({"type":"hello","token":token})).await;
    let mut b = Client::raw(&format!("{}?token={token}", ws_url(&server))).await;
    b.hello(json!({"type":"hello"})).await;
    a.join("r1", "ignored").await;
    b.join("r1", "B").await;
    assert_eq!(a.recv_type("peer-joined").await["name"], "Token Name");
    a.send(&json!({"type":"join","room":"r2"})).await;
    assert_eq!(a.recv_type("error").await["code"], "unauthorized");
    assert_eq!(a.close_code().await, Some(1008));

    // REST writes need a bearer token.
    let body = r#"{"room":"r1","body":"from rest"}"#;
    let (status, _, text) = http(&server, "POST", "/api/messages", &[], Some(body)).await;
    assert_eq!(status, 401, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let auth = format!("Bearer {token}");
    let (status, _, text) = http(
        &server,
        "POST",
        "/api/messages",
        &[("Authorization", &auth)],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(b.recv_type("chat").await["body"], "from rest");
    let (status, _, _) = http(&server, "POST", "/api/rooms", &[], Some(r#"{"name":"x"}"#)).await;
    assert_eq!(status, 401);
    // Reads need a token for the room too.
    let (status, _, _) = http(&server, "GET", "/api/messages?room=r1", &[], None).await;
    assert_eq!(status, 401);
    let (status, _, text) = http(
        &server,
        "GET",
        "/api/messages?room=r1",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn origin_checks_and_cors() {
    let server = start(videochat_signaling::Config {
        allowed_origins: vec!["https://app.example".into()],
        ..test_config()
    })
    .await;
    let url = ws_url(&server);
    match connect_with_headers(&url, &[("Origin", "https://evil.example")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut ok = connect_with_headers(&url, &[("Origin", "https://app.example")])
        .await
        .unwrap();
    ok.hello(json!({"type":"hello"})).await;
    let same = format!("http://{}", server.local_addr());
    let mut same = connect_with_headers(&url, &[("Origin", &same)])
        .await
        .unwrap();
    same.hello(json!({"type":"hello"})).await;

    let (status, headers, _) = http(
        &server,
        "OPTIONS",
        "/api/messages",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let (_, headers, _) = http(
        &server,
        "GET",
        "/api/messages?room=r",
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    server.shutdown().await;
}

#[tokio::test]
async fn drain_tells_clients_fails_readiness_and_refuses_new_sessions() {
    let dir = temp_dir("admin");
    let token_file = dir.join("admin");
    std::fs::write(&token_file, "adm1n\n").unwrap();
    let server = start(videochat_signaling::Config {
        admin_token_file: Some(token_file),
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    a.chat("r", "before", "kept").await;
    assert_eq!(http(&server, "GET", "/readyz", &[], None).await.0, 200);
    assert_eq!(
        http(&server, "POST", "/api/admin/drain", &[], None).await.0,
        401
    );
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/admin/drain",
            &[("Authorization", "Bearer wrong")],
            None
        )
        .await
        .0,
        401
    );
    let (status, _, _) = http(
        &server,
        "POST",
        "/api/admin/drain",
        &[("Authorization", "Bearer adm1n")],
        None,
    )
    .await;
    assert_eq!(status, 202);
    let d = a.recv_type("draining").await;
    assert_eq!(d["reconnect_after_ms"], 500);
    let (status, _, body) = http(&server, "GET", "/readyz", &[], None).await;
    assert_eq!(status, 503);
    assert!(body.contains("\"draining\":true"), "{body}");
    assert_eq!(http(&server, "GET", "/healthz", &[], None).await.0, 200);
    match tokio_tungstenite::connect_async(ws_url(&server)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let (_, _, metrics) = http(&server, "GET", "/metrics", &[], None).await;
    assert!(
        metrics.contains("videochat_signaling_draining 1"),
        "{metrics}"
    );
    // Nothing acked is lost by draining.
    let (_, _, body) = http(&server, "GET", "/api/messages?room=r", &[], None).await;
    assert!(body.contains("\"before\""));
    drop(a);
    assert!(server.wait_drained(Duration::from_secs(5)).await);
    server.shutdown().await;
}

#[tokio::test]
async fn rest_calls_of_the_contract() {
    let dir = temp_dir("admin");
    let token_file = dir.join("admin");
    std::fs::write(&token_file, "t0ken").unwrap();
    let server = start(videochat_signaling::Config {
        admin_token_file: Some(token_file),
        max_body_bytes: 512,
        ..test_config()
    })
    .await;
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/rooms",
        &[],
        Some(r#"{"name":"Standup","max_peers":8}"#),
    )
    .await;
    assert_eq!(status, 201);
    let room: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (room["name"].as_str(), room["max_peers"].as_u64()),
        (Some("Standup"), Some(8))
    );
    assert!(room["created_at"].as_str().unwrap().ends_with('Z'));
    let id = room["id"].as_str().unwrap().to_owned();

    let mut a = Client::connect(&server).await;
    a.join(&id, "Ann").await;
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/messages",
        &[],
        Some(&format!(
            r#"{{"room":"{id}","body":"hi","id":"rest-1","name":"Bot"}}"#
        )),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (m["seq"].as_u64(), m["name"].as_str()),
        (Some(1), Some("Bot"))
    );
    assert_eq!(a.recv_type("chat").await["id"], "rest-1");
    // Same id again: same message, not stored twice.
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/messages",
        &[],
        Some(&format!(r#"{{"room":"{id}","body":"hi","id":"rest-1"}}"#)),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["seq"], 1);
    a.chat(&id, "ws-1", "from ws").await;

    let (status, _, body) = http(&server, "GET", &format!("/api/rooms/{id}"), &[], None).await;
    assert_eq!(status, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["last_seq"], 2);
    assert_eq!(r["peers"], json!([{"peer": a.peer, "name": "Ann"}]));
    let (status, _, body) = http(&server, "GET", "/api/rooms/nope", &[], None).await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "not_found"
    );

    let (status, _, body) = http(
        &server,
        "GET",
        &format!("/api/messages?room={id}&after=1&limit=5"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let msgs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(msgs["messages"].as_array().unwrap().len(), 1);
    assert_eq!(msgs["messages"][0]["id"], "ws-1");

    // Bad input: 400 with a code; oversize body: 413.
    let (status, _, body) = http(&server, "POST", "/api/rooms", &[], Some("{")).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "bad_request"
    );
    let (status, _, _) = http(&server, "GET", "/api/messages?after=x", &[], None).await;
    assert_eq!(status, 400);
    let big = format!(r#"{{"room":"r","body":"{}"}}"#, "z".repeat(1000));
    let (status, _, body) = http(&server, "POST", "/api/messages", &[], Some(&big)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "too_large"
    );

    // Dead letters: empty in single-machine mode, admin only.
    assert_eq!(
        http(&server, "GET", "/api/admin/dead-letters", &[], None)
            .await
            .0,
        401
    );
    let auth = [("Authorization", "Bearer t0ken")];
    let (status, _, body) = http(&server, "GET", "/api/admin/dead-letters", &auth, None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"dead_letters":[]}"#));
    assert_eq!(
        http(
            &server,
            "POST",
            "/api/admin/dead-letters/1-0/retry",
            &auth,
            None
        )
        .await
        .0,
        404
    );

    // Probes and metrics.
    assert_eq!(http(&server, "GET", "/healthz", &[], None).await.0, 200);
    let (status, _, body) = http(&server, "GET", "/readyz", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let (_, headers, metrics) = http(&server, "GET", "/metrics", &[], None).await;
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    for line in [
        "videochat_signaling_connections 1",
        "videochat_signaling_messages_in_total{type=\"chat\"} 1",
        "videochat_signaling_messages_out_total{type=\"ack\"} 1",
        "videochat_signaling_ack_latency_seconds_count 1",
        "videochat_signaling_rooms 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn demo_page_is_served_with_csp_and_no_cache() {
    let server = start(test_config()).await;
    let (status, headers, body) = http(&server, "GET", "/", &[], None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    let csp = header(&headers, "content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.contains(&format!("ws://{}", server.local_addr())),
        "{csp}"
    );
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let js = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/web"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.ends_with(".js"));
    if let Some(js) = js {
        let (status, headers, _) = http(&server, "GET", &format!("/{js}"), &[], None).await;
        assert_eq!(status, 200);
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("text/javascript")
        );
    }
    assert_eq!(http(&server, "GET", "/nope.js", &[], None).await.0, 404);
    // The page names its icon, so browsers do not ask for /favicon.ico (a
    // 404 in every console), and the icon is served.
    assert!(body.contains(r#"rel="icon" href="favicon.svg""#), "{body}");
    let (status, headers, _) = http(&server, "GET", "/favicon.svg", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/svg+xml"));
    server.shutdown().await;
}

#[tokio::test]
async fn random_garbage_frames_always_get_an_error_reply() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 10_000.0,
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    let mut rng = rand::thread_rng();
    for i in 0..200 {
        let len = rand::Rng::gen_range(&mut rng, 0..200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| rand::Rng::gen_range(&mut rng, 0x20..0x7f))
            .collect();
        let mut text = String::from_utf8(bytes).unwrap();
        if i % 2 == 0 {
            text = format!(r#"{{"type":"chat","room":{text:?},"id":1}}"#);
        }
        a.send_text(&text).await;
        let v = a.recv().await;
        assert_eq!(v["type"], "error", "{text} -> {v}");
    }
    a.send(&json!({"type":"ping"})).await;
    assert_eq!(a.recv_type("pong").await["type"], "pong");
    server.shutdown().await;
}

/// kill -9 the real binary mid-stream, start it again on the same data dir:
/// every acked message is in history exactly once, in order.
#[tokio::test]
async fn acked_chat_survives_kill_9_and_restart() {
    let data = temp_dir("restart");
    let spawn = || spawn_binary(&data, &["--rate-per-connection", "100000"]);
    let (mut child, addr) = spawn();
    let url = format!("ws://{addr}/ws");
    const SENT: usize = 300;
    let mut acked = Vec::new();
    let mut a = Client::raw(&url).await;
    a.hello(json!({"type":"hello"})).await;
    a.join("durable", "A").await;
    // Pipeline sends so that kill -9 lands while writes are in flight.
    for i in 0..SENT {
        a.send(
            &json!({"type":"chat","room":"durable","id":format!("k{i}"),"body":format!("n{i}")}),
        )
        .await;
    }
    while acked.len() < SENT / 2 {
        let v = a.recv().await;
        if v["type"] == "ack" {
            acked.push((
                v["id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            ));
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks that were already on the wire count too.
    while let Some(v) = a.try_recv(Duration::from_millis(200)).await {
        if v["type"] == "ack" {
            acked.push((
                v["id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            ));
        }
    }
    let (peer, session, token) = (a.peer.clone(), a.session.clone(), a.resume_token.clone());
    drop(a);

    let (mut child, addr) = spawn();
    let mut b = Client::raw(&format!("ws://{addr}/ws")).await;
    let w = b
        .hello(json!({"type":"hello","resume":{"session":session,"token":token}}))
        .await;
    assert_eq!(w["resumed"], true, "the session survives the restart");
    assert_eq!(w["peer"], peer.as_str());
    b.send(&json!({"type":"history","room":"durable","after":0,"limit":1000}))
        .await;
    let h = b.recv_type("history").await;
    let stored: Vec<(String, u64)> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let seqs: Vec<u64> = stored.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    for (id, seq) in &acked {
        assert_eq!(
            stored.iter().filter(|(i, _)| i == id).count(),
            1,
            "{id} exactly once"
        );
        assert!(stored.contains(&(id.clone(), *seq)), "{id} keeps seq {seq}");
    }
    // The client resends everything with the same ids: acked ones keep their
    // seq, nothing is stored twice.
    for i in 0..SENT {
        let id = format!("k{i}");
        let seq = b.chat("durable", &id, "resend").await;
        if let Some((_, first)) = acked.iter().find(|(a, _)| *a == id) {
            assert_eq!(seq, *first, "{id}");
        }
    }
    b.send(&json!({"type":"history","room":"durable","after":0,"limit":1000}))
        .await;
    let h = b.recv_type("history").await;
    let messages = h["messages"].as_array().unwrap();
    assert_eq!(messages.len(), SENT, "every message exactly once");
    assert_eq!(messages.last().unwrap()["seq"], SENT as u64);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// The real embedded store behind a switch that makes writes fail, as a full
/// disk or a lost database would.
struct SwitchableStore {
    inner: videochat_signaling::store::EmbeddedStore,
    mode: std::sync::atomic::AtomicU8,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const CORRUPT: u8 = 2;

#[async_trait::async_trait]
impl videochat_signaling::store::Store for SwitchableStore {
    async fn create_room(
        &self,
        r: videochat_signaling::store::RoomRecord,
    ) -> videochat_signaling::error::Result<videochat_signaling::store::RoomRecord> {
        self.inner.create_room(r).await
    }
    async fn ensure_room(
        &self,
        r: videochat_signaling::store::RoomRecord,
    ) -> videochat_signaling::error::Result<videochat_signaling::store::RoomRecord> {
        self.inner.ensure_room(r).await
    }
    async fn get_room(
        &self,
        id: &str,
    ) -> videochat_signaling::error::Result<Option<videochat_signaling::store::RoomRecord>> {
        self.inner.get_room(id).await
    }
    async fn append_chat(
        &self,
        c: videochat_signaling::store::NewChat,
    ) -> videochat_signaling::error::Result<videochat_signaling::store::Appended> {
        match self.mode.load(std::sync::atomic::Ordering::SeqCst) {
            DOWN => Err(videochat_signaling::SignalingError::StoreUnavailable(
                "disk full".into(),
            )),
            CORRUPT => Err(videochat_signaling::SignalingError::StoreCorrupt(
                "bad page".into(),
            )),
            _ => self.inner.append_chat(c).await,
        }
    }
    async fn history(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> videochat_signaling::error::Result<Vec<videochat_signaling::protocol::ChatMessage>> {
        self.inner.history(room, after, limit).await
    }
    async fn last_seq(&self, room: &str) -> videochat_signaling::error::Result<u64> {
        self.inner.last_seq(room).await
    }
    async fn healthy(&self) -> bool {
        self.mode.load(std::sync::atomic::Ordering::SeqCst) == UP
    }
    fn kind(&self) -> &'static str {
        "switchable"
    }
}

#[tokio::test]
async fn store_failures_answer_unavailable_or_internal_and_never_ack() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let config = test_config();
    let mut backends = videochat_signaling::embedded_backends(&config).unwrap();
    let store = Arc::new(SwitchableStore {
        inner: videochat_signaling::store::EmbeddedStore::open(&temp_dir("switch")).unwrap(),
        mode: std::sync::atomic::AtomicU8::new(UP),
    });
    backends.store = store.clone();
    let server = videochat_signaling::start_with_backends(config, backends)
        .await
        .unwrap();
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    assert_eq!(a.chat("r", "c1", "ok").await, 1);

    store.mode.store(DOWN, Ordering::SeqCst);
    a.send(&json!({"type":"chat","room":"r","id":"c2","body":"later"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("unavailable"), Some("c2"))
    );
    let (status, _, body) = http(&server, "GET", "/readyz", &[], None).await;
    assert_eq!(status, 503, "{body}");
    let (status, _, body) = http(
        &server,
        "POST",
        "/api/messages",
        &[],
        Some(r#"{"room":"r","body":"x"}"#),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "unavailable"
    );

    store.mode.store(CORRUPT, Ordering::SeqCst);
    a.send(&json!({"type":"chat","room":"r","id":"c3","body":"x"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(e["code"], "internal");
    assert_eq!(
        e["message"], "internal error",
        "details are logged, not shown"
    );

    // Back up: the client resends with the same id and it is acked once.
    store.mode.store(UP, Ordering::SeqCst);
    assert_eq!(a.chat("r", "c2", "later").await, 2);
    assert_eq!(a.recv_type("chat").await["seq"], 2);
    let (_, _, metrics) = http(&server, "GET", "/metrics", &[], None).await;
    assert!(
        metrics.contains("videochat_signaling_errors_total{code=\"unavailable\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_three_heartbeats() {
    let server = start(videochat_signaling::Config {
        heartbeat: Duration::from_millis(100),
        resume_window: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("hb", "A").await;
    b.join("hb", "B").await;
    let b_peer = b.peer.clone();
    // From now on B reads nothing, so it answers no WebSocket pings and sends
    // nothing; A keeps talking, so only B is silent.
    let started = std::time::Instant::now();
    let gone = 'wait: loop {
        a.send(&json!({"type":"ping"})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(v) = a.try_recv(Duration::from_millis(1)).await {
            if v["type"] == "peer-left" {
                break 'wait v;
            }
        }
        assert!(started.elapsed() < WAIT, "B was never dropped");
    };
    assert_eq!(gone["peer"], b_peer.as_str());
    // three heartbeats of silence, then the resume window
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    drop(b);
    server.shutdown().await;
}

#[tokio::test]
async fn turn_credentials_follow_a_rewritten_secret_file() {
    let dir = temp_dir("turn-reload");
    let secret_file = dir.join("turn-secret");
    std::fs::write(&secret_file, "first\n").unwrap();
    let server = start(videochat_signaling::Config {
        turn_uris: vec!["turn:turn.example.com:3478?transport=udp".into()],
        turn_secret_file: Some(secret_file.clone()),
        ..test_config()
    })
    .await;
    let now = || videochat_signaling::time::unix_now();
    let verifies_with = |ice: &Value, secret: &[u8]| {
        let ice = &ice["ice_servers"][0];
        videochat_turn::credentials::verify(
            &[secret],
            ice["username"].as_str().unwrap(),
            ice["credential"].as_str().unwrap(),
            now(),
        )
        .is_ok()
    };
    let mut c = Client::raw(&ws_url(&server)).await;
    let w = c.hello(json!({"type":"hello"})).await;
    assert!(verifies_with(&w, b"first"));
    // Rotation: the new secret is appended (newest last); credentials move to it.
    std::fs::write(&secret_file, "first\nsecond\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http(&server, "GET", "/api/ice-servers", &[], None).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        if verifies_with(&v, b"second") {
            assert!(!verifies_with(&v, b"first"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rewritten secret file was never re-read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A file emptied by mistake keeps the last good secret.
    std::fs::write(&secret_file, "\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut d = Client::raw(&ws_url(&server)).await;
    let w = d.hello(json!({"type":"hello"})).await;
    assert!(verifies_with(&w, b"second"), "{w}");
    server.shutdown().await;
}

#[tokio::test]
async fn turn_uris_follow_a_kubelet_swapped_uris_file_without_a_restart() {
    // As the kubelet mounts a ConfigMap: the key is a symlink into ..data,
    // which is swapped atomically to a new directory on change.
    let dir = temp_dir("turn-uris");
    let secret_file = dir.join("turn-secret");
    std::fs::write(&secret_file, "s\n").unwrap();
    let mount = dir.join("mount");
    let version = |n: u32, text: &str| {
        let data = mount.join(format!("..v{n}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("uris"), text).unwrap();
        let link = mount.join(format!("..data_tmp{n}"));
        std::os::unix::fs::symlink(format!("..v{n}"), &link).unwrap();
        std::fs::rename(&link, mount.join("..data")).unwrap();
    };
    // No relay has an address yet.
    version(1, "");
    std::os::unix::fs::symlink("..data/uris", mount.join("uris")).unwrap();
    let server = start(videochat_signaling::Config {
        turn_uris_file: Some(mount.join("uris")),
        turn_secret_file: Some(secret_file),
        ..test_config()
    })
    .await;
    let ice_urls = || async {
        let (status, _, body) = http(&server, "GET", "/api/ice-servers", &[], None).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["ice_servers"][0]["urls"]
            .as_array()
            .map(|urls| {
                urls.iter()
                    .map(|u| u.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(ice_urls().await.is_empty(), "no relay address yet");
    version(
        2,
        "turns:turn.example.com:443?transport=tcp\nturn:203.0.113.1:3478?transport=udp,turn:203.0.113.2:3478?transport=udp\n",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let urls = ice_urls().await;
        if !urls.is_empty() {
            assert_eq!(
                urls,
                vec![
                    "turn:203.0.113.1:3478?transport=udp",
                    "turn:203.0.113.2:3478?transport=udp",
                    "turns:turn.example.com:443?transport=tcp",
                ]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the swapped URIs file was never re-read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A bad version keeps the last good list.
    version(3, "http://evil.example\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ice_urls().await.len(), 3);
    server.shutdown().await;
}
