//! A run killed at the wrong moment leaves a node's veth pair alive: its
//! namespace has lost its name but a dying process still holds it, so the
//! host side `vcs<i>n0` remains and the next cluster on index `i` could not
//! create its own ("File exists"). The next cluster clears it instead.
//! Alone in its binary, so the cluster below takes the lowest free index;
//! every low index gets a planted leftover in case another run holds some.

mod support;

use std::process::{Child, Command};
use support::init_tracing;
use videochat_sim_cluster::{SimCluster, SimClusterOptions};

/// A process in a network namespace of its own, holding a veth whose host
/// side is `vcs<index>n0`, as a killed run leaves it.
struct Leftover {
    holder: Child,
}

impl Leftover {
    fn plant(index: u8) -> Option<Self> {
        let link = format!("vcs{index}n0");
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .spawn()
            .expect("unshare runs (root needed)");
        // The holder is in its namespace once unshare has exec'd sleep.
        let pid = holder.id().to_string();
        for _ in 0..50 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let added = Command::new(videochat_sim_cluster::network::ip_path())
            .args([
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ])
            .status()
            .expect("ip runs");
        let leftover = Self { holder };
        // Taken by a live cluster of another run: not ours to plant (the
        // holder goes with `leftover`).
        added.success().then_some(leftover)
    }

    /// Whether the holder's end of the pair is still there (the host name
    /// may have been reused by the new cluster's own veth).
    fn exists(&self) -> bool {
        Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-n"])
            .args([
                videochat_sim_cluster::network::ip_path(),
                "link",
                "show",
                "eth0",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_veth_left_by_a_killed_run_does_not_stop_the_next_cluster() {
    init_tracing();
    let planted: Vec<Leftover> = (1..=4).filter_map(Leftover::plant).collect();
    assert!(
        !planted.is_empty(),
        "no low cluster index was free to plant on"
    );
    let cluster = SimCluster::start(SimClusterOptions {
        run_pods: true,
        ..SimClusterOptions::default()
    })
    .await
    .expect("the cluster starts over a leftover veth of its index");
    // The leftover of the index it took is gone (the others wait for the
    // run that takes theirs, and go with their holders here).
    assert!(
        planted.iter().any(|leftover| !leftover.exists()),
        "the cluster cleared the leftover of its own index"
    );
    drop(cluster);
}
