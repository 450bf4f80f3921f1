//! Health-based rollback decisions, table-driven through the same functions
//! `plan` uses: healthy rollout, stuck rollout, crash loop, partial
//! readiness, rollback disabled, a second bad revision, rollout ordering.

// Table rows are spelled as tuples, one line per case.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, StatefulSet,
    StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodSpec,
    PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use videochat_operator::rollout::decision::apply_rollout_order;
use videochat_operator::rollout::history::revisions_to_prune;
use videochat_operator::rollout::{
    Component, FailureReason, Gate, Health, REVISION_ANNOTATION, RevisionRecord, RolloutAction,
    RolloutDecision, RolloutInput, RolloutPolicy, RolloutState, RolloutTracking, TemplateChoice,
    WorkloadObservation, controller_revision, decide_rollout, gate_rollouts, last_good_record,
    revision_hash, stamp_revision,
};

const T0: &str = "2026-11-21T10:00:00Z";

fn at(offset_seconds: i64) -> Timestamp {
    let base: Timestamp = T0.parse().expect("valid time");
    Timestamp::from_second(base.as_second() + offset_seconds).expect("in range")
}

fn template(image: &str) -> PodTemplateSpec {
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/component".to_owned(),
                "signaling".to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "signaling".to_owned(),
                image: Some(image.to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    };
    stamp_revision(&mut template);
    template
}

fn rev(image: &str) -> String {
    revision_hash(&template(image))
}

/// A Deployment on `image` with `replicas`, of which `updated`/`ready` are
/// on the current template; `deadline_exceeded` sets the Progressing condition.
fn deployment(
    image: &str,
    replicas: i32,
    updated: i32,
    ready: i32,
    deadline_exceeded: bool,
) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("demo-signaling".to_owned()),
            generation: Some(4),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            template: template(image),
            ..DeploymentSpec::default()
        },
        status: Some(DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            conditions: deadline_exceeded.then(|| {
                vec![DeploymentCondition {
                    type_: Some("Progressing".to_owned()),
                    status: Some("False".to_owned()),
                    reason: Some("ProgressDeadlineExceeded".to_owned()),
                    ..DeploymentCondition::default()
                }]
            }),
            ..DeploymentStatus::default()
        }),
    }
}

fn pod(name: &str, image: &str, ready: bool, restarts: i32, crash_loop: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_owned(),
                rev(image),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: if ready { "True" } else { "False" }.to_owned(),
                ..PodCondition::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "signaling".to_owned(),
                restart_count: restarts,
                state: crash_loop.then(|| ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".to_owned()),
                        message: None,
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn good_record(image: &str) -> RevisionRecord {
    RevisionRecord {
        revision: rev(image),
        template: template(image),
    }
}

/// Tracking as if the operator had been watching `image` since `since`
/// (seconds after T0), with `v1` recorded as last good.
fn tracking(image: &str, since: i64, ready_since: Option<i64>) -> RolloutTracking {
    RolloutTracking {
        revision: Some(rev(image)),
        revision_since: Some(Time(at(since))),
        ready_since: ready_since.map(|s| Time(at(s))),
        last_good_revision: Some(rev("signaling:v1")),
        ..RolloutTracking::default()
    }
}

fn policy() -> RolloutPolicy {
    RolloutPolicy {
        progress_deadline_seconds: 300,
        stabilization_seconds: 60,
        max_restarts: 3,
        min_ready_percent: 100,
        auto_rollback: true,
    }
}

fn decide(
    policy: &RolloutPolicy,
    desired_image: &str,
    observed: &WorkloadObservation,
    tracking: &RolloutTracking,
    last_good: Option<&RevisionRecord>,
    generation: i64,
    now: i64,
) -> RolloutDecision {
    let desired = rev(desired_image);
    decide_rollout(&RolloutInput {
        component: Component::Signaling,
        policy,
        generation,
        desired_revision: &desired,
        observed: Some(observed),
        last_good,
        tracking,
        now: at(now),
    })
}

#[test]
fn revision_hash_is_stable_and_follows_the_template() {
    let a = template("signaling:v1");
    assert_eq!(revision_hash(&a), revision_hash(&template("signaling:v1")));
    // Stamping the label again does not change the revision.
    let mut again = a.clone();
    assert_eq!(stamp_revision(&mut again), revision_hash(&a));
    assert_ne!(rev("signaling:v1"), rev("signaling:v2"));
    assert_eq!(rev("signaling:v1").len(), 10);
}

#[derive(Debug)]
enum Expect {
    Progressing,
    Healthy { records: bool },
    RolledBack(FailureReason),
    Degraded(&'static str),
    Stalled,
}

#[test]
fn rollout_health_table() {
    let v1 = good_record("signaling:v1");
    let v2 = "signaling:v2";
    let cases: Vec<(
        &str,
        RolloutPolicy,
        WorkloadObservation,
        RolloutTracking,
        i64,
        Expect,
    )> = vec![
        (
            "healthy: all ready for the stabilization period",
            policy(),
            WorkloadObservation::from_deployment(&deployment(v2, 3, 3, 3, false), &[]),
            tracking(v2, 0, Some(100)),
            200,
            Expect::Healthy { records: true },
        ),
        (
            "stabilizing: all ready, not for long enough",
            policy(),
            WorkloadObservation::from_deployment(&deployment(v2, 3, 3, 3, false), &[]),
            tracking(v2, 0, Some(100)),
            130,
            Expect::Progressing,
        ),
        (
            "progressing within the deadline",
            policy(),
            WorkloadObservation::from_deployment(&deployment(v2, 3, 1, 1, false), &[]),
            tracking(v2, 0, None),
            120,
            Expect::Progressing,
        ),
        (
            "stuck: the Deployment reports ProgressDeadlineExceeded",
            policy(),
            WorkloadObservation::from_deployment(&deployment(v2, 3, 1, 0, true), &[]),
            tracking(v2, 0, None),
            310,
            Expect::RolledBack(FailureReason::ProgressDeadlineExceeded),
        ),
        (
            "crash loop past maxRestarts, well within the deadline",
            policy(),
            WorkloadObservation::from_deployment(
                &deployment(v2, 2, 2, 0, false),
                &[
                    pod("s-a", v2, false, 4, true),
                    pod("s-b", v2, false, 1, false),
                ],
            ),
            tracking(v2, 0, None),
            60,
            Expect::RolledBack(FailureReason::CrashLoop),
        ),
        (
            "restarts at maxRestarts are still tolerated",
            policy(),
            WorkloadObservation::from_deployment(
                &deployment(v2, 2, 2, 1, false),
                &[
                    pod("s-a", v2, true, 3, false),
                    pod("s-b", v2, false, 0, false),
                ],
            ),
            tracking(v2, 0, None),
            60,
            Expect::Progressing,
        ),
        (
            "partial readiness below minReadyPercent at the deadline",
            policy(),
            WorkloadObservation::from_deployment(&deployment(v2, 4, 4, 1, false), &[]),
            tracking(v2, 0, None),
            301,
            Expect::RolledBack(FailureReason::InsufficientReadiness),
        ),
        (
            "partial readiness above minReadyPercent: stalled, not rolled back",
            RolloutPolicy {
                min_ready_percent: 75,
                ..policy()
            },
            WorkloadObservation::from_deployment(&deployment(v2, 4, 4, 3, false), &[]),
            tracking(v2, 0, None),
            301,
            Expect::Stalled,
        ),
        (
            "rollback disabled: only Degraded",
            RolloutPolicy {
                auto_rollback: false,
                ..policy()
            },
            WorkloadObservation::from_deployment(&deployment(v2, 3, 1, 0, true), &[]),
            tracking(v2, 0, None),
            310,
            Expect::Degraded("automatic rollback is disabled"),
        ),
    ];
    for (name, policy, observed, tracking, now, expect) in cases {
        let decision = decide(&policy, v2, &observed, &tracking, Some(&v1), 7, now);
        match expect {
            Expect::Progressing => {
                assert!(
                    matches!(decision.health, Some(Health::Progressing { .. })),
                    "{name}: {decision:?}"
                );
                assert!(decision.actions.is_empty(), "{name}: {decision:?}");
                assert_eq!(decision.template, TemplateChoice::Desired, "{name}");
                assert_eq!(decision.state, RolloutState::Rolling, "{name}");
            }
            Expect::Healthy { records } => {
                assert_eq!(decision.health, Some(Health::Healthy), "{name}");
                assert_eq!(decision.state, RolloutState::Settled, "{name}");
                assert_eq!(
                    decision.tracking.last_good_revision,
                    Some(rev(v2)),
                    "{name}"
                );
                assert_eq!(
                    decision.actions,
                    if records {
                        vec![RolloutAction::RecordGoodRevision {
                            component: Component::Signaling,
                            revision: rev(v2),
                        }]
                    } else {
                        vec![]
                    },
                    "{name}"
                );
            }
            Expect::RolledBack(reason) => {
                assert_eq!(
                    decision.template,
                    TemplateChoice::LastGood {
                        revision: v1.revision.clone()
                    },
                    "{name}"
                );
                let [
                    RolloutAction::Rollback {
                        from_revision,
                        to_revision,
                        reason: got,
                        message,
                        ..
                    },
                ] = decision.actions.as_slice()
                else {
                    panic!("{name}: expected one rollback, got {:?}", decision.actions);
                };
                assert_eq!(
                    (from_revision, to_revision, *got),
                    (&rev(v2), &v1.revision, reason),
                    "{name}"
                );
                assert!(message.contains(&rev(v2)), "{name}: {message}");
                let rolled_back = decision.rolled_back.as_ref().expect("RolledBack condition");
                assert_eq!(rolled_back.reason, reason.as_str(), "{name}");
                assert_eq!(rolled_back.bad_revision, rev(v2), "{name}");
                assert_eq!(decision.tracking.failed_revision, Some(rev(v2)), "{name}");
                assert_eq!(decision.tracking.failed_generation, Some(7), "{name}");
            }
            Expect::Degraded(why) => {
                assert!(decision.actions.is_empty(), "{name}");
                assert_eq!(decision.template, TemplateChoice::Desired, "{name}");
                assert!(decision.rolled_back.is_none(), "{name}");
                let degraded = decision.degraded.as_ref().expect("Degraded");
                assert!(
                    degraded.message.contains(why),
                    "{name}: {}",
                    degraded.message
                );
            }
            Expect::Stalled => {
                assert!(
                    matches!(decision.health, Some(Health::Stalled { .. })),
                    "{name}"
                );
                assert!(decision.actions.is_empty(), "{name}");
                assert_eq!(
                    decision.degraded.as_ref().map(|d| d.reason.as_str()),
                    Some("RolloutStalled")
                );
                assert_eq!(decision.state, RolloutState::Settled, "{name}");
            }
        }
    }
}

#[test]
fn first_revision_failing_has_nothing_to_roll_back_to() {
    let v2 = "signaling:v2";
    let observed = WorkloadObservation::from_deployment(&deployment(v2, 2, 2, 0, true), &[]);
    let mut fresh = tracking(v2, 0, None);
    fresh.last_good_revision = None;
    let decision = decide(&policy(), v2, &observed, &fresh, None, 1, 400);
    assert!(decision.actions.is_empty());
    let degraded = decision.degraded.expect("Degraded");
    assert_eq!(degraded.reason, "ProgressDeadlineExceeded");
    assert!(degraded.message.contains("no earlier healthy revision"));
}

#[test]
fn a_new_revision_restarts_the_clocks() {
    // Tracking still describes v1; the workload now runs v2: the deadline
    // counts from now, not from when v1 appeared.
    let v2 = "signaling:v2";
    let observed = WorkloadObservation::from_deployment(&deployment(v2, 2, 1, 0, false), &[]);
    let old = tracking("signaling:v1", 0, Some(10));
    let decision = decide(&policy(), v2, &observed, &old, None, 2, 10_000);
    assert!(
        matches!(decision.health, Some(Health::Progressing { .. })),
        "{decision:?}"
    );
    assert_eq!(decision.tracking.revision, Some(rev(v2)));
    assert_eq!(decision.tracking.revision_since, Some(Time(at(10_000))));
    assert_eq!(decision.tracking.ready_since, None);
}

#[test]
fn a_failed_revision_is_not_retried_until_the_generation_changes() {
    let v1 = good_record("signaling:v1");
    let v2 = "signaling:v2";
    let v3 = "signaling:v3";
    // Generation 7: v2 fails and is rolled back.
    let failing = WorkloadObservation::from_deployment(&deployment(v2, 3, 1, 0, true), &[]);
    let first = decide(
        &policy(),
        v2,
        &failing,
        &tracking(v2, 0, None),
        Some(&v1),
        7,
        310,
    );
    assert!(matches!(
        first.actions.as_slice(),
        [RolloutAction::Rollback { .. }]
    ));

    // Same generation, the workload runs v1 again: v2 stays held back, no
    // second rollback action, RolledBack stays.
    let back_on_v1 =
        WorkloadObservation::from_deployment(&deployment("signaling:v1", 3, 3, 3, false), &[]);
    let held = decide(
        &policy(),
        v2,
        &back_on_v1,
        &first.tracking,
        Some(&v1),
        7,
        320,
    );
    assert_eq!(
        held.template,
        TemplateChoice::LastGood {
            revision: v1.revision.clone()
        }
    );
    assert!(held.actions.is_empty(), "{:?}", held.actions);
    assert_eq!(
        held.rolled_back.as_ref().map(|r| r.bad_revision.clone()),
        Some(rev(v2))
    );

    // ... and once v1 is stable again it is settled (later components may go on).
    let settled = decide(
        &policy(),
        v2,
        &back_on_v1,
        &held.tracking,
        Some(&v1),
        7,
        400,
    );
    assert_eq!(settled.state, RolloutState::Settled);
    assert_eq!(
        settled.template,
        TemplateChoice::LastGood {
            revision: v1.revision.clone()
        }
    );

    // Generation 8 with the same v2: tried again.
    let retried = decide(
        &policy(),
        v2,
        &back_on_v1,
        &settled.tracking,
        Some(&v1),
        8,
        500,
    );
    assert_eq!(retried.template, TemplateChoice::Desired);
    assert!(retried.rolled_back.is_none());
    assert_eq!(retried.tracking.failed_revision, None);

    // Generation 9 with v3, which fails too: rolled back to v1 again (v2
    // never became good), and v3 is the held one now.
    let v3_failing = WorkloadObservation::from_deployment(
        &deployment(v3, 3, 3, 0, false),
        &[pod("s-c", v3, false, 9, true)],
    );
    let second = decide(
        &policy(),
        v3,
        &v3_failing,
        &retried.tracking,
        Some(&v1),
        9,
        600,
    );
    let [
        RolloutAction::Rollback {
            from_revision,
            to_revision,
            reason,
            ..
        },
    ] = second.actions.as_slice()
    else {
        panic!("expected a rollback: {:?}", second.actions);
    };
    assert_eq!(from_revision, &rev(v3));
    assert_eq!(to_revision, &v1.revision);
    assert_eq!(*reason, FailureReason::CrashLoop);
    assert_eq!(second.tracking.failed_revision, Some(rev(v3)));
    assert_eq!(second.tracking.failed_generation, Some(9));
    assert_eq!(
        second.tracking.last_good_revision,
        Some(v1.revision.clone())
    );
}

#[test]
fn stateful_set_readiness_counts_only_the_update_revision() {
    let mut set = StatefulSet {
        metadata: ObjectMeta {
            generation: Some(2),
            ..ObjectMeta::default()
        },
        spec: StatefulSetSpec {
            replicas: Some(3),
            template: template("redis:7.4"),
            ..StatefulSetSpec::default()
        },
        status: Some(StatefulSetStatus {
            observed_generation: Some(2),
            replicas: 3,
            ready_replicas: Some(3),
            updated_replicas: Some(1),
            current_revision: Some("redis-old".to_owned()),
            update_revision: Some("redis-new".to_owned()),
            ..StatefulSetStatus::default()
        }),
    };
    let rolling = WorkloadObservation::from_stateful_set(&set, &[]);
    assert_eq!(rolling.ready_updated, 1);
    assert!(!rolling.all_ready());
    if let Some(status) = set.status.as_mut() {
        status.updated_replicas = Some(3);
        status.current_revision = Some("redis-new".to_owned());
    }
    assert!(WorkloadObservation::from_stateful_set(&set, &[]).all_ready());
}

#[test]
fn last_good_template_round_trips_through_a_controller_revision() {
    let owner = OwnerReference {
        api_version: "videochat.dev/v1alpha1".to_owned(),
        kind: "VideoChatCluster".to_owned(),
        name: "demo".to_owned(),
        uid: "uid-1".to_owned(),
        controller: Some(true),
        ..OwnerReference::default()
    };
    let record = good_record("signaling:v1");
    let stored = controller_revision(
        "demo",
        "calls",
        owner.clone(),
        Component::Signaling,
        &record,
        3,
    );
    assert_eq!(
        stored.metadata.name.as_deref(),
        Some(format!("demo-signaling-{}", record.revision).as_str())
    );
    assert_eq!(stored.metadata.owner_references, Some(vec![owner.clone()]));
    let list = vec![stored.clone()];
    assert_eq!(
        last_good_record(&list, "demo", Component::Signaling, &record.revision),
        Some(record.clone())
    );
    // Another component or cluster does not match.
    assert_eq!(
        last_good_record(&list, "demo", Component::Turn, &record.revision),
        None
    );
    assert_eq!(
        last_good_record(&list, "other", Component::Signaling, &record.revision),
        None
    );

    // History is pruned beyond the limit, oldest first, never the kept one.
    let many: Vec<_> = (1..=5)
        .map(|i| {
            controller_revision(
                "demo",
                "calls",
                owner.clone(),
                Component::Signaling,
                &good_record(&format!("signaling:v{i}")),
                i,
            )
        })
        .collect();
    let pruned = revisions_to_prune(&many, "demo", Component::Signaling, &rev("signaling:v5"));
    assert_eq!(
        pruned,
        vec![
            format!("demo-signaling-{}", rev("signaling:v1")),
            format!("demo-signaling-{}", rev("signaling:v2")),
        ]
    );
}

#[test]
fn rollout_order_gates_later_components() {
    use RolloutState::{Absent, Rolling, Settled};
    let cases: Vec<(&str, [RolloutState; 4], [Gate; 4])> = vec![
        (
            "all settled: everyone may proceed",
            [Settled, Settled, Settled, Settled],
            [Gate::Proceed; 4],
        ),
        (
            "databases first: redis rolling holds signaling and TURN, creation is never held",
            [Rolling, Settled, Rolling, Absent],
            [
                Gate::Proceed,
                Gate::Proceed,
                Gate::Wait {
                    behind: Component::Redis,
                },
                Gate::Proceed,
            ],
        ),
        (
            "signaling before TURN",
            [Settled, Settled, Rolling, Rolling],
            [
                Gate::Proceed,
                Gate::Proceed,
                Gate::Proceed,
                Gate::Wait {
                    behind: Component::Signaling,
                },
            ],
        ),
        (
            "mongodb rolling holds both servers",
            [Settled, Rolling, Rolling, Rolling],
            [
                Gate::Proceed,
                Gate::Proceed,
                Gate::Wait {
                    behind: Component::MongoDb,
                },
                Gate::Wait {
                    behind: Component::MongoDb,
                },
            ],
        ),
    ];
    let order = [
        Component::Redis,
        Component::MongoDb,
        Component::Signaling,
        Component::Turn,
    ];
    for (name, states, gates) in cases {
        let states: BTreeMap<_, _> = order.into_iter().zip(states).collect();
        let got = gate_rollouts(&states);
        let want: BTreeMap<_, _> = order.into_iter().zip(gates).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_held_component_keeps_its_running_template_but_a_rollback_is_never_held() {
    let v1 = good_record("signaling:v1");
    // Signaling: v2 progressing. TURN: its spec changed (new revision not
    // applied yet). TURN must wait and keep its current template.
    let signaling = decide(
        &policy(),
        "signaling:v2",
        &WorkloadObservation::from_deployment(&deployment("signaling:v2", 2, 1, 0, false), &[]),
        &tracking("signaling:v2", 0, None),
        Some(&v1),
        5,
        30,
    );
    assert_eq!(signaling.state, RolloutState::Rolling);
    let turn_desired = rev("turn:v2");
    let turn_observed =
        WorkloadObservation::from_deployment(&deployment("turn:v1", 2, 2, 2, false), &[]);
    // TURN ran a good revision before (a component never good is still
    // being set up and is not held).
    let turn_tracking = RolloutTracking {
        last_good_revision: Some(rev("turn:v1")),
        ..RolloutTracking::default()
    };
    let turn = decide_rollout(&RolloutInput {
        component: Component::Turn,
        policy: &policy(),
        generation: 5,
        desired_revision: &turn_desired,
        observed: Some(&turn_observed),
        last_good: None,
        tracking: &turn_tracking,
        now: at(30),
    });
    let mut decisions =
        BTreeMap::from([(Component::Signaling, signaling), (Component::Turn, turn)]);
    apply_rollout_order(&mut decisions);
    assert_eq!(
        decisions[&Component::Signaling].template,
        TemplateChoice::Desired
    );
    assert_eq!(
        decisions[&Component::Turn].template,
        TemplateChoice::Current
    );
    assert_eq!(
        decisions[&Component::Turn].waiting_for,
        Some(Component::Signaling)
    );

    // A TURN rollback proceeds even while signaling rolls.
    let turn_good = RevisionRecord {
        revision: rev("turn:v1"),
        template: template("turn:v1"),
    };
    let turn_failing =
        WorkloadObservation::from_deployment(&deployment("turn:v2", 2, 2, 0, true), &[]);
    let turn_tracking = RolloutTracking {
        revision: Some(turn_desired.clone()),
        revision_since: Some(Time(at(0))),
        ..RolloutTracking::default()
    };
    let turn = decide_rollout(&RolloutInput {
        component: Component::Turn,
        policy: &policy(),
        generation: 5,
        desired_revision: &turn_desired,
        observed: Some(&turn_failing),
        last_good: Some(&turn_good),
        tracking: &turn_tracking,
        now: at(400),
    });
    decisions.insert(Component::Turn, turn);
    apply_rollout_order(&mut decisions);
    assert_eq!(
        decisions[&Component::Turn].template,
        TemplateChoice::LastGood {
            revision: turn_good.revision.clone()
        }
    );
}

#[test]
fn a_component_never_good_is_not_held_and_holds_nobody() {
    // First install: signaling has not been good yet and still rolls; TURN's
    // spec changed meanwhile. Nothing waits: there is no good state to protect.
    let mut fresh_tracking = tracking("signaling:v2", 0, None);
    fresh_tracking.last_good_revision = None;
    let signaling = decide(
        &policy(),
        "signaling:v2",
        &WorkloadObservation::from_deployment(&deployment("signaling:v2", 2, 1, 0, false), &[]),
        &fresh_tracking,
        None,
        1,
        30,
    );
    assert_eq!(signaling.state, RolloutState::Rolling);
    let turn_desired = rev("turn:v2");
    let turn_observed =
        WorkloadObservation::from_deployment(&deployment("turn:v1", 2, 2, 2, false), &[]);
    let turn_tracking = RolloutTracking {
        last_good_revision: Some(rev("turn:v1")),
        ..RolloutTracking::default()
    };
    let turn = decide_rollout(&RolloutInput {
        component: Component::Turn,
        policy: &policy(),
        generation: 1,
        desired_revision: &turn_desired,
        observed: Some(&turn_observed),
        last_good: None,
        tracking: &turn_tracking,
        now: at(30),
    });
    let mut decisions =
        BTreeMap::from([(Component::Signaling, signaling), (Component::Turn, turn)]);
    apply_rollout_order(&mut decisions);
    assert_eq!(
        decisions[&Component::Turn].template,
        TemplateChoice::Desired
    );
    assert_eq!(decisions[&Component::Turn].waiting_for, None);
}
