//! Specs of the two databases: each either managed by the operator (a
//! StatefulSet with a volume) or external (a URL in a Secret).

use super::secret_ref::SecretKeyRef;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Redis: managed or external, exactly one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of redis.managed and redis.external"))]
pub struct RedisSpec {
    /// A Redis StatefulSet run by the operator (append-only file on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedisSpec>,
    /// An existing Redis; its URL (redis:// or rediss://) is in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDatabaseSpec>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            managed: Some(ManagedRedisSpec::default()),
            external: None,
        }
    }
}

/// MongoDB: managed or external, exactly one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of mongodb.managed and mongodb.external"))]
pub struct MongoDbSpec {
    /// A single-node MongoDB StatefulSet run by the operator, with generated credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedMongoDbSpec>,
    /// An existing MongoDB; its connection URI is in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDatabaseSpec>,
}

impl Default for MongoDbSpec {
    fn default() -> Self {
        Self {
            managed: Some(ManagedMongoDbSpec::default()),
            external: None,
        }
    }
}

/// A Redis run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedisSpec {
    /// Container image.
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// The volume for the append-only file.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Container resources. Defaults: requests cpu 50m, memory 64Mi; limit memory 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selection, affinity, tolerations, topology spread and image
    /// pull Secrets of the pods.
    #[serde(
        default,
        skip_serializing_if = "super::placement::PodPlacementSpec::is_empty"
    )]
    pub placement: super::placement::PodPlacementSpec,
}

impl Default for ManagedRedisSpec {
    fn default() -> Self {
        Self {
            image: default_redis_image(),
            storage: StorageSpec::default(),
            resources: None,
            placement: super::placement::PodPlacementSpec::default(),
        }
    }
}

fn default_redis_image() -> String {
    "redis:7.4-alpine".into()
}

/// A MongoDB run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedMongoDbSpec {
    /// Container image.
    #[serde(default = "default_mongodb_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// The data volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Container resources. Defaults: requests cpu 100m, memory 256Mi; limit memory 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selection, affinity, tolerations, topology spread and image
    /// pull Secrets of the pods.
    #[serde(
        default,
        skip_serializing_if = "super::placement::PodPlacementSpec::is_empty"
    )]
    pub placement: super::placement::PodPlacementSpec,
}

impl Default for ManagedMongoDbSpec {
    fn default() -> Self {
        Self {
            image: default_mongodb_image(),
            storage: StorageSpec::default(),
            resources: None,
            placement: super::placement::PodPlacementSpec::default(),
        }
    }
}

fn default_mongodb_image() -> String {
    "mongo:7.0".into()
}

/// A PersistentVolumeClaim template. Fixed once set: a StatefulSet's
/// volume claim templates are immutable, so a change could never be applied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("storage size and storageClassName cannot change once set (a StatefulSet's volume claims are immutable); to grow a volume, edit its PersistentVolumeClaim (see docs/operator.md)"))]
pub struct StorageSpec {
    /// Requested size, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".into()
}

/// A database that the operator does not run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDatabaseSpec {
    /// The Secret key holding the connection URL.
    pub url_secret_ref: SecretKeyRef,
}
