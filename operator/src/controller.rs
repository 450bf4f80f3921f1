//! The thin I/O layer: observe a cluster's children, run the plan, apply
//! it with server-side apply, write status, publish events. Every decision
//! is in [`crate::plan`].

use crate::FIELD_MANAGER;
use crate::autoscale::controller_io::{observe_pods, run_pod_actions};
use crate::autoscale::pod_admin::{HttpPodAdmin, PodAdmin};
use crate::error::{Error, Result};
use crate::labels;
use crate::leader::{LeaderElection, spawn_elector};
use crate::metrics::Metrics;
use crate::observed::Observed;
use crate::plan::{self, Action as PlanAction, FreshSecrets, PlanInput};
use crate::resource::{SecretKeyRef, VideoChatCluster};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PropagationPolicy, TypeMeta,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a settled cluster is looked at again (drift, missed watches).
const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is still rolling out is looked at again.
const PROGRESS_POLL: Duration = Duration::from_secs(30);
/// Attempts per write when the API answers 409 Conflict.
const WRITE_ATTEMPTS: u32 = 4;

/// Kinds read to build the observed set: everything the plan may create.
const OBSERVED_KINDS: [(&str, &str, &str); 9] = [
    ("", "v1", "Secret"),
    ("", "v1", "ConfigMap"),
    ("", "v1", "Service"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("policy", "v1", "PodDisruptionBudget"),
    // Last good pod templates, the rollback targets.
    ("apps", "v1", "ControllerRevision"),
];

/// How often a replica that does not hold the Lease looks again.
const FOLLOWER_POLL: Duration = Duration::from_secs(5);

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The pods' admin endpoints (load scrapes, drain requests).
    pub pod_admin: Arc<dyn PodAdmin>,
    /// Whether this replica holds the leader Lease; None without election.
    pub leading: Option<watch::Receiver<bool>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            pod_admin: Arc::new(HttpPodAdmin::default()),
            leading: None,
        }
    }

    /// Talks to pods through `pod_admin` instead of plain HTTP.
    pub fn with_pod_admin(mut self, pod_admin: Arc<dyn PodAdmin>) -> Self {
        self.pod_admin = pod_admin;
        self
    }

    /// Reconciles only while `leading` says so.
    pub fn with_leader(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    /// True unless leader election is on and this replica does not lead (a
    /// stopped elector counts as not leading).
    pub fn is_leader(&self) -> bool {
        match &self.leading {
            None => true,
            Some(leading) => leading.has_changed().is_ok() && *leading.borrow(),
        }
    }
}

fn api_resource(group: &str, version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Retries a write on 409 Conflict with a short growing pause.
async fn with_conflict_retry<T, F, Fut>(what: &str, mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write().await {
            Ok(value) => return Ok(value),
            Err(error) if is_conflict(&error) && attempt < WRITE_ATTEMPTS => {
                tracing::debug!(what, attempt, "conflict, retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(error) => return Err(Error::kube(what, error)),
        }
    }
}

/// Reads the cluster's children and the Secrets its spec references.
pub async fn observe(client: &Client, cluster: &VideoChatCluster) -> Result<Observed> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    let selector = labels::children_selector(&name);
    let mut observed = Observed::default();
    for (group, version, kind) in OBSERVED_KINDS {
        let resource = api_resource(group, version, kind);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::kube(format!("listing {kind}s of {namespace}/{name}"), e))?;
        for mut object in list.items {
            // List items come without apiVersion/kind.
            object.types = Some(TypeMeta {
                api_version: resource.api_version.clone(),
                kind: kind.into(),
            });
            observed.insert(object);
        }
    }
    let spec = &cluster.spec;
    let references: Vec<&SecretKeyRef> = [
        spec.turn.shared_secret_ref.as_ref(),
        spec.redis.external.as_ref().map(|e| &e.url_secret_ref),
        spec.mongodb.external.as_ref().map(|e| &e.url_secret_ref),
        spec.signaling.auth_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for reference in references {
        if observed.get("Secret", &reference.name).is_some() {
            continue;
        }
        match secrets.get(&reference.name).await {
            Ok(secret) => {
                let mut object = plan::to_dynamic(&secret)?;
                object.types = Some(TypeMeta {
                    api_version: "v1".into(),
                    kind: "Secret".into(),
                });
                observed.insert(object);
            }
            Err(error) if is_not_found(&error) => {}
            Err(error) => {
                return Err(Error::kube(
                    format!("reading Secret {namespace}/{}", reference.name),
                    error,
                ));
            }
        }
    }
    observed.secrets_complete = true;
    Ok(observed)
}

/// RFC 3339 to the second, as conditions carry it.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One reconcile of one VideoChatCluster.
pub async fn reconcile(cluster: Arc<VideoChatCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let key = plan::cluster_key(&cluster);
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

async fn reconcile_inner(cluster: &VideoChatCluster, ctx: &Context) -> Result<Action> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    let leading = ctx.is_leader();
    ctx.metrics.leader.set(i64::from(leading));
    if !leading {
        tracing::debug!(cluster = %name, %namespace, "not the leader; skipping");
        return Ok(Action::requeue(FOLLOWER_POLL));
    }
    let mut observed = observe(&ctx.client, cluster).await?;
    observe_pods(&ctx.client, ctx.pod_admin.as_ref(), cluster, &mut observed).await?;
    crate::node_addresses::observe_nodes(&ctx.client, cluster, &mut observed).await?;
    let fresh = FreshSecrets::generate();
    let now = now_rfc3339();
    let plan = plan::plan(&PlanInput {
        cluster,
        observed: &observed,
        fresh_secrets: &fresh,
        now: &now,
    })?;

    // Drains before any scale-down lands; a failed drain stops here.
    let now_time = crate::rollout::day_two::parse_now(&now)?;
    run_pod_actions(
        &ctx.client,
        ctx.pod_admin.as_ref(),
        cluster,
        &observed,
        &plan.actions,
        now_time,
    )
    .await?;

    let params = PatchParams::apply(FIELD_MANAGER).force();
    for action in &plan.actions {
        match action {
            PlanAction::Apply {
                api_version,
                kind,
                name: child,
                change,
            } => {
                let Some(object) = plan.objects.iter().find(|o| {
                    plan::type_of(o).1 == *kind && o.metadata.name.as_deref() == Some(child)
                }) else {
                    continue;
                };
                let (group, version) = split_api_version(api_version);
                let resource = api_resource(group, version, kind);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
                let patch = Patch::Apply(object);
                with_conflict_retry(&format!("applying {kind} {namespace}/{child}"), || {
                    api.patch(child, &params, &patch)
                })
                .await?;
                tracing::info!(cluster = %name, %namespace, %kind, object = %child, ?change, "applied");
            }
            PlanAction::Delete {
                api_version,
                kind,
                name: child,
            } => {
                let (group, version) = split_api_version(api_version);
                let resource = api_resource(group, version, kind);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
                let delete = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match api.delete(child, &delete).await {
                    Ok(_) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => {
                        return Err(Error::kube(
                            format!("deleting {kind} {namespace}/{child}"),
                            error,
                        ));
                    }
                }
                tracing::info!(cluster = %name, %namespace, %kind, object = %child, "pruned");
            }
            PlanAction::Rollback {
                component,
                from_revision,
                to_revision,
                reason,
                ..
            } => {
                ctx.metrics.rollbacks.inc();
                // The workload's Apply carries the last good template.
                tracing::warn!(cluster = %name, %namespace, %component, %from_revision, %to_revision, %reason, "rolled back");
            }
            PlanAction::Scale {
                component,
                from,
                to,
                reason,
                ..
            } => {
                ctx.metrics.scale_steps.inc();
                // The Deployment's Apply carries the replicas.
                tracing::info!(cluster = %name, %namespace, %component, from, to, %reason, "scaled");
            }
            // Carried out before the applies (run_pod_actions); counted here.
            PlanAction::Drain { .. } => {
                ctx.metrics.pod_drains.inc();
            }
            PlanAction::DeletePod { .. } => {}
        }
    }

    if cluster.status.as_ref() != Some(&plan.status) {
        let clusters: Api<VideoChatCluster> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": VideoChatCluster::api_version(&()),
            "kind": VideoChatCluster::kind(&()),
            "status": plan.status,
        });
        let patch = Patch::Apply(&patch);
        with_conflict_retry(&format!("writing status of {namespace}/{name}"), || {
            clusters.patch_status(&name, &params, &patch)
        })
        .await?;
    }

    let reference = cluster.object_ref(&());
    for planned in &plan.events {
        let event = Event {
            type_: if planned.type_ == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: planned.reason.clone(),
            note: Some(planned.note.clone()),
            action: planned.action.clone(),
            secondary: None,
        };
        // An event that cannot be written is not worth failing the reconcile.
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(cluster = %name, %namespace, %error, "cannot publish event");
        }
    }

    let progressing = plan
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "True")
        || crate::rollout::day_two::needs_prompt_recheck(&plan.status);
    let mut requeue = if progressing { PROGRESS_POLL } else { RESYNC };
    // The autoscaler needs fresh load figures at its metrics interval.
    let autoscaling = &cluster.spec.autoscaling;
    if autoscaling.enabled {
        let interval = u64::try_from(autoscaling.metrics_interval_seconds)
            .unwrap_or(15)
            .max(1);
        requeue = requeue.min(Duration::from_secs(interval));
    }
    Ok(Action::requeue(requeue))
}

/// Failed reconciles come back with exponential backoff (5s doubling to 5 min).
pub fn error_policy(cluster: Arc<VideoChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = plan::cluster_key(&cluster);
    ctx.metrics.observe_error(error.metric_kind());
    let failures = match ctx.failures.lock() {
        Ok(mut map) => {
            let count = map.entry(key.clone()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        }
        Err(_) => 1,
    };
    let delay = backoff(failures);
    tracing::warn!(cluster = %key, %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// 5s, 10s, 20s, ... capped at 300s.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exponent).min(300))
}

/// Fails with [`Error::CrdMissing`] when the CRD is not installed. Lists
/// in the watched namespace when there is one: a namespaced operator has
/// no cluster-wide list permission.
pub async fn check_crd_installed(client: &Client, namespace: Option<&str>) -> Result<()> {
    let api: Api<VideoChatCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(error) if is_not_found(&error) => Err(Error::CrdMissing),
        Err(error) => Err(Error::kube("checking that the CRD is installed", error)),
    }
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    instance: Option<String>,
    election: Option<LeaderElection>,
) -> Result<()> {
    check_crd_installed(&client, namespace.as_deref()).await?;
    let clusters: Api<VideoChatCluster> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    fn owned<K>(client: &Client, namespace: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let children = watcher::Config::default()
        .labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER))
        .any_semantic();
    let mut context = Context::new(client.clone(), metrics, instance);
    let mut elector = None;
    if let Some(election) = election {
        tracing::info!(lease = %election.lease_name, namespace = %election.namespace, identity = %election.identity, "leader election on");
        let (leading, stop, task) = spawn_elector(client.clone(), election);
        context = context.with_leader(leading);
        elector = Some((stop, task));
    }
    let ctx = Arc::new(context);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("<all>"),
        "controller started"
    );
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(owned::<Deployment>(&client, &namespace), children.clone())
        .owns(owned::<StatefulSet>(&client, &namespace), children.clone())
        .owns(owned::<Service>(&client, &namespace), children.clone())
        .owns(owned::<ConfigMap>(&client, &namespace), children.clone())
        .owns(owned::<Secret>(&client, &namespace), children.clone())
        .owns(owned::<Ingress>(&client, &namespace), children.clone())
        .owns(
            owned::<NetworkPolicy>(&client, &namespace),
            children.clone(),
        )
        .owns(owned::<PodDisruptionBudget>(&client, &namespace), children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile loop error"),
            }
        })
        .await;
    ready.store(false, Ordering::Relaxed);
    if let Some((stop, task)) = elector {
        // Release the Lease so the other replica takes over at once.
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(())
}
