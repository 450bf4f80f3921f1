//! Service names inside pods, without a DNS server: one hosts file per
//! cluster, bind-mounted at /etc/hosts in every container and rewritten in
//! place (same inode, so the mounts see it) when endpoints change. A
//! Service's name (`svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`)
//! resolves to its first ready endpoint, not to a clusterIP (there is no
//! kube-proxy); a pod behind a headless Service also gets
//! `pod.svc.ns.svc[.cluster.local]`.

use super::Shared;
use crate::controllers::{name, namespace, resource, str_at};
use serde_json::Value;

pub const HEADER: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

pub fn hosts(shared: &Shared) -> String {
    let mut text = HEADER.to_owned();
    let Some(endpoints_type) = resource(&shared.store, "", "endpoints") else {
        return text;
    };
    for endpoints in shared.store.all(&endpoints_type) {
        let (svc, ns) = (name(&endpoints), namespace(&endpoints));
        let addresses: Vec<&Value> = endpoints
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|s| {
                s.get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .collect();
        if let Some(first) = addresses.first() {
            text.push_str(&format!(
                "{}\t{svc}.{ns} {svc}.{ns}.svc {svc}.{ns}.svc.cluster.local\n",
                str_at(first, "/ip")
            ));
        }
        for address in &addresses {
            let pod = address
                .get("hostname")
                .and_then(Value::as_str)
                .unwrap_or_else(|| str_at(address, "/targetRef/name"));
            if !pod.is_empty() {
                text.push_str(&format!(
                    "{}\t{pod}.{svc}.{ns}.svc {pod}.{svc}.{ns}.svc.cluster.local\n",
                    str_at(address, "/ip")
                ));
            }
        }
    }
    text
}

/// Rewrites the hosts file when its contents change.
pub fn write_hosts(shared: &Shared) {
    let text = hosts(shared);
    if std::fs::read_to_string(&shared.hosts_file).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    // Truncate and write the same file: a rename would leave the bind
    // mounts on the old inode.
    if let Err(error) = std::fs::write(&shared.hosts_file, text) {
        tracing::warn!(%error, "cannot rewrite the cluster hosts file");
    }
}
