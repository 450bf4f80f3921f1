//! Is an object already as desired? The API server adds defaults and
//! bookkeeping, so "as desired" means every field we set has our value.

use serde_json::Value;

/// True when every field present in `want` has the same value in `have`.
/// Objects compare key by key (extra keys in `have` are fine); arrays must
/// have the same length and compare element by element; `null` in `want`
/// matches anything. Resource quantities (under `requests` and `limits`)
/// compare by value: the API server stores `0.5` as `500m`.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    subset(want, have, false)
}

/// `quantity_map`: `want` is the map under `requests` or `limits`, whose
/// string values are quantities.
fn subset(want: &Value, have: &Value, quantity_map: bool) -> bool {
    match (want, have) {
        (Value::Null, _) => true,
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| {
            v.is_null()
                || h.get(k).is_some_and(|hv| match (v, hv) {
                    (Value::String(a), Value::String(b)) if quantity_map => same_quantity(a, b),
                    _ => subset(v, hv, k == "requests" || k == "limits"),
                })
        }),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| subset(a, b, false))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (quantity(a), quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0,
        _ => false,
    }
}

/// The value of a Kubernetes quantity (`500m`, `1.5Gi`, `2e3`, `128974848`).
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
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

    #[test]
    fn resource_quantities_compare_by_value() {
        let want = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}});
        let have = json!({"resources": {"requests": {"cpu": "500m", "memory": "1024Mi"}}});
        assert!(is_subset(&want, &have));
        let bigger = json!({"resources": {"requests": {"cpu": "500m", "memory": "1G"}}});
        assert!(!is_subset(&want, &bigger), "1Gi is not 1G");
        // Outside requests/limits strings stay strings.
        assert!(!is_subset(
            &json!({"image": "0.5"}),
            &json!({"image": "500m"})
        ));
    }
}
