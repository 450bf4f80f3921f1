//! Shared set-up of the simulated-cluster tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};
use videochat_sim_cluster::{SimCluster, SimClusterOptions};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub async fn cluster() -> SimCluster {
    init_tracing();
    SimCluster::start(SimClusterOptions::default())
        .await
        .expect("the simulated cluster starts")
}

/// Polls `check` until it returns Some, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod helm_operator;
pub mod operator;
pub mod running;
