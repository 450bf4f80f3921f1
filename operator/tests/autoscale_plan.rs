//! `videochat-operator plan` fed with pod loads (`PodLoad` documents next to
//! the observed Pods) prints the scaling and drain actions.

mod support;

use kube::api::DynamicObject;
use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::observed::Observed;

fn cluster() -> VideoChatCluster {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["autoscaling"] = json!({
        "enabled": true,
        "scaleDownStabilizationSeconds": 0,
        "scaleUpStabilizationSeconds": 0,
        "drainGraceSeconds": 900,
        "signaling": {"minReplicas": 2, "maxReplicas": 8, "targetLoadPerPod": 100, "maxStep": 2},
    });
    serde_json::from_value(value).expect("cluster")
}

/// The first plan's objects, with the signaling Deployment at `replicas`
/// and one ready pod per load, each with its `PodLoad`.
fn observed_with_loads(
    cluster: &VideoChatCluster,
    loads: &[(&str, f64, Option<&str>)],
) -> Vec<Value> {
    let first = plan_with(cluster, &Observed::default(), "a", NOW);
    let mut documents: Vec<Value> = first
        .objects
        .iter()
        .map(|o: &DynamicObject| {
            let mut value = json(o);
            if value["kind"] == json!("Deployment")
                && value["metadata"]["name"] == json!("demo-signaling")
            {
                value["spec"]["replicas"] = json!(loads.len());
            }
            value
        })
        .collect();
    for (pod, load, draining_since) in loads {
        let mut annotations = serde_json::Map::new();
        if let Some(since) = draining_since {
            annotations.insert("videochat.dev/draining-since".into(), json!(since));
        }
        documents.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": "videochat",
                "labels": {"app.kubernetes.io/name": "videochat", "app.kubernetes.io/instance": "demo",
                           "app.kubernetes.io/component": "signaling"},
                "annotations": annotations,
            },
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
        documents.push(json!({
            "apiVersion": "videochat.dev/v1alpha1",
            "kind": "PodLoad",
            "metadata": {"name": pod, "namespace": "videochat"},
            "load": load,
        }));
    }
    documents
}

fn run_plan(cluster: &VideoChatCluster, observed: &[Value], tag: &str) -> Value {
    let dir = std::env::temp_dir().join(format!(
        "videochat-autoscale-plan-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut text = String::new();
    let mut cluster_value = serde_json::to_value(cluster).expect("json");
    cluster_value["metadata"]["namespace"] = json!("videochat");
    for document in std::iter::once(&cluster_value).chain(observed) {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(document).expect("yaml"));
    }
    let file = dir.join("input.yaml");
    std::fs::write(&file, text).expect("write");
    let output = run_plan_command(vec![file], "2026-01-01T00:10:00Z");
    let _ = std::fs::remove_dir_all(&dir);
    serde_yaml::from_str(&output).expect("YAML")
}

fn actions(plan: &Value, kind: &str) -> Vec<Value> {
    plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["action"] == json!(kind))
        .cloned()
        .collect()
}

fn signaling_replicas(plan: &Value) -> Option<i64> {
    plan["objects"]
        .as_array()?
        .iter()
        .find(|o| {
            o["kind"] == json!("Deployment") && o["metadata"]["name"] == json!("demo-signaling")
        })?
        .pointer("/spec/replicas")?
        .as_i64()
}

#[test]
fn plan_prints_drains_for_the_least_loaded_pods_before_a_scale_down() {
    let cluster = cluster();
    // 150 connections on 4 pods: 2 pods are enough.
    let observed = observed_with_loads(
        &cluster,
        &[
            ("sig-a", 60.0, None),
            ("sig-b", 5.0, None),
            ("sig-c", 80.0, None),
            ("sig-d", 5.0, None),
        ],
    );
    let plan = run_plan(&cluster, &observed, "drain");
    let drains: Vec<Value> = actions(&plan, "drain")
        .iter()
        .map(|a| a["pod"].clone())
        .collect();
    assert_eq!(drains, vec![json!("sig-b"), json!("sig-d")]);
    assert!(
        actions(&plan, "scale").is_empty(),
        "replicas stay until the drained pods are empty"
    );
    assert_eq!(signaling_replicas(&plan), Some(4));
    let autoscaling = &plan["status"]["components"]["signaling"]["autoscaling"];
    assert_eq!(autoscaling["currentLoad"], json!(150));
    assert_eq!(autoscaling["desiredReplicas"], json!(2));
    assert_eq!(autoscaling["drainingPods"], json!(["sig-b", "sig-d"]));

    // Later: both drained pods are empty, replicas drop by exactly them.
    let observed = observed_with_loads(
        &cluster,
        &[
            ("sig-a", 70.0, None),
            ("sig-b", 0.0, Some("2026-01-01T00:05:00Z")),
            ("sig-c", 80.0, None),
            ("sig-d", 0.0, Some("2026-01-01T00:05:00Z")),
        ],
    );
    let plan = run_plan(&cluster, &observed, "scale-down");
    let scales = actions(&plan, "scale");
    assert_eq!(scales.len(), 1);
    assert_eq!(
        (&scales[0]["from"], &scales[0]["to"]),
        (&json!(4), &json!(2))
    );
    assert_eq!(signaling_replicas(&plan), Some(2));
    assert!(actions(&plan, "drain").is_empty());
}

#[test]
fn plan_prints_a_scale_up_on_load_and_nothing_without_metrics() {
    let cluster = cluster();
    let observed = observed_with_loads(&cluster, &[("sig-a", 240.0, None), ("sig-b", 260.0, None)]);
    let plan = run_plan(&cluster, &observed, "up");
    let scales = actions(&plan, "scale");
    assert_eq!(scales.len(), 1, "{plan:#?}");
    // 500 connections need 5 pods; one step adds at most 2.
    assert_eq!(
        (&scales[0]["from"], &scales[0]["to"], &scales[0]["reason"]),
        (&json!(2), &json!(4), &json!("MaxStep"))
    );
    assert_eq!(signaling_replicas(&plan), Some(4));

    // Without PodLoad documents nothing moves.
    let bare: Vec<Value> = observed
        .into_iter()
        .filter(|d| d["kind"] != json!("PodLoad"))
        .collect();
    let plan = run_plan(&cluster, &bare, "none");
    assert!(actions(&plan, "scale").is_empty() && actions(&plan, "drain").is_empty());
    assert_eq!(signaling_replicas(&plan), Some(2));
    assert_eq!(
        plan["status"]["components"]["signaling"]["autoscaling"]["lastDecisionReason"],
        json!("MetricsMissing")
    );
}

/// The YAML block after `<!-- plan-example: NAME -->` in docs/operator.md.
fn doc_example(name: &str) -> String {
    let docs = std::fs::read_to_string(repo_path("docs/operator.md")).expect("docs/operator.md");
    let marker = format!("<!-- plan-example: {name} -->");
    let after = docs
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/operator.md has no {marker}"))
        .1;
    let block = after
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("no yaml block after {marker}"));
    block.0.to_owned()
}

#[test]
fn the_documented_example_plans_as_documented() {
    let dir = std::env::temp_dir().join(format!("videochat-doc-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster = dir.join("cluster.yaml");
    let observed = dir.join("observed.yaml");
    std::fs::write(&cluster, doc_example("autoscale-cluster")).expect("write");
    std::fs::write(&observed, doc_example("autoscale-observed")).expect("write");
    let output = run_plan_command(vec![cluster, observed], "2026-11-21T12:00:00Z");
    let _ = std::fs::remove_dir_all(&dir);
    let plan: Value = serde_yaml::from_str(&output).expect("YAML");
    let drains: Vec<Value> = actions(&plan, "drain")
        .iter()
        .map(|a| a["pod"].clone())
        .collect();
    assert_eq!(
        drains,
        vec![
            json!("demo-signaling-6d5f-b"),
            json!("demo-signaling-6d5f-d")
        ]
    );
    assert!(actions(&plan, "scale").is_empty());
    let autoscaling = &plan["status"]["components"]["signaling"]["autoscaling"];
    assert_eq!(autoscaling["currentLoad"], json!(150));
    assert_eq!(autoscaling["desiredReplicas"], json!(2));
    assert_eq!(autoscaling["lastDecisionReason"], json!("ScaleDown"));
}
