//! Benchmark: configuration writes through the REST API against the same writes straight
//! into the store (the baseline, measured in the same run), and the change feed's delay from
//! commit to delivery.
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
use trellis_store::{ChangeFeed, FeedOptions, Precondition};

const WARMUP: usize = 50;
const SAMPLES: usize = 1000;

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
            xds: trellis_api::XdsEndpoint { address: "127.0.0.1:15012".into(), ca_pem: String::new() },
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
    store.close().await;
}
