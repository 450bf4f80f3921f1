//! videochat-operator: the `VideoChatCluster` custom resource, the planning
//! core that turns a resource plus observed objects into desired objects,
//! actions and status, and the thin controller that applies those plans.
//!
//! The split is deliberate: everything that decides lives in [`plan`] as pure
//! functions (no I/O, no clock, no randomness: those come in as inputs), so the
//! `plan` subcommand, the controller and the tests all run the same code.

pub mod admin;
pub mod admission;
pub mod autoscale;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod error;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod node_addresses;
pub mod observed;
pub mod plan;
pub mod resource;
pub mod rollout;
pub mod rotation;
#[cfg(any(test, feature = "test-double"))]
pub mod testing;

pub use error::Error;
pub use resource::{VideoChatCluster, VideoChatClusterSpec, VideoChatClusterStatus};

/// The one field manager for every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "videochat-operator";

/// The crate version; image tags default to it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
