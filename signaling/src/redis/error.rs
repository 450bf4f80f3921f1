//! Errors of the Redis and MongoDB backends.

/// What went wrong talking to a backend. `Unavailable` means "try again
/// later" (down, breaker open, timeout); the others are not retryable.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A connection string or setting is malformed; names the setting.
    #[error("invalid {setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    /// The dependency is down, slow, or its circuit breaker is open.
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    /// The dependency answered with something we cannot use.
    #[error("{backend} returned an unexpected reply: {reason}")]
    Protocol {
        backend: &'static str,
        reason: String,
    },
}

impl BackendError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }
}

impl From<redis::RedisError> for BackendError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                    | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            )
        {
            BackendError::Unavailable {
                backend: "redis",
                reason: e.to_string(),
            }
        } else {
            BackendError::Protocol {
                backend: "redis",
                reason: e.to_string(),
            }
        }
    }
}

impl From<BackendError> for crate::error::SignalingError {
    fn from(e: BackendError) -> Self {
        use crate::error::SignalingError;
        match e {
            BackendError::Config { setting, reason } => SignalingError::Config { setting, reason },
            BackendError::Unavailable {
                backend: "mongodb",
                reason,
            } => SignalingError::StoreUnavailable(reason),
            BackendError::Protocol {
                backend: "mongodb",
                reason,
            } => SignalingError::StoreCorrupt(reason),
            BackendError::Unavailable { backend, reason }
            | BackendError::Protocol { backend, reason } => {
                SignalingError::BusUnavailable(format!("{backend}: {reason}"))
            }
        }
    }
}
