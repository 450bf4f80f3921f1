//! The HTTP API on loopback: routing, discovery, verbs, watch streams.

use crate::error::{Result, SimError};
use crate::resources::{ResourceType, discovery_entry};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Applier, ChangeKind, Part, Propagation, Store};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

/// One request the API answered, for tests that count writes.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub field_manager: String,
    pub user_agent: String,
    pub code: u16,
}

impl RecordedRequest {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

/// Serves the API on 127.0.0.1 at a free port; returns the address.
pub async fn serve(state: ApiState) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(SimError::Bind)?;
    let address = listener.local_addr().map_err(SimError::Bind)?;
    let app = axum::Router::new().fallback(handle).with_state(state);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "simulated API server stopped");
        }
    });
    Ok((address, task))
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(error: &SimError) -> Response {
    json_response(error.code(), &error.status_body())
}

/// Where a request points.
struct Target {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

async fn handle(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let user_agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    let field_manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
        // As the real server: the user agent's program name.
        user_agent.split('/').next().unwrap_or("unknown").to_owned()
    });
    let response = match route(
        &state,
        &method,
        &path,
        &query,
        &headers,
        &body,
        &field_manager,
    )
    .await
    {
        Ok(response) => response,
        Err(error) => {
            if error.code() >= 500 {
                tracing::error!(%error, %method, %path, "API request failed");
            } else {
                tracing::debug!(%error, %method, %path, "API request refused");
            }
            error_response(&error)
        }
    };
    tracing::trace!(%method, %path, query = uri.query().unwrap_or_default(), code = response.status().as_u16(), %field_manager, "API request");
    if let Ok(mut requests) = state.requests.lock() {
        requests.push(RecordedRequest {
            at: Instant::now(),
            method: method.to_string(),
            path,
            query: uri.query().unwrap_or_default().to_owned(),
            field_manager,
            user_agent,
            code: response.status().as_u16(),
        });
    }
    response
}

fn discovery(state: &ApiState, segments: &[&str]) -> Option<Value> {
    let types = state.store.types();
    match segments {
        ["version"] => Some(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-videochat-sim",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["apis"] => {
            let groups: BTreeSet<(String, String)> = types
                .iter()
                .filter(|t| !t.group.is_empty())
                .map(|t| (t.group.clone(), t.version.clone()))
                .collect();
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(group, version)| {
                    let gv =
                        json!({"groupVersion": format!("{group}/{version}"), "version": version});
                    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["api", "v1"] => Some(resource_list(types, "", "v1")),
        ["apis", group, version] => {
            if types
                .iter()
                .any(|t| t.group == *group && t.version == *version)
            {
                Some(resource_list(types, group, version))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(discovery_entry(t));
        if t.status_subresource {
            resources.push(
                json!({"name": format!("{}/status", t.plural), "singularName": "",
                "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn parse_target(state: &ApiState, segments: &[&str]) -> Result<Option<Target>> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some((*ns).to_owned()), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        other => (None, other.to_vec()),
    };
    let plural = rest[0];
    let Some(resource) = state
        .store
        .types()
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)
    else {
        return Err(SimError::not_found(
            "the server could not find the requested resource",
            plural,
        ));
    };
    Ok(Some(Target {
        resource: resource.clone(),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    }))
}

fn parse_body(body: &Bytes, content_type: &str) -> Result<Value> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(_) if content_type.contains("yaml") => serde_yaml::from_slice(body)
            .map_err(|e| SimError::bad_request(format!("cannot parse the body as YAML: {e}"))),
        Err(json_error) => Err(SimError::bad_request(format!(
            "cannot parse the body as JSON: {json_error}"
        ))),
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty())
}

async fn route(
    state: &ApiState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    manager: &str,
) -> Result<Response> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if method == Method::GET
        && let Some(document) = discovery(state, &segments)
    {
        return Ok(json_response(200, &document));
    }
    let Some(target) = parse_target(state, &segments)? else {
        return Err(SimError::not_found("path", path));
    };
    let store = &state.store;
    let resource = &target.resource;
    let namespace = target.namespace.as_deref();
    let part = match target.subresource.as_deref() {
        None => Part::Main,
        Some("status") if resource.status_subresource => Part::Status,
        Some(other) => {
            return Err(SimError::not_found("subresource", other));
        }
    };
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
            if flag(query, "watch") {
                return watch(state, target, labels, fields, query);
            }
            let (items, rv) = store.list(resource, namespace, &labels, &fields);
            let items: Vec<Value> = items
                .into_iter()
                .map(|mut item| {
                    if resource.is_builtin()
                        && let Some(map) = item.as_object_mut()
                    {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    item
                })
                .collect();
            Ok(json_response(
                200,
                &json!({
                    "apiVersion": resource.api_version(),
                    "kind": format!("{}List", resource.kind),
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                }),
            ))
        }
        (Method::GET, Some(name)) => Ok(json_response(200, &store.get(resource, namespace, name)?)),
        (Method::POST, None) => {
            let object = parse_body(body, &content_type)?;
            let namespace = namespace.or_else(|| {
                object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
            });
            Ok(json_response(
                201,
                &store.create(resource, namespace, object.clone(), manager)?,
            ))
        }
        (Method::PUT, Some(name)) => {
            let object = parse_body(body, &content_type)?;
            Ok(json_response(
                200,
                &store.replace(resource, namespace, name, object, manager, part)?,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let patch = parse_body(body, &content_type)?;
            let object = if content_type.starts_with("application/apply-patch") {
                if !query.contains_key("fieldManager") {
                    return Err(SimError::bad_request(
                        "PATCH: fieldManager is required for apply requests".into(),
                    ));
                }
                store.apply(
                    resource,
                    namespace,
                    name,
                    patch,
                    Applier {
                        manager,
                        force: flag(query, "force"),
                        part,
                    },
                )?
            } else if content_type.starts_with("application/merge-patch")
                || content_type.starts_with("application/strategic-merge-patch")
            {
                store.merge_patch(resource, namespace, name, &patch, manager, part)?
            } else {
                return Err(SimError::unsupported_media(format!(
                    "the simulated API does not support patches of type {content_type}"
                )));
            };
            Ok(json_response(200, &object))
        }
        (Method::DELETE, Some(name)) => {
            let options = parse_body(body, &content_type)?;
            let policy = query
                .get("propagationPolicy")
                .map(String::as_str)
                .or_else(|| options.get("propagationPolicy").and_then(Value::as_str));
            let propagation = match policy {
                Some("Orphan") => Propagation::Orphan,
                Some("Foreground") => Propagation::Foreground,
                _ => Propagation::Background,
            };
            let grace = query
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| options.get("gracePeriodSeconds").and_then(Value::as_i64));
            Ok(json_response(
                200,
                &store.delete(resource, namespace, name, propagation, grace)?,
            ))
        }
        _ => Err(SimError::Api {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported on {path}"),
        }),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    state: &ApiState,
    target: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
) -> Result<Response> {
    let store = state.store.clone();
    let since: Option<u64> = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| SimError::bad_request(format!("invalid resourceVersion {text:?}")))?,
        ),
    };
    let bookmarks = flag(query, "allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let resource = target.resource;
    let namespace = if resource.namespaced {
        target.namespace
    } else {
        None
    };
    let start = since.unwrap_or_else(|| store.current_rv());
    let (replay, mut receiver) = store.changes_since(start)?;
    let mut initial = Vec::new();
    let mut last_rv = start;
    if since.is_none() {
        let (items, rv) = store.list(&resource, namespace.as_deref(), &labels, &fields);
        for item in items {
            initial.push(event_line("ADDED", &item));
        }
        last_rv = rv;
    }
    let matches = {
        let resource = resource.clone();
        let namespace = namespace.clone();
        move |change: &crate::store::Change| -> Option<Bytes> {
            if change.group != resource.group || change.plural != resource.plural {
                return None;
            }
            if namespace.as_ref().is_some_and(|ns| *ns != change.namespace) {
                return None;
            }
            let now = labels.matches(&change.object) && fields.matches(&change.object);
            let before = change
                .old
                .as_ref()
                .is_some_and(|o| labels.matches(o) && fields.matches(o));
            let kind = match (change.kind, before, now) {
                (ChangeKind::Added, _, true) => "ADDED",
                (ChangeKind::Modified, true, true) => "MODIFIED",
                (ChangeKind::Modified, false, true) => "ADDED",
                (ChangeKind::Modified, true, false) => "DELETED",
                (ChangeKind::Deleted, _, true) => "DELETED",
                (ChangeKind::Deleted, true, false) => "DELETED",
                _ => return None,
            };
            Some(event_line(kind, &change.object))
        }
    };
    let (sender, mut lines) = mpsc::channel::<Bytes>(256);
    let api_version = resource.api_version();
    let kind = resource.kind.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        for line in initial {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        for change in replay {
            if change.rv <= last_rv {
                continue;
            }
            last_rv = change.rv;
            if let Some(line) = matches(&change)
                && sender.send(line).await.is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({"apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if sender.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                received = receiver.recv() => match received {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some(line) = matches(&change)
                            && sender.send(line).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow to keep up is ended; the client
                    // resumes from its last resourceVersion.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        lines
            .poll_recv(cx)
            .map(|l| l.map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| json_response(500, &json!({}))))
}
