//! The object store behind the API: one global resourceVersion counter,
//! an event log for watches, field ownership for server-side apply, the
//! status subresource, generation, finalizers and deletion.

use crate::admission::{self, CustomSchema};
use crate::error::{Result, SimError};
use crate::fields::{self, Ownership};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// Watch events kept for clients that resume from a resourceVersion; older
/// ones answer 410 Gone, as after etcd compaction.
const LOG_CAPACITY: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watches see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: ChangeKind,
    pub object: Value,
    /// The object before a modification (for selector transitions).
    pub old: Option<Value>,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

struct Stored {
    object: Value,
    ownership: Ownership,
}

struct Inner {
    objects: BTreeMap<Key, Stored>,
    rv: u64,
    log: VecDeque<Arc<Change>>,
    next_uid: u64,
    next_cluster_ip: u32,
}

/// Who applies, whether they take fields from other managers, and where.
#[derive(Clone, Copy, Debug)]
pub struct Applier<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub part: Part,
}

/// Kept changes after a resourceVersion, and the stream of those to come.
pub type ReplayAndLive = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// How a delete treats dependents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The store. Shared by the HTTP API and the in-process controllers.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    types: Vec<ResourceType>,
    custom: Vec<CustomSchema>,
    /// Set while a kubelet runs: deleting a scheduled pod then marks it
    /// terminating and the kubelet removes it after its process stops.
    pub graceful_pods: AtomicBool,
    /// The cluster network's index when pods run (0 without): load
    /// balancers get addresses in 10.210.<index>.0/24, which it routes.
    pub address_block: std::sync::atomic::AtomicU8,
}

pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn rv_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

/// Everything but metadata and status: what `generation` counts.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

fn without_rv(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    copy
}

fn finalizers_empty(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

fn owner_key(manager: &str, part: Part) -> String {
    match part {
        Part::Main => manager.to_owned(),
        Part::Status => format!("{manager}/status"),
    }
}

impl Store {
    pub fn new(types: Vec<ResourceType>, custom: Vec<CustomSchema>) -> Arc<Self> {
        let (changes, _) = broadcast::channel(8192);
        Arc::new(Self {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 1000,
                log: VecDeque::new(),
                next_uid: 1,
                next_cluster_ip: 10,
            }),
            changes,
            types,
            custom,
            graceful_pods: AtomicBool::new(false),
            address_block: std::sync::atomic::AtomicU8::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // write is applied whole), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type for an API group and plural.
    pub fn resource(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    /// The type for a kind, as owner references and kubectl name them.
    pub fn resource_for_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    fn custom_schema(&self, resource: &ResourceType) -> Option<&CustomSchema> {
        self.custom.iter().find(|c| c.resource == *resource)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    fn key(resource: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
        Key {
            group: resource.group.clone(),
            plural: resource.plural.clone(),
            namespace: if resource.namespaced {
                namespace.unwrap_or("default").to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    pub fn get(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let inner = self.lock();
        inner
            .objects
            .get(&Self::key(resource, namespace, name))
            .map(|s| s.object.clone())
            .ok_or_else(|| SimError::not_found(&what(resource), name))
    }

    /// Objects of a type (in a namespace, or all), filtered; and the
    /// resourceVersion the list is consistent at.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| {
                k.group == resource.group
                    && k.plural == resource.plural
                    && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, s)| &s.object)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .cloned()
            .collect();
        (items, inner.rv)
    }

    /// Every stored object of a type across namespaces (for controllers).
    pub fn all(&self, resource: &ResourceType) -> Vec<Value> {
        self.list(
            resource,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .0
    }

    fn record(&self, inner: &mut Inner, change: Change) {
        let change = Arc::new(change);
        inner.log.push_back(change.clone());
        while inner.log.len() > LOG_CAPACITY {
            inner.log.pop_front();
        }
        // No receivers is fine: nobody watches yet.
        let _ = self.changes.send(change);
    }

    /// Creates an object; `manager` owns every field it set.
    pub fn create(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
        manager: &str,
    ) -> Result<Value> {
        let mut inner = self.lock();
        if !object.is_object() {
            return Err(SimError::bad_request("the body must be an object".into()));
        }
        let generate = object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if name_of(&object).is_empty() {
            match generate {
                Some(prefix) => {
                    let suffix: String = (0..5)
                        .map(|_| {
                            let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                            alphabet[rand::random::<usize>() % alphabet.len()] as char
                        })
                        .collect();
                    object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(SimError::invalid(format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        what(resource)
                    )));
                }
            }
        }
        let name = name_of(&object).to_owned();
        let key = Self::key(resource, namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(SimError::already_exists(&what(resource), &name));
        }
        if resource.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        if let Some(custom) = self.custom_schema(resource) {
            object = admission::admit_custom(custom, &object, None)?;
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let ownership = {
            let mut o = Ownership::new();
            let leaves = fields::leaves(&object);
            if !leaves.is_empty() {
                o.insert(manager.to_owned(), leaves);
            }
            o
        };
        inner.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", inner.next_uid);
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_rfc3339());
        if resource.namespaced {
            meta["namespace"] = json!(key.namespace);
        }
        if resource.status_subresource {
            meta["generation"] = json!(1);
        }
        self.server_defaults(&mut inner, resource, &mut object);
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                ownership,
            },
        );
        self.record(
            &mut inner,
            Change {
                rv,
                group: key.group,
                plural: key.plural,
                namespace: key.namespace,
                kind: ChangeKind::Added,
                object: object.clone(),
                old: None,
            },
        );
        Ok(object)
    }

    /// Fields the server fills on create.
    fn server_defaults(&self, inner: &mut Inner, resource: &ResourceType, object: &mut Value) {
        match (resource.group.as_str(), resource.kind.as_str()) {
            ("", "Service") => {
                let headless =
                    object.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
                let set = object
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .is_some_and(|ip| !ip.is_empty());
                if !headless && !set {
                    inner.next_cluster_ip += 1;
                    let n = inner.next_cluster_ip;
                    let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
                    object["spec"]["clusterIP"] = json!(ip);
                    object["spec"]["clusterIPs"] = json!([ip]);
                }
                if object.pointer("/spec/type").is_none() {
                    object["spec"]["type"] = json!("ClusterIP");
                }
            }
            ("", "Pod") => {
                object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
            _ => {}
        }
    }

    /// The common end of every write to an existing object.
    fn commit(
        &self,
        inner: &mut Inner,
        resource: &ResourceType,
        key: &Key,
        mut object: Value,
        ownership: Ownership,
    ) -> Result<Value> {
        let Some(stored) = inner.objects.get(key) else {
            return Err(SimError::not_found(&what(resource), &key.name));
        };
        let old = stored.object.clone();
        if let Some(custom) = self.custom_schema(resource) {
            object = admission::admit_custom(custom, &object, Some(&old))?;
        } else {
            admission::check_immutable(resource, &key.name, &old, &object)?;
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        // Server-owned metadata stays as stored.
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(value) => object["metadata"][field] = value.clone(),
                None => {
                    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove(field);
                    }
                }
            }
        }
        if resource.status_subresource && spec_part(&old) != spec_part(&object) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        object["metadata"]["resourceVersion"] = old
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        if without_rv(&object) == without_rv(&old) {
            // A no-op write changes nothing and wakes no watch.
            if let Some(stored) = inner.objects.get_mut(key) {
                stored.ownership = ownership;
            }
            return Ok(old);
        }
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let terminating = object.pointer("/metadata/deletionTimestamp").is_some();
        if terminating && finalizers_empty(&object) && !self.awaits_kubelet(resource, &object) {
            inner.objects.remove(key);
            self.record(
                inner,
                Change {
                    rv,
                    group: key.group.clone(),
                    plural: key.plural.clone(),
                    namespace: key.namespace.clone(),
                    kind: ChangeKind::Deleted,
                    object: object.clone(),
                    old: Some(old),
                },
            );
            return Ok(object);
        }
        inner.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                ownership,
            },
        );
        self.record(
            inner,
            Change {
                rv,
                group: key.group.clone(),
                plural: key.plural.clone(),
                namespace: key.namespace.clone(),
                kind: ChangeKind::Modified,
                object: object.clone(),
                old: Some(old),
            },
        );
        Ok(object)
    }

    /// A scheduled pod stays, terminating, until its kubelet removes it.
    fn awaits_kubelet(&self, resource: &ResourceType, object: &Value) -> bool {
        resource.group.is_empty()
            && resource.kind == "Pod"
            && self.graceful_pods.load(Ordering::Relaxed)
            && object.pointer("/spec/nodeName").is_some()
            && object
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
                > 0
    }

    fn check_precondition(old: &Value, new: &Value, resource: &ResourceType) -> Result<()> {
        if let Some(wanted) = rv_of(new)
            && Some(wanted) != rv_of(old)
        {
            return Err(SimError::conflict(format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                resource_name(resource),
                name_of(old)
            )));
        }
        Ok(())
    }

    /// PUT: replaces the main part or the status, with the resourceVersion
    /// precondition when the body carries one.
    pub fn replace(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        object: Value,
        manager: &str,
        part: Part,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let key = Self::key(resource, namespace, name);
        let stored = inner
            .objects
            .get(&key)
            .ok_or_else(|| SimError::not_found(&what(resource), name))?;
        Self::check_precondition(&stored.object, &object, resource)?;
        let merged = Self::take_part(resource, &stored.object, object, part);
        let ownership = fields::after_update(
            &stored.object,
            &merged,
            &stored.ownership,
            &owner_key(manager, part),
        );
        self.commit(&mut inner, resource, &key, merged, ownership)
    }

    /// The stored object with only `part` taken from `new`.
    fn take_part(resource: &ResourceType, old: &Value, mut new: Value, part: Part) -> Value {
        if !resource.status_subresource {
            return new;
        }
        match part {
            Part::Main => {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                new
            }
            Part::Status => {
                let mut merged = old.clone();
                match new.get_mut("status").map(Value::take) {
                    Some(status) => merged["status"] = status,
                    None => {
                        if let Some(map) = merged.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                merged
            }
        }
    }

    /// JSON merge patch (also used for strategic merge patch).
    pub fn merge_patch(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        manager: &str,
        part: Part,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let key = Self::key(resource, namespace, name);
        let stored = inner
            .objects
            .get(&key)
            .ok_or_else(|| SimError::not_found(&what(resource), name))?;
        Self::check_precondition(&stored.object, patch, resource)?;
        let mut patched = stored.object.clone();
        fields::merge_patch(&mut patched, patch);
        let merged = Self::take_part(resource, &stored.object, patched, part);
        let ownership = fields::after_update(
            &stored.object,
            &merged,
            &stored.ownership,
            &owner_key(manager, part),
        );
        self.commit(&mut inner, resource, &key, merged, ownership)
    }

    /// Server-side apply; creates the object when absent.
    pub fn apply(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        mut applied: Value,
        applier: Applier<'_>,
    ) -> Result<Value> {
        let Applier {
            manager,
            force,
            part,
        } = applier;
        // As the real server: a body without a name takes the URL's.
        if name_of(&applied).is_empty() && applied.is_object() {
            applied["metadata"]["name"] = json!(name);
        }
        if name_of(&applied) != name {
            return Err(SimError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&applied)
            )));
        }
        if resource.status_subresource
            && let Some(map) = applied.as_object_mut()
        {
            match part {
                Part::Main => {
                    map.remove("status");
                }
                Part::Status => {
                    map.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
                }
            }
        }
        let mut inner = self.lock();
        let key = Self::key(resource, namespace, name);
        let Some(stored) = inner.objects.get(&key) else {
            drop(inner);
            if part == Part::Status {
                return Err(SimError::not_found(&what(resource), name));
            }
            return self.create(resource, namespace, applied, manager);
        };
        Self::check_precondition(&stored.object, &applied, resource)?;
        let (merged, ownership) = fields::apply(
            &stored.object,
            &stored.ownership,
            &owner_key(manager, part),
            &applied,
            force,
        )?;
        let merged = Self::take_part(resource, &stored.object, merged, part);
        self.commit(&mut inner, resource, &key, merged, ownership)
    }

    /// Deletes, or marks terminating while finalizers (or a kubelet) hold it.
    pub fn delete(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        propagation: Propagation,
        grace_seconds: Option<i64>,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let key = Self::key(resource, namespace, name);
        let stored = inner
            .objects
            .get(&key)
            .ok_or_else(|| SimError::not_found(&what(resource), name))?;
        let old = stored.object.clone();
        let ownership = stored.ownership.clone();
        let uid = old
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut object = old.clone();
        if propagation == Propagation::Orphan {
            self.orphan_dependents(&mut inner, &uid);
        }
        let already_terminating = old.pointer("/metadata/deletionTimestamp").is_some();
        let grace = grace_seconds.or_else(|| {
            old.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        });
        let is_pod = resource.group.is_empty() && resource.kind == "Pod";
        if is_pod {
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(30));
        }
        let held = !finalizers_empty(&old) || self.awaits_kubelet(resource, &object);
        if held {
            if already_terminating && !(is_pod && grace == Some(0)) {
                return Ok(old);
            }
            object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            // commit keeps stored server metadata; set the fields directly.
            inner.rv += 1;
            let rv = inner.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            if self.awaits_kubelet(resource, &object) || !finalizers_empty(&object) {
                inner.objects.insert(
                    key.clone(),
                    Stored {
                        object: object.clone(),
                        ownership,
                    },
                );
                self.record(
                    &mut inner,
                    Change {
                        rv,
                        group: key.group.clone(),
                        plural: key.plural.clone(),
                        namespace: key.namespace.clone(),
                        kind: ChangeKind::Modified,
                        object: object.clone(),
                        old: Some(old),
                    },
                );
                return Ok(object);
            }
        }
        inner.objects.remove(&key);
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut inner,
            Change {
                rv,
                group: key.group,
                plural: key.plural,
                namespace: key.namespace,
                kind: ChangeKind::Deleted,
                object: object.clone(),
                old: Some(old),
            },
        );
        Ok(object)
    }

    /// Removes a kubelet-held pod once its containers stopped.
    pub fn remove_terminated_pod(&self, resource: &ResourceType, namespace: &str, name: &str) {
        let mut inner = self.lock();
        let key = Self::key(resource, Some(namespace), name);
        let Some(stored) = inner.objects.remove(&key) else {
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        let mut object = stored.object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut inner,
            Change {
                rv,
                group: key.group,
                plural: key.plural,
                namespace: key.namespace,
                kind: ChangeKind::Deleted,
                object,
                old: None,
            },
        );
    }

    fn orphan_dependents(&self, inner: &mut Inner, uid: &str) {
        let keys: Vec<Key> = inner
            .objects
            .iter()
            .filter(|(_, s)| owner_uids(&s.object).iter().any(|u| u == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(stored) = inner.objects.get(&key) else {
                continue;
            };
            let old = stored.object.clone();
            let ownership = stored.ownership.clone();
            let mut object = old.clone();
            if let Some(refs) = object
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            let Some(resource) = self
                .types
                .iter()
                .find(|t| t.group == key.group && t.plural == key.plural)
                .cloned()
            else {
                continue;
            };
            if let Err(error) = self.commit(inner, &resource, &key, object, ownership) {
                tracing::warn!(%error, object = %key.name, "cannot orphan a dependent");
            }
        }
    }

    /// Changes after `since` for a watch, or 410 Gone when they are no
    /// longer kept; plus a receiver for the ones to come (no gap between).
    pub fn changes_since(&self, since: u64) -> Result<ReplayAndLive> {
        let inner = self.lock();
        let receiver = self.changes.subscribe();
        if let Some(oldest) = inner.log.front()
            && since + 1 < oldest.rv
            && inner.log.len() >= LOG_CAPACITY
        {
            return Err(SimError::gone(format!(
                "too old resource version: {since} ({})",
                oldest.rv - 1
            )));
        }
        let replay = inner.log.iter().filter(|c| c.rv > since).cloned().collect();
        Ok((replay, receiver))
    }

    /// Every object's owner uids that no longer exist, for the collector.
    pub fn dangling_dependents(&self) -> Vec<(ResourceType, String, String, Vec<String>, bool)> {
        let inner = self.lock();
        let uids: std::collections::BTreeSet<String> = inner
            .objects
            .values()
            .filter_map(|s| {
                s.object
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        let mut out = Vec::new();
        for (key, stored) in &inner.objects {
            let owners = owner_uids(&stored.object);
            if owners.is_empty() {
                continue;
            }
            let missing: Vec<String> = owners
                .iter()
                .filter(|u| !uids.contains(*u))
                .cloned()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let all_gone = missing.len() == owners.len();
            if let Some(resource) = self
                .types
                .iter()
                .find(|t| t.group == key.group && t.plural == key.plural)
            {
                out.push((
                    resource.clone(),
                    key.namespace.clone(),
                    key.name.clone(),
                    missing,
                    all_gone,
                ));
            }
        }
        out
    }

    /// Drops owner references to `missing` uids (some owners remain).
    pub fn drop_owner_refs(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        missing: &[String],
    ) -> Result<Value> {
        let mut inner = self.lock();
        let key = Self::key(resource, Some(namespace), name);
        let stored = inner
            .objects
            .get(&key)
            .ok_or_else(|| SimError::not_found(&what(resource), name))?;
        let mut object = stored.object.clone();
        let ownership = stored.ownership.clone();
        if let Some(refs) = object
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| {
                r.get("uid")
                    .and_then(Value::as_str)
                    .is_none_or(|u| !missing.iter().any(|m| m == u))
            });
        }
        self.commit(&mut inner, resource, &key, object, ownership)
    }
}

pub fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// "deployments.apps" as the API names a resource in messages.
fn resource_name(resource: &ResourceType) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

fn what(resource: &ResourceType) -> String {
    resource_name(resource)
}
