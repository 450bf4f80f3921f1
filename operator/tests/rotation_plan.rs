//! TURN secret rotation through `plan`: the generated Secret gains a new
//! secret (newest last) after the interval, keeps the old one for a
//! credential TTL plus propagation, then drops it. TURN pods do not roll.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::observed::Observed;
use videochat_operator::plan::Plan;

fn secret_lines(plan: &Plan) -> Vec<String> {
    let secret = json(find(plan, "Secret", "demo-turn-secret"));
    let encoded = secret
        .pointer("/data/turn-secret")
        .and_then(Value::as_str)
        .expect("secret data");
    let text = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf-8");
    text.lines().map(str::to_owned).collect()
}

fn created_at(plan: &Plan) -> String {
    json(find(plan, "Secret", "demo-turn-secret"))
        .pointer("/metadata/annotations/videochat.dev~1secret-created-at")
        .and_then(Value::as_str)
        .expect("creation times")
        .to_owned()
}

fn turn_revision(plan: &Plan) -> String {
    plan.status
        .components
        .turn
        .as_ref()
        .expect("turn status")
        .revision
        .clone()
}

#[test]
fn the_generated_turn_secret_rotates_without_rolling_pods() {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["turn"]["secretRotation"] = json!({"interval": "24h"});
    value["spec"]["turn"]["credentialTtlSeconds"] = json!(3600);
    let cluster: VideoChatCluster = serde_json::from_value(value).expect("cluster");

    let first = plan_with(
        &cluster,
        &Observed::default(),
        "one",
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(secret_lines(&first), vec!["turn-one"]);
    assert_eq!(created_at(&first), "2026-01-01T00:00:00Z");

    let observed = Observed::new(first.objects.clone());
    let same_day = plan_with(&cluster, &observed, "two", "2026-01-01T12:00:00Z");
    assert_eq!(secret_lines(&same_day), vec!["turn-one"]);
    assert!(same_day.actions.is_empty(), "{:?}", same_day.actions);

    // A day later: the new secret goes last (signaling signs with it), the
    // old one stays for the credentials already handed out.
    let rotated = plan_with(&cluster, &observed, "two", "2026-01-02T00:00:00Z");
    assert_eq!(secret_lines(&rotated), vec!["turn-one", "turn-two"]);
    assert_eq!(
        created_at(&rotated),
        "2026-01-01T00:00:00Z,2026-01-02T00:00:00Z"
    );
    assert!(rotated.events.iter().any(|e| e.reason == "SecretRotated"));
    assert_eq!(
        turn_revision(&rotated),
        turn_revision(&first),
        "TURN reads the file; no restart"
    );

    // One TTL plus propagation after the new one: the old one goes.
    let observed = Observed::new(rotated.objects.clone());
    let kept = plan_with(&cluster, &observed, "three", "2026-01-02T01:01:59Z");
    assert_eq!(secret_lines(&kept), vec!["turn-one", "turn-two"]);
    let pruned = plan_with(&cluster, &observed, "three", "2026-01-02T01:02:00Z");
    assert_eq!(secret_lines(&pruned), vec!["turn-two"]);
    assert_eq!(created_at(&pruned), "2026-01-02T00:00:00Z");
}

#[test]
fn a_user_supplied_secret_is_not_rotated() {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["turn"]["secretRotation"] = json!({"interval": "1h"});
    value["spec"]["turn"]["sharedSecretRef"] = json!({"name": "my-turn", "key": "secret"});
    let cluster: VideoChatCluster = serde_json::from_value(value).expect("cluster");
    let plan = plan_with(&cluster, &Observed::default(), "x", "2026-01-03T00:00:00Z");
    assert!(
        !plan
            .objects
            .iter()
            .any(|o| kind_of(o) == "Secret"
                && o.metadata.name.as_deref() == Some("demo-turn-secret"))
    );
    assert!(!plan.events.iter().any(|e| e.reason == "SecretRotated"));
}
