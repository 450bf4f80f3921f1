//! Errors of the simulated cluster, and how the API answers them.

use serde_json::{Value, json};

/// One error type for the crate.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An answer the API gives as a `Status` object (404, 409, 410, 422...).
    #[error("{code} {reason}: {message}")]
    Api {
        code: u16,
        reason: &'static str,
        message: String,
    },
    #[error("cannot read the CRD {path}: {source}")]
    Crd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the CRD: {0}")]
    CrdParse(String),
    #[error("cannot bind the API listener: {0}")]
    Bind(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    /// The pod runtime or its network (namespaces, processes, volumes).
    #[error("pod runtime: {0}")]
    Runtime(String),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;

impl SimError {
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::Api {
            code: 404,
            reason: "NotFound",
            message: format!("{what} \"{name}\" not found"),
        }
    }
    pub fn already_exists(what: &str, name: &str) -> Self {
        Self::Api {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{what} \"{name}\" already exists"),
        }
    }
    pub fn conflict(message: String) -> Self {
        Self::Api {
            code: 409,
            reason: "Conflict",
            message,
        }
    }
    pub fn invalid(message: String) -> Self {
        Self::Api {
            code: 422,
            reason: "Invalid",
            message,
        }
    }
    pub fn bad_request(message: String) -> Self {
        Self::Api {
            code: 400,
            reason: "BadRequest",
            message,
        }
    }
    pub fn gone(message: String) -> Self {
        Self::Api {
            code: 410,
            reason: "Expired",
            message,
        }
    }
    pub fn unsupported_media(message: String) -> Self {
        Self::Api {
            code: 415,
            reason: "UnsupportedMediaType",
            message,
        }
    }

    /// HTTP status code of the answer.
    pub fn code(&self) -> u16 {
        match self {
            Self::Api { code, .. } => *code,
            _ => 500,
        }
    }

    /// The `Status` body a real API server sends.
    pub fn status_body(&self) -> Value {
        let (code, reason, message) = match self {
            Self::Api {
                code,
                reason,
                message,
            } => (*code, *reason, message.clone()),
            other => (500, "InternalError", other.to_string()),
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        })
    }
}
