//! The component pods' admin endpoints, as the controller uses them: read
//! the load gauge from `/metrics` and ask a pod to drain. Signaling serves
//! both on its HTTP port (`POST /api/admin/drain`), TURN on its admin port
//! (`POST /drain`); both want the admin bearer token.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::autoscale::load::LoadMetric;
use crate::autoscale::metrics_text::{MAX_METRICS_BYTES, parse_gauge};
use crate::error::Error;
use crate::labels::Component;

/// Signaling's HTTP port (`/metrics`, `/api/admin/drain`).
pub const SIGNALING_HTTP_PORT: u16 = 8080;
/// TURN's admin port (`/metrics`, `/drain`).
pub const TURN_ADMIN_PORT: u16 = 9090;

/// A pod to talk to.
#[derive(Clone)]
pub struct PodTarget {
    pub name: String,
    pub component: Component,
    /// `host:port` of the pod's admin endpoint.
    pub address: String,
    /// Admin bearer token of the cluster; never logged.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for PodTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTarget")
            .field("name", &self.name)
            .field("component", &self.component)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl PodTarget {
    /// The admin address of a pod from its IP.
    pub fn for_pod(
        name: &str,
        component: Component,
        pod_ip: &str,
        admin_token: Option<String>,
    ) -> Self {
        let port = match component {
            Component::Turn => TURN_ADMIN_PORT,
            _ => SIGNALING_HTTP_PORT,
        };
        let host = if pod_ip.contains(':') {
            format!("[{pod_ip}]")
        } else {
            pod_ip.to_owned()
        };
        Self {
            name: name.to_owned(),
            component,
            address: format!("{host}:{port}"),
            admin_token,
        }
    }

    fn drain_path(&self) -> &'static str {
        match self.component {
            Component::Turn => "/drain",
            _ => "/api/admin/drain",
        }
    }
}

/// What the controller needs from a pod; a trait so tests can point it at
/// servers on loopback.
pub trait PodAdmin: Send + Sync {
    /// The component's load gauge as the pod reports it now.
    fn scrape_load(&self, pod: &PodTarget) -> BoxFuture<'_, Result<f64, Error>>;
    /// Asks the pod to drain (idempotent on the servers' side).
    fn drain(&self, pod: &PodTarget) -> BoxFuture<'_, Result<(), Error>>;
}

/// Plain HTTP to the pod IPs, with a timeout per call.
#[derive(Clone)]
pub struct HttpPodAdmin {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpPodAdmin {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    async fn call(
        &self,
        pod: &PodTarget,
        method: http::Method,
        path: &str,
        action: &str,
    ) -> Result<String, Error> {
        let fail = |message: String| Error::PodEndpoint {
            pod: pod.name.clone(),
            action: action.to_owned(),
            message,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", pod.address));
        if let Some(token) = &pod.admin_token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| fail(format!("bad request: {e}")))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| fail(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(response.into_body(), MAX_METRICS_BYTES).collect(),
        )
        .await
        .map_err(|_| fail(format!("body not complete within {:?}", self.timeout)))?
        .map_err(|e| fail(format!("reading the body: {e}")))?
        .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            let first_line = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            return Err(fail(format!("HTTP {status}: {first_line}")));
        }
        Ok(text)
    }
}

impl Default for HttpPodAdmin {
    fn default() -> Self {
        Self::new(Duration::from_secs(3))
    }
}

impl PodAdmin for HttpPodAdmin {
    fn scrape_load(&self, pod: &PodTarget) -> BoxFuture<'_, Result<f64, Error>> {
        let pod = pod.clone();
        Box::pin(async move {
            let metric = match pod.component {
                Component::Turn => LoadMetric::TurnAllocations,
                _ => LoadMetric::SignalingConnections,
            };
            let text = self
                .call(&pod, http::Method::GET, "/metrics", "scraping /metrics")
                .await?;
            parse_gauge(&text, metric.gauge_name())?.ok_or_else(|| Error::MetricsText {
                metric: metric.gauge_name().to_owned(),
                message: format!("pod {} does not export it", pod.name),
            })
        })
    }

    fn drain(&self, pod: &PodTarget) -> BoxFuture<'_, Result<(), Error>> {
        let pod = pod.clone();
        Box::pin(async move {
            self.call(&pod, http::Method::POST, pod.drain_path(), "drain request")
                .await
                .map(|_| ())
        })
    }
}
