//! Rendering: every child object, built once from the spec and the
//! decisions (replicas, the pod template each workload gets, the TURN secret
//! file). Rendering reads the deciders' output; the deciders never read
//! rendered objects.

mod context;
mod controller_revisions;
mod endpoints;
mod hash;
mod mongodb;
mod network;
mod pods;
mod redis;
mod render_objects;
mod secrets;
mod signaling;
mod turn;
mod workload;

pub use context::{Ctx, SpecTemplate};
pub use endpoints::endpoints;
pub use render_objects::{SpecTemplates, objects, spec_templates};
pub use secrets::{
    FreshSecrets, MONGODB_URI_KEY, MONGODB_USERNAME, REDIS_URL_KEY, TURN_SECRET_KEY,
};
