//! The simulated cluster's network: one Linux bridge per cluster on the
//! host, each node and each (non host-network) pod a network namespace with
//! a veth pair into that bridge. Addresses of cluster `i` (1..=250):
//! nodes 10.200.i.2+, pods 10.244.i.2-254, load balancers 10.210.i.x. The
//! host (where the tests and the operator run) has an address in each of
//! those /24s on the bridge, so it reaches every node, pod and load
//! balancer directly. Nodes also have an external address, 198.18.i.2+
//! (the benchmarking range: not private, so a relay's peer policy treats
//! it as the public address it stands for); namespaces reach each other on-link over the bridge.
//!
//! A cluster index is taken by creating the bridge (atomic across
//! processes); a bridge left by a run that died (its owner file names a
//! process that is gone) is cleaned and reused. Everything is removed when
//! the network is dropped, also while a test unwinds from a panic.

use crate::error::{Result, SimError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where clusters keep pod directories (volumes, logs) and owner files. Not
/// under /tmp: pods get their own /tmp mounted over it.
pub const STATE_ROOT: &str = "/var/tmp/videochat-sim";

/// Path of the `ip` tool (iproute2).
fn ip_tool() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new(ip_tool())
        .args(args)
        .output()
        .map_err(|e| SimError::Runtime(format!("cannot run ip {}: {e}", args.join(" "))))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SimError::Runtime(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// `ip` quietly, for clean-up where the object may already be gone.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new(ip_tool()).args(args).output();
}

pub fn ip_path() -> &'static str {
    ip_tool()
}

/// One simulated node: its namespace and address.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub name: String,
    pub namespace: String,
    pub address: String,
    /// The node's ExternalIP (on the same interface, as on bare metal).
    pub external_address: String,
}

/// The namespace of the test's external clients (browsers, TURN clients):
/// outside the cluster, it reaches only what a user on the internet would,
/// the nodes' external addresses and the load balancers' addresses.
#[derive(Clone, Debug)]
pub struct ExternalClientNetwork {
    pub namespace: String,
    pub address: String,
    /// The host's address on that link: where connections from the host
    /// to a server in the namespace (a browser's driver) come from.
    pub host_address: String,
}

/// A pod's own namespace and address, released when dropped.
#[derive(Debug)]
pub struct PodNetwork {
    pub namespace: String,
    pub address: String,
    host_octet: u8,
}

/// The network of one simulated cluster.
#[derive(Debug)]
pub struct ClusterNetwork {
    pub index: u8,
    bridge: String,
    pub state_dir: PathBuf,
    pub nodes: Vec<NodeNetwork>,
    pub external_client: Option<ExternalClientNetwork>,
    free_pod_octets: Mutex<BTreeSet<u8>>,
    load_balancers: Mutex<BTreeSet<String>>,
    removed: std::sync::atomic::AtomicBool,
}

fn bridge_name(index: u8) -> String {
    format!("vcs{index}br")
}

fn namespace_prefix(index: u8) -> String {
    format!("vcs{index}-")
}

/// Whether the owner of a cluster index is gone (so its leftovers may go).
fn owner_gone(state_dir: &Path) -> bool {
    match std::fs::read_to_string(state_dir.join("owner")) {
        // Gone, or a zombie nobody reaped yet.
        Ok(pid) => std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true),
        // No owner file yet: the owner may be between creating the bridge
        // and writing it; only a bridge older than a minute is abandoned.
        Err(_) => std::fs::metadata(state_dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60),
    }
}

/// Removes every namespace, veth and the bridge of a cluster index.
fn remove_index(index: u8) {
    remove_namespaces(index);
    ip_quiet(&["link", "del", &bridge_name(index)]);
}

/// Removes the namespaces (and with them their veths) of a cluster index,
/// killing what still runs in them.
fn remove_namespaces(index: u8) {
    let prefix = namespace_prefix(index);
    if let Ok(output) = Command::new(ip_tool()).args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&prefix) {
                // Processes of a run that died without cleaning up (a
                // deleted namespace would not stop them).
                if let Ok(pids) = Command::new(ip_tool())
                    .args(["netns", "pids", name])
                    .output()
                {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).output();
                    }
                }
                ip_quiet(&["netns", "del", name]);
            }
        }
    }
    remove_host_links(index);
}

/// Removes the host-side veths of a cluster index (nodes `vcs<i>n<k>`, pods
/// `vcs<i>p<octet>`, the external client `vcs<i>c`). A namespace that a
/// dying process still holds outlives its name for a moment, and with it
/// its veth pair; deleting the host side ends the pair at once.
fn remove_host_links(index: u8) {
    let node = format!("vcs{index}n");
    let pod = format!("vcs{index}p");
    let client = format!("vcs{index}c");
    let Ok(output) = Command::new(ip_tool())
        .args(["-o", "link", "show"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "12: vcs1n0@if2: <BROADCAST,...> ..."
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let ours = name == client
            || [&node, &pod].iter().any(|prefix| {
                name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                })
            });
        if ours {
            ip_quiet(&["link", "del", name]);
        }
    }
}

/// Creates a namespace named `namespace` with `address/24` on its eth0,
/// plugged into `bridge` through the host-side veth `host_side`.
fn plug_namespace(
    index: u8,
    bridge: &str,
    namespace: &str,
    host_side: &str,
    address: &str,
) -> Result<()> {
    ip(&["netns", "add", namespace])?;
    ip(&[
        "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", namespace,
    ])?;
    ip(&["link", "set", host_side, "master", bridge, "up"])?;
    ip(&["-n", namespace, "link", "set", "lo", "up"])?;
    ip(&["-n", namespace, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        namespace,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "eth0",
    ])?;
    let own = address.rsplit_once('.').map(|(net, _)| net).unwrap_or("");
    for subnet in subnets(index) {
        if subnet == own {
            continue;
        }
        ip(&[
            "-n",
            namespace,
            "route",
            "add",
            &format!("{subnet}.0/24"),
            "dev",
            "eth0",
        ])?;
    }
    Ok(())
}

/// The external client namespace: an address beside the nodes' external
/// ones (on-link to them, as the internet is to a public address), and a
/// route to the load balancers' block through the host, where the
/// balancers listen. No route to node internal, pod or host addresses.
fn external_client(index: u8, bridge: &str) -> Result<ExternalClientNetwork> {
    let namespace = format!("{}client", namespace_prefix(index));
    let address = format!("198.18.{index}.250");
    let host_side = format!("vcs{index}c");
    ip(&["netns", "add", &namespace])?;
    ip(&[
        "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
    ])?;
    ip(&["link", "set", &host_side, "master", bridge, "up"])?;
    ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
    ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &namespace,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        &namespace,
        "route",
        "add",
        &format!("10.210.{index}.0/24"),
        "via",
        &format!("198.18.{index}.1"),
        "dev",
        "eth0",
    ])?;
    Ok(ExternalClientNetwork {
        namespace,
        address,
        host_address: format!("198.18.{index}.1"),
    })
}

/// The cluster's /24s as their first three octets: nodes, pods, load
/// balancers, node external addresses.
fn subnets(index: u8) -> [String; 4] {
    [
        format!("10.200.{index}"),
        format!("10.244.{index}"),
        format!("10.210.{index}"),
        format!("198.18.{index}"),
    ]
}

impl ClusterNetwork {
    /// Takes a free cluster index and creates the bridge and one namespace per node.
    pub fn create(node_names: &[String]) -> Result<Self> {
        std::fs::create_dir_all(STATE_ROOT)
            .map_err(|e| SimError::Runtime(format!("cannot create {STATE_ROOT}: {e}")))?;
        let mut taken = None;
        for index in 1..=250u8 {
            let bridge = bridge_name(index);
            let state_dir = Path::new(STATE_ROOT).join(index.to_string());
            if ip(&["link", "add", &bridge, "type", "bridge"]).is_ok() {
                taken = Some((index, bridge, state_dir));
                break;
            }
            if owner_gone(&state_dir) {
                remove_index(index);
                let _ = std::fs::remove_dir_all(&state_dir);
                if ip(&["link", "add", &bridge, "type", "bridge"]).is_ok() {
                    taken = Some((index, bridge, state_dir));
                    break;
                }
            }
        }
        let (index, bridge, state_dir) = taken.ok_or_else(|| {
            SimError::Runtime("no free cluster network (250 bridges vcs*br in use)".into())
        })?;
        // The bridge is the index's lock: whoever held it is gone, so any
        // namespace still named for this index (a run killed after its
        // bridge was removed) is a leftover that would collide.
        remove_namespaces(index);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            SimError::Runtime(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        std::fs::write(state_dir.join("owner"), std::process::id().to_string())
            .map_err(|e| SimError::Runtime(format!("cannot write the owner file: {e}")))?;
        let mut network = Self {
            index,
            bridge: bridge.clone(),
            state_dir,
            nodes: Vec::new(),
            external_client: None,
            free_pod_octets: Mutex::new((2..=254).collect()),
            load_balancers: Mutex::new(BTreeSet::new()),
            removed: std::sync::atomic::AtomicBool::new(false),
        };
        ip(&["link", "set", &bridge, "up"])?;
        for subnet in subnets(index) {
            ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge])?;
        }
        for (position, name) in node_names.iter().enumerate() {
            let address = format!("10.200.{index}.{}", position + 2);
            let external_address = format!("198.18.{index}.{}", position + 2);
            let namespace = format!("{}node{position}", namespace_prefix(index));
            plug_namespace(
                index,
                &bridge,
                &namespace,
                &format!("vcs{index}n{position}"),
                &address,
            )?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{external_address}/32"),
                "dev",
                "eth0",
            ])?;
            // Answers to external clients leave from the external address
            // (as the 1:1 NAT in front of a cloud node would make them
            // appear), or a UDP server bound to 0.0.0.0 would answer from
            // the internal one and the client would drop the reply.
            ip(&[
                "-n",
                &namespace,
                "route",
                "replace",
                &format!("198.18.{index}.0/24"),
                "dev",
                "eth0",
                "src",
                &external_address,
            ])?;
            network.nodes.push(NodeNetwork {
                name: name.clone(),
                namespace,
                address,
                external_address,
            });
        }
        network.external_client = Some(external_client(index, &bridge)?);
        tracing::info!(index, bridge, "cluster network created");
        Ok(network)
    }

    pub fn node(&self, name: &str) -> Option<&NodeNetwork> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod namespace with a fresh address from the pod CIDR.
    pub fn add_pod(&self) -> Result<PodNetwork> {
        let octet = {
            let mut free = self
                .free_pod_octets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let octet = free
                .iter()
                .next()
                .copied()
                .ok_or_else(|| SimError::Runtime("pod CIDR exhausted (253 pods)".into()))?;
            free.remove(&octet);
            octet
        };
        let namespace = format!("{}pod{octet}", namespace_prefix(self.index));
        let address = format!("10.244.{}.{octet}", self.index);
        let host_side = format!("vcs{}p{octet}", self.index);
        // A namespace of the same name left by a pod that died uncleanly.
        ip_quiet(&["netns", "del", &namespace]);
        if let Err(error) =
            plug_namespace(self.index, &self.bridge, &namespace, &host_side, &address)
        {
            ip_quiet(&["netns", "del", &namespace]);
            self.release_octet(octet);
            return Err(error);
        }
        Ok(PodNetwork {
            namespace,
            address,
            host_octet: octet,
        })
    }

    fn release_octet(&self, octet: u8) {
        self.free_pod_octets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(octet);
    }

    /// Deletes a pod's namespace (its veth goes with it) and frees the address.
    pub fn remove_pod(&self, pod: &PodNetwork) {
        ip_quiet(&["netns", "del", &pod.namespace]);
        self.release_octet(pod.host_octet);
    }

    /// Adds a load-balancer address to the host side of the bridge.
    pub fn add_load_balancer(&self, address: &str) -> Result<()> {
        let mut known = self
            .load_balancers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if known.contains(address) {
            return Ok(());
        }
        ip(&["addr", "add", &format!("{address}/32"), "dev", &self.bridge])?;
        known.insert(address.to_owned());
        Ok(())
    }
}

impl ClusterNetwork {
    /// Removes the namespaces, the bridge and the state directory; again is harmless.
    pub fn remove(&self) {
        if self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        remove_index(self.index);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        tracing::info!(index = self.index, "cluster network removed");
    }
}

impl Drop for ClusterNetwork {
    fn drop(&mut self) {
        self.remove();
    }
}
