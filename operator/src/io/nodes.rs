//! Reads the Nodes for host-network relays: each relay announces its node's
//! address, which the plan writes into the relay address ConfigMap. Cluster
//! scoped, read only (RBAC: get, list, watch on nodes).

use crate::error::{Error, Result};
use crate::observed::Observed;
use crate::resource::{TurnExposureMode, VideoChatCluster};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, TypeMeta};
use kube::{Api, Client};

/// Adds every Node to `observed` when the cluster's relays run on the host
/// network and learn their address from it; does nothing otherwise.
pub async fn observe_nodes(
    client: &Client,
    cluster: &VideoChatCluster,
    observed: &mut Observed,
) -> Result<()> {
    let exposure = &cluster.spec.turn.exposure;
    if exposure.mode != TurnExposureMode::HostNetwork || exposure.advertised_address.is_some() {
        return Ok(());
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing nodes (host-network relay addresses)", e))?;
    for node in list.items {
        let mut object = crate::objects::to_dynamic(&node)?;
        object.types = Some(TypeMeta {
            api_version: "v1".into(),
            kind: "Node".into(),
        });
        observed.insert(object);
    }
    Ok(())
}
