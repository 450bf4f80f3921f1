//! The thin I/O layer: observe a cluster's children, run the plan, apply
//! it with server-side apply, write status, publish events. Every decision
//! is made by [`crate::plan`], which never imports from here.

use super::cache::{ChildCaches, reflect};
use super::leader::{LeaderElection, spawn_elector};
use super::pod_admin::{HttpPodAdmin, PodAdmin};
use super::pods::{observe_pods, record_pods, run_pod_actions};
use crate::FIELD_MANAGER;
use crate::error::{Error, Result};
use crate::labels;
use crate::metrics::Metrics;
use crate::observed::Observed;
use crate::plan::{self, Action as PlanAction, FailedWrite, FreshSecrets, PlanInput, WriteFailure};
use crate::resource::{SecretKeyRef, VideoChatCluster};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PropagationPolicy, TypeMeta,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
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
    /// Watch caches of the children; without them every reconcile lists.
    pub caches: Option<ChildCaches>,
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
            caches: None,
        }
    }

    /// Reads children from watch caches instead of listing them.
    pub fn with_caches(mut self, caches: ChildCaches) -> Self {
        self.caches = Some(caches);
        self
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
    let references = referenced_secrets(cluster);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for reference in references {
        if observed.get("Secret", &reference.name).is_some() {
            continue;
        }
        match secrets.get(&reference.name).await {
            Ok(secret) => {
                let mut object = crate::objects::to_dynamic(&secret)?;
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

/// The Secrets a cluster's spec names (TURN shared secret, external database
/// URLs, room-token secret), which carry none of the operator's labels.
fn referenced_secrets(cluster: &VideoChatCluster) -> Vec<&SecretKeyRef> {
    let spec = &cluster.spec;
    [
        spec.turn.shared_secret_ref.as_ref(),
        spec.redis.external.as_ref().map(|e| &e.url_secret_ref),
        spec.mongodb.external.as_ref().map(|e| &e.url_secret_ref),
        spec.signaling.auth_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// [`observe`] from the watch caches: the children from memory, and only
/// the referenced Secrets the caches do not hold (a user's own Secret
/// carries none of the operator's labels) from the API.
pub async fn observe_cached(
    client: &Client,
    caches: &ChildCaches,
    cluster: &VideoChatCluster,
) -> Result<Observed> {
    let namespace = cluster
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = cluster.name_any();
    caches.wait_until_ready().await?;
    let mut observed = Observed::new(caches.children(&namespace, &name)?);
    let references = referenced_secrets(cluster);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for reference in references {
        if observed.get("Secret", &reference.name).is_some() {
            continue;
        }
        let secret = match caches.secret(&namespace, &reference.name) {
            Some(secret) => Some(secret.as_ref().clone()),
            None => match secrets.get(&reference.name).await {
                Ok(secret) => Some(secret),
                Err(error) if is_not_found(&error) => None,
                Err(error) => {
                    return Err(Error::kube(
                        format!("reading Secret {namespace}/{}", reference.name),
                        error,
                    ));
                }
            },
        };
        if let Some(secret) = secret {
            let mut object = crate::objects::to_dynamic(&secret)?;
            object.types = Some(TypeMeta {
                api_version: "v1".into(),
                kind: "Secret".into(),
            });
            observed.insert(object);
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
    // Being deleted: the garbage collector removes the children; applying
    // them again would only race it.
    if cluster.metadata.deletion_timestamp.is_some() {
        tracing::debug!(cluster = %name, %namespace, "being deleted; nothing to do");
        return Ok(Action::await_change());
    }
    let leading = ctx.is_leader();
    ctx.metrics.leader.set(i64::from(leading));
    if !leading {
        tracing::debug!(cluster = %name, %namespace, "not the leader; skipping");
        return Ok(Action::requeue(FOLLOWER_POLL));
    }
    let mut observed = match &ctx.caches {
        Some(caches) => {
            let mut observed = observe_cached(&ctx.client, caches, cluster).await?;
            let pods = caches.pods(&namespace, &name);
            record_pods(
                &ctx.client,
                ctx.pod_admin.as_ref(),
                cluster,
                pods,
                &mut observed,
            )
            .await?;
            observed
        }
        None => {
            let mut observed = observe(&ctx.client, cluster).await?;
            observe_pods(&ctx.client, ctx.pod_admin.as_ref(), cluster, &mut observed).await?;
            observed
        }
    };
    super::nodes::observe_nodes(&ctx.client, cluster, &mut observed).await?;
    let fresh = FreshSecrets::generate();
    let now = now_rfc3339();
    let plan = plan::plan(&PlanInput {
        cluster,
        observed: &observed,
        fresh_secrets: &fresh,
        now: &now,
    })?;

    // Observing and scraping take a while; the Lease may have moved on.
    if !ctx.is_leader() {
        ctx.metrics.leader.set(0);
        tracing::info!(cluster = %name, %namespace, "lost the lead before writing; nothing written");
        return Ok(Action::requeue(FOLLOWER_POLL));
    }

    // Drains before any scale-down lands; each pod action stands alone.
    let now_time = plan::parse_now(&now)?;
    let mut failures = run_pod_actions(
        &ctx.client,
        ctx.pod_admin.as_ref(),
        cluster,
        &observed,
        &plan.actions,
        now_time,
    )
    .await?;
    for action in &plan.actions {
        if matches!(action, PlanAction::Drain { .. }) {
            ctx.metrics.pod_drains.inc();
        }
    }
    failures.extend(apply_plan(ctx, cluster, &namespace, &plan).await);
    for failure in &failures {
        ctx.metrics.observe_error(match failure.write {
            FailedWrite::Apply | FailedWrite::Delete => "apply",
            FailedWrite::Drain | FailedWrite::DeletePod => "pod_action",
        });
    }

    let mut status = plan.status.clone();
    let mut events = plan.events.clone();
    events.extend(plan::report_write_failures(
        &mut status,
        cluster.status.as_ref(),
        &failures,
        &now,
    ));
    if cluster.status.as_ref() != Some(&status) {
        let clusters: Api<VideoChatCluster> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": VideoChatCluster::api_version(&()),
            "kind": VideoChatCluster::kind(&()),
            "status": status,
        });
        let patch = Patch::Apply(&patch);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        with_conflict_retry(&format!("writing status of {namespace}/{name}"), || {
            clusters.patch_status(&name, &params, &patch)
        })
        .await?;
    }

    let reference = cluster.object_ref(&());
    for planned in &events {
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
        tracing::info!(cluster = %name, %namespace, type_ = %planned.type_, reason = %planned.reason, note = %planned.note, "event");
        // An event that cannot be written is not worth failing the reconcile.
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(cluster = %name, %namespace, %error, "cannot publish event");
        }
    }

    let progressing = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "True")
        || plan::needs_prompt_recheck(&status)
        || !failures.is_empty();
    let mut requeue = if progressing { PROGRESS_POLL } else { RESYNC };
    // The autoscaler needs fresh load figures at its metrics interval.
    let autoscaling = &cluster.spec.autoscaling;
    if autoscaling.enabled {
        let interval = u64::try_from(autoscaling.metrics_interval_seconds)
            .unwrap_or(15)
            .max(1);
        requeue = requeue.min(Duration::from_secs(interval));
    }
    // A decision due at a known time (a secret rotation) is made on time.
    if let Some(seconds) = plan.recheck_after_seconds {
        requeue = requeue.min(Duration::from_secs(
            u64::try_from(seconds).unwrap_or(1).max(1),
        ));
    }
    Ok(Action::requeue(requeue))
}

/// Applies and deletes the plan's objects. Every write is tried: a refused
/// one (an immutable field, an admission webhook, a quota) is logged and
/// returned, and the others go ahead.
async fn apply_plan(
    ctx: &Context,
    cluster: &VideoChatCluster,
    namespace: &str,
    plan: &plan::Plan,
) -> Vec<WriteFailure> {
    let name = cluster.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut failures = Vec::new();
    for action in &plan.actions {
        match action {
            PlanAction::Apply {
                api_version,
                kind,
                name: child,
                change,
            } => {
                let Some(object) = plan.objects.iter().find(|o| {
                    crate::objects::type_of(o).1 == *kind
                        && o.metadata.name.as_deref() == Some(child)
                }) else {
                    continue;
                };
                let (group, version) = split_api_version(api_version);
                let resource = api_resource(group, version, kind);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), namespace, &resource);
                let patch = Patch::Apply(object);
                let result =
                    with_conflict_retry(&format!("applying {kind} {namespace}/{child}"), || {
                        api.patch(child, &params, &patch)
                    })
                    .await;
                match result {
                    Ok(_) => {
                        tracing::info!(cluster = %name, %namespace, %kind, object = %child, ?change, "applied");
                    }
                    Err(error) => {
                        tracing::warn!(cluster = %name, %namespace, %kind, object = %child, %error, "apply failed");
                        failures.push(WriteFailure {
                            write: FailedWrite::Apply,
                            object: format!("{kind}/{child}"),
                            message: api_message(&error),
                        });
                    }
                }
            }
            PlanAction::Delete {
                api_version,
                kind,
                name: child,
            } => {
                let (group, version) = split_api_version(api_version);
                let resource = api_resource(group, version, kind);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), namespace, &resource);
                let delete = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match api.delete(child, &delete).await {
                    Ok(_) => {
                        tracing::info!(cluster = %name, %namespace, %kind, object = %child, "pruned");
                    }
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => {
                        tracing::warn!(cluster = %name, %namespace, %kind, object = %child, %error, "delete failed");
                        failures.push(WriteFailure {
                            write: FailedWrite::Delete,
                            object: format!("{kind}/{child}"),
                            message: error.to_string(),
                        });
                    }
                }
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
            // Carried out before the applies (run_pod_actions).
            PlanAction::Drain { .. } | PlanAction::DeletePod { .. } => {}
        }
    }
    failures
}

/// The API's own message for a refused write (what a user reads in
/// `kubectl describe`), else the error.
fn api_message(error: &Error) -> String {
    match error {
        Error::Kube {
            source: kube::Error::Api(status),
            ..
        } => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// What about a VideoChatCluster wakes its reconcile: its spec
/// (generation), labels and annotations, and the start of its deletion. Not
/// its status: the operator writes that itself, and a write that woke the
/// next reconcile would make every status change a loop.
pub fn cluster_trigger(cluster: &VideoChatCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    cluster.metadata.generation.hash(&mut hasher);
    cluster.metadata.labels.hash(&mut hasher);
    cluster.metadata.annotations.hash(&mut hasher);
    cluster
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    Some(hasher.finish())
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
    let pods_config = watcher::Config::default()
        .labels(&format!("{}={}", labels::NAME, labels::APP_NAME))
        .any_semantic();
    // One watch per kind fills the cache the reconciler reads and, for the
    // owned kinds, wakes the owner's reconcile.
    let (secrets, secret_events) = reflect(owned::<Secret>(&client, &namespace), children.clone());
    let (config_maps, config_map_events) =
        reflect(owned::<ConfigMap>(&client, &namespace), children.clone());
    let (services, service_events) =
        reflect(owned::<Service>(&client, &namespace), children.clone());
    let (deployments, deployment_events) =
        reflect(owned::<Deployment>(&client, &namespace), children.clone());
    let (stateful_sets, stateful_set_events) =
        reflect(owned::<StatefulSet>(&client, &namespace), children.clone());
    let (ingresses, ingress_events) =
        reflect(owned::<Ingress>(&client, &namespace), children.clone());
    let (network_policies, network_policy_events) = reflect(
        owned::<NetworkPolicy>(&client, &namespace),
        children.clone(),
    );
    let (pod_disruption_budgets, pdb_events) = reflect(
        owned::<PodDisruptionBudget>(&client, &namespace),
        children.clone(),
    );
    let (controller_revisions, revision_events) = reflect(
        owned::<ControllerRevision>(&client, &namespace),
        children.clone(),
    );
    // Pods are the ReplicaSets' and StatefulSets' children, not the
    // resource's: they fill the cache and wake nothing (their workload's
    // status changes do).
    let (pods, pod_events) = reflect(owned::<Pod>(&client, &namespace), pods_config);
    let pod_watch = tokio::spawn(pod_events.for_each(|_| async {}));
    let caches = ChildCaches {
        secrets,
        config_maps,
        services,
        deployments,
        stateful_sets,
        ingresses,
        network_policies,
        pod_disruption_budgets,
        controller_revisions,
        pods,
    };

    let mut context = Context::new(client.clone(), metrics, instance).with_caches(caches);
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
    let (cluster_store, cluster_writer) = kube::runtime::reflector::store();
    let cluster_events = watcher(clusters, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(cluster_writer)
        .applied_objects()
        .predicate_filter(cluster_trigger, Default::default());
    Controller::for_stream(cluster_events, cluster_store)
        .owns_stream(deployment_events)
        .owns_stream(stateful_set_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(secret_events)
        .owns_stream(ingress_events)
        .owns_stream(network_policy_events)
        .owns_stream(pdb_events)
        .owns_stream(revision_events)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile loop error"),
            }
        })
        .await;
    pod_watch.abort();
    ready.store(false, Ordering::Relaxed);
    if let Some((stop, task)) = elector {
        // Release the Lease so the other replica takes over at once.
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(())
}
