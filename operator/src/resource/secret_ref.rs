//! Small types the spec blocks share.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The default registry path of the project's images.
pub const IMAGE_REGISTRY: &str = "ghcr.io/videochat-dev";

/// A key in a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
