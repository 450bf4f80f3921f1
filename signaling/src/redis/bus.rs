//! The cross-instance bus on Redis pub/sub.
//!
//! Each instance routes to its own connections with the shared
//! [`LocalRoutes`] (which local connection is which peer, which local peers
//! are in which room) and subscribes to the
//! channel of every room that has local members plus its own instance
//! channel. A room publish is delivered locally at once and published once
//! for the other instances. A signal for a peer on another instance goes to
//! that instance's channel (the peer's location is a Redis key). A peer
//! that resumes on another instance takes its queued signals along: the new
//! instance tells the old one, which forwards them.
//!
//! Pub/sub is at most once and a Redis outage loses what was published
//! meanwhile, so chat is never trusted to it alone: every few seconds and
//! after a reconnect, the newest stored message of each local room is
//! handed to the local connections; their writers drop what they have and
//! fill any gap from the store. Redis down: local rooms keep working.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::RedisConnection;
use crate::bus::{Bus, Delivery, Inbox, LocalRoutes};
use crate::chat::chat_delivery;
use crate::error::{Result, SignalingError};
use crate::store::Store;

/// How long a peer's location outlives its last attach without a refresh.
const LOCATION_TTL_SECS: u64 = 24 * 3600;
/// Locations of attached peers are re-written this often (well within the TTL).
const LOCATION_REFRESH: Duration = Duration::from_secs(3600);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "w")]
enum Wire {
    Chat {
        room: String,
        seq: u64,
        frame: String,
    },
    Frame {
        kind: String,
        frame: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
enum Body {
    Room {
        room: String,
        except: Option<String>,
        d: Wire,
    },
    Peer {
        peer: String,
        d: Wire,
    },
    /// `peer` now lives on instance `to`: forward its queue and let go.
    Takeover {
        peer: String,
        to: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// Origin instance.
    o: String,
    #[serde(flatten)]
    body: Body,
}

/// Maps a frame kind back to the protocol's static names (metrics labels).
fn static_kind(kind: &str) -> &'static str {
    const KINDS: [&str; 13] = [
        "welcome",
        "joined",
        "left",
        "peer-joined",
        "peer-left",
        "signal",
        "chat",
        "ack",
        "history",
        "adapt",
        "pong",
        "draining",
        "error",
    ];
    KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("frame")
}

fn to_wire(d: &Delivery) -> Option<Wire> {
    match d {
        Delivery::Chat { room, seq, frame } => Some(Wire::Chat {
            room: room.to_string(),
            seq: *seq,
            frame: frame.as_str().to_owned(),
        }),
        Delivery::Frame { kind, frame } => Some(Wire::Frame {
            kind: (*kind).to_owned(),
            frame: frame.as_str().to_owned(),
        }),
        // Connection-local markers never cross instances.
        _ => None,
    }
}

fn from_wire(w: Wire) -> Delivery {
    match w {
        Wire::Chat { room, seq, frame } => Delivery::Chat {
            room: Arc::from(room.as_str()),
            seq,
            frame: Utf8Bytes::from(frame),
        },
        Wire::Frame { kind, frame } => Delivery::Frame {
            kind: static_kind(&kind),
            frame: Utf8Bytes::from(frame),
        },
    }
}

pub struct RedisBus {
    instance: String,
    prefix: String,
    conn: ConnectionManager,
    local: Mutex<LocalRoutes>,
    /// Channels this instance wants, re-subscribed after every reconnect.
    channels: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    store: Arc<dyn Store>,
}

impl RedisBus {
    /// Connects the bus's own RESP3 connection (pub/sub pushes arrive on it)
    /// and starts its background tasks: push reader, reconnect probe with
    /// backoff, and the chat catch-up sweep every `sweep_every`.
    pub fn start(
        redis: &RedisConnection,
        instance: String,
        store: Arc<dyn Store>,
        sweep_every: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>> {
        let info = redis.client().get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| SignalingError::config("VIDEOCHAT_REDIS_URL", e.category().to_owned()))?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let cfg = redis.config();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_push_sender(push_tx);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| SignalingError::config("VIDEOCHAT_REDIS_URL", e.category().to_owned()))?;
        let prefix = redis.key("bus");
        let bus = Arc::new(RedisBus {
            channels: Mutex::new(HashSet::from([format!("{prefix}:instance:{instance}")])),
            instance,
            prefix,
            conn,
            local: Mutex::new(LocalRoutes::default()),
            healthy: AtomicBool::new(false),
            store,
        });
        tokio::spawn(bus.clone().read_pushes(push_rx, shutdown.clone()));
        tokio::spawn(bus.clone().keep_connected(sweep_every, shutdown));
        Ok(bus)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalRoutes> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    fn instance_channel(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.prefix)
    }

    fn location_key(&self, peer: &str) -> String {
        format!("{}:peer:{peer}", self.prefix)
    }

    fn is_up(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn mark_down(&self, error: &redis::RedisError) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %error, "redis bus down; local rooms keep working, reconnecting with backoff");
        }
    }

    async fn publish_envelope(&self, channel: String, body: Body) {
        if !self.is_up() {
            // Degraded: no wait per message; the sweep catches chat up later.
            return;
        }
        let payload = match serde_json::to_string(&Envelope {
            o: self.instance.clone(),
            body,
        }) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "bus envelope encoding failed");
                return;
            }
        };
        let mut c = self.conn.clone();
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async::<i64>(&mut c)
            .await
        {
            self.mark_down(&e);
        }
    }

    async fn set_subscribed(&self, channel: String, on: bool) {
        {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            if on {
                channels.insert(channel.clone());
            } else {
                channels.remove(&channel);
            }
        }
        if !self.is_up() {
            // Applied by the resubscription after the reconnect.
            return;
        }
        let mut c = self.conn.clone();
        let r = if on {
            c.subscribe(&channel).await
        } else {
            c.unsubscribe(&channel).await
        };
        if let Err(e) = r {
            self.mark_down(&e);
        }
    }

    async fn read_pushes(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PushInfo>,
        shutdown: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            match push.kind {
                PushKind::Message => {
                    let Some(Value::BulkString(payload)) = push.data.get(1) else {
                        continue;
                    };
                    match serde_json::from_slice::<Envelope>(payload) {
                        Ok(env) => self.on_envelope(env).await,
                        Err(e) => tracing::warn!(error = %e, "undecodable bus message dropped"),
                    }
                }
                PushKind::Disconnection if self.healthy.swap(false, Ordering::Relaxed) => {
                    tracing::warn!("redis bus connection lost; reconnecting");
                }
                _ => {}
            }
        }
    }

    async fn on_envelope(&self, env: Envelope) {
        match env.body {
            Body::Room { room, except, d } => {
                if env.o == self.instance {
                    return; // delivered locally when published
                }
                self.lock()
                    .deliver_room(&room, &from_wire(d), except.as_deref());
            }
            Body::Peer { peer, d } => {
                self.lock().deliver_peer(&peer, from_wire(d));
            }
            Body::Takeover { peer, to } => {
                if to == self.instance {
                    return;
                }
                let (queued, emptied) = self.lock().hand_over(&peer);
                for room in emptied {
                    self.set_subscribed(self.room_channel(&room), false).await;
                }
                for d in queued {
                    if let Some(w) = to_wire(&d) {
                        self.publish_envelope(
                            self.instance_channel(&to),
                            Body::Peer {
                                peer: peer.clone(),
                                d: w,
                            },
                        )
                        .await;
                    }
                }
            }
        }
    }

    /// Reconnects with backoff while down; on every (re)connection
    /// re-subscribes and catches chat up; sweeps chat every `sweep_every`.
    async fn keep_connected(self: Arc<Self>, sweep_every: Duration, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut last_sweep = std::time::Instant::now();
        let mut last_claim = std::time::Instant::now();
        loop {
            let mut c = self.conn.clone();
            let ping = redis::cmd("PING").query_async::<String>(&mut c).await;
            let wait = match ping {
                Ok(_) if self.is_up() => {
                    backoff = Duration::from_millis(100);
                    if last_sweep.elapsed() >= sweep_every {
                        last_sweep = std::time::Instant::now();
                        self.sweep_chat().await;
                    }
                    if last_claim.elapsed() >= LOCATION_REFRESH {
                        last_claim = std::time::Instant::now();
                        self.claim_locations().await;
                    }
                    Duration::from_millis(500)
                }
                Ok(_) => {
                    let channels: Vec<String> = self
                        .channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned()
                        .collect();
                    let mut ok = true;
                    for ch in &channels {
                        if let Err(e) = c.subscribe(ch).await {
                            tracing::debug!(error = %e, "resubscribe failed");
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        self.healthy.store(true, Ordering::Relaxed);
                        // Attaches made while Redis was away did not record
                        // where their peers live.
                        self.claim_locations().await;
                        tracing::info!(channels = channels.len(), "redis bus connected");
                        // Whatever was published while we were away.
                        last_sweep = std::time::Instant::now();
                        self.sweep_chat().await;
                        backoff = Duration::from_millis(100);
                        Duration::from_millis(500)
                    } else {
                        backoff
                    }
                }
                Err(e) => {
                    self.mark_down(&e);
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    w
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Records this instance as the location of every attached local peer.
    async fn claim_locations(&self) {
        let peers = self.lock().attached_peers();
        for chunk in peers.chunks(256) {
            let mut pipe = redis::pipe();
            for peer in chunk {
                pipe.cmd("SET")
                    .arg(self.location_key(peer))
                    .arg(&self.instance)
                    .arg("EX")
                    .arg(LOCATION_TTL_SECS)
                    .ignore();
            }
            let mut c = self.conn.clone();
            if let Err(e) = pipe.query_async::<()>(&mut c).await {
                self.mark_down(&e);
                return;
            }
        }
    }

    /// Hands the newest stored message of each local room to its local
    /// connections; a writer that missed messages fills the gap from the store.
    async fn sweep_chat(&self) {
        let rooms = self.lock().rooms_with_attached_members();
        if rooms.is_empty() || !self.store.healthy().await {
            return;
        }
        for room in rooms {
            let last = match self.store.last_seq(&room).await {
                Ok(0) => continue,
                Ok(n) => n,
                Err(_) => return,
            };
            let Ok(messages) = self.store.history(&room, last - 1, 1).await else {
                return;
            };
            for m in messages {
                self.lock().deliver_room(&room, &chat_delivery(&m), None);
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn attach(&self, peer: &str, inbox: Inbox) -> Result<()> {
        self.lock().attach(peer, inbox);
        if !self.is_up() {
            return Ok(());
        }
        // Claim the peer's location; the previous instance hands over its queue.
        let mut c = self.conn.clone();
        let previous: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.location_key(peer))
            .arg(&self.instance)
            .arg("EX")
            .arg(LOCATION_TTL_SECS)
            .arg("GET")
            .query_async(&mut c)
            .await;
        match previous {
            Ok(Some(old)) if old != self.instance => {
                self.publish_envelope(
                    self.instance_channel(&old),
                    Body::Takeover {
                        peer: peer.to_owned(),
                        to: self.instance.clone(),
                    },
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => self.mark_down(&e),
        }
        Ok(())
    }

    async fn detach(&self, peer: &str, connection: u64) -> Result<()> {
        self.lock().detach(peer, connection);
        Ok(())
    }

    async fn forget(&self, peer: &str) -> Result<()> {
        let emptied = self.lock().forget(peer);
        for room in emptied {
            self.set_subscribed(self.room_channel(&room), false).await;
        }
        if self.is_up() {
            // Only our own claim on the location is dropped.
            let mut c = self.conn.clone();
            let r: redis::RedisResult<i64> = redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .key(self.location_key(peer))
            .arg(&self.instance)
            .invoke_async(&mut c)
            .await;
            if let Err(e) = r {
                self.mark_down(&e);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, room: &str, peer: &str) -> Result<()> {
        let first = self.lock().subscribe(room, peer);
        if first {
            self.set_subscribed(self.room_channel(room), true).await;
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &str, peer: &str) -> Result<()> {
        let emptied = self.lock().unsubscribe(room, peer);
        if emptied {
            self.set_subscribed(self.room_channel(room), false).await;
        }
        Ok(())
    }

    async fn publish(&self, room: &str, delivery: Delivery, except: Option<&str>) -> Result<()> {
        self.lock().deliver_room(room, &delivery, except);
        if let Some(d) = to_wire(&delivery) {
            self.publish_envelope(
                self.room_channel(room),
                Body::Room {
                    room: room.to_owned(),
                    except: except.map(str::to_owned),
                    d,
                },
            )
            .await;
        }
        Ok(())
    }

    async fn send_to_peer(&self, peer: &str, delivery: Delivery) -> Result<()> {
        if self.lock().deliver_peer(peer, delivery.clone()) {
            return Ok(());
        }
        if !self.is_up() {
            return Err(SignalingError::BusUnavailable(
                "redis is down; the peer is on another instance".to_owned(),
            ));
        }
        let mut c = self.conn.clone();
        let location: Option<String> = match redis::cmd("GET")
            .arg(self.location_key(peer))
            .query_async(&mut c)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                self.mark_down(&e);
                return Err(SignalingError::BusUnavailable(e.to_string()));
            }
        };
        match (location, to_wire(&delivery)) {
            (Some(instance), Some(d)) if instance != self.instance => {
                self.publish_envelope(
                    self.instance_channel(&instance),
                    Body::Peer {
                        peer: peer.to_owned(),
                        d,
                    },
                )
                .await;
            }
            // Unknown peer or session over: nothing to deliver, as in-process.
            _ => {}
        }
        Ok(())
    }

    async fn healthy(&self) -> bool {
        self.is_up()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
