//! Helpers shared by the integration tests.
#![allow(dead_code)]

use kube::api::DynamicObject;
use serde_json::Value;
use std::path::PathBuf;
use videochat_operator::cli::{PlanArgs, PlanOutput, plan_command};
use videochat_operator::observed::{Observed, parse_yaml_objects};
use videochat_operator::plan::{self, FreshSecrets, Plan, PlanInput};
use videochat_operator::resource::Condition;
use videochat_operator::{VideoChatCluster, VideoChatClusterStatus};

pub const NOW: &str = "2026-01-01T00:00:00Z";
pub const LATER: &str = "2026-01-01T00:05:00Z";
pub const UID: &str = "6f1b8f52-0000-4000-8000-000000000001";

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A sample from config/samples, with the metadata the API server adds.
pub fn sample(name: &str) -> VideoChatCluster {
    let path = repo_path(&format!("config/samples/{name}.yaml"));
    let text = std::fs::read_to_string(&path).expect("sample readable");
    let objects = parse_yaml_objects(&text, name).expect("sample parses");
    assert_eq!(objects.len(), 1, "one object per sample");
    let value = serde_json::to_value(&objects[0]).expect("json");
    let mut cluster: VideoChatCluster =
        serde_json::from_value(value).expect("sample is a VideoChatCluster");
    cluster.metadata.uid = Some(UID.into());
    cluster.metadata.generation = Some(1);
    cluster
}

pub fn fresh(seed: &str) -> FreshSecrets {
    FreshSecrets {
        turn_secret: format!("turn-{seed}"),
        redis_password: format!("redis-{seed}"),
        mongodb_password: format!("mongo-{seed}"),
        admin_token: format!("admin-{seed}"),
    }
}

pub fn plan_with(cluster: &VideoChatCluster, observed: &Observed, seed: &str, now: &str) -> Plan {
    plan::plan(&PlanInput {
        cluster,
        observed,
        fresh_secrets: &fresh(seed),
        now,
    })
    .expect("plan")
}

pub fn kind_of(object: &DynamicObject) -> String {
    object
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default()
}

pub fn find<'a>(plan: &'a Plan, kind: &str, name: &str) -> &'a DynamicObject {
    plan.objects
        .iter()
        .find(|o| kind_of(o) == kind && o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("plan has no {kind}/{name}"))
}

pub fn json(object: &DynamicObject) -> Value {
    serde_json::to_value(object).expect("json")
}

/// The condition of `type_`; panics when the status lacks it.
pub fn condition<'a>(status: &'a VideoChatClusterStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{type_}"))
}

/// The output of `videochat-operator plan` (plan format, secrets hidden) on
/// the given files at `now`.
pub fn run_plan_command(files: Vec<PathBuf>, now: &str) -> String {
    plan_command(&PlanArgs {
        files,
        output: PlanOutput::Plan,
        show_secrets: false,
        secrets_complete: false,
        now: Some(now.into()),
    })
    .expect("plan runs")
}
