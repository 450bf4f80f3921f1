//! The resource types the simulated API serves, for routing and discovery.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Whether `/status` is a subresource kept apart from the main object.
    pub status_subresource: bool,
    pub short_names: Vec<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Built into Kubernetes (list items carry no apiVersion/kind).
    pub fn is_builtin(&self) -> bool {
        !self.group.contains('.') || self.group.ends_with(".k8s.io")
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
        status_subresource: status,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The built-in types the operator, its controllers and kubectl use.
pub fn builtin_types() -> Vec<ResourceType> {
    vec![
        builtin("", "v1", "Pod", "pods", true, true, &["po"]),
        builtin("", "v1", "Service", "services", true, true, &["svc"]),
        builtin("", "v1", "Endpoints", "endpoints", true, false, &["ep"]),
        builtin("", "v1", "Secret", "secrets", true, false, &[]),
        builtin("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
        builtin("", "v1", "Event", "events", true, false, &["ev"]),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            true,
            &["pvc"],
        ),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            false,
            &["sa"],
        ),
        builtin("", "v1", "Node", "nodes", false, true, &["no"]),
        builtin("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            true,
            &["deploy"],
        ),
        builtin(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            true,
            true,
            &["rs"],
        ),
        builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            true,
            &["sts"],
        ),
        builtin(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            true,
            false,
            &[],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            false,
            &[],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            false,
            &["ev"],
        ),
        builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            false,
            &[],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            true,
            true,
            &["ing"],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            false,
            &["netpol"],
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            true,
            &["pdb"],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            true,
            &["crd"],
        ),
    ]
}

/// The served type of a CRD (its first served version).
pub fn from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let version = spec
        .get("versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))?;
    Some(ResourceType {
        group: spec.get("group")?.as_str()?.into(),
        version: version.get("name")?.as_str()?.into(),
        kind: names.get("kind")?.as_str()?.into(),
        plural: names.get("plural")?.as_str()?.into(),
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        status_subresource: version.pointer("/subresources/status").is_some(),
        short_names: names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// `APIResource` entry of discovery.
pub fn discovery_entry(resource: &ResourceType) -> Value {
    let mut entry = json!({
        "name": resource.plural,
        "singularName": resource.kind.to_lowercase(),
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
    });
    if !resource.short_names.is_empty() {
        entry["shortNames"] = json!(resource.short_names);
    }
    entry
}
