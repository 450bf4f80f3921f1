//! The library's one error type.

/// Everything that can go wrong in the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API call failed while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// The VideoChatCluster CRD is not installed in the cluster.
    #[error(
        "the VideoChatCluster CRD (videochatclusters.videochat.dev) is not installed; \
         install it with `videochat-operator crd | kubectl apply --server-side -f -` \
         or `helm install videochat-operator charts/videochat-operator`"
    )]
    CrdMissing,

    /// An input document (YAML or JSON) could not be read.
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },

    /// An input VideoChatCluster that the API server would refuse.
    #[error("{what} would be refused by the CRD's schema and rules: {reasons}")]
    Refused { what: String, reasons: String },

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The resource has no name or namespace where one is required.
    #[error("VideoChatCluster is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// Serialising an object failed (a bug, not bad input).
    #[error("cannot serialise {what}: {message}")]
    Serialize { what: String, message: String },

    /// The admin HTTP server failed.
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// A pod's `/metrics` body did not yield a usable load figure.
    #[error("cannot read metric {metric}: {message}")]
    MetricsText { metric: String, message: String },

    /// A pod's admin endpoint (metrics scrape or drain request) failed.
    #[error("pod {pod}: {action} failed: {message}")]
    PodEndpoint {
        pod: String,
        action: String,
        message: String,
    },

    /// The leader election Lease could not be read or written.
    #[error("leader election on Lease {lease}: {message}")]
    Lease { lease: String, message: String },
}

impl Error {
    /// A short, bounded label for metrics (`errors_total{kind=...}`).
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 404 => "not_found",
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::CrdMissing => "crd_missing",
            Error::Parse { .. } => "parse",
            Error::Refused { .. } => "refused",
            Error::Io { .. } => "io",
            Error::MissingMetadata(_) => "metadata",
            Error::Serialize { .. } => "serialize",
            Error::Admin { .. } => "admin",
            Error::MetricsText { .. } => "metrics_text",
            Error::PodEndpoint { .. } => "pod_endpoint",
            Error::Lease { .. } => "lease",
        }
    }

    pub(crate) fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
