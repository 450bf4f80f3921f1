//! An in-memory Kubernetes API server for controller I/O tests.
//!
//! A `tower::Service` that `kube::Client::new` accepts. It stores objects
//! by group/version/resource/namespace/name and answers GET, LIST (with
//! equality label selectors), POST, PUT (with the resourceVersion
//! precondition), server-side-apply PATCH (the applied object is stored as
//! is: no field merging), merge PATCH, status PATCH and DELETE. `resourceVersion` and `generation` are bumped as the real server
//! does. Every request is recorded, and a write can be made to fail once
//! with 409 Conflict. Watches are not supported: tests call the reconciler
//! directly.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// One request as the double saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Option<Value>,
}

impl RecordedRequest {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct State {
    /// key: "group/version/plural/namespace/name" (group empty for core).
    objects: BTreeMap<String, Value>,
    resource_version: u64,
    uid: u64,
    requests: Vec<RecordedRequest>,
    /// Object keys whose next write answers 409 Conflict.
    conflicts: BTreeMap<String, u32>,
    /// Resource plurals the server does not know (a CRD not installed).
    unknown_resources: std::collections::BTreeSet<String>,
    /// Object keys whose every write is refused: (code, reason, message).
    refusals: BTreeMap<String, (u16, String, String)>,
}

/// The in-memory API. Clones share state.
#[derive(Clone, Default)]
pub struct ApiDouble {
    state: Arc<Mutex<State>>,
}

/// Where a request points.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn prefix(&self) -> String {
        format!(
            "{}/{}/{}/{}/",
            self.group,
            self.version,
            self.plural,
            self.namespace.as_deref().unwrap_or("")
        )
    }
    fn key(&self) -> Option<String> {
        Some(format!("{}{}", self.prefix(), self.name.as_ref()?))
    }
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match *segments.first()? {
        "api" => (String::new(), segments.get(1)?.to_string(), &segments[2..]),
        "apis" => (
            segments.get(1)?.to_string(),
            segments.get(2)?.to_string(),
            &segments[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Target {
        group,
        version,
        plural: rest.first()?.to_string(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

/// Lower-case plural of a kind, as the API paths spell it.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with("policy") {
        format!("{}ies", &lower[..lower.len() - 1])
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    respond(code, &body)
}

fn not_found(target: &Target) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            target.plural,
            target.name.as_deref().unwrap_or_default()
        ),
    )
}

/// The answer to a write whose object changed in the meantime.
fn conflict(target: &Target) -> Response<Body> {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}: the object has been modified",
            target.plural
        ),
    )
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn label_selector_matches(object: &Value, selector: &str) -> bool {
    let labels = object.pointer("/metadata/labels");
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (key, value) = term.split_once('=').unwrap_or((term, ""));
        let value = value.trim_start_matches('=');
        labels
            .and_then(|l| l.get(key))
            .and_then(|v| v.as_str())
            .is_some_and(|v| v == value)
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// `metadata.generation`, 1 when absent.
fn generation_of(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(|g| g.as_i64())
        .unwrap_or(1)
}

/// The parts of an object whose change bumps `metadata.generation`.
fn spec_like(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

impl ApiDouble {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `kube::Client` talking to this double.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn key_for(api_version: &str, kind: &str, namespace: &str, name: &str) -> String {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        format!("{group}/{version}/{}/{namespace}/{name}", plural(kind))
    }

    /// Stores an object as if it had been created (uid, resourceVersion,
    /// generation and creationTimestamp filled in) and returns it.
    pub fn insert(&self, mut object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let mut state = self.lock();
        Self::stamp_new(&mut state, &mut object);
        state.objects.insert(
            Self::key_for(&api_version, &kind, &namespace, &name),
            object.clone(),
        );
        object
    }

    fn stamp_new(state: &mut State, object: &mut Value) {
        state.resource_version += 1;
        state.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", state.uid);
        let rv = state.resource_version.to_string();
        if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.entry("uid").or_insert(Value::String(uid));
            meta.insert("resourceVersion".into(), Value::String(rv));
            meta.entry("generation").or_insert(json!(1));
            meta.entry("creationTimestamp")
                .or_insert(Value::String("2026-01-01T00:00:00Z".into()));
        }
    }

    /// Stores a changed object under the next resourceVersion and answers with it.
    fn store_update(state: &mut State, key: String, mut object: Value) -> Response<Body> {
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = Value::String(state.resource_version.to_string());
        state.objects.insert(key, object.clone());
        respond(StatusCode::OK, &object)
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&Self::key_for(api_version, kind, namespace, name))
            .cloned()
    }

    /// Every stored object of a kind (any namespace).
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let prefix = format!("{group}/{version}/{}/", plural(kind));
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Deletes an object, as the garbage collector would; true when it existed.
    pub fn remove(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.lock()
            .objects
            .remove(&Self::key_for(api_version, kind, namespace, name))
            .is_some()
    }

    /// Every stored object.
    pub fn all(&self) -> Vec<Value> {
        self.lock().objects.values().cloned().collect()
    }

    /// Replaces an object's status, as another controller (the Deployment
    /// controller, the load-balancer controller) would.
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> bool {
        let mut state = self.lock();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        match state
            .objects
            .get_mut(&Self::key_for(api_version, kind, namespace, name))
        {
            Some(object) => {
                object["status"] = status;
                object["metadata"]["resourceVersion"] = Value::String(rv);
                true
            }
            None => false,
        }
    }

    /// The next write to this object answers 409 Conflict (`times` times).
    pub fn conflict_on_next_write(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        times: u32,
    ) {
        self.lock()
            .conflicts
            .insert(Self::key_for(api_version, kind, namespace, name), times);
    }

    /// Every write to this object is refused with `code` (e.g. 422
    /// Invalid for a change to an immutable field), as an API server or an
    /// admission webhook would, until [`Self::accept_writes`].
    pub fn refuse_writes(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        code: u16,
        message: &str,
    ) {
        let reason = if code == 422 { "Invalid" } else { "Forbidden" };
        self.lock().refusals.insert(
            Self::key_for(api_version, kind, namespace, name),
            (code, reason.to_string(), message.to_string()),
        );
    }

    /// Makes every request for this resource (e.g. `videochatclusters`)
    /// answer 404, as a server without the CRD does.
    pub fn forget_resource(&self, plural: &str) {
        self.lock().unknown_resources.insert(plural.to_string());
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    fn handle(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Response<Body> {
        let mut state = self.lock();
        state.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            content_type: content_type.to_string(),
            body: body.clone(),
        });
        let Some(target) = parse_path(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route for {path}"),
            );
        };
        if state.unknown_resources.contains(&target.plural) {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    target.plural
                ),
            );
        }
        let key = target.key();

        if method != Method::GET
            && let Some(key) = &key
            && let Some(left) = state.conflicts.get_mut(key)
            && *left > 0
        {
            *left -= 1;
            return conflict(&target);
        }

        if method != Method::GET
            && let Some(key) = &key
            && let Some((code, reason, message)) = state.refusals.get(key).cloned()
        {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            return status(code, &reason, message);
        }

        match (method, key) {
            (Method::GET, None) => {
                let prefix = target.prefix();
                let all_namespaces = target.namespace.is_none();
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let group_version =
                    format!("{}/{}/{}/", target.group, target.version, target.plural);
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        if all_namespaces {
                            k.starts_with(&group_version)
                        } else {
                            k.starts_with(&prefix)
                        }
                    })
                    .map(|(_, v)| v)
                    .filter(|v| label_selector_matches(v, &selector))
                    .cloned()
                    .collect();
                let body = json!({
                    "apiVersion": if target.group.is_empty() { target.version.clone() } else { format!("{}/{}", target.group, target.version) },
                    "kind": "List",
                    "metadata": {"resourceVersion": state.resource_version.to_string()},
                    "items": items,
                });
                respond(StatusCode::OK, &body)
            }
            (Method::GET, Some(key)) => match state.objects.get(&key) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(&target),
            },
            (Method::POST, _) => {
                let Some(mut object) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "empty body".into());
                };
                let name = match object.pointer("/metadata/name").and_then(|v| v.as_str()) {
                    Some(name) => name.to_string(),
                    None => {
                        let base = object
                            .pointer("/metadata/generateName")
                            .and_then(|v| v.as_str())
                            .unwrap_or("object-")
                            .to_string();
                        let name = format!("{base}{}", state.uid + 1);
                        object["metadata"]["name"] = Value::String(name.clone());
                        name
                    }
                };
                if let Some(ns) = &target.namespace {
                    object["metadata"]["namespace"] = Value::String(ns.clone());
                }
                let key = format!("{}{}", target.prefix(), name);
                if state.objects.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", target.plural),
                    );
                }
                Self::stamp_new(&mut state, &mut object);
                state.objects.insert(key, object.clone());
                respond(StatusCode::CREATED, &object)
            }
            (Method::PATCH, Some(key)) => {
                let Some(patch) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "empty patch".into());
                };
                let is_apply = content_type.starts_with("application/apply-patch");
                let on_status = target.subresource.as_deref() == Some("status");
                let existing = state.objects.get(&key).cloned();
                let mut object = match (existing, on_status, is_apply) {
                    (None, true, _) | (None, false, false) => {
                        return not_found(&target);
                    }
                    (None, false, true) => {
                        let mut object = patch.clone();
                        object.as_object_mut().map(|m| m.remove("status"));
                        if let Some(ns) = &target.namespace {
                            object["metadata"]["namespace"] = Value::String(ns.clone());
                        }
                        Self::stamp_new(&mut state, &mut object);
                        state.objects.insert(key, object.clone());
                        return respond(StatusCode::CREATED, &object);
                    }
                    (Some(existing), _, _) => existing,
                };
                if on_status {
                    if is_apply {
                        object["status"] = patch.get("status").cloned().unwrap_or(Value::Null);
                    } else if let Some(status_patch) = patch.get("status") {
                        merge_patch(&mut object["status"], status_patch);
                    }
                } else {
                    let before = spec_like(&object);
                    let keep_status = object.get("status").cloned();
                    let keep_meta = object["metadata"].clone();
                    if is_apply {
                        object = patch.clone();
                    } else {
                        merge_patch(&mut object, &patch);
                    }
                    for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                        if let Some(value) = keep_meta.get(field) {
                            object["metadata"][field] = value.clone();
                        }
                    }
                    match keep_status {
                        Some(s) => object["status"] = s,
                        None => {
                            object.as_object_mut().map(|m| m.remove("status"));
                        }
                    }
                    if spec_like(&object) != before {
                        object["metadata"]["generation"] = json!(generation_of(&object) + 1);
                    }
                }
                Self::store_update(&mut state, key, object)
            }
            (Method::PUT, Some(key)) => {
                // Replace, with the real server's optimistic concurrency: a
                // resourceVersion in the body must match the stored one.
                let Some(mut object) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "empty body".into());
                };
                let Some(existing) = state.objects.get(&key).cloned() else {
                    return not_found(&target);
                };
                let given = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let stored = existing
                    .pointer("/metadata/resourceVersion")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                if given.is_some() && given != stored {
                    return conflict(&target);
                }
                for field in ["uid", "creationTimestamp", "generation", "namespace"] {
                    if let Some(value) = existing["metadata"].get(field) {
                        object["metadata"][field] = value.clone();
                    }
                }
                if spec_like(&object) != spec_like(&existing) {
                    object["metadata"]["generation"] = json!(generation_of(&existing) + 1);
                }
                Self::store_update(&mut state, key, object)
            }
            (Method::DELETE, Some(key)) => match state.objects.remove(&key) {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(&target),
            },
            (method, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path} is not supported by the API double"),
            ),
        }
    }
}

impl tower::Service<Request<Body>> for ApiDouble {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let double = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body = if bytes.is_empty() {
                None
            } else {
                serde_json::from_slice(&bytes).ok()
            };
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let query = parts.uri.query().unwrap_or("").to_string();
            Ok(double.handle(parts.method, parts.uri.path(), &query, &content_type, body))
        })
    }
}
