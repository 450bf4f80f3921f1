//! Field ownership for server-side apply.
//!
//! A field is a path of map keys to a leaf; lists and scalars are leaves
//! (lists are atomic, which is what apply does for lists without merge
//! keys; see docs/testing.md for the keyed lists a real server merges).
//! Each field manager owns a set of paths. An apply sets the manager's set
//! to exactly the applied paths: fields it set before and no longer sends
//! are removed unless another manager owns them. Fields another manager
//! owns with a different value conflict (409) unless the apply forces.

use crate::error::{Result, SimError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub type FieldPath = Vec<String>;
/// manager → owned paths.
pub type Ownership = BTreeMap<String, BTreeSet<FieldPath>>;

/// Metadata fields that the server sets; never owned by a manager.
const SERVER_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

/// Leaf paths of `value`, skipping apiVersion, kind and server metadata.
pub fn leaves(value: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Some(map) = value.as_object() {
        for (key, child) in map {
            if key == "apiVersion" || key == "kind" {
                continue;
            }
            if key == "metadata" {
                if let Some(meta) = child.as_object() {
                    for (mkey, mchild) in meta {
                        if SERVER_METADATA.contains(&mkey.as_str()) {
                            continue;
                        }
                        collect(mchild, &mut vec!["metadata".into(), mkey.clone()], &mut out);
                    }
                }
                continue;
            }
            collect(child, &mut vec![key.clone()], &mut out);
        }
    }
    out
}

fn collect(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                collect(child, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

pub fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = value;
    for part in path {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

pub fn set(value: &mut Value, path: &[String], leaf: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for part in parents {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Some(map) = current.as_object_mut() else {
            return;
        };
        current = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !current.is_object() {
        *current = Value::Object(Map::new());
    }
    if let Some(map) = current.as_object_mut() {
        map.insert(last.clone(), leaf);
    }
}

/// Removes the leaf at `path` and any maps left empty above it.
pub fn remove(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove(child, rest);
        if child.as_object().is_some_and(Map::is_empty) {
            map.remove(first);
        }
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn dotted(path: &[String]) -> String {
    format!(".{}", path.join("."))
}

/// Applies `applied` as `manager` onto `current`; returns the merged object
/// and the new ownership.
pub fn apply(
    current: &Value,
    ownership: &Ownership,
    manager: &str,
    applied: &Value,
    force: bool,
) -> Result<(Value, Ownership)> {
    let applied_paths = leaves(applied);
    let mut conflicts = Vec::new();
    for (other, owned) in ownership {
        if other == manager {
            continue;
        }
        for path in &applied_paths {
            let clash = owned
                .iter()
                .any(|o| related(o, path) && get(current, o) != get(applied, o));
            if clash {
                conflicts.push(format!("conflict with \"{other}\": {}", dotted(path)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(SimError::conflict(format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            conflicts.join("; ")
        )));
    }
    let mut merged = current.clone();
    let previous = ownership.get(manager).cloned().unwrap_or_default();
    for path in previous.difference(&applied_paths) {
        let owned_elsewhere = ownership
            .iter()
            .any(|(m, owned)| m != manager && owned.iter().any(|o| related(o, path)));
        let still_applied = applied_paths.iter().any(|a| related(a, path));
        if !owned_elsewhere && !still_applied {
            remove(&mut merged, path);
        }
    }
    for path in &applied_paths {
        if let Some(leaf) = get(applied, path) {
            set(&mut merged, path, leaf.clone());
        }
    }
    let mut next = Ownership::new();
    for (other, owned) in ownership {
        if other == manager {
            continue;
        }
        let kept: BTreeSet<FieldPath> = owned
            .iter()
            .filter(|o| !applied_paths.iter().any(|a| related(a, o)))
            .cloned()
            .collect();
        if !kept.is_empty() {
            next.insert(other.clone(), kept);
        }
    }
    if !applied_paths.is_empty() {
        next.insert(manager.to_owned(), applied_paths);
    }
    Ok((merged, next))
}

/// Ownership after an update (PUT or merge patch) by `manager`: changed and
/// added leaves move to it, removed leaves leave every owner.
pub fn after_update(old: &Value, new: &Value, ownership: &Ownership, manager: &str) -> Ownership {
    let old_leaves = leaves(old);
    let new_leaves = leaves(new);
    let changed: BTreeSet<FieldPath> = new_leaves
        .iter()
        .filter(|p| get(old, p) != get(new, p))
        .cloned()
        .collect();
    let mut next = Ownership::new();
    for (owner, owned) in ownership {
        let kept: BTreeSet<FieldPath> = owned
            .iter()
            .filter(|o| {
                new_leaves.iter().any(|n| related(n, o))
                    && (owner == manager || !changed.iter().any(|c| related(c, o)))
            })
            .cloned()
            .collect();
        if !kept.is_empty() {
            next.insert(owner.clone(), kept);
        }
    }
    if !changed.is_empty() {
        next.entry(manager.to_owned()).or_default().extend(changed);
    }
    let _ = old_leaves;
    next
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Some(target_map) = target.as_object_mut() {
                for (key, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(key);
                    } else {
                        merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_person_owns_replicas_until_a_forced_apply_takes_them() {
        let operator = json!({"spec": {"replicas": 2, "template": {"x": 1}}});
        let (object, owners) =
            apply(&json!({}), &Ownership::new(), "operator", &operator, false).expect("apply");
        let mut scaled = object.clone();
        scaled["spec"]["replicas"] = json!(5);
        let owners = after_update(&object, &scaled, &owners, "kubectl");
        assert!(owners["kubectl"].contains(&vec!["spec".to_owned(), "replicas".to_owned()]));
        let refused = apply(&scaled, &owners, "operator", &operator, false);
        assert!(matches!(refused, Err(SimError::Api { code: 409, .. })));
        let (forced, owners) = apply(&scaled, &owners, "operator", &operator, true).expect("force");
        assert_eq!(forced["spec"]["replicas"], json!(2));
        assert!(!owners.contains_key("kubectl"));
    }

    #[test]
    fn fields_dropped_from_an_apply_are_removed_but_server_fields_stay() {
        let first = json!({"spec": {"a": 1, "b": 2}});
        let (object, owners) =
            apply(&json!({}), &Ownership::new(), "m", &first, false).expect("apply");
        let mut with_server_field = object.clone();
        with_server_field["spec"]["clusterIP"] = json!("10.0.0.1");
        let (object, _) = apply(
            &with_server_field,
            &owners,
            "m",
            &json!({"spec": {"a": 1}}),
            false,
        )
        .expect("apply");
        assert_eq!(object, json!({"spec": {"a": 1, "clusterIP": "10.0.0.1"}}));
    }
}
