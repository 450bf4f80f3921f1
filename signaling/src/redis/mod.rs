//! Redis backend: connection management with reconnect and a circuit
//! breaker, the cross-instance bus, presence and session state, the Redis
//! Streams reliable queue with retries and dead letters, chat webhooks on
//! that queue, and the assembly of cluster mode.

pub mod breaker;
pub mod bus;
pub mod cluster;
pub mod connection;
pub mod dead_letters;
pub mod error;
pub mod presence;
pub mod queue;
pub mod secret;
pub mod sessions;
pub mod webhook;

pub use breaker::CircuitBreaker;
pub use cluster::{ClusterArgs, cluster_backends, is_cluster_mode};
pub use connection::{RedisConfig, RedisConnection};
pub use error::BackendError;
pub use queue::{
    DeadLetter, Job, JobFailure, JobHandler, QueueConfig, QueueDepth, QueueMetrics, ReliableQueue,
};
pub use secret::{read_secret, redact_url};
