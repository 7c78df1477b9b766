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
    // A proxy that ends its stream itself leaves at once, with a new revision; the end of an
    // older stream of the node leaves a newer registration.
    let r2 = revision().await;
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.dataplane_left(a.id, a2.connected_at).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(revision().await, r2, "an older stream's end changes nothing");
    assert_eq!(by_state(&api, "reviews-a").await, "in-sync");
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.dataplane_left(a.id, a3.connected_at).await.unwrap();
    tx.commit().await.unwrap();
    assert!(revision().await > r2);
    let (_, list) = api.get("/meshes/shop/dataplanes").await;
    assert_eq!(list["items"], json!([]), "gone without a grace period");
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

#[tokio::test]
async fn a_services_health_counts_its_proxies_and_names_its_last_rejection_and_expiries() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    let editor = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    assert_eq!(editor.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);
    let service = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    assert_eq!(editor.put("/meshes/shop/services/reviews", &service).await.0, 201);

    let store = db.store().await;
    let org = store.org_by_slug(&trellis_model::OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().id;
    // Three proxies: in sync, rejecting, and gone.
    let a = tx.register_dataplane(mesh, &reg("reviews-a", "v1")).await.unwrap();
    let b = tx.register_dataplane(mesh, &reg("reviews-b", "v1")).await.unwrap();
    let c = tx.register_dataplane(mesh, &reg("reviews-c", "v1")).await.unwrap();
    for d in [&a, &b] {
        tx.ledger_sent(d.id, CDS, "v1", "n1", 1).await.unwrap();
    }
    tx.ledger_acked(a.id, CDS, "v1", None).await.unwrap();
    tx.ledger_nacked(b.id, CDS, "v1", "cluster reviews: bad").await.unwrap();
    tx.dataplane_offline(c.id, c.connected_at).await.unwrap();
    // The SVIDs they presented; b's is renewed later (a later expiry replaces it).
    let now = chrono::Utc::now();
    tx.dataplane_svid(a.id, "aa", now + chrono::TimeDelta::days(3)).await.unwrap();
    tx.dataplane_svid(b.id, "bb", now + chrono::TimeDelta::hours(30)).await.unwrap();
    tx.dataplane_svid(c.id, "cc", now + chrono::TimeDelta::hours(1)).await.unwrap();
    tx.commit().await.unwrap();

    let (status, h) = api.get("/meshes/shop/services/reviews/health").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        h["dataplanes"],
        json!({"total": 3, "online": 2, "offline": 1, "inSync": 1, "syncing": 0, "rejected": 1}),
        "{h:#}"
    );
    // The offline proxy's certificate does not count; b's 30 h is the earliest held.
    assert_eq!((&h["svid"]["daysToExpiry"], &h["svid"]["proxies"]), (&json!(1), &json!(2)), "{h:#}");
    assert!(h["ca"]["daysToExpiry"].as_i64().unwrap() > 3000, "a new root lasts ten years: {h:#}");
    let nack = &h["lastNack"];
    assert_eq!(
        (&nack["node"], &nack["type"], &nack["error"], &nack["outstanding"]),
        (&json!("reviews-b"), &json!("Cluster"), &json!("cluster reviews: bad"), &json!(true)),
        "{h:#}"
    );
    // No caller has reported its clusters' gauges: nothing seen ejected or unhealthy.
    assert_eq!(
        (&h["endpoints"]["ejected"], &h["endpoints"]["unhealthy"], &h["endpoints"]["reports"]),
        (&json!(0), &json!(0), &json!([])),
        "{h:#}"
    );

    // A renewal moves b on; a later ACK clears the rejection but the last NACK stays known.
    store.svid_renewed(org.id, "bb", "bb2", now + chrono::TimeDelta::days(5)).await.unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.ledger_sent(b.id, CDS, "v2", "n2", 2).await.unwrap();
    tx.ledger_acked(b.id, CDS, "v2", None).await.unwrap();
    // An older certificate presented again (a reconnect) does not replace the renewed one.
    tx.dataplane_svid(b.id, "bb", now + chrono::TimeDelta::hours(30)).await.unwrap();
    tx.commit().await.unwrap();
    let (_, h) = api.get("/meshes/shop/services/reviews/health").await;
    assert_eq!((&h["dataplanes"]["inSync"], &h["dataplanes"]["rejected"]), (&json!(2), &json!(0)), "{h:#}");
    assert_eq!(h["svid"]["daysToExpiry"], 2, "a's 3 days are the earliest now: {h:#}");
    assert_eq!((&h["lastNack"]["outstanding"], &h["lastNack"]["version"]), (&json!(false), &json!("v1")));

    // Unknown services and other organizations: 404.
    assert_eq!(api.get("/meshes/shop/services/ratings/health").await.0, 404);
    let other = Api::new(&t, "globex", &token(&db, "globex", Role::Admin).await);
    assert_eq!(other.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);
    assert_eq!(other.put("/meshes/shop/services/reviews", &service).await.0, 201);
    let (status, theirs) = other.get("/meshes/shop/services/reviews/health").await;
    assert_eq!(status, 200);
    assert_eq!(theirs["dataplanes"]["total"], 0, "another organization's mesh of the same name: {theirs}");
    let intruder = Api { org: "acme".into(), ..other.clone() };
    assert_eq!(intruder.get("/meshes/shop/services/reviews/health").await.0, 404);
}
