//! Telemetry storage against real PostgreSQL: edge buckets merge by addition, rollups keep
//! every count (and each destination subset's), retention drops whole partitions, and tenants never see each other's figures.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::json;
use trellis_model::telemetry::{
    EdgeCounts, EdgeKey, LATENCY_BUCKETS, LatencyHistogram, Resolution, ResponseClass, Topology,
};
use trellis_model::{MeshId, MeshName, OrgId, OrgSlug, ResourceName};
use trellis_store::testing::TestDb;
use trellis_store::{AccessLogQuery, AccessLogRecord, EdgeSample, Precondition, Store, TelemetryRetention};

async fn org_with_mesh(store: &Store, slug: &str) -> (OrgId, MeshId) {
    let org = store.create_org(&OrgSlug::parse(slug).unwrap(), slug).await.unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx
        .put_mesh(
            &MeshName::parse("prod").unwrap(),
            &format!("prod.{slug}.test"),
            &json!({}),
            &json!({}),
            Precondition::Unconditional,
        )
        .await
        .unwrap()
        .value;
    tx.commit().await.unwrap();
    (org.id, mesh.id)
}

fn name(s: &str) -> ResourceName {
    ResourceName::parse(s).unwrap()
}

fn sample(
    mesh: MeshId,
    at: DateTime<Utc>,
    class: ResponseClass,
    requests: u64,
    latencies: &[f64],
) -> EdgeSample {
    let mut latency = LatencyHistogram::default();
    latencies.iter().for_each(|ms| latency.record_ms(*ms));
    EdgeSample {
        mesh,
        bucket_start: at,
        key: EdgeKey {
            source: name("web"),
            destination: name("reviews"),
            destination_subset: Default::default(),
            route: None,
            class,
        },
        counts: EdgeCounts {
            requests,
            successes: if class.is_success() { requests } else { 0 },
            bytes: requests * 100,
            latency,
            ..Default::default()
        },
    }
}

/// Moves the rollups' watermarks back to `at`, as if the leader had been rolling up since.
async fn rollups_done_until(admin: &mut sqlx::PgConnection, at: DateTime<Utc>) {
    sqlx::query("UPDATE telemetry_rollups SET done_until = $1").bind(at).execute(admin).await.unwrap();
}

fn bucket(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::seconds(10)).unwrap()
}

#[tokio::test]
async fn edges_from_several_proxies_merge_by_addition_and_read_back_as_golden_metrics() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = org_with_mesh(&store, "acme").await;
    let (other, other_mesh) = org_with_mesh(&store, "other").await;
    let now = bucket(Utc::now());

    // Two instances of `web` report the same edge and bucket, in two transactions.
    for latencies in [[5.0, 5.0, 7.0].as_slice(), [5.0, 900.0].as_slice()] {
        let mut tx = store.tenant(org).await.unwrap();
        tx.record_edges(&[
            sample(mesh, now, ResponseClass::Success, latencies.len() as u64, latencies),
            sample(mesh, now, ResponseClass::ServerError, 1, &[]),
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = store.tenant(org).await.unwrap();
    let totals =
        tx.edge_totals(mesh, Resolution::TenSeconds, now, now + TimeDelta::seconds(10)).await.unwrap();
    assert_eq!(totals.len(), 1);
    let c = &totals[0].counts;
    assert_eq!((c.requests, c.successes, c.bytes, c.latency.total()), (7, 5, 700, 5));
    // The second write of the bucket added its histogram to the first, bucket by bucket.
    let mut latency = LatencyHistogram::default();
    [5.0, 5.0, 7.0, 5.0, 900.0].iter().for_each(|ms| latency.record_ms(*ms));
    assert_eq!(c.latency, latency);
    let topology = Topology::of(&totals, 10.0);
    assert_eq!(topology.nodes, ["reviews", "web"]);
    let m = &topology.edges[0].metrics;
    assert_eq!(m.success_rate, Some(5.0 / 7.0));
    assert!((m.p50_ms.unwrap() - 5.0).abs() / 5.0 < 0.1, "{m:?}");
    assert!((m.p99_ms.unwrap() - 900.0).abs() / 900.0 < 0.1, "{m:?}");
    // Outside the window, or in another mesh, nothing.
    let before = tx.edge_totals(mesh, Resolution::TenSeconds, now - TimeDelta::hours(1), now).await.unwrap();
    assert!(before.is_empty());
    tx.commit().await.unwrap();
    // Another tenant sees nothing of it, even naming the mesh.
    let mut tx = store.tenant(other).await.unwrap();
    let theirs =
        tx.edge_totals(mesh, Resolution::TenSeconds, now, now + TimeDelta::seconds(10)).await.unwrap();
    assert!(theirs.is_empty());
    assert!(
        tx.edge_totals(other_mesh, Resolution::TenSeconds, now, now + TimeDelta::seconds(10))
            .await
            .unwrap()
            .is_empty()
    );
    // Nor can it write into the first tenant's mesh: the foreign key is (org, mesh).
    let err = tx.record_edges(&[sample(mesh, now, ResponseClass::Success, 1, &[])]).await.unwrap_err();
    assert!(err.to_string().contains("telemetry_edges_mesh_fkey"), "{err}");
}

#[tokio::test]
async fn rollups_keep_every_count_and_retention_drops_old_partitions() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = org_with_mesh(&store, "acme").await;
    let hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    // Buckets of the previous hour (finished), and the rollups' watermarks before them.
    let mut admin = db.admin_conn().await;
    rollups_done_until(&mut admin, hour - TimeDelta::hours(2)).await;
    let times: Vec<DateTime<Utc>> =
        (0..12).map(|i| hour - TimeDelta::minutes(50) + TimeDelta::seconds(i * 40)).collect();
    for t in &times {
        store.prepare_telemetry(*t).await.unwrap();
    }
    let mut tx = store.tenant(org).await.unwrap();
    // Half of the calls went to v1, half to v2 (a route's weighted backends).
    let version = |v: &str| trellis_model::Tags::parse([("version", v)]).unwrap();
    let mut samples: Vec<EdgeSample> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut s = sample(mesh, bucket(*t), ResponseClass::Success, 3, &[1.0, 20.0, 300.0]);
            s.key.destination_subset = version(if i % 2 == 0 { "v1" } else { "v2" });
            s
        })
        .collect();
    // Counts in the first and the last latency bucket, one far past 32 bits: a merge that
    // shifted, truncated or mixed buckets would show.
    samples[0].counts.latency.add_to_bucket(0, 1 << 40);
    samples[7].counts.latency.add_to_bucket(LATENCY_BUCKETS - 1, 2);
    samples[8].counts.latency.add_to_bucket(0, 5);
    let mut latency = LatencyHistogram::default();
    samples.iter().for_each(|s| latency.merge(&s.counts.latency));
    tx.record_edges(&samples).await.unwrap();
    tx.commit().await.unwrap();

    let written = store.rollup_telemetry(Duration::ZERO).await.unwrap();
    assert!(written > 0);
    let window = (hour - TimeDelta::hours(1), hour);
    let mut tx = store.tenant(org).await.unwrap();
    let mut per_resolution = Vec::new();
    for r in Resolution::ALL {
        let totals = tx.edge_totals(mesh, r, window.0, window.1).await.unwrap();
        assert_eq!(totals.len(), 1, "{r:?}");
        per_resolution.push(totals[0].counts.clone());
        let split: Vec<(String, u64)> =
            totals[0].subsets.iter().map(|s| (s.subset.joined(), s.requests)).collect();
        assert_eq!(split, [("version=v1".into(), 18), ("version=v2".into(), 18)], "{r:?} keeps the subsets");
    }
    tx.commit().await.unwrap();
    assert_eq!(per_resolution[0].requests, 36);
    assert_eq!(per_resolution[0].latency, latency, "every latency count in its bucket");
    assert_eq!(per_resolution[0], per_resolution[1], "10 s → 1 min loses nothing");
    assert_eq!(per_resolution[1], per_resolution[2], "1 min → 10 min loses nothing");
    assert_eq!(per_resolution[2], per_resolution[3], "10 min → 1 h loses nothing");
    // A second run finds nothing new to roll up: nothing is counted twice.
    store.rollup_telemetry(Duration::ZERO).await.unwrap();
    let mut tx = store.tenant(org).await.unwrap();
    let again = tx.edge_totals(mesh, Resolution::Hour, window.0, window.1).await.unwrap();
    assert_eq!(again[0].counts, per_resolution[2]);
    tx.commit().await.unwrap();

    // Old partitions go; the current ones stay.
    let old = Utc::now() - TimeDelta::days(3);
    store.prepare_telemetry(old).await.unwrap();
    let partitions = |parent: &'static str| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass")
            .bind(parent)
    };
    let before = partitions("telemetry_edges_10s").fetch_one(&mut admin).await.unwrap();
    let day = Duration::from_secs(86_400);
    let retention =
        TelemetryRetention { edges_10s: day, edges_1m: day, edges_1h: day * 400, access_log: day };
    let dropped = store.expire_telemetry(&retention).await.unwrap();
    assert!(dropped >= 2, "the 10 s and access-log partitions of three days ago: {dropped}");
    let after = partitions("telemetry_edges_10s").fetch_one(&mut admin).await.unwrap();
    assert_eq!(after, before - 1);
    let mut tx = store.tenant(org).await.unwrap();
    assert_eq!(tx.edge_totals(mesh, Resolution::TenSeconds, window.0, window.1).await.unwrap().len(), 1);
    tx.commit().await.unwrap();
    // Every partition, however made, has forced row-level security.
    let unprotected: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid \
         WHERE (c.relname LIKE 'telemetry_edges%' OR c.relname LIKE 'access_log%') \
           AND c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(unprotected.is_empty(), "{unprotected:?}");
}

#[tokio::test]
async fn a_window_reads_final_rollups_inside_it_and_10_s_rows_only_at_its_ends() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = org_with_mesh(&store, "acme").await;
    let hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    let mut admin = db.admin_conn().await;
    rollups_done_until(&mut admin, hour - TimeDelta::hours(2)).await;
    // One sample every 10 s for the 20 minutes before the hour: 120 buckets of 2 calls.
    let start = hour - TimeDelta::minutes(20);
    store.prepare_telemetry(start).await.unwrap();
    let samples: Vec<EdgeSample> = (0..120)
        .map(|i| sample(mesh, start + TimeDelta::seconds(10 * i), ResponseClass::Success, 2, &[5.0, 50.0]))
        .collect();
    let mut tx = store.tenant(org).await.unwrap();
    tx.record_edges(&samples).await.unwrap();
    tx.commit().await.unwrap();
    store.rollup_telemetry(Duration::ZERO).await.unwrap();
    // From 10 s into a minute to 30 s into another: 10 s rows at both ends, minutes between.
    let (from, to) = (start + TimeDelta::seconds(75), hour - TimeDelta::seconds(90));
    let mut tx = store.tenant(org).await.unwrap();
    let ten_seconds = tx.edge_totals(mesh, Resolution::TenSeconds, from, to).await.unwrap();
    let (window, finest) = tx.window_totals(mesh, from, to).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(finest, Resolution::TenSeconds);
    assert_eq!(ten_seconds[0].counts.requests, 2 * 103, "the buckets that start from 1:15 to 18:30 in");
    assert_eq!(window, ten_seconds, "rollups and 10 s rows add up to the same figures");
    // The whole minutes come from their rollups: without the 10 s rows inside them (as when
    // a short 10 s retention dropped them) the window still counts every call.
    sqlx::query(
        "DELETE FROM telemetry_edges WHERE resolution_s = 10 AND bucket_start >= $1 AND bucket_start < $2",
    )
    .bind(start + TimeDelta::minutes(2))
    .bind(hour - TimeDelta::minutes(2))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut tx = store.tenant(org).await.unwrap();
    assert_eq!(tx.window_totals(mesh, from, to).await.unwrap().0, ten_seconds);
    let left = tx.edge_totals(mesh, Resolution::TenSeconds, from, to).await.unwrap();
    assert_eq!(left[0].counts.requests, 2 * (4 + 3), "only the 10 s rows at the ends are left");
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn access_log_entries_round_trip_filter_and_page() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = org_with_mesh(&store, "acme").await;
    let entry = |outcome: &str, status, source: &str| AccessLogRecord {
        mesh_id: mesh.as_uuid(),
        logged_at: Utc::now(),
        reporter: "reviews".into(),
        direction: "inbound".into(),
        protocol: "http".into(),
        outcome: outcome.into(),
        source_service: Some(source.into()),
        source_identity: Some(format!("spiffe://prod.acme.test/ns/prod/sa/{source}")),
        source_address: Some("10.0.0.1:5555".into()),
        destination_service: Some("reviews".into()),
        destination_identity: None,
        method: Some("GET".into()),
        authority: Some("reviews".into()),
        path: Some("/admin".into()),
        status: Some(status),
        response_flags: String::new(),
        response_details: "rbac_access_denied_matched_policy[deny-admin/rules/0]".into(),
        rbac_policy: Some("deny-admin/rules/0".into()),
        audit_policy: Some("watch/rules/1".into()),
        route: None,
        upstream_cluster: None,
        duration_ms: Some(1.5),
        bytes_received: Some(0),
        bytes_sent: Some(19),
    };
    let mut tx = store.tenant(org).await.unwrap();
    let entries = [entry("denied", 403, "web"), entry("error", 503, "web"), entry("sampled", 200, "cron")];
    assert_eq!(tx.record_access_log(&entries).await.unwrap(), 3);
    let query = AccessLogQuery {
        mesh,
        since: Utc::now() - TimeDelta::minutes(1),
        until: Utc::now() + TimeDelta::minutes(1),
        service: None,
        status: None,
        denied_only: false,
        after: None,
        limit: 10,
    };
    let all = tx.access_log(&query).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| e.mesh_revision.is_some_and(|r| r >= 1)), "stored with the mesh's revision");
    let denied = tx.access_log(&AccessLogQuery { denied_only: true, ..query.clone() }).await.unwrap();
    assert_eq!(denied.len(), 1);
    let d = &denied[0].record;
    assert_eq!(d.rbac_policy.as_deref(), Some("deny-admin/rules/0"));
    assert_eq!(d.audit_policy.as_deref(), Some("watch/rules/1"));
    assert_eq!(d.path.as_deref(), Some("/admin"));
    let by_status = tx.access_log(&AccessLogQuery { status: Some(503), ..query.clone() }).await.unwrap();
    assert_eq!(by_status.iter().map(|e| e.record.outcome.as_str()).collect::<Vec<_>>(), ["error"]);
    let by_service =
        tx.access_log(&AccessLogQuery { service: Some("cron".into()), ..query.clone() }).await.unwrap();
    assert_eq!(by_service.len(), 1);
    // Pages of one, newest first, each after the last of the previous: every entry once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = tx.access_log(&AccessLogQuery { limit: 1, after, ..query.clone() }).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.id));
        seen.push(last.id);
    }
    assert_eq!(seen, all.iter().map(|e| e.id).collect::<Vec<_>>());
    let one = tx.access_log_entry(mesh, all[1].id).await.unwrap().unwrap();
    assert_eq!(one, all[1]);
    tx.commit().await.unwrap();
    // Another tenant finds nothing by id.
    let (other, other_mesh) = org_with_mesh(&store, "globex").await;
    let mut tx = store.tenant(other).await.unwrap();
    assert_eq!(tx.access_log_entry(other_mesh, all[0].id).await.unwrap(), None);
    assert_eq!(tx.access_log_entry(mesh, all[0].id).await.unwrap(), None);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn drop_counts_add_up_per_reason_stay_with_their_tenant_and_expire() {
    use trellis_model::telemetry::DropReason;
    use trellis_store::DropCount;
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = org_with_mesh(&store, "acme").await;
    let (other, other_mesh) = org_with_mesh(&store, "globex").await;
    let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let old = minute - TimeDelta::days(100);
    let count = |mesh, minute, reason, items| DropCount { mesh, minute, reason, items };
    let mut tx = store.tenant(org).await.unwrap();
    tx.record_drops(&[
        count(mesh, minute, DropReason::SeriesBudget, 3),
        count(mesh, minute, DropReason::RateLimited, 100),
        count(mesh, old, DropReason::RateLimited, 7),
    ])
    .await
    .unwrap();
    // A second writer's counts of the same minute add up.
    tx.record_drops(&[count(mesh, minute, DropReason::SeriesBudget, 2)]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.tenant(other).await.unwrap();
    tx.record_drops(&[count(other_mesh, minute, DropReason::LogBudget, 9)]).await.unwrap();
    tx.commit().await.unwrap();

    let read = |org, mesh| {
        let store = store.clone();
        async move {
            let mut tx = store.tenant(org).await.unwrap();
            let d =
                tx.drops(mesh, minute - TimeDelta::days(200), minute + TimeDelta::minutes(1)).await.unwrap();
            tx.commit().await.unwrap();
            d
        }
    };
    assert_eq!(read(org, mesh).await, [("rate_limited".into(), 107), ("series_budget".into(), 5)]);
    // Another tenant's mesh id reads nothing from this one's rows.
    assert_eq!(read(org, other_mesh).await, []);
    assert_eq!(read(other, other_mesh).await, [("log_budget".to_string(), 9)]);
    // The table's check and the one list of reasons agree: every reason is stored.
    let mut tx = store.tenant(org).await.unwrap();
    let every: Vec<DropCount> = DropReason::ALL.map(|r| count(mesh, old, r, 1)).into();
    tx.record_drops(&every).await.expect("the table accepts every DropReason");
    drop(tx);

    // Retention deletes the old minute only, in every tenant.
    let gone = store.expire_telemetry_drops(trellis_store::DROP_RETENTION).await.unwrap();
    assert_eq!(gone, 1);
    assert_eq!(read(org, mesh).await, [("rate_limited".into(), 100), ("series_budget".into(), 5)]);
    assert_eq!(read(other, other_mesh).await, [("log_budget".to_string(), 9)]);
}
