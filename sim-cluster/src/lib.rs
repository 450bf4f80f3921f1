//! A simulated Kubernetes cluster for the operator's end-to-end tests.
//!
//! An API server on loopback that `kube::Client` talks to unchanged (list
//! and watch with resourceVersion, server-side apply by field manager, the
//! status subresource, generation, 409 and 422 as a real server answers
//! them, the CRD's schema and CEL rules on admission, garbage collection,
//! finalizers), plus the controllers a cluster runs after the operator
//! writes. docs/testing.md says what it does and what it does not.
//! Test support only: never shipped.

pub mod admission;
pub mod cluster;
pub mod control_loop;
pub mod controllers;
pub mod error;
pub mod fields;
pub mod gc;
pub mod kubelet;
pub mod network;
pub mod resources;
pub mod runtime;
pub mod selector;
pub mod server;
pub mod store;

pub use cluster::{SimCluster, SimClusterOptions};
pub use error::{Result, SimError};
