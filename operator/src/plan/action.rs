//! The writes a plan asks for: applies of objects that are missing or
//! differ, deletes of children no longer desired, and the decisions'
//! rollbacks, scalings, drains and pod deletions.

use super::diff;
use crate::objects::type_of;
use crate::render::Ctx;
use kube::ResourceExt;
use kube::api::DynamicObject;
use serde::Serialize;
use std::collections::BTreeSet;

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

/// Applies for objects that are missing or differ, deletes for owned
/// children no longer desired.
pub(crate) fn object_actions(ctx: &Ctx<'_>, desired: &[DynamicObject]) -> Vec<Action> {
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
