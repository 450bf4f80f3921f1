//! Two real browsers call each other through our TURN relay.
//!
//! Starts `videochat-signaling` in single-machine mode (signaling plus the
//! in-process TURN relay on loopback) and drives two separate headless
//! Chromium sessions through chromedriver (W3C WebDriver). Both open the demo
//! page with `?relay=1&autojoin=1`, so ICE may only use relay candidates:
//! media can flow only through the relay. Asserts that each side reaches
//! `connectionState == "connected"` on a relay candidate pair, decodes video
//! frames, and sees the chat messages of both sides with the same `seq`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/setup.d/browser.sh
//! installs them and exports VIDEOCHAT_CHROMIUM / VIDEOCHAT_CHROMEDRIVER).
//! Without them the test fails; it never skips.

mod browser_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use browser_support::page::{call_problem, chat_problem, only_peer, page_logs, page_state};
use browser_support::{CHROMIUM_FLAGS, Process, find_program, free_port, unique_dir};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// Bound on each wait: server start, browser start, call set-up, chat.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

/// Starts the signaling server (with its in-process TURN relay) on loopback
/// and returns it with the base URL it prints (`listening on http://…`).
/// `listen` may have port 0; `relay_block` picks a relay port range of its
/// own, so that tests running at the same time do not compete for ports.
/// The first of 50 relay ports for this test process and block (0..3).
fn relay_ports(block: u16) -> u16 {
    40_000 + ((std::process::id() % 100) as u16 * 3 + block % 3) * 50
}

fn start_server(data_dir: &Path, listen: &str, relay_block: u16) -> (Process, String) {
    start_server_with(data_dir, listen, relay_block, &[])
}

fn start_server_with(
    data_dir: &Path,
    listen: &str,
    relay_block: u16,
    extra: &[String],
) -> (Process, String) {
    let first = relay_ports(relay_block);
    let mut command = Command::new(env!("CARGO_BIN_EXE_videochat-signaling"));
    command
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--turn-listen")
        .arg("127.0.0.1:0")
        .arg("--turn-relay-ports")
        .arg(format!("{first}-{}", first + 49))
        .arg("--drain-timeout")
        .arg("20s")
        .args(extra);
    let mut server = Process::spawn(&mut command, "videochat-signaling");
    let url = server.wait_for_url(WAIT);
    (server, url)
}

fn start_chromedriver(chromedriver: &Path) -> (Process, String) {
    let port = free_port();
    let mut command = Command::new(chromedriver);
    command.arg(format!("--port={port}"));
    (
        Process::spawn(&mut command, "chromedriver"),
        format!("http://127.0.0.1:{port}"),
    )
}

/// Camera and microphone of a test browser.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Devices {
    /// Chromium's fake camera (a moving pattern) and microphone (a beep).
    Fake,
    /// None at all: headless Chromium on a server has no real ones.
    None,
}

/// Opens a browser session; retries while chromedriver is still starting.
async fn open_browser(
    driver: &mut Process,
    driver_url: &str,
    chromium: &Path,
    profile: &Path,
    devices: Devices,
) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS
        .iter()
        .filter(|f| devices == Devices::Fake || **f != "--use-fake-device-for-media-stream")
        .map(|f| (*f).to_owned())
        .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
    });
    let capabilities = match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(driver_url)
            .await;
        match attempt {
            Ok(client) => return client,
            Err(e) => {
                if let Some(status) = driver.exited() {
                    panic!(
                        "chromedriver exited ({status}):\n{}",
                        driver.output.tail(40)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "cannot open a Chromium session through chromedriver within {WAIT:?}: {e}\n{}",
                    driver.output.tail(40)
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

struct Peer {
    label: &'static str,
    browser: Client,
}

async fn diagnostics(peers: &[&Peer], server: &Process) -> String {
    let mut out = String::new();
    for peer in peers {
        let state = page_state(&peer.browser)
            .await
            .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
            .unwrap_or_else(|e| e);
        out.push_str(&format!(
            "\n--- browser {} state:\n{state}\n--- browser {} console:\n{}\n",
            peer.label,
            peer.label,
            page_logs(&peer.browser).await
        ));
    }
    out.push_str(&format!(
        "--- server output (last lines):\n{}\n",
        server.output.tail(60)
    ));
    out
}

/// Polls both pages until `check` passes on each, or fails with diagnostics.
async fn wait_all(
    peers: &[&Peer],
    server: &Process,
    what: &str,
    check: impl Fn(&Value) -> Option<String>,
) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut states = Vec::new();
        let mut problems = Vec::new();
        for peer in peers {
            let state = page_state(&peer.browser).await?;
            if let Some(problem) = check(&state) {
                problems.push(format!("{}: {problem}", peer.label));
            }
            states.push(state);
        }
        if problems.is_empty() {
            return Ok(states);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: not reached within {WAIT:?}: {}\n{}",
                problems.join("; "),
                diagnostics(peers, server).await
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Types a chat message into a page and presses Send, as a person would.
async fn send_chat(peer: &Peer, text: &str) -> Result<(), String> {
    let input = peer
        .browser
        .find(Locator::Css("#chat-input"))
        .await
        .map_err(|e| format!("{}: no chat input: {e}", peer.label))?;
    input
        .send_keys(text)
        .await
        .map_err(|e| format!("{}: cannot type into the chat input: {e}", peer.label))?;
    peer.browser
        .find(Locator::Css("#chat-send"))
        .await
        .map_err(|e| format!("{}: no send button: {e}", peer.label))?
        .click()
        .await
        .map_err(|e| format!("{}: cannot click send: {e}", peer.label))
}

/// The chat entry with this body on a page: (seq, delivery state).
fn chat_entry(state: &Value, body: &str) -> Option<(u64, String)> {
    state["chat"].as_array()?.iter().find_map(|m| {
        (m["body"] == json!(body)).then(|| {
            (
                m["seq"].as_u64().unwrap_or(0),
                m["state"].as_str().unwrap_or("").to_owned(),
            )
        })
    })
}

/// Whether a page shows a banner containing `text`: None when it does.
fn banner_problem(state: &Value, text: &str) -> Option<String> {
    let banners = state["banners"].as_array().cloned().unwrap_or_default();
    if banners
        .iter()
        .any(|b| b.as_str().is_some_and(|b| b.contains(text)))
    {
        None
    } else {
        Some(format!("no banner saying {text:?}; banners: {banners:?}"))
    }
}

/// The `seq` of each message on each page must agree.
fn same_seqs(states: &[Value]) -> Result<(), String> {
    let seqs: Vec<Vec<u64>> = states
        .iter()
        .map(|s| {
            s["chat"]
                .as_array()
                .map(|c| c.iter().filter_map(|m| m["seq"].as_u64()).collect())
                .unwrap_or_default()
        })
        .collect();
    if seqs.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("the pages disagree on chat seqs: {seqs:?}"));
    }
    Ok(())
}

/// Opens the demo page in both browsers, relay-only, and waits for the call:
/// connected on a relay pair, video decoded, each side seeing the other.
async fn join_call(
    a: &Peer,
    b: &Peer,
    server: &Process,
    base_url: &str,
    room: &str,
) -> Result<Vec<Value>, String> {
    for peer in [a, b] {
        let url = format!(
            "{base_url}/?room={room}&relay=1&autojoin=1&name={}",
            peer.label
        );
        peer.browser
            .goto(&url)
            .await
            .map_err(|e| format!("{}: cannot open {url}: {e}", peer.label))?;
    }
    let states = wait_all(&[a, b], server, "relay-only call", call_problem).await?;
    let ids: Vec<&str> = states
        .iter()
        .map(|s| s["peer"].as_str().unwrap_or(""))
        .collect();
    for (i, state) in states.iter().enumerate() {
        let other = ids[1 - i];
        match only_peer(state) {
            Some((peer, _)) if peer == other => {}
            found => {
                return Err(format!(
                    "page {i} is connected to {found:?}, expected peer {other}"
                ));
            }
        }
        if state["relayOnly"] != json!(true) || state["iceServers"].as_u64().unwrap_or(0) == 0 {
            return Err(format!(
                "page {i} is not in relay-only mode with TURN servers: {state}"
            ));
        }
    }
    Ok(states)
}

/// A picture of each page for people reading the test output; not an assertion.
async fn screenshots(peers: &[&Peer], name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for peer in peers {
        if let Ok(png) = peer.browser.screenshot().await {
            let path = dir.join(format!("{name}-{}.png", peer.label));
            if std::fs::write(&path, png).is_ok() {
                eprintln!("screenshot of {}: {}", peer.label, path.display());
            }
        }
    }
}

async fn call_and_chat(a: &Peer, b: &Peer, server: &Process, base_url: &str) -> Result<(), String> {
    let room = format!("call-{}", std::process::id());
    join_call(a, b, server, base_url, &room).await?;
    for peer in [a, b] {
        expect_shown(peer, "#join-panel", false).await?;
        expect_shown(peer, "#chat", true).await?;
    }
    // Each page says how many are in the room, and its own tile's initials
    // come from the name alone (not from "A (you)").
    wait_all(&[a, b], server, "room count and initials", |s| {
        let mut problems = Vec::new();
        if s["peerCount"] != json!("2 people in the room") {
            problems.push(format!("peerCount is {}", s["peerCount"]));
        }
        if s["initials"] != s["name"] {
            problems.push(format!("initials {} for name {}", s["initials"], s["name"]));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    })
    .await?;
    let from_a = "hello from A";
    let from_b = "hello back from B";
    send_chat(a, from_a).await?;
    let expected = [("A", from_a)];
    let states = wait_all(&[a, b], server, "chat from A", |s| {
        chat_problem(s, &expected)
    })
    .await?;
    same_seqs(&states)?;
    send_chat(b, from_b).await?;
    let expected = [("A", from_a), ("B", from_b)];
    let states = wait_all(&[a, b], server, "chat from B", |s| {
        chat_problem(s, &expected)
    })
    .await?;
    same_seqs(&states)?;
    screenshots(&[a, b], "browser-call").await;

    // Leave: the other side sees the peer go at once (not after the resume window).
    a.browser
        .find(Locator::Css("#leave-button"))
        .await
        .map_err(|e| format!("A: no Leave button: {e}"))?
        .click()
        .await
        .map_err(|e| format!("A: cannot click Leave: {e}"))?;
    wait_all(&[b], server, "B sees A leave", |s| {
        let peers = s["peers"].as_object().map(|m| m.len()).unwrap_or(0);
        (peers != 0).then(|| format!("still {peers} peer(s)"))
    })
    .await?;
    wait_all(&[a], server, "A is back on the join form", |s| {
        (s["joined"] != json!(false)).then(|| format!("joined is {}", s["joined"]))
    })
    .await?;
    expect_shown(a, "#join-panel", true).await?;
    expect_shown(a, "#call", false).await?;
    Ok(())
}

/// Whether an element is visible on the page, as a person would see it.
async fn expect_shown(peer: &Peer, css: &str, shown: bool) -> Result<(), String> {
    let visible = peer
        .browser
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("{}: no {css}: {e}", peer.label))?
        .is_displayed()
        .await
        .map_err(|e| format!("{}: cannot tell whether {css} is shown: {e}", peer.label))?;
    if visible == shown {
        Ok(())
    } else {
        Err(format!(
            "{}: {css} is {}",
            peer.label,
            if visible {
                "shown, expected hidden"
            } else {
                "hidden, expected shown"
            }
        ))
    }
}

/// How the server goes away in the middle of a call.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    /// kill -9: a crash.
    Kill,
    /// SIGTERM: the server tells the pages `draining` and exits once they left.
    Drain,
}

/// The server stops mid-call (see `Stop`), a message is typed while it is
/// down, and it starts again on the same data dir: both pages resume their
/// sessions (same peer ids), the call comes back through the new relay, and
/// the chat shows every message exactly once, in order.
async fn restart_and_resume(
    a: &Peer,
    b: &Peer,
    mut server: Process,
    data_dir: &Path,
    base_url: &str,
    stop: Stop,
) -> Result<(), String> {
    let room = format!("restart-{}", std::process::id());
    let before = join_call(a, b, &server, base_url, &room).await?;
    let first = "before the restart";
    send_chat(a, first).await?;
    let expected = [("A", first)];
    wait_all(&[a, b], &server, "chat before the restart", |s| {
        chat_problem(s, &expected)
    })
    .await?;

    match stop {
        Stop::Kill => {
            server.kill();
            // After the first quick retry fails, people are told plainly.
            wait_all(
                &[a, b],
                &server,
                "pages explain the server is unreachable",
                |s| banner_problem(s, "Cannot reach the signaling server"),
            )
            .await?;
        }
        Stop::Drain => {
            server.terminate();
            let deadline = Instant::now() + WAIT;
            while server.exited().is_none() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the draining server did not exit within {WAIT:?} although the pages were told to move\n{}",
                        diagnostics(&[a, b], &server).await
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
            for peer in [a, b] {
                let logs = page_logs(&peer.browser).await;
                if !logs.contains("server is draining") {
                    return Err(format!(
                        "{}: the page never saw `draining`\n{}",
                        peer.label,
                        diagnostics(&[a, b], &server).await
                    ));
                }
            }
        }
    }
    wait_all(&[a, b], &server, "pages notice the server is gone", |s| {
        (s["signaling"] == json!("open")).then(|| "still shows the server as connected".into())
    })
    .await?;
    let second = "typed while the server was down";
    send_chat(b, second).await?;
    let pending = page_state(&b.browser).await?;
    match chat_entry(&pending, second) {
        Some((_, state)) if state == "sending" || state == "resending" => {}
        other => {
            return Err(format!(
                "B: message typed offline is {other:?}, expected pending"
            ));
        }
    }

    let listen = base_url.trim_start_matches("http://");
    let (server, _) = start_server(data_dir, listen, 1);
    let ids: Vec<Value> = before.iter().map(|s| s["peer"].clone()).collect();
    let frames: Vec<u64> = before
        .iter()
        .map(|s| {
            only_peer(s)
                .and_then(|(_, p)| p["framesDecoded"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    let resumed = |s: &Value| {
        let i = usize::from(s["name"] != json!("A"));
        if s["signaling"] != json!("open") {
            return Some(format!("signaling {}", s["signaling"]));
        }
        if s["peer"] != ids[i] {
            return Some(format!(
                "peer id {} after the restart, was {}",
                s["peer"], ids[i]
            ));
        }
        if let Some(problem) = call_problem(s) {
            return Some(problem);
        }
        let now = only_peer(s)
            .and_then(|(_, p)| p["framesDecoded"].as_u64())
            .unwrap_or(0);
        (now <= frames[i] + 10).then(|| {
            format!(
                "video not flowing again ({now} frames, {} before)",
                frames[i]
            )
        })
    };
    wait_all(&[a, b], &server, "call resumed after the restart", resumed).await?;
    let expected = [("A", first), ("B", second)];
    let states = wait_all(&[a, b], &server, "chat after the restart", |s| {
        chat_problem(s, &expected)
    })
    .await?;
    same_seqs(&states)?;
    let name = match stop {
        Stop::Kill => "browser-restart",
        Stop::Drain => "browser-drain",
    };
    screenshots(&[a, b], name).await;
    Ok(())
}

/// Chromium, chromedriver, and one browser test at a time: two browsers with
/// video are already a lot for the two cores CI has.
struct Browsers {
    chromium: PathBuf,
    driver: Process,
    driver_url: String,
    profiles: Vec<PathBuf>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Browsers {
    fn start() -> Self {
        let chromium = find_program("VIDEOCHAT_CHROMIUM", &["chromium"], "chromium");
        let chromedriver = find_program(
            "VIDEOCHAT_CHROMEDRIVER",
            &["chromedriver"],
            "chromium-driver",
        );
        let (driver, driver_url) = start_chromedriver(&chromedriver);
        Self {
            chromium,
            driver,
            driver_url,
            profiles: Vec::new(),
        }
    }

    async fn open(&mut self, label: &'static str) -> Peer {
        self.open_with(label, Devices::Fake).await
    }

    async fn open_with(&mut self, label: &'static str, devices: Devices) -> Peer {
        let profile = unique_dir(&format!("profile-{label}"));
        let browser = open_browser(
            &mut self.driver,
            &self.driver_url,
            &self.chromium,
            &profile,
            devices,
        )
        .await;
        self.profiles.push(profile);
        Peer { label, browser }
    }

    /// Closes the browsers before the driver goes, so no Chromium outlives the test.
    async fn close(self, peers: Vec<Peer>) {
        for peer in peers {
            let _ = peer.browser.close().await;
        }
        drop(self.driver);
        for dir in &self.profiles {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_call_through_the_relay_and_chat() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data_dir = unique_dir("data");
    let (server, base_url) = start_server(&data_dir, "127.0.0.1:0", 0);
    let mut browsers = Browsers::start();
    let a = browsers.open("A").await;
    let b = browsers.open("B").await;
    let outcome = call_and_chat(&a, &b, &server, &base_url).await;
    browsers.close(vec![a, b]).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_resume_call_and_chat_after_a_server_restart() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data_dir = unique_dir("restart-data");
    // A fixed port, so that the restarted server is where the pages reconnect.
    let listen = format!("127.0.0.1:{}", free_port());
    let (server, base_url) = start_server(&data_dir, &listen, 0);
    let mut browsers = Browsers::start();
    let a = browsers.open("A").await;
    let b = browsers.open("B").await;
    let outcome = restart_and_resume(&a, &b, server, &data_dir, &base_url, Stop::Kill).await;
    browsers.close(vec![a, b]).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_move_on_drain_and_resume() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data_dir = unique_dir("drain-data");
    let listen = format!("127.0.0.1:{}", free_port());
    let (server, base_url) = start_server(&data_dir, &listen, 0);
    let mut browsers = Browsers::start();
    let a = browsers.open("A").await;
    let b = browsers.open("B").await;
    let outcome = restart_and_resume(&a, &b, server, &data_dir, &base_url, Stop::Drain).await;
    browsers.close(vec![a, b]).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

/// What people see when things are missing: a relay that cannot be reached
/// (the server hands out a TURN URI where nothing listens) and a browser
/// without camera or microphone, which still joins to watch and chat.
async fn explain_problems(
    a: &Peer,
    b: &Peer,
    server: &Process,
    base_url: &str,
) -> Result<(), String> {
    let room = format!("problems-{}", std::process::id());
    for peer in [a, b] {
        let url = format!(
            "{base_url}/?room={room}&relay=1&autojoin=1&name={}",
            peer.label
        );
        peer.browser
            .goto(&url)
            .await
            .map_err(|e| format!("{}: cannot open {url}: {e}", peer.label))?;
    }
    let no_relay = "No TURN relay address could be obtained";
    wait_all(
        &[a, b],
        server,
        "pages explain the relay is unreachable",
        |s| {
            if s["joined"] != json!(true) {
                return Some(format!("not joined (signaling {})", s["signaling"]));
            }
            banner_problem(s, no_relay)
        },
    )
    .await?;
    let states = wait_all(&[b], server, "page without devices explains it", |s| {
        banner_problem(s, "No camera or microphone was found")
    })
    .await?;
    if states[0]["localTracks"] != json!([]) {
        return Err(format!(
            "B has no devices but reports local tracks {}",
            states[0]["localTracks"]
        ));
    }
    // Nothing connected: the relay was the only way.
    for peer in [a, b] {
        let state = page_state(&peer.browser).await?;
        if let Some((id, p)) = only_peer(&state)
            && p["connectionState"] == json!("connected")
        {
            return Err(format!(
                "{}: connected to {id} although no relay was reachable: {p}",
                peer.label
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_explain_an_unreachable_relay_and_missing_devices() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data_dir = unique_dir("problems-data");
    let secret_file = data_dir.join("turn-secret");
    std::fs::write(&secret_file, "a-secret-for-a-relay-that-is-not-there\n")
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", secret_file.display()));
    let nothing_there = free_port();
    let extra = [
        "--no-embedded-turn".to_owned(),
        "--turn-uri".to_owned(),
        format!("turn:127.0.0.1:{nothing_there}?transport=udp"),
        "--turn-secret-file".to_owned(),
        secret_file.display().to_string(),
    ];
    let (server, base_url) = start_server_with(&data_dir, "127.0.0.1:0", 0, &extra);
    let mut browsers = Browsers::start();
    let a = browsers.open("A").await;
    let b = browsers.open_with("B", Devices::None).await;
    let outcome = explain_problems(&a, &b, &server, &base_url).await;
    browsers.close(vec![a, b]).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

/// A UDP proxy in front of the TURN relay that drops the given share (in
/// percent) of datagrams in both directions: a lossy network path between
/// the browsers and the relay.
struct LossyPath {
    addr: std::net::SocketAddr,
    loss_percent: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyPath {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::collections::HashMap;
        use tokio::net::UdpSocket;
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("cannot bind the lossy proxy: {e}")),
        );
        let addr = front
            .local_addr()
            .unwrap_or_else(|e| panic!("lossy proxy address: {e}"));
        let loss_percent = Arc::new(AtomicU32::new(0));
        let loss = loss_percent.clone();
        // A cheap deterministic generator: the drop pattern does not matter, its share does.
        let dropped = move |n: &mut u64| {
            *n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*n >> 33) % 100) < u64::from(loss.load(Ordering::Relaxed))
        };
        let task = tokio::spawn(async move {
            let mut backs: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let back = match backs.get(&client) {
                    Some(back) => back.clone(),
                    None => {
                        let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        if back.connect(target).await.is_err() {
                            continue;
                        }
                        let back = Arc::new(back);
                        let (front2, back2, drop2) = (front.clone(), back.clone(), dropped.clone());
                        let mut rng2 = rng ^ 0x9e37_79b9;
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back2.recv(&mut buf).await {
                                if !drop2(&mut rng2) {
                                    let _ = front2.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        backs.insert(client, back.clone());
                        back
                    }
                };
                if !dropped(&mut rng) {
                    let _ = back.send(&buf[..n]).await;
                }
            }
        });
        Self {
            addr,
            loss_percent,
            task,
        }
    }

    fn set_loss(&self, percent: u32) {
        self.loss_percent.store(percent, Ordering::Relaxed);
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Frames decoded from the one remote peer of a page.
fn frames(state: &Value) -> u64 {
    only_peer(state)
        .and_then(|(_, p)| p["framesDecoded"].as_u64())
        .unwrap_or(0)
}

/// Video frames a page sent to its one remote peer.
fn frames_sent(state: &Value) -> u64 {
    only_peer(state)
        .and_then(|(_, p)| p["framesSent"].as_u64())
        .unwrap_or(0)
}

/// Heavy loss on the path to the relay: the server's `adapt` turns video off
/// (audio continues, the page says why), and once the path is clean again
/// video comes back by itself.
async fn adapt_to_loss(
    a: &Peer,
    b: &Peer,
    server: &Process,
    base_url: &str,
    path: &LossyPath,
) -> Result<(), String> {
    let room = format!("lossy-{}", std::process::id());
    join_call(a, b, server, base_url, &room).await?;

    path.set_loss(35);
    wait_all(&[a, b], server, "audio-only under 35% loss", |s| {
        if s["adapt"]["audioOnly"] != json!(true) {
            return Some(format!("adapt is {}", s["adapt"]));
        }
        banner_problem(s, "too weak for video")
    })
    .await?;
    // Video has stopped. What decides it is the sender: after the advice,
    // each page sends no video frames (framesSent stays put) and the advice
    // never flips back to video while the loss lasts (a reading taken just
    // after the connection came back once counted as a clean path). The
    // receiver may still complete a few frames that were in flight and
    // retransmitted under the loss, but far fewer than the ~40-120 it decodes
    // in 4 s of video.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut before = Vec::new();
    for peer in [a, b] {
        let state = page_state(&peer.browser).await?;
        before.push((
            frames(&state),
            frames_sent(&state),
            state["adapt"]["switches"].clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, peer) in [a, b].iter().enumerate() {
        let state = page_state(&peer.browser).await?;
        let (decoded_before, sent_before, switches_before) = &before[i];
        let decoded = frames(&state).saturating_sub(*decoded_before);
        let sent = frames_sent(&state).saturating_sub(*sent_before);
        if sent > 1 || decoded > 24 || state["adapt"]["switches"] != *switches_before {
            return Err(format!(
                "{}: in 4 s of audio-only it sent {sent} video frames and decoded {decoded} \
                 (expected video to stop); adapt switches {} then {}\n{}",
                peer.label,
                switches_before,
                state["adapt"]["switches"],
                diagnostics(&[a, b], server).await
            ));
        }
    }

    path.set_loss(0);
    let stalled: Vec<u64> = before.iter().map(|(frames, _, _)| *frames).collect();
    wait_all(&[a, b], server, "video back on a clean path", |s| {
        let i = usize::from(s["name"] != json!("A"));
        if s["adapt"]["audioOnly"] != json!(false) {
            return Some(format!("adapt is {}", s["adapt"]));
        }
        let now = frames(s);
        (now < stalled[i] + 30)
            .then(|| format!("only {} new frames", now.saturating_sub(stalled[i])))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_pauses_on_a_lossy_path_and_comes_back() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data_dir = unique_dir("lossy-data");
    let secret = format!("lossy-path-secret-{}", std::process::id());
    let secret_file = data_dir.join("turn-secret");
    std::fs::write(&secret_file, format!("{secret}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", secret_file.display()));
    let mut relay_config = videochat_turn::RelayConfig::local(secret);
    relay_config.relay_min_port = relay_ports(2);
    relay_config.relay_max_port = relay_ports(2) + 49;
    let relay = videochat_turn::Relay::start(relay_config)
        .await
        .unwrap_or_else(|e| panic!("cannot start the TURN relay: {e}"));
    let path = LossyPath::start(relay.udp_addr()).await;
    let extra = [
        "--no-embedded-turn".to_owned(),
        "--turn-uri".to_owned(),
        format!("turn:{}?transport=udp", path.addr),
        "--turn-secret-file".to_owned(),
        secret_file.display().to_string(),
    ];
    let (server, base_url) = start_server_with(&data_dir, "127.0.0.1:0", 0, &extra);
    let mut browsers = Browsers::start();
    let a = browsers.open("A").await;
    let b = browsers.open("B").await;
    let outcome = adapt_to_loss(&a, &b, &server, &base_url, &path).await;
    browsers.close(vec![a, b]).await;
    drop(server);
    drop(path);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
}
