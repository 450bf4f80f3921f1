//! The crate's one error type.

/// Everything that can go wrong inside the signaling library.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// A setting is invalid; the program stops at start with this message.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    /// The store cannot make a write durable right now; the client retries.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// The store holds data it cannot read back.
    #[error("store data corrupt: {0}")]
    StoreCorrupt(String),
    #[error("room {0} already exists")]
    RoomExists(String),
    #[error("bus unavailable: {0}")]
    BusUnavailable(String),
    #[error("TURN relay: {0}")]
    Turn(String),
    /// A room token is refused (no token, or one that does not verify).
    #[error("token is missing")]
    TokenMissing,
    #[error("token is malformed")]
    TokenMalformed,
    /// The token's header names another algorithm than the configured one.
    #[error("token algorithm must be {0}")]
    TokenAlgorithm(&'static str),
    #[error("token signature does not match")]
    TokenSignature,
    #[error("token has expired")]
    TokenExpired,
    #[error("token is not valid yet (nbf)")]
    TokenNotYetValid,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl SignalingError {
    pub fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            setting,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = SignalingError> = std::result::Result<T, E>;
