//! The HTTP surface: `fn app(state) -> Router` with REST, `/ws`, probes,
//! metrics, admin calls and the embedded demo page.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Claims;
use crate::connection;
use crate::error::SignalingError;
use crate::history::history_page;
use crate::ids::random_id;
use crate::protocol::{MAX_NAME_LEN, check_chat_body, check_name};
use crate::sessions::constant_time_eq;
use crate::state::{AppState, ConnectionRefused};
use crate::store::{NewChat, RoomRecord};
use crate::time::now_rfc3339;
use crate::turn_identity;
use crate::web;

/// A REST error: `{"error":{"code","message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<SignalingError> for ApiError {
    fn from(e: SignalingError) -> Self {
        match e {
            SignalingError::RoomExists(id) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("room `{id}` already exists"),
            ),
            SignalingError::StoreUnavailable(_) | SignalingError::BusUnavailable(_) => {
                tracing::warn!(error = %e, "backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage is unavailable; retry",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose rejections are our JSON errors (400, 408, 413, 415).
/// Only `application/json` is read: a cross-site form or `text/plain` post
/// (which a browser sends without asking) is refused before any effect.
pub struct JsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                "the body must be JSON with Content-Type: application/json",
            ));
        }
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(state.config.body_timeout, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request body did not arrive in time",
                )
            })?
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "request body is over the size limit",
                    )
                } else {
                    ApiError::bad_request(e.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The client's IP: through trusted proxies, the one they name (see
/// [`crate::client_address`]); else the peer's; unspecified when served
/// without connect info, as in `oneshot` tests.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let resolved = parts
            .extensions
            .get::<crate::http_server::ClientAddress>()
            .map(|c| c.0);
        Ok(ClientIp(resolved.unwrap_or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        })))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// With room tokens on, REST calls need one (as a bearer token).
fn require_token(state: &AppState, headers: &HeaderMap) -> Result<Option<Claims>, ApiError> {
    let Some(verifier) = &state.auth else {
        return Ok(None);
    };
    let token = bearer(headers).unwrap_or_default();
    verifier
        .verify(token)
        .map(Some)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// With room tokens on, a call that reads or writes `room` needs a
/// token that admits to it.
fn require_room_token(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
) -> Result<Option<Claims>, ApiError> {
    let claims = require_token(state, headers)?;
    if let Some(c) = &claims
        && !c.allows_room(room)
    {
        return Err(ApiError::unauthorized(
            "the token does not admit to this room",
        ));
    }
    Ok(claims)
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::unauthorized(
            "admin calls are disabled: no --admin-token-file",
        ));
    };
    match bearer(headers) {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized(
            "admin bearer token missing or wrong",
        )),
    }
}

fn origin_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}invalid"))
}

/// Every state-changing call (anything but GET, HEAD and OPTIONS) passes the
/// Origin allow-list, as WebSocket upgrades do: a page on another site cannot
/// post into a room even where CORS would only hide the answer.
async fn check_origin_of_writes(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !state.origins.allows(origin_of(req.headers())) {
        let origin = origin_of(req.headers()).unwrap_or("");
        state.metrics.refused("origin");
        tracing::info!(%ip, origin, path = req.uri().path(), "write refused: origin not allowed");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "origin not allowed")
            .into_response();
    }
    next.run(req).await
}

pub fn app(state: AppState) -> Router {
    let cors = cors_layer(&state);
    let body_limit = axum::extract::DefaultBodyLimit::max(state.config.max_body_bytes);
    let api = Router::new()
        .route("/api/rooms", post(create_room))
        .route("/api/rooms/{id}", get(get_room))
        .route("/api/messages", post(post_message).get(list_messages))
        .route("/api/ice-servers", get(ice_servers))
        .layer(cors);
    Router::new()
        .merge(api)
        .route("/ws", get(ws_upgrade))
        .route("/api/admin/dead-letters", get(list_dead_letters))
        .route(
            "/api/admin/dead-letters/{id}/retry",
            post(retry_dead_letter),
        )
        .route("/api/admin/drain", post(drain))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(get(web::serve))
        .layer(body_limit)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_origin_of_writes,
        ))
        .with_state(state)
}

fn cors_layer(state: &AppState) -> CorsLayer {
    let origin = if state.config.allowed_origins.iter().any(|a| a == "*") {
        AllowOrigin::any()
    } else {
        let policy = state.origins.clone();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| policy.allows(Some(o)))
        })
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .max_age(Duration::from_secs(600))
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !state.origins.allows(origin_of(&headers)) {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("");
        state.metrics.refused("origin");
        tracing::info!(%ip, origin, "websocket refused: origin not allowed");
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "origin not allowed")
            .into_response();
    }
    if state.is_draining() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "draining; connect to another instance",
        )
        .into_response();
    }
    if !state.connect_limiter.try_take(ip) {
        state.metrics.refused("connect_rate");
        tracing::debug!(%ip, "websocket refused: connection rate per address");
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this address opens connections too fast; slow down",
        )
        .into_response();
    }
    let guard = match state.try_open_connection(ip) {
        Ok(guard) => guard,
        Err(ConnectionRefused::InstanceFull) => {
            state.metrics.refused("connections");
            tracing::warn!(%ip, "websocket refused: connection limit");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "connection limit reached",
            )
            .into_response();
        }
        Err(ConnectionRefused::AddressFull) => {
            state.metrics.refused("connections_per_ip");
            tracing::info!(%ip, limit = state.config.max_connections_per_ip, "websocket refused: connections per address");
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this address holds {} connections, the limit per address",
                    state.config.max_connections_per_ip
                ),
            )
            .into_response();
        }
    };
    // tungstenite's own cap sits above ours so that we can answer `too_large` ourselves.
    let cap = state
        .config
        .max_frame_bytes
        .saturating_mul(2)
        .saturating_add(1024);
    // Small buffers keep idle connections cheap; they grow for large frames.
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(256)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| connection::serve(state, socket, guard, ip, q.token))
}

#[derive(Deserialize)]
struct CreateRoom {
    name: String,
    max_peers: Option<u32>,
}

/// REST writes share the client IP's message budget with its WebSockets.
fn rate_limit(state: &AppState, ip: IpAddr) -> Result<(), ApiError> {
    if state.ip_limiter.try_take(ip) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        ))
    }
}

async fn create_room(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateRoom>,
) -> Result<Response, ApiError> {
    rate_limit(&state, ip)?;
    require_token(&state, &headers)?;
    check_name("name", &body.name).map_err(ApiError::bad_request)?;
    let max_peers = body.max_peers.unwrap_or(state.config.max_peers_per_room);
    if max_peers == 0 || max_peers > state.config.max_peers_per_room {
        return Err(ApiError::bad_request(format!(
            "max_peers must be between 1 and {}",
            state.config.max_peers_per_room
        )));
    }
    let room = state
        .store
        .create_room(RoomRecord {
            id: random_id("r-", 9),
            name: body.name,
            max_peers,
            created_at: now_rfc3339(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(room)).into_response())
}

async fn get_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_name("id", &id).map_err(ApiError::bad_request)?;
    require_room_token(&state, &headers, &id)?;
    let Some(room) = state.store.get_room(&id).await? else {
        return Err(ApiError::not_found(format!("no room `{id}`")));
    };
    let peers = state.presence.members(&id).await?;
    let last_seq = state.store.last_seq(&id).await?;
    Ok(Json(json!({
        "id": room.id,
        "name": room.name,
        "max_peers": room.max_peers,
        "created_at": room.created_at,
        "peers": peers,
        "last_seq": last_seq,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct PostMessage {
    room: String,
    body: String,
    id: Option<String>,
    name: Option<String>,
}

async fn post_message(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(msg): JsonBody<PostMessage>,
) -> Result<Response, ApiError> {
    rate_limit(&state, ip)?;
    check_name("room", &msg.room).map_err(ApiError::bad_request)?;
    let claims = require_room_token(&state, &headers, &msg.room)?;
    if let Err(e) = check_chat_body(&msg.body, state.config.max_chat_bytes) {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e));
    }
    if let Some(id) = &msg.id {
        check_name("id", id).map_err(ApiError::bad_request)?;
    }
    if let Some(name) = &msg.name {
        check_name("name", name).map_err(ApiError::bad_request)?;
    }
    let name = claims
        .and_then(|c| c.name)
        .or(msg.name)
        .unwrap_or_else(|| "api".to_owned());
    state
        .store
        .ensure_room(RoomRecord {
            id: msg.room.clone(),
            name: msg.room.clone(),
            max_peers: state.config.max_peers_per_room,
            created_at: now_rfc3339(),
        })
        .await?;
    let committed = state
        .chat
        .commit(NewChat {
            room: msg.room.clone(),
            peer: "api".to_owned(),
            client_id: msg.id.unwrap_or_else(|| random_id("m-", 12)),
            name,
            body: msg.body,
            ts: now_rfc3339(),
        })
        .await?;
    let message = committed.appended.message.clone();
    committed.publish().await;
    Ok((StatusCode::CREATED, Json(message)).into_response())
}

#[derive(Deserialize)]
struct ListMessages {
    room: String,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn list_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListMessages>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_name("room", &q.room).map_err(ApiError::bad_request)?;
    require_room_token(&state, &headers, &q.room)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = history_page(&state, &q.room, q.after, limit).await?;
    Ok(Json(json!({ "messages": page.messages })).into_response())
}

#[derive(Deserialize)]
struct IceQuery {
    ttl: Option<u64>,
}

async fn ice_servers(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    query: Result<Query<IceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let claims = require_token(&state, &headers)?;
    let ttl = q.ttl.unwrap_or(3600).clamp(60, 86_400);
    // The same caller gets the same TURN user, so the relay's per-user quota
    // bounds what one caller can allocate however often it asks.
    let user = match (&claims, bearer(&headers)) {
        (Some(c), Some(token)) => turn_identity::of_token(c, token),
        _ => turn_identity::of_address(ip),
    };
    let list = state.ice.ice_servers(Some(&user), Duration::from_secs(ttl));
    Ok(Json(json!({ "ice_servers": list, "ttl": ttl })).into_response())
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<usize>,
}

async fn list_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let entries = state
        .dead_letters
        .list(q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(json!({ "dead_letters": entries })).into_response())
}

async fn retry_dead_letter(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    if id.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request("id is too long"));
    }
    if state.dead_letters.retry(&id).await? {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "retrying": true })),
        )
            .into_response())
    } else {
        Err(ApiError::not_found(format!("no dead letter `{id}`")))
    }
}

async fn drain(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    state.begin_drain();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "draining": true, "connections": state.connection_count() })),
    )
        .into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.healthy().await;
    let bus = state.bus.healthy().await;
    state.metrics.store_up.set(i64::from(store));
    state.metrics.bus_up.set(i64::from(bus));
    let draining = state.is_draining();
    // Without Redis an instance still serves its local rooms; whether it
    // stays in the Service then is a policy (--ready-without-redis).
    let bus_ok = bus || state.config.cluster.ready_without_redis;
    let ready = store && bus_ok && !draining;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "store": { "kind": state.store.kind(), "up": store },
        "bus": { "kind": state.bus.kind(), "up": bus },
        "connections": state.connection_count(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .store_up
        .set(i64::from(state.store.healthy().await));
    if let Ok(n) = state.sessions.count().await {
        state.metrics.sessions.set(n as i64);
    }
    if let Ok(n) = state.presence.room_count().await {
        state.metrics.rooms.set(n as i64);
    }
    if let Ok(n) = state.dead_letters.count().await {
        state.metrics.dead_letters.set(n as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
