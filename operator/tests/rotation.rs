//! TURN secret rotation timeline: add a new secret every interval, keep the
//! previous one for at least a credential TTL (plus propagation), then
//! remove it; newest last in the file.

// Table rows are spelled as tuples, one line per case.
#![allow(clippy::type_complexity)]

use k8s_openapi::jiff::Timestamp;
use videochat_operator::rotation::{
    MAX_SECRETS, RotationPolicy, RotationStep, SecretEntry, created_annotation, parse_interval,
    parse_secrets, plan_rotation, secret_file,
};

const T0: &str = "2026-11-21T00:00:00Z";
const HOUR: i64 = 3600;

fn at(offset_seconds: i64) -> Timestamp {
    let base: Timestamp = T0.parse().expect("valid time");
    Timestamp::from_second(base.as_second() + offset_seconds).expect("in range")
}

fn policy() -> RotationPolicy {
    RotationPolicy {
        interval_seconds: 24 * HOUR,
        credential_ttl_seconds: HOUR,
        propagation_seconds: 120,
    }
}

fn values(secrets: &[SecretEntry]) -> Vec<&str> {
    secrets.iter().map(|s| s.value.as_str()).collect()
}

#[test]
fn rotation_timeline() {
    let policy = policy();
    // (seconds after T0, expected step, expected secrets after the step)
    let timeline: Vec<(i64, RotationStep, Vec<&str>)> = vec![
        (0, RotationStep::Created, vec!["s0"]),
        (HOUR, RotationStep::Unchanged, vec!["s0"]),
        (24 * HOUR - 1, RotationStep::Unchanged, vec!["s0"]),
        // The interval came round: s1 appended, newest last; s0 stays.
        (24 * HOUR, RotationStep::Added, vec!["s0", "s1"]),
        // A credential signed with s0 just before s1 reached signaling is
        // still valid: s0 stays for TTL + propagation after s1 was added.
        (25 * HOUR + 119, RotationStep::Unchanged, vec!["s0", "s1"]),
        (25 * HOUR + 120, RotationStep::Removed, vec!["s1"]),
        (48 * HOUR, RotationStep::Added, vec!["s1", "s2"]),
    ];
    let mut secrets: Vec<SecretEntry> = Vec::new();
    let mut generated = 0;
    for (now, step, want) in timeline {
        let candidate = format!("s{generated}");
        let plan = plan_rotation(&policy, &secrets, &candidate, at(now));
        assert_eq!(plan.step, step, "at +{now}s: {}", plan.message);
        assert_eq!(values(&plan.secrets), want, "at +{now}s");
        if matches!(
            plan.step,
            RotationStep::Created | RotationStep::Added | RotationStep::AddedAndRemoved
        ) {
            generated += 1;
        }
        // The next change is never in the past and never later than the interval.
        let next = plan.next_change.expect("a next change").as_second();
        assert!(
            next > at(now).as_second() && next <= at(now).as_second() + policy.interval_seconds
        );
        secrets = plan.secrets;
    }
}

#[test]
fn every_credential_stays_verifiable_until_it_expires() {
    // Simulate signaling signing with the newest secret it has seen (with
    // propagation delay) every 10 minutes over three days, and check each
    // credential's secret is still in the file until the credential expires.
    let policy = RotationPolicy {
        interval_seconds: 6 * HOUR,
        credential_ttl_seconds: 2 * HOUR,
        propagation_seconds: 120,
    };
    let mut secrets: Vec<SecretEntry> = Vec::new();
    let mut history: Vec<(i64, Vec<SecretEntry>)> = Vec::new();
    let mut issued: Vec<(String, i64)> = Vec::new();
    for (counter, now) in (0..72 * HOUR).step_by(600).enumerate() {
        let plan = plan_rotation(&policy, &secrets, &format!("k{counter}"), at(now));
        secrets = plan.secrets;
        history.push((now, secrets.clone()));
        // Signaling sees the file as it was `propagation` ago.
        let seen = history
            .iter()
            .rev()
            .find(|(t, _)| *t <= now - policy.propagation_seconds)
            .map_or(&secrets, |(_, s)| s);
        if let Some(newest) = seen.last() {
            issued.push((newest.value.clone(), now + policy.credential_ttl_seconds));
        }
        for (secret, expires) in &issued {
            if *expires > now {
                assert!(
                    secrets.iter().any(|s| &s.value == secret),
                    "at +{now}s a credential signed with {secret} (valid until +{expires}s) no longer verifies"
                );
            }
        }
        assert!(secrets.len() <= 2, "at +{now}s: {} secrets", secrets.len());
    }
}

#[test]
fn secrets_are_bounded_when_the_interval_is_shorter_than_the_ttl() {
    let policy = RotationPolicy {
        interval_seconds: 60,
        credential_ttl_seconds: 24 * HOUR,
        propagation_seconds: 120,
    };
    let mut secrets = Vec::new();
    for minute in 0..30 {
        secrets = plan_rotation(&policy, &secrets, &format!("m{minute}"), at(minute * 60)).secrets;
    }
    assert_eq!(secrets.len(), MAX_SECRETS);
}

#[test]
fn file_and_annotation_round_trip() {
    let secrets = vec![
        SecretEntry {
            value: "old".to_owned(),
            created_at: at(0),
        },
        SecretEntry {
            value: "new".to_owned(),
            created_at: at(HOUR),
        },
    ];
    let file = secret_file(&secrets);
    assert_eq!(file, "old\nnew\n");
    let annotation = created_annotation(&secrets);
    assert_eq!(
        parse_secrets(&file, Some(&annotation), at(2 * HOUR)),
        secrets
    );
    // A hand-made secret without times counts as created now: kept longer, never shorter.
    let parsed = parse_secrets("a\n\nb\n", None, at(5));
    assert_eq!(values(&parsed), vec!["a", "b"]);
    assert!(parsed.iter().all(|s| s.created_at == at(5)));
    // Times from the future are clamped to now.
    let future = parse_secrets("a\n", Some("2099-01-01T00:00:00Z"), at(5));
    assert_eq!(future[0].created_at, at(5));
}

#[test]
fn interval_parsing() {
    for (text, seconds) in [
        ("24h", 86_400),
        ("90m", 5_400),
        ("7d", 604_800),
        ("1h30m", 5_400),
        ("1h 30m", 5_400),
        ("2w", 1_209_600),
        ("60s", 60),
    ] {
        assert_eq!(parse_interval(text), Ok(seconds), "{text}");
    }
    for (text, fragment) in [
        ("10", "is not a duration"),
        ("5x", "is not a duration"),
        ("h", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("30s", "shorter than the minimum"),
        ("99999999999999999999d", "is not a duration"),
    ] {
        let error = parse_interval(text).expect_err(text);
        assert!(error.contains(fragment), "{text}: {error}");
    }
}
