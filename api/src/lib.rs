//! The Trellis REST API (axum): operational endpoints now, the account and configuration
//! API as it lands. Only this crate knows HTTP.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod auth;
mod body;
mod bootstrap;
mod ca;
mod config;
mod dataplanes;
mod error;
mod health;
mod members;
mod metrics;
mod observe;
pub mod oidc;
pub mod openapi;
mod orgs;
mod params;
mod process;
mod routes;
mod schema_check;
mod schemas;
pub mod session;
mod state;
mod telemetry_status;
mod traffic_events;

pub use error::ApiError;
pub use metrics::{CaExpiryMetrics, HttpMetrics, metrics_handler};
pub use process::ProcessCollector;
pub use state::{Accounts, AppState, REQUEST_ID, XdsEndpoint};
pub use trellis_control::API_VERSION;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Largest request body accepted anywhere, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Bounds on what one request may take.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest body, in bytes (413 beyond it).
    pub body: usize,
    /// Longest a request may take to be answered (503 after it), plus the `?wait=` of a
    /// write that waits for its propagation (at most 5 minutes); its body must arrive in the
    /// first half (408 after that). Neither a slow client nor a stalled database holds a
    /// request forever.
    pub time: std::time::Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { body: DEFAULT_BODY_LIMIT, time: std::time::Duration::from_secs(30) }
    }
}

/// The whole HTTP surface: operational endpoints and the API, with the console's `pages`
/// beside them, all with request ids, metrics and request limits, and problem+json for every
/// error that is not a page.
pub fn router(state: AppState, http_metrics: HttpMetrics, limits: RequestLimits, pages: Router) -> Router {
    use axum::routing::get;
    // The documented operations; their document is `openapi::document`.
    let (api, _) = routes::api().split_for_parts();
    api.route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state::Shared::new(state))
        // Before any handler: a cookie-authenticated write without its CSRF token is refused.
        .layer(axum::middleware::from_fn(session::csrf_guard))
        // The console's pages check the CSRF token their forms carry themselves.
        .merge(pages)
        .layer(axum::middleware::from_fn(run_again))
        .layer(DefaultBodyLimit::max(limits.body))
        .layer(RequestBodyTimeoutLayer::new(limits.time / 2))
        .layer(axum::middleware::from_fn_with_state(limits.time, deadline))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::problem_json))
        .layer(axum::middleware::from_fn_with_state(http_metrics, metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}

/// Runs a request again while its transaction collides with another one and is rolled back
/// ([`trellis_control::RunAgain`]; PostgreSQL's advice for deadlocks and serialization
/// failures), at most three runs in all, with a short random pause between them. A rolled-back
/// run wrote nothing, so the client gets one answer for one change. The body is read here,
/// within the body limit, to be there for the next run.
async fn run_again(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    const RUNS: u32 = 3;
    let (head, body) = req.into_parts();
    let body = match body::read_bytes(axum::extract::Request::from_parts(head.clone(), body), &()).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let mut run = 1;
    loop {
        let again = axum::extract::Request::from_parts(head.clone(), axum::body::Body::from(body.clone()));
        let res = next.clone().run(again).await;
        if run == RUNS || res.extensions().get::<trellis_control::RunAgain>().is_none() {
            return res;
        }
        tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(5..=20) * u64::from(run)))
            .await;
        run += 1;
    }
}

/// Answers 503 when a request takes longer than the limit (with its write's `?wait=`).
async fn deadline(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit = limit + config::extra_time(req.method(), req.uri());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
