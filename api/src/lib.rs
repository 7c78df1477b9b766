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
mod process;
mod schema_check;
pub mod session;
mod state;

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
    use axum::routing::{delete, get, post, put};
    const ORG: &str = "/api/v1/orgs/{org}";
    const MESH: &str = "/api/v1/orgs/{org}/meshes/{mesh}";
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/auth/login", get(accounts::login))
        .route("/auth/callback", get(accounts::callback))
        .route("/auth/logout", post(accounts::logout))
        .route("/auth/local", get(accounts::local_login))
        .route("/api/v1/me", get(orgs::me))
        .route("/api/v1/orgs", get(orgs::list_orgs))
        .route("/api/v1/invites/{token}/accept", post(members::accept_invite))
        .route(ORG, get(orgs::get_org).patch(orgs::patch_org).delete(orgs::delete_org))
        .route(&format!("{ORG}/members"), get(members::list_members))
        .route(
            &format!("{ORG}/members/{{user}}"),
            axum::routing::patch(members::update_member).delete(members::remove_member),
        )
        .route(&format!("{ORG}/invites"), get(members::list_invites).post(members::create_invite))
        .route(&format!("{ORG}/invites/{{id}}"), axum::routing::delete(members::revoke_invite))
        .route(&format!("{ORG}/tokens"), get(orgs::list_tokens).post(orgs::create_token))
        .route(&format!("{ORG}/tokens/{{id}}"), axum::routing::delete(orgs::revoke_token))
        .route(&format!("{ORG}/audit-events"), get(orgs::audit_events))
        .route(&format!("{ORG}/meshes"), get(config::list_meshes))
        .route(
            &format!("{ORG}/meshes/{{mesh}}"),
            get(config::get_mesh).put(config::put_mesh).delete(config::delete_mesh),
        )
        .route(&format!("{ORG}/meshes/{{mesh}}/services/{{service}}/effective"), get(config::effective))
        .route(&format!("{ORG}/meshes/{{mesh}}/dataplanes"), get(dataplanes::list))
        .route(&format!("{MESH}/topology"), get(observe::topology))
        .route(&format!("{MESH}/impact-preview"), post(config::impact_preview))
        .route(&format!("{MESH}/services/{{service}}/metrics"), get(observe::service))
        .route(&format!("{MESH}/services/{{service}}/health"), get(observe::health))
        .route(&format!("{MESH}/access-log"), get(observe::access_log))
        .route(&format!("{MESH}/access-log/{{id}}/why"), get(observe::why))
        .route(&format!("{MESH}/metrics/prometheus"), get(observe::prometheus))
        .route(&format!("{ORG}/meshes/{{mesh}}/dataplanes/{{dataplane}}/config"), get(dataplanes::config))
        .route(&format!("{MESH}/ca"), get(ca::status))
        .route(&format!("{MESH}/ca/bundle"), get(ca::bundle))
        .route(&format!("{MESH}/ca/settings"), put(ca::put_settings))
        .route(&format!("{MESH}/ca/rotation/prepare"), post(ca::prepare))
        .route(&format!("{MESH}/ca/rotation/activate"), post(ca::activate))
        .route(&format!("{MESH}/ca/authorities/{{id}}"), delete(ca::discard))
        .route(&format!("{MESH}/ca/authorities/{{id}}/retire"), post(ca::retire))
        .route(&format!("{MESH}/ca/authorities/{{id}}/chain"), put(ca::upload_chain))
        .route(&format!("{MESH}/ca/intermediate-csr"), post(ca::intermediate_csr))
        .route(&format!("{MESH}/ca/upload"), post(ca::upload_ca))
        .route(&format!("{MESH}/join-tokens"), get(ca::list_join_tokens).post(ca::create_join_token))
        .route(&format!("{MESH}/join-tokens/{{id}}"), delete(ca::revoke_join_token))
        .route(&format!("{MESH}/bootstrap/grpc"), get(bootstrap::grpc))
        .route(&format!("{MESH}/bootstrap/envoy"), get(bootstrap::envoy))
        .route(&format!("{MESH}/bootstrap/ca.pem"), get(bootstrap::platform_root))
        .route("/api/v1/svids", post(ca::issue_svid))
        .route(
            &format!("{ORG}/meshes/{{mesh}}/{{kind}}"),
            get(config::list_resources).merge(post(config::create_resource)),
        )
        .route(
            &format!("{ORG}/meshes/{{mesh}}/{{kind}}/{{name}}"),
            get(config::get_resource).put(config::put_resource).delete(config::delete_resource),
        )
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state::Shared::new(state))
        // Before any handler: a cookie-authenticated write without its CSRF token is refused.
        .layer(axum::middleware::from_fn(session::csrf_guard))
        // The console's pages check the CSRF token their forms carry themselves.
        .merge(pages)
        .layer(DefaultBodyLimit::max(limits.body))
        .layer(RequestBodyTimeoutLayer::new(limits.time / 2))
        .layer(axum::middleware::from_fn_with_state(limits.time, deadline))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::problem_json))
        .layer(axum::middleware::from_fn_with_state(http_metrics, metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
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
