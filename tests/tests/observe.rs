//! The access log and "why denied", black box: real `trellis`, real `trellis-agent`s in front
//! of a real HTTP application, calls denied by an explicit deny rule, by default deny and for
//! want of an mTLS identity, and one an audit rule let through — each found through the REST
//! API with the rule that decided it; and a write that waits for its propagation (`trellis
//! apply --wait`, `?wait=`) until real agents applied it, one rejected it, or one is frozen.
//! The agents use 127.0.0.20–22 and 127.0.0.30–32 (no other test does) and bind no outbound
//! listener (the callers use the agent's HTTP proxy).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::platform_root;
use trellis_tests::{Api, Process, Trellis, ok_app, reviews_route_yaml, telemetry_agent, token, trellis};

async fn put(api: &Api, path: &str, doc: Value) {
    let (status, body) = api.put(path, &doc).await;
    assert!(status == 200 || status == 201, "{path}: {body}");
}

/// The mesh's platform root written to `dir`, and a `reviews` agent on `address` in front of
/// the application on `app_port`, listening.
async fn reviews_instance(
    t: &Trellis,
    api: &Api,
    store: &trellis_store::Store,
    dir: &Path,
    address: &str,
    app_port: u16,
) -> (std::path::PathBuf, Process) {
    let ca = dir.join("platform-ca.pem");
    std::fs::write(&ca, platform_root(store).await).unwrap();
    let tok = join_token(api, "reviews").await;
    let app = format!("9080={app_port}");
    let mut reviews = telemetry_agent(
        &t.xds,
        &ca,
        &dir.join("reviews"),
        &tok,
        "reviews",
        address,
        &["--port", "9080", "--app-port", &app],
    );
    reviews
        .wait_for_line(&format!("listening inbound:9080 on {address}:9080"), Duration::from_secs(20))
        .await;
    (ca, reviews)
}

async fn join_token(api: &Api, service: &str) -> String {
    let (status, body) = api.post("/meshes/shop/join-tokens", &json!({"service": service})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `GET http://reviews.shop:9080<path>` through the agent's HTTP proxy at `proxy`: the status.
async fn call(proxy: &str, path: &str) -> u16 {
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client.get(format!("http://reviews.shop:9080{path}")).send().await.unwrap().status().as_u16()
}

/// [`call`] again while the caller's agent cannot reach reviews yet (a 5xx).
async fn settled_call(proxy: &str, path: &str) -> u16 {
    let mut status = 0;
    for _ in 0..100 {
        status = call(proxy, path).await;
        if status < 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    status
}

/// The mesh's access-log entries matching `query`, once `want` says they are all there.
async fn entries(api: &Api, query: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..150 {
        let (status, body) = api.get(&format!("/meshes/shop/access-log?{query}")).await;
        assert_eq!(status, 200, "{body}");
        items = body["items"].as_array().unwrap().clone();
        if want(&items) {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the access log never had what was asked for ({query}); it has:\n{items:#?}");
}

fn find<'a>(items: &'a [Value], path: &str) -> Option<&'a Value> {
    items.iter().find(|e| e["path"] == path)
}

#[tokio::test]
async fn every_denial_and_audit_match_is_logged_with_the_rule_that_decided_it() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    put(&api, "/meshes/shop", json!({"spec": {"mtls": {"mode": "STRICT"}, "defaultAccess": "deny"}})).await;
    let http_port = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for service in ["reviews", "productpage", "stranger"] {
        put(&api, &format!("/meshes/shop/services/{service}"), http_port.clone()).await;
    }
    let from_productpage = json!([{"service": "productpage"}]);
    let policy = json!({"spec": {"targetRef": {"service": "reviews"}, "rules": [
        {"action": "Deny", "from": from_productpage, "to": {"paths": [{"type": "PathPrefix", "value": "/admin"}]}},
        {"action": "Allow", "from": from_productpage},
        {"action": "Audit", "from": from_productpage, "to": {"paths": [{"type": "PathPrefix", "value": "/watched"}]}},
    ]}});
    put(&api, "/meshes/shop/access-policies/reviews-callers", policy).await;

    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ca, mut reviews) =
        reviews_instance(&t, &api, &store, tmp.path(), "127.0.0.21", ok_app().await).await;
    let mut callers = Vec::new();
    for (service, address) in [("productpage", "127.0.0.20"), ("stranger", "127.0.0.22")] {
        let tok = join_token(&api, service).await;
        let proxy = format!("{address}:15001");
        let mut p = telemetry_agent(
            &t.xds,
            &ca,
            &tmp.path().join(service),
            &tok,
            service,
            address,
            &["--http-proxy-addr", &proxy],
        );
        p.wait_for_line("HTTP proxy (explicit mode", Duration::from_secs(20)).await;
        callers.push((p, proxy));
    }
    let (productpage, stranger) = (&callers[0].1, &callers[1].1);

    // Once each caller has learnt where reviews is (5xx until then), the four calls.
    assert_eq!(settled_call(productpage, "/reviews/1").await, 200, "productpage may call reviews");
    assert_eq!(call(productpage, "/admin/users").await, 403, "an explicit deny rule");
    assert_eq!(settled_call(stranger, "/stranger/1").await, 403, "no allow rule for stranger: default deny");
    assert_eq!(call(productpage, "/watched/1").await, 200, "an audit rule refuses nothing");
    // A plaintext caller in a STRICT mesh.
    let mut plain = tokio::net::TcpStream::connect("127.0.0.21:9080").await.unwrap();
    plain.write_all(b"GET /plaintext HTTP/1.1\r\nHost: reviews\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "no answer to plaintext: {}", String::from_utf8_lossy(&answer));

    // Denials, newest first, each with the rule (or the reason) that decided it.
    let denied = entries(&api, "denied=true&service=reviews", |items| {
        items.len() >= 3 && find(items, "/admin/users").is_some() && find(items, "/stranger/1").is_some()
    })
    .await;
    let explicit = find(&denied, "/admin/users").unwrap();
    assert_eq!(explicit["decision"]["kind"], "deny-rule", "{explicit:#}");
    assert_eq!(
        (&explicit["decision"]["policy"], &explicit["decision"]["rule"]),
        (&json!("reviews-callers"), &json!(0))
    );
    assert_eq!(explicit["rbacPolicy"], "reviews-callers/rules/0");
    assert_eq!(
        (&explicit["source"]["service"], &explicit["destination"]["service"]),
        (&json!("productpage"), &json!("reviews"))
    );
    assert_eq!(
        (&explicit["status"], &explicit["method"], &explicit["reporter"]),
        (&json!(403), &json!("GET"), &json!("reviews"))
    );
    let default = find(&denied, "/stranger/1").unwrap();
    assert_eq!(default["decision"]["kind"], "default-deny", "{default:#}");
    assert_eq!(default["source"]["service"], "stranger");
    let plaintext = denied.iter().find(|e| e["protocol"] == "tcp").expect("the plaintext connection");
    assert_eq!(plaintext["decision"]["kind"], "no-mtls-identity", "{plaintext:#}");
    assert_eq!(plaintext["source"]["identity"], Value::Null);
    // The allowed call to /reviews/1 is not sampled (--access-log-sample 0); the audit match is.
    let all = entries(&api, "service=reviews", |items| find(items, "/watched/1").is_some()).await;
    let sampled = all.iter().filter(|e| e["path"] == "/reviews/1" && e["status"] == 200).count();
    assert_eq!(sampled, 0, "successes are sampled, at 0 %: {all:#?}");
    let audited = find(&all, "/watched/1").unwrap();
    assert_eq!((&audited["outcome"], &audited["status"]), (&json!("audited"), &json!(200)));
    assert_eq!(audited["decision"]["kind"], "audit-rule");
    assert_eq!(
        (&audited["decision"]["policy"], &audited["decision"]["rule"]),
        (&json!("reviews-callers"), &json!(2))
    );

    // The agent wrote the same calls as JSON lines on its stdout.
    let line = reviews.wait_for_line("\"path\":\"/admin/users\"", Duration::from_secs(5)).await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((&line["outcome"], &line["policy"]), (&json!("denied"), &json!("reviews-callers/rules/0")));

    // Why: the rule as it is now; once the policy is deleted, the entry still names it, and
    // says it has changed since.
    let why_path = format!("/meshes/shop/access-log/{}/why", explicit["id"].as_str().unwrap());
    let (status, why) = api.get(&why_path).await;
    assert_eq!(status, 200, "{why}");
    assert_eq!(why["decision"]["kind"], "deny-rule");
    assert_eq!((&why["rule"]["exists"], &why["rule"]["changedSinceEntry"]), (&json!(true), &json!(false)));
    assert_eq!(why["rule"]["ruleNow"]["action"], "Deny");
    let (status, body) = api.delete("/meshes/shop/access-policies/reviews-callers").await;
    assert_eq!(status, 204, "{body}");
    let (_, why) = api.get(&why_path).await;
    assert_eq!((&why["rule"]["exists"], &why["rule"]["changedSinceEntry"]), (&json!(false), &json!(true)));
    assert_eq!(why["decision"]["policy"], "reviews-callers");
    let (status, body) = api.get(&format!("/meshes/shop/access-log/{}/why", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404, "{body}");

    // Pages: one entry each, every entry once.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/meshes/shop/access-log?denied=true&limit=1&cursor={c}"),
            None => "/meshes/shop/access-log?denied=true&limit=1".to_owned(),
        };
        let (status, page) = api.get(&q).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(page["items"].as_array().unwrap().iter().map(|e| e["id"].clone()));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let (_, all) = api.get("/meshes/shop/access-log?denied=true&limit=500").await;
    let every: Vec<Value> = all["items"].as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, every);

    // Bad parameters: one problem naming each.
    let (status, problem) = api
        .get("/meshes/shop/access-log?limit=0&since=yesterday&status=7&denied=maybe&cursor=x&service=A_B")
        .await;
    assert_eq!(status, 400, "{problem}");
    let mut fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["cursor", "denied", "limit", "service", "since", "status"]);
    // Another organization sees none of it.
    let other = Api::new(&t, "globex", &token(&db, "globex", Role::Admin).await);
    put(&other, "/meshes/shop", json!({"spec": {}})).await;
    let (status, body) = other.get("/meshes/shop/access-log").await;
    assert_eq!((status, body["items"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    let (status, _) = other.get(&why_path).await;
    assert_eq!(status, 404);
}

/// Stores `requests` successful web → reviews calls in `mesh` of `org`, in the current bucket.
async fn record_calls(store: &trellis_store::Store, org: &str, mesh: &str, requests: u64) {
    use chrono::{DurationRound, TimeDelta, Utc};
    use trellis_model::telemetry::{EdgeCounts, EdgeKey, LatencyHistogram, ResponseClass};
    use trellis_model::{MeshName, OrgSlug, ResourceName};
    let org = store.org_by_slug(&OrgSlug::parse(org).unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let m = tx.mesh_by_name(&MeshName::parse(mesh).unwrap()).await.unwrap().unwrap();
    let mut latency = LatencyHistogram::default();
    (0..requests).for_each(|_| latency.record_ms(12.0));
    let sample = trellis_store::EdgeSample {
        mesh: m.id,
        bucket_start: Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap(),
        key: EdgeKey {
            source: ResourceName::parse("web").unwrap(),
            destination: ResourceName::parse("reviews").unwrap(),
            destination_subset: Default::default(),
            route: None,
            class: ResponseClass::Success,
        },
        counts: EdgeCounts { requests, successes: requests, latency, ..Default::default() },
    };
    tx.record_edges(&[sample]).await.unwrap();
    tx.commit().await.unwrap();
}

async fn scrape(api: &Api, mesh: &str) -> (u16, String) {
    let res =
        api.req(reqwest::Method::GET, &format!("/meshes/{mesh}/metrics/prometheus")).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_meshs_prometheus_series_are_its_own_and_need_a_token() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let acme = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    let acme_admin = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    let globex = Api::new(&t, "globex", &token(&db, "globex", Role::Admin).await);
    for (api, mesh) in [(&acme_admin, "alpha"), (&acme_admin, "beta"), (&globex, "alpha")] {
        put(api, &format!("/meshes/{mesh}"), json!({"spec": {}})).await;
    }
    let store = db.store().await;
    record_calls(&store, "acme", "alpha", 7).await;

    let (status, text) = scrape(&acme, "alpha").await;
    assert_eq!(status, 200, "{text}");
    let series = "mesh=\"alpha\",direction=\"outbound\",src_service=\"web\",dst_service=\"reviews\"";
    assert!(text.contains(&format!("request_total{{{series},classification=\"success\"}} 7\n")), "{text}");
    assert!(text.contains(&format!("response_latency_ms_count{{{series}}} 7\n")), "{text}");
    // The same organization's other mesh, and another organization's mesh of the same name.
    for (api, mesh) in [(&acme, "beta"), (&globex, "alpha")] {
        let (status, text) = scrape(api, mesh).await;
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("src_service"), "{}/{mesh} shows another mesh's series:\n{text}", api.org);
    }
    // Another organization's token on this one's path, and no token at all.
    let intruder = Api { org: "acme".into(), ..globex.clone() };
    assert_eq!(scrape(&intruder, "alpha").await.0, 404);
    let anonymous = reqwest::get(acme.url("/meshes/alpha/metrics/prometheus")).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

/// An application that answers every request with the value of its `x-route-version` header.
async fn echo_app() -> u16 {
    let router = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        headers.get("x-route-version").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// `GET http://reviews.shop:9080/` through the agent's HTTP proxy at `proxy`: status and body.
async fn call_body(proxy: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = client.get("http://reviews.shop:9080/").send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// `trellis <args>` as an operator runs it against `t` with `token`: success, stdout, stderr.
async fn cli(t: &Trellis, token: &str, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = trellis()
        .env("TRELLIS_SERVER", &t.base)
        .env("TRELLIS_TOKEN", token)
        .env("TRELLIS_ORG", "acme")
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .args(args)
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn a_write_can_wait_until_every_proxy_applied_it_and_names_the_one_that_rejected_it() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Admin).await;
    let api = Api::new(&t, "acme", &secret);
    put(&api, "/meshes/shop", json!({"spec": {"defaultAccess": "allow"}})).await;
    let http_port = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for service in ["reviews", "productpage"] {
        put(&api, &format!("/meshes/shop/services/{service}"), http_port.clone()).await;
    }
    let store = db.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ca, _reviews) = reviews_instance(&t, &api, &store, tmp.path(), "127.0.0.30", echo_app().await).await;
    let mut callers = Vec::new();
    for address in ["127.0.0.31", "127.0.0.32"] {
        let tok = join_token(&api, "productpage").await;
        let proxy = format!("{address}:15001");
        let dir = tmp.path().join(address);
        let mut p =
            telemetry_agent(&t.xds, &ca, &dir, &tok, "productpage", address, &["--http-proxy-addr", &proxy]);
        p.wait_for_line("HTTP proxy (explicit mode", Duration::from_secs(20)).await;
        callers.push((p, proxy));
    }
    for (_, proxy) in &callers {
        let mut answer = (0, String::new());
        for _ in 0..100 {
            answer = call_body(proxy).await;
            if answer.0 < 500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(answer, (200, "none".to_owned()), "{proxy} reaches reviews, no route yet");
    }

    // `apply --wait` returns once every proxy applied the route: the very next call has it.
    let file = tmp.path().join("route.yaml");
    for version in ["v1", "v2"] {
        std::fs::write(&file, reviews_route_yaml(version, false)).unwrap();
        let (ok, out, err) =
            cli(&t, &secret, &["apply", "-f", file.to_str().unwrap(), "--wait", "--timeout", "30s"]).await;
        assert!(ok, "{out}\n{err}");
        assert!(out.contains("httproute/reviews") && out.contains("applied by all"), "{out}");
        for (_, proxy) in &callers {
            assert_eq!(call_body(proxy).await, (200, version.to_owned()), "{proxy} serves {version} at once");
        }
    }

    // A wait out of bounds names the parameter.
    let doc: Value = serde_yaml::from_str(&reviews_route_yaml("v3", false)).unwrap();
    let (status, problem) = api.put("/meshes/shop/http-routes/reviews?wait=10m", &doc).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "wait", "{problem}");

    // A frozen proxy keeps its stream and never applies the write: the wait names it stale.
    let (frozen, _) = &callers[1];
    frozen.signal("STOP").await;
    let (status, body) = api.put("/meshes/shop/http-routes/reviews?wait=2s", &doc).await;
    frozen.signal("CONT").await;
    assert_eq!(status, 200, "{body}");
    let wait = &body["status"]["propagation"]["wait"];
    assert_eq!(wait["outcome"], "timedOut", "{body:#}");
    let not_applied = wait["notApplied"].as_array().unwrap();
    assert_eq!(not_applied.len(), 1, "{body:#}");
    assert_eq!(
        (&not_applied[0]["node"], &not_applied[0]["state"]),
        (&json!("productpage-127.0.0.32"), &json!("stale"))
    );
    assert!(wait["waitedMs"].as_u64().unwrap() >= 2000, "{wait}");

    // A route the agents cannot apply (request mirroring): a failing exit naming a proxy and
    // its reason, and the agents keep serving what they had.
    std::fs::write(&file, reviews_route_yaml("v4", true)).unwrap();
    let (ok, out, err) =
        cli(&t, &secret, &["apply", "-f", file.to_str().unwrap(), "--wait", "--timeout", "30s"]).await;
    assert!(!ok, "{out}\n{err}");
    // Whichever proxy answered first is named (every proxy that calls reviews rejects it).
    assert!(err.contains("httproute/reviews: rejected by "), "{err}");
    assert!(
        err.contains("productpage/productpage-127.0.0.3") || err.contains("reviews/reviews-127.0.0.30"),
        "{err}"
    );
    assert!(err.contains("RouteConfiguration") && err.contains("request mirroring"), "{err}");
    assert!(err.contains("not applied by every proxy"), "{err}");
    for (_, proxy) in &callers {
        assert_eq!(call_body(proxy).await, (200, "v3".to_owned()), "{proxy} keeps the last route it applied");
    }

    // Deleting the route, waited on: every caller applied the deletion.
    let (ok, out, err) =
        cli(&t, &secret, &["delete", "httproute", "reviews", "--mesh", "shop", "--wait"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("httproute/reviews deleted; applied by all"), "{out}");
    for (_, proxy) in &callers {
        assert_eq!(call_body(proxy).await, (200, "none".to_owned()));
    }
}
