//! The simulated API answers as a real API server does, through an
//! unchanged `kube::Client`.

mod support;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;
use support::{cluster, eventually};
use videochat_operator::VideoChatCluster;

const LIMIT: Duration = Duration::from_secs(20);

fn api_error_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn deployment(name: &str, replicas: i32, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    })
}

#[tokio::test]
async fn apply_merges_by_field_manager_and_a_person_keeps_replicas_until_forced() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let operator = PatchParams::apply("videochat-operator");
    deployments
        .patch(
            "web",
            &operator,
            &Patch::Apply(deployment("web", 2, "img:1")),
        )
        .await
        .expect("first apply creates");
    // A person scales with kubectl (a merge patch under their manager).
    let person = PatchParams {
        field_manager: Some("kubectl-scale".into()),
        ..PatchParams::default()
    };
    deployments
        .patch(
            "web",
            &person,
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("kubectl scale");
    let refused = deployments
        .patch(
            "web",
            &operator,
            &Patch::Apply(deployment("web", 2, "img:1")),
        )
        .await
        .expect_err("an unforced apply of another manager's field conflicts");
    assert_eq!(api_error_code(&refused), Some(409));
    assert!(refused.to_string().contains(".spec.replicas"), "{refused}");
    let forced = deployments
        .patch(
            "web",
            &operator.clone().force(),
            &Patch::Apply(deployment("web", 2, "img:1")),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.replicas, Some(2));
}

#[tokio::test]
async fn status_is_kept_apart_and_generation_counts_spec_changes_only() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let params = PatchParams::apply("test").force();
    let created = deployments
        .patch("gen", &params, &Patch::Apply(deployment("gen", 0, "img:1")))
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));
    let labelled = deployments
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}, "status": {"replicas": 7}})),
        )
        .await
        .expect("label");
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata does not bump generation"
    );
    assert_ne!(
        labelled.status.as_ref().and_then(|s| s.replicas),
        Some(7),
        "status is not written through the main resource"
    );
    let changed = deployments
        .patch("gen", &params, &Patch::Apply(deployment("gen", 0, "img:2")))
        .await
        .expect("template change");
    assert_eq!(changed.metadata.generation, Some(2));
    // The controller answers with observedGeneration 2.
    eventually("observedGeneration reaches 2", LIMIT, || async {
        let d = deployments.get("gen").await.ok()?;
        (d.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stale_resource_version_is_refused_with_409() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut first: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cm"}, "data": {"a": "1"}}))
            .expect("cm");
    first = maps
        .create(&PostParams::default(), &first)
        .await
        .expect("create");
    let mut update = first.clone();
    update.data = Some([("a".to_owned(), "2".to_owned())].into());
    maps.replace("cm", &PostParams::default(), &update)
        .await
        .expect("first replace");
    let stale = maps
        .replace("cm", &PostParams::default(), &update)
        .await
        .expect_err("second replace with the old resourceVersion");
    assert_eq!(api_error_code(&stale), Some(409));
}

#[tokio::test]
async fn immutable_fields_are_refused_with_422() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let params = PatchParams::apply("test").force();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let set = |size: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {"replicas": 0, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}]},
        })
    };
    sets.patch("db", &params, &Patch::Apply(set("1Gi")))
        .await
        .expect("create");
    let refused = sets
        .patch("db", &params, &Patch::Apply(set("2Gi")))
        .await
        .expect_err("storage edit");
    assert_eq!(api_error_code(&refused), Some(422));
    assert!(refused.to_string().contains("Forbidden"), "{refused}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch("sel", &params, &Patch::Apply(deployment("sel", 0, "i")))
        .await
        .expect("create");
    let mut other = deployment("sel", 0, "i");
    other["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    other["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let refused = deployments
        .patch("sel", &params, &Patch::Apply(other))
        .await
        .expect_err("selector edit");
    assert_eq!(api_error_code(&refused), Some(422));

    let services: Api<Service> = Api::namespaced(client, "default");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
    let created = services
        .patch("s", &params, &Patch::Apply(svc.clone()))
        .await
        .expect("create");
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a clusterIP is allocated");
    // Re-applying without clusterIP keeps the allocated one (it is not ours).
    let again = services
        .patch("s", &params, &Patch::Apply(svc.clone()))
        .await
        .expect("re-apply");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip), Some(ip));
    let mut moved = svc;
    moved["spec"]["clusterIP"] = json!("10.96.99.99");
    let refused = services
        .patch("s", &params, &Patch::Apply(moved))
        .await
        .expect_err("clusterIP edit");
    assert_eq!(api_error_code(&refused), Some(422));
}

#[tokio::test]
async fn the_crd_schema_and_cel_rules_are_enforced_on_admission() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let clusters: Api<VideoChatCluster> = Api::namespaced(client, "default");
    let params = PatchParams::apply("kubectl").force();
    let bad = json!({
        "apiVersion": "videochat.dev/v1alpha1", "kind": "VideoChatCluster",
        "metadata": {"name": "bad"},
        "spec": {"turn": {"relayPortRange": {"min": 50000, "max": 49000}}},
    });
    let refused = clusters
        .patch("bad", &params, &Patch::Apply(bad))
        .await
        .expect_err("CEL rule");
    assert_eq!(api_error_code(&refused), Some(422));
    assert!(
        refused
            .to_string()
            .contains("relayPortRange.min must not exceed relayPortRange.max"),
        "{refused}"
    );
    let wrong_type = json!({
        "apiVersion": "videochat.dev/v1alpha1", "kind": "VideoChatCluster",
        "metadata": {"name": "bad"},
        "spec": {"signaling": {"replicas": "three"}},
    });
    let refused = clusters
        .patch("bad", &params, &Patch::Apply(wrong_type))
        .await
        .expect_err("schema type");
    assert_eq!(api_error_code(&refused), Some(422));
    assert!(
        refused.to_string().contains("spec.signaling.replicas"),
        "{refused}"
    );
    let good = json!({"apiVersion": "videochat.dev/v1alpha1", "kind": "VideoChatCluster", "metadata": {"name": "good"}, "spec": {}});
    let created = clusters
        .patch("good", &params, &Patch::Apply(good))
        .await
        .expect("a valid object is admitted");
    assert_eq!(created.name_any(), "good");
}

#[tokio::test]
async fn watches_resume_from_a_resource_version_and_see_deletes() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let stream = watcher(
        maps.clone(),
        watcher::Config::default().labels("watched=yes"),
    )
    .boxed();
    let mut objects = Box::pin(kube::runtime::WatchStreamExt::applied_objects(stream));
    let first = async {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "w1", "labels": {"watched": "yes"}}}),
        )
        .expect("cm");
        maps.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    };
    first.await;
    let seen = tokio::time::timeout(LIMIT, objects.try_next())
        .await
        .expect("an event arrives")
        .expect("no watch error")
        .expect("stream open");
    assert_eq!(seen.name_any(), "w1");
    // A label change that leaves the selector reads as a delete.
    let listed = maps.list(&Default::default()).await.expect("list");
    let rv = listed.metadata.resource_version.expect("list rv");
    maps.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watched": "no"}}})),
    )
    .await
    .expect("relabel");
    let mut raw = maps
        .watch(
            &kube::api::WatchParams::default().labels("watched=yes"),
            &rv,
        )
        .await
        .expect("watch from rv")
        .boxed();
    let event = tokio::time::timeout(LIMIT, raw.next())
        .await
        .expect("event")
        .expect("open")
        .expect("ok");
    assert!(
        matches!(event, kube::api::WatchEvent::Deleted(_)),
        "{event:?}"
    );
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents_and_finalizers_hold_objects() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deployments
        .patch(
            "gc",
            &PatchParams::apply("test"),
            &Patch::Apply(deployment("gc", 2, "img:1")),
        )
        .await
        .expect("create");
    eventually("two pods", LIMIT, || async {
        let list = pods.list(&Default::default()).await.ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;
    deployments
        .delete("gc", &DeleteParams::background())
        .await
        .expect("delete");
    eventually("pods and ReplicaSets collected", LIMIT, || async {
        let list = pods.list(&Default::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;

    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .expect("cm");
    maps.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    maps.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let held = maps
        .get("held")
        .await
        .expect("still there while a finalizer holds it");
    assert!(held.metadata.deletion_timestamp.is_some());
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    let gone = maps
        .get("held")
        .await
        .expect_err("gone once the finalizers are");
    assert_eq!(api_error_code(&gone), Some(404));
}

#[tokio::test]
async fn host_network_pods_get_one_node_each_and_the_rest_wait_unschedulable() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut relay = deployment("relay", 3, "relay:1");
    relay["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    relay["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 3478, "protocol": "UDP"}]);
    deployments
        .patch("relay", &PatchParams::apply("test"), &Patch::Apply(relay))
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let (nodes, pending) = eventually("two bound, one unschedulable", LIMIT, || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let nodes: std::collections::BTreeSet<String> = list
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        let pending: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| {
                let condition = p
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
                condition.message.clone()
            })
            .collect();
        (list.items.len() == 3 && nodes.len() == 2 && pending.len() == 1)
            .then_some((nodes, pending))
    })
    .await;
    assert_eq!(nodes.len(), 2, "one relay per node");
    assert!(pending[0].contains("free ports"), "{}", pending[0]);
}

#[tokio::test]
async fn stateful_set_pods_start_in_order_and_claims_outlive_the_set() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let set = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
    });
    sets.patch("db", &PatchParams::apply("test"), &Patch::Apply(set))
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    eventually("db-0 and both claims", LIMIT, || async {
        pods.get("db-0").await.ok()?;
        claims.get("data-db-0").await.ok()?;
        claims.get("data-db-1").await.ok()?;
        Some(())
    })
    .await;
    // db-0 never becomes Ready here (no kubelet), so db-1 is never made.
    // Passes of the controllers, run here so the check does not hang on timing.
    for _ in 0..3 {
        videochat_sim_cluster::controllers::run_pass(&sim.store);
    }
    let missing = pods.get("db-1").await.expect_err("db-1 waits for db-0");
    assert_eq!(api_error_code(&missing), Some(404));
    sets.delete("db", &DeleteParams::background())
        .await
        .expect("delete");
    eventually("the set's pods are collected", LIMIT, || async {
        pods.get("db-0").await.is_err().then_some(())
    })
    .await;
    claims
        .get("data-db-0")
        .await
        .expect("claims are kept when the set goes");
}

#[tokio::test]
async fn an_unknown_image_fails_to_pull_and_the_rollout_exceeds_its_deadline() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut bad = deployment("bad", 1, "registry.invalid/none:0");
    bad["spec"]["progressDeadlineSeconds"] = json!(2);
    deployments
        .patch("bad", &PatchParams::apply("test"), &Patch::Apply(bad))
        .await
        .expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    eventually("the pod reports the pull failure", LIMIT, || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let reason = list
            .items
            .first()?
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()?;
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(())
    })
    .await;
    let message = eventually(
        "Progressing=False ProgressDeadlineExceeded",
        LIMIT,
        || async {
            let d = deployments.get("bad").await.ok()?;
            let status = serde_json::to_value(d.status?).ok()?;
            status["conditions"].as_array()?.iter().find_map(|c| {
                (c["type"] == "Progressing"
                    && c["status"] == "False"
                    && c["reason"] == "ProgressDeadlineExceeded")
                    .then(|| c["message"].as_str().unwrap_or_default().to_owned())
            })
        },
    )
    .await;
    assert!(message.contains("timed out progressing"), "{message}");
}

#[tokio::test]
async fn watches_that_allow_bookmarks_get_them_with_the_current_resource_version() {
    let sim = cluster().await;
    let client = sim.client().expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let listed = maps.list(&Default::default()).await.expect("list");
    let rv = listed.metadata.resource_version.expect("list rv");
    let mut events = maps
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    // A change elsewhere moves the global resourceVersion past the list's.
    let other: Api<ConfigMap> = Api::namespaced(client, "elsewhere");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("cm");
    other
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    // Bookmarks come every 2 s; other events (none here) are skipped.
    let bookmark = tokio::time::timeout(LIMIT, async {
        loop {
            match events.next().await {
                Some(Ok(kube::api::WatchEvent::Bookmark(bookmark))) => return bookmark,
                Some(_) => continue,
                None => panic!("the watch ended without a bookmark"),
            }
        }
    })
    .await
    .expect("a bookmark within the limit");
    let bookmarked: u64 = bookmark
        .metadata
        .resource_version
        .parse()
        .expect("numeric rv");
    assert!(bookmarked > rv.parse::<u64>().expect("numeric rv"));
}
