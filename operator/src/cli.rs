//! Command line: `run` (default), `crd`, `plan`. Every flag is also an
//! environment variable.

use crate::error::{Error, Result};
use crate::observed::{Observed, parse_yaml_objects};
use crate::plan::{self, FreshSecrets, PlanInput};
use crate::resource::VideoChatCluster;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::api::DynamicObject;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Kubernetes operator for VideoChatCluster: signaling, TURN, Redis, MongoDB.
#[derive(Debug, Parser)]
#[command(name = "videochat-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log format.
    #[arg(long, env = "VIDEOCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "VIDEOCHAT_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (kubeconfig or in-cluster configuration).
    Run(RunArgs),
    /// Print the VideoChatCluster CRD as YAML.
    Crd,
    /// Print what the operator would apply for a VideoChatCluster, offline.
    Plan(PlanArgs),
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Watch only this namespace (all namespaces when absent).
    #[arg(long, env = "VIDEOCHAT_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "VIDEOCHAT_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Name of this replica in Events and in the leader Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Take part in leader election, so several replicas can run and one
    /// reconciles. On by default; `--leader-election=false` for a single
    /// replica outside a cluster.
    #[arg(
        long,
        env = "VIDEOCHAT_LEADER_ELECTION",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "VIDEOCHAT_LEASE_NAME",
        default_value = "videochat-operator"
    )]
    pub lease_name: String,
    /// Seconds a leader that stopped renewing keeps the Lease.
    #[arg(long, env = "VIDEOCHAT_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
}

impl RunArgs {
    /// The leader election settings, when on. Without a pod name the
    /// identity is the host name plus the process id.
    pub fn leader_election(&self) -> Option<crate::io::leader::LeaderElection> {
        if !self.leader_election {
            return None;
        }
        let identity = self.instance.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "videochat-operator".into());
            format!("{host}-{}", std::process::id())
        });
        let duration = std::time::Duration::from_secs(self.lease_duration_seconds);
        Some(crate::io::leader::LeaderElection {
            namespace: self.lease_namespace.clone(),
            lease_name: self.lease_name.clone(),
            identity,
            // client-go's proportions: renew deadline 2/3, retry 2/15 of the lease.
            config: crate::io::leader::LeaderConfig {
                lease_duration: duration,
                renew_deadline: duration * 2 / 3,
                retry_period: (duration * 2 / 15).max(std::time::Duration::from_millis(200)),
            },
        })
    }
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            namespace: None,
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            instance: None,
            leader_election: true,
            lease_namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
            lease_name: "videochat-operator".into(),
            lease_duration_seconds: 15,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// YAML files: one holds the VideoChatCluster, the rest (or other
    /// documents in it) are observed objects as the API returns them.
    #[arg(
        short = 'f',
        long = "file",
        env = "VIDEOCHAT_PLAN_FILES",
        value_delimiter = ',',
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// What to print: the whole plan, or only the objects as a YAML stream,
    /// for review and for manifest validation. Not for `kubectl apply`:
    /// offline, Secret values are placeholders (unless --show-secrets, which
    /// prints freshly generated ones) and owner references carry a
    /// placeholder uid; the operator applies the real objects itself.
    #[arg(long, env = "VIDEOCHAT_PLAN_OUTPUT", value_enum, default_value_t = PlanOutput::Plan)]
    pub output: PlanOutput,
    /// Print Secret values instead of a placeholder.
    #[arg(long, env = "VIDEOCHAT_PLAN_SHOW_SECRETS")]
    pub show_secrets: bool,
    /// The observed objects include every Secret that exists: report
    /// referenced Secrets that are not among them.
    #[arg(long, env = "VIDEOCHAT_PLAN_SECRETS_COMPLETE")]
    pub secrets_complete: bool,
    /// Time used for condition transitions (RFC 3339); now when absent.
    #[arg(long, env = "VIDEOCHAT_PLAN_NOW")]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Plan,
    Objects,
}

/// The uid given to a VideoChatCluster read from a file without one, so
/// owner references can be shown.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";
/// Largest file `plan` reads (a whole namespace dump is far smaller).
pub const MAX_INPUT_BYTES: u64 = 32 << 20;
const REDACTED: &str = "PHJlZGFjdGVkPg=="; // base64("<redacted>")

#[derive(Serialize)]
struct PlanDocument<'a> {
    cluster: String,
    actions: &'a [plan::Action],
    status: &'a crate::resource::VideoChatClusterStatus,
    events: &'a [plan::PlannedEvent],
    objects: &'a [DynamicObject],
}

/// Runs `plan` on the given files and returns the YAML to print.
pub fn plan_command(args: &PlanArgs) -> Result<String> {
    let mut documents = Vec::new();
    for path in &args.files {
        let io_error = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        if size > MAX_INPUT_BYTES {
            return Err(Error::Parse {
                what: path.display().to_string(),
                message: format!(
                    "{size} bytes is more than the {MAX_INPUT_BYTES} a plan input may have"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        documents.extend(parse_yaml_objects(&text, &path.display().to_string())?);
    }
    let (clusters, others): (Vec<_>, Vec<_>) = documents.into_iter().partition(|o| {
        o.types.as_ref().is_some_and(|t| {
            t.kind == "VideoChatCluster" && t.api_version.starts_with("videochat.dev/")
        })
    });
    let [cluster] = <[DynamicObject; 1]>::try_from(clusters).map_err(|found| Error::Parse {
        what: "plan input".into(),
        message: format!(
            "expected exactly one VideoChatCluster among the files, found {}",
            found.len()
        ),
    })?;
    let cluster = serde_json::to_value(&cluster).map_err(|e| Error::Parse {
        what: "VideoChatCluster".into(),
        message: e.to_string(),
    })?;
    // Refuse what the API server would refuse, with the field path.
    let refusals = crate::admission::refusals(&cluster, None);
    if !refusals.is_empty() {
        return Err(Error::Refused {
            what: format!(
                "VideoChatCluster {}",
                cluster["metadata"]["name"].as_str().unwrap_or("<unnamed>")
            ),
            reasons: refusals
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let mut cluster: VideoChatCluster =
        serde_json::from_value(cluster).map_err(|e| Error::Parse {
            what: "VideoChatCluster".into(),
            message: e.to_string(),
        })?;
    let meta = &mut cluster.metadata;
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| PLACEHOLDER_UID.into());
    meta.generation.get_or_insert(1);

    let mut observed = Observed::new(others);
    observed.secrets_complete = args.secrets_complete;
    let fresh = FreshSecrets::generate();
    let now = args
        .now
        .clone()
        .unwrap_or_else(crate::io::controller::now_rfc3339);
    let plan = plan::plan(&PlanInput {
        cluster: &cluster,
        observed: &observed,
        fresh_secrets: &fresh,
        now: &now,
    })?;
    // What is printed; the plan's own objects stay as rendered.
    let objects: Vec<DynamicObject> = plan
        .objects
        .iter()
        .map(|object| printed(object, args.show_secrets))
        .collect();
    let yaml = |value: &dyn erased::Yaml| value.to_yaml();
    match args.output {
        PlanOutput::Objects => {
            let mut out = String::new();
            for object in &objects {
                out.push_str("---\n");
                out.push_str(&yaml(object)?);
            }
            Ok(out)
        }
        PlanOutput::Plan => yaml(&PlanDocument {
            cluster: plan::cluster_key(&cluster),
            actions: &plan.actions,
            status: &plan.status,
            events: &plan.events,
            objects: &objects,
        }),
    }
}

/// An object as `plan` prints it: a Secret's values are a placeholder
/// unless `show_secrets`.
fn printed(object: &DynamicObject, show_secrets: bool) -> DynamicObject {
    use serde_json::Value;
    let is_secret = object.types.as_ref().is_some_and(|t| t.kind == "Secret");
    let Value::Object(fields) = &object.data else {
        return object.clone();
    };
    if show_secrets || !is_secret {
        return object.clone();
    }
    let hidden = |values: &Value| match values {
        Value::Object(map) => Value::Object(
            map.keys()
                .map(|key| (key.clone(), Value::String(REDACTED.into())))
                .collect(),
        ),
        other => other.clone(),
    };
    let data = fields
        .iter()
        .map(|(name, value)| {
            let value = if name == "data" {
                hidden(value)
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect();
    DynamicObject {
        types: object.types.clone(),
        metadata: object.metadata.clone(),
        data: Value::Object(data),
    }
}

mod erased {
    use crate::error::{Error, Result};

    /// Object-safe YAML serialisation, so one closure serves every type.
    pub trait Yaml {
        fn to_yaml(&self) -> Result<String>;
    }

    impl<T: serde::Serialize> Yaml for T {
        fn to_yaml(&self) -> Result<String> {
            serde_yaml::to_string(self).map_err(|e| Error::Serialize {
                what: "plan output".into(),
                message: e.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cmd = <Cli as clap::CommandFactory>::command().mut_args(|a| a.env(None::<&str>));
        let cmd = cmd.mut_subcommand("run", |run| run.mut_args(|a| a.env(None::<&str>)));
        let argv = ["videochat-operator", "run"]
            .into_iter()
            .chain(args.iter().copied());
        let matches = cmd.try_get_matches_from(argv)?;
        match <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?.command {
            Some(Command::Run(run)) => Ok(run),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn leader_election_is_a_switch_that_also_takes_a_value() {
        assert!(run_args(&[]).expect("defaults").leader_election);
        assert!(
            run_args(&["--leader-election"])
                .expect("bare switch")
                .leader_election
        );
        assert!(
            !run_args(&["--leader-election=false"])
                .expect("=false")
                .leader_election
        );
        assert!(run_args(&["--leader-election=sometimes"]).is_err());
    }
}
