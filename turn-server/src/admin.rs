//! The admin HTTP port: health, readiness, metrics, and drain on request.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::state::Shared;

#[derive(Clone)]
pub struct AdminState {
    pub(crate) shared: Arc<Shared>,
    /// Bearer token POST /drain requires, when configured.
    pub(crate) drain_token: Option<Arc<str>>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/drain", post(drain))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    use crate::readiness::Readiness;
    match s.shared.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::ReadyDraining => (
            StatusCode::OK,
            "ready, draining: live allocations only, new ones refused\n",
        )
            .into_response(),
        Readiness::NotReady(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.shared.metrics.render(),
    )
}

/// Drains on request. Without a configured token the route is refused
/// outright (403): the admin port listens on every interface by default, and
/// an open write there would let anyone who reaches it take the relay out
/// of service. Reads (health, readiness, metrics) stay open.
async fn drain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(token) = &s.drain_token else {
        tracing::warn!("POST /drain refused: no --admin-token-file configured");
        return (
            StatusCode::FORBIDDEN,
            "forbidden: POST /drain is disabled until --admin-token-file is set\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("POST /drain refused: missing or wrong bearer token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized: POST /drain needs Authorization: Bearer <admin token>\n",
        )
            .into_response();
    }
    s.shared.begin_drain();
    (StatusCode::ACCEPTED, "draining\n").into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::peer_policy::PeerPolicy;
    use crate::secrets::SecretStore;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state(token: Option<&str>) -> AdminState {
        let secrets = SecretStore::load(vec![b"s".to_vec()], None).expect("secrets");
        AdminState {
            shared: Arc::new(Shared::new(
                Arc::new(Metrics::default()),
                Arc::new(secrets),
                PeerPolicy::default(),
                0,
                0,
                Arc::new(crate::fast_path::FastPath::new(
                    true,
                    None,
                    std::time::Duration::from_secs(600),
                    Arc::new(Metrics::default()),
                )),
            )),
            drain_token: token.map(Arc::from),
        }
    }

    async fn call(
        s: &AdminState,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app(s.clone())
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn drain_needs_the_bearer_token_when_configured() {
        let s = state(Some("t0ken"));
        assert_eq!(
            call(&s, "POST", "/drain", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&s, "POST", "/drain", Some("Bearer nope")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(call(&s, "GET", "/readyz", None).await.0, StatusCode::OK);
        assert_eq!(
            call(&s, "POST", "/drain", Some("Bearer t0ken")).await.0,
            StatusCode::ACCEPTED
        );
        // Draining is not readiness (docs/turn.md, "Drain").
        let (status, body) = call(&s, "GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("draining"), "{body}");
        assert!(s.shared.is_draining());
    }

    #[tokio::test]
    async fn drain_is_refused_without_a_configured_token() {
        let s = state(None);
        assert_eq!(call(&s, "GET", "/healthz", None).await.0, StatusCode::OK);
        for auth in [None, Some("Bearer "), Some("Bearer anything")] {
            let (status, body) = call(&s, "POST", "/drain", auth).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{auth:?}");
            assert!(body.contains("--admin-token-file"), "{body}");
        }
        assert!(!s.shared.is_draining());
        assert_eq!(call(&s, "GET", "/readyz", None).await.0, StatusCode::OK);
        let (status, body) = call(&s, "GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\nvideochat_turn_draining 0\n"), "{body}");
        assert!(
            body.contains("\nvideochat_turn_allocations_active 0\n"),
            "{body}"
        );
        assert_eq!(
            call(&s, "GET", "/drain", None).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
