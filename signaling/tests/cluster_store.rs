//! The MongoDB store against a real MongoDB wire-protocol server
//! (SecantusDB): gap-free, never-reused `seq` with two store instances
//! racing on one room, idempotent resends, rooms, and behaviour while the
//! server is stopped and after it comes back.

mod support_backends;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support_backends::MongoServer;
use videochat_signaling::SignalingError;
use videochat_signaling::mongo::{MongoConfig, MongoStore};
use videochat_signaling::store::{NewChat, RoomRecord, Store};

fn chat(room: &str, peer: &str, id: &str) -> NewChat {
    NewChat {
        room: room.to_string(),
        peer: peer.to_string(),
        client_id: id.to_string(),
        name: format!("name of {peer}"),
        body: format!("body {id}"),
        ts: "2026-11-21T10:00:00Z".to_string(),
    }
}

async fn store(mongo: &MongoServer) -> Arc<MongoStore> {
    let store = MongoStore::connect(MongoConfig::new(mongo.uri()))
        .await
        .expect("valid uri");
    assert!(store.probe().await, "SecantusDB reachable");
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_allocate_gap_free_seq_and_resends_are_idempotent() {
    let mongo = MongoServer::start();
    // Two stores = two signaling instances sharing one database.
    let a = store(&mongo).await;
    let b = store(&mongo).await;
    let mut tasks = Vec::new();
    for (i, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..15 {
                let id = format!("c-{i}-{n}");
                let first = s
                    .append_chat(chat("r1", &format!("p-{i}"), &id))
                    .await
                    .unwrap();
                assert!(!first.duplicate);
                // Every third message is resent, as a client does after a lost ack.
                if n % 3 == 0 {
                    let again = s
                        .append_chat(chat("r1", &format!("p-{i}"), &id))
                        .await
                        .unwrap();
                    assert!(again.duplicate);
                    assert_eq!(again.message.seq, first.message.seq);
                }
                acked.push((id, first.message.seq));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let history = a.history("r1", 0, 1000).await.unwrap();
    assert_eq!(history.len(), 60);
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=60).collect::<Vec<u64>>(),
        "seq gap-free and ordered"
    );
    let ids: HashSet<&str> = history.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 60, "each message stored once");
    for (id, seq) in &acked {
        let stored = history.iter().find(|m| &m.id == id).unwrap();
        assert_eq!(stored.seq, *seq, "ack named the stored seq");
    }
    assert_eq!(b.last_seq("r1").await.unwrap(), 60);
    assert_eq!(b.history("r1", 58, 10).await.unwrap().len(), 2);
    // The same client id from another peer is another message.
    let other = b.append_chat(chat("r1", "p-other", "c-0-0")).await.unwrap();
    assert_eq!((other.duplicate, other.message.seq), (false, 61));
    // A store that has never seen the room (an instance started later)
    // finds the last seq without a hint and continues after it.
    let cold = store(&mongo).await;
    assert_eq!(cold.last_seq("r1").await.unwrap(), 61);
    let next = cold.append_chat(chat("r1", "p-cold", "c-x")).await.unwrap();
    assert_eq!((next.duplicate, next.message.seq), (false, 62));
    assert_eq!(cold.last_seq("empty-room").await.unwrap(), 0);
    // Rooms are independent.
    assert_eq!(
        a.append_chat(chat("r2", "p-0", "c-0-0"))
            .await
            .unwrap()
            .message
            .seq,
        1
    );
}

#[tokio::test]
async fn rooms_are_created_once() {
    let mongo = MongoServer::start();
    let s = store(&mongo).await;
    let room = RoomRecord {
        id: "standup".into(),
        name: "Stand-up".into(),
        max_peers: 8,
        created_at: "2026-11-21T10:00:00Z".into(),
    };
    assert_eq!(s.create_room(room.clone()).await.unwrap(), room);
    assert!(
        matches!(s.create_room(room.clone()).await, Err(SignalingError::RoomExists(id)) if id == "standup")
    );
    let mut other = room.clone();
    other.max_peers = 2;
    assert_eq!(
        s.ensure_room(other).await.unwrap(),
        room,
        "existing room wins"
    );
    assert_eq!(s.get_room("standup").await.unwrap(), Some(room));
    assert_eq!(s.get_room("nope").await.unwrap(), None);
}

#[tokio::test]
async fn stopped_server_means_unavailable_fast_then_seq_continues() {
    let mut mongo = MongoServer::start();
    let s = store(&mongo).await;
    for n in 1..=3 {
        let a = s
            .append_chat(chat("r", "p", &format!("m{n}")))
            .await
            .unwrap();
        assert_eq!(a.message.seq, n);
    }
    mongo.stop();
    assert!(!s.probe().await);
    assert!(!s.healthy().await);
    // While down: an error, never an ack; once the breaker is open, at once.
    for _ in 0..3 {
        let e = s.append_chat(chat("r", "p", "m4")).await.unwrap_err();
        assert!(matches!(e, SignalingError::StoreUnavailable(_)), "{e}");
    }
    let started = Instant::now();
    let e = s.append_chat(chat("r", "p", "m4")).await.unwrap_err();
    assert!(matches!(e, SignalingError::StoreUnavailable(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "breaker open: no wait per request"
    );

    mongo.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.probe().await {
        assert!(Instant::now() < deadline, "store did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.healthy().await);
    let a = s.append_chat(chat("r", "p", "m4")).await.unwrap();
    assert_eq!(
        (a.duplicate, a.message.seq),
        (false, 4),
        "no gap, no reuse after the outage"
    );
    let seqs: Vec<u64> = s
        .history("r", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn bad_uri_is_a_config_error_without_the_password() {
    let e = MongoStore::connect(MongoConfig::new("mongo://u:hunter2@h/db"))
        .await
        .err()
        .expect("bad scheme rejected");
    let text = e.to_string();
    assert!(text.contains("VIDEOCHAT_MONGODB_URI"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let e = MongoStore::connect(MongoConfig::new("mongodb://u:hunter2@h:notaport/db"))
        .await
        .err()
        .expect("bad port rejected");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
