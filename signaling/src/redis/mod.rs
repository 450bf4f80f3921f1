//! Redis backend: connection management with reconnect and a circuit
//! breaker, the Redis Streams reliable queue with retries and dead letters,
//! and (with the app's backend traits) the cross-instance bus, presence and
//! session state.

pub mod breaker;
pub mod connection;
pub mod error;
pub mod queue;
pub mod secret;

pub use breaker::CircuitBreaker;
pub use connection::{RedisConfig, RedisConnection};
pub use error::BackendError;
pub use queue::{
    DeadLetter, Job, JobFailure, JobHandler, QueueConfig, QueueDepth, QueueMetrics, ReliableQueue,
};
pub use secret::{read_secret, redact_url};
