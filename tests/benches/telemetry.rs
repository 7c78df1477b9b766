//! Benchmark: telemetry ingestion through the real TLS port (`StreamMetrics` from proxies
//! holding SVIDs, Envoy-shaped cumulative reports of 50 edges each) against the raw insert
//! rate of the same edge rows into the same table through the store, in the same run.
//!
//! Run: `cargo build --release --bin trellis && cargo bench -p trellis-tests --bench telemetry`
//! (needs PostgreSQL like the tests). `BENCH_PROXIES` (default 50) and `BENCH_ROUNDS` (reports
//! per proxy, default 40) set the load. The control plane's CPU time is read from
//! `/proc/<pid>/stat`.
//!
//! Then the read behind topology and golden metrics (`TenantTx::edge_totals` at the
//! resolution `Resolution::for_window` picks): `BENCH_READ_SERVICES` (default 200) services
//! with `BENCH_READ_EDGES` (default 1,000) edges between them, each with a 10 s row in every
//! bucket of the last hour, read `BENCH_READS` (default 30) times per window.
//! `BENCH_ONLY=reads` runs only that part (it needs no `trellis` binary).
//!
//! Then the REST topology of a synthetic mesh of 1,000 services and 10,000 edges
//! (`trellis_tests::synthetic`, one 10 s bucket), `BENCH_READS` GETs of each view through
//! the running server on loopback. `BENCH_ONLY=topology` runs only that part.

use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::io::prometheus::client::{Counter, Metric, MetricFamily, MetricType};
use tokio_stream::wrappers::ReceiverStream;
use trellis_model::telemetry::{EdgeCounts, EdgeKey, Resolution, ResponseClass};
use trellis_model::{MeshName, OrgSlug, ResourceName};
use trellis_store::EdgeSample;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{channel, issue, join_token};

const EDGES: usize = 50;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One report: per edge, cumulative 2xx and 5xx counters at `round`.
fn report(round: u32) -> StreamMetricsMessage {
    let counter = |name: String, value: f64| MetricFamily {
        name: Some(name),
        r#type: Some(MetricType::Counter as i32),
        metric: vec![Metric {
            counter: Some(Counter { value: Some(value), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut families = Vec::with_capacity(EDGES * 2);
    for e in 0..EDGES {
        families.push(counter(format!("cluster.s{e}.shop:9080.upstream_rq_2xx"), f64::from(round * 9)));
        families.push(counter(format!("cluster.s{e}.shop:9080.upstream_rq_5xx"), f64::from(round)));
    }
    StreamMetricsMessage { identifier: None, envoy_metrics: families }
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    trellis_tests::init();
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("reads") => return read_bench().await,
        Ok("topology") => return topology_bench().await,
        _ => {}
    }
    let proxies = env("BENCH_PROXIES", 50);
    let rounds = env("BENCH_ROUNDS", 40) as u32;
    let db = TestDb::create().await;
    let env = [("TRELLIS_TELEMETRY_INGEST_RATE", "100000000"), ("TRELLIS_LOG", "warn")];
    let (t, _api, store, root) = trellis_tests::serve_example_mesh(&db, &env).await;
    let mut clients = Vec::with_capacity(proxies);
    for _ in 0..proxies {
        let svid =
            issue(&t.xds, &root, &join_token(&store, "acme", "shop", "productpage").await).await.unwrap();
        clients.push(MetricsServiceClient::new(channel(&t.xds, &root, Some(&svid)).await.unwrap()));
    }
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap().id;
    let mut tx = store.tenant(org).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().id;
    tx.commit().await.unwrap();
    let stored = || async {
        let mut tx = store.tenant(org).await.unwrap();
        let now = Utc::now();
        let totals = tx
            .edge_totals(mesh, Resolution::TenSeconds, now - TimeDelta::hours(1), now + TimeDelta::minutes(1))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        totals.iter().map(|t| t.counts.requests).sum::<u64>()
    };

    // Ingestion: every proxy streams its reports back to back; the clock stops when the
    // last increment is stored. The first report of each stream is its baseline.
    let expected = proxies as u64 * u64::from(rounds - 1) * EDGES as u64 * 10;
    let cpu_before = cpu_seconds(t.pid());
    let started = Instant::now();
    let mut streams = Vec::new();
    for mut c in clients {
        streams.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let call = tokio::spawn(async move { c.stream_metrics(ReceiverStream::new(rx)).await });
            for round in 1..=rounds {
                tx.send(report(round)).await.unwrap();
            }
            drop(tx);
            call.await.unwrap().unwrap();
        }));
    }
    for s in streams {
        s.await.unwrap();
    }
    while stored().await < expected {
        assert!(started.elapsed() < Duration::from_secs(300), "ingestion did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ingest_wall = started.elapsed();
    let cpu = cpu_seconds(t.pid()) - cpu_before;
    let increments = proxies as f64 * f64::from(rounds - 1) * EDGES as f64 * 2.0;
    assert_eq!(stored().await, expected, "every request counted once");

    // Raw: as many edge rows (one batch of 50 edges × 2 classes per report, as the writer
    // gets them), inserted straight through the store; each report from a source of its own,
    // so that every row is a plain insert.
    let bucket = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let batch = |prefix: &str, report: usize| -> Vec<EdgeSample> {
        let source = ResourceName::parse(&format!("{prefix}{report}")).unwrap();
        [ResponseClass::Success, ResponseClass::ServerError]
            .into_iter()
            .flat_map(|class| {
                let source = source.clone();
                (0..EDGES).map(move |e| EdgeSample {
                    mesh,
                    bucket_start: bucket,
                    key: EdgeKey {
                        source: source.clone(),
                        destination: ResourceName::parse(&format!("s{e}")).unwrap(),
                        destination_subset: Default::default(),
                        route: None,
                        class,
                    },
                    counts: EdgeCounts { requests: 9, successes: 9, ..Default::default() },
                })
            })
            .collect()
    };
    let reports = proxies * (rounds as usize - 1);
    let batches: Vec<Vec<EdgeSample>> = (0..reports).map(|r| batch("p", r)).collect();
    let raw_started = Instant::now();
    for b in &batches {
        let mut tx = store.tenant(org).await.unwrap();
        tx.record_edges(b).await.unwrap();
        tx.commit().await.unwrap();
    }
    let raw_wall = raw_started.elapsed();
    // And batched as the writer batches: 256 reports per transaction.
    let batches: Vec<Vec<EdgeSample>> = (0..reports).map(|r| batch("q", r)).collect();
    let batched_started = Instant::now();
    for chunk in batches.chunks(256) {
        let mut tx = store.tenant(org).await.unwrap();
        tx.record_edges(&chunk.concat()).await.unwrap();
        tx.commit().await.unwrap();
    }
    let batched_wall = batched_started.elapsed();

    let ingest_rate = increments / ingest_wall.as_secs_f64();
    let raw_rate = increments / raw_wall.as_secs_f64();
    println!("\n| path | edge increments | wall | increments/s | control-plane CPU |");
    println!("|---|---|---|---|---|");
    println!(
        "| ingestion: {proxies} proxies × {} reports of {EDGES} edges over `StreamMetrics` | {increments:.0} | {:.2} s | {ingest_rate:.0} | {cpu:.2} s ({:.1} µs per increment) |",
        rounds - 1,
        ingest_wall.as_secs_f64(),
        cpu / increments * 1e6
    );
    println!(
        "| raw: as many rows inserted, one `record_edges` transaction per report | {increments:.0} | {:.2} s | {raw_rate:.0} | – |",
        raw_wall.as_secs_f64()
    );
    let batched_rate = increments / batched_wall.as_secs_f64();
    println!(
        "| raw, batched as the writer does: 256 reports per transaction | {increments:.0} | {:.2} s | {batched_rate:.0} | – |",
        batched_wall.as_secs_f64()
    );
    println!(
        "\ningestion / raw per report: {:.2}×; ingestion / raw batched: {:.2}×",
        ingest_rate / raw_rate,
        ingest_rate / batched_rate
    );
    // The issue's goal: 1,000 proxies × 50 edges every 10 s = 5,000 edges/s (× the classes
    // each edge reports); the CPU it costs at the measured cost per increment.
    let goal = 1_000.0 * EDGES as f64 * 2.0 / 10.0;
    println!(
        "at 1,000 proxies × {EDGES} edges × 2 classes every 10 s ({goal:.0} increments/s): {:.1} % of one core",
        goal * cpu / increments * 100.0
    );
    t.stop(Duration::from_secs(10)).await;
    read_bench().await;
    topology_bench().await;
}

/// Times the REST topology of 1,000 services and 10,000 edges: the first (grouped) view, a
/// group opened and a service's neighbourhood, at the client on loopback (the server's time
/// plus one loopback HTTP exchange).
async fn topology_bench() {
    let db = TestDb::create().await;
    let (t, api, store, _) = trellis_tests::serve_example_mesh(&db, &[("TRELLIS_LOG", "warn")]).await;
    let org = store.org_by_slug(&OrgSlug::parse("acme").unwrap()).await.unwrap().unwrap().id;
    let mut tx = store.tenant(org).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap().id;
    tx.commit().await.unwrap();
    let edges = trellis_tests::synthetic::edges(1_000, 10);
    let bucket = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let written = trellis_tests::synthetic::record(&store, org, mesh, &edges, bucket).await;
    let reads = env("BENCH_READS", 30);
    println!("\ntopology: 1,000 services, 10,000 edges, {written} requests in one 10 s bucket");
    println!("\n| view | nodes | edges | body | reads | p50 | p95 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, query) in [
        ("first view (grouped)", ""),
        ("one group opened", "&group=team3"),
        ("one service's neighbourhood", "&service=team3-svc80"),
    ] {
        let path = format!("/meshes/shop/topology?window=300{query}");
        let mut times = Vec::with_capacity(reads);
        let (mut nodes, mut edges, mut size) = (0, 0, 0);
        for _ in 0..reads {
            let started = Instant::now();
            let res = api.req(reqwest::Method::GET, &path).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let body = res.bytes().await.unwrap();
            times.push(started.elapsed());
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let requests: u64 = v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["metrics"]["requests"].as_u64().unwrap())
                .sum();
            if query.is_empty() {
                assert_eq!(requests, written, "the grouped view counts every call");
            }
            (nodes, edges, size) =
                (v["nodes"].as_array().unwrap().len(), v["edges"].as_array().unwrap().len(), body.len());
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {nodes} | {edges} | {:.0} KB | {reads} | {:.1} ms | {:.1} ms | {:.1} ms |",
            size as f64 / 1024.0,
            ms(at(0.50)),
            ms(at(0.95)),
            ms(times[times.len() - 1])
        );
    }
    t.stop(Duration::from_secs(10)).await;
}

/// Seeds an hour of 10 s rows for a mesh of `BENCH_READ_SERVICES` services and
/// `BENCH_READ_EDGES` edges, rolls them up as the leader does, then times the read over the
/// last 5 minutes and hour: from 10 s rows only, and as the API reads (`window_totals`),
/// which must find the same requests.
async fn read_bench() {
    // A database of its own, with no control plane whose leader would roll up buckets that
    // are still being seeded (the seed writes an hour into the past at once).
    let db = TestDb::create().await;
    let store = db.store().await;
    let org = store.create_org(&OrgSlug::parse("reads").unwrap(), "reads").await.unwrap().id;
    let mut tx = store.tenant(org).await.unwrap();
    let mesh = tx
        .put_mesh(
            &MeshName::parse("shop").unwrap(),
            "shop.reads.test",
            &serde_json::json!({}),
            &serde_json::json!({}),
            trellis_store::Precondition::Unconditional,
        )
        .await
        .unwrap()
        .value
        .id;
    tx.commit().await.unwrap();
    let services = env("BENCH_READ_SERVICES", 200);
    let edges = env("BENCH_READ_EDGES", 1_000);
    let reads = env("BENCH_READS", 30);
    let now = Utc::now();
    let newest = now.duration_trunc(TimeDelta::seconds(10)).unwrap();
    store.prepare_telemetry(now - TimeDelta::hours(1)).await.unwrap();
    store.prepare_telemetry(now).await.unwrap();
    // As if the control plane had been rolling up for the last two hours.
    sqlx::query("UPDATE telemetry_rollups SET done_until = $1")
        .bind(now.duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(2))
        .execute(&mut db.admin_conn().await)
        .await
        .unwrap();
    let name = |i: usize| ResourceName::parse(&format!("svc-{i}")).unwrap();
    // Edge `e` goes from service `e % services` to one of the services after it: distinct pairs.
    let keys: Vec<EdgeKey> = (0..edges)
        .map(|e| EdgeKey {
            source: name(e % services),
            destination: name((e % services + e / services + 1) % services),
            destination_subset: Default::default(),
            route: None,
            class: ResponseClass::Success,
        })
        .collect();
    let mut counts = EdgeCounts { requests: 20, successes: 19, bytes: 4_000, ..Default::default() };
    for ms in [1.0, 2.5, 4.0, 8.0, 12.0, 30.0, 95.0, 250.0] {
        counts.latency.record_ms(ms);
    }
    let buckets = 360;
    let seeded = Instant::now();
    for b in 0..buckets {
        let bucket_start = newest - TimeDelta::seconds(10 * b);
        let samples: Vec<EdgeSample> = keys
            .iter()
            .map(|key| EdgeSample { mesh, bucket_start, key: key.clone(), counts: counts.clone() })
            .collect();
        let mut tx = store.tenant(org).await.unwrap();
        tx.record_edges(&samples).await.unwrap();
        tx.commit().await.unwrap();
    }
    let rolled = store.rollup_telemetry(Duration::from_secs(20)).await.unwrap();
    let seed_wall = seeded.elapsed();
    println!(
        "\nread: {services} services, {edges} edges × {buckets} buckets of 10 s seeded and rolled up \
         ({rolled} rollup rows) in {:.1} s",
        seed_wall.as_secs_f64()
    );
    println!("\n| window | read | edges returned | requests | reads | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for window in [300, 3_600] {
        // One window for both reads, so that they must agree to the request.
        let to = Utc::now();
        let from = to - TimeDelta::seconds(window);
        let mut ten_second_requests = 0;
        for composed in [false, true] {
            let mut times = Vec::with_capacity(reads);
            let (mut returned, mut requests) = (0, 0);
            for _ in 0..reads {
                let started = Instant::now();
                let mut tx = store.tenant(org).await.unwrap();
                let totals = if composed {
                    tx.window_totals(mesh, from, to).await.unwrap().0
                } else {
                    tx.edge_totals(mesh, Resolution::TenSeconds, from, to).await.unwrap()
                };
                tx.commit().await.unwrap();
                times.push(started.elapsed());
                returned = totals.len();
                requests = totals.iter().map(|t| t.counts.requests).sum::<u64>();
            }
            if composed {
                assert_eq!(requests, ten_second_requests, "the composed read finds every request");
            } else {
                ten_second_requests = requests;
            }
            times.sort();
            let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {window} s | {} | {returned} | {requests} | {reads} | {:.1} ms | {:.1} ms | {:.1} ms |",
                if composed { "final rollups inside, 10 s rows at the ends" } else { "10 s rows only" },
                ms(at(0.50)),
                ms(at(0.99)),
                ms(times[times.len() - 1])
            );
        }
    }
}
