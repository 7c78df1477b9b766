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
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use trellis_store::Store;

use crate::error::ApiError;
use crate::state::AppState;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    org: String,
    mesh: String,
    ca: String,
    state: String,
}

/// Days to expiry of every mesh CA that is not retired, as gauges. Scraping must not touch
/// the database, so [`CaExpiryMetrics::refresh`] reads the store now and then (days change
/// slowly) and the scrape shows the last reading.
#[derive(Clone, Default)]
pub struct CaExpiryMetrics {
    days: Family<CaLabels, Gauge>,
}

impl CaExpiryMetrics {
    /// Creates the gauges and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CaExpiryMetrics::default();
        registry.register(
            "trellis_ca_days_to_expiry",
            "Whole days until a mesh CA expires (not retired ones), by organization, mesh, CA id and state",
            m.days.clone(),
        );
        m
    }

    /// Reads every tenant's CA expiries, one tenant transaction each.
    pub async fn refresh(&self, store: &Store) -> Result<(), trellis_store::StoreError> {
        let now = chrono::Utc::now();
        let mut readings = Vec::new();
        for (org, e) in trellis_control::ca_expiries(store).await? {
            let labels =
                CaLabels { org: org.as_str().to_owned(), mesh: e.mesh, ca: e.id.to_string(), state: e.state };
            readings.push((labels, (e.not_after - now).num_days()));
        }
        // Gone CAs (retired, deleted meshes) leave the family.
        self.days.clear();
        for (labels, days) in readings {
            self.days.get_or_create(&labels).set(days);
        }
        Ok(())
    }
}
