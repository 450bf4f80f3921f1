//! NetworkPolicies (only signaling reaches the databases; TURN and signaling
//! reachable on their ports) and PodDisruptionBudgets.

use super::context::Ctx;
use super::{mongodb, redis, signaling, turn};
use crate::error::Result;
use crate::labels::{self, Component};
use crate::objects::to_dynamic;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;

fn selector(ctx: &Ctx<'_>, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels::selector(&ctx.name, component)),
        ..LabelSelector::default()
    }
}

fn port(protocol: &str, port: i32, end_port: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        end_port,
    }
}

fn policy(
    ctx: &Ctx<'_>,
    component: Component,
    from: Option<Vec<NetworkPolicyPeer>>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ctx.meta(component.workload_name(&ctx.name), Some(component)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(ctx, component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from,
                ports: Some(ports),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

pub(crate) fn desired(ctx: &Ctx<'_>) -> Result<Vec<DynamicObject>> {
    let spec = &ctx.cluster.spec;
    let mut objects = Vec::new();
    let only_signaling = Some(vec![NetworkPolicyPeer {
        pod_selector: Some(selector(ctx, Component::Signaling)),
        ..NetworkPolicyPeer::default()
    }]);
    if spec.redis.managed.is_some() {
        objects.push(to_dynamic(&policy(
            ctx,
            Component::Redis,
            only_signaling.clone(),
            vec![port("TCP", redis::PORT, None)],
        ))?);
    }
    if spec.mongodb.managed.is_some() {
        objects.push(to_dynamic(&policy(
            ctx,
            Component::MongoDb,
            only_signaling,
            vec![port("TCP", mongodb::PORT, None)],
        ))?);
    }
    // Clients and peers come from anywhere; the admin port serves metrics scrapers.
    // (Host-network relays are outside NetworkPolicy's reach; the policy
    // still documents the ports.)
    let turn = &spec.turn;
    let relay_ports = turn.relay_ports();
    let mut turn_ports = vec![
        port("UDP", turn.udp_port, None),
        port("TCP", turn.tcp_port, None),
    ];
    turn_ports.extend(turn.tls_ports().into_iter().map(|p| port("TCP", p, None)));
    turn_ports.push(port("UDP", relay_ports.min, Some(relay_ports.max)));
    turn_ports.push(port("TCP", turn::ADMIN_PORT, None));
    objects.push(to_dynamic(&policy(ctx, Component::Turn, None, turn_ports))?);
    objects.push(to_dynamic(&policy(
        ctx,
        Component::Signaling,
        None,
        vec![port("TCP", signaling::CONTAINER_PORT, None)],
    ))?);

    // Voluntary disruptions (node drains) take one pod at a time; the
    // single-pod databases get none, a budget there would block every drain.
    for component in [Component::Signaling, Component::Turn] {
        let pdb = PodDisruptionBudget {
            metadata: ctx.meta(component.workload_name(&ctx.name), Some(component)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(ctx, component)),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        objects.push(to_dynamic(&pdb)?);
    }
    Ok(objects)
}
