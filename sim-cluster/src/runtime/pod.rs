//! One pod on its node: its network namespace (or the node's, with
//! hostNetwork), its volumes, its containers as real processes, their
//! probes, restarts and status, and its graceful end.

use super::Shared;
use super::env;
use super::images::Image;
use super::probes::{Prober, Target, Verdict};
use super::volumes::PodVolumes;
use crate::controllers::scheduler::{set_condition, strip_rv};
use crate::controllers::{name, namespace, resource, str_at, terminating, uid};
use crate::network::{PodNetwork, ip_path};
use crate::store::{Part, now_rfc3339};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MANAGER: &str = "kubelet";
/// How often a pod's worker looks at its pod, processes and probes.
const STEP: Duration = Duration::from_millis(100);
/// Back-off after a container exits never grows past this (kubelet: 5 min).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `'text'` for sh, with embedded quotes escaped.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

// One per container: the size of the running variant does not matter.
#[allow(clippy::large_enum_variant)]
enum State {
    Waiting {
        reason: String,
        message: String,
        start_at: Instant,
    },
    Running {
        child: tokio::process::Child,
        pid: u32,
        started_at: String,
        target: Target,
        startup: Option<Prober>,
        liveness: Option<Prober>,
        readiness: Option<Prober>,
        started: bool,
        ready: bool,
    },
}

struct Container {
    spec: Value,
    image: Image,
    state: State,
    restarts: u32,
    last_terminated: Option<Value>,
    backoff: Duration,
}

pub struct PodWorker {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    network: Option<PodNetwork>,
    address: String,
    host_address: String,
    net_namespace: String,
    volumes: PodVolumes,
    containers: Vec<Container>,
    start_time: String,
    last_volume_sync: Option<Instant>,
}

fn container_ports(spec: &Value) -> BTreeMap<String, u16> {
    spec.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("name")?.as_str()?.to_owned(),
                p.get("containerPort")?.as_u64()? as u16,
            ))
        })
        .collect()
}

impl PodWorker {
    /// Sets up the pod's network and volumes. Err: the pod cannot start.
    pub fn create(shared: Arc<Shared>, pod: &Value, images: Vec<Image>) -> crate::Result<Self> {
        let node = shared
            .network
            .node(str_at(pod, "/spec/nodeName"))
            .cloned()
            .ok_or_else(|| {
                crate::SimError::Runtime(format!("pod {} is on an unknown node", name(pod)))
            })?;
        let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let (network, address, net_namespace) = if host_network {
            (None, node.address.clone(), node.namespace.clone())
        } else {
            let network = shared.network.add_pod()?;
            let address = network.address.clone();
            let ns = network.namespace.clone();
            (Some(network), address, ns)
        };
        let dir = shared.network.state_dir.join("pods").join(uid(pod));
        // Container logs live here even when the pod has no volume.
        if let Err(error) = std::fs::create_dir_all(&dir) {
            if let Some(network) = &network {
                shared.network.remove_pod(network);
            }
            return Err(crate::SimError::Runtime(format!(
                "cannot create {}: {error}",
                dir.display()
            )));
        }
        let volumes = match PodVolumes::create(pod, &dir, &shared.network.state_dir.join("claims"))
        {
            Ok(volumes) => volumes,
            Err(error) => {
                if let Some(network) = &network {
                    shared.network.remove_pod(network);
                }
                return Err(error);
            }
        };
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .zip(images)
            .map(|(spec, image)| Container {
                spec: spec.clone(),
                image,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                    start_at: Instant::now(),
                },
                restarts: 0,
                last_terminated: None,
                backoff: shared.restart_backoff,
            })
            .collect();
        Ok(Self {
            namespace: namespace(pod).to_owned(),
            name: name(pod).to_owned(),
            uid: uid(pod).to_owned(),
            dir,
            network,
            address,
            host_address: node.address,
            net_namespace,
            volumes,
            containers,
            start_time: now_rfc3339(),
            last_volume_sync: None,
            shared,
        })
    }

    fn current(&self) -> Option<Value> {
        let pods = resource(&self.shared.store, "", "pods")?;
        let pod = self
            .shared
            .store
            .get(&pods, Some(&self.namespace), &self.name)
            .ok()?;
        (uid(&pod) == self.uid).then_some(pod)
    }

    /// Runs the pod until it is deleted.
    pub async fn run(mut self) {
        loop {
            let Some(pod) = self.current() else {
                // Gone without a grace period (force delete): kill at once.
                self.stop_all(Duration::ZERO).await;
                break;
            };
            if terminating(&pod) {
                let grace = pod
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(30);
                // The pod leaves Endpoints as soon as it is terminating
                // (the endpoints controller reads deletionTimestamp); its
                // status says not ready while it stops.
                for container in &mut self.containers {
                    if let State::Running { ready, .. } = &mut container.state {
                        *ready = false;
                    }
                }
                self.write_status(&pod);
                self.stop_all(Duration::from_secs(grace)).await;
                if let Some(pods) = resource(&self.shared.store, "", "pods") {
                    self.shared
                        .store
                        .remove_terminated_pod(&pods, &self.namespace, &self.name);
                }
                break;
            }
            self.step(&pod).await;
            self.write_status(&pod);
            tokio::time::sleep(STEP).await;
        }
        if let Some(network) = self.network.take() {
            self.shared.network.remove_pod(&network);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn step(&mut self, pod: &Value) {
        let now = Instant::now();
        let volume_error = if self
            .last_volume_sync
            .is_none_or(|at| now.duration_since(at) > Duration::from_millis(500))
        {
            self.last_volume_sync = Some(now);
            self.volumes.sync(&self.shared.store, pod).err()
        } else {
            None
        };
        for index in 0..self.containers.len() {
            self.step_container(index, pod, now, volume_error.as_deref())
                .await;
        }
    }

    async fn step_container(
        &mut self,
        index: usize,
        pod: &Value,
        now: Instant,
        volume_error: Option<&str>,
    ) {
        let container = &mut self.containers[index];
        match &mut container.state {
            State::Waiting {
                start_at,
                reason,
                message,
            } => {
                if now < *start_at {
                    return;
                }
                if let Some(error) = volume_error {
                    *reason = "ContainerCreating".into();
                    *message = error.to_owned();
                    return;
                }
                match self.start(index, pod) {
                    Ok(state) => self.containers[index].state = state,
                    Err((why, detail)) => {
                        let container = &mut self.containers[index];
                        tracing::warn!(pod = %self.name, container = %str_at(&container.spec, "/name"), %detail, "container did not start");
                        container.state = State::Waiting {
                            reason: why,
                            message: detail,
                            start_at: now + Duration::from_secs(1),
                        };
                    }
                }
            }
            State::Running {
                child,
                target,
                startup,
                liveness,
                readiness,
                started,
                ready,
                started_at,
                ..
            } => {
                if let Ok(Some(status)) = child.try_wait() {
                    let code = status.code().unwrap_or(
                        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9),
                    );
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    let terminated = json!({"exitCode": code, "reason": reason,
                        "startedAt": started_at.clone(), "finishedAt": now_rfc3339()});
                    tracing::info!(pod = %self.name, container = %str_at(&container.spec, "/name"), code, "container exited");
                    self.restart_later(index, terminated);
                    return;
                }
                if !*started {
                    match startup.as_mut().map(|p| p.step(target, now)) {
                        None | Some(Verdict::Passing) => *started = true,
                        Some(Verdict::Failing) => {
                            let message = "Startup probe failed".to_string();
                            self.kill_for_probe(index, message).await;
                            return;
                        }
                        Some(Verdict::Unknown) => return,
                    }
                    // Liveness and readiness start counting once started.
                    let from = now;
                    if let Some(spec) = container.spec.get("livenessProbe") {
                        *liveness = Some(Prober::new(spec, from));
                    }
                    if let Some(spec) = container.spec.get("readinessProbe") {
                        *readiness = Some(Prober::new(spec, from));
                    }
                }
                if let Some(Verdict::Failing) = liveness.as_mut().map(|p| p.step(target, now)) {
                    self.kill_for_probe(index, "Liveness probe failed".into())
                        .await;
                    return;
                }
                match readiness.as_mut().map(|p| p.step(target, now)) {
                    None | Some(Verdict::Passing) => *ready = true,
                    Some(Verdict::Failing) => *ready = false,
                    Some(Verdict::Unknown) => {}
                }
            }
        }
    }

    /// Stops a container whose startup or liveness probe failed; it restarts.
    async fn kill_for_probe(&mut self, index: usize, message: String) {
        tracing::info!(pod = %self.name, %message, "killing the container");
        let grace = self.grace();
        let code = self.stop_container(index, grace).await;
        let started_at = match &self.containers[index].state {
            State::Running { started_at, .. } => started_at.clone(),
            State::Waiting { .. } => String::new(),
        };
        let terminated = json!({"exitCode": code, "reason": "Error", "message": message,
            "startedAt": started_at, "finishedAt": now_rfc3339()});
        self.restart_later(index, terminated);
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .current()
            .and_then(|p| {
                p.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds)
    }

    fn restart_later(&mut self, index: usize, terminated: Value) {
        let container = &mut self.containers[index];
        if let State::Running { pid, .. } = &container.state {
            self.shared.forget_process(*pid);
        }
        let delay = container.backoff;
        container.backoff = (container.backoff * 2).min(MAX_BACKOFF);
        container.restarts += 1;
        container.last_terminated = Some(terminated);
        let name = str_at(&container.spec, "/name").to_owned();
        container.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {}s restarting failed container={name} pod={}_{}({})",
                delay.as_secs(),
                self.name,
                self.namespace,
                self.uid
            ),
            start_at: Instant::now() + delay,
        };
    }

    /// The shell that sets up the container's mount namespace (inside
    /// `ip netns exec`, which gives it its own): /etc/hosts, then each
    /// volume bind-mounted at its real mountPath, then exec.
    fn setup_script(&self, spec: &Value) -> Result<String, String> {
        let mut lines = vec![
            "set -e".to_owned(),
            "mount --make-rprivate /".to_owned(),
            format!(
                "mount --bind {} /etc/hosts",
                quote(&self.shared.hosts_file.display().to_string())
            ),
        ];
        let mut mounts: Vec<&Value> = spec
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        mounts.sort_by_key(|m| str_at(m, "/mountPath").matches('/').count());
        for mount in mounts {
            let volume = str_at(mount, "/name");
            let dir = self
                .volumes
                .dir(volume)
                .ok_or_else(|| format!("volume {volume} is not defined"))?;
            let mut source = dir.to_path_buf();
            let sub_path = str_at(mount, "/subPath");
            if !sub_path.is_empty() {
                source = source.join(sub_path);
            }
            let target = quote(str_at(mount, "/mountPath"));
            let source = quote(&source.display().to_string());
            // A mount point that is not on the host is created there
            // (empty); see docs/testing.md.
            lines.push(format!("[ -e {target} ] || mkdir -p {target}"));
            lines.push(format!("mount --bind {source} {target}"));
            if mount.get("readOnly").and_then(Value::as_bool) == Some(true) {
                lines.push(format!("mount -o remount,bind,ro {target}"));
            }
        }
        let working_dir = spec
            .get("workingDir")
            .and_then(Value::as_str)
            .unwrap_or("/");
        lines.push(format!("cd {}", quote(working_dir)));
        lines.push("exec \"$@\"".to_owned());
        Ok(lines.join("\n"))
    }

    fn start(&mut self, index: usize, pod: &Value) -> Result<State, (String, String)> {
        let spec = self.containers[index].spec.clone();
        let image = self.containers[index].image.clone();
        let mut vars = env::render(
            &self.shared.store,
            pod,
            &spec,
            &self.address,
            &self.host_address,
        )
        .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let command = env::command_line(&image, &spec, &vars);
        if command.is_empty() {
            return Err(("CreateContainerError".into(), "no command specified".into()));
        }
        vars.entry("PATH".into()).or_insert_with(|| {
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                image.bin_dir.display()
            )
        });
        vars.entry("HOSTNAME".into())
            .or_insert_with(|| self.name.clone());
        let script = self
            .setup_script(&spec)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let container_name = str_at(&spec, "/name").to_owned();
        let log_path = self.dir.join(format!("{container_name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                (
                    "RunContainerError".to_owned(),
                    format!("{}: {e}", log_path.display()),
                )
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
        let mut process = tokio::process::Command::new(ip_path());
        process
            .args([
                "netns",
                "exec",
                &self.net_namespace,
                "sh",
                "-c",
                &script,
                "container",
            ])
            .args(&command)
            .env_clear()
            .envs(&vars)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        let child = process.spawn().map_err(|e| {
            (
                "RunContainerError".to_owned(),
                format!("{}: {e}", command[0]),
            )
        })?;
        let pid = child.id().unwrap_or_default();
        self.shared.remember_process(pid);
        tracing::info!(pod = %self.name, container = %container_name, pid, address = %self.address, "container started");
        let now = Instant::now();
        let startup = spec.get("startupProbe").map(|s| Prober::new(s, now));
        let mut state = State::Running {
            child,
            pid,
            started_at: now_rfc3339(),
            target: Target {
                address: self.address.clone(),
                ports: container_ports(&spec),
                pid,
                env: vars,
            },
            startup,
            liveness: None,
            readiness: None,
            started: false,
            ready: false,
        };
        if let State::Running {
            liveness,
            readiness,
            startup: None,
            started,
            ..
        } = &mut state
        {
            // No startup probe: started at once, the others count from now.
            *started = true;
            *liveness = spec.get("livenessProbe").map(|s| Prober::new(s, now));
            *readiness = spec.get("readinessProbe").map(|s| Prober::new(s, now));
        }
        Ok(state)
    }

    /// SIGTERM, then SIGKILL to the process group after `grace`; the exit code.
    async fn stop_container(&mut self, index: usize, grace: Duration) -> i32 {
        let State::Running { child, pid, .. } = &mut self.containers[index].state else {
            return 0;
        };
        let pid = *pid;
        signal("TERM", &pid.to_string());
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        };
        // Whatever the main process left behind in its group goes too.
        signal("KILL", &format!("-{pid}"));
        let status = match status {
            Some(status) => Some(status),
            None => child.wait().await.ok(),
        };
        self.shared.forget_process(pid);
        status
            .map(|s| {
                s.code()
                    .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9))
            })
            .unwrap_or(137)
    }

    async fn stop_all(&mut self, grace: Duration) {
        let started = Instant::now();
        for index in 0..self.containers.len() {
            let left = grace.saturating_sub(started.elapsed());
            let code = self.stop_container(index, left).await;
            let container = &mut self.containers[index];
            if let State::Running { started_at, .. } = &container.state {
                let reason = if code == 0 { "Completed" } else { "Error" };
                container.last_terminated = Some(json!({"exitCode": code, "reason": reason,
                    "startedAt": started_at.clone(), "finishedAt": now_rfc3339()}));
                container.state = State::Waiting {
                    reason: "Terminated".into(),
                    message: String::new(),
                    start_at: Instant::now() + Duration::from_secs(3600),
                };
            }
        }
    }

    fn write_status(&self, pod: &Value) {
        let mut statuses = Vec::new();
        let mut all_ready = true;
        let mut any_running = false;
        let mut unready = Vec::new();
        for container in &self.containers {
            let name = str_at(&container.spec, "/name");
            let image = str_at(&container.spec, "/image");
            let mut status = json!({"name": name, "image": image, "imageID": format!("sim://{image}"),
                "restartCount": container.restarts});
            match &container.state {
                State::Waiting {
                    reason, message, ..
                } => {
                    let mut waiting = json!({"reason": reason});
                    if !message.is_empty() {
                        waiting["message"] = json!(message);
                    }
                    status["state"] = json!({"waiting": waiting});
                    status["ready"] = json!(false);
                    status["started"] = json!(false);
                    all_ready = false;
                    unready.push(name);
                }
                State::Running {
                    pid,
                    started_at,
                    started,
                    ready,
                    ..
                } => {
                    any_running = true;
                    status["containerID"] = json!(format!("sim://{pid}"));
                    status["state"] = json!({"running": {"startedAt": started_at}});
                    status["ready"] = json!(ready);
                    status["started"] = json!(started);
                    if !ready {
                        all_ready = false;
                        unready.push(name);
                    }
                }
            }
            if let Some(last) = &container.last_terminated {
                status["lastState"] = json!({"terminated": last});
            }
            statuses.push(status);
        }
        let mut updated = pod.clone();
        let status = &mut updated["status"];
        status["phase"] = json!(if any_running { "Running" } else { "Pending" });
        status["podIP"] = json!(self.address);
        status["podIPs"] = json!([{"ip": self.address}]);
        status["hostIP"] = json!(self.host_address);
        status["hostIPs"] = json!([{"ip": self.host_address}]);
        status["startTime"] = json!(self.start_time);
        status["containerStatuses"] = json!(statuses);
        set_condition(&mut updated, "PodReadyToStartContainers", "True", "", "");
        set_condition(&mut updated, "Initialized", "True", "", "");
        let ready_now = all_ready && !terminating(pod);
        if ready_now {
            set_condition(&mut updated, "ContainersReady", "True", "", "");
            set_condition(&mut updated, "Ready", "True", "", "");
        } else {
            let message = format!("containers with unready status: [{}]", unready.join(" "));
            set_condition(
                &mut updated,
                "ContainersReady",
                "False",
                "ContainersNotReady",
                &message,
            );
            set_condition(
                &mut updated,
                "Ready",
                "False",
                "ContainersNotReady",
                &message,
            );
        }
        if updated.get("status") == pod.get("status") {
            return;
        }
        if let Some(pods) = resource(&self.shared.store, "", "pods") {
            crate::controllers::log_failure(
                self.shared.store.replace(
                    &pods,
                    Some(&self.namespace),
                    &self.name,
                    strip_rv(updated),
                    MANAGER,
                    Part::Status,
                ),
                "writing pod status",
            );
        }
    }

    pub fn log_path(dir: &Path, container: &str) -> PathBuf {
        dir.join(format!("{container}.log"))
    }
}

/// `kill -SIGNAL TARGET` (a pid, or `-pgid` for a group); errors ignored
/// (the process may be gone).
pub fn signal(signal: &str, target: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
