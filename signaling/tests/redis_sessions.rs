//! Session state in a real Redis when an instance's heartbeat lapses
//! without the instance dying (Redis restarted, or was out of reach longer
//! than the instance TTL): another instance's scan detaches its sessions,
//! and once its heartbeat is back it must take them back, or the reaper
//! ends sessions whose clients are still connected (they stay on the
//! socket, acked, but no longer get the room's traffic).

mod support_backends;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support_backends::RedisServer;
use tokio_util::sync::CancellationToken;
use videochat_signaling::redis::sessions::RedisSessions;
use videochat_signaling::redis::{RedisConfig, RedisConnection};
use videochat_signaling::sessions::{ResumeOutcome, SessionState, Sessions};

const WINDOW: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(1);

fn instance(redis: &RedisServer, id: &str) -> std::sync::Arc<RedisSessions> {
    let conn = RedisConnection::connect(RedisConfig::new(redis.url())).expect("valid redis url");
    std::sync::Arc::new(RedisSessions::new(conn, id.into(), WINDOW).with_heartbeat_ttl(TTL))
}

async fn is_detached(redis: &RedisServer, sid: &str) -> bool {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("videochat:sessions:detached")
        .arg(sid)
        .query_async(&mut c)
        .await
        .unwrap();
    score.is_some()
}

async fn poll(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Instances B and C on one Redis, C beating; a session attached on B
/// whose heartbeat then stopped, already detached by C's scan.
struct Lapsed {
    redis: RedisServer,
    b: std::sync::Arc<RedisSessions>,
    c: std::sync::Arc<RedisSessions>,
    c_beat: CancellationToken,
    state: SessionState,
}

async fn lapsed_session(session: &str) -> Lapsed {
    let redis = RedisServer::start();
    let b = instance(&redis, "b");
    let c = instance(&redis, "c");
    let c_beat = CancellationToken::new();
    c.spawn_heartbeat(c_beat.clone());
    let state = SessionState {
        session: session.into(),
        peer: session.replacen("s-", "p-", 1),
        resume_token: "token".into(),
        rooms: HashMap::new(),
        last_activity: 0,
    };
    // Attached on B, whose heartbeat then stops: from C it looks dead.
    let lapsed = CancellationToken::new();
    b.spawn_heartbeat(lapsed.clone());
    b.create(state.clone(), 7).await.unwrap();
    lapsed.cancel();
    poll(
        "C's scan detaches B's session",
        Duration::from_secs(10),
        async || {
            c.take_expired().await.unwrap();
            is_detached(&redis, &state.session).await
        },
    )
    .await;
    Lapsed {
        redis,
        b,
        c,
        c_beat,
        state,
    }
}

#[tokio::test]
async fn sessions_of_an_instance_whose_heartbeat_lapsed_are_taken_back_not_reaped() {
    let Lapsed {
        redis,
        b,
        c,
        c_beat,
        state,
    } = lapsed_session("s-lapsed").await;

    // B was only cut off: its heartbeat comes back, and so does its session.
    let b_beat = CancellationToken::new();
    b.spawn_heartbeat(b_beat.clone());
    poll(
        "B takes its session back",
        WINDOW.saturating_sub(Duration::from_millis(500)),
        async || !is_detached(&redis, &state.session).await,
    )
    .await;

    // Past the resume window nobody reaps it: its client is still on B.
    tokio::time::sleep(WINDOW + Duration::from_millis(500)).await;
    for reaper in [&b, &c] {
        let reaped = reaper.take_expired().await.unwrap();
        assert!(
            reaped.iter().all(|s| s.session != state.session),
            "a session attached on a live instance was reaped"
        );
    }
    // It is attached to B's connection as before: B's connection can still
    // detach it, and the client resume it elsewhere.
    b.detach(&state, 7, WINDOW).await.unwrap();
    assert!(is_detached(&redis, &state.session).await);
    match c.resume(&state.session, "token", 9).await.unwrap() {
        ResumeOutcome::Resumed(s) => assert_eq!(s.peer, state.peer),
        other => panic!("resume after the lapse: {other:?}"),
    }
    b_beat.cancel();
    c_beat.cancel();
}

#[tokio::test]
async fn a_session_that_ended_on_its_instance_during_the_lapse_stays_detached() {
    let Lapsed {
        redis,
        b,
        c,
        c_beat,
        state,
    } = lapsed_session("s-gone").await;
    // Its socket closed on B meanwhile: B's own detach wins over the revival.
    b.detach(&state, 7, WINDOW).await.unwrap();
    let b_beat = CancellationToken::new();
    b.spawn_heartbeat(b_beat.clone());
    tokio::time::sleep(TTL).await;
    assert!(
        is_detached(&redis, &state.session).await,
        "a closed session was attached again"
    );
    // And it is reaped when its window passes.
    poll("the closed session is reaped", WINDOW * 3, async || {
        c.take_expired()
            .await
            .unwrap()
            .iter()
            .any(|s| s.session == state.session)
    })
    .await;
    b_beat.cancel();
    c_beat.cancel();
}
