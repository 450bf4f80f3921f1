//! Lease decisions: acquire a free Lease, renew our own, follow a live
//! holder, take over after the holder's lease duration passed unrenewed.

// Table rows are spelled as tuples, one line per case.
#![allow(clippy::type_complexity)]

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use videochat_operator::io::leader::{LeaseDecision, decide_lease};

fn at(offset_seconds: i64) -> Timestamp {
    let base: Timestamp = "2026-11-21T10:00:00Z".parse().expect("valid time");
    Timestamp::from_second(base.as_second() + offset_seconds).expect("in range")
}

fn held_by(holder: &str, renewed: i64, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(15),
        acquire_time: Some(MicroTime(at(0))),
        renew_time: Some(MicroTime(at(renewed))),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

#[test]
fn lease_decision_table() {
    let released = LeaseSpec {
        holder_identity: None,
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    };
    // (name, current lease, seen since, now, expected: Some((holder, transitions)) to acquire/renew, None to follow)
    let cases: Vec<(&str, Option<LeaseSpec>, i64, i64, Option<(&str, i32)>)> = vec![
        ("no Lease yet: acquire", None, 0, 0, Some(("op-a", 0))),
        (
            "released Lease: acquire, one more transition",
            Some(released),
            0,
            0,
            Some(("op-a", 4)),
        ),
        (
            "our own Lease: renew, no transition",
            Some(held_by("op-a", 5, 2)),
            5,
            10,
            Some(("op-a", 2)),
        ),
        (
            "live holder: follow",
            Some(held_by("op-b", 5, 2)),
            5,
            19,
            None,
        ),
        (
            "holder silent for the lease duration: take over",
            Some(held_by("op-b", 5, 2)),
            5,
            20,
            Some(("op-a", 3)),
        ),
        // Expiry runs on our clock from when we saw the renewal, so a holder
        // whose clock is an hour behind is not taken over early.
        (
            "skewed holder clock does not matter",
            Some(held_by("op-b", -3600, 1)),
            100,
            110,
            None,
        ),
    ];
    for (name, current, seen, now, want) in cases {
        let decision = decide_lease(current.as_ref(), at(seen), "op-a", 15, at(now));
        match (decision, want) {
            (
                LeaseDecision::Acquire(spec) | LeaseDecision::Renew(spec),
                Some((holder, transitions)),
            ) => {
                assert_eq!(spec.holder_identity.as_deref(), Some(holder), "{name}");
                assert_eq!(spec.lease_transitions, Some(transitions), "{name}");
                assert_eq!(spec.renew_time, Some(MicroTime(at(now))), "{name}");
                assert_eq!(spec.lease_duration_seconds, Some(15), "{name}");
            }
            (LeaseDecision::Follow { holder, expires_at }, None) => {
                assert_eq!(holder, "op-b", "{name}");
                assert_eq!(expires_at, at(seen + 15), "{name}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn renewal_keeps_the_acquire_time() {
    let LeaseDecision::Renew(spec) =
        decide_lease(Some(&held_by("op-a", 5, 0)), at(5), "op-a", 15, at(9))
    else {
        panic!("expected a renewal");
    };
    assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
}
