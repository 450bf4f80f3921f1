//! Two headless Chromium peers call each other relay-only over `turns:`
//! (TURN over TLS) and nothing else.
//!
//! The relay runs in this process with TLS only (no plain TCP listener) and
//! a certificate signed by a CA made here with `rcgen`; signaling runs as a
//! binary with `--no-embedded-turn` and hands out that one `turns:` URI.
//! Chromium verifies the relay's certificate as usual; it is told to accept
//! this one test key with `--ignore-certificate-errors-spki-list` (a pin on
//! the leaf's public key, so any other certificate still fails). The relay
//! never turns verification off on its side.
//!
//! Needs Debian's `chromium` and `chromium-driver`, like browser_call.rs.

mod browser_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use browser_support::{CHROMIUM_FLAGS, Process, find_program, free_port, unique_dir};

use base64::Engine;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use videochat_turn::{Relay, RelayConfig};

const WAIT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(250);
const SECRET: &str = "turns-browser-secret";

/// A test CA and a leaf for 127.0.0.1 signed by it, written to `dir`;
/// returns (certificate file, key file, base64 SHA-256 of the leaf's SPKI).
fn test_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "videochat browser test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "videochat test relay");
    // Browsers refuse leaf certificates valid for more than 398 days.
    leaf_params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    leaf_params.not_after = rcgen::date_time_ymd(2026, 12, 31);
    let key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&key, &ca).expect("leaf");
    let cert_file = dir.join("tls.crt");
    let key_file = dir.join("tls.key");
    // The chain the relay serves: leaf, then the CA.
    std::fs::write(&cert_file, format!("{}{}", leaf.pem(), ca.pem())).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let spki = Sha256::digest(key.subject_public_key_info());
    let pin = base64::engine::general_purpose::STANDARD.encode(spki);
    (cert_file, key_file, pin)
}

/// Starts signaling with the relay's one `turns:` URI.
fn start_signaling(data_dir: &Path, turns_uri: &str, secret_file: &Path) -> (Process, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_videochat-signaling"));
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--no-embedded-turn")
        .arg("--turn-uri")
        .arg(turns_uri)
        .arg("--turn-secret-file")
        .arg(secret_file);
    let mut server = Process::spawn(&mut command, "videochat-signaling");
    let url = server.wait_for_url(WAIT);
    (server, url)
}

async fn open_browser(
    driver: &mut Process,
    driver_url: &str,
    chromium: &Path,
    profile: &Path,
    spki_pin: &str,
) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--ignore-certificate-errors-spki-list={spki_pin}"));
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal")
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(driver_url)
            .await
        {
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
                    "no Chromium session within {WAIT:?}: {e}\n{}",
                    driver.output.tail(40)
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// The page's read-only test hook (`window.videochat.state()`).
async fn page_state(browser: &Client) -> Value {
    browser
        .execute(
            "if (!window.videochat) { return { loaded: false }; } \
             return window.videochat.state().then((s) => Object.assign(s, { loaded: true }));",
            vec![],
        )
        .await
        .unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// Why a page is not yet in a relay-only call with video flowing, or None.
fn call_problem(state: &Value) -> Option<String> {
    if state["joined"] != json!(true) {
        return Some(format!("not joined: {state}"));
    }
    if state["relayOnly"] != json!(true) || state["iceServers"].as_u64().unwrap_or(0) == 0 {
        return Some("not relay-only with TURN servers".into());
    }
    let peers = state["peers"].as_object()?;
    let Some((peer, p)) = peers.iter().next().filter(|_| peers.len() == 1) else {
        return Some(format!("{} remote peers, expected 1", peers.len()));
    };
    if p["connectionState"] != json!("connected") {
        return Some(format!(
            "peer {peer}: connectionState {} (ice {})",
            p["connectionState"], p["iceConnectionState"]
        ));
    }
    if p["localCandidateType"] != json!("relay") {
        return Some(format!(
            "peer {peer}: local candidate {}",
            p["localCandidateType"]
        ));
    }
    if p["framesDecoded"].as_u64().unwrap_or(0) == 0 {
        return Some(format!("peer {peer}: no video frame decoded yet"));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_call_relay_only_over_turns() {
    let dir = unique_dir("turns-pki");
    let (cert_file, key_file, spki_pin) = test_certificate(&dir);
    let relay = Relay::start(RelayConfig {
        tls_cert_file: Some(cert_file),
        tls_key_file: Some(key_file),
        tls_ports: vec![0],
        // Only TLS: a call that connects went through turns:.
        no_tcp: true,
        ..RelayConfig::local(SECRET)
    })
    .await
    .expect("relay with TLS starts");
    let tls = relay.tls_addrs()[0];
    let turns_uri = format!("turns:127.0.0.1:{}?transport=tcp", tls.port());
    let secret_file = dir.join("turn-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let data_dir = unique_dir("turns-data");
    let (server, base_url) = start_signaling(&data_dir, &turns_uri, &secret_file);

    let chromium = find_program("VIDEOCHAT_CHROMIUM", &["chromium"], "chromium");
    let chromedriver = find_program(
        "VIDEOCHAT_CHROMEDRIVER",
        &["chromedriver"],
        "chromium-driver",
    );
    let port = free_port();
    let mut driver = Process::spawn(
        Command::new(&chromedriver).arg(format!("--port={port}")),
        "chromedriver",
    );
    let driver_url = format!("http://127.0.0.1:{port}");
    let mut browsers = Vec::new();
    for label in ["A", "B"] {
        let profile = unique_dir(&format!("profile-{label}"));
        let browser = open_browser(&mut driver, &driver_url, &chromium, &profile, &spki_pin).await;
        browsers.push((label, browser, profile));
    }

    let room = format!("turns-{}", std::process::id());
    let mut outcome = Ok(());
    for (label, browser, _) in &browsers {
        let url = format!("{base_url}/?room={room}&relay=1&autojoin=1&name={label}");
        if let Err(e) = browser.goto(&url).await {
            outcome = Err(format!("{label}: cannot open {url}: {e}"));
        }
    }
    let deadline = Instant::now() + WAIT;
    while outcome.is_ok() {
        let mut problems = Vec::new();
        for (label, browser, _) in &browsers {
            if let Some(p) = call_problem(&page_state(browser).await) {
                problems.push(format!("{label}: {p}"));
            }
        }
        if problems.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            outcome = Err(format!(
                "relay-only call over turns: not connected within {WAIT:?}: {}\n--- signaling:\n{}",
                problems.join("; "),
                server.output.tail(30)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    let metrics = relay.metrics_text();
    for (_, browser, profile) in browsers {
        let _ = browser.close().await;
        let _ = std::fs::remove_dir_all(profile);
    }
    drop(driver);
    drop(server);
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(message) = outcome {
        panic!("{message}");
    }
    // Both browsers allocated through the TLS listener (the only one).
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(
        sample("videochat_turn_allocations_total") >= 2.0,
        "{metrics}"
    );
    assert!(
        sample("videochat_turn_tcp_connections_active") >= 2.0,
        "{metrics}"
    );
}
