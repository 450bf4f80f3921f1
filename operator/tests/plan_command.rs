//! The `plan` subcommand end to end: files in, YAML out.

mod support;

use std::path::PathBuf;
use support::*;
use videochat_operator::cli::{PlanArgs, PlanOutput, plan_command};

fn args(files: Vec<PathBuf>, output: PlanOutput) -> PlanArgs {
    PlanArgs {
        files,
        output,
        show_secrets: false,
        secrets_complete: false,
        now: Some(NOW.into()),
    }
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("videochat-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn plan_prints_actions_status_events_and_redacted_objects() {
    let out = plan_command(&args(
        vec![repo_path("config/samples/minimal.yaml")],
        PlanOutput::Plan,
    ))
    .expect("plan");
    let doc: serde_json::Value = serde_yaml::from_str(&out).expect("one YAML document");
    assert_eq!(doc["cluster"], "videochat/demo");
    for key in ["actions", "objects", "events"] {
        assert!(
            doc[key].as_array().is_some_and(|a| !a.is_empty()),
            "{key} listed"
        );
    }
    assert_eq!(doc["status"]["phase"], "Pending");
    assert_eq!(doc["status"]["observedGeneration"], 1);
    // Secret values never reach the terminal unless asked for.
    let secrets: Vec<&serde_json::Value> = doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .collect();
    assert!(!secrets.is_empty());
    for secret in secrets {
        for value in secret["data"].as_object().expect("data").values() {
            assert_eq!(value, "PHJlZGFjdGVkPg==", "{}", secret["metadata"]["name"]);
        }
    }
    // The same run is byte-for-byte repeatable (no random material shown).
    let again = plan_command(&args(
        vec![repo_path("config/samples/minimal.yaml")],
        PlanOutput::Plan,
    ))
    .expect("plan");
    assert_eq!(out, again);
}

#[test]
fn objects_output_is_a_yaml_stream_of_kubernetes_objects() {
    let out = plan_command(&args(
        vec![repo_path("config/samples/external-databases.yaml")],
        PlanOutput::Objects,
    ))
    .expect("plan");
    let mut count = 0;
    for document in serde_yaml::Deserializer::from_str(&out) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document).expect("document");
        assert!(
            value["apiVersion"].is_string() && value["kind"].is_string(),
            "{value}"
        );
        assert_eq!(value["metadata"]["namespace"], "videochat");
        assert_ne!(value["kind"], "StatefulSet");
        count += 1;
    }
    assert!(count >= 10, "{count} objects");
}

#[test]
fn observed_objects_from_a_list_file_change_the_plan() {
    // A node and the relay running on it, as `kubectl get -o yaml` lists
    // them: the default (host-network) relay announces the node's ExternalIP.
    let observed = scratch(
        "observed.yaml",
        r#"apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Node
    metadata: {name: node-a}
    status: {addresses: [{type: InternalIP, address: 10.0.0.4}, {type: ExternalIP, address: 192.0.2.44}]}
  - apiVersion: v1
    kind: Pod
    metadata:
      name: demo-turn-5d8f-x2x
      namespace: videochat
      labels: {app.kubernetes.io/name: videochat, app.kubernetes.io/instance: demo, app.kubernetes.io/component: turn}
    spec: {nodeName: node-a, containers: [{name: turn}]}
"#,
    );
    let out = plan_command(&args(
        vec![repo_path("config/samples/minimal.yaml"), observed],
        PlanOutput::Plan,
    ))
    .expect("plan");
    let doc: serde_json::Value = serde_yaml::from_str(&out).expect("yaml");
    assert_eq!(
        doc["status"]["endpoints"]["turnUris"][0]["uri"],
        "turn:192.0.2.44:3478?transport=udp"
    );
    let addresses = doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["metadata"]["name"] == "demo-turn-addresses")
        .expect("turn address map");
    assert_eq!(addresses["data"]["node-a"], "192.0.2.44");
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let two = scratch(
        "two.yaml",
        "apiVersion: videochat.dev/v1alpha1\nkind: VideoChatCluster\nmetadata: {name: a}\nspec: {}\n---\napiVersion: videochat.dev/v1alpha1\nkind: VideoChatCluster\nmetadata: {name: b}\nspec: {}\n",
    );
    let error = plan_command(&args(vec![two], PlanOutput::Plan)).expect_err("two clusters");
    assert!(
        error.to_string().contains("exactly one VideoChatCluster"),
        "{error}"
    );

    let no_kind = scratch("nokind.yaml", "metadata: {name: x}\n");
    let error = plan_command(&args(vec![no_kind], PlanOutput::Plan)).expect_err("no kind");
    assert!(error.to_string().contains("apiVersion and kind"), "{error}");

    let missing = plan_command(&args(
        vec![PathBuf::from("/nonexistent/cluster.yaml")],
        PlanOutput::Plan,
    ))
    .expect_err("missing file");
    assert!(
        missing
            .to_string()
            .contains("cannot read /nonexistent/cluster.yaml"),
        "{missing}"
    );

    // A spec the CRD's rules refuse is refused here too, as `kubectl apply`
    // would be (the operator itself still reports such a spec as Degraded).
    let bad = scratch(
        "bad.yaml",
        "apiVersion: videochat.dev/v1alpha1\nkind: VideoChatCluster\nmetadata: {name: bad}\nspec:\n  autoscaling:\n    turn: {minReplicas: 9, maxReplicas: 3}\n",
    );
    let error = plan_command(&args(vec![bad], PlanOutput::Plan)).expect_err("min above max");
    assert!(
        error
            .to_string()
            .contains("spec.autoscaling.turn: autoscaling minReplicas must not exceed maxReplicas"),
        "{error}"
    );
}

/// What the API server would refuse, `plan` refuses too, naming the field.
#[test]
fn plan_refuses_what_the_crd_refuses_and_names_the_field() {
    for (fixture, path) in [
        ("misspelled-field.yaml", "spec.signaling"),
        ("zero-replicas.yaml", "spec.signaling.replicas"),
        ("port-out-of-range.yaml", "spec.turn.relayPortRange.max"),
        (
            "unknown-service-type.yaml",
            "spec.turn.exposure.serviceType",
        ),
    ] {
        let file = repo_path(&format!("operator/tests/fixtures/invalid/{fixture}"));
        let error = plan_command(&args(vec![file], PlanOutput::Plan))
            .expect_err(&format!("{fixture} was accepted"));
        let message = error.to_string();
        assert!(
            message.contains("refused") && message.contains(&format!("{path}:")),
            "{fixture}: {message}"
        );
    }
    // A CEL rule, not only the OpenAPI shape.
    let inverted = scratch(
        "inverted-range.yaml",
        "apiVersion: videochat.dev/v1alpha1\nkind: VideoChatCluster\nmetadata: {name: demo, namespace: videochat}\nspec:\n  turn:\n    relayPortRange: {min: 50000, max: 49999}\n",
    );
    let message = plan_command(&args(vec![inverted], PlanOutput::Plan))
        .expect_err("an inverted relay port range was accepted")
        .to_string();
    assert!(message.contains("must not exceed"), "{message}");
}
