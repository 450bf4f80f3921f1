//! Label and field selectors as the API server parses them.

use crate::error::{Result, SimError};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(text: &str) -> Result<Vec<String>> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| SimError::bad_request(format!("invalid label selector set {text:?}")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, set)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), parse_set(set)?)
            } else if let Some((key, set)) = term.split_once(" in ") {
                Requirement::In(key.trim().into(), parse_set(set)?)
            } else {
                Requirement::Exists(term.trim().to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// From a `metav1.LabelSelector` (matchLabels and matchExpressions).
    pub fn from_object(selector: &Value) -> Self {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in labels {
                requirements.push(Requirement::Equals(
                    key.clone(),
                    value.as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        if let Some(expressions) = selector.get("matchExpressions").and_then(Value::as_array) {
            for expression in expressions {
                let key = expression
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let values: Vec<String> = expression
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                match expression.get("operator").and_then(Value::as_str) {
                    Some("In") => requirements.push(Requirement::In(key, values)),
                    Some("NotIn") => requirements.push(Requirement::NotIn(key, values)),
                    Some("Exists") => requirements.push(Requirement::Exists(key)),
                    Some("DoesNotExist") => requirements.push(Requirement::DoesNotExist(key)),
                    _ => {}
                }
            }
        }
        Self { requirements }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.matches_labels(&labels_of(object))
    }
}

/// The object's labels.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A field selector (`metadata.name=x,spec.nodeName!=y`), any dotted path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(SimError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            terms.push((path.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, equal, value)| {
            let mut current = object;
            let mut found = true;
            for part in path.split('.') {
                match current.get(part) {
                    Some(next) => current = next,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            let actual = if found {
                match current {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                }
            } else {
                String::new()
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_based_and_equality_terms() {
        let selector = LabelSelector::parse("app in (a, b),tier!=db,!gone,x").expect("parses");
        let object = json!({"metadata": {"labels": {"app": "a", "tier": "web", "x": ""}}});
        assert!(selector.matches(&object));
        let object = json!({"metadata": {"labels": {"app": "c", "x": ""}}});
        assert!(!selector.matches(&object));
    }

    #[test]
    fn field_selector_on_name() {
        let selector = FieldSelector::parse("metadata.name=lease").expect("parses");
        assert!(selector.matches(&json!({"metadata": {"name": "lease"}})));
        assert!(!selector.matches(&json!({"metadata": {"name": "other"}})));
    }
}
