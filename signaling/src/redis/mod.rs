//! Redis backend: connection management with reconnect and a circuit
//! breaker, the cross-instance bus, presence and session state, the Redis
//! Streams reliable queue with retries and dead letters, and chat webhooks
//! on that queue. Cluster mode is assembled in `crate::backends`.

pub mod breaker;
pub mod bus;
pub mod connection;
pub mod dead_letters;
pub mod error;
pub mod presence;
pub mod queue;
pub mod secret;
pub mod sessions;
pub mod webhook;

pub use breaker::CircuitBreaker;
pub use connection::{RedisConfig, RedisConnection};
pub use error::BackendError;
pub use queue::{
    DeadLetter, Job, JobFailure, JobHandler, QueueConfig, QueueDepth, QueueMetrics, ReliableQueue,
};
pub use secret::{read_secret, redact_url};
