//! Admin HTTP port: `/healthz` (the process serves), `/readyz` (the
//! controller is running), `/metrics` (Prometheus text).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once the controller has started watching.
    pub ready: Arc<AtomicBool>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controller not started\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Serves the admin app until the process ends.
pub async fn serve(addr: std::net::SocketAddr, state: AdminState) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Admin {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, app(state))
        .await
        .map_err(|source| Error::Admin {
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(state: AdminState, path: &str) -> (StatusCode, String) {
        let response = app(state)
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn healthz_readyz_and_metrics_answer() {
        let state = AdminState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(get(state.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(state.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(state.clone(), "/readyz").await.0, StatusCode::OK);

        state
            .metrics
            .observe_reconcile(std::time::Duration::from_millis(30));
        state.metrics.observe_error("conflict");
        let (status, text) = get(state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("videochat_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("videochat_operator_reconcile_errors_total{kind=\"conflict\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("videochat_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
