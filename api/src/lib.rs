//! The Trellis REST API (axum): operational endpoints now, the account and configuration
//! API as it lands. Only this crate knows HTTP.

#![forbid(unsafe_code)]

mod error;
mod health;
mod metrics;
mod process;

pub use error::ApiError;
pub use metrics::{HttpMetrics, metrics_handler};
pub use process::ProcessCollector;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use prometheus_client::registry::Registry;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use trellis_store::Store;

/// Largest request body accepted anywhere, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Header that carries the request id in and out (generated when absent).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
}

/// The whole HTTP surface: operational endpoints, with request ids, metrics and a body limit.
pub fn router(state: AppState, http_metrics: HttpMetrics, body_limit: usize) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .route("/metrics", axum::routing::get(metrics_handler))
        .fallback(error::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(http_metrics, metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}
