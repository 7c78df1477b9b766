//! `trellis apply / get / delete` and the observe commands (`logs`, `why`, `impact`) against a
//! running server, as an operator uses them.

use serde_json::Value;
use trellis_model::Role;
use trellis_store::AccessLogRecord;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, token, trellis};

struct Cli {
    server: String,
    token: String,
    home: std::path::PathBuf,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = trellis()
            .env("TRELLIS_SERVER", &self.server)
            .env("TRELLIS_TOKEN", &self.token)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

#[tokio::test]
async fn apply_get_delete_round_trip() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Editor).await;
    let home = std::env::temp_dir().join(format!("trellis-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli { server: t.base.clone(), token: secret.clone(), home: home.clone() };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reviews.yaml");

    // Apply creates the mesh first (it is not first in the file order that matters), then the rest.
    let (ok, out, err) = cli.run(&["apply", "-f", example]).await;
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "mesh/shop created");
    assert!(lines.contains(&"httproute/reviews created"), "{out}");
    assert_eq!(lines.iter().filter(|l| l.ends_with("created")).count(), 10, "{out}");
    // Applying again changes nothing.
    let (ok, out, _) = cli.run(&["apply", "-f", example]).await;
    assert!(ok);
    assert_eq!(out.lines().filter(|l| l.ends_with("unchanged")).count(), 10, "{out}");

    // get -o json is exactly what the API returns.
    let (ok, out, err) = cli.run(&["get", "httproute", "reviews", "--mesh", "shop", "-o", "json"]).await;
    assert!(ok, "{err}");
    let from_cli: Value = serde_json::from_str(&out).unwrap();
    let api = Api::new(&t, "acme", &secret);
    assert_eq!(from_cli, api.get("/meshes/shop/http-routes/reviews").await.1);
    // -o yaml parses back, and can be applied again unchanged.
    let (ok, yaml, _) = cli.run(&["get", "services", "--mesh", "shop", "-o", "yaml"]).await;
    assert!(ok);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    let file = home.join("services.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let (ok, out, err) = cli.run(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.ends_with("unchanged")).count(), 3, "{out}");
    // The table names every service; a selector narrows it.
    let (ok, out, _) = cli.run(&["get", "svc", "--mesh", "shop"]).await;
    assert!(ok);
    assert!(out.starts_with("NAME"), "{out}");
    for name in ["reviews", "productpage", "db"] {
        assert!(out.contains(name), "{out}");
    }
    let (_, out, _) = cli.run(&["get", "services", "--mesh", "shop", "-l", "team=books"]).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out, _) = cli.run(&["get", "meshes"]).await;
    assert!(ok && out.contains("shop"), "{out}");

    // A bad document: the server's field path, a non-zero exit, and the good ones still applied.
    let bad = home.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Service\nmetadata: {name: ok, mesh: shop}\nspec: {ports: [{port: 80, protocol: http}]}\n---\n\
         kind: HTTPRoute\nmetadata: {name: broken, mesh: shop}\nspec:\n  targetRef: {service: reviews}\n  rules:\n    - backendRefs: [{service: reviews, weight: -1}]\n",
    )
    .unwrap();
    let (ok, out, err) = cli.run(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(out.contains("service/ok created"), "{out}");
    assert!(err.contains("spec.rules[0].backendRefs[0].weight"), "{err}");

    // Delete, then it is gone (and get says so, with a non-zero exit).
    let (ok, out, _) = cli.run(&["delete", "httproute", "reviews", "--mesh", "shop"]).await;
    assert!(ok && out.contains("httproute/reviews deleted"), "{out}");
    let (ok, _, err) = cli.run(&["get", "httproute", "reviews", "--mesh", "shop"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");

    // Server and token from a config file instead of the environment.
    let conf = home.join(".config/trellis");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("config.yaml"), format!("server: {}\ntoken: {secret}\nmesh: shop\n", t.base))
        .unwrap();
    let out = trellis()
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .args(["get", "services"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reviews"));
    // No token anywhere: a clear message.
    let empty = home.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = trellis().env("HOME", &empty).args(["get", "meshes"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn a_client_error_is_printed_once_plainly_with_a_failing_exit() {
    // Nothing listens on this port: the server is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = trellis()
        .env("TRELLIS_SERVER", format!("http://127.0.0.1:{port}"))
        .env("TRELLIS_TOKEN", "trls_pat_unused")
        .env("TRELLIS_ORG", "acme")
        .env("TRELLIS_LOG", "info")
        .args(["get", "meshes"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stderr.lines().count(), 1, "one line, once: {stderr:?}");
    assert!(stderr.starts_with("trellis: ") && stderr.contains(&port.to_string()), "{stderr:?}");
    assert!(!stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'), "no colour codes: {stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
}

/// One access-log entry as a proxy would report it: `source` called reviews.
fn logged(mesh: uuid::Uuid, source: &str, outcome: &str, status: i32, path: &str) -> AccessLogRecord {
    AccessLogRecord {
        mesh_id: mesh,
        logged_at: chrono::Utc::now(),
        reporter: "reviews".into(),
        direction: "inbound".into(),
        protocol: "http".into(),
        outcome: outcome.into(),
        source_service: Some(source.into()),
        source_identity: Some(format!("spiffe://shop.acme.trellis.internal/ns/shop/sa/{source}")),
        source_address: Some("10.0.0.1:5555".into()),
        destination_service: Some("reviews".into()),
        destination_identity: None,
        method: Some("POST".into()),
        authority: Some("reviews".into()),
        path: Some(path.into()),
        status: Some(status),
        response_flags: String::new(),
        response_details: String::new(),
        rbac_policy: None,
        audit_policy: None,
        route: None,
        upstream_cluster: None,
        duration_ms: Some(1.5),
        bytes_received: Some(0),
        bytes_sent: Some(19),
    }
}

#[tokio::test]
async fn logs_why_and_impact_read_the_observe_api_as_a_person_would() {
    use chrono::{DurationRound, TimeDelta, Utc};
    use trellis_model::telemetry::{EdgeCounts, EdgeKey, ResponseClass};
    use trellis_model::{MeshName, OrgSlug, ResourceName};

    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Viewer).await;
    let editor = token(&db, "acme", Role::Editor).await;
    let home = std::env::temp_dir().join(format!("trellis-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli { server: t.base.clone(), token: secret.clone(), home: home.clone() };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reviews.yaml");
    let as_editor = Cli { server: t.base.clone(), token: editor, home: home.clone() };
    let (ok, _, err) = as_editor.run(&["apply", "-f", example]).await;
    assert!(ok, "{err}");

    // What the proxies reported: a denied call, a failed one, and an hour of productpage → reviews.
    let store = db.store().await;
    store.prepare_telemetry(Utc::now()).await.unwrap();
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let entries = [
        logged(mesh.id.as_uuid(), "productpage", "denied", 403, "/reviews/1"),
        logged(mesh.id.as_uuid(), "productpage", "error", 503, "/reviews/2"),
    ];
    tx.record_access_log(&entries).await.unwrap();
    let sample = trellis_store::EdgeSample {
        mesh: mesh.id,
        bucket_start: Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap(),
        key: EdgeKey {
            source: ResourceName::parse("productpage").unwrap(),
            destination: ResourceName::parse("reviews").unwrap(),
            destination_subset: Default::default(),
            route: None,
            class: ResponseClass::Success,
        },
        counts: EdgeCounts { requests: 40, successes: 40, ..Default::default() },
    };
    tx.record_edges(&[sample]).await.unwrap();
    tx.commit().await.unwrap();

    // logs: a table, newest first; --denied keeps the denial only.
    let (ok, out, err) = cli.run(&["logs", "shop", "--since", "10m"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("DECISION") && lines[0].ends_with("ID"),
        "{out}"
    );
    let (ok, out, err) = cli.run(&["logs", "shop", "--denied", "--service", "reviews"]).await;
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "{out}");
    let row = &rows[0];
    assert_eq!(
        &row[1..8],
        ["denied", "403", "productpage", "reviews", "POST", "/reviews/1", "default-deny"],
        "{out}"
    );
    let id = row[8];
    let (ok, out, _) = cli.run(&["logs", "shop", "--service", "db"]).await;
    assert!(ok && out.lines().count() == 1, "only the header: {out}");

    // why: one paragraph saying what decided it.
    let (ok, out, err) = cli.run(&["why", "shop", id]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(out.starts_with("POST /reviews/1 from productpage to reviews at "), "{out}");
    assert!(
        out.contains("status 403") && out.contains("default deny: no allow rule matched the caller"),
        "{out}"
    );
    let (ok, _, err) = cli.run(&["why", "shop", &uuid::Uuid::new_v4().to_string()]).await;
    assert!(!ok && err.contains("404"), "{err}");

    // impact: a deny for productpage would refuse its 40 recorded calls.
    let policy = home.join("deny.yaml");
    std::fs::write(
        &policy,
        "kind: AccessPolicy\nmetadata: {name: lockdown}\nspec:\n  targetRef: {service: reviews}\n  \
         rules: [{action: Deny, from: [{service: productpage}]}]\n",
    )
    .unwrap();
    let (ok, out, err) = cli.run(&["impact", "shop", "-f", policy.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("Saving AccessPolicy lockdown in mesh shop would deny 40 calls"), "{out}");
    let edge = out.lines().find(|l| l.starts_with("productpage")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = edge.split_whitespace().collect();
    assert_eq!(&cells[..3], ["productpage", "reviews", "40"], "{out}");
    assert!(edge.contains("denied (lockdown/rules/0)"), "{out}");
    // Another organization sees nothing of it.
    let other = token(&db, "globex", Role::Admin).await;
    let stranger = Cli { server: t.base.clone(), token: other, home: home.clone() };
    let (ok, _, err) = stranger.run(&["logs", "shop", "--org", "acme"]).await;
    assert!(!ok && err.contains("404"), "{err}");
    let _ = std::fs::remove_dir_all(&home);
}
