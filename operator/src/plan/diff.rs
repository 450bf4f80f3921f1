//! Is an object already as desired? The API server adds defaults and
//! bookkeeping, so "as desired" means every field we set has our value.

use serde_json::Value;

/// True when every field present in `want` has the same value in `have`.
/// Objects compare key by key (extra keys in `have` are fine); arrays must
/// have the same length and compare element by element; `null` in `want`
/// matches anything.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Null, _) => true,
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| v.is_null() || h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::is_subset;
    use serde_json::json;

    #[test]
    fn extra_fields_on_the_server_do_not_count_as_drift() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let have =
            json!({"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "x": 1}});
        assert!(is_subset(&want, &have));
    }

    #[test]
    fn changed_values_and_list_lengths_count_as_drift() {
        let want = json!({"spec": {"replicas": 3}});
        let have = json!({"spec": {"replicas": 2}});
        assert!(!is_subset(&want, &have));
        let want = json!({"ports": [{"port": 80}, {"port": 81}]});
        let have = json!({"ports": [{"port": 80}]});
        assert!(!is_subset(&want, &have));
        assert!(!is_subset(&json!({"a": 1}), &json!({})));
    }
}
