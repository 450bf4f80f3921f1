//! The operator as `helm install` deploys it: the chart rendered by helm
//! (`VIDEOCHAT_HELM`, else `helm` on PATH), and each replica of its
//! Deployment a real `videochat-operator` process started with the
//! container's args and environment (field references resolved as the
//! kubelet would). The processes run on the host and reach the simulated
//! API through a kubeconfig, since the simulation has no service-account
//! tokens or TLS; and each listens for its admin endpoints on a port of its
//! own, since they share the host's network. A test can SIGKILL one, as a
//! node that dies does.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use videochat_sim_cluster::SimCluster;

pub struct OperatorProcess {
    /// The pod name it runs as (its Lease identity).
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    /// The end of its output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL, then reaps it: nothing it holds (the Lease) is released.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("reap the killed operator")
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct HelmOperator {
    pub replicas: Vec<OperatorProcess>,
    dir: PathBuf,
}

impl Drop for HelmOperator {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The chart rendered by helm with `values` (`--set` pairs), as objects.
pub fn render_chart(namespace: &str, values: &[&str]) -> Vec<Value> {
    let helm = std::env::var_os("VIDEOCHAT_HELM")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "helm".into());
    let chart = videochat_sim_cluster::cluster::workspace_root().join("charts/videochat-operator");
    let mut command = Command::new(&helm);
    command
        .args(["template", "videochat-operator"])
        .arg(&chart)
        .args(["--namespace", namespace]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {helm:?} (set VIDEOCHAT_HELM to the helm binary): {e}")
    });
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| {
            let value: Value = serde::Deserialize::deserialize(document).ok()?;
            value.is_object().then_some(value)
        })
        .collect()
}

impl HelmOperator {
    /// Renders the chart into `namespace` with `values` and starts its
    /// Deployment's replicas against `sim`.
    pub fn install(sim: &SimCluster, namespace: &str, values: &[&str]) -> Self {
        let objects = render_chart(namespace, values);
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("the chart renders the operator Deployment");
        let name = deployment["metadata"]["name"]
            .as_str()
            .expect("Deployment name")
            .to_owned();
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();

        let dir = std::env::temp_dir().join(format!(
            "videochat-helm-operator-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("operator scratch directory");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for(sim, namespace)).expect("write kubeconfig");
        let binary =
            videochat_sim_cluster::runtime::images::cargo_bin_dir().join("videochat-operator");
        assert!(
            binary.is_file(),
            "{} is missing: run `cargo build --bins` first",
            binary.display()
        );
        let replicas = (0..replicas)
            .map(|index| {
                let pod = format!("{name}-{index}");
                let env = container_env(container, &pod, namespace);
                start(&binary, &args, &env, &kubeconfig, &dir, &pod)
            })
            .collect();
        Self { replicas, dir }
    }

    pub fn replica(&mut self, name: &str) -> &mut OperatorProcess {
        self.replicas
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no operator replica named {name}"))
    }

    /// Each replica's output tail, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {}:\n{}", r.name, r.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn kubeconfig_for(sim: &SimCluster, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: http://{}\n\
         users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {namespace}\n\
         current-context: sim\n",
        sim.address
    )
}

/// The container's environment with field references resolved for `pod`.
fn container_env(container: &Value, pod: &str, namespace: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let Some(name) = entry["name"].as_str() else {
            continue;
        };
        let value = if let Some(value) = entry["value"].as_str() {
            value.to_owned()
        } else {
            match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => namespace.to_owned(),
                other => panic!("the chart's env {name} refers to {other:?}, unknown here"),
            }
        };
        env.push((name.to_owned(), value));
    }
    // Replicas share the host's network: a free port each instead of the
    // chart's one admin port.
    env.retain(|(name, _)| name != "VIDEOCHAT_OPERATOR_ADMIN_LISTEN");
    env.push((
        "VIDEOCHAT_OPERATOR_ADMIN_LISTEN".into(),
        "127.0.0.1:0".into(),
    ));
    env
}

fn start(
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    kubeconfig: &Path,
    dir: &Path,
    pod: &str,
) -> OperatorProcess {
    let log = dir.join(format!("{pod}.log"));
    let out = std::fs::File::create(&log).expect("operator log file");
    let err = out.try_clone().expect("operator log file");
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    OperatorProcess {
        name: pod.to_owned(),
        child,
        log,
    }
}
