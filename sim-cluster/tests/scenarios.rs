//! Operator scenarios on the simulated cluster: the real operator
//! (`videochat_operator::io::controller::run`) against the simulated API and
//! controllers, each test with a cluster of its own (they run in
//! parallel). Each asserts what a platform team would check.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::Duration;
use support::operator::OperatorReplica;
use support::running::kubectl_apply;
use support::{cluster, eventually};
use videochat_operator::VideoChatCluster;
use videochat_operator::labels::{self, Component};

const NAMESPACE: &str = "videochat";
const CLUSTER: &str = "demo";
/// Bound on any single wait: generous for two shared cores, far below a
/// default resync (300 s), so a missed watch shows as a failure.
const LIMIT: Duration = Duration::from_secs(60);

fn kubectl() -> PatchParams {
    PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..PatchParams::default()
    }
}

fn component_pods(component: Component) -> ListParams {
    ListParams::default().labels(&format!(
        "{}={CLUSTER},{}={}",
        labels::INSTANCE,
        labels::COMPONENT,
        component.as_str()
    ))
}

#[allow(dead_code)]
async fn live_pods(client: &Client, component: Component) -> Option<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods.list(&component_pods(component)).await.ok()?;
    Some(
        list.items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count(),
    )
}

async fn deployment_replicas(client: &Client, component: Component) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .get(&component.workload_name(CLUSTER))
        .await
        .ok()?
        .spec
        .replicas
}

/// Waits until the operator has applied every workload.
async fn wait_for_workloads(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("the operator applies every workload", LIMIT, || async {
        for component in [Component::Signaling, Component::Turn] {
            deployments
                .get(&component.workload_name(CLUSTER))
                .await
                .ok()?;
        }
        for component in [Component::Redis, Component::MongoDb] {
            sets.get(&component.workload_name(CLUSTER)).await.ok()?;
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_changed_with_kubectl_while_autoscaling_is_off() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let spec = |replicas: i32| json!({"autoscaling": {"enabled": false}, "signaling": {"replicas": replicas}});
    kubectl_apply(&client, spec(2)).await.expect("apply");
    eventually("signaling wants two pods", LIMIT, || async {
        (deployment_replicas(&client, Component::Signaling).await? == 2).then_some(())
    })
    .await;

    // Someone scales the Deployment by hand: the resource stays the source
    // of truth, and the operator puts the count back without waiting for
    // a resync.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .patch(
            &Component::Signaling.workload_name(CLUSTER),
            &kubectl(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("kubectl patch deployment");
    eventually(
        "the declared two signaling replicas come back",
        LIMIT,
        || async { (deployment_replicas(&client, Component::Signaling).await? == 2).then_some(()) },
    )
    .await;

    // The resource's own replicas, edited with kubectl, is followed.
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let patched = clusters
        .patch(
            CLUSTER,
            &kubectl(),
            &Patch::Merge(json!({"spec": {"signaling": {"replicas": 3}}})),
        )
        .await
        .expect("kubectl patch vcc");
    assert_eq!(patched.spec.signaling.replicas, 3);
    eventually("signaling wants three pods", LIMIT, || async {
        (deployment_replicas(&client, Component::Signaling).await? == 3).then_some(())
    })
    .await;
    // No pod runs without the kubelet, so a rollout cannot finish and the
    // pod count is not asserted here (see docs/testing.md).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_size_edit_is_refused_with_a_message_and_the_rest_still_reconciles() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    let spec = |size: &str, replicas: i32| {
        json!({
            "autoscaling": {"enabled": false},
            "signaling": {"replicas": replicas},
            "redis": {"managed": {"storage": {"size": size}}},
        })
    };
    kubectl_apply(&client, spec("1Gi", 2)).await.expect("apply");
    wait_for_workloads(&client).await;

    // A person grows Redis storage and, in the same file, signaling.
    let grown = kubectl_apply(&client, spec("2Gi", 3)).await;
    match grown {
        Err(kube::Error::Api(status)) => {
            // Refused on admission: the message says why.
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.to_lowercase().contains("storage"),
                "the refusal names the storage: {}",
                status.message
            );
            // They fix the file; the signaling edit goes through.
            kubectl_apply(&client, spec("1Gi", 3))
                .await
                .expect("the file without the storage edit applies");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => {
            // Accepted: the resource must say why storage was not changed.
            let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
            eventually(
                "a condition explains the storage refusal",
                LIMIT,
                || async {
                    let vcc = clusters.get(CLUSTER).await.ok()?;
                    let status = vcc.status?;
                    status
                        .conditions
                        .iter()
                        .any(|c| c.message.to_lowercase().contains("storage"))
                        .then_some(())
                },
            )
            .await;
        }
    }
    // Everything else is still reconciled.
    eventually("signaling reaches three replicas", LIMIT, || async {
        (deployment_replicas(&client, Component::Signaling).await? == 3).then_some(())
    })
    .await;
    // And the data volume is untouched.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let list = claims.list(&ListParams::default()).await.expect("claims");
    let redis_claims: Vec<_> = list
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains(&Component::Redis.workload_name(CLUSTER)))
        })
        .collect();
    assert!(!redis_claims.is_empty(), "Redis has its claim");
    for claim in redis_claims {
        let size = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone());
        assert_eq!(size.as_deref(), Some("1Gi"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_cluster_collects_children_and_keeps_data_with_its_credentials() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let _operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    kubectl_apply(&client, json!({})).await.expect("apply");
    wait_for_workloads(&client).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let mongodb_secret = labels::mongodb_secret_name(CLUSTER);
    let credentials = eventually("MongoDB credentials exist", LIMIT, || async {
        secrets.get(&mongodb_secret).await.ok()?.data
    })
    .await;
    eventually("database claims exist", LIMIT, || async {
        let list = claims.list(&ListParams::default()).await.ok()?;
        (list.items.len() >= 2).then_some(())
    })
    .await;

    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    clusters
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .expect("kubectl delete vcc");
    let children = ListParams::default().labels(&labels::children_selector(CLUSTER));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    eventually("children garbage-collected", LIMIT, || async {
        let empty = deployments.list(&children).await.ok()?.items.is_empty()
            && sets.list(&children).await.ok()?.items.is_empty()
            && services.list(&children).await.ok()?.items.is_empty()
            && maps.list(&children).await.ok()?.items.is_empty()
            && pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty();
        empty.then_some(())
    })
    .await;
    // The data stays (claims are not owned by the resource)...
    let kept = claims.list(&ListParams::default()).await.expect("claims");
    assert!(kept.items.len() >= 2, "database claims are kept");
    // ...and a cluster created again under the same name can open it: the
    // credentials are the ones the data was written with.
    kubectl_apply(&client, json!({}))
        .await
        .expect("apply again");
    wait_for_workloads(&client).await;
    let again = eventually("MongoDB credentials exist again", LIMIT, || async {
        secrets.get(&mongodb_secret).await.ok()?.data
    })
    .await;
    // Compared, never printed: they are credentials.
    assert!(
        again == credentials,
        "the re-created cluster's MongoDB credentials differ from those the kept data was written with"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_failover_mid_rollout_finishes_the_rollout_once() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::coordination::v1::Lease;
    use support::operator::short_election;
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let mut replicas = [
        OperatorReplica::start(
            sim.address,
            NAMESPACE,
            "operator-a",
            Some(short_election("operator-a", NAMESPACE)),
        ),
        OperatorReplica::start(
            sim.address,
            NAMESPACE,
            "operator-b",
            Some(short_election("operator-b", NAMESPACE)),
        ),
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder_and_transitions = || async {
        let lease = leases.get("videochat-operator").await.ok()?;
        let spec = lease.spec?;
        Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
    };
    let (leader, transitions) =
        eventually("a replica takes the Lease", LIMIT, holder_and_transitions).await;
    kubectl_apply(&client, json!({"autoscaling": {"enabled": false}}))
        .await
        .expect("apply");
    wait_for_workloads(&client).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let signaling = Component::Signaling.workload_name(CLUSTER);
    let image_of = |d: &Deployment| {
        d.spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
    };
    let before = deployments.get(&signaling).await.expect("signaling");
    let old_image = image_of(&before).expect("an image");
    let new_image = format!("{old_image}-next");

    // A new revision, and the leader dies while rolling it out.
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let edited = kubectl_apply(
        &client,
        json!({"autoscaling": {"enabled": false}, "signaling": {"image": new_image}}),
    )
    .await
    .expect("apply the new revision");
    let generation = edited.metadata.generation.expect("generation");
    let leader_index = replicas
        .iter()
        .position(|r| r.identity == leader)
        .expect("leader is ours");
    replicas[leader_index].kill();

    let (new_leader, new_transitions) =
        eventually("the other replica takes the Lease", LIMIT, || async {
            let (holder, transitions) = holder_and_transitions().await?;
            (holder != leader).then_some((holder, transitions))
        })
        .await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        new_transitions,
        transitions + 1,
        "one takeover, no flapping"
    );
    eventually(
        "the new leader finishes the rollout and reports it",
        LIMIT,
        || async {
            let d = deployments.get(&signaling).await.ok()?;
            let vcc = clusters.get(CLUSTER).await.ok()?;
            (image_of(&d).as_deref() == Some(new_image.as_str())
                && vcc.status?.observed_generation == Some(generation))
            .then_some(())
        },
    )
    .await;
    // No duplicate step: one ReplicaSet per revision of signaling.
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let owned: Vec<ReplicaSet> = sets
        .list(&ListParams::default())
        .await
        .expect("replica sets")
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&signaling))
        })
        .collect();
    let with_new: Vec<_> = owned
        .iter()
        .filter(|rs| {
            rs.spec
                .template
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref())
                == Some(new_image.as_str())
        })
        .collect();
    assert_eq!(
        with_new.len(),
        1,
        "exactly one ReplicaSet runs the new revision"
    );
}

/// Applies `spec`, waits until the operator settles, then watches a quiet
/// window: no writes at all, and at most `max_reconciles` reconciles.
async fn assert_idle(spec: Value, window: Duration, max_reconciles: u64, why: &str) {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let operator = OperatorReplica::start(sim.address, NAMESPACE, "operator-0", None);
    kubectl_apply(&client, spec).await.expect("apply");
    wait_for_workloads(&client).await;
    // Settled: the operator has made no write for a few seconds.
    let quiet = Duration::from_secs(5);
    eventually("the operator settles", LIMIT, || async {
        let last_write = sim
            .requests()
            .iter()
            .rev()
            .find(|r| r.is_write())
            .map(|r| r.at)?;
        (last_write.elapsed() > quiet).then_some(())
    })
    .await;
    // Nothing changes now: every write would be the operator's.
    let clusters: Api<VideoChatCluster> = Api::namespaced(client.clone(), NAMESPACE);
    let status_of = || async {
        clusters
            .get(CLUSTER)
            .await
            .ok()
            .and_then(|c| serde_json::to_value(c.status).ok())
            .unwrap_or_default()
    };
    let status_before = status_of().await;
    let started = std::time::Instant::now();
    let reconciles_before = operator.reconciles();
    tokio::time::sleep(window).await;
    let writes: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.at >= started && r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let reconciles = operator.reconciles() - reconciles_before;
    if !writes.is_empty() {
        // When each write came relative to the window, and what the
        // workloads report now: a rollout step that lands late shows here.
        let timeline: Vec<String> = sim
            .requests()
            .iter()
            .filter(|r| r.is_write())
            .map(|r| {
                let at = r.at.saturating_duration_since(started).as_secs_f64()
                    - started.saturating_duration_since(r.at).as_secs_f64();
                format!("{at:+.2}s {} {}", r.method, r.path)
            })
            .collect();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
        let workloads: Vec<String> = deployments
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .map(|d| format!("{:?}: {:?}", d.metadata.name, d.status))
            .collect();
        eprintln!(
            "writes (seconds from the window's start):\n{}\ndeployments:\n{}",
            timeline.join("\n"),
            workloads.join("\n")
        );
    }
    assert!(
        writes.is_empty(),
        "an idle cluster got writes: {writes:?}\nstatus before: {status_before}\nstatus after:  {}",
        status_of().await
    );
    assert!(
        reconciles <= max_reconciles,
        "{reconciles} reconciles in {window:?} of idleness (at most {max_reconciles}: {why})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_cluster_causes_no_writes_and_no_reconcile_storm() {
    assert_idle(
        json!({}),
        Duration::from_secs(20),
        1,
        "the resync is 300 s and the progress poll 30 s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_autoscaled_cluster_causes_no_writes_and_reconciles_only_to_read_load() {
    // The autoscaler looks at load every metricsIntervalSeconds (5 s here):
    // four looks fit 20 s, plus one for the window's edges.
    assert_idle(
        json!({"autoscaling": {"enabled": true, "metricsIntervalSeconds": 5}}),
        Duration::from_secs(20),
        5,
        "one per metrics interval",
    )
    .await;
}
