//! The one error type of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong when configuring or starting the relay, or
/// when a client's credential is checked.
///
/// Configuration errors name the setting (as its command-line flag) and why,
/// so `main` can print them as one line.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("{setting}: {reason}")]
    Config {
        setting: &'static str,
        reason: String,
    },
    #[error("--secret-file {path}: {reason}")]
    SecretFile { path: PathBuf, reason: String },
    #[error("{setting}: cannot listen on {addr}: {source}")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A REST API username does not start with a unix expiry time.
    #[error("username does not start with a unix expiry time")]
    UsernameMalformed,
    #[error("username has expired")]
    UsernameExpired,
    /// The password matches none of the current secrets.
    #[error("password does not match any secret")]
    BadPassword,
    #[error("TURN server: {0}")]
    Server(#[from] turn::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TurnError {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        TurnError::Config {
            setting,
            reason: reason.into(),
        }
    }
}
