//! Scenario 1's call, as two users outside the cluster make it: after the
//! helm-rendered operator and a minimal VideoChatCluster with two relays on two nodes is Ready, two
//! headless Chromium browsers in the external client namespace (which
//! reaches only the nodes' external addresses and the load balancers) open
//! the demo page at the signaling URL of the resource's status, join one
//! room and call each other relay-only (`iceTransportPolicy: relay`)
//! through the deployed relays. Asserts what the users see: connected,
//! video frames decoded and still flowing, chat delivered both ways; and
//! that the relay candidates in use are the published TURN addresses.
//!
//! Needs root, iproute2, the binaries built (`cargo build --bins`), and
//! Debian's `chromium` and `chromium-driver` (VIDEOCHAT_CHROMIUM,
//! VIDEOCHAT_CHROMEDRIVER). Fails, never skips, without them.

#[path = "../../signaling/tests/browser_support/mod.rs"]
mod browser_support;
mod support;

use browser_support::page::{call_problem, chat_problem, only_peer, page_logs, page_state};
use browser_support::{CHROMIUM_FLAGS, Process, find_program, free_port, unique_dir};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};
use support::eventually;
use support::helm_operator::HelmOperator;
use support::running::{
    NAMESPACE, READY_LIMIT, apply, node_external_addresses, pod_summary, running_cluster,
    wait_ready,
};
use videochat_sim_cluster::SimCluster;

/// Bound on the call's set-up: page load, the origin file reaching
/// signaling, ICE through the relays, the first decoded frame; generous for
/// two busy cores running the whole cluster and two browsers.
const CALL_LIMIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(500);

/// `ws://host:port/ws` → `http://host:port`: where the demo page is served.
fn page_origin(signaling_url: &str) -> String {
    let rest = signaling_url.strip_prefix("ws://").unwrap_or_else(|| {
        panic!("a plain ws:// signaling URL without an Ingress: {signaling_url}")
    });
    let authority = rest.split('/').next().unwrap_or_default();
    format!("http://{authority}")
}

/// chromedriver and the browsers it starts, all in the external client
/// namespace; the test reaches the driver at the namespace's address.
struct Browsers {
    driver: Process,
    driver_url: String,
    chromium: std::path::PathBuf,
    page_origin: String,
}

impl Browsers {
    fn start(sim: &SimCluster, page_origin: &str) -> Self {
        let external = sim
            .external_client()
            .expect("the cluster has an external client namespace (run_pods)");
        let chromium = find_program("VIDEOCHAT_CHROMIUM", &["chromium"], "chromium");
        let chromedriver = find_program(
            "VIDEOCHAT_CHROMEDRIVER",
            &["chromedriver"],
            "chromium-driver",
        );
        let port = free_port();
        let mut command = Command::new(videochat_sim_cluster::network::ip_path());
        command
            .args(["netns", "exec", &external.namespace])
            .arg(&chromedriver)
            .arg(format!("--port={port}"))
            // Listen on the namespace's address, for the test on the host only.
            .arg(format!("--allowed-ips={}", external.host_address));
        Self {
            driver: Process::spawn(&mut command, "chromedriver"),
            driver_url: format!("http://{}:{port}", external.address),
            chromium,
            page_origin: page_origin.to_owned(),
        }
    }

    /// A Chromium session with the fake camera and microphone; retries
    /// while chromedriver is still starting.
    async fn open(&mut self, label: &str) -> Browser {
        let profile = unique_dir(&format!("sim-profile-{label}"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        // The page is plain http at the load balancer's address; the camera
        // needs a secure context, as a real deployment gets from TLS.
        args.push(format!(
            "--unsafely-treat-insecure-origin-as-secure={}",
            self.page_origin
        ));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium.display().to_string(), "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&self.driver_url)
                .await
            {
                Ok(browser) => return browser,
                Err(e) => {
                    if let Some(status) = self.driver.exited() {
                        panic!(
                            "chromedriver exited ({status}):\n{}",
                            self.driver.output.tail(40)
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no Chromium session through chromedriver at {}: {e}\n{}",
                        self.driver_url,
                        self.driver.output.tail(40)
                    );
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

/// Both pages' states once `check` passes on each; else the failure with
/// what each page shows and says, and the pods.
async fn wait_pages(
    sim: &SimCluster,
    client: &kube::Client,
    pages: &[(&str, &Browser)],
    what: &str,
    limit: Duration,
    check: impl Fn(&Value) -> Option<String>,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let mut states = Vec::new();
        let mut problems = Vec::new();
        for (label, browser) in pages {
            let state = page_state(browser)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            if let Some(problem) = check(&state) {
                problems.push(format!("{label}: {problem}"));
            }
            states.push(state);
        }
        if problems.is_empty() {
            return states;
        }
        if Instant::now() >= deadline {
            let mut details = String::new();
            for ((label, browser), state) in pages.iter().zip(&states) {
                details.push_str(&format!(
                    "\n--- {label} state:\n{}\n--- {label} console:\n{}\n",
                    serde_json::to_string_pretty(state).unwrap_or_default(),
                    page_logs(browser).await
                ));
            }
            panic!(
                "{what}: not reached within {limit:?}: {}\n{details}\npods:\n{}",
                problems.join("; "),
                pod_summary(sim, client).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Types into the chat and presses Send, as a person would.
async fn send_chat(browser: &Browser, text: &str) {
    browser
        .find(Locator::Css("#chat-input"))
        .await
        .expect("a chat input")
        .send_keys(text)
        .await
        .expect("typing into the chat input");
    browser
        .find(Locator::Css("#chat-send"))
        .await
        .expect("a send button")
        .click()
        .await
        .expect("clicking send");
}

/// Whether a process in the external namespace can open a TCP connection
/// to `address:port` within two seconds.
fn reachable_from_outside(sim: &SimCluster, address: &str, port: u16) -> bool {
    let namespace = &sim.external_client().expect("external namespace").namespace;
    Command::new(videochat_sim_cluster::network::ip_path())
        .args(["netns", "exec", namespace, "timeout", "2", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{address}/{port}"))
        .output()
        .expect("run bash in the external namespace")
        .status
        .success()
}

/// Video frames the page decoded from its one peer so far.
fn frames(state: &Value) -> u64 {
    only_peer(state)
        .and_then(|(_, p)| p["framesDecoded"].as_u64())
        .unwrap_or(0)
}

/// Two pages in a relay-only call, as users A and B see it.
struct Call {
    browsers: Browsers,
    a: Browser,
    b: Browser,
}

impl Call {
    /// Opens the demo page at `origin` in two browsers, joins `room`
    /// relay-only, and waits until both are in the call with video decoded.
    async fn start(
        sim: &SimCluster,
        client: &kube::Client,
        origin: &str,
        room: &str,
    ) -> (Self, Vec<Value>) {
        let mut browsers = Browsers::start(sim, origin);
        let a = browsers.open("A").await;
        let b = browsers.open("B").await;
        for (label, browser) in [("A", &a), ("B", &b)] {
            let url = format!("{origin}/?room={room}&relay=1&autojoin=1&name={label}");
            browser
                .goto(&url)
                .await
                .unwrap_or_else(|e| panic!("{label}: cannot open {url}: {e}"));
        }
        let call = Self { browsers, a, b };
        let states = call
            .wait(sim, client, "relay-only call", call_problem)
            .await;
        (call, states)
    }

    fn pages(&self) -> [(&'static str, &Browser); 2] {
        [("A", &self.a), ("B", &self.b)]
    }

    async fn wait(
        &self,
        sim: &SimCluster,
        client: &kube::Client,
        what: &str,
        check: impl Fn(&Value) -> Option<String>,
    ) -> Vec<Value> {
        wait_pages(sim, client, &self.pages(), what, CALL_LIMIT, check).await
    }

    /// Waits until each page decoded `more` frames beyond what it had now,
    /// still connected relay-only to the other page.
    async fn video_flows(&self, sim: &SimCluster, client: &kube::Client, what: &str, more: u64) {
        let now = self.wait(sim, client, what, call_problem).await;
        let before: Vec<u64> = now.iter().map(frames).collect();
        self.wait(sim, client, what, |s| {
            if let Some(problem) = call_problem(s) {
                return Some(problem);
            }
            let index = usize::from(s["name"] != json!("A"));
            let decoded = frames(s);
            (decoded < before[index] + more).then(|| {
                format!(
                    "{decoded} frames decoded, not yet {more} more than {}",
                    before[index]
                )
            })
        })
        .await;
    }

    /// A types `from_a`, then B types `from_b`; each page shows `shown`
    /// followed by both, in order, with the same `seq`.
    async fn chat(
        &self,
        sim: &SimCluster,
        client: &kube::Client,
        shown: &[(&str, &str)],
        from_a: &str,
        from_b: &str,
    ) {
        send_chat(&self.a, from_a).await;
        let mut expected = shown.to_vec();
        expected.push(("A", from_a));
        self.wait(sim, client, "chat from A", |s| chat_problem(s, &expected))
            .await;
        send_chat(&self.b, from_b).await;
        expected.push(("B", from_b));
        self.wait(sim, client, "chat from B", |s| chat_problem(s, &expected))
            .await;
    }

    /// Closes the browsers before the driver and the cluster go.
    async fn close(self) {
        let _ = self.a.close().await;
        let _ = self.b.close().await;
        drop(self.browsers);
    }
}

/// Each page is connected to the other one, relay-only, both ends relayed
/// at one of `relays` (addresses), from a TURN URI of `published`.
fn assert_relayed(states: &[Value], relays: &BTreeSet<String>, published: &BTreeSet<String>) {
    let ids: Vec<String> = states
        .iter()
        .map(|s| s["peer"].as_str().unwrap_or_default().to_owned())
        .collect();
    for (i, state) in states.iter().enumerate() {
        let label = state["name"].clone();
        assert_eq!(state["relayOnly"], json!(true), "{label}: {state}");
        let (peer, link) = only_peer(state).unwrap_or_else(|| panic!("{label}: one peer: {state}"));
        assert_eq!(
            peer,
            &ids[1 - i],
            "{label} is in a call with the other page"
        );
        let local = link["localCandidateAddress"].as_str().unwrap_or_default();
        let remote = link["remoteCandidateAddress"].as_str().unwrap_or_default();
        let server = link["localCandidateUrl"].as_str().unwrap_or_default();
        assert!(
            relays.contains(local),
            "{label}: its relayed address {local} is a published relay's {relays:?}: {link}"
        );
        assert_eq!(
            link["remoteCandidateType"],
            json!("relay"),
            "{label}: the other side is relayed too: {link}"
        );
        assert!(
            relays.contains(remote),
            "{label}: the other side's relayed address {remote} is a published relay's: {link}"
        );
        assert!(
            published.contains(server),
            "{label}: the relay candidate came from a TURN URI of the status {published:?}: {link}"
        );
    }
}

/// Hosts of the published TURN URIs.
fn relay_hosts(published: &BTreeSet<String>) -> BTreeSet<String> {
    published
        .iter()
        .filter_map(|uri| {
            let rest = uri.split_once(':')?.1.split('?').next()?;
            Some(rest.rsplit_once(':')?.0.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_outside_the_cluster_call_relay_only_through_the_published_relays() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    // The operator as the chart installs it: two replicas, one leading.
    let _operator =
        HelmOperator::install(&sim, NAMESPACE, &["leaderElection.leaseDurationSeconds=4"]);
    apply(
        &client,
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": 1, "service": {"type": "LoadBalancer", "port": 8080}},
            "turn": {"replicas": 2},
        }),
    )
    .await;
    let (cluster, took) = wait_ready(&sim, &client, READY_LIMIT).await;
    eprintln!("apply to Ready: {took:?}");

    // What the users get: the status's endpoints, nothing else.
    let endpoints = cluster.status.clone().expect("status").endpoints;
    let signaling_url = endpoints.signaling_url.clone().expect("signaling URL");
    let origin = page_origin(&signaling_url);
    let published_turn: BTreeSet<String> =
        endpoints.turn_uris.iter().map(|u| u.uri.clone()).collect();
    let external_addresses = node_external_addresses(&client).await;
    assert_eq!(
        relay_hosts(&published_turn),
        external_addresses,
        "the published relays are the two nodes' external addresses: {published_turn:?}"
    );

    // The browsers' namespace reaches the published addresses only: the
    // signaling pod's own address is out of reach, its load balancer is not.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let signaling_pod_ip = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=signaling"))
        .await
        .expect("signaling pods")
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("a signaling pod IP");
    assert!(
        !reachable_from_outside(&sim, &signaling_pod_ip, 8080),
        "the external namespace must not reach pod {signaling_pod_ip} directly"
    );
    let (lb_host, lb_port) = origin
        .trim_start_matches("http://")
        .rsplit_once(':')
        .expect("host:port");
    assert!(
        reachable_from_outside(&sim, lb_host, lb_port.parse().expect("port")),
        "the external namespace reaches signaling's load balancer {origin}"
    );

    let room = format!("sim-call-{}", std::process::id());
    let (call, states) = Call::start(&sim, &client, &origin, &room).await;
    assert_relayed(&states, &external_addresses, &published_turn);
    call.video_flows(&sim, &client, "video frames still flowing", 30)
        .await;
    call.chat(&sim, &client, &[], "hello from A", "hello back from B")
        .await;
    call.close().await;
}

/// The TURN shared secrets signaling and the relays read, one per line.
async fn turn_secret_count(client: &kube::Client) -> usize {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    secrets
        .get("demo-turn-secret")
        .await
        .ok()
        .and_then(|s| s.data)
        .and_then(|d| d.values().next().cloned())
        .map(|v| {
            String::from_utf8_lossy(&v.0)
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .unwrap_or(0)
}

/// Each live signaling pod with its open WebSocket connections (its own
/// `/metrics`, read from the host).
async fn signaling_connections(client: &kube::Client) -> Vec<(String, u64)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut found = Vec::new();
    for pod in pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=signaling"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let metrics = http_get(&format!("{ip}:8080"), "/metrics").await;
        let connections = metrics
            .lines()
            .find_map(|l| l.strip_prefix("videochat_signaling_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        found.push((pod.metadata.name.unwrap_or_default(), connections));
    }
    found
}

/// A plain HTTP/1.0 GET's body, or "" when it fails.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.split_once("\r\n\r\n")?.1.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_call_survives_a_turn_secret_rotation_and_a_drain_of_its_signaling_pod() {
    let sim = running_cluster().await;
    let client = sim.client().expect("client");
    let _operator =
        HelmOperator::install(&sim, NAMESPACE, &["leaderElection.leaseDurationSeconds=4"]);
    // 60 s is the shortest rotation interval the CRD allows; two signaling
    // pods so that a drained one's clients have somewhere to go.
    apply(
        &client,
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": 2, "service": {"type": "LoadBalancer", "port": 8080}},
            "turn": {"replicas": 2, "secretRotation": {"interval": "60s"}},
        }),
    )
    .await;
    let (cluster, _) = wait_ready(&sim, &client, READY_LIMIT).await;
    let endpoints = cluster.status.clone().expect("status").endpoints;
    let origin = page_origin(&endpoints.signaling_url.clone().expect("signaling URL"));
    let published_turn: BTreeSet<String> =
        endpoints.turn_uris.iter().map(|u| u.uri.clone()).collect();
    let relays = node_external_addresses(&client).await;
    assert_eq!(
        turn_secret_count(&client).await,
        1,
        "one TURN secret before the first rotation is due (Ready took longer than 60 s?)"
    );

    let room = format!("sim-survive-{}", std::process::id());
    let (call, states) = Call::start(&sim, &client, &origin, &room).await;
    assert_relayed(&states, &relays, &published_turn);
    call.chat(&sim, &client, &[], "before the rotation", "ok")
        .await;

    // The rotation: a second secret; the relays take it without dropping
    // the allocations made with the first, so the call goes on.
    eventually("a second TURN secret", Duration::from_secs(120), || async {
        (turn_secret_count(&client).await >= 2).then_some(())
    })
    .await;
    call.video_flows(&sim, &client, "video through the secret rotation", 60)
        .await;
    let shown = [("A", "before the rotation"), ("B", "ok")];
    call.chat(&sim, &client, &shown, "after the rotation", "still here")
        .await;

    // The signaling pod a page is connected to is deleted, as a rollout or
    // a node drain does: it tells its clients to move, they resume on the
    // other pod through the load balancer, and the call never notices.
    let connected = eventually(
        "both pages' WebSockets counted by the signaling pods",
        Duration::from_secs(30),
        || async {
            let pods = signaling_connections(&client).await;
            (pods.iter().map(|p| p.1).sum::<u64>() == 2).then_some(pods)
        },
    )
    .await;
    let (drained, _) = connected
        .iter()
        .find(|p| p.1 > 0)
        .cloned()
        .expect("a pod with a page connected");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    pods.delete(&drained, &Default::default())
        .await
        .expect("kubectl delete pod");
    eventually(
        "both pages on signaling pods other than the drained one",
        Duration::from_secs(60),
        || async {
            let now = signaling_connections(&client).await;
            let moved =
                !now.iter().any(|p| p.0 == drained) && now.iter().map(|p| p.1).sum::<u64>() == 2;
            moved.then_some(())
        },
    )
    .await;
    call.video_flows(&sim, &client, "video after the signaling pod's drain", 60)
        .await;
    let shown = [
        ("A", "before the rotation"),
        ("B", "ok"),
        ("A", "after the rotation"),
        ("B", "still here"),
    ];
    call.chat(&sim, &client, &shown, "after the drain", "all good")
        .await;
    call.close().await;
}
