//! Scenarios with running pods: the real operator against the simulated
//! cluster whose kubelet runs the real binaries (signaling, TURN,
//! redis-server, SecantusDB) in network namespaces. Each asserts what a
//! platform team would check, as a user would: through the addresses the
//! VideoChatCluster's status publishes. Needs root and iproute2, and the
//! binaries built (`cargo build -p videochat-signaling -p videochat-turn`).

mod support;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::eventually;
use support::operator::OperatorReplica;
use support::running::{
    CLUSTER, NAMESPACE, READY_LIMIT, apply, condition, node_external_addresses, running_cluster,
    wait_ready,
};
use tokio_tungstenite::tungstenite::Message;
use videochat_operator::VideoChatCluster;
use videochat_operator::rollout::health::pod_is_ready;

/// The signaling URL the status publishes.
fn signaling_url(cluster: &VideoChatCluster) -> String {
    cluster
        .status
        .clone()
        .expect("status")
        .endpoints
        .signaling_url
        .expect("signaling URL")
}

/// The highest replica count a component's Deployment is given from now
/// on, as a watch sees it; abort the task when done.
async fn watch_most_replicas(
    client: &Client,
    component: &str,
) -> (
    Arc<std::sync::atomic::AtomicI32>,
    tokio::task::JoinHandle<()>,
) {
    let name = format!("{CLUSTER}-{component}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let listed = deployments
        .list(&ListParams::default())
        .await
        .expect("list deployments");
    let mut changes = deployments
        .watch(
            &WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290),
            &listed.metadata.resource_version.expect("resourceVersion"),
        )
        .await
        .expect("watch the Deployment")
        .boxed();
    let most = Arc::new(std::sync::atomic::AtomicI32::new(1));
    let recorded = most.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(change)) = changes.next().await {
            if let WatchEvent::Added(d) | WatchEvent::Modified(d) = change
                && d.metadata.name.as_deref() == Some(name.as_str())
                && let Some(replicas) = d.spec.replicas
            {
                recorded.fetch_max(replicas, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (most, watcher)
}

/// `hello` then `join` over the WebSocket URL; the welcome message.
async fn hello_and_join(url: &str, room: &str) -> Value {
    // Signaling holds each address to a connection rate (429 above it);
    // every test client comes from this one host, so it backs off and
    // tries again, as the page does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut socket = loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("WebSocket connect in time");
        match attempt {
            Ok((socket, _)) => break socket,
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == http::StatusCode::TOO_MANY_REQUESTS
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("WebSocket connect to {url}: {e}"),
        }
    };
    let next = async |socket: &mut tokio_tungstenite::WebSocketStream<_>| -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a message in time")
                .expect("socket open")
                .expect("a frame");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("JSON");
            }
        }
    };
    socket
        .send(Message::text(json!({"type": "hello"}).to_string()))
        .await
        .expect("send hello");
    let welcome = next(&mut socket).await;
    assert_eq!(
        welcome["type"], "welcome",
        "first answer to hello: {welcome}"
    );
    socket
        .send(Message::text(
            json!({"type": "join", "room": room, "name": "Alice", "last_seq": 0}).to_string(),
        ))
        .await
        .expect("send join");
    let joined = next(&mut socket).await;
    assert_eq!(joined["type"], "joined", "answer to join: {joined}");
    assert_eq!(joined["room"], room);
    welcome
}

/// coturn's client, client-to-client through one relay: (sent, received).
async fn uclient(
    host: &str,
    port: &str,
    tcp: bool,
    username: &str,
    credential: &str,
) -> (u64, u64, String) {
    let mut command = tokio::process::Command::new("turnutils_uclient");
    if tcp {
        command.arg("-t");
    }
    let run = command
        .args([
            "-y", "-u", username, "-w", credential, "-l", "172", "-z", "5", "-m", "2", "-n", "20",
        ])
        .args(["-p", port, host])
        .kill_on_drop(true)
        .output();
    // uclient waits for ever for an answer that does not come.
    let Ok(output) = tokio::time::timeout(Duration::from_secs(30), run).await else {
        return (
            0,
            0,
            format!("turnutils_uclient got no answer from {host}:{port} within 30 s"),
        );
    };
    let output = output.expect("run turnutils_uclient (Debian package coturn)");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let number = |key: &str| -> u64 {
        text.lines()
            .rev()
            .find_map(|l| {
                let rest = &l[l.find(key)? + key.len()..];
                rest.trim_start_matches(['=', ' ', ':'])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (number("tot_send_msgs"), number("tot_recv_msgs"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_runs_every_component_and_clients_use_the_published_endpoints() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    apply(
        &client,
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": 1, "service": {"type": "LoadBalancer"}},
            "turn": {"replicas": 2},
        }),
    )
    .await;
    let (cluster, took) = wait_ready(&sim, &client, READY_LIMIT).await;
    eprintln!("apply to Ready: {took:?}");

    // Every pod runs a real process, Ready, on its own address; the two
    // relays on two nodes, at their node's address (host network).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pods = pods.list(&ListParams::default()).await.expect("pods").items;
    let mut addresses = BTreeSet::new();
    for pod in &pods {
        let status = pod.status.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let container = &status.container_statuses.clone().unwrap_or_default()[0];
        assert!(
            container.ready
                && container
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .is_some(),
            "{name} runs and is ready: {container:?}"
        );
        addresses.insert(status.pod_ip.clone().expect("pod IP"));
    }
    let node_addresses = node_external_addresses(&client).await;
    let relays: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .map(String::as_str)
                == Some("turn")
        })
        .collect();
    assert_eq!(relays.len(), 2, "two relays");
    let relay_nodes: BTreeSet<String> = relays
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(relay_nodes.len(), 2, "the relays are on two nodes");
    // Host-network pods share their node's address; the others each have one.
    assert_eq!(
        addresses.len(),
        pods.len(),
        "pods of the pod network have addresses of their own: {addresses:?}"
    );

    // A user gets the signaling URL and the TURN URIs from the status only.
    let endpoints = cluster.status.clone().expect("status").endpoints;
    let url = endpoints.signaling_url.clone().expect("signaling URL");
    let welcome = hello_and_join(&url, "r1").await;
    let ice = &welcome["ice_servers"][0];
    let (username, credential) = (
        ice["username"].as_str().expect("username"),
        ice["credential"].as_str().expect("credential"),
    );
    let relay_uris: BTreeSet<(String, String, String)> = endpoints
        .turn_uris
        .iter()
        .filter(|u| u.transport == "udp" || u.transport == "tcp")
        .filter_map(|u| {
            let rest = u.uri.strip_prefix("turn:")?.split('?').next()?;
            let (host, port) = rest.rsplit_once(':')?;
            Some((host.to_owned(), port.to_owned(), u.transport.clone()))
        })
        .collect();
    let advertised: BTreeSet<String> = relay_uris.iter().map(|(h, _, _)| h.clone()).collect();
    assert_eq!(
        advertised, node_addresses,
        "one relay address per node, the node's: {:?}",
        endpoints.turn_uris
    );
    assert_eq!(
        relay_uris.len(),
        4,
        "UDP and TCP on each relay: {relay_uris:?}"
    );
    for (host, port, transport) in &relay_uris {
        let tcp = transport == "tcp";
        let (sent, received, text) = uclient(host, port, tcp, username, credential).await;
        assert!(
            sent > 0 && received == sent,
            "relay {host}:{port} over {transport} relays every message ({sent} sent, {received} back):\n{text}"
        );
    }
}

/// The Deployment's pods of one component, with the image each runs.
async fn component_images(client: &Client, component: &str) -> Vec<(String, String, bool)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component={component}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            let ready = pod_is_ready(&p);
            (p.metadata.name.unwrap_or_default(), image, ready)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_cannot_run_is_rolled_back_and_a_good_one_rolls_forward() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let good_image = format!(
        "ghcr.io/videochat-dev/videochat-signaling:{}",
        env!("CARGO_PKG_VERSION")
    );
    // The shortest deadline the CRD allows, and a revision counts as good
    // as soon as all its pods are ready.
    let spec = |image: &str, max_peers: i32| {
        json!({
            "autoscaling": {"enabled": false},
            "rollout": {"progressDeadlineSeconds": 30, "stabilizationSeconds": 0},
            "signaling": {"replicas": 1, "image": image, "service": {"type": "LoadBalancer"},
                "limits": {"maxPeersPerRoom": max_peers}},
            "turn": {"replicas": 1},
        })
    };
    apply(&client, spec(&good_image, 8)).await;
    wait_ready(&sim, &client, READY_LIMIT).await;

    // A tag the registry does not have.
    let bad_image = "ghcr.io/videochat-dev/videochat-signaling:0.0.0-does-not-exist";
    let started = Instant::now();
    apply(&client, spec(bad_image, 8)).await;
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let rolled_back = eventually(
        "the bad revision is rolled back",
        Duration::from_secs(120),
        || async {
            let cluster = clusters.get(CLUSTER).await.ok()?;
            let condition = condition(&cluster, "RolledBack")?;
            (condition["status"] == "True").then_some(condition)
        },
    )
    .await;
    eprintln!(
        "apply of a bad image to RolledBack: {:?}",
        started.elapsed()
    );
    let message = rolled_back["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("signaling") && message.contains("rolled back"),
        "a person reads what was rolled back: {rolled_back}"
    );

    // The good revision serves again, and nothing runs the bad image.
    eventually(
        "signaling runs the last good image, ready",
        Duration::from_secs(60),
        || async {
            let pods = component_images(&client, "signaling").await;
            (!pods.is_empty()
                && pods
                    .iter()
                    .all(|(_, image, ready)| *image == good_image && *ready))
            .then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let events = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    let rollback_event = events.iter().find(|e| {
        e.reason.as_deref() == Some("RolledBack")
            && e.type_.as_deref() == Some("Warning")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CLUSTER)
    });
    assert!(
        rollback_event.is_some(),
        "a Warning event RolledBack on the resource: {:?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.note))
            .collect::<Vec<_>>()
    );
    let endpoints = clusters
        .get(CLUSTER)
        .await
        .expect("cluster")
        .status
        .expect("status")
        .endpoints;
    hello_and_join(&endpoints.signaling_url.expect("URL"), "after-rollback").await;

    // A good change afterwards rolls forward: new pods run the new revision
    // and the rollback condition clears.
    let rolled_back_pods: BTreeSet<String> = component_images(&client, "signaling")
        .await
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    apply(&client, spec(&good_image, 6)).await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let cleared = condition(&cluster, "RolledBack").is_none_or(|c| c["status"] != "True");
    assert!(
        cleared,
        "no RolledBack=True once a good revision is out: {:?}",
        condition(&cluster, "RolledBack")
    );
    eventually(
        "the new revision's pods replace the old ones",
        Duration::from_secs(60),
        || async {
            let pods = component_images(&client, "signaling").await;
            (!pods.is_empty()
                && pods.iter().all(|(name, image, ready)| {
                    !rolled_back_pods.contains(name) && *image == good_image && *ready
                }))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_down_signaling_pod_drains_and_goes_long_before_its_grace_period() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let spec = |replicas: i32| {
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": replicas, "service": {"type": "LoadBalancer"}},
            "turn": {"replicas": 1},
        })
    };
    apply(&client, spec(2)).await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let url = cluster
        .status
        .expect("status")
        .endpoints
        .signaling_url
        .expect("URL");
    let before: BTreeSet<String> = component_images(&client, "signaling")
        .await
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(before.len(), 2);

    // What `kubectl get pods -w` shows from here on.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component=signaling");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods");
    let version = listed
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut changes = pods
        .watch(
            &WatchParams::default().labels(&selector).timeout(150),
            &version,
        )
        .await
        .expect("watch pods")
        .boxed();
    apply(&client, spec(1)).await;
    // The pod chosen for removal turns terminating, then not ready (out of
    // the endpoints while its process gets SIGTERM and drains), then goes.
    let mut terminating: Option<(String, Instant, i64)> = None;
    let mut unready_while_terminating = false;
    let deadline = Instant::now() + Duration::from_secs(150);
    let gone_after = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = tokio::time::timeout(left, changes.next())
            .await
            .expect("a signaling pod is removed in time")
            .expect("the watch goes on")
            .expect("a watch event");
        match change {
            WatchEvent::Modified(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if terminating.is_none() {
                    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                    terminating = Some((name.clone(), Instant::now(), grace));
                }
                let ready = pod_is_ready(&pod);
                unready_while_terminating |= !ready;
            }
            WatchEvent::Deleted(pod) => {
                let name = pod.metadata.name.unwrap_or_default();
                let (leaving, since, _) = terminating
                    .clone()
                    .expect("the pod was terminating before it went");
                assert_eq!(name, leaving, "the terminating pod is the one that went");
                break since.elapsed();
            }
            _ => {}
        }
    };
    let (_, _, grace) = terminating.expect("a pod was terminating");
    eprintln!("scale-down: pod removed {gone_after:?} after it began terminating (grace {grace}s)");
    assert!(
        grace >= 60,
        "signaling gets a long grace period for calls to move ({grace}s)"
    );
    assert!(
        unready_while_terminating,
        "the pod reports not ready while it drains"
    );
    // With no call on it, it drains at once and its process exits: the pod
    // goes after seconds, not at the end of the grace period.
    assert!(
        gone_after < Duration::from_secs(grace as u64 / 2),
        "an empty pod goes after its drain, not at the end of its {grace}s grace period ({gone_after:?})"
    );
    // The one left serves.
    hello_and_join(&url, "after-scale-down").await;
    let left = component_images(&client, "signaling").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].2, "the remaining pod is ready");
}

/// The operator's TURN Secret: its secrets, newest last, and when each was
/// added (the operator's `videochat.dev/secret-created-at` annotation).
async fn turn_secrets(client: &Client) -> (Vec<String>, Vec<Timestamp>) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let Ok(secret) = secrets.get(&format!("{CLUSTER}-turn-secret")).await else {
        return (Vec::new(), Vec::new());
    };
    let file = secret
        .data
        .as_ref()
        .and_then(|d| d.get("turn-secret"))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default();
    let lines = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let created = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("videochat.dev/secret-created-at"))
        .map(|text| {
            text.split(',')
                .map(|t| t.trim().parse().expect("an RFC 3339 creation time"))
                .collect()
        })
        .unwrap_or_default();
    (lines, created)
}

/// The TURN credential of a `welcome`: (username, password).
fn welcome_credential(welcome: &Value) -> (String, String) {
    let ice = &welcome["ice_servers"][0];
    (
        ice["username"].as_str().expect("username").to_owned(),
        ice["credential"].as_str().expect("credential").to_owned(),
    )
}

/// Whether `credential` was signed with `secret` (TURN REST API: the
/// password is HMAC-SHA1 of the username).
fn signed_with(credential: &(String, String), secret: &str) -> bool {
    videochat_turn::credentials::password(secret.as_bytes(), &credential.0) == credential.1
}

/// A `turn` crate client of the relay at `server` holding one allocation.
struct Allocation {
    /// The relay's address (a published TURN URI's).
    server: SocketAddr,
    client: turn::client::Client,
    relayed: Box<dyn webrtc_util::Conn + Send + Sync>,
}

impl Allocation {
    async fn make(server: SocketAddr, credential: &(String, String)) -> Result<Self, String> {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .map_err(|e| e.to_string())?;
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username: credential.0.clone(),
            password: credential.1.clone(),
            realm: "videochat".into(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(socket),
            vnet: None,
        })
        .await
        .map_err(|e| format!("client: {e}"))?;
        client.listen().await.map_err(|e| format!("listen: {e}"))?;
        let relayed = tokio::time::timeout(Duration::from_secs(10), client.allocate())
            .await
            .map_err(|_| format!("no answer to Allocate from {server} within 10 s"))?
            .map_err(|e| format!("Allocate on {server}: {e}"))?;
        Ok(Self {
            server,
            client,
            relayed: Box::new(relayed),
        })
    }

    fn address(&self) -> SocketAddr {
        self.relayed.local_addr().expect("relayed address")
    }

    /// Sends `payload` to `peer`'s relayed address (a CreatePermission,
    /// authenticated with this allocation's credential, comes first when
    /// the peer is new) and waits for it there.
    async fn send_to(&self, peer: &Allocation, payload: &[u8]) -> Result<(), String> {
        let to = peer.address();
        self.relayed
            .send_to(payload, to)
            .await
            .map_err(|e| format!("send from {} to {to}: {e}", self.address()))?;
        let mut buffer = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, from) = tokio::time::timeout(left, peer.relayed.recv_from(&mut buffer))
                .await
                .map_err(|_| format!("{to} got nothing from {} within 5 s", self.address()))?
                .map_err(|e| format!("receive on {to}: {e}"))?;
            if from == self.address() && &buffer[..n] == payload {
                return Ok(());
            }
        }
    }

    /// Data both ways between two allocations. The first packet opens the
    /// way back (the receiving side has no permission for it yet).
    async fn exchange(&self, peer: &Allocation) -> Result<(), String> {
        peer.relayed
            .send_to(b"open", self.address())
            .await
            .map_err(|e| format!("permission from {}: {e}", peer.address()))?;
        self.send_to(peer, b"there").await?;
        peer.send_to(self, b"back").await
    }

    async fn close(self) {
        let _ = self.relayed.close().await;
        let _ = self.client.close().await;
    }
}

/// The relay's UDP address from the status's TURN URIs.
fn udp_relay(cluster: &VideoChatCluster) -> SocketAddr {
    let endpoints = cluster.status.clone().expect("status").endpoints;
    endpoints
        .turn_uris
        .iter()
        .filter(|u| u.transport == "udp")
        .find_map(|u| {
            let rest = u.uri.strip_prefix("turn:")?.split('?').next()?;
            rest.parse().ok()
        })
        .unwrap_or_else(|| panic!("a UDP TURN URI: {:?}", endpoints.turn_uris))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_secret_rotates_on_time_and_allocations_with_old_credentials_keep_relaying() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    // 60 s is the shortest interval the CRD allows.
    let interval = 60;
    apply(
        &client,
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": 1, "service": {"type": "LoadBalancer"}},
            "turn": {"replicas": 1, "secretRotation": {"interval": format!("{interval}s")}},
        }),
    )
    .await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let url = signaling_url(&cluster);
    let relay = udp_relay(&cluster);

    // Credentials from before the rotation, and two allocations made with them.
    let old = welcome_credential(&hello_and_join(&url, "before").await);
    let (secrets, created) = turn_secrets(&client).await;
    assert_eq!(
        (secrets.len(), created.len()),
        (1, 1),
        "one secret before the first rotation is due (Ready took longer than {interval}s?)"
    );
    let first_created = created[0];
    assert!(
        signed_with(&old, &secrets[0]),
        "welcome's credential is signed with the only secret"
    );
    let held = Allocation::make(relay, &old).await.expect("allocate");
    let held_peer = Allocation::make(relay, &old).await.expect("allocate");
    held.exchange(&held_peer)
        .await
        .expect("relaying between allocations made with the credentials of the first secret");

    // The rotation: a second secret, appended, the first kept.
    let (secrets, created) = eventually(
        "a second TURN secret",
        Duration::from_secs(interval + 60),
        || async {
            let (secrets, created) = turn_secrets(&client).await;
            (secrets.len() >= 2).then_some((secrets, created))
        },
    )
    .await;
    let observed_at = Timestamp::now();
    let (first, second) = (secrets[0].clone(), secrets[1].clone());
    assert_ne!(first, second, "the new secret differs");
    assert_eq!(created[0], first_created, "the first secret keeps its time");
    let late = created[1].as_second() - first_created.as_second() - interval as i64;
    eprintln!("secret rotated {late}s after it was due");
    // Due `interval` after the first; the operator requeues for that moment.
    let on_time = 0..=15;
    assert!(
        on_time.contains(&late),
        "the rotation happened {late}s after its due time (added {}, first {first_created})",
        created[1]
    );
    assert!(
        observed_at.as_second() - first_created.as_second() <= interval as i64 + 20,
        "the new secret was in the Secret by its due time (seen {observed_at})"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let rotated = eventually("a SecretRotated Event", Duration::from_secs(10), || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretRotated"))
    })
    .await;
    let event_time = rotated
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or(rotated.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .expect("the Event's time");
    let event_late = event_time.as_second() - first_created.as_second() - interval as i64;
    assert!(
        on_time.contains(&event_late),
        "the SecretRotated Event ({:?}) is {event_late}s after the due time",
        rotated.note
    );
    assert_eq!(
        rotated.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some(CLUSTER),
        "the Event is on the resource"
    );

    // Signaling signs with the new secret once its mounted file changes.
    let asked = std::sync::atomic::AtomicU32::new(0);
    let new = eventually(
        "welcome's credential signed with the new secret",
        Duration::from_secs(30),
        || async {
            let n = asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let welcome = hello_and_join(&url, &format!("after-{n}")).await;
            let credential = welcome_credential(&welcome);
            signed_with(&credential, &second).then_some(credential)
        },
    )
    .await;
    eprintln!(
        "signaling signed with the new secret {}s after it was added",
        Timestamp::now().as_second() - created[1].as_second()
    );
    // New credentials work on the relay (it re-reads its secret file).
    let fresh = eventually(
        "an allocation with the new credential",
        Duration::from_secs(30),
        || async { Allocation::make(relay, &new).await.ok() },
    )
    .await;
    // The allocation made before the rotation relays on: to a new peer it
    // needs a CreatePermission signed with the old credential, so the relay
    // still accepts it through the overlap.
    held.exchange(&fresh)
        .await
        .expect("the allocation from before the rotation relays to a new peer");
    held.exchange(&held_peer)
        .await
        .expect("the allocations from before the rotation relay to each other");
    // A new allocation with the old credential is accepted as well.
    let late_old = Allocation::make(relay, &old)
        .await
        .expect("an allocation with the old credential during the overlap");
    late_old
        .exchange(&fresh)
        .await
        .expect("relaying between old and new credentials");
    let (secrets, _) = turn_secrets(&client).await;
    assert!(
        secrets.contains(&first),
        "the first secret stays while its credentials are valid"
    );
    for allocation in [held, held_peer, fresh, late_old] {
        allocation.close().await;
    }
}

/// An open WebSocket client after `hello` (it counts as a connection of the
/// signaling pod it reached).
async fn connected_client(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    // Signaling holds each address to a connection rate (429 above it);
    // every test client comes from this one host, so it backs off and
    // tries again, as the page does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut socket = loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("WebSocket connect in time");
        match attempt {
            Ok((socket, _)) => break socket,
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == http::StatusCode::TOO_MANY_REQUESTS
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("WebSocket connect to {url}: {e}"),
        }
    };
    socket
        .send(Message::text(json!({"type": "hello"}).to_string()))
        .await
        .expect("send hello");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("welcome in time")
            .expect("socket open")
            .expect("a frame");
        if let Message::Text(text) = message {
            let welcome: Value = serde_json::from_str(text.as_str()).expect("JSON");
            assert_eq!(welcome["type"], "welcome", "answer to hello: {welcome}");
            return socket;
        }
    }
}

/// The signaling Deployment's `spec.replicas`.
async fn signaling_replicas(client: &Client) -> Option<i32> {
    replicas_of(client, "signaling").await
}

/// A component Deployment's `spec.replicas`.
async fn replicas_of(client: &Client, component: &str) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .get(&format!("{CLUSTER}-{component}"))
        .await
        .ok()
        .and_then(|d| d.spec.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_scales_up_with_connections_within_its_bounds_and_drains_before_scaling_down() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let max_replicas = 3;
    let per_pod = 5;
    apply(
        &client,
        json!({
            "autoscaling": {
                "enabled": true,
                "metricsIntervalSeconds": 5,
                "scaleUpStabilizationSeconds": 0,
                "scaleDownStabilizationSeconds": 0,
                "drainGraceSeconds": 120,
                "signaling": {"minReplicas": 1, "maxReplicas": max_replicas,
                    "targetLoadPerPod": per_pod},
                "turn": {"minReplicas": 1, "maxReplicas": 1},
            },
            "signaling": {"service": {"type": "LoadBalancer"}},
        }),
    )
    .await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let url = signaling_url(&cluster);
    let replicas_at_rest = eventually("signaling at its minimum", READY_LIMIT, || async {
        let replicas = signaling_replicas(&client).await?;
        (replicas == 1).then_some(replicas)
    })
    .await;
    assert_eq!(replicas_at_rest, 1);

    // Every replica count the Deployment is given, as a watch sees it.
    let (most_replicas, watcher) = watch_most_replicas(&client, "signaling").await;

    // Load up: six times the target of one pod.
    let clients = per_pod as usize * 6;
    let mut sockets = Vec::new();
    for _ in 0..clients {
        sockets.push(connected_client(&url).await);
    }
    let started = Instant::now();
    eventually(
        "signaling scaled to its maximum, every pod ready",
        Duration::from_secs(150),
        || async {
            let pods = component_images(&client, "signaling").await;
            (signaling_replicas(&client).await? == max_replicas
                && pods.len() == max_replicas as usize
                && pods.iter().all(|(_, _, ready)| *ready))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "{clients} connections: {max_replicas} ready signaling pods after {:?}",
        started.elapsed()
    );
    // Stays within its bounds while the load lasts (past two metrics intervals).
    let hold_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < hold_until {
        assert!(
            signaling_replicas(&client)
                .await
                .is_some_and(|r| r <= max_replicas),
            "never past maxReplicas"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        most_replicas.load(std::sync::atomic::Ordering::SeqCst),
        max_replicas,
        "the Deployment was never given more than maxReplicas"
    );

    // Load down: the clients leave; the pods to remove are drained first.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component=signaling");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods");
    let mut changes = pods
        .watch(
            &WatchParams::default().labels(&selector).timeout(200),
            &listed.metadata.resource_version.expect("resourceVersion"),
        )
        .await
        .expect("watch pods")
        .boxed();
    for mut socket in sockets.drain(..) {
        let _ = socket.close(None).await;
    }
    let left_at = Instant::now();
    let mut removed = BTreeSet::new();
    let mut drained_first = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while removed.len() < (max_replicas - 1) as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = tokio::time::timeout(left, changes.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{removed:?} of the extra signaling pods were removed within 180 s")
            })
            .expect("the watch goes on")
            .expect("a watch event");
        if let WatchEvent::Modified(pod) | WatchEvent::Deleted(pod) = change
            && pod.metadata.deletion_timestamp.is_some()
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if removed.insert(name.clone())
                && pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("videochat.dev/draining-since"))
            {
                drained_first.insert(name);
            }
        }
    }
    eprintln!(
        "clients left: {} pods terminating after {:?}",
        removed.len(),
        left_at.elapsed()
    );
    assert_eq!(
        drained_first, removed,
        "every removed pod was asked to drain (videochat.dev/draining-since) before it was deleted"
    );
    eventually(
        "signaling back at its minimum, the pod left serving (the empty, drained pods go long before the 120 s drain grace)",
        Duration::from_secs(60),
        || async {
            let pods = component_images(&client, "signaling").await;
            (signaling_replicas(&client).await? == 1 && pods.len() == 1 && pods[0].2).then_some(())
        },
    )
    .await;
    hello_and_join(&url, "after-load").await;
    watcher.abort();
    assert!(
        most_replicas.load(std::sync::atomic::Ordering::SeqCst) <= max_replicas,
        "never past maxReplicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_cluster_with_running_pods_causes_no_writes_and_no_reconcile_storm() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    apply(
        &client,
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": 1},
            "turn": {"replicas": 1},
            "rollout": {"stabilizationSeconds": 5},
        }),
    )
    .await;
    wait_ready(&sim, &client, READY_LIMIT).await;
    // Every revision recorded as the rollback target (a ControllerRevision,
    // a status write and an Event each): the end of the install's work.
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    eventually(
        "every component's revision recorded as good",
        READY_LIMIT,
        || async {
            let status = clusters.get(CLUSTER).await.ok()?.status?;
            let c = &status.components;
            [&c.signaling, &c.turn, &c.redis, &c.mongodb]
                .into_iter()
                .all(|slot| {
                    slot.as_ref().is_some_and(|slot| {
                        slot.rollout
                            .as_ref()
                            .and_then(|r| r.last_good_revision.as_ref())
                            == Some(&slot.revision)
                    })
                })
                .then_some(())
        },
    )
    .await;
    // Settled: no write through the API (the operator's; the kubelet and
    // controllers write to the store directly) for a few seconds.
    let quiet = Duration::from_secs(5);
    eventually("the operator settles", READY_LIMIT, || async {
        let last_write = sim
            .requests()
            .iter()
            .rev()
            .find(|r| r.is_write())
            .map(|r| r.at)?;
        (last_write.elapsed() > quiet).then_some(())
    })
    .await;
    // An observation window longer than the 30 s progress poll: the pods
    // keep running and being probed, and only the 300 s resync may wake
    // the operator.
    let window = Duration::from_secs(40);
    let started = Instant::now();
    let reconciles_before = operator.reconciles();
    tokio::time::sleep(window).await;
    let writes: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.at >= started && r.is_write())
        .map(|r| format!("{} {} ({})", r.method, r.path, r.field_manager))
        .collect();
    let reconciles = operator.reconciles() - reconciles_before;
    eprintln!(
        "idle with running pods: {reconciles} reconciles and {} writes in {window:?}",
        writes.len()
    );
    assert!(writes.is_empty(), "an idle cluster got writes: {writes:?}");
    // A settled cluster waits for the 300 s resync, not the 30 s progress
    // poll of a rollout.
    assert_eq!(
        reconciles, 0,
        "{reconciles} reconciles in {window:?} of idleness (the resync is 300 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_scales_up_with_allocations_within_its_bounds_and_drains_before_scaling_down() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let max_replicas = 2;
    let per_pod = 2;
    apply(
        &client,
        json!({
            "autoscaling": {
                "enabled": true,
                "metricsIntervalSeconds": 5,
                "scaleUpStabilizationSeconds": 0,
                "scaleDownStabilizationSeconds": 0,
                "drainGraceSeconds": 120,
                "signaling": {"minReplicas": 1, "maxReplicas": 1},
                "turn": {"minReplicas": 1, "maxReplicas": max_replicas,
                    "targetLoadPerPod": per_pod},
            },
            "signaling": {"service": {"type": "LoadBalancer"}},
        }),
    )
    .await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let url = signaling_url(&cluster);
    eventually("one relay at rest", READY_LIMIT, || async {
        (replicas_of(&client, "turn").await? == 1).then_some(())
    })
    .await;
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let relay = udp_relay(&clusters.get(CLUSTER).await.expect("cluster"));

    let (most_replicas, watcher) = watch_most_replicas(&client, "turn").await;

    // Load up: three times the target of one relay, with the credential a
    // client gets from signaling.
    let credential = welcome_credential(&hello_and_join(&url, "load").await);
    let mut allocations = Vec::new();
    for _ in 0..per_pod * 3 {
        allocations.push(
            Allocation::make(relay, &credential)
                .await
                .expect("allocate"),
        );
    }
    let started = Instant::now();
    let relays = eventually(
        "TURN scaled to its maximum, every relay ready and published",
        Duration::from_secs(150),
        || async {
            let pods = component_images(&client, "turn").await;
            let cluster = clusters.get(CLUSTER).await.ok()?;
            let published: BTreeSet<SocketAddr> = cluster
                .status?
                .endpoints
                .turn_uris
                .iter()
                .filter(|u| u.transport == "udp")
                .filter_map(|u| u.uri.strip_prefix("turn:")?.split('?').next()?.parse().ok())
                .collect();
            (replicas_of(&client, "turn").await? == max_replicas
                && pods.len() == max_replicas as usize
                && pods.iter().all(|(_, _, ready)| *ready)
                && published.len() == max_replicas as usize)
                .then_some(published)
        },
    )
    .await;
    eprintln!(
        "{} allocations: {max_replicas} ready relays after {:?}",
        allocations.len(),
        started.elapsed()
    );
    // The new relay serves at the address the status publishes.
    let new_relay = *relays
        .iter()
        .find(|r| **r != relay)
        .expect("a second relay address");
    let on_new = eventually(
        "an allocation on the new relay",
        Duration::from_secs(30),
        || async { Allocation::make(new_relay, &credential).await.ok() },
    )
    .await;
    let on_new_peer = Allocation::make(new_relay, &credential)
        .await
        .expect("a second allocation on the new relay");
    on_new
        .exchange(&on_new_peer)
        .await
        .expect("the new relay relays");
    allocations.push(on_new_peer);
    assert_eq!(
        most_replicas.load(std::sync::atomic::Ordering::SeqCst),
        max_replicas,
        "the Deployment was never given more than maxReplicas"
    );

    // Load down to one allocation on each relay: one relay is enough, so
    // one is drained, and kept while its allocation lives.
    let kept_old = allocations.remove(0);
    let kept_new = on_new;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component=turn");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list pods");
    let mut changes = pods
        .watch(
            &WatchParams::default().labels(&selector).timeout(250),
            &listed.metadata.resource_version.expect("resourceVersion"),
        )
        .await
        .expect("watch pods")
        .boxed();
    for allocation in allocations.drain(..) {
        allocation.close().await;
    }
    let left_at = Instant::now();
    // The next pod change within `within`; None when there is none.
    let mut next_pod = async |within: Duration| -> Option<Pod> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let change = tokio::time::timeout(left, changes.next())
                .await
                .ok()?
                .expect("the watch goes on")
                .expect("a watch event");
            match change {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) | WatchEvent::Deleted(pod) => {
                    return Some(pod);
                }
                WatchEvent::Error(error) => panic!("the pod watch failed: {error:?}"),
                WatchEvent::Bookmark(_) => {}
            }
        }
    };
    let draining_mark = "videochat.dev/draining-since";
    let is_draining = |pod: &Pod| {
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(draining_mark))
    };
    let draining = loop {
        let pod = next_pod(Duration::from_secs(120))
            .await
            .expect("a relay is asked to drain within 120 s of the load going down");
        assert!(
            pod.metadata.deletion_timestamp.is_none() || is_draining(&pod),
            "a relay was deleted without being drained first: {:?}",
            pod.metadata
        );
        if is_draining(&pod) {
            break pod;
        }
    };
    let draining_name = draining.metadata.name.clone().unwrap_or_default();
    eprintln!(
        "load down: {draining_name} draining after {:?}",
        left_at.elapsed()
    );
    // Which relay that is: its node's ExternalIP.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get(
            &draining
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .expect("the relay's node"),
        )
        .await
        .expect("node");
    let external: std::net::IpAddr = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "ExternalIP")
        .expect("ExternalIP")
        .address
        .parse()
        .expect("an IP");
    let (on_draining, on_staying) = if kept_old.server.ip() == external {
        (kept_old, kept_new)
    } else {
        assert_eq!(
            kept_new.server.ip(),
            external,
            "one kept allocation is on it"
        );
        (kept_new, kept_old)
    };
    // Its allocation goes on relaying while the drain waits for it: through
    // three metrics intervals the pod is not deleted.
    let hold = Instant::now() + Duration::from_secs(15);
    while let Some(pod) = next_pod(hold.saturating_duration_since(Instant::now())).await {
        assert!(
            pod.metadata.name.as_deref() != Some(draining_name.as_str())
                || pod.metadata.deletion_timestamp.is_none(),
            "the draining relay was deleted while an allocation on it lived"
        );
    }
    on_draining
        .exchange(&on_staying)
        .await
        .expect("the allocation on the draining relay still relays");
    // Once it ends, the empty relay goes at once, not after the drain grace.
    on_draining.close().await;
    let ended_at = Instant::now();
    loop {
        let pod = next_pod(Duration::from_secs(60))
            .await
            .expect("the drained relay is deleted within 60 s of its last allocation ending");
        if pod.metadata.name.as_deref() == Some(draining_name.as_str())
            && pod.metadata.deletion_timestamp.is_some()
        {
            break;
        }
    }
    eprintln!(
        "last allocation ended: {draining_name} terminating after {:?}",
        ended_at.elapsed()
    );
    on_staying.close().await;
    eventually(
        "TURN back at one relay, published alone",
        Duration::from_secs(60),
        || async {
            let pods = component_images(&client, "turn").await;
            let cluster = clusters.get(CLUSTER).await.ok()?;
            let udp = cluster
                .status?
                .endpoints
                .turn_uris
                .iter()
                .filter(|u| u.transport == "udp")
                .count();
            (replicas_of(&client, "turn").await? == 1 && pods.len() == 1 && pods[0].2 && udp == 1)
                .then_some(())
        },
    )
    .await;
    watcher.abort();
    assert!(
        most_replicas.load(std::sync::atomic::Ordering::SeqCst) <= max_replicas,
        "never past maxReplicas"
    );
}

/// Events about the resource so far: (name, reason, note).
async fn cluster_events(client: &Client) -> Vec<(String, String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CLUSTER))
        .map(|e| {
            (
                e.metadata.name.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// The signaling pod template hash of each live signaling pod, with readiness.
async fn signaling_pods(client: &Client) -> Vec<(String, String, bool)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component=signaling");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let hash = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash").cloned())
                .unwrap_or_default();
            let ready = pod_is_ready(&p);
            (p.metadata.name.unwrap_or_default(), hash, ready)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_leader_killed_mid_rollout_hands_over_and_the_rollout_finishes_once() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
    use k8s_openapi::api::coordination::v1::Lease;
    use support::helm_operator::HelmOperator;
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    // The chart's two replicas as real processes, with the shortest Lease
    // the chart allows a test to wait for.
    let mut operator =
        HelmOperator::install(&sim, NAMESPACE, &["leaderElection.leaseDurationSeconds=4"]);
    assert_eq!(
        operator.replicas.len(),
        2,
        "the chart runs two operator replicas"
    );
    let spec = |max_peers: i32| {
        json!({
            "autoscaling": {"enabled": false},
            "rollout": {"progressDeadlineSeconds": 120, "stabilizationSeconds": 0},
            "signaling": {"replicas": 2, "service": {"type": "LoadBalancer"},
                "limits": {"maxPeersPerRoom": max_peers}},
            "turn": {"replicas": 1},
        })
    };
    apply(&client, spec(8)).await;
    let (installed, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let old_revision = installed
        .status
        .clone()
        .expect("status")
        .components
        .signaling
        .expect("signaling")
        .revision;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder_and_transitions = || async {
        let spec = leases.get("videochat-operator").await.ok()?.spec?;
        Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
    };
    let (leader, transitions) = eventually(
        "a replica holds the Lease",
        Duration::from_secs(30),
        holder_and_transitions,
    )
    .await;
    // The installed revision is on record as good before the edit.
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let good = |c: &VideoChatCluster| {
        c.status
            .as_ref()
            .and_then(|s| s.components.signaling.as_ref())
            .and_then(|s| s.last_good_revision.clone())
    };
    eventually(
        "the installed revision recorded good",
        Duration::from_secs(60),
        || async {
            let c = clusters.get(CLUSTER).await.ok()?;
            (good(&c).as_deref() == Some(old_revision.as_str())).then_some(())
        },
    )
    .await;
    let events_before: BTreeSet<String> = cluster_events(&client)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let signaling = format!("{CLUSTER}-signaling");
    let old_template = deployments
        .get(&signaling)
        .await
        .expect("signaling")
        .spec
        .template;

    // A new revision that runs; the leader dies once it has applied it and
    // said so, while the Deployment is still replacing pods.
    let edited = apply(&client, spec(7)).await;
    let generation = edited.metadata.generation.expect("generation");
    let new_events = || async {
        cluster_events(&client)
            .await
            .into_iter()
            .filter(|e| !events_before.contains(&e.0))
            .collect::<Vec<_>>()
    };
    eventually(
        "the leader applies the new revision mid-rollout",
        Duration::from_secs(60),
        || async {
            let d = deployments.get(&signaling).await.ok()?;
            let applied = d.spec.template != old_template;
            let announced = new_events()
                .await
                .iter()
                .any(|e| e.1 == "Updated" && e.2.contains(&format!("Deployment/{signaling}")));
            let pods = signaling_pods(&client).await;
            let hashes: BTreeSet<&String> = pods.iter().map(|p| &p.1).collect();
            // Old pods still run: the rollout is under way, not done.
            let under_way = hashes.len() > 1 || pods.iter().any(|p| !p.2);
            (applied && announced && under_way).then_some(())
        },
    )
    .await;
    let status = operator.replica(&leader).kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the leader was SIGKILLed"
    );

    let (new_leader, new_transitions) = eventually(
        "the other replica takes the Lease",
        Duration::from_secs(30),
        || async {
            let (holder, transitions) = holder_and_transitions().await?;
            (holder != leader).then_some((holder, transitions))
        },
    )
    .await;
    assert!(
        operator.replica(&new_leader).running(),
        "the new leader is the other, live replica"
    );
    assert_eq!(
        new_transitions,
        transitions + 1,
        "one takeover, no flapping"
    );

    // The new leader finishes: Ready on the new revision, recorded good,
    // every signaling pod of the new template and Ready.
    let finished = eventually(
        "the rollout finished and reported by the new leader",
        READY_LIMIT,
        || async {
            let c = clusters.get(CLUSTER).await.ok()?;
            let status = c.status.clone()?;
            let ready = condition(&c, "Ready").is_some_and(|c| c["status"] == "True");
            let component = status.components.signaling.clone()?;
            let pods = signaling_pods(&client).await;
            let hashes: BTreeSet<&String> = pods.iter().map(|p| &p.1).collect();
            (ready
                && status.observed_generation == Some(generation)
                && component.revision != old_revision
                && component.last_good_revision.as_deref() == Some(component.revision.as_str())
                && pods.len() == 2
                && hashes.len() == 1
                && pods.iter().all(|p| p.2))
            .then_some(c)
        },
    )
    .await;
    let new_revision = finished
        .status
        .expect("status")
        .components
        .signaling
        .expect("signaling")
        .revision;

    // No duplicate step: one ReplicaSet for the new template, one
    // announcement of the update, and one ControllerRevision per good
    // revision, the new one from the edited generation.
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let new_template = deployments
        .get(&signaling)
        .await
        .expect("signaling")
        .spec
        .template;
    let with_new = sets
        .list(&ListParams::default())
        .await
        .expect("replica sets")
        .items
        .into_iter()
        .filter(|rs| {
            // A ReplicaSet's template is the Deployment's plus its hash label.
            rs.spec.template.clone().is_some_and(|mut t| {
                if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                    labels.remove("pod-template-hash");
                }
                t == new_template
            })
        })
        .count();
    assert_eq!(with_new, 1, "exactly one ReplicaSet runs the new revision");
    let events = new_events().await;
    let updates = events
        .iter()
        .filter(|e| e.1 == "Updated" && e.2.contains(&format!("Deployment/{signaling}")))
        .count();
    assert_eq!(
        updates,
        1,
        "the update is announced once: {events:?}\n{}",
        operator.logs()
    );
    assert!(
        !events
            .iter()
            .any(|e| e.1 == "Draining" || e.1.contains("Rollback")),
        "a rollout drains nothing and rolls nothing back: {events:?}"
    );
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), NAMESPACE);
    let signaling_revisions: Vec<(String, i64)> = revisions
        .list(&ListParams::default().labels("app.kubernetes.io/component=signaling"))
        .await
        .expect("controller revisions")
        .items
        .into_iter()
        .map(|r| {
            (
                r.metadata
                    .labels
                    .and_then(|l| l.get("videochat.dev/revision").cloned())
                    .unwrap_or_default(),
                r.revision.unwrap_or_default(),
            )
        })
        .collect();
    let recorded: Vec<&String> = signaling_revisions.iter().map(|r| &r.0).collect();
    assert_eq!(
        recorded.iter().filter(|r| **r == &new_revision).count(),
        1,
        "the new revision is recorded once: {signaling_revisions:?}"
    );
    assert!(
        recorded.contains(&&old_revision),
        "the old good revision is kept: {signaling_revisions:?}"
    );
    assert_eq!(
        signaling_revisions
            .iter()
            .find(|r| r.0 == new_revision)
            .map(|r| r.1),
        Some(generation),
        "recorded from the edited generation: {signaling_revisions:?}"
    );
}
