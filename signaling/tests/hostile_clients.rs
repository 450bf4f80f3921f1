//! Hostile clients against the service on loopback: each test sends one
//! attack past a limit and checks what a user or operator would: the error
//! the attacker gets, that other clients still get their acks, that nothing
//! is lost, and (for the memory attack, against the real binary) that RSS
//! stays bounded. A second client address is 127.0.0.2.

mod service;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use videochat_signaling::auth::{Claims, sign};

const ATTACKER: &str = "127.0.0.2";

fn token(secret: &[u8], room: &str, sub: Option<&str>) -> String {
    sign(
        secret,
        &Claims {
            room: Some(room.into()),
            name: None,
            sub: sub.map(str::to_owned),
            exp: videochat_signaling::time::unix_now() + 600,
        },
    )
}

fn with_auth(tag: &str) -> videochat_signaling::Config {
    let secret_file = temp_dir(tag).join("auth");
    std::fs::write(&secret_file, "hostile-secret\n").unwrap();
    videochat_signaling::Config {
        auth_secret_file: Some(secret_file),
        ..test_config()
    }
}

const SECRET: &[u8] = b"hostile-secret";

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {body}"))
}

// Attack 4: with room tokens on, every REST read of a room needs a token for
// that room, and TURN credentials need a valid token.
#[tokio::test]
async fn rest_reads_need_a_token_for_their_room() {
    let server = start(with_auth("reads")).await;
    let secret_room = token(SECRET, "secret", None);
    let other_room = token(SECRET, "other", None);
    let mut a = Client::raw(&ws_url(&server)).await;
    a.hello(json!({"type":"hello","token":secret_room})).await;
    a.join("secret", "A").await;
    a.chat("secret", "c1", "the plan").await;

    for path in [
        "/api/messages?room=secret",
        "/api/rooms/secret",
        "/api/ice-servers",
    ] {
        let (status, _, body) = http(&server, "GET", path, &[], None).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(json_body(&body)["error"]["code"], "unauthorized");
        assert!(!body.contains("the plan"));
    }
    let other = format!("Bearer {other_room}");
    for path in ["/api/messages?room=secret", "/api/rooms/secret"] {
        let (status, _, body) =
            http(&server, "GET", path, &[("Authorization", &other)], None).await;
        assert_eq!(status, 401, "{path} with another room's token: {body}");
        assert!(
            json_body(&body)["error"]["message"]
                .as_str()
                .unwrap()
                .contains("does not admit"),
            "{body}"
        );
    }
    let (status, _, body) = http(
        &server,
        "GET",
        "/api/ice-servers",
        &[("Authorization", "Bearer not-a-token")],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // The right token reads as before.
    let auth = format!("Bearer {secret_room}");
    let (status, _, body) = http(
        &server,
        "GET",
        "/api/messages?room=secret",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["messages"][0]["body"], "the plan");
    let (status, _, body) = http(
        &server,
        "GET",
        "/api/rooms/secret",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["peers"][0]["peer"], a.peer.as_str());
    let (status, _, _) = http(
        &server,
        "GET",
        "/api/ice-servers",
        &[("Authorization", &other)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

// Attack 5: a resume is checked against the token it presents, room by room.
#[tokio::test]
async fn resume_rechecks_every_room_against_the_presented_token() {
    let server = start(with_auth("resume")).await;
    let vip = token(SECRET, "vip", None);
    let lobby = token(SECRET, "lobby", None);
    let any = token(SECRET, "*", None);
    let mut watcher = Client::raw(&ws_url(&server)).await;
    watcher.hello(json!({"type":"hello","token":any})).await;
    watcher.join("vip", "W").await;
    let mut a = Client::raw(&ws_url(&server)).await;
    a.hello(json!({"type":"hello","token":vip})).await;
    a.join("vip", "A").await;
    watcher.recv_type("peer-joined").await;
    let (peer, session, resume) = (a.peer.clone(), a.session.clone(), a.resume_token.clone());
    a.drop_hard();

    let mut back = Client::raw(&ws_url(&server)).await;
    let w = back
        .hello(json!({"type":"hello","token":lobby,"resume":{"session":session,"token":resume}}))
        .await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["peer"], peer.as_str());
    let e = back.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("unauthorized"), Some("vip")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("vip"), "{e}");
    // The others see it leave; it cannot chat there; the lobby works.
    assert_eq!(watcher.recv_type("peer-left").await["peer"], peer.as_str());
    back.send(&json!({"type":"chat","room":"vip","id":"sneak","body":"x"}))
        .await;
    let e = back.recv_type("error").await;
    assert_eq!(e["code"], "not_in_room", "{e}");
    back.join("lobby", "A").await;
    back.chat("lobby", "hi", "hello lobby").await;
    let auth = format!("Bearer {any}");
    let (_, _, body) = http(
        &server,
        "GET",
        "/api/messages?room=vip",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(
        json_body(&body)["messages"],
        json!([]),
        "nothing stored in vip"
    );
    // A second resume with the vip token does not bring the room back.
    let (session, resume) = (back.session.clone(), back.resume_token.clone());
    back.drop_hard();
    let mut again = Client::raw(&ws_url(&server)).await;
    again
        .hello(json!({"type":"hello","token":vip,"resume":{"session":session,"token":resume}}))
        .await;
    let e = again.recv_type("error").await;
    assert_eq!(e["ref"], "lobby", "{e}");
    again
        .send(&json!({"type":"chat","room":"vip","id":"x2","body":"x"}))
        .await;
    assert_eq!(again.recv_type("error").await["code"], "not_in_room");
    server.shutdown().await;
}

// Attack 8: a page on another site cannot write, however it posts.
#[tokio::test]
async fn cross_site_writes_are_refused_and_store_nothing() {
    let server = start(test_config()).await;
    let own = format!("http://{}", server.local_addr());
    let body = r#"{"room":"r","body":"forged"}"#;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _, text) = http(
            &server,
            "POST",
            "/api/messages",
            &[("Content-Type", content_type), ("Origin", &own)],
            Some(body),
        )
        .await;
        assert_eq!(status, 415, "{content_type}: {text}");
        let v = json_body(&text);
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    for path in ["/api/messages", "/api/rooms"] {
        let (status, _, text) = http(
            &server,
            "POST",
            path,
            &[("Origin", "http://evil.example")],
            Some(r#"{"room":"r","body":"forged","name":"x"}"#),
        )
        .await;
        assert_eq!(status, 403, "{path}: {text}");
        assert_eq!(json_body(&text)["error"]["code"], "forbidden");
    }
    let (_, _, text) = http(&server, "GET", "/api/messages?room=r", &[], None).await;
    assert_eq!(
        json_body(&text)["messages"],
        json!([]),
        "nothing was stored"
    );
    // The service's own page, and clients without an Origin, still write.
    let (status, _, text) = http(
        &server,
        "POST",
        "/api/messages",
        &[("Origin", &own)],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let (status, _, _) = http(&server, "POST", "/api/messages", &[], Some(body)).await;
    assert_eq!(status, 201);
    server.shutdown().await;
}

// Attack 9: the Origin check compares scheme, host and port, and "same
// origin" comes from configuration, not from the request's Host header.
#[tokio::test]
async fn origin_check_compares_scheme_host_and_port_not_the_host_header() {
    let server = start(test_config()).await;
    let url = ws_url(&server);
    let port = server.local_addr().port();
    let refused = [
        format!("evil://127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        "null".to_owned(),
    ];
    for origin in &refused {
        match connect_with_headers(&url, &[("Origin", origin)]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{origin}")
            }
            other => panic!("{origin}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // DNS rebinding: the page's own name in both Origin and Host.
    let rebind = format!("rebind.evil.example:{port}");
    match connect_with_headers(
        &url,
        &[("Origin", &format!("http://{rebind}")), ("Host", &rebind)],
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("rebinding: expected 403, got {:?}", other.map(|_| ())),
    }
    let (status, _, _) = http(
        &server,
        "POST",
        "/api/messages",
        &[("Origin", &format!("http://{rebind}")), ("Host", &rebind)],
        Some(r#"{"room":"r","body":"x"}"#),
    )
    .await;
    assert_eq!(status, 403);
    let mut own = connect_with_headers(&url, &[("Origin", &format!("http://localhost:{port}"))])
        .await
        .expect("the service's own origin");
    own.hello(json!({"type":"hello"})).await;
    server.shutdown().await;

    // Behind a proxy the operator names the public origin.
    let server = start(videochat_signaling::Config {
        public_origins: vec!["https://chat.example.com".into()],
        ..test_config()
    })
    .await;
    let url = ws_url(&server);
    let mut ok = connect_with_headers(&url, &[("Origin", "https://chat.example.com")])
        .await
        .expect("public origin");
    ok.hello(json!({"type":"hello"})).await;
    for origin in ["http://chat.example.com", "https://chat.example.com:8443"] {
        assert!(
            connect_with_headers(&url, &[("Origin", origin)])
                .await
                .is_err(),
            "{origin}"
        );
    }
    server.shutdown().await;
    // A configured origin that does not parse stops the start, naming the setting.
    let err = videochat_signaling::start(videochat_signaling::Config {
        allowed_origins: vec!["app.example".into()],
        ..test_config()
    })
    .await
    .err()
    .expect("bad origin refused")
    .to_string();
    assert!(err.contains("--allowed-origins"), "{err}");
}

// The operator keeps the published address in a mounted file: an origin
// written there later is accepted without a restart, one that is not stays
// refused, and the configured ones keep working beside it.
#[tokio::test]
async fn an_origin_written_later_into_the_origins_file_is_accepted_without_a_restart() {
    let dir = temp_dir("origins");
    let mount = dir.join("mount");
    // As the kubelet swaps a ConfigMap volume: a new ..data directory.
    let version = |n: u32, text: &str| {
        let data = mount.join(format!("..v{n}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("origins"), text).unwrap();
        let link = mount.join(format!("..data_tmp{n}"));
        std::os::unix::fs::symlink(format!("..v{n}"), &link).unwrap();
        std::fs::rename(&link, mount.join("..data")).unwrap();
    };
    // The load balancer has no address yet.
    version(1, "");
    std::os::unix::fs::symlink("..data/origins", mount.join("origins")).unwrap();
    let server = start(videochat_signaling::Config {
        public_origins: vec!["https://chat.example.com".into()],
        public_origins_file: Some(mount.join("origins")),
        ..test_config()
    })
    .await;
    let url = ws_url(&server);
    let published = "http://198.18.0.10:8080";
    assert!(
        connect_with_headers(&url, &[("Origin", published)])
            .await
            .is_err(),
        "not published yet"
    );
    version(2, &format!("{published}\n"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match connect_with_headers(&url, &[("Origin", published)]).await {
            Ok(client) => break client,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the published origin was never accepted: {e}"),
        }
    };
    client.hello(json!({"type":"hello"})).await;
    let mut configured = connect_with_headers(&url, &[("Origin", "https://chat.example.com")])
        .await
        .expect("the configured origin still counts");
    configured.hello(json!({"type":"hello"})).await;
    for foreign in [
        "http://198.18.0.11:8080",
        "http://198.18.0.10:8081",
        "https://198.18.0.10:8080",
        "http://evil.example",
    ] {
        match connect_with_headers(&url, &[("Origin", foreign)]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{foreign}")
            }
            other => panic!("{foreign}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // A bad version keeps the last good list.
    version(3, "not an origin\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    connect_with_headers(&url, &[("Origin", published)])
        .await
        .expect("a bad file keeps the last good origins");
    server.shutdown().await;

    // A file that does not parse at start stops the start, naming the setting.
    let bad = dir.join("bad");
    std::fs::write(&bad, "chat.example.com\n").unwrap();
    let err = videochat_signaling::start(videochat_signaling::Config {
        public_origins_file: Some(bad),
        ..test_config()
    })
    .await
    .err()
    .expect("bad origins file refused")
    .to_string();
    assert!(err.contains("--public-origins-file"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

// Attack 10: an abuser is closed with every error it was sent, then a close
// frame 1008 with a reason, after a finished close handshake (no reset),
// even while it keeps sending.
#[tokio::test]
async fn abuse_close_delivers_the_errors_then_a_close_frame_1008() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 5.0,
        abuse_limit: 20,
        ..test_config()
    })
    .await;
    let mut a = Client::connect(&server).await;
    // Far more than the server reads before it closes: most of it is still
    // unread in the server's socket when the close is sent.
    let ping = Message::Text(json!({"type":"ping"}).to_string().into());
    for _ in 0..3000 {
        a.ws.feed(ping.clone()).await.unwrap();
    }
    a.ws.flush().await.unwrap();
    let mut limited = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, a.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["code"] == "rate_limited" {
                    limited += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("the socket failed instead of closing: {e}"),
            Ok(None) => panic!("the socket ended without a close frame"),
            Err(_) => panic!("no close within {WAIT:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "rate limit");
    assert!(
        limited >= 20,
        "the rate_limited errors arrive first: {limited}"
    );
    // The handshake completes: our close reply goes out, the server reads
    // (and drops) the rest of the flood up to it, and the TCP connection
    // ends with a FIN, not a reset.
    let _ = a.ws.flush().await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = a.ws.get_mut() else {
        panic!("plain TCP expected");
    };
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("the server reset the connection: {e}"),
            Err(_) => panic!("the server kept the socket after the close handshake"),
        }
    }
    server.shutdown().await;
}

// Attack 3: every frame counts against the connection's and the address's
// rate, text or binary, WebSocket pings too, before hello or after.
#[tokio::test]
async fn every_frame_counts_against_the_rate_limits_before_and_after_hello() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 5.0,
        rate_per_ip: 20.0,
        abuse_limit: 30,
        ..test_config()
    })
    .await;
    let mut victim = Client::connect(&server).await;
    victim.join("r", "V").await;

    // Binary frames before hello: refused as rate_limited once over the
    // burst, then closed for abuse.
    let mut binary = connect_from(ATTACKER, &server).await.unwrap();
    for _ in 0..200 {
        binary
            .ws
            .feed(Message::Binary(vec![0u8; 8].into()))
            .await
            .unwrap();
    }
    binary.ws.flush().await.unwrap();
    let mut codes = Vec::new();
    while let Some(v) = binary.try_recv(WAIT).await {
        codes.push(v["code"].as_str().unwrap_or("").to_owned());
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(
        codes.len() <= 10 + 30 + 5,
        "replies are bounded by the rate, not by the flood: {}",
        codes.len()
    );
    assert!(limited >= 30, "{codes:?}");

    // WebSocket pings after hello count too.
    let mut pinger = connect_from(ATTACKER, &server).await.unwrap();
    let w = pinger
        .ws
        .send(Message::Text(json!({"type":"hello"}).to_string().into()))
        .await;
    w.unwrap();
    for _ in 0..200 {
        pinger
            .ws
            .feed(Message::Ping(Default::default()))
            .await
            .unwrap();
    }
    pinger.ws.flush().await.unwrap();
    let mut limited = 0;
    while let Some(v) = pinger.try_recv(WAIT).await {
        if v["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 30, "pings are rate limited: {limited}");

    // The attacker's address is out of budget for a while; others are not.
    assert_eq!(
        victim
            .chat("r", "still-here", "acked during the flood")
            .await,
        1
    );
    let errors = metric(
        &server,
        "videochat_signaling_errors_total{code=\"rate_limited\"}",
    )
    .await;
    assert!(errors >= 60.0, "{errors}");
    server.shutdown().await;
}

// Attack 7: one address cannot hold every connection slot.
#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let server = start(videochat_signaling::Config {
        max_connections: 10,
        max_connections_per_ip: 3,
        ..test_config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from(ATTACKER, &server).await.unwrap();
        c.hello(json!({"type":"hello"})).await;
        held.push(c);
    }
    match connect_from(ATTACKER, &server).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            let v = json_body(&body);
            assert_eq!(v["error"]["code"], "rate_limited");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("per address"),
                "{body}"
            );
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Everyone else still gets in and is served.
    let mut other = Client::connect(&server).await;
    other.join("r", "O").await;
    assert_eq!(other.chat("r", "c", "served").await, 1);
    // A slot given back can be taken again.
    held.pop().unwrap().drop_hard();
    let deadline = tokio::time::Instant::now() + WAIT;
    let _again = loop {
        if let Ok(c) = connect_from(ATTACKER, &server).await {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a freed slot is never reusable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = metric(
        &server,
        "videochat_signaling_refused_total{limit=\"connections_per_ip\"}",
    )
    .await;
    assert!(refused >= 1.0, "{refused}");
    server.shutdown().await;
}

// Attack 3, continued: a client closed for abuse that reconnects at once to
// flood again is held to a rate of new connections per address, so the
// replies it can draw stay bounded; other addresses connect as usual.
#[tokio::test]
async fn reconnecting_to_flood_again_is_held_to_a_connection_rate() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 5.0,
        abuse_limit: 10,
        connect_rate_per_ip: 2.0,
        ..test_config()
    })
    .await;
    let mut replies = 0;
    let mut refused = None;
    // Burst of twice the rate: four connections, then 429.
    for attempt in 0..6 {
        match connect_from(ATTACKER, &server).await {
            Ok(mut c) => {
                for _ in 0..50 {
                    c.ws.feed(Message::Binary(vec![0u8; 8].into()))
                        .await
                        .unwrap();
                }
                c.ws.flush().await.unwrap();
                while c.try_recv(WAIT).await.is_some() {
                    replies += 1;
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                let v = json_body(&body);
                assert_eq!(v["error"]["code"], "rate_limited", "{body}");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("too fast"),
                    "{body}"
                );
                refused = Some(attempt);
                break;
            }
            Err(other) => panic!("connect: {other}"),
        }
    }
    assert_eq!(
        refused,
        Some(4),
        "the fifth connection in a burst is refused"
    );
    // Each connection drew at most its burst and the errors before its
    // abuse close: the replies are bounded by the connection rate.
    assert!(replies <= 4 * (10 + 10 + 1), "{replies} replies");
    // Another address is not held back.
    let mut other = Client::connect(&server).await;
    other.join("r", "O").await;
    assert_eq!(other.chat("r", "c", "served").await, 1);
    let counted = metric(
        &server,
        "videochat_signaling_refused_total{limit=\"connect_rate\"}",
    )
    .await;
    assert!(counted >= 1.0, "{counted}");
    server.shutdown().await;
}

/// Reads until the peer closes; the bytes read (None: reset or still open at `WAIT`).
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Some(String::from_utf8_lossy(&out).into_owned()),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

// Attack 2: half-sent requests neither stay open nor crowd out others.
#[tokio::test]
async fn slowloris_requests_time_out_and_are_capped_per_address() {
    let server = start(videochat_signaling::Config {
        max_handshakes_per_ip: 5,
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        max_connections: 50,
        ..test_config()
    })
    .await;
    let addr = server.local_addr();
    let mut partial = Vec::new();
    for _ in 0..40 {
        let mut s = tcp_from(ATTACKER, addr).await.unwrap();
        // Whether the server has closed it yet or not, the write lands in
        // the socket buffer.
        let _ = s
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await;
        partial.push(s);
    }
    // The service answers others meanwhile.
    let (status, _, _) = http(&server, "GET", "/healthz", &[], None).await;
    assert_eq!(status, 200);
    let mut c = Client::connect(&server).await;
    c.join("r", "C").await;
    assert_eq!(c.chat("r", "c1", "served").await, 1);
    // Every partial request is closed: over the cap at once, the rest when
    // their headers do not arrive in time.
    for s in &mut partial {
        assert!(
            read_until_closed(s).await.is_some(),
            "a half-sent request stayed open"
        );
    }
    let refused = metric(
        &server,
        "videochat_signaling_refused_total{limit=\"handshakes_per_ip\"}",
    )
    .await;
    assert!(
        refused >= 35.0,
        "over the cap are closed at once: {refused}"
    );

    // A body that never finishes: 408, nothing stored.
    let mut s = tcp_from(ATTACKER, addr).await.unwrap();
    s.write_all(
        b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"room\":\"r\",",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut s)
        .await
        .expect("the half-sent body is answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    let (_, _, body) = http(&server, "GET", "/api/messages?room=r", &[], None).await;
    assert_eq!(json_body(&body)["messages"].as_array().unwrap().len(), 1);
    server.shutdown().await;
}

// Attack 6: asking again for TURN credentials does not make a new TURN user,
// so the relay's per-user quota bounds one caller; a real user still gets a
// relay allocation.
#[tokio::test]
async fn turn_credentials_are_tied_to_the_caller() {
    let server = start(videochat_signaling::Config {
        no_embedded_turn: false,
        turn_listen: "127.0.0.1:0".parse().unwrap(),
        turn_relay_ports: (41000, 41100),
        ..test_config()
    })
    .await;
    let mut users = std::collections::BTreeSet::new();
    let mut last = Value::Null;
    for _ in 0..60 {
        let (status, _, body) = http(&server, "GET", "/api/ice-servers", &[], None).await;
        assert_eq!(status, 200);
        last = json_body(&body);
        let user = last["ice_servers"][0]["username"].as_str().unwrap();
        users.insert(
            videochat_turn::credentials::user_of(user)
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(users.len(), 1, "one caller, one TURN user: {users:?}");
    // Another address is another user.
    let mut s = tcp_from(ATTACKER, server.local_addr()).await.unwrap();
    s.write_all(b"GET /api/ice-servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await.unwrap();
    let other = users.iter().next().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains(&format!(":{other}\"")), "{answer}");

    // The anonymous caller's allocations stop at the relay's per-user quota.
    let (udp, _) = server.turn_addrs().unwrap();
    let cred = |ice: &Value| {
        (
            ice["ice_servers"][0]["username"]
                .as_str()
                .unwrap()
                .to_owned(),
            ice["ice_servers"][0]["credential"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let (user, pass) = cred(&last);
    let mut clients = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        let client = turn_client(udp, &user, &pass).await;
        match client.allocate().await {
            Ok(relay) => clients.push((client, relay)),
            Err(e) => {
                refused = Some((n, e.to_string()));
                break;
            }
        }
    }
    let (n, e) = refused.expect("the per-user quota refuses at some point");
    assert!(n <= 10, "at most the per-user quota: {n}");
    assert!(e.contains("486"), "{e}");
    // A user with its own session still gets a relay.
    let mut c = Client::raw(&ws_url(&server)).await;
    let w = c.hello(json!({"type":"hello"})).await;
    let (user, pass) = cred(&w);
    let client = turn_client(udp, &user, &pass).await;
    assert!(client.allocate().await.is_ok(), "a real user is served");
    server.shutdown().await;
}

async fn turn_client(server: std::net::SocketAddr, user: &str, pass: &str) -> turn::client::Client {
    let conn = std::sync::Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind client"),
    );
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.to_owned(),
        password: pass.to_owned(),
        realm: "videochat".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
}

/// The real binary as a child process, and its address.
struct Binary {
    child: std::process::Child,
    addr: String,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let (child, addr) = spawn_binary(&temp_dir("binary"), args);
        Binary { child, addr }
    }

    /// Resident memory now, from /proc/<pid>/status.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    async fn metric(&self, line_start: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Attack 1: a room full of large, escape-heavy messages and a client that
// asks for history without reading. The server's memory stays bounded, the
// client is closed as a slow consumer, others keep their acks, one reply is
// bounded by bytes, and paging still returns every message.
#[tokio::test]
async fn history_flood_from_a_client_that_does_not_read_keeps_memory_bounded() {
    let server = Binary::start(&[
        "--rate-per-connection",
        "100000",
        "--rate-per-ip",
        "100000",
        "--heartbeat",
        "2s",
    ]);
    let url = format!("ws://{}/ws", server.addr);
    let mut filler = Client::raw(&url).await;
    filler.hello(json!({"type":"hello"})).await;
    filler.join("big", "F").await;
    // 8 KiB of control characters is 48 KiB as JSON: refused, with the size said.
    let controls = "\u{1}".repeat(8 * 1024);
    filler
        .send(&json!({"type":"chat","room":"big","id":"huge","body":controls}))
        .await;
    let e = filler.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("huge"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("49152 bytes"),
        "{e}"
    );
    // The largest body that fits: 1,365 control characters (8,190 bytes escaped).
    const STORED: usize = 300;
    let body = "\u{1}".repeat(1365);
    for i in 0..STORED {
        filler
            .send(&json!({"type":"chat","room":"big","id":format!("m{i}"),"body":body}))
            .await;
    }
    let mut acks = 0;
    while acks < STORED {
        let v = filler.recv().await;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "ack" {
            acks += 1;
        }
    }
    let before = server.rss_bytes();

    // The attacker: a few hundred history requests, and it never reads.
    let mut attacker = Client::raw(&url).await;
    attacker.hello(json!({"type":"hello"})).await;
    let request = Message::Text(
        json!({"type":"history","room":"big","after":0,"limit":1000})
            .to_string()
            .into(),
    );
    for _ in 0..300 {
        attacker.ws.feed(request.clone()).await.unwrap();
    }
    attacker.ws.flush().await.unwrap();

    // Meanwhile another client's chat is acked, and memory stays bounded
    // until the server has closed the attacker.
    let mut other = Client::raw(&url).await;
    other.hello(json!({"type":"hello"})).await;
    other.join("calm", "O").await;
    let mut peak = server.rss_bytes();
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        n += 1;
        assert_eq!(other.chat("calm", &format!("c{n}"), "fine").await, n);
        peak = peak.max(server.rss_bytes());
        if server
            .metric("videochat_signaling_slow_consumers_total")
            .await
            >= 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client that does not read was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(server.rss_bytes());
    assert!(
        peak < 100 * 1024 * 1024,
        "RSS {} MB under the history flood (before it: {} MB)",
        peak >> 20,
        before >> 20
    );

    // One REST page is bounded by bytes (1 MiB by default) ...
    let (status, page) = server
        .get("/api/messages?room=big&after=0&limit=1000")
        .await;
    assert_eq!(status, 200);
    assert!(page.len() <= 1024 * 1024 + 64, "{} bytes", page.len());
    // ... and paging returns every message, in order, once.
    let mut after = 0;
    let mut seen = 0;
    loop {
        let (_, page) = server
            .get(&format!("/api/messages?room=big&after={after}&limit=1000"))
            .await;
        let v: Value = serde_json::from_str(&page).unwrap();
        let messages = v["messages"].as_array().unwrap();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            assert_eq!(m["seq"].as_u64().unwrap(), after + 1);
            after += 1;
            seen += 1;
        }
    }
    assert_eq!(seen, STORED);
}

// A slow consumer of room traffic (the outbox overflows from the bus side):
// it is closed, the sender is not slowed, and a resume brings back what the
// slow client missed.
//
// The slow client stays alive (it sends WebSocket pings, it just never
// reads), so the outbox is the only thing that can close it. Without that,
// a client silent for three heartbeats is closed as idle, and on a loaded
// machine the kernel's send buffer takes longer than that to fill: the
// heartbeat here is short so that race cannot hide. The resume window is
// long because the resume is not what is timed here.
#[tokio::test]
async fn a_slow_consumer_is_closed_and_catches_up_by_resuming() {
    let server = start(videochat_signaling::Config {
        rate_per_connection: 100_000.0,
        rate_per_ip: 100_000.0,
        max_chat_bytes: 1024,
        max_reply_bytes: 64 * 1024,
        max_outbox_bytes: 128 * 1024,
        heartbeat: Duration::from_secs(2),
        resume_window: Duration::from_secs(60),
        ..test_config()
    })
    .await;
    // A client that joins, then stops reading, with a small receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.local_addr()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        ws_url(&server),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut slow = Client {
        ws,
        peer: String::new(),
        session: String::new(),
        resume_token: String::new(),
    };
    slow.hello(json!({"type":"hello"})).await;
    slow.join("busy", "Slow").await;
    let mut sender = Client::connect(&server).await;
    sender.join("busy", "S").await;
    let body = "b".repeat(1000);
    let mut sent = 0u64;
    while metric(&server, "videochat_signaling_slow_consumers_total").await < 1.0 {
        for _ in 0..50 {
            sent += 1;
            assert_eq!(sender.chat("busy", &format!("s{sent}"), &body).await, sent);
            // Not idle: a frame from the client, which still reads nothing
            // (once the server has closed it, the send may fail).
            let _ = slow.ws.send(Message::Ping(Default::default())).await;
        }
        assert!(sent < 20_000, "the slow consumer was never closed");
    }
    // Drop the stale socket and resume: the missed chat comes back.
    let (session, resume) = (slow.session.clone(), slow.resume_token.clone());
    slow.drop_hard();
    let mut back = Client::raw(&ws_url(&server)).await;
    let w = back
        .hello(json!({"type":"hello","resume":{"session":session,"token":resume}}))
        .await;
    assert_eq!(w["resumed"], true);
    let joined = back.recv_type("joined").await;
    assert_eq!(joined["last_seq"], sent);
    server.shutdown().await;
}

/// A WebSocket through a reverse proxy at `proxy` that forwards for
/// `forwarded_for`.
async fn connect_through(
    proxy: &str,
    forwarded_for: &str,
    server: &videochat_signaling::server::RunningServer,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tcp_from(proxy, server.local_addr()).await?;
    let mut request = ws_url(server).into_client_request()?;
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await?;
    drop(ws);
    Ok(())
}

fn status_of(result: Result<(), tokio_tungstenite::tungstenite::Error>) -> u16 {
    match result {
        Ok(()) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("connect: {other}"),
    }
}

// Behind an Ingress every client arrives from the controller's address.
// With the controller trusted, the per-address limits key on the client it
// forwards for: one client reconnecting too fast is refused, the others
// behind the same proxy are not; and a client that is not a trusted proxy
// cannot dodge its limit by sending the header itself.
#[tokio::test]
async fn behind_a_trusted_proxy_the_limits_key_on_the_forwarded_client() {
    const PROXY: &str = "127.0.0.5";
    const DIRECT: &str = "127.0.0.6";
    let server = start(videochat_signaling::Config {
        // Burst of one, then one every 2 s: a slow machine cannot refill it
        // within the test.
        connect_rate_per_ip: 0.5,
        max_handshakes_per_ip: 2,
        trusted_proxies: vec!["127.0.0.5/32".parse().unwrap()],
        ..test_config()
    })
    .await;
    // The proxy holds more unfinished requests than one address may: it
    // carries many clients, so they are not closed.
    let mut unfinished = Vec::new();
    for _ in 0..3 {
        let mut tcp = tcp_from(PROXY, server.local_addr()).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        unfinished.push(tcp);
    }
    // One forwarded client: its burst, then 429.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(status_of(
                connect_through(PROXY, "198.51.100.1", &server).await,
            ));
        }
        out
    };
    assert_eq!(statuses, [101, 429], "one client held to its rate");
    // Another client behind the same proxy is not held back; an entry the
    // client wrote itself, left of what the proxy appended, changes nothing.
    assert_eq!(
        status_of(connect_through(PROXY, "198.51.100.2", &server).await),
        101
    );
    assert_eq!(
        status_of(connect_through(PROXY, "198.51.100.2, 198.51.100.1", &server).await),
        429,
        "the proxy's rightmost entry is the client, whatever the client put left of it"
    );
    // Not a trusted proxy: the header is ignored, the limit is the peer's.
    let direct: Vec<u16> = {
        let mut out = Vec::new();
        for i in 0..2 {
            out.push(status_of(
                connect_through(DIRECT, &format!("203.0.113.{i}"), &server).await,
            ));
        }
        out
    };
    assert_eq!(
        direct,
        [101, 429],
        "a forged header does not dodge the limit"
    );
    // The unfinished requests from the proxy were held, not closed.
    for tcp in &mut unfinished {
        tcp.write_all(b"\r\n").await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
            .await
            .expect("answered")
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    server.shutdown().await;
}
