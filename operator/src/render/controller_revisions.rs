//! ControllerRevisions keeping the templates the rollout decisions judged
//! good.

use super::context::Ctx;
use crate::error::Result;
use crate::objects::to_dynamic;
use crate::rollout::RolloutDecisions;
use crate::rollout::history::controller_revision;
use kube::api::DynamicObject;

pub(crate) fn objects(ctx: &Ctx<'_>, rollout: &RolloutDecisions) -> Result<Vec<DynamicObject>> {
    let generation = ctx.cluster.metadata.generation.unwrap_or(0);
    rollout
        .records
        .iter()
        .map(|(component, record)| {
            to_dynamic(&controller_revision(
                &ctx.name,
                &ctx.namespace,
                ctx.owner.clone(),
                *component,
                record,
                generation,
            ))
        })
        .collect()
}
