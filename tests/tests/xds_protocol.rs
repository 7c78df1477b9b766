//! The xDS protocol as a client meets it on the TLS port, with a tonic client: authentication,
//! ACK and NACK (recorded, surfaced, never resent in a loop), nonces, node binding, Delta
//! subscriptions, tenant isolation; and the identity service.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::{Message, Name};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, channel, issue, join_token, renew};
use trellis_tests::{Api, Trellis, document_path, example_documents, token, trellis};

struct Fixture {
    _db: TestDb,
    t: Trellis,
    api: Api,
    store: trellis_store::Store,
    root: String,
}

async fn fixture() -> Fixture {
    let db = TestDb::create().await;
    let (t, api, store, root) = trellis_tests::serve_example_mesh(&db, &[]).await;
    Fixture { _db: db, t, api, store, root }
}

impl Fixture {
    async fn svid(&self, service: &str) -> Svid {
        issue(&self.t.xds, &self.root, &join_token(&self.store, "acme", "shop", service).await).await.unwrap()
    }

    async fn client(
        &self,
        svid: Option<&Svid>,
    ) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::new(channel(&self.t.xds, &self.root, svid).await.unwrap())
    }
}

fn node(id: &str, agent: &str) -> Node {
    Node { id: id.into(), user_agent_name: agent.into(), ..Default::default() }
}

/// A SotW stream: requests go in through `tx`, responses come out of `rx`.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

async fn sotw(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    first: DiscoveryRequest,
) -> Result<Sotw, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let rx = client.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Sotw { tx, rx })
}

impl Sotw {
    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no response within 10 s"),
        }
    }

    /// Nothing arrives within `d`.
    async fn quiet(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.message()).await.is_err()
    }
}

fn req(type_url: String, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url,
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn dataplane(api: &Api, node: &str) -> Value {
    let (status, body) = api.get("/meshes/shop/dataplanes").await;
    assert_eq!(status, 200);
    body["items"].as_array().unwrap().iter().find(|d| d["nodeId"] == node).cloned().unwrap_or(Value::Null)
}

/// Polls the dataplane list until `pred` holds for `node` (the ledger is written behind).
async fn wait_for(api: &Api, node: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let d = dataplane(api, node).await;
        if !d.is_null() && pred(&d) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {}", dataplane(api, node).await);
}

fn ledger_line<'a>(d: &'a Value, type_url: &str) -> &'a Value {
    d["sync"].as_array().unwrap().iter().find(|l| l["typeUrl"] == type_url).unwrap_or(&Value::Null)
}

async fn set_weights(api: &Api, v1: u32, v2: u32) {
    let mut doc = example_documents().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    doc["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(v1);
    doc["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(v2);
    let (status, body) = api.put(&document_path(&doc), &doc).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn streams_without_a_valid_mesh_certificate_are_refused() {
    let f = fixture().await;
    let lds = Listener::type_url();
    // No client certificate.
    let mut anon = f.client(None).await;
    let mut r = req(lds.clone(), &["reviews.shop:9080"], "", "");
    r.node = Some(node("n1", "grpc-test"));
    let err = match sotw(&mut anon, r.clone()).await {
        Err(s) => s,
        Ok(mut s) => s.next().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A certificate for the right SPIFFE ID from a CA that is not the mesh's.
    let real = f.svid("productpage").await;
    let td = real.spiffe_id.trim_start_matches("spiffe://").split('/').next().unwrap().to_owned();
    let td = trellis_ca::TrustDomain::parse(&td).unwrap();
    let rogue_ca = trellis_ca::MeshCa::generate_root(
        &td,
        Duration::from_secs(86_400 * 30),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let (key, csr) = trellis_ca::workload_key_and_csr().unwrap();
    let id = trellis_ca::SpiffeId::parse(&real.spiffe_id).unwrap();
    let forged = rogue_ca
        .sign_svid(csr.as_bytes(), &id, trellis_ca::SvidTtl::default(), std::time::SystemTime::now())
        .unwrap();
    let forged = Svid {
        key_pem: key.expose_pkcs8_pem().to_string(),
        chain_pem: forged.chain_pem,
        bundle_pem: String::new(),
        spiffe_id: real.spiffe_id.clone(),
    };
    let mut rogue = f.client(Some(&forged)).await;
    let err = match sotw(&mut rogue, r.clone()).await {
        Err(s) => s,
        Ok(mut s) => s.next().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The identity service refuses renewal with it too, and the real one works.
    assert_eq!(renew(&f.t.xds, &f.root, &forged).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut ok = f.client(Some(&real)).await;
    let mut s = sotw(&mut ok, r).await.unwrap();
    assert_eq!(s.next().await.unwrap().resources.len(), 1);
    assert!(dataplane(&f.api, "n1").await.is_object(), "registered");
}

#[tokio::test]
async fn acks_and_nacks_are_recorded_and_a_rejected_version_is_not_resent() {
    let f = fixture().await;
    let svid = f.svid("productpage").await;
    let mut c = f.client(Some(&svid)).await;
    let (lds, rds) = (Listener::type_url(), RouteConfiguration::type_url());
    let mut first = req(lds.clone(), &["reviews.shop:9080"], "", "");
    first.node = Some(node("pp-1", "grpc-test"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let l = s.next().await.unwrap();
    assert_eq!(l.type_url, lds);
    assert!(!l.nonce.is_empty() && !l.version_info.is_empty());
    let listener = Listener::decode(l.resources[0].value.as_slice()).unwrap();
    assert_eq!(listener.name, "reviews.shop:9080");
    s.tx.send(req(lds.clone(), &["reviews.shop:9080"], &l.version_info, &l.nonce)).await.unwrap();
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], "", "")).await.unwrap();
    let r1 = s.next().await.unwrap();
    assert_eq!(r1.type_url, rds);
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], &r1.version_info, &r1.nonce)).await.unwrap();
    assert!(s.quiet(Duration::from_millis(500)).await, "an ACK of current content gets no reply");
    wait_for(&f.api, "pp-1", "both types ACKed", |d| {
        d["state"] == "in-sync" && ledger_line(d, &rds)["ackedVersion"] == json!(r1.version_info)
    })
    .await;

    // A route change is pushed; the client rejects it.
    set_weights(&f.api, 50, 50).await;
    let r2 = s.next().await.unwrap();
    assert_eq!(r2.type_url, rds);
    assert_ne!(r2.version_info, r1.version_info);
    assert_ne!(r2.nonce, r1.nonce);
    let mut nack = req(rds.clone(), &["reviews.shop:9080"], &r1.version_info, &r2.nonce);
    nack.error_detail =
        Some(RpcStatus { code: 3, message: "weights not acceptable here".into(), ..Default::default() });
    s.tx.send(nack).await.unwrap();
    let d = wait_for(&f.api, "pp-1", "the NACK is in the ledger", |d| d["state"] == "rejected").await;
    let line = ledger_line(&d, &rds);
    assert_eq!(line["nack"]["error"], "weights not acceptable here", "{d}");
    assert_eq!(line["nack"]["version"], json!(r2.version_info), "{d}");
    assert_eq!(line["ackedVersion"], json!(r1.version_info), "still on the accepted version: {d}");
    assert!(s.quiet(Duration::from_secs(1)).await, "the rejected version is not resent");
    // The config dump shows what was sent (the rejected 50/50 route) and what was accepted.
    let id = d["id"].as_str().unwrap();
    let (status, dump) = f.api.get(&format!("/meshes/shop/dataplanes/{id}/config")).await;
    assert_eq!(status, 200, "{dump}");
    let rds_dump = dump["types"].as_array().unwrap().iter().find(|t| t["typeUrl"] == rds).unwrap();
    assert_eq!(rds_dump["sentVersion"], json!(r2.version_info), "{rds_dump}");
    assert_eq!(rds_dump["nack"]["error"], "weights not acceptable here");
    let text = rds_dump["resources"][0]["config"].as_str().unwrap_or_default();
    assert!(text.contains("reviews.shop:9080~version=v1") && text.contains("value: 50"), "{text}");
    let (status, _) = f.api.get(&format!("/meshes/shop/dataplanes/{}/config", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
    let (_, route) = f.api.get("/meshes/shop/http-routes/reviews").await;
    let p = &route["status"]["propagation"];
    assert_eq!(p["rejected"], 1, "{p}");
    let summary = p["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "applied by 0 of 1 proxies; rejected by 1: RouteConfiguration: weights not acceptable here"
        ),
        "{summary}"
    );

    // A stale nonce gets nothing; new content goes out and its ACK clears the NACK.
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], &r1.version_info, &r1.nonce)).await.unwrap();
    assert!(s.quiet(Duration::from_millis(500)).await, "a stale nonce is ignored");
    set_weights(&f.api, 90, 10).await;
    let r3 = s.next().await.unwrap();
    assert_ne!(r3.version_info, r2.version_info);
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], &r3.version_info, &r3.nonce)).await.unwrap();
    let d = wait_for(&f.api, "pp-1", "the ACK clears the NACK", |d| d["state"] == "in-sync").await;
    for _ in 0..50 {
        let (_, route) = f.api.get("/meshes/shop/http-routes/reviews").await;
        if route["status"]["propagation"]["summary"] == "applied by 1 of 1 proxies" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, route) = f.api.get("/meshes/shop/http-routes/reviews").await;
    assert_eq!(route["status"]["propagation"]["summary"], "applied by 1 of 1 proxies", "{route}");
    assert!(ledger_line(&d, &rds)["convergenceMs"].as_f64().is_some(), "{d}");
    let metrics = f.t.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("trellis_xds_nacks_total{type_url=\"type.googleapis.com/envoy.config.route.v3.RouteConfiguration\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_second_node_on_one_stream_is_refused() {
    let f = fixture().await;
    let svid = f.svid("productpage").await;
    let mut c = f.client(Some(&svid)).await;
    let mut first = req(Cluster::type_url(), &["reviews.shop:9080"], "", "");
    first.node = Some(node("pp-1", "grpc-test"));
    let mut s = sotw(&mut c, first).await.unwrap();
    s.next().await.unwrap();
    let mut other = req(Listener::type_url(), &["reviews.shop:9080"], "", "");
    other.node = Some(node("someone-else", "grpc-test"));
    s.tx.send(other).await.unwrap();
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn a_mesh_never_sees_another_tenants_resources() {
    let f = fixture().await;
    // Another organization with a mesh of the same name and a service only it has.
    let other = Api::new(&f.t, "globex", &token(&f._db, "globex", Role::Admin).await);
    let (status, body) = other.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let svc = json!({"spec": {"ports": [{"port": 7000, "protocol": "grpc"}]}});
    let (status, body) = other.put("/meshes/shop/services/secretsvc", &svc).await;
    assert_eq!(status, 201, "{body}");

    let svid = f.svid("productpage").await;
    let mut c = f.client(Some(&svid)).await;
    let mut first = req(Cluster::type_url(), &[], "", "");
    first.node = Some(node("envoy-1", "envoy"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let mut bytes = Vec::new();
    let cds = s.next().await.unwrap();
    bytes.extend(cds.encode_to_vec());
    // Ask for the other tenant's names outright, in every type.
    for t in [Listener::type_url(), RouteConfiguration::type_url()] {
        s.tx.send(req(t, &["secretsvc.shop:7000", "outbound:secretsvc.shop:7000", "secretsvc"], "", ""))
            .await
            .unwrap();
    }
    while !s.quiet(Duration::from_millis(700)).await {}
    s.tx.send(req(Cluster::type_url(), &["secretsvc"], &cds.version_info, &cds.nonce)).await.unwrap();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(700), s.rx.message()).await {
        bytes.extend(r.encode_to_vec());
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("reviews"), "its own mesh's clusters arrived");
    assert!(!text.contains("secretsvc") && !text.contains("globex"), "nothing of the other tenant");
}

/// Issue #10, item 9: an owner deletes an organization. Only the owner may; everything of it
/// goes in one transaction (its credentials stop working, its slug and trust domain are free),
/// its live xDS streams end, and its audit trail stays out of every API caller's reach until
/// the leader purges it.
#[tokio::test]
async fn deleting_an_organization_removes_it_whole_and_ends_its_streams() {
    let f = fixture().await;
    let owner = Api::new(&f.t, "acme", &token(&f._db, "acme", Role::Owner).await);
    let viewer = Api::new(&f.t, "acme", &token(&f._db, "acme", Role::Viewer).await);
    let outsider = Api::new(&f.t, "acme", &token(&f._db, "globex", Role::Owner).await);
    let (_, org) = owner.get("").await;
    let org_id: uuid::Uuid = org["id"].as_str().unwrap().parse().unwrap();
    let (_, mesh) = owner.get("/meshes/shop").await;
    let trust_domain = mesh["spec"]["trustDomain"].as_str().unwrap().to_owned();

    // A live stream of the mesh, registered, and a join token not used yet.
    let svid = f.svid("productpage").await;
    let unused_join = join_token(&f.store, "acme", "shop", "reviews").await;
    let mut c = f.client(Some(&svid)).await;
    let mut first = req(Cluster::type_url(), &[], "", "");
    first.node = Some(node("envoy-1", "envoy"));
    let mut s = sotw(&mut c, first).await.unwrap();
    s.next().await.unwrap();
    wait_for(&f.api, "envoy-1", "registered", |d| d["online"] == true).await;
    let (status, body) = owner.post("/invites", &json!({"email": "ann@example.com", "role": "viewer"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = owner.post("/tokens", &json!({"name": "ci", "role": "editor"})).await;
    assert_eq!(status, 201, "{body}");

    // Only the owner may delete it; another tenant cannot tell it exists.
    for (who, api, expected) in
        [("viewer", &viewer, 403), ("admin", &f.api, 403), ("outsider", &outsider, 404)]
    {
        let (status, problem) = api.delete("").await;
        assert_eq!(status, expected, "{who}: {problem}");
        assert!(problem["detail"].is_string(), "{who}: {problem}");
    }
    assert_eq!(owner.get("/meshes/shop").await.0, 200, "a refused delete deleted nothing");

    let (status, body) = owner.delete("").await;
    assert_eq!(status, 204, "{body}");

    // Its stream ends, and its identities open no other.
    let ended = loop {
        match s.next().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    let mut again = req(Cluster::type_url(), &[], "", "");
    again.node = Some(node("envoy-2", "envoy"));
    let mut c = f.client(Some(&svid)).await;
    let refused = match sotw(&mut c, again).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let join = issue(&f.t.xds, &f.root, &unused_join).await.unwrap_err();
    assert_eq!(join.code(), tonic::Code::Unauthenticated, "{join:?}");

    // Its API tokens no longer authenticate; to anyone else it does not exist.
    for path in ["", "/meshes/shop", "/audit-events"] {
        assert_eq!(owner.get(path).await.0, 401, "{path}");
        assert_eq!(viewer.get(path).await.0, 401, "{path}");
        assert_eq!(outsider.get(path).await.0, 404, "{path}");
    }

    // Nothing of it is left in any tenant table but its audit trail.
    let mut admin = f._db.admin_conn().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(tables.len() > 10, "{tables:?}");
    for t in tables.iter().filter(|t| *t != "audit_events") {
        let left: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t} WHERE org_id = $1")))
                .bind(org_id)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        assert_eq!(left, 0, "{t} keeps rows of the deleted organization");
    }
    drop(admin);

    // The slug and the trust domain are free: a new organization takes both, and sees
    // nothing of the old one.
    let successor = Api::new(&f.t, "acme", &token(&f._db, "acme", Role::Owner).await);
    let (status, new_org) = successor.get("").await;
    assert_eq!(status, 200, "{new_org}");
    assert_ne!(new_org["id"], org["id"]);
    assert_eq!(successor.get("/meshes/shop").await.0, 404);
    let (_, log) = successor.get("/audit-events").await;
    assert_eq!(log["items"], json!([]), "none of the old organization's audit trail");
    let (status, mesh) = successor.put("/meshes/shop", &json!({"spec": {"trustDomain": trust_domain}})).await;
    assert_eq!(status, 201, "{mesh}");
    assert_eq!(mesh["spec"]["trustDomain"], trust_domain.as_str());
    let (_, dataplanes) = successor.get("/meshes/shop/dataplanes").await;
    assert_eq!(dataplanes["items"], json!([]));

    // The old audit trail, the deletion last, is kept until the retention passes.
    let old = trellis_model::OrgId::from_uuid(org_id);
    let mut tx = f.store.tenant(old).await.unwrap();
    let kept =
        tx.list_audit_events(&trellis_store::AuditFilter { limit: 500, ..Default::default() }).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(kept.first().map(|e| e.action.as_str()), Some("org.delete"), "{kept:?}");
    assert_eq!(kept[0].details["meshes"], json!(["shop"]));
    assert_eq!(f.store.purge_deleted_orgs(Duration::from_secs(3600)).await.unwrap(), 0, "within retention");
    assert_eq!(f.store.purge_deleted_orgs(Duration::ZERO).await.unwrap(), 1);
    let mut tx = f.store.tenant(old).await.unwrap();
    assert_eq!(tx.count_audit_events().await.unwrap(), 0, "purged after the retention");
    tx.commit().await.unwrap();
    let (_, log) = successor.get("/audit-events").await;
    assert_eq!(log["items"][0]["action"], "mesh.create", "the successor's trail is its own: {log}");
}

/// A Delta stream.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("stream open")
    }
}

fn dreq(type_url: String, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn delta_subscribe_push_unsubscribe_and_removal() {
    let f = fixture().await;
    let svid = f.svid("productpage").await;
    let mut c = f.client(Some(&svid)).await;
    let cds = Cluster::type_url();
    let (tx, rx) = mpsc::channel(16);
    let mut first = dreq(cds.clone(), &["*"], &[], "");
    first.node = Some(node("envoy-d", "envoy"));
    tx.send(first).await.unwrap();
    let rx = c.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut s = Delta { tx, rx };
    let r = s.next().await;
    let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"reviews.shop:9080~version=v2"), "{names:?}");
    assert!(r.resources.iter().all(|x| !x.version.is_empty()));
    s.tx.send(dreq(cds.clone(), &[], &[], &r.nonce)).await.unwrap();

    // A new service: only its cluster is sent.
    let svc = json!({"spec": {"ports": [{"port": 8000, "protocol": "http"}]}});
    let (status, body) = f.api.put("/meshes/shop/services/ratings", &svc).await;
    assert_eq!(status, 201, "{body}");
    let r = s.next().await;
    let names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ratings.shop:8000"], "only what changed");
    s.tx.send(dreq(cds.clone(), &[], &[], &r.nonce)).await.unwrap();

    // Deleted: announced as removed.
    let (status, _) = f.api.delete("/meshes/shop/services/ratings").await;
    assert!(status == 204 || status == 200);
    let r = s.next().await;
    assert_eq!(r.removed_resources, ["ratings.shop:8000"]);
    s.tx.send(dreq(cds.clone(), &[], &[], &r.nonce)).await.unwrap();

    // Named subscriptions on another type, then unsubscribe: no more pushes for it.
    let rds = RouteConfiguration::type_url();
    s.tx.send(dreq(rds.clone(), &["outbound:reviews.shop:9080"], &[], "")).await.unwrap();
    let r = s.next().await;
    assert_eq!(r.type_url, rds);
    s.tx.send(dreq(rds.clone(), &[], &["outbound:reviews.shop:9080"], &r.nonce)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_weights(&f.api, 60, 40).await;
    let quiet = tokio::time::timeout(Duration::from_secs(1), s.rx.message()).await;
    assert!(quiet.is_err(), "an unsubscribed route is not pushed: {quiet:?}");
}

#[tokio::test]
async fn the_identity_service_issues_renews_and_refuses() {
    let f = fixture().await;
    let token = join_token(&f.store, "acme", "shop", "reviews").await;
    let first = issue(&f.t.xds, &f.root, &token).await.unwrap();
    assert!(first.spiffe_id.ends_with("/ns/shop/sa/reviews"), "{}", first.spiffe_id);
    // Renewal: a new key, the same identity, authenticated by the current certificate only.
    let renewed = renew(&f.t.xds, &f.root, &first).await.unwrap();
    assert_eq!(renewed.spiffe_id, first.spiffe_id);
    assert_ne!(renewed.chain_pem, first.chain_pem);
    // Not a join token at all, or a token of the API.
    for bad in ["trls_join_notavalidtoken", "hello", &token.replace("trls_join_", "trls_pat_")] {
        let err = issue(&f.t.xds, &f.root, bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}: {err:?}");
    }
    // The CSR is checked: garbage is an invalid argument, not a certificate.
    let ch = channel(&f.t.xds, &f.root, None).await.unwrap();
    let err = trellis_xds_server::proto::identity_client::IdentityClient::new(ch)
        .issue_svid(trellis_xds_server::proto::IssueSvidRequest {
            csr: b"not a csr".to_vec(),
            join_token: token,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_write_through_one_replica_reaches_a_client_of_the_other() {
    let f = fixture().await;
    // A second replica on the same database (the same KEK, so the same platform CA).
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", f._db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let second = Trellis::start(cmd).await;
    assert_ne!(second.xds, f.t.xds);
    let svid = f.svid("productpage").await;
    let mut c =
        AggregatedDiscoveryServiceClient::new(channel(&second.xds, &f.root, Some(&svid)).await.unwrap());
    let rds = RouteConfiguration::type_url();
    let mut first = req(rds.clone(), &["reviews.shop:9080"], "", "");
    first.node = Some(node("pp-r2", "grpc-test"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let r1 = s.next().await.unwrap();
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], &r1.version_info, &r1.nonce)).await.unwrap();

    // Written through replica 1 (f.api talks to it), pushed by replica 2.
    set_weights(&f.api, 10, 90).await;
    let r2 = s.next().await.unwrap();
    assert_ne!(r2.version_info, r1.version_info);
    let route = RouteConfiguration::decode(r2.resources[0].value.as_slice()).unwrap();
    assert!(format!("{route:?}").contains("weight: Some(UInt32Value { value: 90 })"), "{route:?}");
    s.tx.send(req(rds.clone(), &["reviews.shop:9080"], &r2.version_info, &r2.nonce)).await.unwrap();
    let d = wait_for(&f.api, "pp-r2", "replica 2's client ACKed the write", |d| {
        ledger_line(d, &rds)["ackedVersion"] == json!(r2.version_info)
    })
    .await;
    assert_eq!(d["state"], "in-sync", "{d}");
}

/// A join token made through the REST API (tags and all), as an operator makes one.
async fn api_join_token(api: &Api, service: &str, tags: Value) -> String {
    let (status, body) =
        api.post("/meshes/shop/join-tokens", &json!({"service": service, "tags": tags})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// A node that declares `tags` in its metadata, as a bootstrap's `node.metadata.tags` does.
fn tagged_node(id: &str, tags: &[(&str, &str)]) -> Node {
    use envoy_types::pb::google::protobuf::value::Kind;
    use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};
    let string = |s: &str| PbValue { kind: Some(Kind::StringValue(s.to_owned())) };
    let tags = Struct { fields: tags.iter().map(|(k, v)| ((*k).to_owned(), string(v))).collect() };
    let metadata = Struct {
        fields: [("tags".to_owned(), PbValue { kind: Some(Kind::StructValue(tags)) })].into_iter().collect(),
    };
    Node { metadata: Some(metadata), ..node(id, "grpc-test") }
}

/// Opens an EDS stream for `reviews` as `svid` with `node`: the first response, or the
/// status the server ended the stream with.
async fn eds_stream(
    f: &Fixture,
    svid: &Svid,
    node: Node,
) -> Result<(Sotw, DiscoveryResponse), tonic::Status> {
    let eds = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::type_url();
    let mut c = f.client(Some(svid)).await;
    let mut first = req(eds, &["reviews"], "", "");
    first.node = Some(node);
    let mut s = sotw(&mut c, first).await?;
    let r = s.next().await?;
    Ok((s, r))
}

/// Issue #10, item 5: a join token's tags bound what its dataplanes may register as — on
/// the first SVID and on every renewal. A `version: v1` identity that claims `version: v2`
/// is refused and never becomes a v2 endpoint; one that says nothing is registered as v1.
#[tokio::test]
async fn a_join_tokens_tags_bound_the_registration_of_its_dataplanes_and_renewals() {
    let f = fixture().await;
    let token = api_join_token(&f.api, "reviews", json!({"version": "v1"})).await;
    let v1 = issue(&f.t.xds, &f.root, &token).await.unwrap();

    let err =
        eds_stream(&f, &v1, tagged_node("impostor", &[("version", "v2")])).await.err().expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("version") && err.message().contains("v1"), "{err:?}");
    assert!(dataplane(&f.api, "impostor").await.is_null(), "a refused node is not registered");

    // Leaving the tag out registers the token's value; other tags of its own are kept.
    let (_open, _) = eds_stream(&f, &v1, tagged_node("honest", &[("zone-hint", "a")])).await.unwrap();
    let d = wait_for(&f.api, "honest", "registered", |d| d["online"] == json!(true)).await;
    assert_eq!(d["tags"], json!({"version": "v1", "zone-hint": "a"}), "{d}");

    // A renewed SVID carries the same bound: v2 refused, v1 accepted.
    let renewed = renew(&f.t.xds, &f.root, &v1).await.unwrap();
    let again = renew(&f.t.xds, &f.root, &renewed).await.unwrap();
    let err =
        eds_stream(&f, &again, tagged_node("impostor", &[("version", "v2")])).await.err().expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let (_open2, _) = eds_stream(&f, &again, tagged_node("renewed", &[("version", "v1")])).await.unwrap();
    wait_for(&f.api, "renewed", "registered as v1", |d| d["tags"] == json!({"version": "v1"})).await;

    // No v2 endpoint of reviews came from this identity.
    let (status, body) = f.api.get("/meshes/shop/dataplanes").await;
    assert_eq!(status, 200);
    let v2: Vec<&Value> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["service"] == "reviews" && d["tags"]["version"] == "v2")
        .collect();
    assert!(v2.is_empty(), "{v2:?}");
}

/// `token` issues no SVID (a 401 problem), and `svid` neither renews nor opens a stream.
async fn assert_identity_revoked(f: &Fixture, token: &str, svid: &Svid, when: &str) {
    let (_key, csr) = trellis_ca::workload_key_and_csr().unwrap();
    let res =
        f.t.http
            .post(format!("{}/api/v1/svids", f.t.base))
            .bearer_auth(token)
            .json(&json!({"csr": csr}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 401, "{when}");
    assert_eq!(res.headers()["content-type"], "application/problem+json", "{when}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["status"], 401, "{when}: {problem}");
    let err = renew(&f.t.xds, &f.root, svid).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{when}: {err:?}");
    let mut c = f.client(Some(svid)).await;
    let mut first = req(Cluster::type_url(), &[], "", "");
    first.node = Some(node("ratings-2", "envoy"));
    let err = match sotw(&mut c, first).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{when}: {err:?}");
}

/// Issue #10, item 6: deleting a service revokes its identity. Its join tokens issue nothing
/// (a precise 401 problem), its open xDS streams are closed by the server, its SVIDs neither
/// renew nor open a stream — and making the service again under the same name revives none
/// of them.
#[tokio::test]
async fn deleting_a_service_revokes_its_tokens_and_svids_and_ends_its_streams() {
    let f = fixture().await;
    let svc = json!({"spec": {"ports": [{"port": 8000, "protocol": "http"}]}});
    let (status, body) = f.api.put("/meshes/shop/services/ratings", &svc).await;
    assert_eq!(status, 201, "{body}");
    let token = api_join_token(&f.api, "ratings", json!({})).await;
    let svid = issue(&f.t.xds, &f.root, &token).await.unwrap();
    let cds = Cluster::type_url();
    let mut c = f.client(Some(&svid)).await;
    let mut first = req(cds.clone(), &[], "", "");
    first.node = Some(node("ratings-1", "envoy"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let r = s.next().await.unwrap();
    s.tx.send(req(cds.clone(), &[], &r.version_info, &r.nonce)).await.unwrap();
    wait_for(&f.api, "ratings-1", "online", |d| d["online"] == json!(true)).await;

    let (status, _) = f.api.delete("/meshes/shop/services/ratings").await;
    assert!(status == 204 || status == 200, "{status}");
    // The server ends the open stream.
    let ended = loop {
        match s.next().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("service deleted"), "{ended:?}");

    assert_identity_revoked(&f, &token, &svid, "after the delete").await;
    let (status, body) = f.api.get("/meshes/shop/join-tokens").await;
    assert_eq!(status, 200);
    let listed = body["items"].as_array().unwrap().iter().find(|t| t["service"] == "ratings").unwrap();
    assert_eq!(listed["status"], "revoked", "{listed}");

    // The same name again is a new service: the old token and SVID stay dead.
    let (status, body) = f.api.put("/meshes/shop/services/ratings", &svc).await;
    assert_eq!(status, 201, "{body}");
    assert_identity_revoked(&f, &token, &svid, "after the service was made again").await;
    // A new token for it works.
    let fresh = api_join_token(&f.api, "ratings", json!({})).await;
    issue(&f.t.xds, &f.root, &fresh).await.unwrap();
    // Deleting the mesh deletes its services, tokens and leaves together (the revoking
    // trigger runs inside the cascade).
    let (status, body) = f.api.delete("/meshes/shop").await;
    assert!(status == 204 || status == 200, "{status} {body}");
}

/// The example's reviews with its application on 127.0.0.1:19080, behind a sidecar on 9080.
async fn put_reviews_with_app_port(api: &Api) {
    let mut doc = example_documents()
        .into_iter()
        .find(|d| d["metadata"]["name"] == "reviews" && d["kind"] == "Service")
        .unwrap();
    doc["spec"]["ports"][0]["appPort"] = json!(19080);
    let (status, body) = api.put(&document_path(&doc), &doc).await;
    assert_eq!(status, 200, "{body}");
}

/// The node of a bootstrap served by Trellis, as Envoy sends it (`node.metadata` from JSON).
fn node_from_bootstrap(bootstrap: &Value, agent: &str) -> Node {
    use envoy_types::pb::google::protobuf::value::Kind;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue};
    fn pb(v: &Value) -> PbValue {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(pb).collect() }),
            Value::Object(o) => {
                Kind::StructValue(Struct { fields: o.iter().map(|(k, v)| (k.clone(), pb(v))).collect() })
            }
        };
        PbValue { kind: Some(kind) }
    }
    let Some(Kind::StructValue(metadata)) = pb(&bootstrap["node"]["metadata"]).kind else { panic!() };
    Node {
        id: bootstrap["node"]["id"].as_str().unwrap().into(),
        cluster: bootstrap["node"]["cluster"].as_str().unwrap().into(),
        user_agent_name: agent.into(),
        metadata: Some(metadata),
        ..Default::default()
    }
}

/// A sidecar started from the served Envoy bootstrap (issue #12): SDS points at the
/// certificate directory it was fetched with, its ports become inbound listeners, and it is
/// an endpoint of its service's subset by the tags it was fetched with.
#[tokio::test]
async fn a_sidecar_from_the_served_bootstrap_gets_its_cert_dir_inbound_listener_and_subset() {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
    let f = fixture().await;
    put_reviews_with_app_port(&f.api).await;
    let (status, boot) = f
        .api
        .get("/meshes/shop/bootstrap/envoy?service=reviews&node=rv-9&certDir=/etc/x&ports=9080&tags=version=v2")
        .await;
    assert_eq!(status, 200, "{boot}");
    let svid = f.svid("reviews").await;
    let mut c = f.client(Some(&svid)).await;
    let mut first = req(Secret::type_url(), &["workload"], "", "");
    first.node = Some(node_from_bootstrap(&boot, "envoy"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let r = s.next().await.unwrap();
    let secret = Secret::decode(r.resources[0].value.as_slice()).unwrap();
    let Some(SecretType::TlsCertificate(cert)) = secret.r#type else { panic!("{secret:?}") };
    let file = |d: Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d.unwrap().specifier {
        Some(Specifier::Filename(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(file(cert.certificate_chain), "/etc/x/cert.pem");
    assert_eq!(file(cert.private_key), "/etc/x/key.pem");
    assert_eq!(cert.watched_directory.unwrap().path, "/etc/x");

    s.tx.send(req(Listener::type_url(), &[], "", "")).await.unwrap();
    let l = s.next().await.unwrap();
    let names: Vec<String> =
        l.resources.iter().map(|a| Listener::decode(a.value.as_slice()).unwrap().name).collect();
    assert!(names.contains(&"inbound:9080".to_owned()), "{names:?}");

    let d = wait_for(&f.api, "rv-9", "registered with its ports and tags", |d| d["online"] == true).await;
    assert_eq!(d["ports"], json!([9080]), "{d}");
    assert_eq!(d["tags"], json!({"version": "v2"}), "{d}");
    // The canary's subset cluster holds this instance. (The registration reaches the mesh's
    // snapshot after a rebuild: ACK until it does.)
    let eds = ClusterLoadAssignment::type_url();
    let cluster = ["reviews.shop:9080~version=v2"];
    s.tx.send(req(eds.clone(), &cluster, "", "")).await.unwrap();
    let mut cla = ClusterLoadAssignment::default();
    for _ in 0..20 {
        let e = s.next().await.unwrap();
        if e.type_url != eds {
            continue;
        }
        cla = ClusterLoadAssignment::decode(e.resources[0].value.as_slice()).unwrap();
        if !cla.endpoints.is_empty() {
            break;
        }
        s.tx.send(req(eds.clone(), &cluster, &e.version_info, &e.nonce)).await.unwrap();
    }
    assert_eq!(cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 1, "{cla:?}");
}

/// Bad bootstrap parameters are precise problems naming the parameter.
#[tokio::test]
async fn bootstrap_ports_and_tags_are_checked_and_named() {
    let f = fixture().await;
    let base = "/meshes/shop/bootstrap/envoy?service=reviews&node=rv-1";
    // The example's reviews declares no appPort: its sidecar would take the application's port.
    let (status, body) = f.api.get(&format!("{base}&ports=9080")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "ports", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("spec.ports[0].appPort"), "{body}");
    put_reviews_with_app_port(&f.api).await;
    for (query, field) in [
        ("&ports=1234", "ports"),
        ("&ports=9080,9080", "ports"),
        ("&ports=http", "ports"),
        ("&tags=version", "tags"),
        ("&tags=service=ratings", "tags.service"),
        ("&tags=version=no%20spaces", "tags.version"),
        ("&certDir=relative", "certDir"),
    ] {
        let (status, body) = f.api.get(&format!("{base}{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }
    let (status, body) = f.api.get("/meshes/shop/bootstrap/grpc?service=reviews&node=rv-1&ports=9080").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "ports", "{body}");
}

/// A node of `reviews` at `address:9080` that declares `tags`, as a bootstrap does.
fn tagged_endpoint(id: &str, address: &str, tags: &[(&str, &str)]) -> Node {
    use envoy_types::pb::google::protobuf::value::Kind;
    use envoy_types::pb::google::protobuf::{ListValue, Value as PbValue};
    let string = |s: &str| PbValue { kind: Some(Kind::StringValue(s.to_owned())) };
    let mut n = tagged_node(id, tags);
    let fields = &mut n.metadata.as_mut().unwrap().fields;
    fields.insert("address".to_owned(), string(address));
    let ports = ListValue { values: vec![string("9080")] };
    fields.insert("ports".to_owned(), PbValue { kind: Some(Kind::ListValue(ports)) });
    n
}

/// The addresses that one EDS request for `cluster` returns, asked as `svid`.
async fn endpoints_of(f: &Fixture, svid: &Svid, cluster: &str) -> Vec<String> {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut c = f.client(Some(svid)).await;
    let mut first = req(ClusterLoadAssignment::type_url(), &[cluster], "", "");
    first.node = Some(node("watcher", "grpc-test"));
    let mut s = sotw(&mut c, first).await.unwrap();
    let r = s.next().await.unwrap();
    let mut out = Vec::new();
    for any in &r.resources {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        assert_eq!(cla.cluster_name, cluster);
        for lb in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            if let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier {
                let sock = e.address.as_ref().and_then(|a| a.address.as_ref());
                if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
                    sock
                {
                    out.push(format!("{}:{}", sa.address, match sa.port_specifier {
                        Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                        _ => 0,
                    }));
                }
            }
        }
    }
    out
}

/// Issue #11, item 3: a dataplane's tags and a route's subset follow one rule (the model's,
/// Kubernetes label syntax). A node tag that no route could select is refused at registration
/// with a message naming it; a Kubernetes-style tag (`app.kubernetes.io/version: v1.2-rc`, which
/// registration used to refuse) registers, and the node becomes an endpoint of the route subset
/// that selects it.
#[tokio::test]
async fn a_tag_accepted_at_registration_is_selectable_by_a_route_and_the_reverse() {
    let f = fixture().await;
    let (key, value) = ("app.kubernetes.io/version", "v1.2-rc");
    let mut route = example_documents().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    route["spec"]["rules"][1]["backendRefs"][1]["tags"] = json!({ key: value });
    let (status, body) = f.api.put(&document_path(&route), &route).await;
    assert_eq!(status, 200, "{body}");
    let reviews = f.svid("reviews").await;

    // What a route cannot select, a node cannot register: each refusal names the tag.
    for (k, v, named) in [("-canary", "yes", "-canary"), ("_zone", "a", "_zone"), ("version", "v2-", "v2-")] {
        let err = eds_stream(&f, &reviews, tagged_endpoint("odd", "10.9.8.1", &[(k, v)])).await.err();
        let err = err.unwrap_or_else(|| panic!("{k}: {v} registered"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("metadata.tags") && err.message().contains(named), "{err:?}");
        let (status, problem) = f
            .api
            .put(&document_path(&route), &{
                let mut r = route.clone();
                r["spec"]["rules"][1]["backendRefs"][1]["tags"] = json!({ k: v });
                r
            })
            .await;
        assert_eq!(status, 422, "a route selecting {k}: {v} was accepted: {problem}");
        assert_eq!(problem["errors"][0]["field"], "spec.rules[1].backendRefs[1].tags", "{problem}");
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains(named), "{problem}");
    }
    assert!(dataplane(&f.api, "odd").await.is_null(), "a refused node is not registered");

    // What a route selects, a node registers, and becomes an endpoint of that subset.
    let (_open, _) =
        eds_stream(&f, &reviews, tagged_endpoint("rc-1", "10.9.8.7", &[(key, value)])).await.unwrap();
    let d = wait_for(&f.api, "rc-1", "registered", |d| d["online"] == json!(true)).await;
    assert_eq!(d["tags"], json!({ key: value }), "{d}");
    let subset = format!("reviews.shop:9080~{key}={value}");
    let productpage = f.svid("productpage").await;
    let mut found = Vec::new();
    for _ in 0..50 {
        found = endpoints_of(&f, &productpage, &subset).await;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, ["10.9.8.7:9080"], "the subset {subset} holds the node");
}
