//! Status from observed objects: per-component pods and revisions,
//! conditions, phase.

use super::conditions::{DEGRADED, PROGRESSING, READY, condition, finish_conditions};
use crate::labels::{self, Component};
use crate::render::Ctx;
use crate::resource::{
    ComponentStatus, ComponentsStatus, Endpoints, Phase, VideoChatCluster, VideoChatClusterStatus,
};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use std::collections::BTreeMap;

/// How one component's workload is doing.
struct Observation {
    status: ComponentStatus,
    rolled_out: bool,
    healthy: bool,
    failure: Option<String>,
}

fn observe(
    ctx: &Ctx<'_>,
    component: Component,
    desired: i32,
    revision: &str,
    previous: Option<&ComponentStatus>,
) -> Observation {
    let name = component.workload_name(&ctx.name);
    let rollout = &ctx.cluster.spec.rollout;
    // TURN runs as a StatefulSet when each relay pod has its own Service.
    let turn_in_stateful_set = component == Component::Turn
        && ctx.cluster.spec.turn.exposure.mode.workload_kind() == "StatefulSet";
    let (exists, ready, updated, rolled_out, failure) = match component {
        Component::Signaling | Component::Turn if !turn_in_stateful_set => {
            match ctx.observed.typed::<Deployment>("Deployment", &name) {
                None => (false, 0, 0, false, None),
                Some(d) => {
                    let generation = d.metadata.generation.unwrap_or(0);
                    let observed_revision = template_revision(d.spec.template.metadata.as_ref());
                    let status = d.status.unwrap_or_default();
                    let ready = status.ready_replicas.unwrap_or(0);
                    let updated = status.updated_replicas.unwrap_or(0);
                    let total = status.replicas.unwrap_or(0);
                    let current = observed_revision.as_deref() == Some(revision);
                    let rolled_out = current
                        && status.observed_generation.unwrap_or(0) >= generation
                        && updated >= desired
                        && total == updated;
                    // Judged only on a status of the current generation, and
                    // only until the revision has been judged good.
                    let judged = current
                        && status.observed_generation.unwrap_or(0) >= generation
                        && previous
                            .and_then(|p| p.rollout.as_ref())
                            .and_then(|r| r.last_good_revision.as_deref())
                            != Some(revision);
                    let failure = status.conditions.iter().flatten().find_map(|c| {
                        (judged
                            && c.type_.as_deref() == Some("Progressing")
                            && c.status.as_deref() == Some("False")
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                        .then(|| {
                            format!(
                                "{} revision did not become ready within {}s",
                                component.as_str(),
                                rollout.progress_deadline_seconds
                            )
                        })
                    });
                    (
                        true,
                        ready,
                        if current { updated } else { 0 },
                        rolled_out,
                        failure,
                    )
                }
            }
        }
        Component::Signaling | Component::Turn | Component::Redis | Component::MongoDb => {
            match ctx.observed.typed::<StatefulSet>("StatefulSet", &name) {
                None => (false, 0, 0, false, None),
                Some(s) => {
                    let generation = s.metadata.generation.unwrap_or(0);
                    let observed_revision = template_revision(s.spec.template.metadata.as_ref());
                    let status = s.status.unwrap_or_default();
                    let ready = status.ready_replicas.unwrap_or(0);
                    let updated = status.updated_replicas.unwrap_or(0);
                    let current = observed_revision.as_deref() == Some(revision);
                    let same_revision = match (&status.current_revision, &status.update_revision) {
                        (Some(a), Some(b)) => a == b,
                        _ => updated >= desired,
                    };
                    let rolled_out = current
                        && status.observed_generation.unwrap_or(0) >= generation
                        && same_revision;
                    (
                        true,
                        ready,
                        if current { updated } else { 0 },
                        rolled_out,
                        None,
                    )
                }
            }
        }
    };
    let enough_ready =
        i64::from(ready) * 100 >= i64::from(desired) * i64::from(rollout.min_ready_percent);
    let healthy = exists && rolled_out && enough_ready;
    let last_good_revision = if healthy {
        Some(revision.to_string())
    } else {
        previous.and_then(|p| p.last_good_revision.clone())
    };
    Observation {
        status: ComponentStatus {
            desired,
            ready,
            updated,
            summary: format!("{ready}/{desired}"),
            revision: revision.to_string(),
            last_good_revision,
            // Filled in by the day-two step (rollout tracking, autoscaling).
            rollout: None,
            autoscaling: None,
        },
        rolled_out,
        healthy,
        failure,
    }
}

fn template_revision(
    meta: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> Option<String> {
    meta?
        .annotations
        .as_ref()?
        .get(labels::REVISION_ANNOTATION)
        .cloned()
}

/// The status of a valid spec, from what was observed.
pub(crate) fn compute(
    ctx: &Ctx<'_>,
    revisions: &BTreeMap<Component, String>,
    endpoints: Endpoints,
    missing_secrets: &[String],
    now: &str,
) -> VideoChatClusterStatus {
    let cluster = ctx.cluster;
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let mut components = ComponentsStatus::default();
    let mut observations = Vec::new();
    for (&component, revision) in revisions {
        // Judged against the replicas held before this reconcile's scaling
        // decision (the day-two report sets the scaler's desired count).
        let desired = ctx.held(component);
        let slot = match component {
            Component::Signaling => &mut components.signaling,
            Component::Turn => &mut components.turn,
            Component::Redis => &mut components.redis,
            Component::MongoDb => &mut components.mongodb,
        };
        let previous_component = match component {
            Component::Signaling => previous.components.signaling.as_ref(),
            Component::Turn => previous.components.turn.as_ref(),
            Component::Redis => previous.components.redis.as_ref(),
            Component::MongoDb => previous.components.mongodb.as_ref(),
        };
        let observation = observe(ctx, component, desired, revision, previous_component);
        *slot = Some(observation.status.clone());
        observations.push((component, observation));
    }

    let summary = observations
        .iter()
        .map(|(c, o)| format!("{} {}", c.as_str(), o.status.summary))
        .collect::<Vec<_>>()
        .join(", ");
    let failures: Vec<String> = observations
        .iter()
        .filter_map(|(_, o)| o.failure.clone())
        .collect();
    let degraded = if !missing_secrets.is_empty() {
        Some((
            "SecretNotFound",
            format!(
                "referenced Secret keys not found: {}",
                missing_secrets.join(", ")
            ),
        ))
    } else if !failures.is_empty() {
        Some(("ProgressDeadlineExceeded", failures.join("; ")))
    } else {
        None
    };
    let all_healthy = observations.iter().all(|(_, o)| o.healthy);
    let rolling: Vec<String> = observations
        .iter()
        .filter(|(_, o)| !o.rolled_out)
        .map(|(c, o)| {
            format!(
                "{} revision {} ({} of {} updated)",
                c.as_str(),
                o.status.revision,
                o.status.updated,
                o.status.desired
            )
        })
        .collect();
    let turn_public = !endpoints.turn_uris.is_empty() && endpoints.signaling_url.is_some();

    let mut conditions = Vec::new();
    let ready = if !all_healthy {
        condition(
            READY,
            false,
            "ComponentsNotReady",
            format!("ready pods: {summary}"),
        )
    } else if !turn_public {
        condition(
            READY,
            false,
            "WaitingForEndpoints",
            "pods are ready; waiting for the relays' addresses (a load-balancer IP, or a node address of the type turn.exposure.nodeAddressType; or set turn.exposure.host)".into(),
        )
    } else {
        condition(
            READY,
            true,
            "AllComponentsReady",
            format!("ready pods: {summary}"),
        )
    };
    conditions.push(ready);
    conditions.push(if rolling.is_empty() {
        condition(
            PROGRESSING,
            false,
            "RolloutComplete",
            "every component runs its current revision".into(),
        )
    } else {
        condition(
            PROGRESSING,
            true,
            "RolloutInProgress",
            format!("rolling out: {}", rolling.join(", ")),
        )
    });
    conditions.push(match &degraded {
        Some((reason, message)) => condition(DEGRADED, true, reason, message.clone()),
        None => condition(DEGRADED, false, "AsExpected", "no failures observed".into()),
    });

    let is_ready = conditions[0].status == "True";
    let phase = if degraded.is_some() {
        Phase::Degraded
    } else if is_ready {
        Phase::Running
    } else if observations.iter().all(|(_, o)| o.status.ready == 0) {
        // Nothing is serving yet: first creation (or every pod down).
        Phase::Pending
    } else {
        Phase::Progressing
    };
    VideoChatClusterStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: finish_conditions(conditions, &previous.conditions, generation, now),
        components,
        endpoints,
    }
}

/// Status for a spec that breaks the schema rules: nothing is applied, the
/// last known components and endpoints stay.
pub(crate) fn invalid_spec(
    cluster: &VideoChatCluster,
    errors: &[String],
    now: &str,
) -> VideoChatClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let message = format!("spec is invalid, nothing applied: {}", errors.join("; "));
    let conditions = vec![
        condition(READY, false, "InvalidSpec", message.clone()),
        condition(
            PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for a valid spec".into(),
        ),
        condition(DEGRADED, true, "InvalidSpec", message),
    ];
    VideoChatClusterStatus {
        observed_generation: generation,
        phase: Some(Phase::Degraded),
        conditions: finish_conditions(conditions, &previous.conditions, generation, now),
        components: previous.components,
        endpoints: previous.endpoints,
    }
}
