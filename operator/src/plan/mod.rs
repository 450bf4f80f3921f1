//! The decision core: from a VideoChatCluster and the objects observed in the
//! cluster, compute the objects to apply, the actions and the status.
//!
//! Pure: no I/O, no clock, no randomness. The caller passes the time and
//! freshly generated secret material (used only when no Secret exists yet).

mod diff;
mod events;
mod failures;
mod hash;
mod mongodb;
mod network;
mod pods;
mod redis;
mod secrets;
mod signaling;
mod status;
mod turn;
mod workload;

pub use diff::is_subset;
pub use events::PlannedEvent;
pub(crate) use events::event;
pub use failures::{FailedWrite, WriteFailure, report_write_failures};
pub use secrets::{FreshSecrets, TURN_SECRET_KEY};
pub(crate) use status::condition;

use crate::error::{Error, Result};
use crate::labels::{self, Component};
use crate::observed::Observed;
use crate::resource::{VideoChatCluster, VideoChatClusterStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

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

/// One write the operator makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Server-side apply of a desired object.
    #[serde(rename_all = "camelCase")]
    Apply {
        api_version: String,
        kind: String,
        name: String,
        change: Change,
    },
    /// Delete a child the spec no longer asks for (e.g. a managed database
    /// switched to external). Secrets and volumes are never pruned.
    #[serde(rename_all = "camelCase")]
    Delete {
        api_version: String,
        kind: String,
        name: String,
    },
    /// A failed revision replaced by the last good template (the workload's
    /// Apply carries it; a Warning Event says why).
    #[serde(rename_all = "camelCase")]
    Rollback {
        component: String,
        from_revision: String,
        to_revision: String,
        reason: String,
        message: String,
    },
    /// Replicas set by the autoscaler (the Deployment's Apply carries them).
    #[serde(rename_all = "camelCase")]
    Scale {
        component: String,
        from: i32,
        to: i32,
        reason: String,
        message: String,
    },
    /// Ask a pod to drain (its admin endpoint), then mark it draining and
    /// cheapest to delete, before a scale-down.
    #[serde(rename_all = "camelCase")]
    Drain { component: String, pod: String },
    /// Delete a drained pod that a scale-down no longer removes.
    #[serde(rename_all = "camelCase")]
    DeletePod {
        component: String,
        pod: String,
        reason: String,
    },
}

/// Why an object is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Change {
    /// It does not exist yet.
    Create,
    /// It exists but differs from the desired object.
    Update,
}

/// Kinds the operator creates and may prune. Secrets are left out on
/// purpose: deleting generated credentials would orphan data on the volumes.
pub const PRUNABLE_KINDS: [(&str, &str); 7] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "Ingress"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
];

/// Facts about the cluster resource that every builder needs.
pub(crate) struct Ctx<'a> {
    pub cluster: &'a VideoChatCluster,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub observed: &'a Observed,
}

impl Ctx<'_> {
    pub fn meta(&self, name: String, component: Option<Component>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::labels(&self.name, component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Cluster-local DNS name of a Service.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }
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
    let ctx = Ctx {
        cluster,
        name,
        namespace,
        owner,
        observed: input.observed,
    };

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

    let secrets = secrets::desired(&ctx, input.fresh_secrets)?;
    let endpoints = status::endpoints(&ctx);
    let mut objects: Vec<DynamicObject> = secrets.objects.clone();
    let mut revisions = BTreeMap::new();

    if let Some(managed) = &cluster.spec.redis.managed {
        let built = redis::desired(&ctx, managed)?;
        revisions.insert(Component::Redis, built.revision);
        objects.extend(built.objects);
    }
    if let Some(managed) = &cluster.spec.mongodb.managed {
        let built = mongodb::desired(&ctx, managed)?;
        revisions.insert(Component::MongoDb, built.revision);
        objects.extend(built.objects);
    }
    let built = turn::desired(&ctx, &secrets.turn_ref)?;
    revisions.insert(Component::Turn, built.revision);
    objects.extend(built.objects);
    let built = signaling::desired(&ctx, &secrets, &endpoints)?;
    revisions.insert(Component::Signaling, built.revision);
    objects.extend(built.objects);
    objects.extend(network::desired(&ctx)?);
    // Day two: rollback and rollout order, autoscaling, secret rotation.
    let day_two = crate::rollout::day_two::decide(
        &ctx,
        &mut objects,
        &mut revisions,
        &input.fresh_secrets.turn_secret,
        input.now,
    )?;

    let mut actions = actions(&ctx, &objects);
    let mut status = status::compute(&ctx, &revisions, endpoints, &secrets.missing, input.now);
    let mut day_two_events = Vec::new();
    day_two.finish(
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
    let recheck_after_seconds = day_two.recheck_after_seconds(input.now);
    Ok(Plan {
        objects,
        actions,
        status,
        events,
        recheck_after_seconds,
    })
}

/// Applies for objects that are missing or differ, deletes for owned
/// children no longer desired.
fn actions(ctx: &Ctx<'_>, desired: &[DynamicObject]) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut wanted = BTreeSet::new();
    for object in desired {
        let (api_version, kind) = type_of(object);
        let name = object.name_any();
        wanted.insert((kind.clone(), name.clone()));
        let change = match ctx.observed.get(&kind, &name) {
            None => Some(Change::Create),
            Some(current) => {
                let want = serde_json::to_value(object).unwrap_or_default();
                let have = serde_json::to_value(current).unwrap_or_default();
                // An owner reference the desired object no longer carries
                // (the MongoDB credentials) is removed by an apply.
                let disowned = object.metadata.owner_references.is_none()
                    && current
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.uid == ctx.owner.uid);
                (disowned || !diff::is_subset(&want, &have)).then_some(Change::Update)
            }
        };
        if let Some(change) = change {
            actions.push(Action::Apply {
                api_version,
                kind,
                name,
                change,
            });
        }
    }
    let uid = ctx.owner.uid.as_str();
    for object in ctx.observed.iter() {
        let (api_version, kind) = type_of(object);
        let name = object.name_any();
        let prunable = PRUNABLE_KINDS
            .iter()
            .any(|(v, k)| *v == api_version && *k == kind);
        let owned = object
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if prunable && owned && !wanted.contains(&(kind.clone(), name.clone())) {
            actions.push(Action::Delete {
                api_version,
                kind,
                name,
            });
        }
    }
    actions
}

pub(crate) fn type_of(object: &DynamicObject) -> (String, String) {
    object
        .types
        .as_ref()
        .map(|t| (t.api_version.clone(), t.kind.clone()))
        .unwrap_or_default()
}

/// Converts a typed Kubernetes object into the uniform form plans carry.
pub(crate) fn to_dynamic<K: Serialize>(object: &K) -> Result<DynamicObject> {
    let value = serde_json::to_value(object).map_err(|e| Error::Serialize {
        what: "child object".into(),
        message: e.to_string(),
    })?;
    serde_json::from_value(value).map_err(|e| Error::Serialize {
        what: "child object".into(),
        message: e.to_string(),
    })
}

/// A component's objects plus the revision of its pod template.
pub(crate) struct Built {
    pub objects: Vec<DynamicObject>,
    pub revision: String,
}

/// The cluster name a plan was made for, for logs.
pub fn cluster_key(cluster: &VideoChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}
