//! A container's environment and command line as a kubelet renders them:
//! envFrom (ConfigMap and Secret, with prefix), env values and valueFrom
//! (secretKeyRef, configMapKeyRef, fieldRef), `$(VAR)` expansion in env
//! values, command and args.

use crate::controllers::{name, namespace, resource, str_at};
use crate::store::Store;
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a container cannot start yet (the kubelet's CreateContainerConfigError).
pub type ConfigError = String;

/// The string values of a ConfigMap or Secret (Secret data decoded).
pub fn object_data(
    store: &Store,
    kind: &str,
    ns: &str,
    object_name: &str,
) -> Option<BTreeMap<String, Vec<u8>>> {
    let plural = if kind == "Secret" {
        "secrets"
    } else {
        "configmaps"
    };
    let resource = resource(store, "", plural)?;
    let object = store.get(&resource, Some(ns), object_name).ok()?;
    let mut data = BTreeMap::new();
    if kind == "Secret" {
        for (key, value) in object
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .unwrap_or_default();
            data.insert(key.clone(), bytes);
        }
        for (key, value) in object
            .get("stringData")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            data.insert(
                key.clone(),
                value.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
    } else {
        for (key, value) in object
            .get("data")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            data.insert(
                key.clone(),
                value.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (key, value) in object
            .get("binaryData")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .unwrap_or_default();
            data.insert(key.clone(), bytes);
        }
    }
    Some(data)
}

/// `$(NAME)` replaced by an earlier variable, `$$(NAME)` kept as `$(NAME)`,
/// unknown references left as they are.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let var = &inner[..close];
            match vars.get(var) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(var);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API field of the pod.
fn field(pod: &Value, path: &str, pod_ip: &str, host_ip: &str) -> Option<String> {
    let text = match path {
        "metadata.name" => name(pod).to_owned(),
        "metadata.namespace" => namespace(pod).to_owned(),
        "metadata.uid" => str_at(pod, "/metadata/uid").to_owned(),
        "spec.nodeName" => str_at(pod, "/spec/nodeName").to_owned(),
        "spec.serviceAccountName" => str_at(pod, "/spec/serviceAccountName").to_owned(),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_owned(),
        other => {
            let (map, key) = if let Some(key) = other.strip_prefix("metadata.labels['") {
                ("labels", key)
            } else if let Some(key) = other.strip_prefix("metadata.annotations['") {
                ("annotations", key)
            } else {
                return None;
            };
            let key = key.strip_suffix("']")?;
            pod.pointer(&format!("/metadata/{map}"))?
                .get(key)?
                .as_str()?
                .to_owned()
        }
    };
    Some(text)
}

fn key_of(
    store: &Store,
    kind: &str,
    ns: &str,
    selector: &Value,
) -> Result<Option<String>, ConfigError> {
    let object_name = str_at(selector, "/name");
    let key = str_at(selector, "/key");
    let optional = selector.get("optional").and_then(Value::as_bool) == Some(true);
    match object_data(store, kind, ns, object_name) {
        Some(data) => match data.get(key) {
            Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind} {ns}/{object_name}"
            )),
        },
        None if optional => Ok(None),
        None => Err(format!(
            "{} \"{object_name}\" not found",
            kind.to_lowercase()
        )),
    }
}

/// The container's environment, in the order a kubelet builds it.
pub fn render(
    store: &Store,
    pod: &Value,
    container: &Value,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let ns = namespace(pod);
    let mut vars = BTreeMap::new();
    for source in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = str_at(source, "/prefix");
        let (kind, reference) = if let Some(r) = source.get("configMapRef") {
            ("ConfigMap", r)
        } else if let Some(r) = source.get("secretRef") {
            ("Secret", r)
        } else {
            continue;
        };
        let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
        match object_data(store, kind, ns, str_at(reference, "/name")) {
            Some(data) => {
                for (key, value) in data {
                    vars.insert(
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{} \"{}\" not found",
                    kind.to_lowercase(),
                    str_at(reference, "/name")
                ));
            }
        }
    }
    for variable in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let var = str_at(variable, "/name").to_owned();
        if let Some(value) = variable.get("value").and_then(Value::as_str) {
            let expanded = expand(value, &vars);
            vars.insert(var, expanded);
            continue;
        }
        let Some(from) = variable.get("valueFrom") else {
            vars.insert(var, String::new());
            continue;
        };
        let value = if let Some(selector) = from.get("secretKeyRef") {
            key_of(store, "Secret", ns, selector)?
        } else if let Some(selector) = from.get("configMapKeyRef") {
            key_of(store, "ConfigMap", ns, selector)?
        } else if let Some(selector) = from.get("fieldRef") {
            Some(
                field(pod, str_at(selector, "/fieldPath"), pod_ip, host_ip).ok_or_else(|| {
                    format!("unsupported fieldPath {}", str_at(selector, "/fieldPath"))
                })?,
            )
        } else {
            // resourceFieldRef: no resource accounting here.
            Some("0".to_owned())
        };
        if let Some(value) = value {
            vars.insert(var, value);
        }
    }
    Ok(vars)
}

/// The command line: the image's entrypoint and cmd, replaced by the
/// container's command and args, `$(VAR)` expanded.
pub fn command_line(
    image: &super::images::Image,
    container: &Value,
    vars: &BTreeMap<String, String>,
) -> Vec<String> {
    let strings = |pointer: &str| -> Option<Vec<String>> {
        container
            .pointer(pointer)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|i| expand(i.as_str().unwrap_or_default(), vars))
                    .collect()
            })
    };
    let command = strings("/command");
    let args = strings("/args");
    match (command, args) {
        (Some(command), Some(args)) => command.into_iter().chain(args).collect(),
        (Some(command), None) => command,
        (None, Some(args)) => image.entrypoint.iter().cloned().chain(args).collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(objects: &[(&str, Value)]) -> std::sync::Arc<Store> {
        let store = Store::new(crate::resources::builtin_types(), Vec::new());
        for (plural, object) in objects {
            let resource = store.resource("", plural).cloned().expect("type");
            store
                .create(&resource, Some("ns"), object.clone(), "test")
                .expect("create");
        }
        store
    }

    #[test]
    fn env_from_secrets_config_maps_and_the_downward_api() {
        let store = store_with(&[
            (
                "secrets",
                serde_json::json!({"metadata": {"name": "s", "namespace": "ns"},
                    "data": {"password": "c2VjcmV0"}}),
            ),
            (
                "configmaps",
                serde_json::json!({"metadata": {"name": "c", "namespace": "ns"},
                    "data": {"LISTEN": "0.0.0.0:8080", "MODE": "json"}}),
            ),
        ]);
        let pod = serde_json::json!({"metadata": {"name": "p-0", "namespace": "ns",
            "labels": {"app": "x"}}, "spec": {"nodeName": "node-a"}});
        let container = serde_json::json!({
            "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "APP_"}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "URL", "value": "http://$(IP):1/$(NODE)"},
                {"name": "GONE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "nope", "optional": true}}},
            ],
        });
        let env = render(&store, &pod, &container, "10.244.1.9", "10.200.1.2").expect("env");
        assert_eq!(env["APP_LISTEN"], "0.0.0.0:8080");
        assert_eq!(env["APP_MODE"], "json");
        assert_eq!(env["PASSWORD"], "secret");
        assert_eq!(env["NODE"], "node-a");
        assert_eq!(env["IP"], "10.244.1.9");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["URL"], "http://10.244.1.9:1/node-a");
        assert!(
            !env.contains_key("GONE"),
            "an optional missing key sets nothing"
        );

        let missing = serde_json::json!({"env": [{"name": "X",
            "valueFrom": {"secretKeyRef": {"name": "s", "key": "other"}}}]});
        let error = render(&store, &pod, &missing, "", "").expect_err("a missing key");
        assert!(error.contains("other"), "{error}");
    }

    #[test]
    fn expansion_follows_the_kubelet_rules() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }
}
