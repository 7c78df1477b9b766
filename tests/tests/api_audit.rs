//! The audit log: every state-changing call, newest first, filtered and paginated.

use serde_json::json;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, send, token, trellis};

#[tokio::test]
async fn writes_are_audited_with_actor_target_and_request_id() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let admin = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    let (status, _) = send(
        admin
            .req(reqwest::Method::PUT, "/meshes/m")
            .header("x-request-id", "req-42")
            .json(&json!({"spec": {}})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        admin
            .put("/meshes/m/services/a", &json!({"spec": {"ports": [{"port": 80, "protocol": "http"}]}}))
            .await
            .0,
        201
    );
    let (_, tok) = admin.post("/tokens", &json!({"name": "ci", "role": "viewer"})).await;
    assert_eq!(admin.delete(&format!("/tokens/{}", tok["id"].as_str().unwrap())).await.0, 200);
    // A read is not audited; a refused write is not either.
    admin.get("/meshes/m").await;
    assert_eq!(admin.put("/meshes/m/services/b", &json!({"spec": {"ports": []}})).await.0, 422);

    let (status, log) = admin.get("/audit-events").await;
    assert_eq!(status, 200, "{log}");
    let actions: Vec<&str> =
        log["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["token.revoke", "token.create", "service.create", "mesh.create"]);
    let mesh_event = &log["items"][3];
    assert_eq!(mesh_event["target"], "meshes/m");
    assert_eq!(mesh_event["requestId"], "req-42");
    assert!(mesh_event["actor"].as_str().unwrap().starts_with("token:"));

    let (_, filtered) = admin.get("/audit-events?action=service.create").await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let (_, page1) = admin.get("/audit-events?limit=3").await;
    let cursor = page1["nextCursor"].as_str().unwrap().to_owned();
    let (_, page2) = admin.get(&format!("/audit-events?limit=3&cursor={cursor}")).await;
    assert_eq!(page2["items"][0]["action"], "mesh.create");
    assert!(page2["nextCursor"].is_null());
    assert_eq!(admin.get("/audit-events?since=yesterday").await.0, 400);

    // Editors and viewers may not read it; other organizations get 404.
    let editor = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    assert_eq!(editor.get("/audit-events").await.0, 403);
    let other = Api::new(&t, "acme", &token(&db, "other", Role::Owner).await);
    assert_eq!(other.get("/audit-events").await.0, 404);
}
