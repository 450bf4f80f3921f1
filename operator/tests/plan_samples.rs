//! Pure tests of the planning functions on the samples in config/samples.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::*;
use videochat_operator::observed::Observed;
use videochat_operator::plan::{Action, Change};

fn names(plan: &videochat_operator::plan::Plan) -> BTreeSet<String> {
    plan.objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                kind_of(o),
                o.metadata.name.clone().unwrap_or_default()
            )
        })
        .collect()
}

fn typed<K: serde::de::DeserializeOwned>(object: &DynamicObject) -> K {
    serde_json::from_value(json(object)).expect("typed")
}

/// The observed world after the plan was applied and every workload rolled out.
fn rolled_out(plan: &videochat_operator::plan::Plan) -> Observed {
    let mut objects = Vec::new();
    for object in &plan.objects {
        let mut value = json(object);
        value["metadata"]["generation"] = json!(1);
        match kind_of(object).as_str() {
            "Deployment" | "StatefulSet" => {
                let replicas = value["spec"]["replicas"].as_i64().unwrap_or(1);
                value["status"] = json!({
                    "observedGeneration": 1,
                    "replicas": replicas,
                    "readyReplicas": replicas,
                    "updatedReplicas": replicas,
                    "availableReplicas": replicas,
                    "currentRevision": "r1",
                    "updateRevision": "r1",
                });
            }
            _ => {}
        }
        objects.push(serde_json::from_value(value).expect("dynamic"));
    }
    Observed::new(objects)
}

#[test]
fn minimal_sample_plans_every_child_with_owner_and_labels() {
    let cluster = sample("minimal");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    let expected: BTreeSet<String> = [
        "Secret/demo-turn-secret",
        "Secret/demo-redis-credentials",
        "Secret/demo-admin-token",
        "Secret/demo-mongodb-credentials",
        "ConfigMap/demo-signaling-config",
        "ConfigMap/demo-signaling-turn-uris",
        "ConfigMap/demo-signaling-public-origins",
        "ConfigMap/demo-turn-config",
        "ConfigMap/demo-turn-addresses",
        "Deployment/demo-signaling",
        "Deployment/demo-turn",
        "StatefulSet/demo-redis",
        "StatefulSet/demo-mongodb",
        "Service/demo-signaling",
        "Service/demo-redis",
        "Service/demo-mongodb",
        "NetworkPolicy/demo-signaling",
        "NetworkPolicy/demo-turn",
        "NetworkPolicy/demo-redis",
        "NetworkPolicy/demo-mongodb",
        "PodDisruptionBudget/demo-signaling",
        "PodDisruptionBudget/demo-turn",
    ]
    .map(String::from)
    .into();
    assert_eq!(names(&plan), expected);

    for object in &plan.objects {
        let what = format!(
            "{}/{}",
            kind_of(object),
            object.metadata.name.clone().unwrap_or_default()
        );
        assert_eq!(
            object.metadata.namespace.as_deref(),
            Some("videochat"),
            "{what}"
        );
        let owners = object.metadata.owner_references.clone().unwrap_or_default();
        if what == "Secret/demo-mongodb-credentials" {
            // Kept with the data volume it opens, which outlives the resource.
            assert!(owners.is_empty(), "{what} has no owner");
        } else {
            assert_eq!(owners.len(), 1, "{what} has one owner");
            let owner = &owners[0];
            assert_eq!(owner.uid, UID, "{what}");
            assert_eq!(owner.kind, "VideoChatCluster", "{what}");
            assert_eq!(owner.api_version, "videochat.dev/v1alpha1", "{what}");
            assert_eq!(owner.controller, Some(true), "{what}");
        }
        let labels = object.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some("demo"),
            "{what}"
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("videochat-operator"),
            "{what}"
        );
    }
    // Everything is new: one Create per object, nothing else.
    assert_eq!(plan.actions.len(), plan.objects.len());
    assert!(plan.actions.iter().all(|a| matches!(
        a,
        Action::Apply {
            change: Change::Create,
            ..
        }
    )));
}

#[test]
fn selectors_match_pod_labels_and_services_select_their_pods() {
    let plan = plan_with(&sample("minimal"), &Observed::default(), "a", NOW);
    for (name, component) in [("demo-signaling", "signaling"), ("demo-turn", "turn")] {
        let deployment: Deployment = typed(find(&plan, "Deployment", name));
        let selector = deployment
            .spec
            .selector
            .match_labels
            .clone()
            .expect("selector");
        let pod_labels = deployment
            .spec
            .template
            .metadata
            .clone()
            .and_then(|m| m.labels)
            .expect("pod labels");
        for (k, v) in &selector {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{name}: selector {k} matches the pod template"
            );
        }
        assert_eq!(
            selector
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some(component)
        );
        // The version label must stay out of immutable selectors.
        assert!(!selector.contains_key("app.kubernetes.io/version"));
    }
    for (service, workload) in [
        ("demo-signaling", ("Deployment", "demo-signaling")),
        ("demo-redis", ("StatefulSet", "demo-redis")),
        ("demo-mongodb", ("StatefulSet", "demo-mongodb")),
    ] {
        let svc: Service = typed(find(&plan, "Service", service));
        let selector = svc.spec.and_then(|s| s.selector).expect("service selector");
        let template_labels =
            json(find(&plan, workload.0, workload.1))["spec"]["template"]["metadata"]["labels"]
                .clone();
        for (k, v) in &selector {
            assert_eq!(
                template_labels[k].as_str(),
                Some(v.as_str()),
                "{service} selects {workload:?}"
            );
        }
    }
}

#[test]
fn pods_are_hardened_and_probed() {
    let plan = plan_with(&sample("minimal"), &Observed::default(), "a", NOW);
    for (kind, name) in [
        ("Deployment", "demo-signaling"),
        ("Deployment", "demo-turn"),
        ("StatefulSet", "demo-redis"),
        ("StatefulSet", "demo-mongodb"),
    ] {
        let value = json(find(&plan, kind, name));
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"],
            json!(true),
            "{name}"
        );
        assert_eq!(pod["automountServiceAccountToken"], json!(false), "{name}");
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], json!(true), "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], json!(false), "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{name} requests cpu"
        );
        assert!(
            container["resources"]["requests"]["memory"].is_string(),
            "{name} requests memory"
        );
        assert!(
            container["readinessProbe"].is_object(),
            "{name} readiness probe"
        );
        assert!(
            container["livenessProbe"].is_object(),
            "{name} liveness probe"
        );
        let revision =
            &value["spec"]["template"]["metadata"]["annotations"]["videochat.dev/revision"];
        assert!(
            revision.as_str().is_some_and(|r| r.len() == 10),
            "{name} carries its revision"
        );
    }
    let signaling = json(find(&plan, "Deployment", "demo-signaling"));
    let probe =
        &signaling["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], json!("/readyz"));
    let turn = json(find(&plan, "Deployment", "demo-turn"));
    let liveness = &turn["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], json!("/healthz"));
    assert_eq!(liveness["port"], json!("admin"));
}

fn secret_value(plan: &videochat_operator::plan::Plan, name: &str, key: &str) -> String {
    use base64::Engine;
    let encoded = json(find(plan, "Secret", name))["data"][key]
        .as_str()
        .expect("key")
        .to_string();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("b64"),
    )
    .expect("utf8")
}

#[test]
fn secrets_are_generated_once_then_kept() {
    let cluster = sample("minimal");
    let first = plan_with(&cluster, &Observed::default(), "first", NOW);
    assert_eq!(
        secret_value(&first, "demo-turn-secret", "turn-secret"),
        "turn-first\n"
    );
    assert_eq!(
        secret_value(&first, "demo-mongodb-credentials", "password"),
        "mongo-first"
    );
    assert!(
        secret_value(&first, "demo-mongodb-credentials", "uri").starts_with(
            "mongodb://videochat:mongo-first@demo-mongodb-0.demo-mongodb.videochat.svc:27017/"
        )
    );
    assert_eq!(
        secret_value(&first, "demo-redis-credentials", "url"),
        "redis://:redis-first@demo-redis.videochat.svc:6379/0"
    );

    // The Secrets now exist; new random material must not replace them.
    let observed = Observed::new(
        first
            .objects
            .iter()
            .filter(|o| kind_of(o) == "Secret")
            .cloned(),
    );
    let second = plan_with(&cluster, &observed, "second", NOW);
    assert_eq!(
        secret_value(&second, "demo-turn-secret", "turn-secret"),
        "turn-first\n"
    );
    assert_eq!(
        secret_value(&second, "demo-redis-credentials", "password"),
        "redis-first"
    );
    assert_eq!(
        secret_value(&second, "demo-mongodb-credentials", "password"),
        "mongo-first"
    );
    assert!(
        !second
            .actions
            .iter()
            .any(|a| matches!(a, Action::Apply { kind, .. } if kind == "Secret")),
        "existing Secrets are not rewritten: {:?}",
        second.actions
    );
}

#[test]
fn external_databases_produce_no_statefulsets() {
    let cluster = sample("external-databases");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    let kinds: Vec<String> = plan.objects.iter().map(kind_of).collect();
    assert!(!kinds.contains(&"StatefulSet".to_string()), "{kinds:?}");
    assert!(
        !names(&plan)
            .iter()
            .any(|n| n.contains("redis") || n.contains("mongodb")),
        "{:?}",
        names(&plan)
    );
    let signaling = json(find(&plan, "Deployment", "shared-db-signaling"));
    let volumes = signaling["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .clone();
    let secret_of = |volume: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == json!(volume))
            .map(|v| {
                (
                    v["secret"]["secretName"].clone(),
                    v["secret"]["items"][0]["key"].clone(),
                )
            })
    };
    assert_eq!(
        secret_of("redis"),
        Some((json!("videochat-redis"), json!("url")))
    );
    assert_eq!(
        secret_of("mongodb"),
        Some((json!("videochat-mongodb"), json!("uri")))
    );
    assert!(plan.status.components.redis.is_none() && plan.status.components.mongodb.is_none());
}

#[test]
fn switching_to_external_prunes_the_managed_database_but_keeps_its_secret() {
    let managed = sample("minimal");
    let before = plan_with(&managed, &Observed::default(), "a", NOW);
    let mut external = managed.clone();
    external.spec.redis =
        serde_json::from_value(json!({"external": {"urlSecretRef": {"name": "r", "key": "url"}}}))
            .expect("spec");
    let after = plan_with(&external, &Observed::new(before.objects.clone()), "a", NOW);
    let deleted: BTreeSet<String> = after
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { kind, name, .. } => Some(format!("{kind}/{name}")),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<String> = [
        "StatefulSet/demo-redis",
        "Service/demo-redis",
        "NetworkPolicy/demo-redis",
    ]
    .map(String::from)
    .into();
    assert_eq!(deleted, expected);
}

#[test]
fn full_sample_has_ingress_per_relay_load_balancers_and_autoscaled_replicas() {
    let cluster = sample("full");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    let ingress = json(find(&plan, "Ingress", "prod-signaling"));
    assert_eq!(
        ingress["spec"]["tls"][0]["secretName"],
        json!("chat-example-com-tls")
    );
    assert_eq!(
        ingress["spec"]["rules"][0]["host"],
        json!("chat.example.com")
    );
    assert_eq!(ingress["spec"]["ingressClassName"], json!("nginx"));
    // The page served there may open its WebSocket: its origin is the service's own.
    let signaling_config = json(find(&plan, "ConfigMap", "prod-signaling-config"));
    assert_eq!(
        signaling_config["data"]["VIDEOCHAT_PUBLIC_ORIGINS"],
        json!("https://chat.example.com")
    );
    // Behind the Ingress, limits key on the client the controller names.
    assert_eq!(
        signaling_config["data"]["VIDEOCHAT_TRUSTED_PROXIES"],
        json!("10.244.0.0/16")
    );

    let turn_config = json(find(&plan, "ConfigMap", "prod-turn-config"));
    assert_eq!(
        turn_config["data"]["VIDEOCHAT_TURN_RELAY_ADDRESS_DIR"],
        json!("/etc/videochat/turn-addresses")
    );
    assert_eq!(
        turn_config["data"]["VIDEOCHAT_TURN_RELAY_MIN_PORT"],
        json!("49160")
    );
    assert_eq!(
        turn_config["data"]["VIDEOCHAT_TURN_MAX_ALLOCATIONS_PER_USER"],
        json!("8")
    );
    let signaling_uris = json(find(&plan, "ConfigMap", "prod-signaling-turn-uris"));
    assert_eq!(
        signaling_uris["data"]["uris"],
        json!(
            "turn:turn.chat.example.com:3478?transport=udp\nturn:turn.chat.example.com:3478?transport=tcp\nturns:turn.chat.example.com:5349?transport=tcp\nturns:turn.chat.example.com:443?transport=tcp\n"
        )
    );
    let signaling_config = json(find(&plan, "ConfigMap", "prod-signaling-config"));
    assert_eq!(
        signaling_config["data"]["VIDEOCHAT_TURN_URIS_FILE"],
        json!("/etc/videochat/turn-uris/uris")
    );
    assert_eq!(
        signaling_config["data"]["VIDEOCHAT_AUTH_SECRET_FILE"],
        json!("/etc/videochat/auth/secret")
    );

    // Each relay pod's own load balancer: 40 relay ports plus the UDP, TCP
    // and two TLS listening ports.
    for pod in ["prod-turn-0", "prod-turn-1"] {
        let service = json(find(&plan, "Service", pod));
        assert_eq!(service["spec"]["ports"].as_array().map(Vec::len), Some(44));
        assert_eq!(service["spec"]["externalTrafficPolicy"], json!("Local"));
    }

    // Autoscaling on, nothing observed yet: start at the minimum.
    let signaling: Deployment = typed(find(&plan, "Deployment", "prod-signaling"));
    assert_eq!(signaling.spec.replicas, Some(3));
    assert_eq!(
        plan.status.endpoints.signaling_url.as_deref(),
        Some("wss://chat.example.com/ws")
    );
    let uris: Vec<(String, String)> = plan
        .status
        .endpoints
        .turn_uris
        .iter()
        .map(|u| (u.uri.clone(), u.transport.clone()))
        .collect();
    assert_eq!(
        uris,
        vec![
            (
                "turn:turn.chat.example.com:3478?transport=udp".into(),
                "udp".into()
            ),
            (
                "turn:turn.chat.example.com:3478?transport=tcp".into(),
                "tcp".into()
            ),
            (
                "turns:turn.chat.example.com:5349?transport=tcp".into(),
                "tls".into()
            ),
            (
                "turns:turn.chat.example.com:443?transport=tcp".into(),
                "tls".into()
            ),
        ]
    );
    let redis: StatefulSet = typed(find(&plan, "StatefulSet", "prod-redis"));
    let claim = &redis.spec.volume_claim_templates.expect("claims")[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
        Some("standard")
    );
}

#[test]
fn a_configuration_change_rolls_only_the_affected_component() {
    let mut cluster = sample("full");
    let (before, observed, _) = settle(&mut cluster, false, 12);
    assert_eq!(
        before.status.phase.map(|p| p.as_str()),
        Some("Running"),
        "{:#?}",
        before.status.conditions
    );
    let unchanged = plan_with(&cluster, &observed, "a", "2026-01-01T01:00:00Z");
    assert!(
        unchanged.actions.is_empty(),
        "nothing to do: {:?}",
        unchanged.actions
    );

    let mut changed = cluster.clone();
    changed.spec.signaling.limits.max_connections = 123;
    let after = plan_with(&changed, &observed, "a", "2026-01-01T01:00:00Z");
    let applied: BTreeSet<String> = after
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply {
                kind,
                name,
                change: Change::Update,
                ..
            } => Some(format!("{kind}/{name}")),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<String> = [
        "ConfigMap/prod-signaling-config",
        "Deployment/prod-signaling",
    ]
    .map(String::from)
    .into();
    assert_eq!(applied, expected);
    let revision = |plan: &videochat_operator::plan::Plan, c: &str| match c {
        "signaling" => plan.status.components.signaling.clone().map(|s| s.revision),
        _ => plan.status.components.turn.clone().map(|s| s.revision),
    };
    assert_ne!(
        revision(&before, "signaling"),
        revision(&after, "signaling")
    );
    assert_eq!(revision(&before, "turn"), revision(&after, "turn"));
}

/// Two nodes with external addresses, each running one of the default
/// (host-network) relays.
fn with_addresses(observed: &mut Observed) {
    for (node, ip) in [("node-a", "198.51.100.7"), ("node-b", "198.51.100.8")] {
        observed.insert(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node},
                "status": {"addresses": [{"type": "ExternalIP", "address": ip}]}
            }))
            .expect("node"),
        );
        observed.insert(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": format!("demo-turn-{node}"), "namespace": "videochat",
                    "labels": {
                        "app.kubernetes.io/name": "videochat",
                        "app.kubernetes.io/instance": "demo",
                        "app.kubernetes.io/component": "turn"
                    }
                },
                "spec": {"nodeName": node, "containers": [{"name": "turn"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .expect("pod"),
        );
    }
}

/// Reconciles the cluster against a world where everything the previous
/// plan applied has rolled out, carrying the status forward and the clock
/// two minutes per round, until it runs with nothing left to apply (or
/// `rounds` run out).
fn settle(
    cluster: &mut videochat_operator::VideoChatCluster,
    addresses: bool,
    rounds: usize,
) -> (
    videochat_operator::plan::Plan,
    Observed,
    Vec<videochat_operator::plan::PlannedEvent>,
) {
    let mut observed = Observed::default();
    let mut last = None;
    let mut events = Vec::new();
    let mut quiet = 0;
    for round in 0..rounds {
        let now = format!("2026-01-01T00:{:02}:00Z", 2 * round);
        let plan = plan_with(cluster, &observed, "a", &now);
        cluster.status = Some(plan.status.clone());
        // Quiet twice in a row: timed steps (stabilization) have passed too.
        quiet = if plan.status.phase.map(|p| p.as_str()) == Some("Running")
            && plan.actions.is_empty()
        {
            quiet + 1
        } else {
            0
        };
        let running = quiet >= 2;
        // What was applied earlier (e.g. ControllerRevisions) stays.
        for object in rolled_out(&plan).iter() {
            observed.insert(object.clone());
        }
        events.extend(plan.events.iter().cloned());
        if addresses {
            with_addresses(&mut observed);
        }
        last = Some(plan);
        if running {
            break;
        }
    }
    (last.expect("at least one round"), observed, events)
}

#[test]
fn status_comes_from_observed_workloads_and_load_balancers() {
    let cluster = sample("minimal");
    let first = plan_with(&cluster, &Observed::default(), "a", NOW);
    assert_eq!(first.status.phase.map(|p| p.as_str()), Some("Pending"));

    // Everything rolled out, but no relay node has a known address yet.
    let mut waiting_cluster = cluster.clone();
    let (waiting, _, _) = settle(&mut waiting_cluster, false, 8);
    let ready = condition(&waiting.status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForEndpoints")
    );
    assert!(waiting.status.endpoints.turn_uris.is_empty());
    let signaling = waiting
        .status
        .components
        .signaling
        .clone()
        .expect("signaling status");
    assert_eq!(
        (
            signaling.ready,
            signaling.desired,
            signaling.summary.as_str()
        ),
        (2, 2, "2/2")
    );
    assert_eq!(
        signaling.last_good_revision.as_deref(),
        Some(signaling.revision.as_str())
    );

    // The relays' nodes have addresses: each relay announces its node's (from
    // the address map, without a roll), the URIs are published, the cluster
    // runs.
    let mut running_cluster = cluster.clone();
    let (running, _, events) = settle(&mut running_cluster, true, 12);
    let uris: Vec<String> = running
        .status
        .endpoints
        .turn_uris
        .iter()
        .map(|u| u.uri.clone())
        .collect();
    assert_eq!(
        uris,
        vec![
            "turn:198.51.100.7:3478?transport=udp",
            "turn:198.51.100.7:3478?transport=tcp",
            "turn:198.51.100.8:3478?transport=udp",
            "turn:198.51.100.8:3478?transport=tcp"
        ]
    );
    let ready = condition(&running.status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllComponentsReady")
    );
    assert_eq!(running.status.phase.map(|p| p.as_str()), Some("Running"));
    let addresses = json(find(&running, "ConfigMap", "demo-turn-addresses"));
    assert_eq!(
        addresses["data"],
        json!({"node-a": "198.51.100.7", "node-b": "198.51.100.8"})
    );
    // Learning addresses does not roll the relays.
    let turn = running.status.components.turn.clone().expect("turn status");
    assert_eq!(
        turn.revision,
        waiting
            .status
            .components
            .turn
            .clone()
            .expect("turn")
            .revision
    );
    assert!(events.iter().any(|e| e.reason == "Ready"), "{events:?}");
}

#[test]
fn progress_deadline_exceeded_is_degraded_with_reason() {
    let cluster = sample("minimal");
    let first = plan_with(&cluster, &Observed::default(), "a", NOW);
    let mut value = json(find(&first, "Deployment", "demo-signaling"));
    value["metadata"]["generation"] = json!(1);
    value["status"] = json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 0,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    });
    let observed = Observed::new([serde_json::from_value(value).expect("deployment")]);
    let plan = plan_with(&cluster, &observed, "a", NOW);
    let degraded = condition(&plan.status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert!(
        degraded.message.contains("signaling"),
        "{}",
        degraded.message
    );
    assert_eq!(plan.status.phase.map(|p| p.as_str()), Some("Degraded"));
    assert!(
        plan.events
            .iter()
            .any(|e| e.type_ == "Warning" && e.reason == "ProgressDeadlineExceeded")
    );
}

#[test]
fn missing_referenced_secret_is_reported_when_secrets_were_looked_up() {
    let cluster = sample("external-databases");
    let mut observed = Observed::default();
    observed.secrets_complete = true;
    let plan = plan_with(&cluster, &observed, "a", NOW);
    let degraded = condition(&plan.status, "Degraded");
    assert_eq!(degraded.reason, "SecretNotFound");
    assert!(
        degraded.message.contains("videochat-redis/url")
            && degraded.message.contains("videochat-mongodb/uri"),
        "{}",
        degraded.message
    );
}

/// The minimal sample with some top-level spec blocks replaced.
fn with_spec(blocks: Value) -> videochat_operator::VideoChatCluster {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    for (key, block) in blocks.as_object().expect("object") {
        value["spec"][key] = block.clone();
    }
    serde_json::from_value(value).expect("cluster")
}

#[test]
fn bad_resources_are_refused_by_the_schema_rules_and_reported_degraded() {
    let cases = [
        (
            "min > max",
            json!({"autoscaling": {"signaling": {"minReplicas": 5, "maxReplicas": 2}}}),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            "managed and external",
            json!({"redis": {"managed": {}, "external": {"urlSecretRef": {"name": "r", "key": "url"}}}}),
            "exactly one of redis.managed and redis.external",
        ),
        (
            "neither managed nor external",
            json!({"mongodb": {}}),
            "exactly one of mongodb.managed and mongodb.external",
        ),
        (
            "bad port range",
            json!({"turn": {"relayPortRange": {"min": 50000, "max": 49000}}}),
            "relayPortRange.min must not exceed",
        ),
        (
            "port range too wide",
            json!({"turn": {"relayPortRange": {"min": 40000, "max": 45000}}}),
            "at most 1000 ports",
        ),
        (
            "advertised hostname",
            json!({"turn": {"exposure": {"advertisedAddress": "turn.example.com"}}}),
            "advertisedAddress must be an IP address",
        ),
        (
            "trusted proxy by name",
            json!({"signaling": {"trustedProxies": ["10.0.0.0/8", "ingress-nginx"]}}),
            "trustedProxies entries are networks in CIDR form",
        ),
    ];
    for (what, patch, message) in cases {
        let cluster = with_spec(patch);
        let errors = videochat_operator::resource::validation_errors(&cluster);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{what}: {errors:?}"
        );

        let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
        assert!(
            plan.objects.is_empty() && plan.actions.is_empty(),
            "{what}: nothing applied"
        );
        let degraded = condition(&plan.status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec"),
            "{what}"
        );
        assert!(
            degraded.message.contains(message),
            "{what}: {}",
            degraded.message
        );
        assert!(
            plan.events
                .iter()
                .any(|e| e.type_ == "Warning" && e.reason == "InvalidSpec"),
            "{what}"
        );
    }
    let proxies = with_spec(
        json!({"signaling": {"trustedProxies": ["192.0.2.10", "10.244.0.0/16", "fd00::/8"]}}),
    );
    assert!(
        videochat_operator::resource::validation_errors(&proxies).is_empty(),
        "addresses and networks of both families are trusted proxies"
    );
    for sample_name in ["minimal", "full", "external-databases"] {
        let errors = videochat_operator::resource::validation_errors(&sample(sample_name));
        assert!(errors.is_empty(), "{sample_name}: {errors:?}");
    }
}

#[test]
fn condition_times_move_only_on_transitions() {
    let mut cluster = sample("minimal");
    let first = plan_with(&cluster, &Observed::default(), "a", NOW);
    cluster.status = Some(first.status.clone());
    let again = plan_with(&cluster, &Observed::default(), "a", LATER);
    for condition in &again.status.conditions {
        assert_eq!(condition.last_transition_time, NOW, "{}", condition.type_);
    }
    assert!(
        again.events.is_empty() || again.events.iter().all(|e| e.reason == "Created"),
        "{:?}",
        again.events
    );
}

#[test]
fn network_policies_let_only_signaling_reach_the_databases() {
    let plan = plan_with(&sample("minimal"), &Observed::default(), "a", NOW);
    for (name, port) in [("demo-redis", 6379), ("demo-mongodb", 27017)] {
        let policy = json(find(&plan, "NetworkPolicy", name));
        let spec = &policy["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            json!(name.trim_start_matches("demo-"))
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let rules = spec["ingress"].as_array().expect("rules");
        assert_eq!(rules.len(), 1, "{name}");
        assert_eq!(
            rules[0]["from"],
            json!([{"podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "videochat",
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/component": "signaling"
            }}}]),
            "{name}"
        );
        assert_eq!(
            rules[0]["ports"],
            json!([{"protocol": "TCP", "port": port}]),
            "{name}"
        );
    }
    let turn = json(find(&plan, "NetworkPolicy", "demo-turn"));
    let rule = &turn["spec"]["ingress"][0];
    assert!(
        rule.get("from").is_none(),
        "TURN is reachable from anywhere"
    );
    assert!(
        rule["ports"]
            .as_array()
            .expect("ports")
            .contains(&json!({"protocol": "UDP", "port": 49152, "endPort": 49251})),
        "relay range open: {rule}"
    );
}

#[test]
fn endpoints_follow_service_types_and_bracket_ipv6() {
    let mut cluster = sample("minimal");
    cluster.spec.signaling.service.type_ = videochat_operator::resource::ServiceType::LoadBalancer;
    // One relay behind one fixed address.
    cluster.spec.turn.replicas = 1;
    cluster.spec.turn.exposure.advertised_address = Some("2001:db8::7".into());
    let pending = plan_with(&cluster, &Observed::default(), "a", NOW);
    assert_eq!(
        pending.status.endpoints.signaling_url, None,
        "no address before the load balancer has one"
    );
    assert_eq!(
        pending
            .status
            .endpoints
            .turn_uris
            .iter()
            .map(|u| u.uri.as_str())
            .collect::<Vec<_>>(),
        [
            "turn:[2001:db8::7]:3478?transport=udp",
            "turn:[2001:db8::7]:3478?transport=tcp"
        ]
    );
    let mut service = json(find(&pending, "Service", "demo-signaling"));
    // Client addresses are kept: signaling's per-address limits need them.
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    service["status"] = json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.net"}]}});
    let observed = Observed::new([serde_json::from_value(service).expect("service")]);
    let addressed = plan_with(&cluster, &observed, "a", NOW);
    assert_eq!(
        addressed.status.endpoints.signaling_url.as_deref(),
        Some("ws://lb.example.net:80/ws")
    );

    let cluster_ip = plan_with(&sample("minimal"), &Observed::default(), "a", NOW);
    assert_eq!(
        cluster_ip.status.endpoints.signaling_url.as_deref(),
        Some("ws://demo-signaling.videochat.svc:80/ws")
    );
}
