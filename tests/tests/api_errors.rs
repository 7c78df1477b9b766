//! Every error is a problem document, including those made outside the handlers (extractor
//! rejections, the router's fallbacks, body limits, timeouts), and a database outage is a
//! 503 to retry, not a server error.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, DbRelay, Trellis, send, token, trellis};

async fn start(db_url: String, extra: &[&str]) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db_url).args(["--http-addr", "127.0.0.1:0"]).args(extra);
    Trellis::start(cmd).await
}

fn is_problem(res: &reqwest::Response) -> bool {
    res.headers().get("content-type").is_some_and(|v| v == "application/problem+json")
}

#[tokio::test]
async fn every_operation_answers_a_bad_path_parameter_with_a_problem() {
    let db = TestDb::create().await;
    let t = start(db.owner_url(), &[]).await;
    let owner = token(&db, "acme", Role::Owner).await;
    let doc: Value = t.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.contains('{') {
            continue;
        }
        // Every path parameter as a byte that is not UTF-8.
        let bad =
            path.split('/').map(|seg| if seg.starts_with('{') { "%FF" } else { seg }).collect::<Vec<_>>();
        let url = format!("{}{}", t.base, bad.join("/"));
        for method in ops.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = t
                .http
                .request(method.clone(), &url)
                .bearer_auth(&owner)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            assert!((400..500).contains(&status), "{method} {url}: {status}");
            assert!(is_problem(&res), "{method} {url}: {status} {:?}", res.headers().get("content-type"));
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["status"], status, "{method} {url}: {body}");
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} operations have path parameters");
}

#[tokio::test]
async fn errors_outside_the_handlers_are_problems_too() {
    let db = TestDb::create().await;
    let t = start(db.owner_url(), &["--body-limit", "1024", "--request-timeout", "1s"]).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Owner).await);
    // The router's own answers.
    let (status, p) = send(t.http.get(format!("{}/no/such/route", t.base))).await;
    assert_eq!((status, p["type"].as_str().unwrap()), (404, "https://trellis.dev/problems/not-found"));
    let res = t.http.patch(format!("{}/healthz", t.base)).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(is_problem(&res));
    // Query strings that do not parse, bodies over the limit.
    assert_eq!(send(api.req(reqwest::Method::GET, "/meshes?limit=many")).await.0, 400);
    let huge = json!({"spec": {"ports": [{"port": 1, "protocol": "tcp"}]}, "pad": "x".repeat(4096)});
    let (status, p) = send(api.req(reqwest::Method::PUT, "/meshes/shop").json(&huge)).await;
    assert_eq!(status, 413, "{p}");

    // A body that does not arrive in time: 408, as a problem.
    let addr = t.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/orgs/acme/meshes/shop HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"spec\":",
        api.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("content-type: application/problem+json"), "{answer}");
    assert_eq!(api.get("/meshes/shop").await.0, 404, "nothing written");
}

#[tokio::test]
async fn a_database_outage_is_a_503_to_retry_and_loses_no_acknowledged_write() {
    let db = TestDb::create().await;
    let url = db.owner_url();
    let host = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    let relay = DbRelay::start(host.clone()).await;
    let t = start(url.replace(&host, &relay.addr.to_string()), &[]).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Editor).await);
    let service = |port: u16| json!({"spec": {"ports": [{"port": port, "protocol": "http"}]}});
    assert_eq!(api.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);
    assert_eq!(api.put("/meshes/shop/services/before", &service(8080)).await.0, 201);

    relay.down();
    let res = api
        .req(reqwest::Method::PUT, "/meshes/shop/services/during")
        .json(&service(8081))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "{:?}", t.output());
    assert!(is_problem(&res));
    assert!(res.headers().get("retry-after").is_some_and(|v| v.to_str().unwrap().parse::<u32>().is_ok()));
    let res = api.req(reqwest::Method::GET, "/meshes/shop/services/before").send().await.unwrap();
    assert_eq!(res.status(), 503, "reads too: {:?}", t.output());
    let res = t.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let why: Value = res.json().await.unwrap();
    assert!(why["detail"].as_str().unwrap().contains("the database does not answer:"), "{why}");
    assert_eq!(t.get("/healthz").await.status(), 200, "liveness does not depend on the database");

    relay.up();
    let mut status = 0;
    for _ in 0..50 {
        status = api.put("/meshes/shop/services/after", &service(8082)).await.0;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "while it comes back, only 503");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 201);
    assert_eq!(api.get("/meshes/shop/services/before").await.0, 200);
    assert_eq!(t.get("/readyz").await.status(), 200);
}

/// Makes the next `times` audit writes fail as PostgreSQL fails a transaction that deadlocked
/// (a sequence counts them: it is not rolled back with the transaction).
async fn collide_on_audit(db: &TestDb, times: i64) {
    use sqlx::Executor;
    let mut admin = db.admin_conn().await;
    let sql = format!(
        "CREATE SEQUENCE audit_collisions;
         CREATE FUNCTION collide() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
         BEGIN
             IF nextval('audit_collisions') <= {times} THEN
                 RAISE EXCEPTION 'deadlock detected (simulated)' USING ERRCODE = 'deadlock_detected';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER collide BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION collide();"
    );
    admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
}

async fn collisions_seen(db: &TestDb) -> i64 {
    let mut admin = db.admin_conn().await;
    sqlx::query_scalar("SELECT last_value FROM audit_collisions").fetch_one(&mut admin).await.unwrap()
}

/// A server with the mesh `shop`, an admin's API, and the next `collisions` audit writes
/// failing as deadlocked.
async fn shop_colliding(collisions: i64) -> (TestDb, Trellis, Api) {
    let db = TestDb::create().await;
    let t = start(db.owner_url(), &[]).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    assert_eq!(api.put("/meshes/shop", &json!({"spec": {}})).await.0, 201);
    collide_on_audit(&db, collisions).await;
    (db, t, api)
}

#[tokio::test]
async fn a_write_rolled_back_by_a_deadlock_runs_again_and_is_written_once() {
    let (db, t, api) = shop_colliding(2).await;

    let service = json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}});
    let (status, body) = api.put("/meshes/shop/services/ratings", &service).await;
    assert_eq!(status, 201, "the third run succeeds: {body} {:?}", t.output());
    assert_eq!(collisions_seen(&db).await, 3, "two runs collided, the third wrote");
    let (status, audit) = api.get("/audit-events?limit=10").await;
    assert_eq!(status, 200, "{audit}");
    let writes = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"].as_str().unwrap().ends_with("/ratings"));
    assert_eq!(writes.count(), 1, "one change, one audit event: {audit}");
}

#[tokio::test]
async fn a_write_that_collides_on_every_run_is_a_503_to_retry_and_writes_nothing() {
    let (db, _t, api) = shop_colliding(1000).await;

    let res = api
        .req(reqwest::Method::PUT, "/meshes/shop/services/ratings")
        .json(&json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(is_problem(&res));
    assert!(res.headers().get("retry-after").is_some());
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "https://trellis.dev/problems/contended", "{problem}");
    assert_eq!(collisions_seen(&db).await, 3, "three runs in all");
    assert_eq!(api.get("/meshes/shop/services/ratings").await.0, 404, "nothing written");
}
