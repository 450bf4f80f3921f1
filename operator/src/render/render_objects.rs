//! The two steps of rendering: the pod templates the spec asks for (their
//! revisions are what the rollout decisions judge), then every object from
//! the spec and the decisions.

use std::collections::BTreeMap;

use kube::api::DynamicObject;

use super::context::{Ctx, SpecTemplate};
use super::secrets::{self, FreshSecrets, SecretRefs};
use super::{controller_revisions, mongodb, network, redis, signaling, turn};
use crate::decisions::Decisions;
use crate::error::Result;
use crate::labels::Component;
use crate::resource::Endpoints;

/// The pod templates the spec asks for, and where the configuration lives.
pub struct SpecTemplates {
    templates: BTreeMap<Component, SpecTemplate>,
    refs: SecretRefs,
    /// The published endpoints, for what reaches pods as files rather than
    /// through their templates (the TURN URIs).
    endpoints: Endpoints,
}

impl SpecTemplates {
    /// Revision of each workload's template.
    pub fn revisions(&self) -> BTreeMap<Component, String> {
        self.templates
            .iter()
            .map(|(component, t)| (*component, t.revision.clone()))
            .collect()
    }

    /// Referenced Secrets (or keys) that were looked up and not found.
    pub fn missing_secrets(&self) -> &[String] {
        &self.refs.missing
    }
}

/// Renders the pod template of every workload the spec asks for.
pub fn spec_templates(ctx: &Ctx<'_>, endpoints: &Endpoints) -> SpecTemplates {
    let spec = &ctx.cluster.spec;
    let refs = secrets::refs(ctx);
    let mut templates = BTreeMap::new();
    if let Some(managed) = &spec.redis.managed {
        templates.insert(Component::Redis, redis::template(ctx, managed));
    }
    if let Some(managed) = &spec.mongodb.managed {
        templates.insert(Component::MongoDb, mongodb::template(ctx, managed));
    }
    templates.insert(Component::Turn, turn::template(ctx, &refs));
    templates.insert(Component::Signaling, signaling::template(ctx, &refs));
    SpecTemplates {
        templates,
        refs,
        endpoints: endpoints.clone(),
    }
}

/// Every object the cluster should have, in apply order: Secrets, the
/// databases, TURN, signaling, network policies and budgets, then the
/// ControllerRevisions of newly good templates.
pub fn objects(
    ctx: &Ctx<'_>,
    templates: &SpecTemplates,
    decisions: &Decisions,
    fresh: &FreshSecrets,
) -> Result<Vec<DynamicObject>> {
    let spec = &ctx.cluster.spec;
    // The template a workload gets: the one the rollout decisions kept (the
    // last good one, or the running one while an earlier component rolls),
    // else the spec's.
    let template = |component: Component| {
        decisions
            .rollout
            .kept_templates
            .get(&component)
            .map(|kept| kept.template.clone())
            .or_else(|| {
                templates
                    .templates
                    .get(&component)
                    .map(|t| t.template.clone())
            })
            .unwrap_or_default()
    };
    let config = |component: Component| {
        templates
            .templates
            .get(&component)
            .map(|t| t.config.clone())
            .unwrap_or_default()
    };

    let mut objects = secrets::objects(ctx, fresh, decisions.turn_secret.as_ref())?;
    if let Some(managed) = &spec.redis.managed {
        objects.extend(redis::objects(ctx, managed, template(Component::Redis))?);
    }
    if let Some(managed) = &spec.mongodb.managed {
        objects.extend(mongodb::objects(
            ctx,
            managed,
            template(Component::MongoDb),
        )?);
    }
    // The scaler sets a Deployment's replicas; TURN as a StatefulSet (a
    // Service per relay) keeps the held count.
    let turn_replicas = match spec.turn.exposure.mode.workload_kind() {
        "Deployment" => decisions.deployment_replicas(Component::Turn),
        _ => decisions.held(Component::Turn),
    };
    objects.extend(turn::objects(
        ctx,
        &config(Component::Turn),
        template(Component::Turn),
        turn_replicas,
    )?);
    objects.extend(signaling::objects(
        ctx,
        &config(Component::Signaling),
        &templates.endpoints,
        template(Component::Signaling),
        decisions.deployment_replicas(Component::Signaling),
    )?);
    objects.extend(network::desired(ctx)?);
    objects.extend(controller_revisions::objects(ctx, &decisions.rollout)?);
    Ok(objects)
}
