//! kill -9 of the real binary while several senders keep chat commit groups
//! in flight, then a restart on the same data directory: every acked message
//! is stored with the seq its ack named, and every chat message any client
//! was sent is stored exactly as sent (a message is broadcast only once it
//! is durable, so a crash can never take back something others have seen).

mod service;

use std::collections::HashMap;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::*;
use tokio_tungstenite::tungstenite::Message;

const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
const SENDERS_PER_ROOM: usize = 4;
const PER_SENDER: usize = 3000;
/// Acks seen by the clients before the kill.
const KILL_AFTER_ACKS: usize = 1500;

fn spawn(data: &std::path::Path) -> (Child, String) {
    spawn_binary(
        data,
        &[
            "--rate-per-connection",
            "100000",
            "--rate-per-ip",
            "1000000",
            "--connect-rate-per-ip",
            "1000",
        ],
    )
}

/// What one client was told before the server died.
#[derive(Default)]
struct Seen {
    /// Its own messages' acks: client id → seq.
    acks: HashMap<String, u64>,
    /// Every chat frame it was sent, as sent.
    chat: Vec<Value>,
}

/// Reads `stream` until the socket ends, counting acks into `acked`.
async fn read_until_closed(
    mut stream: impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + Unpin,
    acked: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let mut v: Value = serde_json::from_str(&text).expect("server sends JSON");
        match v["type"].as_str() {
            Some("ack") => {
                let id = v["id"].as_str().unwrap().to_owned();
                let seq = v["seq"].as_u64().unwrap();
                assert!(seen.acks.insert(id, seq).is_none(), "one ack per message");
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Some("chat") => {
                // As `history` gives it back.
                v.as_object_mut().unwrap().remove("type");
                seen.chat.push(v);
            }
            Some("error") => panic!("chat refused before the kill: {v}"),
            _ => {}
        }
    }
    seen
}

/// A room's whole history, read from the restarted server.
async fn stored(url: &str, room: &str) -> Vec<Value> {
    let mut c = Client::raw(url).await;
    c.hello(json!({"type":"hello"})).await;
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        c.send(&json!({"type":"history","room":room,"after":after,"limit":1000}))
            .await;
        let page = c.recv_type("history").await;
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            return all;
        }
        all.extend(messages);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_groups_in_flight_loses_no_ack_and_broadcast_nothing_undurable() {
    let data = temp_dir("crash-groups");
    let (mut child, addr) = spawn(&data);
    let url = format!("ws://{addr}/ws");
    let acked = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    // peer id → room, for the senders.
    let mut senders: HashMap<String, &str> = HashMap::new();
    for room in ROOMS {
        // One client that only listens, as other members of a room do.
        let mut observer = Client::raw(&url).await;
        observer.hello(json!({"type":"hello"})).await;
        observer.join(room, "observer").await;
        let (_sink, stream) = observer.ws.split();
        readers.push(tokio::spawn(read_until_closed(stream, acked.clone())));
        for s in 0..SENDERS_PER_ROOM {
            let mut c = Client::raw(&url).await;
            c.hello(json!({"type":"hello"})).await;
            c.join(room, &format!("sender {s}")).await;
            senders.insert(c.peer.clone(), room);
            let (mut sink, stream) = c.ws.split();
            readers.push(tokio::spawn(read_until_closed(stream, acked.clone())));
            let sent = sent.clone();
            let prefix = c.peer.clone();
            // Sends without waiting for acks: the server keeps up to 256 of
            // each connection's messages in flight, so many groups are.
            writers.push(tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let chat = json!({"type":"chat","room":room,"id":format!("{prefix}-{i}"),"body":format!("m{i}")});
                    if sink.send(Message::Text(chat.to_string().into())).await.is_err() {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // The kill comes from a thread of its own, so that it lands as soon as
    // enough acks are in, whatever the runtime is busy with.
    let killer = {
        let acked = acked.clone();
        let sent = sent.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while acked.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "only {} acks",
                    acked.load(Ordering::Relaxed)
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            sent.load(Ordering::Relaxed)
        })
    };
    let sent_at_kill = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut seen = Vec::new();
    for reader in readers {
        seen.push(
            tokio::time::timeout(WAIT, reader)
                .await
                .expect("sockets end with the process")
                .unwrap(),
        );
    }
    let acks: usize = seen.iter().map(|s| s.acks.len()).sum();
    assert!(
        sent_at_kill >= acks + 100,
        "the kill came with messages in flight: {sent_at_kill} sent, {acks} acked"
    );

    let (mut child, addr) = spawn(&data);
    let url = format!("ws://{addr}/ws");
    let mut history: HashMap<&str, Vec<Value>> = HashMap::new();
    for room in ROOMS {
        let messages = stored(&url, room).await;
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=messages.len() as u64).collect::<Vec<_>>(),
            "{room}: gap-free, in order"
        );
        history.insert(room, messages);
    }
    let mut broadcasts = 0;
    for client in &seen {
        for (id, seq) in &client.acks {
            let peer = id.rsplit_once('-').unwrap().0;
            let room = senders[peer];
            let message = history[room]
                .get(*seq as usize - 1)
                .unwrap_or_else(|| panic!("acked {id} (seq {seq}) is lost"));
            assert_eq!(message["id"], id.as_str(), "acked {id} keeps seq {seq}");
            assert_eq!(message["from"], peer);
        }
        for chat in &client.chat {
            broadcasts += 1;
            let room = chat["room"].as_str().unwrap();
            let seq = chat["seq"].as_u64().unwrap();
            let message = history[room]
                .get(seq as usize - 1)
                .unwrap_or_else(|| panic!("{chat} was broadcast but is not stored"));
            assert_eq!(message, chat, "broadcast as stored");
        }
    }
    assert!(broadcasts > 0, "the listeners saw chat before the kill");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}
