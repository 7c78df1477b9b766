//! The console's observe pages, with telemetry recorded through the store as ingestion
//! writes it: the topology shows an edge with its figures and version split, a service's
//! charts render, a denied call's "why" names the rule (and notices when it changes), and
//! the impact preview beside the AccessPolicy editor shows the edge a draft would close —
//! in a real headless Chromium; and the pages are valid HTML that another organization
//! cannot open.

use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use fantoccini::Locator;
use serde_json::{Value, json};
use trellis_model::telemetry::{EdgeCounts, EdgeKey, LatencyHistogram, ResponseClass};
use trellis_model::{MeshName, OrgSlug, ResourceName, Role, Tags};
use trellis_store::testing::TestDb;
use trellis_store::{AccessLogRecord, EdgeSample};
use trellis_tests::browser::Chromium;
use trellis_tests::console::{
    OrgIds, as_user, assert_hidden_from, assert_valid_html, csrf_of, login_link, page_loaded, session, start,
};
use trellis_tests::{Api, Trellis, token};

/// One recorded edge: source, destination, the destination's subset (`version=v1`, or
/// empty), requests, successes, and the latency of every request in ms.
struct Traffic<'a>(&'a str, &'a str, &'a str, u64, u64, f64);

/// Records `traffic` in the current 10 s bucket of mesh `shop` of `org`.
async fn record_edges(db: &TestDb, org: &str, traffic: &[Traffic<'_>]) {
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse(org).unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let bucket_start = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let samples: Vec<EdgeSample> = traffic
        .iter()
        .map(|Traffic(source, destination, subset, requests, successes, ms)| {
            let mut latency = LatencyHistogram::default();
            for _ in 0..*requests {
                latency.record_ms(*ms);
            }
            EdgeSample {
                mesh: mesh.id,
                bucket_start,
                key: EdgeKey {
                    source: ResourceName::parse(source).unwrap(),
                    destination: ResourceName::parse(destination).unwrap(),
                    destination_subset: Tags::parse_joined(subset).unwrap(),
                    route: None,
                    class: ResponseClass::Success,
                },
                counts: EdgeCounts {
                    requests: *requests,
                    successes: *successes,
                    latency,
                    ..Default::default()
                },
            }
        })
        .collect();
    for chunk in samples.chunks(1000) {
        tx.record_edges(chunk).await.unwrap();
    }
    tx.commit().await.unwrap();
    store.close().await;
}

/// Records that reviews' proxy refused a GET from `caller` with the RBAC policy `rbac`.
async fn record_denial(db: &TestDb, org: &str, caller: &str, rbac: Option<&str>) {
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse(org).unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let entry = AccessLogRecord {
        mesh_id: mesh.id.as_uuid(),
        logged_at: Utc::now(),
        reporter: "reviews".into(),
        direction: "inbound".into(),
        protocol: "http".into(),
        outcome: "denied".into(),
        source_service: Some(caller.into()),
        source_identity: Some(format!("spiffe://{}/mesh/shop/service/{caller}", mesh.trust_domain.as_str())),
        source_address: Some("10.0.0.9:41000".into()),
        destination_service: Some("reviews".into()),
        destination_identity: None,
        method: Some("GET".into()),
        authority: Some("reviews.shop:9080".into()),
        path: Some("/reviews/1".into()),
        status: Some(403),
        response_flags: String::new(),
        response_details: "rbac_access_denied".into(),
        rbac_policy: rbac.map(str::to_owned),
        audit_policy: None,
        route: None,
        upstream_cluster: None,
        duration_ms: Some(0.4),
        bytes_received: Some(0),
        bytes_sent: Some(19),
    };
    tx.record_access_log(&[entry]).await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;
}

async fn put(api: &Api, path: &str, doc: Value) {
    let (status, body) = api.put(path, &doc).await;
    assert!(status == 200 || status == 201, "{path}: {body}");
}

/// reviews admits productpage, and denies `stranger` by its first rule.
fn reviews_callers(denied: &str) -> Value {
    json!({
        "apiVersion": "trellis.dev/v1",
        "kind": "AccessPolicy",
        "spec": {
            "targetRef": { "service": "reviews" },
            "rules": [
                { "action": "Deny", "from": [{ "service": denied }] },
                { "action": "Allow", "from": [{ "service": "productpage" }] },
            ],
        },
    })
}

/// Mesh `shop` of `org` (STRICT, deny by default) with productpage → reviews (v1 750,
/// v2 250 requests, all fine, 20 ms) → ratings (500, 5 failed), and reviews' policy.
async fn shop_with_traffic(db: &TestDb, t: &Trellis, org: &str) -> Api {
    let api = Api::new(t, org, &token(db, org, Role::Admin).await);
    put(&api, "/meshes/shop", json!({ "spec": { "mtls": { "mode": "STRICT" }, "defaultAccess": "deny" } }))
        .await;
    for s in ["productpage", "reviews", "ratings", "details", "stranger", "intruder"] {
        put(
            &api,
            &format!("/meshes/shop/services/{s}"),
            json!({ "spec": { "ports": [{ "port": 9080, "protocol": "http" }] } }),
        )
        .await;
    }
    put(&api, "/meshes/shop/access-policies/reviews-callers", reviews_callers("stranger")).await;
    record_edges(
        db,
        org,
        &[
            Traffic("productpage", "reviews", "version=v1", 750, 750, 20.0),
            Traffic("productpage", "reviews", "version=v2", 250, 250, 20.0),
            Traffic("reviews", "ratings", "", 500, 495, 8.0),
        ],
    )
    .await;
    record_denial(db, org, "stranger", Some("reviews-callers/rules/0")).await;
    api
}

async fn text_of(b: &fantoccini::Client, locator: Locator<'_>) -> String {
    b.wait().at_most(Duration::from_secs(5)).for_element(locator).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn topology_metrics_why_denied_and_impact_preview_show_the_recorded_traffic() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    // After each page load: it asked nothing of any other host, and is saved as a screenshot.
    let loaded = |name: &'static str| page_loaded(b, &t.base, name);
    b.goto(&login_link(&t)).await.unwrap();
    let api = shop_with_traffic(&db, &t, "default").await;
    let mesh = format!("{}/orgs/default/meshes/shop", t.base);

    // From the mesh's page to its topology: the edge with its figures, split and mTLS.
    b.goto(&mesh).await.unwrap();
    loaded("observe-mesh").await;
    b.find(Locator::LinkText("Topology")).await.unwrap().click().await.unwrap();
    let row = text_of(b, Locator::Id("row-productpage-reviews")).await;
    // 1,000 requests in the 5-minute window.
    for shown in ["3.33", "100.0%", "ms", "version=v1 75% · version=v2 25%", "yes"] {
        assert!(row.contains(shown), "{shown:?} missing from the edge's row: {row}");
    }
    let label = b.find(Locator::Css("#edge-productpage-reviews text")).await.unwrap().text().await.unwrap();
    assert!(label.starts_with("3.33 rps · 100.0% · p99 "), "{label}");
    let ratings = text_of(b, Locator::Id("row-reviews-ratings")).await;
    assert!(ratings.contains("99.0%"), "{ratings}");
    assert!(b.find(Locator::Css("g.edge.mtls")).await.is_ok(), "a STRICT mesh's edges are marked mTLS");
    loaded("topology").await;

    // Filtered by ratings: only its neighbourhood.
    b.find(Locator::Id("topology-service")).await.unwrap().send_keys("ratings").await.unwrap();
    b.find(Locator::XPath("//button[text()='Show']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css("g.node.focus")).await.unwrap();
    assert!(
        b.find(Locator::Id("row-productpage-reviews")).await.is_err(),
        "productpage is not ratings' neighbour"
    );
    b.find(Locator::Id("row-reviews-ratings")).await.unwrap();
    loaded("topology-ratings").await;

    // The service's golden metrics, with charts.
    b.goto(&format!("{mesh}/services/reviews/metrics")).await.unwrap();
    assert_eq!(text_of(b, Locator::Id("total-requests")).await, "1000");
    assert_eq!(text_of(b, Locator::Id("total-success")).await, "100.0%");
    assert!(text_of(b, Locator::Id("total-p99")).await.ends_with(" ms"));
    for chart in ["chart-rps", "chart-success", "chart-latency"] {
        let line = b.find(Locator::Css(&format!("#{chart} polyline"))).await.unwrap();
        let points = line.attr("points").await.unwrap().unwrap_or_default();
        assert!(!points.is_empty(), "{chart} draws a line");
    }
    let rect = b.find(Locator::Id("chart-rps")).await.unwrap().rectangle().await.unwrap();
    assert!(rect.2 > 100.0 && rect.3 > 50.0, "the chart is drawn at a readable size: {rect:?}");
    // Its health, as the API reports it: proxies, certificates, the CA, the last rejection.
    let (status, health) = api.get("/meshes/shop/services/reviews/health").await;
    assert_eq!(status, 200, "{health}");
    let dp = &health["dataplanes"];
    assert_eq!(
        text_of(b, Locator::Id("health-proxies")).await,
        format!("{} online, {} offline", dp["online"], dp["offline"])
    );
    assert_eq!(
        text_of(b, Locator::Id("health-sync")).await,
        format!("{} in sync, {} syncing, {} rejecting it", dp["inSync"], dp["syncing"], dp["rejected"])
    );
    let ca_days = health["ca"]["daysToExpiry"].as_i64().expect("the mesh has an active CA");
    assert!(text_of(b, Locator::Id("health-ca")).await.starts_with(&format!("in {ca_days} days (")));
    assert!(health["lastNack"].is_null(), "{health}");
    assert_eq!(text_of(b, Locator::Id("health-nack")).await, "none");
    // No caller proxy reported reviews' endpoints: the page says so, with the age it reads.
    assert_eq!(health["endpoints"]["reports"], serde_json::json!([]), "{health}");
    assert_eq!(
        text_of(b, Locator::Id("health-endpoints")).await,
        format!(
            "no caller proxy online reported them in the last {} s",
            health["endpoints"]["maxReportAgeSeconds"]
        )
    );
    loaded("service-metrics").await;

    // Denied calls, and why: rule 0 of reviews-callers, unchanged since.
    b.goto(&mesh).await.unwrap();
    loaded("observe-mesh-again").await;
    b.find(Locator::LinkText("Denied calls")).await.unwrap().click().await.unwrap();
    let denied = text_of(b, Locator::Id("denied-calls")).await;
    assert!(
        denied.contains("stranger") && denied.contains("denied by rule 0 of AccessPolicy reviews-callers"),
        "{denied}"
    );
    loaded("denied").await;
    b.find(Locator::LinkText("Why?")).await.unwrap().click().await.unwrap();
    assert_eq!(
        text_of(b, Locator::Id("why-decision")).await,
        "denied by rule 0 of AccessPolicy reviews-callers"
    );
    assert!(text_of(b, Locator::Id("why-rule")).await.contains("service: stranger"));
    assert!(text_of(b, Locator::Id("why-rule-state")).await.contains("unchanged"));
    loaded("why").await;
    // The rule is changed afterwards: the page says so and shows it as it is now.
    put(&api, "/meshes/shop/access-policies/reviews-callers", reviews_callers("intruder")).await;
    b.refresh().await.unwrap();
    assert!(text_of(b, Locator::Id("why-rule-state")).await.contains("changed since"));
    assert!(text_of(b, Locator::Id("why-rule")).await.contains("service: intruder"));
    loaded("why-changed").await;

    // Impact preview beside the policy's editor: a draft that admits only `details` would
    // deny productpage's 1,000 calls to reviews.
    b.goto(&format!("{mesh}/config/access-policies/reviews-callers")).await.unwrap();
    loaded("access-policy").await;
    let draft = "apiVersion: trellis.dev/v1
kind: AccessPolicy
metadata:
  name: reviews-callers
  mesh: shop
spec:
  targetRef:
    service: reviews
  rules:
    - action: Allow
      from:
        - service: details
";
    let editor = b.find(Locator::Id("yaml-editor")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys(draft).await.unwrap();
    b.find(Locator::XPath("//button[text()='Preview impact']")).await.unwrap().click().await.unwrap();
    let impact = text_of(b, Locator::Id("impact-edges")).await;
    assert!(
        impact.contains("productpage") && impact.contains("reviews") && impact.contains("1000"),
        "{impact}"
    );
    let after =
        b.find(Locator::Css("#impact-edges tbody tr td:nth-child(5)")).await.unwrap().text().await.unwrap();
    assert!(after.starts_with("denied"), "{after}");
    let kept =
        b.find(Locator::Id("yaml-editor")).await.unwrap().prop("value").await.unwrap().unwrap_or_default();
    assert!(kept.contains("service: details"), "the draft stays in the editor: {kept}");
    loaded("impact-preview").await;
    // Nothing was saved.
    let (_, stored) = api.get("/meshes/shop/access-policies/reviews-callers").await;
    assert_eq!(stored["spec"]["rules"][0]["from"][0]["service"], "intruder");

    // Unexpected traffic: none recorded in the window.
    b.goto(&format!("{mesh}/events")).await.unwrap();
    loaded("events-observe").await;
    chromium.close().await;
}

#[tokio::test]
async fn observe_pages_are_valid_html_group_a_large_mesh_and_are_hidden_from_other_organizations() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let owner = session(&db, "acme", "olivia", Role::Owner).await;
    let stranger = session(&db, "globex", "sam", Role::Owner).await;
    shop_with_traffic(&db, &t, "acme").await;
    let get = |secret: &str, path: &str| {
        as_user(secret, http.get(format!("{}/orgs/acme/meshes/shop{path}", t.base))).send()
    };

    let denied = get(&owner, "/denied").await.unwrap().text().await.unwrap();
    let why = denied
        .split("/orgs/acme/meshes/shop/denied/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let pages = [
        "".to_owned(),
        "/topology".into(),
        "/topology?window=3600&service=reviews&group=".into(),
        "/services/reviews/metrics?window=86400".into(),
        "/denied".into(),
        format!("/denied/{why}"),
    ];
    for path in &pages {
        let res = get(&owner, path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_valid_html(path, &res.text().await.unwrap()).await;
    }
    // A window the core refuses is named.
    let res = get(&owner, "/topology?window=5").await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("window must be 10 to"));

    // The impact preview posts the editor's draft with the CSRF token; a bad draft comes back
    // with its field path; without the token nothing is previewed.
    let page = get(&owner, "/config/access-policies/reviews-callers").await.unwrap().text().await.unwrap();
    assert!(page.contains("Preview impact"), "the AccessPolicy editor offers the preview");
    let csrf = csrf_of(&page);
    let draft = "apiVersion: trellis.dev/v1\nkind: AccessPolicy\nmetadata:\n  name: reviews-callers\nspec:\n  targetRef:\n    service: reviews\n  rules:\n    - action: Deny\n      from:\n        - service: productpage\n";
    let preview = |csrf: String, yaml: String| {
        as_user(&owner, http.post(format!("{}/orgs/acme/meshes/shop/impact", t.base)))
            .form(&[("csrf", csrf), ("yaml", yaml), ("version", "1".into())])
            .send()
    };
    let res = preview(csrf.clone(), draft.into()).await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("impact-edges") && html.contains("reviews-callers/rules/0"), "{html}");
    assert_valid_html("impact preview", &html).await;
    let res = preview(csrf.clone(), draft.replace("action: Deny", "action: Maybe")).await.unwrap();
    assert_eq!(res.status(), 422);
    let html = res.text().await.unwrap();
    assert!(html.contains("spec.rules[0].action"), "{html}");
    assert_valid_html("refused impact preview", &html).await;
    assert_eq!(preview("forged".into(), draft.into()).await.unwrap().status(), 403);

    // Another organization's user finds none of it: every page and form is a 404.
    let stranger_csrf = csrf_of(
        &as_user(&stranger, http.get(format!("{}/orgs/globex", t.base)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let mut ids = OrgIds::new("acme", "shop");
    ids.service = "reviews".into();
    ids.kind = "access-policies".into();
    ids.resource = "reviews-callers".into();
    ids.denied = why.clone();
    assert_hidden_from(&t, &stranger, &stranger_csrf, &ids, "productpage").await;

    // 200 services in 10 teams: the topology groups them by name prefix, and a group opens.
    let names: Vec<String> = (0..200).map(|i| format!("team{}-svc{i}", i % 10)).collect();
    let traffic: Vec<Traffic<'_>> =
        (0..200).map(|i| Traffic(&names[i], &names[(i * 7 + 1) % 200], "", 10, 10, 5.0)).collect();
    record_edges(&db, "acme", &traffic).await;
    let page = get(&owner, "/topology").await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"node-team3-*\""), "services are grouped:\n{page}");
    assert!(!page.contains("id=\"node-team3-svc3\""), "{page}");
    assert_valid_html("grouped topology", &page).await;
    let page = get(&owner, "/topology?group=team3").await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"node-team3-svc3\"") && page.contains("id=\"node-team2-*\""), "{page}");
}
