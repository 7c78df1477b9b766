//! `trellis serve` as an operator meets it: announced address, health, readiness, metrics,
//! logs, graceful shutdown.

use std::time::Duration;

use serde_json::Value;
use trellis_store::testing::TestDb;
use trellis_tests::{Trellis, trellis};

async fn start(db: &TestDb, extra: &[&str]) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]).args(extra);
    Trellis::start(cmd).await
}

#[tokio::test]
async fn serves_health_readiness_and_metrics_then_stops_on_sigterm() {
    let db = TestDb::create().await;
    let t = start(&db, &[]).await;
    assert!(t.base.starts_with("http://127.0.0.1:"), "{}", t.base);

    let res = t.get("/healthz").await;
    assert_eq!(res.status(), 200);
    let res = t.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_eq!(body["schema"]["applied"], body["schema"]["expected"]);

    let res = t.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    for metric in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1",
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\",status=\"200\"",
        "trellis_change_feed_connects_total ",
        "trellis_leader ",
    ] {
        assert!(text.contains(metric), "/metrics lacks {metric:?}:\n{text}");
    }
    let rss = t.metric("process_resident_memory_bytes").await.unwrap();
    assert!(rss > 1e6, "resident memory {rss}");

    // Unknown paths: a problem document with a request id, never HTML or an empty body.
    let res = t.get("/no/such/thing").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("x-request-id"));
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert!(problem["detail"].as_str().unwrap().contains("/no/such/thing"));

    // A request id the client sends comes back unchanged.
    let res =
        t.http.get(format!("{}/healthz", t.base)).header("x-request-id", "req-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-123");

    let status = t.stop(Duration::from_secs(15)).await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

#[tokio::test]
async fn readiness_fails_when_the_schema_is_behind_or_the_database_is_gone() {
    let db = TestDb::create().await;
    let t = start(&db, &[]).await;
    assert_eq!(t.get("/readyz").await.status(), 200);

    let mut admin = db.admin_conn().await;
    sqlx::query("UPDATE _sqlx_migrations SET version = -version").execute(&mut admin).await.unwrap();
    let res = t.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let problem: Value = res.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("trellis migrate"), "{problem}");
    assert_eq!(t.get("/healthz").await.status(), 200, "liveness must not depend on the database");
    sqlx::query("UPDATE _sqlx_migrations SET version = -version").execute(&mut admin).await.unwrap();
    assert_eq!(t.get("/readyz").await.status(), 200);

    // The database refuses connections and drops the ones it has.
    let name = db.name.clone();
    let mut postgres = sqlx::PgConnection::connect_with(
        &trellis_store::testing::admin_url().parse::<sqlx::postgres::PgConnectOptions>().unwrap(),
    )
    .await
    .unwrap();
    use sqlx::Connection;
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")))
        .execute(&mut postgres)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(&mut postgres)
        .await
        .unwrap();
    let res = t.get("/readyz").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(t.get("/healthz").await.status(), 200);
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")))
        .execute(&mut postgres)
        .await
        .unwrap();
    // It recovers by itself once the database is back.
    let mut ok = false;
    for _ in 0..50 {
        if t.get("/readyz").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "readiness did not recover");
    t.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::create().await;
    let t = start(&db, &["--log-format", "json"]).await;
    let (_, stderr) = t.output();
    let t2 = t.stop(Duration::from_secs(15)).await;
    assert!(t2.success());
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_and_is_idempotent() {
    let db = TestDb::create().await; // already migrated by the harness: run again twice
    for _ in 0..2 {
        let out =
            trellis().env("TRELLIS_DATABASE_URL", db.owner_url()).arg("migrate").output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
    }
    let out = trellis()
        .env("TRELLIS_DATABASE_URL", "postgres://trellis_owner@127.0.0.1:1/nothing")
        .arg("migrate")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("applying migrations"));
}

#[tokio::test]
async fn help_names_the_commands_and_the_environment() {
    let out = trellis().arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in ["serve", "migrate", "TRELLIS_DATABASE_URL", "TRELLIS_HTTP_ADDR", "TRELLIS_LOG_FORMAT"] {
        assert!(help.contains(s), "--help lacks {s}:\n{help}");
    }
}
