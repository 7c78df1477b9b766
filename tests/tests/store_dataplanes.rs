//! Dataplane registration and the propagation ledger, against real PostgreSQL and through
//! the REST API.

use std::time::Duration;

use serde_json::json;
use trellis_model::{MeshName, Role};
use trellis_store::Registration;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, token, trellis};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn reg(node: &str, version: &str) -> Registration {
    Registration {
        service: "reviews".into(),
        node_id: node.into(),
        client: "grpc".into(),
        address: Some("10.0.0.7".parse().unwrap()),
        ports: vec![9080],
        tags: json!({ "version": version }),
        zone: "z1".into(),
        replica: "replica-1".into(),
    }
}

#[tokio::test]
async fn registration_bumps_the_mesh_and_the_ledger_shows_sync_state() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    let editor = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    assert_eq!(editor.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);

    let store = db.store().await;
    let org = store.org_by_slug(&trellis_model::OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let revision = || async {
        let mut tx = store.tenant(org.id).await.unwrap();
        tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().revision
    };
    let mesh_id = {
        let mut tx = store.tenant(org.id).await.unwrap();
        tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().id
    };
    let r0 = revision().await;

    // Registering changes the mesh's endpoints: a new revision.
    let mut tx = store.tenant(org.id).await.unwrap();
    let a = tx.register_dataplane(mesh_id, &reg("reviews-a", "v1")).await.unwrap();
    let b = tx.register_dataplane(mesh_id, &reg("reviews-b", "v2")).await.unwrap();
    tx.commit().await.unwrap();
    let r1 = revision().await;
    assert!(r1 > r0);
    // A heartbeat does not.
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.dataplane_seen(a.id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(revision().await, r1);
    // Re-registering the same node updates it in place.
    let mut tx = store.tenant(org.id).await.unwrap();
    let a2 = tx.register_dataplane(mesh_id, &reg("reviews-a", "v3")).await.unwrap();
    assert_eq!(a2.id, a.id);
    assert_eq!(a2.tags, json!({"version": "v3"}));
    // Two registrations of one node in one transaction (the ledger writer commits a batch
    // of them at once) are told apart: the first one's end leaves the second online.
    let a3 = tx.register_dataplane(mesh_id, &reg("reviews-a", "v3")).await.unwrap();
    assert!(a3.connected_at > a2.connected_at, "{} vs {}", a3.connected_at, a2.connected_at);
    tx.dataplane_offline(a.id, a2.connected_at).await.unwrap();
    // Ledger: a sent+ACKed, b sent+NACKed.
    tx.ledger_sent(a.id, CDS, "c-1", "1", r1).await.unwrap();
    tx.ledger_acked(a.id, CDS, "c-1", Some(12.5)).await.unwrap();
    tx.ledger_sent(b.id, CDS, "c-1", "1", r1).await.unwrap();
    tx.ledger_nacked(b.id, CDS, "c-1", "cluster reviews: unknown lb policy").await.unwrap();
    tx.commit().await.unwrap();

    let (status, list) = api.get("/meshes/shop/dataplanes").await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let by_node = |n: &str| items.iter().find(|i| i["nodeId"] == n).unwrap().clone();
    let ia = by_node("reviews-a");
    assert_eq!(ia["state"], "in-sync");
    assert_eq!(ia["address"], "10.0.0.7");
    assert_eq!(ia["sync"][0]["convergenceMs"], 12.5);
    let ib = by_node("reviews-b");
    assert_eq!(ib["state"], "rejected");
    assert_eq!(ib["sync"][0]["nack"]["error"], "cluster reviews: unknown lb policy");

    // A late "offline" of an older stream leaves a newer registration of the node online.
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.dataplane_offline(b.id, b.connected_at - chrono::Duration::seconds(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(by_state(&api, "reviews-b").await, "rejected", "still online");
    // Offline: a new revision; after the grace period the leader prunes it.
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.dataplane_offline(b.id, b.connected_at).await.unwrap();
    tx.commit().await.unwrap();
    assert!(revision().await > r1);
    assert_eq!(by_state(&api, "reviews-b").await, "offline");
    assert_eq!(
        store.prune_dataplanes(Duration::from_secs(3600)).await.unwrap(),
        0,
        "within the grace period"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.prune_dataplanes(Duration::from_millis(10)).await.unwrap(), 1);
    let (_, list) = api.get("/meshes/shop/dataplanes").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Another organization sees nothing.
    let other = Api::new(&t, "acme", &token(&db, "other", Role::Owner).await);
    assert_eq!(other.get("/meshes/shop/dataplanes").await.0, 404);
}

async fn by_state(api: &Api, node: &str) -> String {
    let (_, list) = api.get("/meshes/shop/dataplanes").await;
    list["items"].as_array().unwrap().iter().find(|i| i["nodeId"] == node).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}
