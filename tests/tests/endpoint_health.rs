//! Endpoints ejected by outlier detection in service health, black box: real `trellis`, real
//! `trellis-agent`s — two `reviews` instances, one of whose application fails, and a
//! `productpage` caller whose outlier detection ejects it — and the REST API's service health
//! naming the caller that sees it ejected, then the endpoint back once it recovers, and the
//! report gone once the caller goes offline. The agents use 127.0.0.90–92 (no other test does)
//! and bind no outbound listener (the caller uses its agent's HTTP proxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::platform_root;
use trellis_tests::{Api, telemetry_agent, token, trellis};

/// An application that answers 200, or 503 while `failing` is set.
async fn app(failing: Arc<AtomicBool>) -> u16 {
    let router = axum::Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            if failing.load(Ordering::SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

async fn put(api: &Api, path: &str, doc: Value) {
    let (status, body) = api.put(path, &doc).await;
    assert!(status == 200 || status == 201, "{path}: {body}");
}

async fn join_token(api: &Api, service: &str) -> String {
    let (status, body) = api.post("/meshes/shop/join-tokens", &json!({"service": service})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `GET http://reviews.shop:9080/` through the agent's HTTP proxy at `proxy`: the status.
async fn call(client: &reqwest::Client) -> u16 {
    client.get("http://reviews.shop:9080/").send().await.map_or(0, |r| r.status().as_u16())
}

/// The report of `reviews`' cluster from the proxy of `caller` (reviews' own proxies have
/// the cluster too, and report it).
fn report_of<'h>(health: &'h Value, caller: &str) -> Option<&'h Value> {
    health["endpoints"]["reports"].as_array()?.iter().find(|r| r["caller"] == caller)
}

/// Polls the health of `reviews` until `done` (agents report every second; the writer
/// stores behind the stream).
async fn reviews_health(api: &Api, done: impl Fn(&Value) -> bool) -> Value {
    let mut body = Value::Null;
    for _ in 0..300 {
        let (status, b) = api.get("/meshes/shop/services/reviews/health").await;
        assert_eq!(status, 200, "{b}");
        body = b;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("reviews' health never came to what was expected: {body:#}");
}

#[tokio::test]
async fn a_failing_endpoint_ejected_by_a_callers_outlier_detection_shows_in_service_health_until_it_recovers()
{
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = trellis_tests::Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    put(&api, "/meshes/shop", json!({"spec": {"defaultAccess": "allow"}})).await;
    let http_port = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for service in ["reviews", "productpage"] {
        put(&api, &format!("/meshes/shop/services/{service}"), http_port.clone()).await;
    }
    // Three 5xx in a row eject an endpoint for 5 s (at most half of them out).
    put(
        &api,
        "/meshes/shop/circuit-breakers/reviews",
        json!({"spec": {"targetRef": {"service": "reviews"}, "outlierDetection": {
            "consecutive5xx": 3, "interval": "1s", "baseEjectionTime": "5s", "maxEjectionPercent": 50
        }}}),
    )
    .await;

    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&store).await).unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let mut instances = Vec::new();
    let never = Arc::new(AtomicBool::new(false));
    for (name, address, fails) in
        [("reviews-ok", "127.0.0.91", &never), ("reviews-bad", "127.0.0.92", &failing)]
    {
        let port = app(fails.clone()).await;
        let tok = join_token(&api, "reviews").await;
        let mut p = telemetry_agent(
            &t.xds,
            &ca,
            &tmp.path().join(name),
            &tok,
            "reviews",
            address,
            &["--port", "9080", "--app-port", &format!("9080={port}")],
        );
        p.wait_for_line(&format!("listening inbound:9080 on {address}:9080"), Duration::from_secs(20)).await;
        instances.push(p);
    }
    let tok = join_token(&api, "productpage").await;
    let mut productpage = telemetry_agent(
        &t.xds,
        &ca,
        &tmp.path().join("productpage"),
        &tok,
        "productpage",
        "127.0.0.90",
        &["--http-proxy-addr", "127.0.0.90:15001"],
    );
    productpage.wait_for_line("HTTP proxy (explicit mode", Duration::from_secs(20)).await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http("http://127.0.0.90:15001").unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Before any call, the caller reports both endpoints, healthy.
    let healthy =
        reviews_health(&api, |h| report_of(h, "productpage").is_some_and(|r| r["total"] == 2)).await;
    let seen = &healthy["endpoints"];
    assert_eq!(report_of(&healthy, "productpage").unwrap()["healthy"], 2);
    assert_eq!(
        (&seen["ejected"], &seen["unhealthy"], &seen["impairedCallers"]),
        (&json!(0), &json!(0), &json!(0))
    );

    // The bad instance answers 503: after three in a row the caller ejects it and sends
    // everything to the good one.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(call(&client).await);
    }
    productpage.wait_for_line("outlier ejected after consecutive failures", Duration::from_secs(5)).await;
    let mut after = Vec::new();
    for _ in 0..6 {
        after.push(call(&client).await);
    }
    assert!(
        after.iter().all(|s| *s == 200),
        "only the good instance once the bad is out: {statuses:?} then {after:?}"
    );

    // Service health names the caller that sees one of reviews' two endpoints ejected.
    let h = reviews_health(&api, |h| h["endpoints"]["ejected"] == 1).await;
    let e = &h["endpoints"];
    assert_eq!((&e["unhealthy"], &e["impairedCallers"]), (&json!(1), &json!(1)), "{e:#}");
    let report = &e["reports"][0];
    assert_eq!(e["reports"].as_array().unwrap().len(), 3, "reviews' own two proxies see them too: {e:#}");
    assert_eq!(
        (&report["caller"], &report["port"], &report["subset"]),
        (&json!("productpage"), &json!(9080), &json!({}))
    );
    assert_eq!((&report["total"], &report["healthy"], &report["ejected"]), (&json!(2), &json!(1), &json!(1)));
    let (_, dataplanes) = api.get("/meshes/shop/dataplanes").await;
    let caller =
        dataplanes["items"].as_array().unwrap().iter().find(|d| d["service"] == "productpage").unwrap();
    assert_eq!(report["node"], caller["nodeId"], "the caller's proxy by its node");

    // The instance recovers; once its ejection (5 s) is over the caller reports it back.
    failing.store(false, Ordering::SeqCst);
    let h =
        reviews_health(&api, |h| h["endpoints"]["ejected"] == 0 && h["endpoints"]["unhealthy"] == 0).await;
    assert_eq!(report_of(&h, "productpage").unwrap()["healthy"], 2, "{h:#}");

    // Ejected again, then the caller goes away: an offline proxy's view is not shown.
    failing.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        call(&client).await;
    }
    reviews_health(&api, |h| h["endpoints"]["ejected"] == 1).await;
    productpage.kill().await;
    let h = reviews_health(&api, |h| report_of(h, "productpage").is_none()).await;
    assert_eq!((&h["endpoints"]["ejected"], &h["endpoints"]["impairedCallers"]), (&json!(0), &json!(0)));
    assert_eq!(h["endpoints"]["reports"].as_array().unwrap().len(), 2, "reviews' own, online: {h:#}");
    for mut p in instances {
        p.kill().await;
    }
}
