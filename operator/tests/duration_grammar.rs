//! The spec's duration grammar (docs/operator.md, "Durations"): the CRD's
//! pattern accepts exactly the strings the operator's parser accepts, and
//! the API server's rules (pattern and the CEL minimum) refuse exactly the
//! rotation intervals the operator refuses.

use serde_json::{Value, json};
use videochat_operator::admission::refusals;
use videochat_operator::duration::{SPEC_DURATION_PATTERN, parse_spec_duration};
use videochat_operator::resource::parse_rotation_interval;

/// Accepted and refused spellings, near every edge of the grammar.
const CASES: &[&str] = &[
    "60s",
    "59s",
    "90s",
    "1m",
    "2mins",
    "1minute",
    "90m",
    "24h",
    "1hr",
    "3hours",
    "7d",
    "1day",
    "2w",
    "1wk",
    "1week",
    "1M",
    "2months",
    "1y",
    "1yr",
    "1year",
    "1h30m",
    "1h 30m",
    "1d 12h",
    "30s30s",
    "30s 30s",
    "30s 29s",
    "0d",
    "0h1m",
    "999999999y",
    "999999999y 999999999y",
    "",
    "30",
    "1.5h",
    "500ms",
    "60000ms",
    "1ns",
    "1us",
    "1 h",
    "1h  30m",
    " 1h",
    "1h ",
    "1H",
    "1D",
    "soon",
    "-1h",
    "+1h",
    "1234567890s",
    "1h30",
    "h",
    "1hh",
    "1µs",
];

/// The interval field's pattern in the generated CRD.
fn crd_pattern() -> String {
    let crd = serde_json::to_value(
        serde_yaml::from_str::<Value>(&videochat_operator::resource::crd_yaml().expect("crd yaml"))
            .expect("crd parses"),
    )
    .expect("json");
    crd.pointer(
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/turn/properties/secretRotation/properties/interval/pattern",
    )
    .and_then(Value::as_str)
    .expect("the interval has a pattern")
    .to_owned()
}

#[test]
fn the_crd_pattern_matches_exactly_what_the_parser_accepts() {
    let pattern = crd_pattern();
    assert_eq!(pattern, SPEC_DURATION_PATTERN);
    let pattern = regex::Regex::new(&pattern).expect("pattern compiles");
    for case in CASES {
        assert_eq!(
            pattern.is_match(case),
            parse_spec_duration(case).is_ok(),
            "{case:?}: pattern and parser disagree ({:?})",
            parse_spec_duration(case)
        );
    }
}

#[test]
fn the_api_server_and_the_operator_refuse_the_same_rotation_intervals() {
    for case in CASES {
        let cluster = json!({
            "apiVersion": "videochat.dev/v1alpha1",
            "kind": "VideoChatCluster",
            "metadata": {"name": "demo", "namespace": "default"},
            "spec": {"turn": {"secretRotation": {"interval": case}}},
        });
        let refused = refusals(&cluster, None);
        assert_eq!(
            refused.is_empty(),
            parse_rotation_interval(case).is_ok(),
            "{case:?}: the API server's rules say {refused:?}, the operator {:?}",
            parse_rotation_interval(case)
        );
    }
    // The minimum, term by term as humantime adds them up.
    assert_eq!(parse_rotation_interval("30s 30s"), Ok(60));
    assert!(parse_rotation_interval("30s 29s").is_err());
    assert_eq!(parse_rotation_interval("1h 30m"), Ok(5400));
}
