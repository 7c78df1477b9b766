//! The configuration API as its users meet it: round trips for every kind, precise errors,
//! tenant isolation, roles, conditional writes, pagination, idempotency.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, document_path, example_documents, send, token, trellis};

async fn start(db: &TestDb) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args([
        "--http-addr",
        "127.0.0.1:0",
        "--body-limit",
        "65536",
    ]);
    Trellis::start(cmd).await
}

/// PUTs every example document; returns them.
async fn apply_example(api: &Api) -> Vec<Value> {
    let docs = example_documents();
    for doc in &docs {
        let (status, body) = api.put(&document_path(doc), doc).await;
        assert_eq!(status, 201, "PUT {}: {body}", document_path(doc));
    }
    docs
}

#[tokio::test]
async fn every_kind_round_trips_and_rewrites_are_idempotent() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    let docs = apply_example(&api).await;

    let mut kinds = BTreeSet::new();
    for doc in &docs {
        let path = document_path(doc);
        let res = api.req(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        let got: Value = res.json().await.unwrap();
        assert_eq!(got["kind"], doc["kind"]);
        assert_eq!(got["apiVersion"], "trellis.dev/v1");
        assert_eq!(etag, format!("\"{}\"", got["metadata"]["version"].as_str().unwrap()));
        assert_eq!(got["metadata"]["generation"], 1);
        assert_eq!(got["status"]["observedGeneration"], 1);
        if doc["kind"] != "Mesh" {
            kinds.insert(doc["kind"].as_str().unwrap().to_owned());
            assert_eq!(got["spec"], canonical(&doc["spec"]), "{path}");
            assert_eq!(
                got["metadata"]["labels"],
                doc["metadata"].get("labels").cloned().unwrap_or(json!({}))
            );
        } else {
            assert_eq!(got["spec"]["trustDomain"], "shop.acme.trellis.internal");
        }
        // A GET can be PUT back unchanged: 200, nothing written, same version.
        let (status, again) = api.put(&path, &got).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["metadata"]["version"], got["metadata"]["version"]);
        assert_eq!(again["metadata"]["generation"], 1);
    }
    assert_eq!(kinds.len(), 7, "every kind is covered: {kinds:?}");

    // A real change bumps the generation and the version.
    let mut route = api.get("/meshes/shop/http-routes/reviews").await.1;
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(50);
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
    let (status, updated) = api.put("/meshes/shop/http-routes/reviews", &route).await;
    assert_eq!(status, 200);
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_ne!(updated["metadata"]["version"], route["metadata"]["version"]);

    // Lists, with a label selector.
    let (status, list) = api.get("/meshes/shop/services").await;
    assert_eq!(status, 200);
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "productpage", "reviews"]);
    // Kubernetes-style prefixed label keys are accepted.
    let mut db_svc = api.get("/meshes/shop/services/db").await.1;
    db_svc["metadata"]["labels"] = json!({"app.kubernetes.io/name": "postgres"});
    assert_eq!(api.put("/meshes/shop/services/db", &db_svc).await.0, 200);
    let (_, list) = api.get("/meshes/shop/services?labelSelector=app.kubernetes.io%2Fname%3Dpostgres").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api.get("/meshes/shop/services?labelSelector=team%3Dbooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api.get("/meshes/shop/services?labelSelector=team%21%3Dbooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Delete: a referenced service refuses; a route goes; then it is gone.
    let (status, problem) = api.delete("/meshes/shop/services/reviews").await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("http-routes/reviews"));
    let (status, _) = api.delete("/meshes/shop/tcp-routes/db").await;
    assert_eq!(status, 204);
    assert_eq!(api.get("/meshes/shop/tcp-routes/db").await.0, 404);

    // Every write is in the audit log.
    let store = db.store().await;
    let org = store.org_by_slug(&trellis_model::OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    assert_eq!(tx.count_audit_events().await.unwrap(), docs.len() as i64 + 3);
}

/// The canonical form of a spec: what the server stores and returns.
fn canonical(spec: &Value) -> Value {
    let mut v = spec.clone();
    // Defaults made explicit by the server.
    if let Some(rules) = v.get_mut("rules").and_then(Value::as_array_mut) {
        for r in rules {
            for m in r.get_mut("matches").and_then(Value::as_array_mut).into_iter().flatten() {
                for h in m.get_mut("headers").and_then(Value::as_array_mut).into_iter().flatten() {
                    h.as_object_mut().unwrap().entry("type").or_insert(json!("Exact"));
                }
            }
            if let Some(brs) = r.get_mut("backendRefs").and_then(Value::as_array_mut) {
                for b in brs {
                    b.as_object_mut().unwrap().entry("weight").or_insert(json!(1));
                }
            }
        }
    }
    if let Some(brs) = v.get_mut("backendRefs").and_then(Value::as_array_mut) {
        for b in brs {
            b.as_object_mut().unwrap().entry("weight").or_insert(json!(1));
        }
    }
    v
}

#[tokio::test]
async fn bad_input_gets_a_precise_problem_and_changes_nothing() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    apply_example(&api).await;
    let revision = |v: &Value| v["metadata"]["revision"].as_i64().unwrap();
    let before = revision(&api.get("/meshes/shop").await.1);

    let mut route = api.get("/meshes/shop/http-routes/reviews").await.1;
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(2_000_000);
    let (status, p) = api.put("/meshes/shop/http-routes/reviews", &route).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.rules[1].backendRefs[1].weight");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("between 0 and 1000000"));

    let mut route2 = api.get("/meshes/shop/http-routes/reviews").await.1;
    route2["spec"]["rules"][0]["backendRefs"][0]["service"] = json!("nope");
    let (status, p) = api.put("/meshes/shop/http-routes/reviews", &route2).await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "spec.rules[0].backendRefs[0].service");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("no service named \"nope\""));

    // A regex Envoy would refuse (its RE2 program is over 1000 instructions), and a rule that
    // can never match (after one that takes every request), name their fields (#12).
    let mut route3 = api.get("/meshes/shop/http-routes/reviews").await.1;
    route3["spec"]["rules"][0]["matches"][0]["headers"][0] =
        json!({"type": "RegularExpression", "name": "x-beta", "value": r"\pL+"});
    let (status, p) = api.put("/meshes/shop/http-routes/reviews", &route3).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.rules[0].matches[0].headers[0].value", "{p}");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("too complex for Envoy"), "{p}");
    let mut route4 = api.get("/meshes/shop/http-routes/reviews").await.1;
    let rules = route4["spec"]["rules"].as_array_mut().unwrap();
    rules.swap(0, 1);
    let (status, p) = api.put("/meshes/shop/http-routes/reviews", &route4).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.rules[1]", "{p}");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("unreachable"), "{p}");

    let (status, p) = api.put("/meshes/shop/services/x", &json!({"spec": {"ports": []}, "colour": 1})).await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "colour");
    let (status, p) = api
        .put("/meshes/shop/services/Bad_Name", &json!({"spec": {"ports": [{"port": 1, "protocol": "tcp"}]}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "metadata.name");
    let (status, p) = api
        .put(
            "/meshes/shop/services/a",
            &json!({"metadata": {"name": "b"}, "spec": {"ports": [{"port": 1, "protocol": "tcp"}]}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "metadata.name");

    // Transport-level mistakes.
    let (status, p) = send(
        api.req(reqwest::Method::PUT, "/meshes/shop/services/a")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400, "{p}");
    let (status, _) = send(
        api.req(reqwest::Method::PUT, "/meshes/shop/services/a")
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_eq!(status, 415);
    let huge = json!({"spec": {"ports": [{"port": 1, "protocol": "tcp"}]}, "metadata": {"labels": {"a": "b".repeat(70_000)}}});
    let (status, _) = api.put("/meshes/shop/services/a", &huge).await;
    assert_eq!(status, 413);
    let (status, p) = api.get("/meshes/shop/widgets").await;
    assert_eq!(status, 404);
    assert!(p["detail"].as_str().unwrap().contains("http-routes"));
    let (status, _) = api.get("/meshes/shop/services?limit=0").await;
    assert_eq!(status, 400);
    let (status, _) = api.get("/meshes/shop/services?cursor=%%%").await;
    assert_eq!(status, 400);
    let (status, _) = send(api.req(reqwest::Method::PATCH, "/meshes/shop")).await;
    assert_eq!(status, 405);

    // None of it was written.
    assert_eq!(revision(&api.get("/meshes/shop").await.1), before);
    assert_eq!(api.get("/meshes/shop/services/a").await.0, 404);
    assert_eq!(api.get("/meshes/shop/http-routes/reviews").await.1["metadata"]["generation"], 1);
}

#[tokio::test]
async fn another_organization_sees_only_404s() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let a = Api::new(&t, "org-a", &token(&db, "org-a", Role::Owner).await);
    apply_example(&a).await;
    let b_token = token(&db, "org-b", Role::Owner).await;
    // B's token against A's organization: indistinguishable from a missing organization.
    let b_on_a = Api::new(&t, "org-a", &b_token);
    let missing = Api::new(&t, "no-such-org", &b_token);
    for path in
        ["", "/meshes", "/meshes/shop", "/meshes/shop/services", "/meshes/shop/services/reviews", "/tokens"]
    {
        let (status, body) = b_on_a.get(path).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        let text = body.to_string();
        assert!(!text.contains("reviews") && !text.contains("trust"), "{text}");
        assert_eq!(missing.get(path).await.0, 404);
    }
    let (status, _) = b_on_a
        .put("/meshes/shop/services/evil", &json!({"spec": {"ports": [{"port": 1, "protocol": "tcp"}]}}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(b_on_a.delete("/meshes/shop").await.0, 404);
    // B may use the same names in its own organization, but not A's trust domain.
    let b = Api::new(&t, "org-b", &b_token);
    assert_eq!(b.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);
    let (status, p) =
        b.put("/meshes/other", &json!({"spec": {"trustDomain": "shop.org-a.trellis.internal"}})).await;
    assert_eq!(status, 422, "a name under org-a's slug is org-a's: {p}");
    assert_eq!(p["errors"][0]["field"], "spec.trustDomain");
    assert_eq!(a.put("/meshes/own", &json!({"spec": {"trustDomain": "a.example.com"}})).await.0, 201);
    let (status, p) = b.put("/meshes/other", &json!({"spec": {"trustDomain": "a.example.com"}})).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.trustDomain");
    assert_eq!(a.get("/meshes/shop/services/reviews").await.0, 200);
}

#[tokio::test]
async fn each_role_can_do_exactly_what_the_matrix_allows() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let owner = Api::new(&t, "acme", &token(&db, "acme", Role::Owner).await);
    apply_example(&owner).await;
    let svc = json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}});
    for role in Role::ALL {
        let api = Api::new(&t, "acme", &token(&db, "acme", role).await);
        let can_write = role.allows(trellis_model::Action::WriteConfig);
        let can_tokens = role.allows(trellis_model::Action::ManageTokens);
        assert_eq!(api.get("/meshes/shop/services/reviews").await.0, 200, "{role} read");
        let (status, _) = api.put(&format!("/meshes/shop/services/by-{role}"), &svc).await;
        assert_eq!(status, if can_write { 201 } else { 403 }, "{role} write");
        let (status, _) = api.delete("/meshes/shop/tcp-routes/db").await;
        assert!(
            if can_write { status == 204 || status == 404 } else { status == 403 },
            "{role} delete: {status}"
        );
        assert_eq!(api.get("/tokens").await.0, if can_tokens { 200 } else { 403 }, "{role} tokens");
        let (status, _) = api.post("/tokens", &json!({"name": "x", "role": "viewer"})).await;
        assert_eq!(status, if can_tokens { 201 } else { 403 }, "{role} create token");
    }
    // An admin cannot mint an owner token.
    let admin = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    assert_eq!(admin.post("/tokens", &json!({"name": "x", "role": "owner"})).await.0, 403);
    // No token, a malformed one, or a forged one (valid checksum, unknown secret): 401.
    let (status, _) = send(t.http.get(owner.url("/meshes"))).await;
    assert_eq!(status, 401);
    let bad = Api::new(&t, "acme", "trls_pat_nope");
    assert_eq!(bad.get("/meshes").await.0, 401);
    let mut forged = owner.token.clone();
    forged.replace_range(20..21, if &forged[20..21] == "A" { "B" } else { "A" });
    assert_eq!(Api::new(&t, "acme", &forged).get("/meshes").await.0, 401);
}

#[tokio::test]
async fn tokens_are_shown_once_and_revocation_is_immediate() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let admin = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    let (status, created) = admin.post("/tokens", &json!({"name": "ci", "role": "editor"})).await;
    assert_eq!(status, 201);
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("trls_pat_"));
    let ci = Api::new(&t, "acme", &secret);
    assert_eq!(ci.put("/meshes/m", &json!({"spec": {}})).await.0, 201);
    let (_, list) = admin.get("/tokens").await;
    assert!(!list.to_string().contains(&secret), "a token list shows a secret");
    let entry = list["items"].as_array().unwrap().iter().find(|i| i["name"] == "ci").unwrap();
    assert!(entry["lastUsedAt"].is_string());
    let (status, revoked) = admin.delete(&format!("/tokens/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert!(revoked["revokedAt"].is_string());
    assert_eq!(ci.get("/meshes").await.0, 401);
    let (status, _) = admin
        .post("/tokens", &json!({"name": "old", "role": "viewer", "expiresAt": "2001-01-01T00:00:00Z"}))
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn concurrent_writers_with_the_same_if_match_one_wins_per_version() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    apply_example(&api).await;
    const K: usize = 8;
    const ROUNDS: usize = 5;
    let mut successes = 0;
    for round in 0..ROUNDS {
        let current = api.req(reqwest::Method::GET, "/meshes/shop/rate-limits/reviews").send().await.unwrap();
        let etag = current.headers()["etag"].to_str().unwrap().to_owned();
        let writers: Vec<_> = (0..K)
            .map(|w| {
                let api = api.clone();
                let etag = etag.clone();
                tokio::spawn(async move {
                    let body = json!({"spec": {"targetRef": {"service": "reviews"}, "local": {"requests": 10 + round * K + w, "interval": "1s"}}});
                    send(api.req(reqwest::Method::PUT, "/meshes/shop/rate-limits/reviews").header("if-match", etag).json(&body)).await.0
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for w in writers {
            statuses.push(w.await.unwrap());
        }
        let won = statuses.iter().filter(|s| **s == 200).count();
        let lost = statuses.iter().filter(|s| **s == 412).count();
        assert_eq!((won, lost), (1, K - 1), "round {round}: {statuses:?}");
        successes += won;
    }
    let (_, final_) = api.get("/meshes/shop/rate-limits/reviews").await;
    assert_eq!(final_["metadata"]["generation"], 1 + successes as i64);
    // A stale tag on delete is refused too; `*` needs only existence.
    let (status, _) = send(
        api.req(reqwest::Method::DELETE, "/meshes/shop/rate-limits/reviews")
            .header("if-match", "\"00000000-0000-0000-0000-000000000000\""),
    )
    .await;
    assert_eq!(status, 412);
    let (status, _) = send(api.req(reqwest::Method::PUT, "/meshes/shop/rate-limits/nope").header("if-match", "*").json(&json!({"spec": {"targetRef": {"service": "reviews"}, "local": {"requests": 1, "interval": "1s"}}}))).await;
    assert_eq!(status, 412, "If-Match on a missing resource");
    // If-None-Match: * creates only.
    let rl =
        json!({"spec": {"targetRef": {"service": "reviews"}, "local": {"requests": 1, "interval": "1s"}}});
    let put_new = |name: &str| {
        api.req(reqwest::Method::PUT, &format!("/meshes/shop/rate-limits/{name}"))
            .header("if-none-match", "*")
            .json(&rl)
    };
    assert_eq!(send(put_new("fresh")).await.0, 201);
    assert_eq!(send(put_new("fresh")).await.0, 412);
}

#[tokio::test]
async fn lists_page_with_cursors_and_posts_are_idempotent() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    assert_eq!(api.put("/meshes/m", &json!({"spec": {}})).await.0, 201);
    for i in 0..7 {
        let (status, b) = api
            .post("/meshes/m/services", &json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"port": 80, "protocol": "http"}]}}))
            .await;
        assert_eq!(status, 201, "{b}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=3&cursor={c}"),
            None => "?limit=3".to_owned(),
        };
        let (status, page) = api.get(&format!("/meshes/m/services{q}")).await;
        assert_eq!(status, 200);
        pages += 1;
        for i in page["items"].as_array().unwrap() {
            seen.push(i["metadata"]["name"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("svc-{i}")).collect::<Vec<_>>());
    assert_eq!(pages, 3);

    let body = json!({"metadata": {"name": "once"}, "spec": {"ports": [{"port": 80, "protocol": "http"}]}});
    let post = |b: &Value, key: &str| {
        api.req(reqwest::Method::POST, "/meshes/m/services").header("idempotency-key", key).json(b)
    };
    let first = post(&body, "k-1").send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post(&body, "k-1").send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let (status, _) = send(post(
        &json!({"metadata": {"name": "other"}, "spec": {"ports": [{"port": 81, "protocol": "http"}]}}),
        "k-1",
    ))
    .await;
    assert_eq!(status, 422, "a key reused for another request");
    let (status, _) = send(post(&body, "k-2")).await;
    assert_eq!(status, 409, "creating an existing name without a replayed key conflicts");
}

#[tokio::test]
async fn effective_lists_every_policy_of_a_service_in_order() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    let editor = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    apply_example(&editor).await;
    let (status, eff) = api.get("/meshes/shop/services/reviews/effective").await;
    assert_eq!(status, 200, "{eff}");
    assert_eq!(eff["defaultAccess"], "deny");
    let order: Vec<String> = eff["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["kind"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            "Service/reviews",
            "AccessPolicy/reviews-callers",
            "HTTPRoute/reviews",
            "CircuitBreaker/reviews",
            "HealthCheck/reviews",
            "RateLimit/reviews"
        ]
    );
    assert_eq!(api.get("/meshes/shop/services/nope/effective").await.0, 404);
}

/// Sends `n` concurrent create-only PUTs of `path`, writer `i` sending `body(i)`; returns the
/// statuses by writer.
async fn create_only_race(api: &Api, path: &str, n: usize, body: impl Fn(usize) -> Value) -> Vec<u16> {
    let writes = (0..n).map(|i| {
        let req = api.req(reqwest::Method::PUT, path).header("if-none-match", "*").json(&body(i));
        async move { send(req).await.0 }
    });
    futures::future::join_all(writes).await
}

#[tokio::test]
async fn create_only_writes_are_atomic_one_wins_and_is_the_one_stored() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    apply_example(&api).await;
    for round in 0..5 {
        let path = format!("/meshes/shop/services/race-{round}");
        let port = |i: usize| 1000 + i as u64;
        let statuses = create_only_race(
            &api,
            &path,
            100,
            |i| json!({"spec": {"ports": [{"port": port(i), "protocol": "http"}]}}),
        )
        .await;
        let winners: Vec<usize> = (0..statuses.len()).filter(|i| statuses[*i] < 300).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one 2xx: {statuses:?}");
        assert_eq!(statuses[winners[0]], 201);
        assert!(statuses.iter().all(|s| *s == 201 || *s == 412), "round {round}: {statuses:?}");
        let stored = api.get(&path).await.1;
        assert_eq!(
            stored["spec"]["ports"][0]["port"],
            json!(port(winners[0])),
            "round {round}: the 201 is stored"
        );
        assert_eq!(stored["metadata"]["generation"], 1);
    }
    // Meshes too (each creation also makes its CA).
    let statuses = create_only_race(
        &api,
        "/meshes/race",
        20,
        |i| json!({"metadata": {"labels": {"writer": i.to_string()}}, "spec": {}}),
    )
    .await;
    let winners: Vec<usize> = (0..statuses.len()).filter(|i| statuses[*i] < 300).collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    let stored = api.get("/meshes/race").await.1;
    assert_eq!(stored["metadata"]["labels"]["writer"], winners[0].to_string());
    // If-Match and If-None-Match: * together can never hold.
    let req = api
        .req(reqwest::Method::PUT, "/meshes/race")
        .header("if-none-match", "*")
        .header("if-match", "*")
        .json(&json!({"spec": {}}));
    assert_eq!(send(req).await.0, 400);
}

#[tokio::test]
async fn platform_trust_domains_cannot_be_squatted() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let evil = Api::new(&t, "evil", &token(&db, "evil", Role::Owner).await);
    // Another organization's predictable defaults, and Trellis's own domain, are refused.
    for td in ["prod.acme.trellis.internal", "acme.trellis.internal", "trellis.internal"] {
        let (status, p) = evil.put("/meshes/prod", &json!({"spec": {"trustDomain": td}})).await;
        assert_eq!(status, 422, "{td}: {p}");
        assert_eq!(p["errors"][0]["field"], "spec.trustDomain");
    }
    // One spelling per name: a trailing dot is not a second trust domain.
    let (status, p) = evil.put("/meshes/prod", &json!({"spec": {"trustDomain": "a.example.com."}})).await;
    assert_eq!((status, p["errors"][0]["field"].clone()), (422, json!("spec.trustDomain")), "{p}");
    // Names under its own slug are its own.
    let (status, p) =
        evil.put("/meshes/prod", &json!({"spec": {"trustDomain": "x.evil.trellis.internal"}})).await;
    assert_eq!(status, 201, "{p}");

    // An organization that held a slug keeps its meshes' trust domains after renaming; the
    // new holder of the slug still gets its meshes, under a default of its own.
    let (status, _) = evil.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201);
    let rename = evil.req(reqwest::Method::PATCH, "").json(&json!({"slug": "evil-old"}));
    assert_eq!(send(rename).await.0, 200);
    let old = Api::new(&t, "evil-old", &evil.token);
    assert_eq!(old.get("/meshes/shop").await.1["spec"]["trustDomain"], "shop.evil.trellis.internal");
    let heir = Api::new(&t, "evil", &token(&db, "evil", Role::Owner).await);
    let (status, mesh) = heir.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{mesh}");
    let td = mesh["spec"]["trustDomain"].as_str().unwrap();
    assert!(td.starts_with("shop.") && td.ends_with(".evil.trellis.internal"), "{td}");
    assert_ne!(td, "shop.evil.trellis.internal");
}

#[tokio::test]
async fn a_backend_port_must_be_one_its_service_exposes() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    apply_example(&api).await;
    let reviews_port = api.get("/meshes/shop/services/reviews").await.1["spec"]["ports"][0]["port"].clone();
    let route = |port: Value| {
        json!({"spec": {"targetRef": {"service": "reviews"}, "rules": [{"backendRefs": [
            {"service": "reviews", "weight": 1},
            {"service": "reviews", "weight": 1, "port": port},
        ]}]}})
    };
    let (status, p) = api.put("/meshes/shop/http-routes/ported", &route(json!(9999))).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], "spec.rules[0].backendRefs[1].port", "{p}");
    assert_eq!(api.get("/meshes/shop/http-routes/ported").await.0, 404, "nothing written");
    let (status, p) = api.put("/meshes/shop/http-routes/ported", &route(reviews_port)).await;
    assert_eq!(status, 201, "{p}");
}

#[tokio::test]
async fn a_token_reads_a_resource_with_the_answers_of_its_organization_scope() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let editor = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    for doc in example_documents() {
        let (status, body) = editor.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let viewer = token(&db, "acme", Role::Viewer).await;
    let other = Api::new(&t, "other", &token(&db, "other", Role::Owner).await);
    let (status, body) = Api::new(&t, "acme", &viewer).get("/meshes/shop/http-routes/reviews").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["propagation"]["summary"], "applied by 0 of 0 proxies");
    // Another organization's token, a missing or impossible mesh or name: 404 problems, as
    // for every other read.
    for (api, path) in [
        (&other, "/meshes/shop/http-routes/reviews".to_owned()),
        (&Api::new(&t, "other", &viewer), "/meshes/shop/http-routes/reviews".to_owned()),
        (&Api::new(&t, "acme", &viewer), "/meshes/nope/http-routes/reviews".to_owned()),
        (&Api::new(&t, "acme", &viewer), "/meshes/shop/http-routes/nope".to_owned()),
        (&Api::new(&t, "acme", &viewer), "/meshes/Sh%00p/http-routes/reviews".to_owned()),
        (&Api::new(&t, "acme", &viewer), format!("/meshes/shop/http-routes/{}", "x".repeat(300))),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["status"], 404, "{path}: {body}");
    }
    // A token that is not one: 401.
    let (status, _) = Api::new(&t, "acme", "trls_pat_nope").get("/meshes/shop/http-routes/reviews").await;
    assert_eq!(status, 401);
}
