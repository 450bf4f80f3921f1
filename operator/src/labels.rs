//! Names, labels and annotations of the children. One place, so the
//! deciders, the rendering, the controller's lookups and the tests agree on
//! them.

use std::collections::BTreeMap;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const VERSION: &str = "app.kubernetes.io/version";

/// Pod template annotation: hash of the template; changes roll the pods.
pub const REVISION_ANNOTATION: &str = "videochat.dev/revision";
/// Pod template annotation: hash of the component's configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "videochat.dev/config-hash";

/// Pod annotation: when the operator asked the pod to drain (RFC 3339).
pub const DRAINING_SINCE_ANNOTATION: &str = "videochat.dev/draining-since";
/// The ReplicaSet removes pods with the lowest cost first.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Cost given to draining pods: below the default 0 of every other pod.
pub const DRAINING_DELETION_COST: i32 = -1000;
/// Secret annotation: creation time of each line of the TURN secret file,
/// comma separated, in the same order.
pub const SECRET_CREATED_ANNOTATION: &str = "videochat.dev/secret-created-at";

pub const APP_NAME: &str = "videochat";
pub const MANAGER: &str = "videochat-operator";

/// The parts of a VideoChatCluster that run as pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Signaling,
    Turn,
    Redis,
    MongoDb,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Signaling,
        Component::Turn,
        Component::Redis,
        Component::MongoDb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Signaling => "signaling",
            Component::Turn => "turn",
            Component::Redis => "redis",
            Component::MongoDb => "mongodb",
        }
    }

    /// Name of the component's workload (and its main Service).
    pub fn workload_name(self, cluster: &str) -> String {
        format!("{cluster}-{}", self.as_str())
    }
}

/// Labels that select a component's pods (stable: never add the version here,
/// Deployment selectors are immutable).
pub fn selector(cluster: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), APP_NAME.to_string()),
        (INSTANCE.to_string(), cluster.to_string()),
        (COMPONENT.to_string(), component.as_str().to_string()),
    ])
}

/// Labels on every child of a cluster (component-less children like Secrets
/// use `component = None`).
pub fn labels(cluster: &str, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (NAME.to_string(), APP_NAME.to_string()),
        (INSTANCE.to_string(), cluster.to_string()),
        (PART_OF.to_string(), APP_NAME.to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (VERSION.to_string(), crate::version::VERSION.to_string()),
    ]);
    if let Some(component) = component {
        labels.insert(COMPONENT.to_string(), component.as_str().to_string());
    }
    labels
}

/// Label selector string matching every child of a cluster.
pub fn children_selector(cluster: &str) -> String {
    format!("{NAME}={APP_NAME},{INSTANCE}={cluster},{MANAGED_BY}={MANAGER}")
}

pub fn turn_secret_name(cluster: &str) -> String {
    format!("{cluster}-turn-secret")
}
pub fn redis_secret_name(cluster: &str) -> String {
    format!("{cluster}-redis-credentials")
}
pub fn mongodb_secret_name(cluster: &str) -> String {
    format!("{cluster}-mongodb-credentials")
}
pub fn config_map_name(cluster: &str, component: Component) -> String {
    format!("{cluster}-{}-config", component.as_str())
}
pub fn turn_udp_service_name(cluster: &str) -> String {
    format!("{cluster}-turn-udp")
}
pub fn turn_tcp_service_name(cluster: &str) -> String {
    format!("{cluster}-turn-tcp")
}
/// Key of the generated TURN secret (one secret per line, newest last).
pub const TURN_SECRET_KEY: &str = "turn-secret";

/// Name of the Secret holding the admin bearer token of a cluster's servers.
pub fn admin_token_secret_name(cluster: &str) -> String {
    format!("{cluster}-admin-token")
}
/// Key of the token in that Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
