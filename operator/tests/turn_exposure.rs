//! TURN exposure: for each mode, the objects, ports, advertised addresses
//! and update strategy the plan renders, and the CRD rules that refuse
//! combinations that cannot work. Every address a relay announces must reach
//! that relay's own pod for its whole relay port range.

mod support;

use kube::api::DynamicObject;
use serde_json::{Value, json};
use support::*;
use videochat_operator::VideoChatCluster;
use videochat_operator::observed::Observed;
use videochat_operator::plan::Plan;

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("object")
}

fn node(name: &str, addresses: &[(&str, &str)]) -> DynamicObject {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    object(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": addresses}
    }))
}

fn relay_pod(name: &str, node: &str, terminating: bool) -> DynamicObject {
    let mut metadata = json!({
        "name": name, "namespace": "videochat",
        "labels": {
            "app.kubernetes.io/name": "videochat",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "turn"
        }
    });
    if terminating {
        metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "turn"}]}
    }))
}

fn load_balancer(name: &str, ip: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "videochat"},
        "spec": {"type": "LoadBalancer"},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
    }))
}

/// The minimal sample (name demo) with `turn` merged into its spec.
fn demo(turn: Value) -> VideoChatCluster {
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["turn"] = turn;
    serde_json::from_value(value).expect("cluster")
}

fn plan_of(cluster: &VideoChatCluster, observed: Vec<DynamicObject>) -> Plan {
    let errors = videochat_operator::resource::validation_errors(cluster);
    assert!(errors.is_empty(), "{errors:?}");
    plan_with(cluster, &Observed::new(observed), "a", NOW)
}

fn names(plan: &Plan, kind: &str) -> Vec<String> {
    plan.objects
        .iter()
        .filter(|o| kind_of(o) == kind)
        .filter_map(|o| o.metadata.name.clone())
        .collect()
}

fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn env_field(container: &Value, name: &str) -> Option<String> {
    container["env"].as_array()?.iter().find_map(|e| {
        (e["name"] == name).then(|| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .or(e["value"].as_str())
                .unwrap_or_default()
                .to_string()
        })
    })
}

fn uris(plan: &Plan) -> Vec<String> {
    plan.status
        .endpoints
        .turn_uris
        .iter()
        .map(|u| u.uri.clone())
        .collect()
}

#[test]
fn host_network_is_the_default_one_relay_per_node_announcing_the_node_address() {
    let cluster = sample("minimal");
    let plan = plan_of(
        &cluster,
        vec![
            node(
                "node-a",
                &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.1")],
            ),
            node(
                "node-b",
                &[("InternalIP", "10.0.0.2"), ("ExternalIP", "203.0.113.2")],
            ),
            // No ExternalIP: no entry, so a relay there stays unready.
            node("node-c", &[("InternalIP", "10.0.0.3")]),
            relay_pod("demo-turn-abc", "node-a", false),
            relay_pod("demo-turn-def", "node-b", false),
        ],
    );
    let deployment = json(find(&plan, "Deployment", "demo-turn"));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "turn"
    );
    // A roll must not surge onto a node whose ports the old relay holds.
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 0);
    assert_eq!(rolling["maxUnavailable"], 1);
    let turn = container(&deployment);
    let host_ports: Vec<i64> = turn["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["hostPort"].as_i64())
        .collect();
    assert_eq!(host_ports, vec![3478, 3478, 9090]);
    assert_eq!(
        env_field(turn, "VIDEOCHAT_TURN_RELAY_ADDRESS_KEY").as_deref(),
        Some("spec.nodeName")
    );

    let config = json(find(&plan, "ConfigMap", "demo-turn-config"));
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_RELAY_ADDRESS_DIR"],
        "/etc/videochat/turn-addresses"
    );
    assert_eq!(config["data"]["VIDEOCHAT_TURN_DRAIN_READINESS"], "ready");
    assert!(config["data"].get("VIDEOCHAT_TURN_RELAY_ADDRESS").is_none());
    let addresses = json(find(&plan, "ConfigMap", "demo-turn-addresses"));
    assert_eq!(
        addresses["data"],
        json!({"node-a": "203.0.113.1", "node-b": "203.0.113.2"})
    );
    // The address map is mounted, and is not part of the pod template's
    // configuration hash: a new node address needs no roll.
    let mounted = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["configMap"]["name"] == "demo-turn-addresses");
    assert!(mounted);

    // No Service in front of host-network relays.
    assert!(
        !names(&plan, "Service").iter().any(|n| n.contains("turn")),
        "{:?}",
        names(&plan, "Service")
    );
    assert_eq!(
        uris(&plan),
        vec![
            "turn:203.0.113.1:3478?transport=udp",
            "turn:203.0.113.1:3478?transport=tcp",
            "turn:203.0.113.2:3478?transport=udp",
            "turn:203.0.113.2:3478?transport=tcp",
        ]
    );
}

#[test]
fn host_network_overrides_and_address_type_and_draining_relays_left_out_of_uris() {
    let cluster = demo(json!({
        "exposure": {
            "mode": "HostNetwork",
            "nodeAddressType": "InternalIP",
            "addressOverrides": {"node-b": "198.51.100.9"}
        }
    }));
    let plan = plan_of(
        &cluster,
        vec![
            node("node-a", &[("InternalIP", "192.0.2.1")]),
            node("node-b", &[("InternalIP", "192.0.2.2")]),
            relay_pod("demo-turn-abc", "node-a", true),
            relay_pod("demo-turn-def", "node-b", false),
        ],
    );
    let addresses = json(find(&plan, "ConfigMap", "demo-turn-addresses"));
    assert_eq!(
        addresses["data"],
        json!({"node-a": "192.0.2.1", "node-b": "198.51.100.9"})
    );
    // The relay on node-a is stopping: new clients are not sent there.
    assert_eq!(
        uris(&plan),
        vec![
            "turn:198.51.100.9:3478?transport=udp",
            "turn:198.51.100.9:3478?transport=tcp",
        ]
    );
}

#[test]
fn load_balancer_mode_gives_each_relay_pod_its_own_service_for_its_whole_range() {
    let cluster = demo(json!({
        "replicas": 2,
        "exposure": {"mode": "LoadBalancer", "loadBalancerClass": "service.k8s.aws/nlb"}
    }));
    let plan = plan_of(
        &cluster,
        vec![
            load_balancer("demo-turn-0", "203.0.113.10"),
            load_balancer("demo-turn-1", "203.0.113.11"),
            // Scaled down from 3: pod 2 still drains its live calls.
            relay_pod("demo-turn-2", "node-c", true),
        ],
    );
    let stateful_set = json(find(&plan, "StatefulSet", "demo-turn"));
    assert_eq!(stateful_set["spec"]["replicas"], 2);
    assert_eq!(stateful_set["spec"]["serviceName"], "demo-turn");
    assert_eq!(stateful_set["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        stateful_set["spec"]["updateStrategy"]["type"],
        "RollingUpdate"
    );
    assert!(names(&plan, "Deployment").iter().all(|n| n != "demo-turn"));
    let turn = container(&stateful_set);
    assert_eq!(
        env_field(turn, "VIDEOCHAT_TURN_RELAY_ADDRESS_KEY").as_deref(),
        Some("metadata.name")
    );
    assert!(stateful_set["spec"]["template"]["spec"]["hostNetwork"].is_null());

    let governing = json(find(&plan, "Service", "demo-turn"));
    assert_eq!(governing["spec"]["clusterIP"], "None");

    // The default range fits the listener limit: 48 relay ports + UDP + TCP.
    let config = json(find(&plan, "ConfigMap", "demo-turn-config"));
    assert_eq!(config["data"]["VIDEOCHAT_TURN_RELAY_MIN_PORT"], "49152");
    assert_eq!(config["data"]["VIDEOCHAT_TURN_RELAY_MAX_PORT"], "49199");
    for (pod, ip) in [
        ("demo-turn-0", "203.0.113.10"),
        ("demo-turn-1", "203.0.113.11"),
    ] {
        let service = json(find(&plan, "Service", pod));
        let spec = &service["spec"];
        assert_eq!(spec["type"], "LoadBalancer");
        assert_eq!(spec["loadBalancerClass"], "service.k8s.aws/nlb");
        assert_eq!(spec["selector"]["statefulset.kubernetes.io/pod-name"], pod);
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["publishNotReadyAddresses"], true);
        let ports = spec["ports"].as_array().expect("ports");
        assert!(ports.len() <= 50, "{} listeners", ports.len());
        let relay: Vec<i64> = ports
            .iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("relay-")))
            .map(|p| p["port"].as_i64().expect("port"))
            .collect();
        assert_eq!(relay, (49152..=49199).collect::<Vec<i64>>(), "{pod}");
        assert!(
            ports
                .iter()
                .any(|p| p["port"] == 3478 && p["protocol"] == "UDP")
        );
        assert!(
            ports
                .iter()
                .any(|p| p["port"] == 3478 && p["protocol"] == "TCP")
        );
        let _ = ip;
    }
    // The draining pod keeps its Service until it is gone.
    let pod2 = json(find(&plan, "Service", "demo-turn-2"));
    assert_eq!(
        pod2["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        "demo-turn-2"
    );

    let addresses = json(find(&plan, "ConfigMap", "demo-turn-addresses"));
    assert_eq!(
        addresses["data"],
        json!({"demo-turn-0": "203.0.113.10", "demo-turn-1": "203.0.113.11"})
    );
    assert_eq!(
        uris(&plan),
        vec![
            "turn:203.0.113.10:3478?transport=udp",
            "turn:203.0.113.10:3478?transport=tcp",
            "turn:203.0.113.11:3478?transport=udp",
            "turn:203.0.113.11:3478?transport=tcp",
        ]
    );
    let signaling = json(find(&plan, "ConfigMap", "demo-signaling-turn-uris"));
    assert_eq!(
        signaling["data"]["uris"],
        format!("{}\n", uris(&plan).join("\n"))
    );
}

#[test]
fn load_balancer_status_follows_the_stateful_set() {
    let cluster = demo(json!({"replicas": 2, "exposure": {"mode": "LoadBalancer"}}));
    let mut observed = vec![load_balancer("demo-turn-0", "203.0.113.10")];
    observed.push(object(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo-turn", "namespace": "videochat", "generation": 1},
        "spec": {"replicas": 2, "selector": {}, "serviceName": "demo-turn", "template": {}},
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1}
    })));
    let plan = plan_of(&cluster, observed);
    let turn = plan.status.components.turn.clone().expect("turn status");
    assert_eq!((turn.ready, turn.desired), (2, 2));
}

#[test]
fn cluster_internal_announces_pod_ips_behind_a_headless_service() {
    let cluster = sample("turn-cluster-internal");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    assert!(videochat_operator::resource::validation_errors(&cluster).is_empty());
    let deployment = json(find(&plan, "Deployment", "demo-internal-turn"));
    assert!(deployment["spec"]["template"]["spec"]["hostNetwork"].is_null());
    assert_eq!(
        env_field(container(&deployment), "VIDEOCHAT_TURN_RELAY_ADDRESS").as_deref(),
        Some("status.podIP")
    );
    let service = json(find(&plan, "Service", "demo-internal-turn"));
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert!(service["spec"]["publishNotReadyAddresses"].is_null());
    assert!(
        names(&plan, "ConfigMap")
            .iter()
            .all(|n| !n.ends_with("turn-addresses"))
    );
    let config = json(find(&plan, "ConfigMap", "demo-internal-turn-config"));
    // Discovery is by DNS with no kube-proxy in the path: a draining relay
    // leaves DNS by turning NotReady.
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_DRAIN_READINESS"],
        "not-ready"
    );
    assert_eq!(
        uris(&plan),
        vec![
            "turn:demo-internal-turn.videochat.svc:3478?transport=udp",
            "turn:demo-internal-turn.videochat.svc:3478?transport=tcp",
        ]
    );
}

#[test]
fn tls_mounts_the_secret_renders_the_relay_flags_and_publishes_turns_uris() {
    let cluster = sample("full");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    let stateful_set = json(find(&plan, "StatefulSet", "prod-turn"));
    let pod = &stateful_set["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "turn-tls")
        .expect("tls volume")
        .clone();
    assert_eq!(volume["secret"]["secretName"], "turn-chat-example-com-tls");
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}])
    );
    let config = json(find(&plan, "ConfigMap", "prod-turn-config"));
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_TLS_CERT_FILE"],
        "/etc/videochat/turn-tls/tls.crt"
    );
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_TLS_KEY_FILE"],
        "/etc/videochat/turn-tls/tls.key"
    );
    assert_eq!(config["data"]["VIDEOCHAT_TURN_TLS_PORTS"], "5349,443");
    // 443 inside the pod's own network namespace, as a non-root user.
    assert_eq!(
        pod["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "443"}])
    );
    let service = json(find(&plan, "Service", "prod-turn-0"));
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 443 && p["protocol"] == "TCP")
    );
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 5349 && p["protocol"] == "TCP")
    );
    assert!(ports.len() <= 50);
    let expected = vec![
        "turn:turn.chat.example.com:3478?transport=udp",
        "turn:turn.chat.example.com:3478?transport=tcp",
        "turns:turn.chat.example.com:5349?transport=tcp",
        "turns:turn.chat.example.com:443?transport=tcp",
    ];
    assert_eq!(uris(&plan), expected);
    let signaling = json(find(&plan, "ConfigMap", "prod-signaling-turn-uris"));
    assert_eq!(
        signaling["data"]["uris"],
        format!("{}\n", expected.join("\n"))
    );
}

#[test]
fn host_network_tls_on_443_gets_the_bind_capability() {
    let cluster = sample("turn-host-network");
    let plan = plan_with(&cluster, &Observed::default(), "a", NOW);
    let deployment = json(find(&plan, "Deployment", "demo-host-turn"));
    let security = &container(&deployment)["securityContext"];
    assert_eq!(security["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    // No sysctl: the host's network namespace is not the pod's to change.
    assert!(deployment["spec"]["template"]["spec"]["securityContext"]["sysctls"].is_null());
    let addresses = json(find(&plan, "ConfigMap", "demo-host-turn-addresses"));
    assert_eq!(addresses["data"]["relay-a.example.com"], "203.0.113.21");
}

#[test]
fn crd_rules_refuse_exposures_that_cannot_route_to_the_right_relay() {
    let cases = [
        (
            "host network with a shared load balancer",
            json!({"exposure": {"hostNetwork": true, "serviceType": "LoadBalancer"}}),
            "hostNetwork with a shared LoadBalancer Service cannot work",
        ),
        (
            "the old shared Service type",
            json!({"exposure": {"serviceType": "NodePort"}}),
            "serviceType is replaced by mode",
        ),
        (
            "hostNetwork contradicting mode",
            json!({"exposure": {"mode": "LoadBalancer", "hostNetwork": true}}),
            "hostNetwork is replaced by mode: HostNetwork",
        ),
        (
            "relay range past the listener limit",
            json!({"exposure": {"mode": "LoadBalancer"}, "relayPortRange": {"min": 49152, "max": 49200}}),
            "at most 50 ports",
        ),
        (
            "relay range fits alone but not with the TLS ports",
            json!({
                "exposure": {"mode": "LoadBalancer", "host": "turn.example.com"},
                "relayPortRange": {"min": 49152, "max": 49199},
                "tls": {"secretName": "t"}
            }),
            "at most 50 ports",
        ),
        (
            "one address for two relays",
            json!({"replicas": 2, "exposure": {"advertisedAddress": "203.0.113.5"}}),
            "needs replicas: 1",
        ),
        (
            "load balancer settings without a load balancer",
            json!({"exposure": {"mode": "HostNetwork", "loadBalancerClass": "x"}}),
            "apply only to mode LoadBalancer",
        ),
        (
            "address overrides for pod IPs",
            json!({"exposure": {"mode": "ClusterInternal", "addressOverrides": {"a": "192.0.2.1"}}}),
            "mode ClusterInternal announces pod IPs",
        ),
        (
            "an override that is not an IP",
            json!({"exposure": {"addressOverrides": {"node-a": "relay.example.com"}}}),
            "addressOverrides values must be IP addresses",
        ),
        (
            "tls without a host name",
            json!({"tls": {"secretName": "t"}}),
            "tls needs exposure.host",
        ),
        (
            "tls on the TCP port",
            json!({"exposure": {"host": "turn.example.com"}, "tls": {"secretName": "t", "ports": [3478]}}),
            "tls.ports must differ from tcpPort",
        ),
        (
            "a repeated tls port",
            json!({"exposure": {"host": "turn.example.com"}, "tls": {"secretName": "t", "ports": [443, 443]}}),
            "must not repeat a port",
        ),
    ];
    for (what, turn, message) in cases {
        let cluster = demo(turn);
        let errors = videochat_operator::resource::validation_errors(&cluster);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{what}: {errors:?}"
        );
    }
    // One fixed address and an autoscaler that may add relays.
    let mut value = serde_json::to_value(demo(json!({
        "replicas": 1,
        "exposure": {"mode": "HostNetwork", "advertisedAddress": "203.0.113.5"}
    })))
    .expect("json");
    value["spec"]["autoscaling"] =
        json!({"enabled": true, "turn": {"minReplicas": 1, "maxReplicas": 3}});
    let autoscaled: VideoChatCluster = serde_json::from_value(value).expect("cluster");
    let errors = videochat_operator::resource::validation_errors(&autoscaled);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("autoscaling.turn.maxReplicas must be 1")),
        "{errors:?}"
    );
    // At the limit is fine: 46 relay ports + UDP + TCP + two TLS ports = 50.
    let at_limit = demo(json!({
        "exposure": {"mode": "LoadBalancer", "host": "turn.example.com"},
        "relayPortRange": {"min": 49152, "max": 49197},
        "tls": {"secretName": "t"}
    }));
    let errors = videochat_operator::resource::validation_errors(&at_limit);
    assert!(errors.is_empty(), "{errors:?}");
    for name in [
        "minimal",
        "full",
        "external-databases",
        "turn-host-network",
        "turn-cluster-internal",
    ] {
        let errors = videochat_operator::resource::validation_errors(&sample(name));
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}

/// A user's placement affinity is added to, never replaces, the rule that
/// keeps host-network relays one per node (two would fight over the ports).
#[test]
fn host_network_keeps_one_relay_per_node_beside_a_users_affinity() {
    let cluster = demo(json!({
        "placement": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{
                            "matchExpressions": [{
                                "key": "media", "operator": "In", "values": ["yes"]
                            }]
                        }]
                    }
                },
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "noisy"}},
                        "topologyKey": "kubernetes.io/hostname"
                    }]
                }
            }
        }
    }));
    let plan = plan_of(
        &cluster,
        vec![node("node-a", &[("ExternalIP", "203.0.113.1")])],
    );
    let deployment = json(find(&plan, "Deployment", "demo-turn"));
    let affinity = &deployment["spec"]["template"]["spec"]["affinity"];
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "media",
        "the user's node affinity is kept: {affinity}"
    );
    let terms = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .expect("required anti-affinity terms");
    assert!(
        terms
            .iter()
            .any(|t| t["labelSelector"]["matchLabels"]["app"] == "noisy"),
        "the user's anti-affinity is kept: {affinity}"
    );
    assert!(
        terms.iter().any(|t| {
            t["topologyKey"] == "kubernetes.io/hostname"
                && t["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "turn"
        }),
        "one relay per node is kept: {affinity}"
    );
}

#[test]
fn relays_that_come_and_go_change_the_uris_file_not_the_signaling_template() {
    // At install no relay runs yet; then one relay; then a second node's
    // relay (a scale-up). Signaling's pod template, and so its revision,
    // stays the same: the URIs reach it as a mounted file it re-reads, so
    // TURN changes never roll (and drain) signaling.
    let cluster = sample("minimal");
    let nodes = || {
        vec![
            node("node-a", &[("ExternalIP", "203.0.113.1")]),
            node("node-b", &[("ExternalIP", "203.0.113.2")]),
        ]
    };
    let install = plan_of(&cluster, nodes());
    let mut one = nodes();
    one.push(relay_pod("demo-turn-abc", "node-a", false));
    let one = plan_of(&cluster, one);
    let mut two = nodes();
    two.push(relay_pod("demo-turn-abc", "node-a", false));
    two.push(relay_pod("demo-turn-def", "node-b", false));
    let two = plan_of(&cluster, two);

    let template =
        |plan: &Plan| json(find(plan, "Deployment", "demo-signaling"))["spec"]["template"].clone();
    let file = |plan: &Plan| {
        json(find(plan, "ConfigMap", "demo-signaling-turn-uris"))["data"]["uris"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(file(&install), "", "no relay address yet");
    assert_eq!(
        file(&one),
        "turn:203.0.113.1:3478?transport=udp\nturn:203.0.113.1:3478?transport=tcp\n"
    );
    assert_eq!(file(&two).lines().count(), 4);
    assert_eq!(template(&install), template(&one));
    assert_eq!(template(&one), template(&two));
    let config = json(find(&two, "ConfigMap", "demo-signaling-config"));
    assert!(config["data"].get("VIDEOCHAT_TURN_URIS").is_none());
    assert_eq!(
        config["data"]["VIDEOCHAT_TURN_URIS_FILE"],
        "/etc/videochat/turn-uris/uris"
    );
    let mounted = template(&two)["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["configMap"]["name"] == "demo-signaling-turn-uris");
    assert!(mounted);
}

#[test]
fn the_public_origins_file_follows_the_signaling_address_not_the_template() {
    // Without an Ingress the demo page is served at signaling's own
    // published address: its origin reaches signaling as a mounted file,
    // so the load balancer's first address, or a new one, changes a file
    // and does not roll (and drain) signaling.
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["spec"]["signaling"] = json!({"service": {"type": "LoadBalancer", "port": 8080}});
    let cluster: VideoChatCluster = serde_json::from_value(value).expect("cluster");
    let pending = plan_of(&cluster, vec![]);
    let first = plan_of(
        &cluster,
        vec![load_balancer("demo-signaling", "198.18.0.10")],
    );
    let moved = plan_of(
        &cluster,
        vec![load_balancer("demo-signaling", "198.18.0.11")],
    );

    let template =
        |plan: &Plan| json(find(plan, "Deployment", "demo-signaling"))["spec"]["template"].clone();
    let file = |plan: &Plan| {
        json(find(plan, "ConfigMap", "demo-signaling-public-origins"))["data"]["origins"]
            .as_str()
            .expect("origins key")
            .to_owned()
    };
    assert_eq!(file(&pending), "", "no load-balancer address yet");
    assert_eq!(file(&first), "http://198.18.0.10:8080\n");
    assert_eq!(file(&moved), "http://198.18.0.11:8080\n");
    assert_eq!(template(&pending), template(&first));
    assert_eq!(template(&first), template(&moved));
    let config = json(find(&first, "ConfigMap", "demo-signaling-config"));
    assert_eq!(
        config["data"]["VIDEOCHAT_PUBLIC_ORIGINS_FILE"],
        "/etc/videochat/public-origins/origins"
    );
    assert!(
        config["data"].get("VIDEOCHAT_PUBLIC_ORIGINS").is_none(),
        "no Ingress, no configured origin"
    );
    let pod = &template(&first)["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["configMap"]["name"] == "demo-signaling-public-origins"),
        "{pod}"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/etc/videochat/public-origins"),
        "{pod}"
    );

    // With an Ingress the spec's origin stays in the configuration and the
    // file carries the same published origin: the two are merged.
    let full = sample("full");
    let plan = plan_with(&full, &Observed::default(), "a", NOW);
    let config = json(find(&plan, "ConfigMap", "prod-signaling-config"));
    assert_eq!(
        config["data"]["VIDEOCHAT_PUBLIC_ORIGINS"],
        "https://chat.example.com"
    );
    assert_eq!(
        json(find(&plan, "ConfigMap", "prod-signaling-public-origins"))["data"]["origins"],
        "https://chat.example.com\n"
    );
}
