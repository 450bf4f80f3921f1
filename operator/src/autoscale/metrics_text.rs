//! Just enough of the Prometheus text exposition format to read one gauge
//! from a pod's `/metrics`: the sum of its samples over all label sets.

use crate::error::Error;

/// Largest `/metrics` body read; a pod answering more is misbehaving.
pub const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

/// Sum of the samples of gauge `name`, or None when the body has none. A
/// sample of `name` that does not parse, or is negative or not finite, is an
/// error: a wrong load figure would scale the component wrongly.
pub fn parse_gauge(text: &str, name: &str) -> Result<Option<f64>, Error> {
    if text.len() > MAX_METRICS_BYTES {
        return Err(Error::MetricsText {
            metric: name.to_owned(),
            message: format!(
                "body of {} bytes exceeds the {MAX_METRICS_BYTES} byte limit",
                text.len()
            ),
        });
    }
    let mut sum: Option<f64> = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `name_total` is another metric.
        let after_labels = match rest.chars().next() {
            Some('{') => skip_labels(rest).ok_or_else(|| Error::MetricsText {
                metric: name.to_owned(),
                message: format!("line {}: unterminated label set", index + 1),
            })?,
            Some(c) if c.is_whitespace() => rest,
            _ => continue,
        };
        let value_text = after_labels.split_whitespace().next().unwrap_or("");
        let value: f64 = value_text.parse().map_err(|_| Error::MetricsText {
            metric: name.to_owned(),
            message: format!("line {}: value {value_text:?} is not a number", index + 1),
        })?;
        if !value.is_finite() || value < 0.0 {
            return Err(Error::MetricsText {
                metric: name.to_owned(),
                message: format!(
                    "line {}: value {value_text} is not a finite, non-negative load",
                    index + 1
                ),
            });
        }
        *sum.get_or_insert(0.0) += value;
    }
    Ok(sum)
}

/// Skips `{...}` (label values are quoted and may hold escaped quotes and
/// braces) and returns what follows it.
fn skip_labels(text: &str) -> Option<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (offset, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(&text[offset + 1..]),
            _ => {}
        }
    }
    None
}
