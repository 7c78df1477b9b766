//! The mesh certificate authority over REST, as its users meet it: status and bundles, SVIDs
//! for join tokens (checked with the `openssl` command), token refusals, root rotation,
//! bring-your-own intermediates signed offline, roles, tenants, what a database dump holds,
//! and `trellis kek rotate`.

use std::path::Path;

use serde_json::{Value, json};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::tenant_root::{TenantRoot, openssl, openssl_ok};
use trellis_tests::{Api, Trellis, assert_no_secret_in, pg_dump, send, token, trellis};

async fn start(db: &TestDb) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .env("TRELLIS_CA_EXPIRY_REFRESH", "200ms")
        .args(["--http-addr", "127.0.0.1:0"]);
    Trellis::start(cmd).await
}

/// The `trellis_ca_days_to_expiry` lines of `/metrics` for mesh `shop`, once there are `n`.
async fn expiry_gauges(t: &Trellis, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..50 {
        let body = t.get("/metrics").await.text().await.unwrap();
        lines = body
            .lines()
            .filter(|l| l.starts_with("trellis_ca_days_to_expiry{") && l.contains("mesh=\"shop\""))
            .map(str::to_owned)
            .collect();
        if lines.len() == n {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("expected {n} CA expiry gauges, got {lines:?}");
}

/// Creates mesh `shop` with the Service `reviews`.
async fn mesh_with_service(api: &Api) {
    let (status, body) = api.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let svc = json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}});
    let (status, body) = api.put("/meshes/shop/services/reviews", &svc).await;
    assert_eq!(status, 201, "{body}");
}

async fn join_token(api: &Api, body: Value) -> String {
    let (status, created) = api.post("/meshes/shop/join-tokens", &body).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("trls_join_"), "{token}");
    token
}

/// `POST /api/v1/svids` with a join token and a fresh CSR.
async fn svid(t: &Trellis, join: &str) -> (u16, Value) {
    let (_key, csr) = trellis_ca::workload_key_and_csr().unwrap();
    send(t.http.post(format!("{}/api/v1/svids", t.base)).bearer_auth(join).json(&json!({ "csr": csr }))).await
}

async fn pem_bundle(api: &Api) -> (String, u64) {
    let res = api.req(reqwest::Method::GET, "/meshes/shop/ca/bundle?format=pem").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-pem-file");
    let seq = res.headers()["trellis-bundle-sequence"].to_str().unwrap().parse().unwrap();
    (res.text().await.unwrap(), seq)
}

fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Splits concatenated PEM certificates.
fn certs(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|c| c.trim_start().to_owned())
        .collect()
}

#[tokio::test]
async fn join_tokens_yield_conformant_svids_and_are_refused_when_spent_expired_or_revoked() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    mesh_with_service(&api).await;
    let dir = tempfile::tempdir().unwrap();

    // Status and bundle right after creation: one active generated root.
    let (status, ca) = api.get("/meshes/shop/ca").await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "stable");
    assert_eq!(ca["trustDomain"], "shop.acme.trellis.internal");
    assert_eq!(ca["svidTtlSeconds"], 86400);
    assert!(ca["bundleSequence"].as_i64().unwrap() >= 1, "{ca}");
    let authorities = ca["authorities"].as_array().unwrap();
    assert_eq!(authorities.len(), 1);
    assert_eq!(authorities[0]["state"], "active");
    assert_eq!(authorities[0]["origin"], "generated");
    assert!(authorities[0]["daysToExpiry"].as_i64().unwrap() > 3000);
    assert!(!ca.to_string().contains("PRIVATE KEY"));
    let (status, bundle) = api.get("/meshes/shop/ca/bundle").await;
    assert_eq!(status, 200);
    assert_eq!(bundle["keys"].as_array().unwrap().len(), 1, "{bundle}");
    assert_eq!(bundle["spiffe_sequence"], ca["bundleSequence"]);
    let (bundle_pem, seq) = pem_bundle(&api).await;
    assert_eq!(count_certs(&bundle_pem), 1);
    assert_eq!(seq as i64, ca["bundleSequence"].as_i64().unwrap());
    std::fs::write(dir.path().join("bundle.pem"), &bundle_pem).unwrap();
    let gauges = expiry_gauges(&t, 1).await;
    assert!(gauges[0].contains("org=\"acme\"") && gauges[0].contains("state=\"active\""), "{gauges:?}");
    let days: i64 = gauges[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(days, authorities[0]["daysToExpiry"].as_i64().unwrap());

    // A join token for a service that does not exist is refused with the field.
    let (status, problem) = api.post("/meshes/shop/join-tokens", &json!({"service": "nope"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "service");
    let (status, problem) =
        api.post("/meshes/shop/join-tokens", &json!({"service": "reviews", "ttlSeconds": 8 * 86400})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "ttlSeconds");

    // An SVID for a single-use token: checked by openssl.
    let single =
        join_token(&api, json!({"service": "reviews", "singleUse": true, "tags": {"zone": "a"}})).await;
    let (status, issued) = svid(&t, &single).await;
    assert_eq!(status, 200, "{issued}");
    let id = "spiffe://shop.acme.trellis.internal/ns/shop/sa/reviews";
    assert_eq!(issued["spiffeId"], id);
    assert_eq!(issued["trustBundle"].as_str().unwrap(), bundle_pem);
    assert_eq!(issued["trustBundleSequence"].as_u64().unwrap(), seq);
    std::fs::write(dir.path().join("cert.pem"), issued["certificateChain"].as_str().unwrap()).unwrap();
    let verified = openssl_ok(dir.path(), &["verify", "-CAfile", "bundle.pem", "cert.pem"]);
    assert!(verified.contains("cert.pem: OK"), "{verified}");
    let text = openssl_ok(dir.path(), &["x509", "-in", "cert.pem", "-noout", "-text"]);
    assert_eq!(text.matches("URI:").count(), 1, "exactly one URI SAN:\n{text}");
    assert!(text.contains(&format!("URI:{id}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical\n                Digital Signature\n"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    let serial = openssl_ok(dir.path(), &["x509", "-in", "cert.pem", "-noout", "-serial"]);
    assert_eq!(
        serial.trim().trim_start_matches("serial=").to_ascii_lowercase().trim_start_matches('0'),
        issued["serial"].as_str().unwrap().trim_start_matches('0')
    );

    // Spent, revoked, expired: 401 problems.
    let (status, problem) = svid(&t, &single).await;
    assert_eq!(status, 401, "a single-use token works once: {problem}");
    let revoked = join_token(&api, json!({"service": "reviews"})).await;
    assert_eq!(svid(&t, &revoked).await.0, 200, "a multi-use token works more than once");
    let (_, list) = api.get("/meshes/shop/join-tokens").await;
    assert!(!list.to_string().contains("trls_join_"), "a list never shows tokens: {list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["status"], "used");
    let revoked_id = items[0]["id"].as_str().unwrap();
    let (status, body) = api.delete(&format!("/meshes/shop/join-tokens/{revoked_id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(svid(&t, &revoked).await.0, 401);
    let expired = join_token(&api, json!({"service": "reviews"})).await;
    let mut admin = db.admin_conn().await;
    sqlx::query("UPDATE join_tokens SET expires_at = now() - interval '1 second' WHERE revoked_at IS NULL AND NOT single_use")
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(svid(&t, &expired).await.0, 401);
    // Garbage, an API token, no token: 401.
    assert_eq!(svid(&t, "trls_join_nonsense").await.0, 401);
    assert_eq!(svid(&t, &api.token).await.0, 401);
    let (status, _) = send(t.http.post(format!("{}/api/v1/svids", t.base)).json(&json!({"csr": "x"}))).await;
    assert_eq!(status, 401);
    // A bad CSR with a good token: 422 on the field, and the token is not spent.
    let once = join_token(&api, json!({"service": "reviews", "singleUse": true})).await;
    let (status, problem) = send(
        t.http.post(format!("{}/api/v1/svids", t.base)).bearer_auth(&once).json(&json!({"csr": "not a csr"})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "csr");
    assert_eq!(svid(&t, &once).await.0, 200);

    // A join token opens nothing else.
    let fresh = join_token(&api, json!({"service": "reviews"})).await;
    for path in ["", "/meshes", "/meshes/shop/ca", "/meshes/shop/join-tokens"] {
        let (status, _) = send(t.http.get(api.url(path)).bearer_auth(&fresh)).await;
        assert_eq!(status, 401, "GET {path} with a join token");
    }
    let (status, _) =
        send(t.http.post(api.url("/meshes/shop/ca/rotation/prepare")).bearer_auth(&fresh)).await;
    assert_eq!(status, 401);

    // SVID lifetime: bounded, with the field.
    let (status, problem) = api.put("/meshes/shop/ca/settings", &json!({"svidTtlSeconds": 60})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "svidTtlSeconds");
    let (status, ca) = api.put("/meshes/shop/ca/settings", &json!({"svidTtlSeconds": 7200})).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["svidTtlSeconds"], 7200);
    let (_, issued) = svid(&t, &fresh).await;
    let expires = chrono::DateTime::parse_from_rfc3339(issued["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((7000..=7200).contains(&left), "{left}");

    // Bootstraps.
    let (status, grpc) =
        api.get("/meshes/shop/bootstrap/grpc?service=reviews&node=reviews-1&certDir=/etc/trellis").await;
    assert_eq!(status, 200, "{grpc}");
    assert_eq!(grpc["xds_servers"][0]["server_uri"], t.xds.as_str());
    assert_eq!(grpc["xds_servers"][0]["channel_creds"][0]["type"], "tls");
    assert_eq!(
        grpc["xds_servers"][0]["channel_creds"][0]["config"]["ca_certificate_file"],
        "/etc/trellis/ca.pem"
    );
    assert_eq!(grpc["xds_servers"][0]["server_features"], json!(["xds_v3"]));
    // node.locality: gRPC for Node.js refuses a bootstrap without one.
    assert_eq!(
        grpc["node"],
        json!({"id": "reviews-1", "cluster": "reviews", "locality": {}, "metadata": {"mesh": "shop"}})
    );
    let provider = &grpc["certificate_providers"]["trellis"];
    assert_eq!(provider["plugin_name"], "file_watcher");
    assert_eq!(provider["config"]["ca_certificate_file"], "/etc/trellis/bundle.pem");
    assert_eq!(provider["config"]["certificate_file"], "/etc/trellis/cert.pem");
    assert_eq!(provider["config"]["private_key_file"], "/etc/trellis/key.pem");
    assert_eq!(
        grpc["server_listener_resource_name_template"],
        "grpc/server?xds.resource.listening_address=%s"
    );
    let (status, envoy) = api.get("/meshes/shop/bootstrap/envoy?service=reviews&node=reviews-1").await;
    assert_eq!(status, 200, "{envoy}");
    assert_eq!(envoy["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    assert_eq!(envoy["dynamic_resources"]["lds_config"]["ads"], json!({}));
    assert_eq!(envoy["dynamic_resources"]["cds_config"]["ads"], json!({}));
    let xds = &envoy["static_resources"]["clusters"][0];
    assert_eq!(xds["name"], "xds");
    let tls = &xds["transport_socket"]["typed_config"]["common_tls_context"];
    assert_eq!(tls["validation_context"]["trusted_ca"]["filename"], "/var/run/trellis/ca.pem");
    assert_eq!(tls["tls_certificates"][0]["certificate_chain"]["filename"], "/var/run/trellis/cert.pem");
    let root = api.req(reqwest::Method::GET, "/meshes/shop/bootstrap/ca.pem").send().await.unwrap();
    assert_eq!(root.status(), 200);
    let root = root.text().await.unwrap();
    assert_eq!(count_certs(&root), 1);
    assert!(!bundle_pem.contains(root.trim()), "the platform root is not a mesh root");
    for (query, field) in [
        ("service=nope&node=n", "service"),
        ("service=reviews&node=a%20b", "node"),
        ("service=reviews", "node"),
        ("service=reviews&node=n&certDir=relative", "certDir"),
        ("service=reviews&node=n&certDir=/a/../etc", "certDir"),
    ] {
        let (status, problem) = api.get(&format!("/meshes/shop/bootstrap/grpc?{query}")).await;
        assert!(status == 400 || status == 422, "{query}: {status} {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }

    // Every CA and token write is in the audit log.
    let (_, audit) = api.get("/audit-events?action=join-token.create").await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 5);

    // A database dump holds no private key and no join token.
    let dump = pg_dump(&db).await;
    assert!(!dump.contains("PRIVATE KEY"), "the dump holds a PEM private key");
    assert_no_secret_in(&dump, &[single, revoked, expired, once, fresh]);
}

#[tokio::test]
async fn root_rotation_moves_new_leaves_to_the_new_root_and_retires_the_old() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    mesh_with_service(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let join = join_token(&api, json!({"service": "reviews"})).await;
    let (status, _) = svid(&t, &join).await;
    assert_eq!(status, 200);
    let (_, before) = api.get("/meshes/shop/ca").await;
    let old_id = before["authorities"][0]["id"].as_str().unwrap().to_owned();
    let (old_pem, seq1) = pem_bundle(&api).await;

    // Out of order: nothing to activate; nothing to retire.
    assert_eq!(api.post("/meshes/shop/ca/rotation/activate", &json!({})).await.0, 409);
    let (status, problem) =
        api.post(&format!("/meshes/shop/ca/authorities/{old_id}/retire"), &json!({})).await;
    assert_eq!(status, 409, "{problem}");

    // Prepare: both roots in the bundle, the old one still signs.
    let (status, ca) = api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "prepared");
    assert_eq!(
        api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await.0,
        409,
        "one rotation at a time"
    );
    let (both, seq2) = pem_bundle(&api).await;
    assert_eq!(count_certs(&both), 2);
    assert!(seq2 > seq1);
    let (_, json_bundle) = api.get("/meshes/shop/ca/bundle").await;
    assert_eq!(json_bundle["keys"].as_array().unwrap().len(), 2);
    expiry_gauges(&t, 2).await;
    let new_pem = certs(&both).into_iter().find(|c| !old_pem.contains(c.as_str())).unwrap();
    std::fs::write(dir.path().join("old.pem"), &old_pem).unwrap();
    std::fs::write(dir.path().join("new.pem"), &new_pem).unwrap();

    // Activate: new leaves chain to the new root only.
    let (status, ca) = api.post("/meshes/shop/ca/rotation/activate", &json!({})).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "rotated");
    let states: Vec<&str> =
        ca["authorities"].as_array().unwrap().iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["previous", "active"]);
    // The bundle names the root that signs now first (how agents know to renew), and its
    // sequence grows: its order changed.
    let (active_first, seq_active) = pem_bundle(&api).await;
    assert_eq!(certs(&active_first), [new_pem.clone(), certs(&old_pem)[0].clone()]);
    assert_eq!(certs(&both)[0], certs(&old_pem)[0], "prepared: the old root still signs, and comes first");
    assert!(seq_active > seq2);
    let (_, issued) = svid(&t, &join).await;
    assert_eq!(count_certs(issued["trustBundle"].as_str().unwrap()), 2);
    assert_eq!(certs(issued["trustBundle"].as_str().unwrap())[0], new_pem);
    std::fs::write(dir.path().join("leaf.pem"), issued["certificateChain"].as_str().unwrap()).unwrap();
    openssl_ok(dir.path(), &["verify", "-CAfile", "new.pem", "leaf.pem"]);
    assert!(!openssl(dir.path(), &["verify", "-CAfile", "old.pem", "leaf.pem"]).status.success());

    // Retire: refused while the old root's leaf lives, then forced.
    let (status, problem) =
        api.post(&format!("/meshes/shop/ca/authorities/{old_id}/retire"), &json!({})).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("force"), "{problem}");
    let (status, ca) =
        api.post(&format!("/meshes/shop/ca/authorities/{old_id}/retire"), &json!({"force": true})).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "stable");
    expiry_gauges(&t, 1).await; // the retired root's gauge is gone
    let (after, seq3) = pem_bundle(&api).await;
    assert_eq!(count_certs(&after), 1);
    assert_eq!(after.trim(), new_pem.trim());
    assert!(seq3 > seq_active);
    // A retired CA cannot be discarded; an unknown one is 404.
    assert_eq!(api.delete(&format!("/meshes/shop/ca/authorities/{old_id}")).await.0, 409);
    assert_eq!(api.delete("/meshes/shop/ca/authorities/not-an-id").await.0, 404);

    // A prepared rotation can be abandoned.
    assert_eq!(api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await.0, 200);
    let (_, ca) = api.get("/meshes/shop/ca").await;
    let prepared =
        ca["authorities"].as_array().unwrap().iter().find(|a| a["state"] == "prepared").unwrap().clone();
    let (status, ca) =
        api.delete(&format!("/meshes/shop/ca/authorities/{}", prepared["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "stable");
    assert_eq!(count_certs(&pem_bundle(&api).await.0), 1);
}

/// Writes an openssl config for a CA or an intermediate extension section.
fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn a_tenant_intermediate_signed_offline_becomes_the_signing_ca() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Owner).await);
    mesh_with_service(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = TenantRoot::new("shop.acme.trellis.internal");

    // Trellis makes the key and the CSR.
    let (status, created) = api.post("/meshes/shop/ca/intermediate-csr", &json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let csr = created["csr"].as_str().unwrap();
    let (_, ca) = api.get("/meshes/shop/ca").await;
    assert_eq!(ca["phase"], "awaiting-chain");
    assert_eq!(api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await.0, 409);
    let chain_path = format!("/meshes/shop/ca/authorities/{id}/chain");

    // Bad chains: not a CA; a certificate for another key; not PEM; too large.
    let not_ca = root.sign(csr, false);
    let (status, problem) = api.put(&chain_path, &json!({"certificateChain": not_ca})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "certificateChain");
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other.key"]);
    openssl_ok(d, &["req", "-new", "-key", "other.key", "-subj", "/CN=other", "-out", "other.csr"]);
    let wrong_key = root.sign(&std::fs::read_to_string(d.join("other.csr")).unwrap(), true);
    let (status, problem) = api.put(&chain_path, &json!({"certificateChain": wrong_key})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "certificateChain");
    assert!(problem["detail"].as_str().unwrap().contains("key"), "{problem}");
    let (status, problem) = api.put(&chain_path, &json!({"certificateChain": "hello"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "certificateChain");
    let (status, problem) = api.put(&chain_path, &json!({"certificateChain": "A".repeat(70 * 1024)})).await;
    assert!(status == 413 || status == 422, "{status} {problem}");
    let (status, problem) = api.put(&chain_path, &json!({"chain": "x"})).await;
    assert_eq!(status, 422, "{problem}");

    // The right chain: prepared, then active; new leaves verify with the tenant root.
    let good = root.sign(csr, true);
    let (status, ca) = api.put(&chain_path, &json!({"certificateChain": good})).await;
    assert_eq!(status, 200, "{ca}");
    assert_eq!(ca["phase"], "prepared");
    let (bundle, _) = pem_bundle(&api).await;
    assert_eq!(count_certs(&bundle), 2);
    let tenant_root = root.root_pem();
    assert!(bundle.contains(tenant_root.trim()), "the tenant root is in the bundle");
    assert_eq!(api.put(&chain_path, &json!({"certificateChain": good})).await.0, 404, "no longer pending");
    let (status, ca) = api.post("/meshes/shop/ca/rotation/activate", &json!({})).await;
    assert_eq!(status, 200, "{ca}");
    let active =
        ca["authorities"].as_array().unwrap().iter().find(|a| a["state"] == "active").unwrap().clone();
    assert_eq!(active["origin"], "intermediate_csr");
    assert_eq!(active["id"], id.as_str());
    let join = join_token(&api, json!({"service": "reviews"})).await;
    let (status, issued) = svid(&t, &join).await;
    assert_eq!(status, 200, "{issued}");
    let chain = issued["certificateChain"].as_str().unwrap();
    assert_eq!(count_certs(chain), 2, "leaf and the tenant intermediate");
    write(d, "root.pem", &tenant_root);
    write(d, "chain.pem", chain);
    write(d, "leaf.pem", &certs(chain)[0]);
    openssl_ok(d, &["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"]);

    // An uploaded CA: a bad one is refused with the field; a key that is not PEM names the key.
    let (status, problem) =
        api.post("/meshes/shop/ca/upload", &json!({"certificateChain": not_ca, "privateKey": "nope"})).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "privateKey");
    openssl_ok(d, &["pkcs8", "-topk8", "-nocrypt", "-in", "other.key", "-out", "other.p8"]);
    let other_key = std::fs::read_to_string(d.join("other.p8")).unwrap();
    let (status, problem) = api
        .post("/meshes/shop/ca/upload", &json!({"certificateChain": tenant_root, "privateKey": other_key}))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "certificateChain");

    // Nothing the tenant uploaded or Trellis generated is stored in clear.
    let dump = pg_dump(&db).await;
    assert!(!dump.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn only_admins_operate_the_ca_and_other_tenants_see_nothing() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let admin = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    mesh_with_service(&admin).await;
    for role in [Role::Viewer, Role::Editor] {
        let api = Api::new(&t, "acme", &token(&db, "acme", role).await);
        assert_eq!(api.get("/meshes/shop/ca").await.0, 200, "{role} reads the CA");
        assert_eq!(api.get("/meshes/shop/ca/bundle").await.0, 200);
        assert_eq!(api.get("/meshes/shop/bootstrap/grpc?service=reviews&node=n").await.0, 200);
        for (method, path, body) in [
            (reqwest::Method::POST, "/meshes/shop/ca/rotation/prepare", json!({})),
            (reqwest::Method::POST, "/meshes/shop/ca/rotation/activate", json!({})),
            (reqwest::Method::POST, "/meshes/shop/ca/intermediate-csr", json!({})),
            (reqwest::Method::PUT, "/meshes/shop/ca/settings", json!({"svidTtlSeconds": 7200})),
            (reqwest::Method::POST, "/meshes/shop/join-tokens", json!({"service": "reviews"})),
            (reqwest::Method::GET, "/meshes/shop/join-tokens", json!(null)),
        ] {
            let (status, problem) = send(api.req(method.clone(), path).json(&body)).await;
            assert_eq!(status, 403, "{role} {method} {path}: {problem}");
        }
    }
    assert_eq!(admin.post("/meshes/shop/ca/rotation/prepare", &json!({})).await.0, 200);
    join_token(&admin, json!({"service": "reviews"})).await;

    // Organization B's owner: everything of A's mesh is a 404.
    let other = Api { org: "acme".into(), ..Api::new(&t, "beta", &token(&db, "beta", Role::Owner).await) };
    for (method, path) in [
        (reqwest::Method::GET, "/meshes/shop/ca"),
        (reqwest::Method::GET, "/meshes/shop/ca/bundle"),
        (reqwest::Method::POST, "/meshes/shop/ca/rotation/activate"),
        (reqwest::Method::POST, "/meshes/shop/join-tokens"),
        (reqwest::Method::GET, "/meshes/shop/join-tokens"),
        (reqwest::Method::GET, "/meshes/shop/bootstrap/envoy?service=reviews&node=n"),
    ] {
        let (status, problem) =
            send(other.req(method.clone(), path).json(&json!({"service": "reviews"}))).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
    }
    // And B's own namespace has no such mesh.
    let own = Api::new(&t, "beta", &other.token);
    assert_eq!(own.get("/meshes/shop/ca").await.0, 404);
}

#[tokio::test]
async fn kek_rotate_rewraps_every_key_and_the_server_still_issues() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    let with_file = |cmd: &mut tokio::process::Command| {
        cmd.env_remove("TRELLIS_KEK")
            .env("TRELLIS_KEK_FILE", &kek_file)
            .env("TRELLIS_DATABASE_URL", db.owner_url());
    };
    let mut cmd = trellis();
    with_file(&mut cmd);
    cmd.args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    assert!(kek_file.is_file(), "the KEK file was created");
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    mesh_with_service(&api).await;
    let join = join_token(&api, json!({"service": "reviews"})).await;
    assert_eq!(svid(&t, &join).await.0, 200);
    t.stop(std::time::Duration::from_secs(10)).await;
    let before = std::fs::read_to_string(&kek_file).unwrap();

    let mut cmd = trellis();
    with_file(&mut cmd);
    let out = cmd.args(["kek", "rotate"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // The mesh's CA and the platform CA.
    assert!(stdout.contains("2 CA keys re-wrapped"), "{stdout}");
    let keys = |text: &str| -> Vec<String> {
        text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
    };
    let (before, after) = (keys(&before), keys(&std::fs::read_to_string(&kek_file).unwrap()));
    assert_eq!(after.len(), 2, "the new KEK first, the old one kept: {after:?}");
    assert_eq!(after[1], before[0]);
    let new_id = after[0].split_whitespace().next().unwrap().to_owned();
    let mut admin = db.admin_conn().await;
    let ids: Vec<(String,)> =
        sqlx::query_as("SELECT key_kek_id FROM mesh_cas UNION ALL SELECT key_kek_id FROM platform_ca")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert!(ids.iter().all(|(id,)| *id == new_id), "{ids:?} vs {new_id}");

    let mut cmd = trellis();
    with_file(&mut cmd);
    cmd.args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &api.token);
    assert_eq!(svid(&t, &join).await.0, 200, "issues after the rotation");
    assert_eq!(api.post("/meshes/shop/ca/rotation/prepare", &json!({})).await.0, 200);
}
