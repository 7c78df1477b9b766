//! Benchmark: how long the console takes to answer its heaviest pages for a mesh of 200
//! services — the mesh overview, the Service list, the topology (grouped, and one group
//! opened) over recorded edges and a service's golden metrics; then, with 250 proxies
//! registered (each with four xDS types in its ledger, some rejected), the dataplanes page
//! and the mesh overview again; and the audit log's first page — measured as the time from
//! sending a request to the last byte of the page, one request at a time over loopback
//! from a signed-in session: the server's reads and rendering, plus a loopback round trip.
//!
//! Run: `cargo bench -p trellis-tests --bench console_render` (with a release `trellis`
//! beside it: `cargo build --release --bin trellis` first), or against a debug build:
//! `cargo build --bin trellis && cargo bench --profile dev -p trellis-tests --bench console_render`.
//! `BENCH_REQUESTS` sets the requests measured per page (default 200).

use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::json;
use trellis_model::telemetry::{EdgeCounts, EdgeKey, LatencyHistogram, ResponseClass};
use trellis_model::{MeshName, OrgSlug, ResourceName, Role, Tags};
use trellis_store::EdgeSample;
use trellis_store::testing::TestDb;
use trellis_tests::console::{as_user, session, start};
use trellis_tests::{Api, token};

const SERVICES: usize = 200;
/// Proxies registered for the dataplanes page: more than one per service.
const PROXIES: usize = 250;
const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

fn requests() -> usize {
    std::env::var("BENCH_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

fn service(i: usize) -> String {
    format!("team{}-svc{i}", i % 10)
}

/// The `q` quantile of sorted durations, in ms.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let api = Api::new(&t, "bench", &token(&db, "bench", Role::Admin).await);
    let (status, body) = api
        .put("/meshes/shop", &json!({ "spec": { "mtls": { "mode": "STRICT" }, "defaultAccess": "deny" } }))
        .await;
    assert!(status == 200 || status == 201, "{body}");
    for i in 0..SERVICES {
        let doc = json!({ "spec": { "ports": [{ "port": 8080, "protocol": "http" }] } });
        let (status, body) = api.put(&format!("/meshes/shop/services/{}", service(i)), &doc).await;
        assert_eq!(status, 201, "{body}");
    }
    // Three callees each, with latencies, in two versions: 600 edges, 1,200 rows.
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse("bench").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    let bucket_start = Utc::now().duration_trunc(TimeDelta::seconds(10)).unwrap();
    let mut samples = Vec::new();
    for i in 0..SERVICES {
        for k in [1, 7, 31] {
            for (version, requests) in [("version=v1", 90u64), ("version=v2", 10)] {
                let mut latency = LatencyHistogram::default();
                for r in 0..requests {
                    latency.record_ms(2.0 + (r % 40) as f64);
                }
                samples.push(EdgeSample {
                    mesh: mesh.id,
                    bucket_start,
                    key: EdgeKey {
                        source: ResourceName::parse(&service(i)).unwrap(),
                        destination: ResourceName::parse(&service((i + k) % SERVICES)).unwrap(),
                        destination_subset: Tags::parse_joined(version).unwrap(),
                        route: None,
                        class: ResponseClass::Success,
                    },
                    counts: EdgeCounts { requests, successes: requests - 1, latency, ..Default::default() },
                });
            }
        }
    }
    tx.record_edges(&samples).await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;

    let viewer = session(&db, "bench", "bench-user", Role::Viewer).await;
    // The audit log is for admins and owners.
    let admin = session(&db, "bench", "bench-admin", Role::Admin).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let base = format!("{}/orgs/bench/meshes/shop", t.base);
    println!("| page | bytes | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, url) in [
        ("mesh overview", base.clone()),
        ("Service list (200)", format!("{base}/config/services")),
        ("topology, grouped", format!("{base}/topology")),
        ("topology, one group open", format!("{base}/topology?group=team3")),
        ("service metrics (1 h)", format!("{base}/services/{}/metrics?window=3600", service(3))),
    ] {
        measure(&http, &viewer, name, &url).await;
    }
    register_proxies(&db).await;
    measure(&http, &viewer, &format!("dataplanes ({PROXIES} proxies)"), &format!("{base}/dataplanes")).await;
    measure(&http, &viewer, &format!("mesh overview ({PROXIES} proxies)"), &base).await;
    let audit = format!("{}/orgs/bench/audit", t.base);
    measure(&http, &admin, "audit log (first 100 of 200+)", &audit).await;
    drop(t);
}

/// Fetches `url` as the user of `secret` 10 times to warm up, then [`requests`] times, and
/// prints the page's row.
async fn measure(http: &reqwest::Client, secret: &str, name: &str, url: &str) {
    let fetch = || async {
        let res = as_user(secret, http.get(url)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        res.bytes().await.unwrap().len()
    };
    let mut size = 0;
    for _ in 0..10 {
        size = fetch().await;
    }
    let n = requests();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        fetch().await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "| {name} | {size} | {:.1} ms | {:.1} ms | {:.1} ms |",
        quantile(&times, 0.50),
        quantile(&times, 0.99),
        quantile(&times, 1.0)
    );
}

/// [`PROXIES`] proxies of the mesh's services, registered as the xDS server does, each with
/// every type sent and accepted, but every tenth with its listeners rejected.
async fn register_proxies(db: &TestDb) {
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse("bench").unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap();
    for i in 0..PROXIES {
        let registration = trellis_store::Registration {
            service: service(i % SERVICES),
            node_id: format!("{}-{i}", service(i % SERVICES)),
            client: "agent".into(),
            address: Some(format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap()),
            ports: vec![8080],
            tags: json!({ "version": if i % 2 == 0 { "v1" } else { "v2" } }),
            zone: String::new(),
            replica: "bench".into(),
        };
        let d = tx.register_dataplane(mesh.id, &registration).await.unwrap();
        for (k, type_url) in TYPES.iter().enumerate() {
            let version = (k + 1).to_string();
            tx.ledger_sent(d.id, type_url, &version, &format!("n{k}"), mesh.revision).await.unwrap();
            if i % 10 == 0 && type_url.ends_with("Listener") {
                tx.ledger_nacked(d.id, type_url, &version, "listener: bind failed").await.unwrap();
            } else {
                tx.ledger_acked(d.id, type_url, &version, Some(12.0)).await.unwrap();
            }
        }
    }
    tx.commit().await.unwrap();
    store.close().await;
}
