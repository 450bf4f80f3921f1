//! Autoscaling decisions, table-driven through the functions `plan` uses:
//! scale up on load, no change inside the stabilization window, drain-aware
//! scale-down choosing the least-loaded pods, no scale on missing metrics,
//! max step; and the `/metrics` text parser.

// Table rows are spelled as tuples, one line per case.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Pod, PodCondition, PodSpec, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use videochat_operator::Error;
use videochat_operator::autoscale::load::cpu_millicores_of;
use videochat_operator::autoscale::{
    AutoscalePolicy, AutoscaleStatus, DRAINING_SINCE_ANNOTATION, LoadMetric, PodLoad,
    Recommendation, ScaleAction, ScaleReason, parse_gauge, plan_scaling, pod_load,
    recommend_replicas,
};
use videochat_operator::rollout::Component;

const T0: &str = "2026-11-21T10:00:00Z";

fn at(offset_seconds: i64) -> Timestamp {
    let base: Timestamp = T0.parse().expect("valid time");
    Timestamp::from_second(base.as_second() + offset_seconds).expect("in range")
}

fn policy() -> AutoscalePolicy {
    AutoscalePolicy {
        min_replicas: 2,
        max_replicas: 10,
        target_load_per_pod: Some(100.0),
        target_cpu_percent: None,
        scale_up_window_seconds: 0,
        scale_down_window_seconds: 300,
        max_step: 4,
        drain_grace_seconds: 600,
        tolerance: 0.1,
    }
}

fn loaded(name: &str, load: Option<f64>) -> PodLoad {
    PodLoad {
        name: name.to_owned(),
        ready: true,
        load,
        ..PodLoad::default()
    }
}

fn pods(loads: &[Option<f64>]) -> Vec<PodLoad> {
    loads
        .iter()
        .enumerate()
        .map(|(i, l)| loaded(&format!("signaling-{i}"), *l))
        .collect()
}

fn history(entries: &[(i64, i32)]) -> Vec<Recommendation> {
    entries
        .iter()
        .map(|(t, r)| Recommendation {
            time: Time(at(*t)),
            replicas: *r,
        })
        .collect()
}

#[test]
fn replica_recommendation_table() {
    // (name, policy, current, pod loads, history, now, desired, reason)
    let cases: Vec<(
        &str,
        AutoscalePolicy,
        i32,
        Vec<Option<f64>>,
        Vec<Recommendation>,
        i64,
        i32,
        ScaleReason,
    )> = vec![
        (
            "scale up on load",
            policy(),
            2,
            vec![Some(180.0), Some(200.0)],
            vec![],
            1000,
            4,
            ScaleReason::ScaleUp,
        ),
        (
            "load within tolerance keeps replicas",
            policy(),
            3,
            vec![Some(100.0), Some(105.0), Some(100.0)],
            vec![],
            1000,
            3,
            ScaleReason::WithinTolerance,
        ),
        (
            "no change on missing metrics (never down to min)",
            policy(),
            5,
            vec![None, None, None, None, None],
            vec![],
            1000,
            5,
            ScaleReason::MetricsMissing,
        ),
        (
            "no pods reporting at all: no change",
            policy(),
            4,
            vec![],
            vec![],
            1000,
            4,
            ScaleReason::MetricsMissing,
        ),
        (
            "a pod without figures counts as at target: no scale-down from ignorance",
            policy(),
            3,
            vec![Some(10.0), Some(10.0), None],
            vec![],
            1000,
            2,
            ScaleReason::ScaleDown,
        ),
        (
            "max step caps a big scale-up",
            policy(),
            2,
            vec![Some(500.0), Some(500.0)],
            vec![],
            1000,
            6,
            ScaleReason::MaxStep,
        ),
        (
            "max bound caps the recommendation",
            AutoscalePolicy {
                max_step: 100,
                ..policy()
            },
            4,
            vec![Some(900.0); 4],
            vec![],
            1000,
            10,
            ScaleReason::ScaleUp,
        ),
        (
            "no scale-down inside the stabilization window",
            policy(),
            4,
            vec![Some(20.0); 4],
            history(&[(900, 4)]),
            1000,
            4,
            ScaleReason::ScaleDownWindow,
        ),
        (
            "scale-down once the higher recommendation left the window",
            policy(),
            4,
            vec![Some(20.0); 4],
            // 4 was last recommended at 600 s, when 2 took over.
            history(&[(600, 4), (600, 2)]),
            1000,
            2,
            ScaleReason::ScaleDown,
        ),
        (
            "scale-down to the highest recommendation of the window",
            policy(),
            6,
            vec![Some(50.0); 6],
            history(&[(800, 5), (900, 4)]),
            1000,
            5,
            ScaleReason::ScaleDown,
        ),
        (
            "scale-up window: a short spike does not scale up",
            AutoscalePolicy {
                scale_up_window_seconds: 60,
                ..policy()
            },
            2,
            vec![Some(300.0), Some(300.0)],
            history(&[(970, 2)]),
            1000,
            2,
            ScaleReason::ScaleUpWindow,
        ),
        (
            "replicas moved into new bounds even without metrics",
            AutoscalePolicy {
                min_replicas: 3,
                ..policy()
            },
            2,
            vec![None, None],
            vec![],
            1000,
            3,
            ScaleReason::Bounds,
        ),
    ];
    for (name, policy, current, loads, history, now, desired, reason) in cases {
        let decision = recommend_replicas(&policy, current, &pods(&loads), &history, at(now));
        assert_eq!(
            (decision.desired, decision.reason),
            (desired, reason),
            "{name}: {}",
            decision.message
        );
    }
}

#[test]
fn cpu_utilisation_scales_when_load_is_not_configured() {
    let policy = AutoscalePolicy {
        target_load_per_pod: None,
        target_cpu_percent: Some(50.0),
        ..policy()
    };
    let busy: Vec<PodLoad> = (0..2)
        .map(|i| PodLoad {
            name: format!("turn-{i}"),
            ready: true,
            cpu_millicores: Some(400.0),
            cpu_request_millicores: Some(200.0),
            ..PodLoad::default()
        })
        .collect();
    // 800m used, 100m per pod wanted (50 % of 200m): 8 pods, capped by max step 4 -> 6.
    let decision = recommend_replicas(&policy, 2, &busy, &[], at(0));
    assert_eq!(decision.desired, 6, "{}", decision.message);
    // Without requests, utilisation has no meaning: no change.
    let no_requests: Vec<PodLoad> = busy
        .into_iter()
        .map(|p| PodLoad {
            cpu_request_millicores: None,
            ..p
        })
        .collect();
    let decision = recommend_replicas(&policy, 2, &no_requests, &[], at(0));
    assert_eq!(
        (decision.desired, decision.reason),
        (2, ScaleReason::MetricsMissing)
    );
}

#[test]
fn recommendations_stay_bounded() {
    let mut kept = Vec::new();
    for step in 0..500 {
        let load = (step % 7) as f64 * 100.0 + 50.0;
        let decision =
            recommend_replicas(&policy(), 4, &pods(&[Some(load); 4]), &kept, at(step * 15));
        kept = decision.recommendations;
    }
    assert!(kept.len() <= 10, "{} kept", kept.len());
    assert!(kept.windows(2).all(|w| w[0].time <= w[1].time));
}

#[test]
fn scale_down_drains_the_least_loaded_pods_first_and_waits_for_them() {
    let policy = AutoscalePolicy {
        scale_down_window_seconds: 0,
        ..policy()
    };
    // 4 pods carrying 150 sessions: 2 are enough. The two least loaded go.
    let mut pods = vec![
        loaded("sig-a", Some(60.0)),
        loaded("sig-b", Some(5.0)),
        loaded("sig-c", Some(80.0)),
        loaded("sig-d", Some(5.0)),
    ];
    let step1 = plan_scaling(
        Component::Signaling,
        &policy,
        4,
        &pods,
        &AutoscaleStatus::default(),
        at(0),
    );
    assert_eq!(
        step1.actions,
        vec![
            ScaleAction::DrainPod {
                component: Component::Signaling,
                pod: "sig-b".to_owned()
            },
            ScaleAction::DrainPod {
                component: Component::Signaling,
                pod: "sig-d".to_owned()
            },
        ]
    );
    assert_eq!(
        step1.replicas, 4,
        "replicas stay until the drained pods are empty"
    );
    assert_eq!(
        step1.status.draining_pods,
        vec!["sig-b".to_owned(), "sig-d".to_owned()]
    );
    assert!(
        step1
            .status
            .last_decision_message
            .as_deref()
            .unwrap_or("")
            .contains("draining")
    );

    // The drain annotation is on; sig-b emptied, sig-d still has 3 sessions
    // and the loads of others shifted: the choice does not wander.
    pods[1].draining_since = Some(at(0));
    pods[3].draining_since = Some(at(0));
    pods[1].load = Some(0.0);
    pods[3].load = Some(3.0);
    pods[0].load = Some(1.0);
    let step2 = plan_scaling(
        Component::Signaling,
        &policy,
        4,
        &pods,
        &step1.status,
        at(30),
    );
    assert!(step2.actions.is_empty(), "{:?}", step2.actions);
    assert_eq!(step2.replicas, 4);

    // Both empty: replicas drop by exactly the drained pods.
    pods[3].load = Some(0.0);
    let step3 = plan_scaling(
        Component::Signaling,
        &policy,
        4,
        &pods,
        &step2.status,
        at(60),
    );
    assert_eq!(step3.replicas, 2);
    assert!(matches!(
        step3.actions.as_slice(),
        [ScaleAction::Scale { from: 4, to: 2, .. }]
    ));
    assert_eq!(step3.status.last_scale_time, Some(Time(at(60))));
}

#[test]
fn live_sessions_are_kept_until_the_grace_period_ends() {
    let policy = AutoscalePolicy {
        scale_down_window_seconds: 0,
        drain_grace_seconds: 600,
        ..policy()
    };
    let mut pods = vec![
        loaded("turn-a", Some(50.0)),
        loaded("turn-b", Some(40.0)),
        loaded("turn-c", Some(2.0)),
    ];
    pods[2].draining_since = Some(at(0));
    let before = plan_scaling(
        Component::Turn,
        &policy,
        3,
        &pods,
        &AutoscaleStatus::default(),
        at(599),
    );
    assert_eq!(before.replicas, 3, "two allocations are still live");
    assert!(before.actions.is_empty());
    let after = plan_scaling(
        Component::Turn,
        &policy,
        3,
        &pods,
        &AutoscaleStatus::default(),
        at(600),
    );
    assert_eq!(after.replicas, 2);
    assert!(matches!(
        after.actions.as_slice(),
        [ScaleAction::Scale { from: 3, to: 2, .. }]
    ));
}

#[test]
fn a_drained_pod_no_longer_needed_is_replaced() {
    // Load came back while turn-c drained: no scale-down any more, and the
    // drained pod (taking no new allocations) is replaced once empty.
    let mut pods = vec![
        loaded("turn-a", Some(190.0)),
        loaded("turn-b", Some(200.0)),
        loaded("turn-c", Some(0.0)),
    ];
    pods[2].draining_since = Some(at(0));
    let plan = plan_scaling(
        Component::Turn,
        &policy(),
        3,
        &pods,
        &AutoscaleStatus::default(),
        at(100),
    );
    assert!(plan.actions.contains(&ScaleAction::DeletePod {
        component: Component::Turn,
        pod: "turn-c".to_owned(),
        reason: "drained pod no longer needed for a scale-down; replaced by a fresh one".to_owned(),
    }));
    assert_eq!(plan.replicas, 4, "{:?}", plan.status.last_decision_message);
}

#[test]
fn missing_metrics_never_drain_or_scale() {
    let plan = plan_scaling(
        Component::Signaling,
        &policy(),
        5,
        &pods(&[None; 5]),
        &AutoscaleStatus::default(),
        at(0),
    );
    assert_eq!(plan.replicas, 5);
    assert!(plan.actions.is_empty());
    assert_eq!(
        plan.status.last_decision_reason.as_deref(),
        Some("MetricsMissing")
    );
}

#[test]
fn pod_load_reads_readiness_drain_state_and_cpu_requests() {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("sig-x".to_owned()),
            annotations: Some(BTreeMap::from([(
                DRAINING_SINCE_ANNOTATION.to_owned(),
                "2026-11-21T09:59:00Z".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "signaling".to_owned(),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "cpu".to_owned(),
                        Quantity("250m".to_owned()),
                    )])),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    };
    let load = pod_load(&pod, Some(12.0), Some(100.0), at(0));
    assert_eq!(load.name, "sig-x");
    assert!(load.ready);
    assert_eq!(load.draining_since, Some(at(-60)));
    assert_eq!(load.cpu_request_millicores, Some(250.0));
    for (text, millicores) in [
        ("2", 2000.0),
        ("0.5", 500.0),
        ("250m", 250.0),
        ("1500000n", 1.5),
        ("300u", 0.3),
    ] {
        assert_eq!(
            cpu_millicores_of(&Quantity(text.to_owned())),
            Some(millicores),
            "{text}"
        );
    }
    assert_eq!(cpu_millicores_of(&Quantity("lots".to_owned())), None);
}

#[test]
fn metrics_text_parser_table() {
    let gauge = LoadMetric::SignalingConnections.gauge_name();
    let cases: Vec<(&str, String, Result<Option<f64>, &str>)> = vec![
        (
            "plain gauge with help and type",
            format!("# HELP {gauge} Open connections.\n# TYPE {gauge} gauge\n{gauge} 42\n"),
            Ok(Some(42.0)),
        ),
        (
            "summed over label sets, with a timestamp",
            format!(
                "{gauge}{{transport=\"ws\"}} 10 1700000000000\n{gauge}{{transport=\"a\\\"}}b\"}} 5.5\n"
            ),
            Ok(Some(15.5)),
        ),
        (
            "a longer metric name is another metric",
            format!("{gauge}_total 99\nother_metric 1\n"),
            Ok(None),
        ),
        (
            "absent",
            "process_cpu_seconds_total 3\n".to_owned(),
            Ok(None),
        ),
        (
            "not a number",
            format!("{gauge} many\n"),
            Err("not a number"),
        ),
        ("negative", format!("{gauge} -1\n"), Err("non-negative")),
        ("NaN", format!("{gauge} NaN\n"), Err("non-negative")),
        (
            "unterminated labels",
            format!("{gauge}{{a=\"b\" 1\n"),
            Err("unterminated"),
        ),
        (
            "too large",
            format!("{gauge} 1\n{}", "#".repeat(5 * 1024 * 1024)),
            Err("limit"),
        ),
    ];
    for (name, text, want) in cases {
        match (parse_gauge(&text, gauge), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
            (Err(Error::MetricsText { metric, message }), Err(fragment)) => {
                assert_eq!(metric, gauge, "{name}");
                assert!(message.contains(fragment), "{name}: {message}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(
        parse_gauge(
            "videochat_turn_allocations_active 7\n",
            LoadMetric::TurnAllocations.gauge_name()
        )
        .ok(),
        Some(Some(7.0))
    );
}

#[test]
fn an_unchanged_recommendation_leaves_the_history_as_it_was() {
    // Four pods at target: the recommendation is 4 at every step, so the
    // status (where the history lives) is the same and nothing is written.
    let loads = pods(&[Some(100.0); 4]);
    let first = recommend_replicas(&policy(), 4, &loads, &[], at(0));
    let mut history = first.recommendations.clone();
    for step in 1..100 {
        let next = recommend_replicas(&policy(), 4, &loads, &history, at(step * 15));
        assert_eq!(next.recommendations, history, "step {step}");
        assert_eq!(next.desired, 4);
        history = next.recommendations;
    }
}

#[test]
fn the_scale_down_window_counts_from_when_a_higher_recommendation_was_last_made() {
    // 5 pods needed from 0 s to 100 s, then 3: the 5 was still recommended
    // at 100 s, so the 300 s window holds 5 pods until 400 s.
    let mut history = Vec::new();
    let mut last = None;
    for t in (0..=100).step_by(10) {
        let decision = recommend_replicas(&policy(), 5, &pods(&[Some(100.0); 5]), &history, at(t));
        history = decision.recommendations;
    }
    for t in (110..=420).step_by(10) {
        let decision = recommend_replicas(&policy(), 5, &pods(&[Some(60.0); 5]), &history, at(t));
        history = decision.recommendations.clone();
        last = Some((t, decision.desired, decision.reason));
        if t < 400 {
            assert_eq!(
                (decision.desired, decision.reason),
                (5, ScaleReason::ScaleDownWindow),
                "at {t}s: {}",
                decision.message
            );
        }
    }
    assert_eq!(last, Some((420, 3, ScaleReason::ScaleDown)));
}
