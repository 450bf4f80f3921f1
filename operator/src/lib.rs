//! videochat-operator: the `VideoChatCluster` custom resource, the planning
//! core that turns a resource plus observed objects into desired objects,
//! actions and status, and the thin controller that applies those plans.
//!
//! Layers, each importing only the ones below it (docs/operator.md, "Code
//! layout"):
//! - [`io`]: the controller, watch caches, leader election, pod scrapes and
//!   drain requests, the admin server. Nothing else imports it.
//! - [`plan`]: decide, then render, then writes, status and events.
//! - [`render`]: every child object, built once from spec + decisions.
//! - [`decisions`] and the deciders [`rollout`], [`autoscale`],
//!   [`rotation`]: pure functions of spec + observed state + `now`.
//! - leaves: [`resource`] (the CRD types), [`observed`], [`labels`] (names,
//!   labels, annotations), [`objects`], [`write_failure`], [`duration`],
//!   [`version`], [`error`].
//!
//! No clock, no randomness and no I/O below [`io`]: those come in as
//! inputs, so the `plan` subcommand, the controller and the tests all run
//! the same code.

pub mod admission;
pub mod autoscale;
pub mod cli;
pub mod decisions;
pub mod duration;
pub mod error;
pub mod io;
pub mod labels;
pub mod metrics;
pub mod objects;
pub mod observed;
pub mod plan;
pub mod render;
pub mod resource;
pub mod rollout;
pub mod rotation;
#[cfg(any(test, feature = "test-double"))]
pub mod testing;
pub mod version;
pub mod write_failure;

pub use error::Error;
pub use resource::{VideoChatCluster, VideoChatClusterSpec, VideoChatClusterStatus};

/// The one field manager for every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "videochat-operator";

pub use version::VERSION;
