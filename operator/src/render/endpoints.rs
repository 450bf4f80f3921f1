//! Where clients connect: the signaling URL and the TURN URIs, from the spec
//! and the addresses observed on Services and Nodes.

use super::context::Ctx;
use super::turn;
use crate::labels::Component;
use crate::resource::{Endpoints, ServiceType};
use k8s_openapi::api::core::v1::Service;

/// The first load-balancer address (IP, else hostname) of an observed Service.
pub(crate) fn load_balancer_address(ctx: &Ctx<'_>, service: &str) -> Option<String> {
    let service: Service = ctx.observed.typed("Service", service)?;
    let ingress = service.status?.load_balancer?.ingress?;
    ingress.into_iter().find_map(|i| {
        i.ip.filter(|s| !s.is_empty())
            .or(i.hostname.filter(|s| !s.is_empty()))
    })
}

fn host_for_uri(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Signaling URL and TURN URIs, from the spec and the Services' addresses.
/// Unknown parts (a load balancer still pending) are left out.
pub fn endpoints(ctx: &Ctx<'_>) -> Endpoints {
    let spec = &ctx.cluster.spec;
    let signaling = Component::Signaling.workload_name(&ctx.name);
    let signaling_url = if let Some(ingress) = &spec.signaling.ingress {
        let scheme = if ingress.tls_secret_name.is_some() {
            "wss"
        } else {
            "ws"
        };
        Some(format!("{scheme}://{}/ws", ingress.host))
    } else {
        let port = spec.signaling.service.port;
        match spec.signaling.service.type_ {
            ServiceType::LoadBalancer => load_balancer_address(ctx, &signaling)
                .map(|host| format!("ws://{}:{port}/ws", host_for_uri(&host))),
            _ => Some(format!("ws://{}:{port}/ws", ctx.service_host(&signaling))),
        }
    };

    let turn_uris = turn::uris(ctx);
    Endpoints {
        signaling_url,
        turn_uris,
    }
}
