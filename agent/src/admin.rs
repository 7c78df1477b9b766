//! The admin port, on loopback only: `/metrics` (Prometheus text), `/ready`, and `/config`
//! (what the agent applies, with the xDS versions it came with); and the readiness listener
//! (`--readiness-addr`), reachable by a kubelet, that answers `GET /ready` and nothing else.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    serve_with(listener, proxy, answer).await
}

/// Serves the readiness listener on `listener` forever: `GET /ready` only, since it may be
/// reachable from outside the host.
pub async fn serve_readiness(listener: TcpListener, proxy: Arc<Proxy>) {
    serve_with(listener, proxy, answer_readiness).await
}

async fn serve_with(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    answer: fn(&Proxy, &Request<Incoming>) -> Response<Full<Bytes>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(answer(&proxy, &req)) }
            });
            let _ = crate::proxy::http_server().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// `/ready` on either port: 200, or 503 with the reason.
fn ready(proxy: &Proxy) -> Response<Full<Bytes>> {
    match proxy.not_ready() {
        None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
    }
}

fn answer_readiness(proxy: &Proxy, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/ready") => ready(proxy),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn answer(proxy: &Proxy, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics().encode(),
        ),
        (&http::Method::GET, "/ready") => ready(proxy),
        (&http::Method::GET, "/config") => {
            let body = serde_json::to_string_pretty(&proxy.dump()).expect("JSON values serialize");
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /ready or /config\n".into()),
    }
}
