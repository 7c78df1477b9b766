//! Unexpected traffic against a real `trellis serve` and PostgreSQL: half an hour of a mesh's
//! calls, written as ingestion writes them, rolled up and examined by the functions the
//! leader runs; the events come out of the REST API and the CLI, once each, and a new
//! caller's draft policy, previewed and applied, denies it and keeps the usual caller.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use trellis_model::telemetry::{EdgeCounts, EdgeKey, ResponseClass};
use trellis_model::traffic_events::Thresholds;
use trellis_model::{MeshName, OrgSlug, ResourceName, Role};
use trellis_store::testing::TestDb;
use trellis_store::{AccessLogRecord, EdgeSample, Store};
use trellis_tests::console::{OrgIds, as_user, assert_hidden_from, assert_valid_html, csrf_of, session};
use trellis_tests::{Api, serve_example_mesh, token, trellis};

/// `requests` calls of `source → destination` (`failures` of them 5xx) in the 10 s bucket
/// that starts `minute`.
fn calls(
    mesh: trellis_model::MeshId,
    minute: DateTime<Utc>,
    source: &str,
    destination: &str,
    requests: u64,
    failures: u64,
) -> Vec<EdgeSample> {
    let key = |class| EdgeKey {
        source: ResourceName::parse(source).unwrap(),
        destination: ResourceName::parse(destination).unwrap(),
        destination_subset: Default::default(),
        route: None,
        class,
    };
    let mut out = vec![EdgeSample {
        mesh,
        bucket_start: minute,
        key: key(ResponseClass::Success),
        counts: EdgeCounts {
            requests: requests - failures,
            successes: requests - failures,
            ..Default::default()
        },
    }];
    if failures > 0 {
        out.push(EdgeSample {
            mesh,
            bucket_start: minute,
            key: key(ResponseClass::ServerError),
            counts: EdgeCounts { requests: failures, ..Default::default() },
        });
    }
    out
}

fn denial(mesh: uuid::Uuid, source: &str) -> AccessLogRecord {
    AccessLogRecord {
        mesh_id: mesh,
        logged_at: Utc::now(),
        reporter: "reviews".into(),
        direction: "inbound".into(),
        protocol: "http".into(),
        outcome: "denied".into(),
        source_service: Some(source.into()),
        source_identity: None,
        source_address: Some("10.0.0.9:5555".into()),
        destination_service: Some("reviews".into()),
        destination_identity: None,
        method: Some("GET".into()),
        authority: Some("reviews".into()),
        path: Some("/admin".into()),
        status: Some(403),
        response_flags: String::new(),
        response_details: "rbac_access_denied_matched_policy[none]".into(),
        rbac_policy: None,
        audit_policy: None,
        route: None,
        upstream_cluster: None,
        duration_ms: Some(0.5),
        bytes_received: Some(0),
        bytes_sent: Some(19),
    }
}

/// Rolls up and examines every final minute, as the leader does after each rollup.
async fn scan(store: &Store) -> u64 {
    store.rollup_telemetry(Duration::ZERO).await.unwrap();
    let mut recorded = 0;
    loop {
        let r = store.scan_traffic_events(&Thresholds::default()).await.unwrap();
        assert_eq!(r.failed, 0);
        recorded += r.events;
        if r.minutes == 0 {
            return recorded;
        }
    }
}

async fn cli(api: &Api, home: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = trellis()
        .env("TRELLIS_SERVER", &api.base)
        .env("TRELLIS_TOKEN", &api.token)
        .env("TRELLIS_ORG", &api.org)
        .env("HOME", home)
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

fn kinds(page: &Value) -> Vec<(String, String, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap_or("*").to_owned(),
                e["destination"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_caller_is_one_event_with_a_draft_policy_that_denies_it_and_keeps_the_usual_caller() {
    let db = TestDb::create().await;
    let (t, api, store, _) = serve_example_mesh(&db, &[]).await;
    let service = |name: &str| {
        json!({"apiVersion": "trellis.dev/v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"ports": [{"port": 8080, "protocol": "http"}]}})
    };
    assert_eq!(api.put("/meshes/shop/services/intruder", &service("intruder")).await.0, 201);

    // Half an hour before now, in whole minutes, all of it before the server started rolling up.
    let now = Utc::now();
    let m0 = now.duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(30);
    let minute = |i: i64| m0 + TimeDelta::minutes(i);
    for at in [m0, now] {
        store.prepare_telemetry(at).await.unwrap();
    }
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let mut samples = Vec::new();
    for i in 0..28 {
        // productpage calls reviews steadily until minute 28, then stops (a rate jump down).
        samples.extend(calls(mesh.id, minute(i), "productpage", "reviews", 100, 0));
        // reviews → db never fails, but for 10 of 25 in minute 24 (an error-rate jump); too
        // few calls a minute for its stop to be a rate jump.
        samples.extend(calls(mesh.id, minute(i), "reviews", "db", 25, if i == 24 { 10 } else { 0 }));
    }
    // The new caller: five consecutive minutes, from minute 20.
    for i in 20..25 {
        samples.extend(calls(mesh.id, minute(i), "intruder", "reviews", 5, 0));
    }
    tx.record_edges(&samples).await.unwrap();
    // And reviews denied it 30 times in minute 22 (a burst).
    let denials: Vec<AccessLogRecord> = (0..30).map(|_| denial(mesh.id.as_uuid(), "intruder")).collect();
    tx.record_access_log(&denials).await.unwrap();
    tx.commit().await.unwrap();
    let mut admin = db.admin_conn().await;
    sqlx::query("UPDATE access_log SET received_at = $1")
        .bind(minute(22) + TimeDelta::seconds(5))
        .execute(&mut admin)
        .await
        .unwrap();
    // The rollups and the scan as if the leader had been running since the hour began.
    let hour = m0.duration_trunc(TimeDelta::hours(1)).unwrap();
    sqlx::query("UPDATE telemetry_rollups SET done_until = $1").bind(hour).execute(&mut admin).await.unwrap();
    store.rewind_traffic_scan(hour).await.unwrap();
    // (The server's own leader may record some of them first: the API shows what is stored.)
    scan(&store).await;

    // Newest first: the rate drop, the error-rate jump, the burst, the new caller — once each.
    let (status, page) = api.get("/meshes/shop/events").await;
    assert_eq!(status, 200, "{page}");
    let own = |k: &str, s: &str, d: &str| (k.to_owned(), s.to_owned(), d.to_owned());
    assert_eq!(
        kinds(&page),
        [
            own("rate-jump", "productpage", "reviews"),
            own("error-rate-jump", "reviews", "db"),
            own("denied-burst", "*", "reviews"),
            own("new-caller", "intruder", "reviews"),
        ]
    );
    let items = page["items"].as_array().unwrap();
    let at = |e: &Value| e["minute"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    assert_eq!(items.iter().map(at).collect::<Vec<_>>(), [minute(28), minute(24), minute(22), minute(20)]);
    let new_caller = &items[3];
    assert_eq!(
        new_caller["evidence"],
        json!({"kind": "new-caller", "calls": 5, "lookBackDays": 7.0, "knownCallers": ["productpage"], "knownCallersTotal": 1})
    );
    assert_eq!(items[2]["evidence"]["denials"], 30);
    assert_eq!(items[2]["evidence"]["callers"], json!([{"source": "intruder", "denials": 30}]));
    assert_eq!(items[1]["evidence"]["errorRate"], 0.4);
    assert_eq!(items[0]["evidence"]["direction"], "down");
    assert_eq!(items[0]["evidence"]["recentMedian"], 100.0);

    // Examining the same minutes again (a retried run, a new leader) records nothing twice.
    store.rewind_traffic_scan(hour).await.unwrap();
    assert_eq!(scan(&store).await, 0);
    let (_, again) = api.get("/meshes/shop/events?kind=new-caller").await;
    assert_eq!(kinds(&again), [own("new-caller", "intruder", "reviews")]);

    // Filters and pages.
    let (_, db_events) = api.get("/meshes/shop/events?service=db").await;
    assert_eq!(kinds(&db_events), [own("error-rate-jump", "reviews", "db")]);
    let (_, first) = api.get("/meshes/shop/events?limit=3").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["nextCursor"].as_str().unwrap();
    let (_, rest) = api.get(&format!("/meshes/shop/events?limit=3&cursor={cursor}")).await;
    assert_eq!(kinds(&rest), [own("new-caller", "intruder", "reviews")]);
    let since = (minute(23)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, recent) = api.get(&format!("/meshes/shop/events?since={since}")).await;
    assert_eq!(recent["items"].as_array().unwrap().len(), 2);

    // The draft for the new caller: deny it, allow the caller reviews had all along.
    let id = new_caller["id"].as_str().unwrap();
    let (status, draft) = api.get(&format!("/meshes/shop/events/{id}/draft-policy")).await;
    assert_eq!(status, 200, "{draft}");
    assert_eq!(draft["kind"], "AccessPolicy");
    assert_eq!(draft["metadata"], json!({"name": "reviews-expected-callers", "mesh": "shop"}));
    assert_eq!(
        draft["spec"],
        json!({"targetRef": {"service": "reviews"}, "rules": [
            {"action": "Deny", "from": [{"service": "intruder"}]},
            {"action": "Allow", "from": [{"service": "productpage"}]}]})
    );
    // Previewed: under the example's default deny the intruder stays denied and productpage
    // (allowed today for some requests only) is allowed outright; under default allow, the
    // intruder is what it denies.
    let (status, preview) = api.post("/meshes/shop/impact-preview", &draft).await;
    assert_eq!(status, 200, "{preview}");
    let changed = |p: &Value| -> Vec<(String, String, String)> {
        p["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["destination"] == "reviews")
            .map(|e| {
                (
                    e["source"].as_str().unwrap().to_owned(),
                    e["after"]["verdict"].as_str().unwrap().to_owned(),
                    e["after"]["rule"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        changed(&preview),
        [("productpage".into(), "allowed".into(), "reviews-expected-callers/rules/1".into())]
    );
    let mut open_mesh = json!({"apiVersion": "trellis.dev/v1", "kind": "Mesh", "metadata": {"name": "shop"},
        "spec": {"mtls": {"mode": "STRICT"}, "defaultAccess": "allow"}});
    let (status, body) = api.put("/meshes/shop", &open_mesh).await;
    assert_eq!(status, 200, "{body}");
    let (_, preview) = api.post("/meshes/shop/impact-preview", &draft).await;
    assert_eq!(
        changed(&preview),
        [("intruder".into(), "denied".into(), "reviews-expected-callers/rules/0".into())]
    );
    open_mesh["spec"]["defaultAccess"] = json!("deny");
    assert_eq!(api.put("/meshes/shop", &open_mesh).await.0, 200);
    // Applied as it came: the API accepts it.
    let (status, body) = api.put("/meshes/shop/access-policies/reviews-expected-callers", &draft).await;
    assert_eq!(status, 201, "{body}");

    // The burst's draft denies the same caller; a rate jump has none (409); bad ids are 404s.
    let burst = items[2]["id"].as_str().unwrap();
    let (status, d) = api.get(&format!("/meshes/shop/events/{burst}/draft-policy")).await;
    assert_eq!(
        (status, &d["spec"]["rules"][0]),
        (200, &json!({"action": "Deny", "from": [{"service": "intruder"}]}))
    );
    let jump = items[0]["id"].as_str().unwrap();
    let (status, body) = api.get(&format!("/meshes/shop/events/{jump}/draft-policy")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(api.get("/meshes/shop/events/not-an-id/draft-policy").await.0, 404);
    assert_eq!(api.get(&format!("/meshes/shop/events/{}/draft-policy", uuid::Uuid::new_v4())).await.0, 404);

    // Bad parameters name themselves.
    for (query, field) in [
        ("kind=surge", "kind"),
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("cursor=%21", "cursor"),
        ("service=Bad_Name", "service"),
    ] {
        let (status, body) = api.get(&format!("/meshes/shop/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }

    // A viewer reads them; another organization sees neither the events nor the mesh.
    let viewer = Api::new(&t, "acme", &token(&db, "acme", Role::Viewer).await);
    assert_eq!(viewer.get("/meshes/shop/events").await.1["items"].as_array().unwrap().len(), 4);
    assert_eq!(viewer.get(&format!("/meshes/shop/events/{id}/draft-policy")).await.0, 200);
    let stranger = Api::new(&t, "other", &token(&db, "other", Role::Admin).await);
    assert_eq!(stranger.get("/meshes/shop/events").await.0, 404);
    let (status, _) = stranger.put("/meshes/shop", &open_mesh).await;
    assert!(status == 200 || status == 201);
    let (status, theirs) = stranger.get("/meshes/shop/events").await;
    assert_eq!((status, theirs["items"].as_array().unwrap().len()), (200, 0), "{theirs}");
    assert_eq!(stranger.get(&format!("/meshes/shop/events/{id}/draft-policy")).await.0, 404);

    // The CLI: a table, filtered; `--draft` prints YAML that `apply -f` takes.
    let home = std::env::temp_dir().join(format!("trellis-events-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let (ok, out, err) = cli(&api, &home, &["events", "shop", "--since", "2h"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("MINUTE") && lines[0].ends_with("ID"), "{out}");
    let (ok, out, err) =
        cli(&api, &home, &["events", "shop", "--kind", "new-caller", "--service", "intruder"]).await;
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(&rows[0][1..4], ["new-caller", "intruder", "reviews"], "{out}");
    assert_eq!(rows[0].last(), Some(&id), "{out}");
    let (ok, yaml, err) = cli(&api, &home, &["events", "shop", "--draft", id]).await;
    assert!(ok, "{err}");
    assert!(yaml.starts_with("# A draft"), "{yaml}");
    let file = home.join("draft.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let (ok, _, err) = cli(&api, &home, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&api, &home, &["events", "shop", "--draft", jump]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let _ = std::fs::remove_dir_all(&home);

    // The console: the events with a "Draft policy" link for the new caller and the burst,
    // which opens the AccessPolicy editor holding the draft; valid HTML, hidden from others.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let owner = session(&db, "acme", "olivia", Role::Owner).await;
    let outsider = session(&db, "other", "sam", Role::Owner).await;
    let page = |secret: String, path: String| {
        let req = as_user(&secret, http.get(format!("{}/orgs/acme/meshes/shop{path}", t.base)));
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (status, html) = page(owner.clone(), "/events?window=86400".into()).await;
    assert_eq!(status, 200, "{html}");
    assert_valid_html("events", &html).await;
    assert_eq!(html.matches("Draft policy").count(), 2, "{html}");
    assert!(html.contains(&format!("/orgs/acme/meshes/shop/events/{id}/draft")), "{html}");
    assert!(html.contains("knownCallers productpage"), "{html}");
    let (status, html) = page(owner.clone(), format!("/events/{id}/draft")).await;
    assert_eq!(status, 200, "{html}");
    assert_valid_html("draft", &html).await;
    assert!(html.contains("name: reviews-expected-callers") && html.contains("service: intruder"), "{html}");
    let (status, _) = page(owner.clone(), "/events?kind=surge".into()).await;
    assert_eq!(status, 400);
    let (_, mesh_page) = page(owner.clone(), String::new()).await;
    assert!(mesh_page.contains("/orgs/acme/meshes/shop/events"), "the mesh page links the events");
    // Every console URL of acme's, the event's draft among them, is a 404 to another organization.
    let outsider_page = as_user(&outsider, http.get(format!("{}/orgs/other", t.base))).send().await.unwrap();
    let outsider_csrf = csrf_of(&outsider_page.text().await.unwrap());
    let mut ids = OrgIds::new("acme", "shop");
    ids.service = "reviews".into();
    ids.resource = "reviews".into();
    ids.event = id.to_owned();
    assert_hidden_from(&t, &outsider, &outsider_csrf, &ids, "intruder").await;
    store.close().await;
}

#[tokio::test]
async fn among_a_thousand_steady_edges_the_one_new_caller_is_the_one_event() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let org = store.create_org(&OrgSlug::parse("acme").unwrap(), "acme").await.unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx
        .put_mesh(
            &MeshName::parse("prod").unwrap(),
            "prod.acme.test",
            &json!({}),
            &json!({}),
            trellis_store::Precondition::Unconditional,
        )
        .await
        .unwrap()
        .value;
    tx.commit().await.unwrap();

    // 40 minutes of 1,000 edges (20 services calling 50), 20 calls a minute each: too few
    // for the end of the data to be a rate jump. A newcomer calls dst-7 from minute 35.
    let end = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let minute = |i: i64| end - TimeDelta::minutes(40) + TimeDelta::minutes(i);
    for i in [0, 39] {
        store.prepare_telemetry(minute(i)).await.unwrap();
    }
    let mut samples = Vec::new();
    for i in 0..40 {
        for e in 0..1000 {
            samples.extend(calls(
                mesh.id,
                minute(i),
                &format!("svc-{}", e / 50),
                &format!("dst-{}", e % 50),
                20,
                0,
            ));
        }
        if i >= 35 {
            samples.extend(calls(mesh.id, minute(i), "newcomer", "dst-7", 3, 0));
        }
    }
    let mut tx = store.tenant(org.id).await.unwrap();
    for chunk in samples.chunks(5000) {
        tx.record_edges(chunk).await.unwrap();
    }
    tx.commit().await.unwrap();
    let hour = minute(0).duration_trunc(TimeDelta::hours(1)).unwrap();
    let mut admin = db.admin_conn().await;
    sqlx::query("UPDATE telemetry_rollups SET done_until = $1").bind(hour).execute(&mut admin).await.unwrap();
    store.rollup_telemetry(Duration::ZERO).await.unwrap();
    store.rewind_traffic_scan(hour).await.unwrap();

    let started = std::time::Instant::now();
    let mut events = 0;
    loop {
        let r = store.scan_traffic_events(&Thresholds::default()).await.unwrap();
        events += r.events;
        if r.minutes == 0 {
            break;
        }
        eprintln!("scan of {} minutes of 1,001 edges: {:?}", r.minutes, started.elapsed());
    }
    assert_eq!(events, 1);
    let mut tx = store.tenant(org.id).await.unwrap();
    let q = trellis_store::TrafficEventQuery {
        mesh: mesh.id,
        since: minute(0),
        kind: None,
        service: None,
        after: None,
        limit: 10,
    };
    let found = tx.traffic_events(&q).await.unwrap();
    tx.commit().await.unwrap();
    let found: Vec<_> = found
        .iter()
        .map(|e| (e.kind.as_str(), e.source.as_deref(), e.destination.as_str(), e.minute))
        .collect();
    assert_eq!(found, [("new-caller", Some("newcomer"), "dst-7", minute(35))]);
    assert_eq!(found.len(), 1);

    // An event past retention (90 days) goes at the next scan.
    sqlx::query(
        "INSERT INTO traffic_events (org_id, mesh_id, kind, minute, source, destination, event_key, evidence) \
         VALUES ($1, $2, 'new-caller', now() - interval '91 days', 'old', 'dst-1', 'old', '{}')",
    )
    .bind(org.id.as_uuid())
    .bind(mesh.id.as_uuid())
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(stored_events(&mut admin).await, 2);

    // A minute with nothing new costs one scan of the minute just rolled up, and finds nothing.
    // (The rollup reached the minute it ran in, which is `end`'s or, when the clock passed a
    // minute meanwhile, the next.)
    let rolled: DateTime<Utc> =
        sqlx::query_scalar("SELECT done_until FROM telemetry_rollups WHERE resolution_s = 60")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let started = std::time::Instant::now();
    store.rewind_traffic_scan(rolled - TimeDelta::minutes(1)).await.unwrap();
    let r = store.scan_traffic_events(&Thresholds::default()).await.unwrap();
    eprintln!("scan of the last minute of 1,001 edges: {:?}", started.elapsed());
    assert_eq!((r.minutes, r.events), (1, 0));
    assert_eq!(stored_events(&mut admin).await, 1, "the old event went, the new caller stays");
    store.close().await;
}

async fn stored_events(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM traffic_events").fetch_one(admin).await.unwrap()
}
