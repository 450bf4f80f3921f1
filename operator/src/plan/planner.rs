//! From a VideoChatCluster and the objects observed in the cluster: decide,
//! then render, then compute the writes, the status and the events.
//!
//! Pure: no I/O, no clock, no randomness. The caller passes the time and
//! freshly generated secret material (used only when no Secret exists yet).

use super::action::{Action, object_actions};
use super::day_two;
use super::events::{self, PlannedEvent};
use super::status;
use crate::decisions::{DecisionInput, Decisions, decide};
use crate::error::{Error, Result};
use crate::observed::Observed;
use crate::render::{self, Ctx, FreshSecrets};
use crate::resource::{VideoChatCluster, VideoChatClusterStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// Everything a plan is computed from.
pub struct PlanInput<'a> {
    pub cluster: &'a VideoChatCluster,
    pub observed: &'a Observed,
    /// Secret material for Secrets that do not exist yet.
    pub fresh_secrets: &'a FreshSecrets,
    /// Current time, RFC 3339 (condition transition times).
    pub now: &'a str,
}

/// What the operator would do.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Every object the cluster should have, in apply order.
    pub objects: Vec<DynamicObject>,
    /// Writes needed to get there (objects already as desired are left out).
    pub actions: Vec<Action>,
    /// The status to write.
    pub status: VideoChatClusterStatus,
    /// Events worth telling a human about.
    pub events: Vec<PlannedEvent>,
    /// Seconds until a decision that waits on the clock alone is due (a TURN
    /// secret rotation), so the controller looks again then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_after_seconds: Option<i64>,
}

/// Parses the plan's RFC 3339 time.
pub fn parse_now(now: &str) -> Result<Timestamp> {
    now.parse().map_err(|e| Error::Parse {
        what: "the current time".into(),
        message: format!("{now:?} is not an RFC 3339 time: {e}"),
    })
}

/// Computes the plan. Fails only when the resource lacks the metadata every
/// child needs (name, namespace, uid); a bad spec yields a Degraded status.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan> {
    let cluster = input.cluster;
    let name = cluster
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let namespace = cluster
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;

    let invalid = crate::resource::validation_errors(cluster);
    if !invalid.is_empty() {
        let status = status::invalid_spec(cluster, &invalid, input.now);
        let events = events::planned_events(cluster.status.as_ref(), &status, &[]);
        return Ok(Plan {
            objects: Vec::new(),
            actions: Vec::new(),
            status,
            events,
            recheck_after_seconds: None,
        });
    }
    let now = parse_now(input.now)?;

    // The replicas every workload keeps before scaling: the TURN addresses
    // and so the endpoints, the signaling configuration and its template
    // depend on them.
    let held_replicas = crate::autoscale::held_replicas(cluster, input.observed, &name);
    let ctx = Ctx {
        cluster,
        name,
        namespace,
        owner,
        observed: input.observed,
        held_replicas: &held_replicas,
    };
    let endpoints = render::endpoints(&ctx);
    let templates = render::spec_templates(&ctx, &endpoints);
    let desired_revisions = templates.revisions();
    let decisions: Decisions = decide(DecisionInput {
        cluster,
        name: &ctx.name,
        observed: input.observed,
        desired_revisions: &desired_revisions,
        held_replicas: held_replicas.clone(),
        fresh_turn_secret: &input.fresh_secrets.turn_secret,
        now,
    });
    let objects = render::objects(&ctx, &templates, &decisions, input.fresh_secrets)?;

    // The revision each workload actually gets.
    let revisions = desired_revisions
        .iter()
        .map(|(component, desired)| {
            (
                *component,
                decisions
                    .rollout
                    .applied_revision(*component, desired)
                    .to_owned(),
            )
        })
        .collect();
    let mut actions = object_actions(&ctx, &objects);
    let mut status = status::compute(
        &ctx,
        &revisions,
        endpoints,
        templates.missing_secrets(),
        input.now,
    );
    let mut day_two_events = Vec::new();
    day_two::report(
        &decisions,
        cluster.status.as_ref(),
        &mut actions,
        &mut status,
        &mut day_two_events,
        input.now,
    );
    // Events follow the final decision: a Degraded reason the day-two step
    // replaced (a deadline that led to a rollback) is not announced, and a
    // reason it already announced is not announced twice.
    let mut events = events::planned_events(cluster.status.as_ref(), &status, &actions);
    events.retain(|e| !day_two_events.iter().any(|d| d.reason == e.reason));
    events.extend(day_two_events);
    let recheck_after_seconds = decisions.recheck_after_seconds(now);
    Ok(Plan {
        objects,
        actions,
        status,
        events,
        recheck_after_seconds,
    })
}

/// The cluster name a plan was made for, for logs.
pub fn cluster_key(cluster: &VideoChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}
