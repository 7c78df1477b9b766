//! HTTP request metrics and the `/metrics` endpoint (Prometheus text format).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{ApiError, AppState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    /// The route template (`/api/v1/orgs/{org}`), never the raw path: bounded cardinality.
    route: String,
    status: u16,
}

/// Request counters and latency histograms, by method, route and status.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", duration.clone());
        HttpMetrics { requests, duration }
    }
}

pub(crate) async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    let labels = HttpLabels { method, route, status: res.status().as_u16() };
    m.requests.get_or_create(&labels).inc();
    m.duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    res
}

/// Every registered metric, in the Prometheus text format.
pub async fn metrics_handler(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut body = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry).map_err(|e| {
        tracing::error!(error = %e, "encoding metrics failed");
        ApiError::unavailable("metrics could not be encoded")
    })?;
    let mut res = Body::from(body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    Ok(res)
}
