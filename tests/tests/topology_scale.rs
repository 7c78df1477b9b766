//! The topology of a mesh of 1,000 services and 10,000 edges through the REST API: the first
//! view is grouped to at most 150 nodes in at most 2 MB and still counts every call exactly;
//! a group opens into its members, a service shows its neighbourhood, and asking for every
//! service at once is refused with the parameter named.

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::Value;
use trellis_model::{MeshName, OrgSlug};
use trellis_store::testing::TestDb;
use trellis_tests::synthetic;

fn sum(body: &Value, list: &str, field: impl Fn(&Value) -> &Value) -> u64 {
    body[list].as_array().unwrap().iter().map(|v| field(v).as_u64().unwrap()).sum()
}

#[tokio::test]
async fn a_thousand_services_are_grouped_exactly_and_a_group_opens_into_its_members() {
    let db = TestDb::create().await;
    let (t, api, store, _) = trellis_tests::serve_example_mesh(&db, &[]).await;
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap().id;
    let mut tx = store.tenant(org).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().id;
    tx.commit().await.unwrap();
    let edges = synthetic::edges(1_000, 10);
    let bucket = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let written = synthetic::record(&store, org, mesh, &edges, bucket).await;

    // The first view: groups (one per team of 25), every request of the 10,000 edges in them.
    let res = api.req(reqwest::Method::GET, "/meshes/shop/topology?window=600").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    assert!(bytes.len() <= 2 << 20, "{} bytes", bytes.len());
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let nodes = body["nodes"].as_array().unwrap();
    assert!(nodes.len() <= 150, "{} nodes", nodes.len());
    assert_eq!(nodes.len(), 40);
    assert_eq!((body["grouped"].as_bool(), body["services"].as_u64()), (Some(true), Some(1_000)));
    assert!(nodes.iter().all(|n| n["kind"] == "group" && n["members"] == 25), "{:?}", nodes[0]);
    assert_eq!(sum(&body, "nodes", |n| &n["members"]), 1_000);
    assert_eq!(sum(&body, "edges", |e| &e["metrics"]["requests"]), written, "grouped edges count every call");
    assert_eq!(sum(&body, "edges", |e| &e["merged"]), 10_000);
    assert_eq!(sum(&body, "nodes", |n| &n["metrics"]["requests"]), written, "every call into a member");
    let team3 = nodes.iter().find(|n| n["name"] == "team3-*").unwrap();
    assert_eq!(team3["group"], "team3");
    let into_team3: u64 = edges.iter().filter(|e| e.1 / 25 == 3).map(|e| e.2).sum();
    assert_eq!(team3["metrics"]["requests"].as_u64(), Some(into_team3));

    // A group opened: its 25 members one by one, the rest still grouped, the calls that touch
    // the group exactly.
    let (status, body) = api.get("/meshes/shop/topology?window=600&group=team3").await;
    assert_eq!(status, 200, "{body}");
    let nodes = body["nodes"].as_array().unwrap();
    let services: Vec<&str> =
        nodes.iter().filter(|n| n["kind"] == "service").map(|n| n["service"].as_str().unwrap()).collect();
    let members = services.iter().filter(|s| s.starts_with("team3-")).count();
    assert_eq!(members, 25, "{services:?}");
    // Other teams stay grouped (a team with one service in view is that service).
    assert!(nodes.iter().any(|n| n["kind"] == "group" && n["members"].as_u64() > Some(1)), "{services:?}");
    assert!(!nodes.iter().any(|n| n["name"] == "team3-*"));
    assert!(nodes.len() <= 150);
    let touching: u64 = edges.iter().filter(|e| e.0 / 25 == 3 || e.1 / 25 == 3).map(|e| e.2).sum();
    assert_eq!(sum(&body, "edges", |e| &e["metrics"]["requests"]), touching);

    // A service's neighbourhood: itself, its 10 callees and 10 callers, ungrouped.
    let (status, body) = api.get("/meshes/shop/topology?window=600&service=team3-svc80").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 21, "{body}");
    assert_eq!(body["edges"].as_array().unwrap().len(), 20);
    assert_eq!(body["grouped"], false);

    // Every service at once is bounded: refused over 5,000 edges, naming the parameter;
    // allowed for a group's neighbourhood.
    let (status, body) = api.get("/meshes/shop/topology?window=600&grouping=none").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "grouping", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("10000 edges"), "{body}");
    let (status, body) = api.get("/meshes/shop/topology?window=600&grouping=none&group=team3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["grouped"], false);
    assert_eq!(body["nodes"].as_array().unwrap().len() as u64, body["services"].as_u64().unwrap());
    assert_eq!(sum(&body, "edges", |e| &e["metrics"]["requests"]), touching);

    // Bad parameters name themselves.
    for (query, field) in
        [("group=team3-svc1", "group"), ("grouping=all", "grouping"), ("service=No%20Such", "service")]
    {
        let (status, body) = api.get(&format!("/meshes/shop/topology?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
    t.stop(std::time::Duration::from_secs(10)).await;
}
