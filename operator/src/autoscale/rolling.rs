//! Whether a component rolls out, as the scaler sees it: a scale-down waits
//! while it does.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::labels::Component;
use crate::rollout::decision::{RolloutDecision, TemplateChoice};
use crate::rollout::revision::{pod_revision, revision_of};

/// What rolls out in `component`, when something does: this plan changes
/// the Deployment's template, the Deployment still runs pods of an older
/// template, or the live pods carry more than one revision.
pub fn rolling_out(
    component: Component,
    decision: Option<&RolloutDecision>,
    deployment: &Deployment,
    pods: &[Pod],
) -> Option<String> {
    let running = revision_of(&deployment.spec.template);
    let applied = decision.and_then(|d| match &d.template {
        TemplateChoice::Desired => Some(d.desired_revision.as_str()),
        TemplateChoice::LastGood { revision } => Some(revision.as_str()),
        TemplateChoice::Current => None,
    });
    // (A template without a revision was not rendered by the operator,
    // e.g. a trimmed `plan` input: it tells nothing.)
    if let (Some(applied), Some(running)) = (applied, running)
        && running != applied
    {
        return Some(format!("{} revision {applied}", component.as_str()));
    }
    if let Some(status) = &deployment.status
        && status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0)
    {
        return Some(format!(
            "{} (old pods still running: {} of {} updated)",
            component.as_str(),
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0)
        ));
    }
    let mut revisions: Vec<&str> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(pod_revision)
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    (revisions.len() > 1).then(|| {
        format!(
            "{} (pods of revisions {})",
            component.as_str(),
            revisions.join(", ")
        )
    })
}
