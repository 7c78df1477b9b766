//! Benchmark: configuration writes through the REST API against the same writes straight
//! into the store (the baseline, measured in the same run), and the change feed's delay from
//! commit to delivery.
//!
//! Then the same REST PUT in a mesh with no proxies and in one with `FLEET` online proxies
//! that all call the route's service (registered with their ledger lines through the store,
//! as the xDS server writes them), alternating, so that both rows share the machine's state.
//!
//! Run: `cargo bench -p trellis-tests --bench config_api` (needs PostgreSQL like the tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Mutex;
use trellis_api::{AppState, HttpMetrics};
use trellis_model::{MeshName, ResourceName, Role};
use trellis_store::testing::TestDb;
use trellis_store::{ChangeFeed, FeedOptions, Precondition, Registration, Store};

const WARMUP: usize = 50;
const SAMPLES: usize = 1000;
/// Online proxies in the second mesh of the fleet-size rows.
const FLEET: usize = 1000;
/// Of those, how many have a rejection outstanding.
const REJECTING: usize = 10;
/// What a sidecar is sent, in the order it ACKs.
const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

struct Stats {
    label: String,
    samples: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    }
    fn per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
    fn print(&self) {
        println!(
            "{:<44} n={:<5} p50={:>8.3}ms p95={:>8.3}ms p99={:>8.3}ms  {:>8.0}/s",
            self.label,
            self.samples.len(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.95).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.per_sec()
        );
    }
}

/// Runs `n` operations on `workers` concurrent tasks; `op(i)` performs the i-th.
async fn measure<F, Fut>(label: &str, workers: usize, n: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    for i in 0..WARMUP {
        op(i).await;
    }
    let samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let op = op.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    let t = Instant::now();
                    op(WARMUP + i).await;
                    samples.lock().await.push(t.elapsed());
                    i += workers;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wall = start.elapsed();
    let samples = Arc::try_unwrap(samples).unwrap().into_inner();
    Stats { label: label.into(), samples, wall }
}

fn route(i: usize) -> serde_json::Value {
    let w = (i % 99 + 1) as u32;
    json!({"spec": {"targetRef": {"service": "reviews"}, "rules": [{"backendRefs": [
        {"service": "reviews", "tags": {"version": "v1"}, "weight": w},
        {"service": "reviews", "tags": {"version": "v2"}, "weight": 100 - w}]}]}})
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::create().await;
    let store = db.store().await;
    let token = trellis_tests::token(&db, "bench", Role::Editor).await;

    // The real router, in-process, over loopback HTTP.
    let mut registry = Registry::default();
    let http_metrics = HttpMetrics::register(&mut registry);
    let app = trellis_api::router(
        AppState {
            store: store.clone(),
            registry: Arc::new(registry),
            accounts: Arc::new(trellis_api::Accounts {
                public_url: "http://127.0.0.1/".parse().unwrap(),
                oidc: None,
                session_idle: Duration::from_secs(3600),
                session_lifetime: Duration::from_secs(3600),
                local_org: trellis_model::OrgSlug::parse("bench").unwrap(),
            }),
            authority: trellis_pki::Authority::new(
                store.clone(),
                trellis_ca::KeyRing::new(trellis_ca::Kek::generate("bench").unwrap()),
                Default::default(),
            ),
            xds: std::sync::Arc::new(trellis_api::XdsEndpoint {
                address: "127.0.0.1:15012".into(),
                ca_pem: String::new(),
            }),
        },
        http_metrics,
        trellis_api::RequestLimits::default(),
        axum::Router::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api/v1/orgs/bench", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let put = move |path: String, body: serde_json::Value| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let res = http.put(path).bearer_auth(token).json(&body).send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        }
    };
    put(format!("{base}/meshes/shop"), json!({"spec": {}})).await;
    put(
        format!("{base}/meshes/shop/services/reviews"),
        json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}}),
    )
    .await;

    let org = store.org_by_slug(&trellis_model::OrgSlug::parse("bench").unwrap()).await.unwrap().unwrap();
    let mesh = {
        let mut tx = store.tenant(org.id).await.unwrap();
        tx.mesh_by_name(&MeshName::parse("shop").unwrap()).await.unwrap().unwrap()
    };

    println!(
        "configuration writes (an HTTPRoute with a changed weight each time), {SAMPLES} samples after {WARMUP} warm-up"
    );
    let mut results = Vec::new();
    for workers in [1usize, 8] {
        let s = store.clone();
        let baseline = measure(
            &format!("store put_resource + commit, {workers} writer(s)"),
            workers,
            SAMPLES,
            move |i| {
                let s = s.clone();
                async move {
                    let mut tx = s.tenant(org.id).await.unwrap();
                    let name = ResourceName::parse(&format!("r{}", i % 16)).unwrap();
                    let spec = route(i)["spec"].clone();
                    tx.put_resource(
                        mesh.id,
                        "HTTPRoute",
                        &name,
                        &spec,
                        &json!({}),
                        Precondition::Unconditional,
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
            },
        )
        .await;
        baseline.print();
        let b = base.clone();
        let p = put.clone();
        let rest =
            measure(&format!("REST PUT http-routes, {workers} client(s)"), workers, SAMPLES, move |i| {
                p(format!("{b}/meshes/shop/http-routes/r{}", i % 16), route(i))
            })
            .await;
        rest.print();
        println!(
            "  ratio REST/store: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x",
            rest.pct(0.5).as_secs_f64() / baseline.pct(0.5).as_secs_f64(),
            rest.pct(0.99).as_secs_f64() / baseline.pct(0.99).as_secs_f64(),
            rest.per_sec() / baseline.per_sec()
        );
        results.push((baseline, rest));
    }

    // Change feed: time from a write's commit to the feed delivering that revision.
    let mut feed = ChangeFeed::start(&store, FeedOptions::default());
    while tokio::time::timeout(Duration::from_millis(300), feed.recv()).await.is_ok() {}
    let mut delays = Vec::with_capacity(SAMPLES);
    let start = Instant::now();
    for i in 0..SAMPLES {
        let mut tx = store.tenant(org.id).await.unwrap();
        let spec = route(i)["spec"].clone();
        tx.put_resource(
            mesh.id,
            "HTTPRoute",
            &ResourceName::parse("feed").unwrap(),
            &spec,
            &json!({}),
            Precondition::Unconditional,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let committed = Instant::now();
        loop {
            let c = feed.recv().await.unwrap();
            if c.mesh == mesh.id {
                break;
            }
        }
        delays.push(committed.elapsed());
    }
    let feed_stats =
        Stats { label: "change feed: commit → delivery".into(), samples: delays, wall: start.elapsed() };
    feed_stats.print();
    feed.stop().await;

    // PUT latency against the size of the mesh's fleet.
    for mesh in ["empty", "fleet"] {
        put(format!("{base}/meshes/{mesh}"), json!({"spec": {}})).await;
        for svc in ["reviews", "productpage"] {
            put(
                format!("{base}/meshes/{mesh}/services/{svc}"),
                json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}}),
            )
            .await;
        }
    }
    register_fleet(&store, org.id, "fleet").await;
    let (mut empty, mut fleet) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    let start = Instant::now();
    for i in 0..WARMUP + SAMPLES {
        for (mesh, samples) in [("empty", &mut empty), ("fleet", &mut fleet)] {
            let t = Instant::now();
            put(format!("{base}/meshes/{mesh}/http-routes/reviews"), route(i)).await;
            if i >= WARMUP {
                samples.push(t.elapsed());
            }
        }
    }
    let wall = start.elapsed();
    println!(
        "REST PUT http-routes/reviews, 1 client, alternating between two meshes, {SAMPLES} samples each"
    );
    let empty = Stats { label: "mesh with 0 proxies".into(), samples: empty, wall };
    let fleet = Stats { label: format!("mesh with {FLEET} online proxies"), samples: fleet, wall };
    empty.print();
    fleet.print();
    println!(
        "  ratio {FLEET} / 0 proxies: p50 {:.2}x, p99 {:.2}x",
        fleet.pct(0.5).as_secs_f64() / empty.pct(0.5).as_secs_f64(),
        fleet.pct(0.99).as_secs_f64() / empty.pct(0.99).as_secs_f64()
    );
    let (status, body) = {
        let res = reqwest::Client::new()
            .get(format!("{base}/meshes/fleet/http-routes/reviews"))
            .bearer_auth(trellis_tests::token(&db, "bench", Role::Viewer).await)
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    println!("  status of the route in the big mesh: {}", body["status"]["propagation"]["summary"]);
    store.close().await;
}

/// Registers `FLEET` online sidecars of `productpage` in `mesh`, each sent and ACKing the four
/// sidecar types and holding caller-side resources of `reviews` (so the route configures
/// them all), the first `REJECTING` with a rejected route configuration: what the xDS
/// server's ledger writer leaves behind, written through the same store calls.
async fn register_fleet(store: &Store, org: trellis_model::OrgId, mesh: &str) {
    let mut tx = store.tenant(org).await.unwrap();
    let mesh = tx.mesh_by_name(&MeshName::parse(mesh).unwrap()).await.unwrap().unwrap();
    for i in 0..FLEET {
        let dp = tx
            .register_dataplane(
                mesh.id,
                &Registration {
                    service: "productpage".into(),
                    node_id: format!("productpage-{i}"),
                    client: "envoy".into(),
                    address: Some(std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8])),
                    ports: vec![9080],
                    tags: json!({"version": "v1"}),
                    zone: String::new(),
                    replica: "bench".into(),
                },
            )
            .await
            .unwrap();
        tx.dataplane_reach(dp.id, &["reviews".to_owned()], true).await.unwrap();
        for type_url in TYPES {
            tx.ledger_sent(dp.id, type_url, "v1", "n1", mesh.revision).await.unwrap();
            tx.ledger_acked(dp.id, type_url, "v1", Some(1.0)).await.unwrap();
        }
        if i < REJECTING {
            tx.ledger_nacked(dp.id, TYPES[3], "v2", "route: bench rejection").await.unwrap();
        }
        tx.dataplane_synced(dp.id, mesh.revision).await.unwrap();
    }
    tx.commit().await.unwrap();
}
