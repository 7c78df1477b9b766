//! The demo's applications, in the spirit of the classic book-shop mesh: `productpage` calls
//! `reviews` over HTTP, `reviews` v2 calls `ratings` over gRPC (one unary method,
//! [`RATINGS_GET`]). Each answers JSON that says who served it, so that the traffic split,
//! the beta channel and the gRPC hop can be seen in every response. They know nothing of the
//! mesh: they call `http://<service>.<mesh>:<port>` like any application, through an HTTP
//! proxy (their agent's explicit mode; gRPC's HTTP/2 goes to it with that authority).

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use url::Url;

use crate::config::{DemoApp, DemoRole};

/// The header that puts a request on the beta channel (examples/reviews.yaml routes it to v2).
const BETA_HEADER: &str = "x-beta";

/// The path of `ratings`' one gRPC method (package `trellis.demo`, service `Ratings`, method
/// `Get`): what a caller's access policy names.
pub const RATINGS_GET: &str = "/trellis.demo.Ratings/Get";

/// `Ratings/Get`'s request, written by hand (no .proto to compile).
#[derive(Clone, PartialEq, prost::Message)]
struct RatingRequest {
    #[prost(string, tag = "1")]
    product: String,
}

/// `Ratings/Get`'s answer.
#[derive(Clone, PartialEq, prost::Message)]
struct Rating {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(uint32, tag = "2")]
    stars: u32,
}

#[derive(Clone)]
struct App {
    role: DemoRole,
    version: String,
    reviews: Option<Url>,
    /// `ratings`, over gRPC.
    ratings: Option<Channel>,
    details: Option<Url>,
    client: reqwest::Client,
}

pub async fn run(args: DemoApp) -> anyhow::Result<()> {
    let ratings = args.ratings.as_ref().map(|u| grpc_channel(u, args.proxy.as_ref())).transpose()?;
    let app = App {
        role: args.role,
        version: args.version.clone(),
        reviews: args.reviews,
        ratings,
        details: args.details,
        client: client(args.proxy.as_ref())?,
    };
    let router = match args.role {
        DemoRole::Productpage => {
            Router::new().route("/", get(productpage)).route("/details", get(productpage_details))
        }
        DemoRole::Reviews => Router::new().route("/reviews", get(reviews)),
        DemoRole::Ratings => Router::new().route(RATINGS_GET, post(ratings_get)),
        DemoRole::Details => Router::new().route("/details", get(leaf)),
    };
    let router = router.route("/health", get(|| async { "ok" })).with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let stop = crate::serve::shutdown_signal();
    tracing::info!(role = args.role.name(), listen = %args.listen, "demo application serving");
    axum::serve(listener, router).with_graceful_shutdown(stop).await?;
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

/// A gRPC channel to `upstream` (`http://<service>.<mesh>:<port>`): through `proxy` when
/// given, with `upstream` as the requests' authority, which is how the proxy routes them.
fn grpc_channel(upstream: &Url, proxy: Option<&Url>) -> anyhow::Result<Channel> {
    let origin: tonic::transport::Uri = upstream.as_str().parse().context("--ratings")?;
    let endpoint = Endpoint::from_shared(proxy.unwrap_or(upstream).to_string()).context("--proxy")?;
    Ok(endpoint.origin(origin).timeout(std::time::Duration::from_secs(10)).connect_lazy())
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

/// `reviews`: v1 has no stars; versions given a `ratings` ask it, over gRPC.
async fn reviews(State(app): State<App>) -> (StatusCode, Json<Value>) {
    let Some(channel) = app.ratings.clone() else {
        return (StatusCode::OK, Json(json!({ "service": "reviews", "version": app.version })));
    };
    let (status, ratings) = match rating(channel).await {
        Ok(r) => (
            StatusCode::OK,
            json!({ "service": "ratings", "version": r.version, "stars": r.stars, "protocol": "grpc" }),
        ),
        Err(s) => (
            StatusCode::BAD_GATEWAY,
            json!({ "error": format!("ratings {RATINGS_GET}: {:?} {}", s.code(), s.message()) }),
        ),
    };
    (status, Json(json!({ "service": "reviews", "version": app.version, "ratings": ratings })))
}

/// One unary call of `Ratings/Get`.
async fn rating(channel: Channel) -> Result<Rating, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RatingRequest, Rating>::default();
    let path = axum::http::uri::PathAndQuery::from_static(RATINGS_GET);
    let request = tonic::Request::new(RatingRequest { product: "book".into() });
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

/// `ratings`: `Ratings/Get`, served by tonic's unary handling inside the HTTP router.
async fn ratings_get(State(app): State<App>, req: axum::extract::Request) -> axum::response::Response {
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Rating, RatingRequest>::default());
    grpc.unary(RatingsGet(app.version), req).await.map(axum::body::Body::new).into_response()
}

struct RatingsGet(String);

impl tonic::server::UnaryService<RatingRequest> for RatingsGet {
    type Response = Rating;
    type Future = std::future::Ready<Result<tonic::Response<Rating>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<RatingRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(Rating { version: self.0.clone(), stars: 4 })))
    }
}

/// `details`: calls nobody.
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
