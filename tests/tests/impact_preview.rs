//! Impact preview against a real `trellis serve`: a proposed AccessPolicy, not saved, is
//! judged against the edges the mesh recorded (written through the store as ingestion
//! writes them), and exactly the calls whose fate it changes are reported, with the rule.

use std::time::Instant;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use trellis_model::telemetry::{EdgeCounts, EdgeKey, ResponseClass};
use trellis_model::{MeshName, OrgSlug, ResourceName, Role};
use trellis_store::testing::TestDb;
use trellis_store::{EdgeSample, Store};
use trellis_tests::{Api, serve_example_mesh, token};

/// Records `edges` (source, destination, HTTP requests, TCP connections) in the example
/// mesh `shop` of `acme`, in the current 10 s bucket.
async fn record(store: &Store, edges: &[(String, String, u64, u64)]) {
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let bucket_start = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let samples: Vec<EdgeSample> = edges
        .iter()
        .map(|(source, destination, requests, tcp)| EdgeSample {
            mesh: mesh.id,
            bucket_start,
            key: EdgeKey {
                source: ResourceName::parse(source).unwrap(),
                destination: ResourceName::parse(destination).unwrap(),
                destination_subset: Default::default(),
                route: None,
                class: ResponseClass::Success,
            },
            counts: EdgeCounts {
                requests: *requests,
                successes: *requests,
                tcp_connections: *tcp,
                ..Default::default()
            },
        })
        .collect();
    for chunk in samples.chunks(1000) {
        tx.record_edges(chunk).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn edge(source: &str, destination: &str, requests: u64, tcp: u64) -> (String, String, u64, u64) {
    (source.into(), destination.into(), requests, tcp)
}

fn access_policy(name: Option<&str>, target: &str, rules: Value) -> Value {
    let mut doc = json!({
        "apiVersion": "trellis.dev/v1",
        "kind": "AccessPolicy",
        "spec": { "targetRef": { "service": target }, "rules": rules },
    });
    if let Some(name) = name {
        doc["metadata"] = json!({ "name": name });
    }
    doc
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "trellis.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "ports": [{ "port": 8080, "protocol": "http" }] },
    })
}

fn changed(preview: &Value) -> Vec<(String, String, u64, String, String)> {
    preview["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_owned(),
                e["destination"].as_str().unwrap().to_owned(),
                e["calls"].as_u64().unwrap(),
                e["after"]["verdict"].as_str().unwrap().to_owned(),
                e["after"]["rule"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_proposed_deny_reports_exactly_the_calls_of_the_edge_it_closes() {
    let db = TestDb::create().await;
    let (t, api, store, _) = serve_example_mesh(&db, &[]).await;
    record(
        &store,
        &[
            edge("productpage", "reviews", 900, 0),
            edge("reviews", "ratings", 450, 0),
            edge("productpage", "db", 0, 40),
        ],
    )
    .await;

    // examples/reviews.yaml allows productpage's GET /reviews… only: the edge's calls depend
    // on the request. A deny-all for productpage closes that edge and nothing else.
    let deny = access_policy(
        Some("block-productpage"),
        "reviews",
        json!([{ "action": "Deny", "from": [{ "service": "productpage" }] }]),
    );
    let (status, preview) = api.post("/meshes/shop/impact-preview", &deny).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        changed(&preview),
        [("productpage".into(), "reviews".into(), 900, "denied".into(), "block-productpage/rules/0".into())]
    );
    assert_eq!(preview["edges"][0]["before"]["verdict"], "dependsOnRequest");
    assert_eq!(preview["edges"][0]["before"]["rule"], "reviews-callers/rules/0");
    assert_eq!(preview["calls"], json!({ "newlyDenied": 900, "newlyAllowed": 0, "dependsOnRequest": 0 }));
    assert_eq!(preview["windowSeconds"], 3600);

    // Replacing the example's policy with an unconditional allow opens the edge fully.
    let open = access_policy(
        Some("reviews-callers"),
        "reviews",
        json!([{ "action": "Allow", "from": [{ "service": "productpage" }] }]),
    );
    let (status, preview) = api.post("/meshes/shop/impact-preview", &open).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        changed(&preview),
        [("productpage".into(), "reviews".into(), 900, "allowed".into(), "reviews-callers/rules/0".into())]
    );

    // Nothing was saved: the proposed policy does not exist.
    let (status, _) = api.get("/meshes/shop/access-policies/block-productpage").await;
    assert_eq!(status, 404);

    // A viewer may ask (it writes nothing); another organization cannot see the mesh.
    let viewer = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    assert_eq!(viewer.post("/meshes/shop/impact-preview", &deny).await.0, 200);
    let stranger = Api::new(&t, "other", &token(&db, "other", Role::Admin).await);
    assert_eq!(stranger.post("/meshes/shop/impact-preview", &deny).await.0, 404);
    store.close().await;
}

#[tokio::test]
async fn among_ten_thousand_edges_exactly_the_three_violators_are_flagged() {
    let db = TestDb::create().await;
    let (_t, api, store, _) = serve_example_mesh(&db, &[]).await;
    let violators = ["legacy-a", "legacy-b", "legacy-c"];
    for name in violators.iter().chain(&["billing"]) {
        let (status, body) = api.put(&format!("/meshes/shop/services/{name}"), &service(name)).await;
        assert_eq!(status, 201, "{body}");
    }
    // Today billing admits productpage and the three legacy callers.
    let mut callers = vec![json!({ "service": "productpage" })];
    callers.extend(violators.iter().map(|v| json!({ "service": v })));
    let current =
        access_policy(Some("billing-callers"), "billing", json!([{ "action": "Allow", "from": callers }]));
    assert_eq!(api.put("/meshes/shop/access-policies/billing-callers", &current).await.0, 201);

    // 9,996 edges among services that no policy names, then billing's four callers.
    let mut edges: Vec<_> =
        (0..9_996).map(|i| edge(&format!("svc-{}", i / 100), &format!("dst-{}", i % 100), 5, 0)).collect();
    edges.push(edge("productpage", "billing", 1_000, 0));
    edges.extend(violators.iter().enumerate().map(|(i, v)| edge(v, "billing", 10 + i as u64, 0)));
    record(&store, &edges).await;

    // The proposal: billing admits productpage only.
    let proposed = access_policy(
        Some("billing-callers"),
        "billing",
        json!([{ "action": "Allow", "from": [{ "service": "productpage" }] }]),
    );
    let started = Instant::now();
    let (status, preview) = api.post("/meshes/shop/impact-preview", &proposed).await;
    eprintln!("impact preview over {} edges: {:?}", edges.len(), started.elapsed());
    assert_eq!(status, 200, "{preview}");
    let flagged = changed(&preview);
    assert_eq!(
        flagged,
        [
            ("legacy-c".into(), "billing".into(), 12, "denied".into(), "default-deny".into()),
            ("legacy-b".into(), "billing".into(), 11, "denied".into(), "default-deny".into()),
            ("legacy-a".into(), "billing".into(), 10, "denied".into(), "default-deny".into()),
        ]
    );
    assert_eq!(preview["edgesChanged"], 3);
    assert_eq!(preview["calls"]["newlyDenied"], 33);
    store.close().await;
}

#[tokio::test]
async fn a_bad_proposal_is_refused_with_the_field_that_is_wrong() {
    let db = TestDb::create().await;
    let (_t, api, store, _) = serve_example_mesh(&db, &[]).await;
    let rules = json!([{ "action": "Deny", "from": [{ "service": "productpage" }] }]);

    let (status, body) =
        api.post("/meshes/shop/impact-preview", &access_policy(None, "reviews", rules.clone())).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "metadata.name");

    let unknown = access_policy(Some("p"), "nowhere", rules.clone());
    let (status, body) = api.post("/meshes/shop/impact-preview", &unknown).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "spec.targetRef.service");

    let fine = access_policy(Some("p"), "reviews", rules);
    let (status, body) = api.post("/meshes/shop/impact-preview?window=5", &fine).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "window");

    let mut wrong_kind = fine.clone();
    wrong_kind["kind"] = json!("HTTPRoute");
    assert_eq!(api.post("/meshes/shop/impact-preview", &wrong_kind).await.0, 422);
    store.close().await;
}
