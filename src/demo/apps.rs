//! The demo's applications, in the spirit of the classic book-shop mesh: `productpage` calls
//! `reviews`, `reviews` v2 calls `ratings`. Each answers JSON that says who served it, so
//! that the traffic split and the beta channel can be seen in every response. They know
//! nothing of the mesh: they call `http://<service>.<mesh>:<port>` like any application,
//! through an HTTP proxy (their agent's explicit mode).

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use url::Url;

use crate::config::{DemoApp, DemoRole};

/// The header that puts a request on the beta channel (examples/reviews.yaml routes it to v2).
const BETA_HEADER: &str = "x-beta";

#[derive(Clone)]
struct App {
    role: DemoRole,
    version: String,
    reviews: Option<Url>,
    ratings: Option<Url>,
    details: Option<Url>,
    client: reqwest::Client,
}

pub async fn run(args: DemoApp) -> anyhow::Result<()> {
    let app = App {
        role: args.role,
        version: args.version.clone(),
        reviews: args.reviews,
        ratings: args.ratings,
        details: args.details,
        client: client(args.proxy.as_ref())?,
    };
    let router = match args.role {
        DemoRole::Productpage => {
            Router::new().route("/", get(productpage)).route("/details", get(productpage_details))
        }
        DemoRole::Reviews => Router::new().route("/reviews", get(reviews)),
        DemoRole::Ratings => Router::new().route("/ratings", get(leaf)),
        DemoRole::Details => Router::new().route("/details", get(leaf)),
    };
    let router = router.route("/health", get(|| async { "ok" })).with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(role = args.role.name(), listen = %args.listen, "demo application serving");
    axum::serve(listener, router).with_graceful_shutdown(crate::serve::shutdown_signal()).await?;
    Ok(())
}

/// The HTTP client of the calls to other services, through `proxy` when given.
fn client(proxy: Option<&Url>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Some(proxy) = proxy {
        builder = builder.proxy(reqwest::Proxy::http(proxy.as_str()).context("--proxy")?);
    }
    Ok(builder.build()?)
}

/// `productpage`: the page, with the reviews of whichever version served it.
async fn productpage(State(app): State<App>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let (status, reviews) = app.call(&app.reviews, "/reviews", &headers).await;
    (status, Json(json!({ "service": "productpage", "reviews": reviews })))
}

/// `productpage`'s details, from a service no policy lets it call: the demo's denied call.
async fn productpage_details(State(app): State<App>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let (status, details) = app.call(&app.details, "/details", &headers).await;
    (status, Json(json!({ "service": "productpage", "details": details })))
}

/// `reviews`: v1 has no stars; versions given a `ratings` ask it.
async fn reviews(State(app): State<App>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if app.ratings.is_none() {
        return (StatusCode::OK, Json(json!({ "service": "reviews", "version": app.version })));
    }
    let (status, ratings) = app.call(&app.ratings, "/ratings", &headers).await;
    (status, Json(json!({ "service": "reviews", "version": app.version, "ratings": ratings })))
}

/// `ratings` and `details`: call nobody.
async fn leaf(State(app): State<App>) -> Json<Value> {
    Json(json!({ "service": app.role.name(), "version": app.version, "stars": 4 }))
}

impl App {
    /// Calls an upstream, passing the beta header on; a failure becomes a 502 whose body
    /// says what failed, so that the demo's output shows denials and outages plainly.
    async fn call(&self, upstream: &Option<Url>, path: &str, headers: &HeaderMap) -> (StatusCode, Value) {
        let Some(upstream) = upstream else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": format!("{} has no upstream for {path}", self.role.name()) }),
            );
        };
        let upstream = upstream.as_str().trim_end_matches('/');
        let mut req = self.client.get(format!("{upstream}{path}"));
        if let Some(beta) = headers.get(BETA_HEADER) {
            req = req.header(BETA_HEADER, beta);
        }
        match req.send().await {
            Ok(res) if res.status().is_success() => {
                (StatusCode::OK, res.json().await.unwrap_or_else(|e| json!({ "error": e.to_string() })))
            }
            Ok(res) => {
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                (
                    StatusCode::BAD_GATEWAY,
                    json!({ "error": format!("{upstream}{path} answered {status}"), "body": body }),
                )
            }
            Err(e) => (StatusCode::BAD_GATEWAY, json!({ "error": format!("{upstream}{path}: {e}") })),
        }
    }
}
