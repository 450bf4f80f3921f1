//! Reading the demo page as a test sees it: its read-only state hook, its
//! captured console, and whether it shows a relay-only call with video
//! flowing and the expected chat. Shared by the browser tests of signaling
//! and of the simulated cluster.

use fantoccini::Client;
use serde_json::{Value, json};

/// The page's read-only test hook (`window.videochat.state()`).
pub async fn page_state(browser: &Client) -> Result<Value, String> {
    browser
        .execute(
            "if (!window.videochat) { return { loaded: false }; } \
             return window.videochat.state().then((s) => Object.assign(s, { loaded: true }));",
            vec![],
        )
        .await
        .map_err(|e| format!("cannot read the page state: {e}"))
}

pub async fn page_logs(browser: &Client) -> String {
    match browser
        .execute(
            "return window.videochatConsole ? window.videochatConsole() : [];",
            vec![],
        )
        .await
    {
        Ok(Value::Array(entries)) => entries
            .iter()
            .map(|e| {
                format!(
                    "  {} {:5} {}",
                    e["t"].as_str().unwrap_or(""),
                    e["level"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Ok(other) => format!("  unexpected console capture: {other}"),
        Err(e) => format!("  cannot read the console: {e}"),
    }
}

/// The single remote peer of a page's state, when there is exactly one.
pub fn only_peer(state: &Value) -> Option<(&String, &Value)> {
    let peers = state["peers"].as_object()?;
    if peers.len() == 1 {
        peers.iter().next()
    } else {
        None
    }
}

/// Why a page is not yet in a relay-only call with video flowing, or None
/// when it is.
pub fn call_problem(state: &Value) -> Option<String> {
    if state["loaded"] != json!(true) {
        return Some("the page's scripts did not load (no window.videochat)".into());
    }
    if state["joined"] != json!(true) {
        return Some(format!("not joined (signaling {})", state["signaling"]));
    }
    let Some((peer, p)) = only_peer(state) else {
        return Some(format!(
            "expected exactly one remote peer, found {}",
            state["peers"].as_object().map(|m| m.len()).unwrap_or(0)
        ));
    };
    if p["connectionState"] != json!("connected") {
        return Some(format!(
            "peer {peer}: connectionState {} (ice {})",
            p["connectionState"], p["iceConnectionState"]
        ));
    }
    if p["localCandidateType"] != json!("relay") {
        return Some(format!(
            "peer {peer}: selected local candidate is {}, not relay",
            p["localCandidateType"]
        ));
    }
    if p["framesDecoded"].as_u64().unwrap_or(0) == 0 {
        return Some(format!("peer {peer}: no video frame decoded yet"));
    }
    None
}

/// Whether a page shows exactly these chat messages (sender label, body), in
/// this order, with consecutive `seq`, its own ones acked: None when it does.
pub fn chat_problem(state: &Value, expected: &[(&str, &str)]) -> Option<String> {
    let chat = state["chat"].as_array().cloned().unwrap_or_default();
    let shown: Vec<(&str, &str)> = chat
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["body"].as_str().unwrap_or(""),
            )
        })
        .collect();
    if shown != expected {
        return Some(format!("chat shows {shown:?}, expected {expected:?}"));
    }
    let seqs: Vec<u64> = chat
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    if seqs.contains(&0) || seqs.windows(2).any(|w| w[1] != w[0] + 1) {
        return Some(format!(
            "chat seqs {seqs:?} are not consecutive stored seqs"
        ));
    }
    for m in &chat {
        let own = m["name"] == state["name"];
        let expected_state = if own { "acked" } else { "received" };
        if m["state"] != json!(expected_state) {
            return Some(format!(
                "message {} is {}, expected {expected_state}",
                m["body"], m["state"]
            ));
        }
    }
    None
}
