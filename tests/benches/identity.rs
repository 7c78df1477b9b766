//! Benchmark: CSR → signed X.509-SVID over the real gRPC identity endpoint of a running
//! `trellis serve`, with concurrent clients, against signing alone in-process (the baseline,
//! measured in the same run on the same CSRs).
//!
//! Run (release binary beside the bench, so the server is optimized too):
//! `cargo build --release --bin trellis && cargo bench -p trellis-tests --bench identity`
//! (needs PostgreSQL like the tests). `BENCH_SECS` sets the seconds measured per row (default 5).
//!
//! Each client has its own HTTP/2 connection (TLS set up before the clock starts, as a
//! workload keeps its connection to the control plane), sends one request at a time, and
//! takes its CSRs from a pool generated ahead of time: key generation is the workload's cost,
//! not the server's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tonic::transport::Channel;
use trellis_ca::{MeshCa, SpiffeId, SvidTtl, TrustDomain};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, channel, issue, join_token, platform_root};
use trellis_tests::{Api, Trellis, token, trellis};
use trellis_xds_server::proto::IssueSvidRequest;
use trellis_xds_server::proto::identity_client::IdentityClient;

const CLIENTS: [usize; 6] = [1, 8, 16, 24, 32, 64];
const CSR_POOL: usize = 512;
const WARMUP: Duration = Duration::from_millis(500);

struct Row {
    label: String,
    samples: Vec<Duration>,
    wall: Duration,
    errors: usize,
}

impl Row {
    fn pct(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples[((self.samples.len() as f64 - 1.0) * p).round() as usize]
    }
    fn per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
    fn markdown(&self, raw: f64) -> String {
        format!(
            "| {} | {:.0}/s | {} | {} | {} | {} | {:.2}× | {} |",
            self.label,
            self.per_sec(),
            Self::ms(self.pct(0.50)),
            Self::ms(self.pct(0.90)),
            Self::ms(self.pct(0.99)),
            Self::ms(self.samples.last().copied().unwrap_or_default()),
            self.per_sec() / raw,
            self.errors,
        )
    }
}

fn secs() -> Duration {
    let s = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(s)
}

/// Runs one client per channel for `WARMUP` then `dur`, each sending one request at a time.
async fn drive(
    label: String,
    channels: &[Channel],
    csrs: &Arc<Vec<Vec<u8>>>,
    join: &str,
    dur: Duration,
) -> Row {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(w, ch)| {
            let mut client = IdentityClient::new(ch.clone());
            let csrs = csrs.clone();
            let join = join.to_owned();
            let (measuring, stop) = (measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut samples, mut errors) = (Vec::new(), 0usize);
                let mut i = w * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let req =
                        IssueSvidRequest { csr: csrs[i % csrs.len()].clone(), join_token: join.clone() };
                    i += 1;
                    let t = Instant::now();
                    let ok = match client.issue_svid(req).await {
                        Ok(r) => !r.into_inner().certificate_chain_pem.is_empty(),
                        Err(e) => {
                            eprintln!("issue_svid: {e}");
                            false
                        }
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            samples.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    measuring.store(false, Ordering::Relaxed);
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut row = Row { label, samples: Vec::new(), wall, errors: 0 };
    for t in tasks {
        let (s, e) = t.await.unwrap();
        row.samples.extend(s);
        row.errors += e;
    }
    row.samples.sort();
    row
}

/// Signing alone: `MeshCa::sign_svid` on the same CSRs, on `threads` OS threads for `dur`.
fn raw_signing(
    ca: &Arc<MeshCa>,
    id: &SpiffeId,
    csrs: &Arc<Vec<Vec<u8>>>,
    threads: usize,
    dur: Duration,
) -> Row {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let (ca, id, csrs) = (ca.clone(), id.clone(), csrs.clone());
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut i = w * 7919;
                while start.elapsed() < dur {
                    let t = Instant::now();
                    ca.sign_svid(&csrs[i % csrs.len()], &id, SvidTtl::default(), SystemTime::now()).unwrap();
                    samples.push(t.elapsed());
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    samples.sort();
    Row {
        label: format!("signing alone in-process (`MeshCa::sign_svid`), {threads} thread(s)"),
        samples,
        wall: start.elapsed(),
        errors: 0,
    }
}

#[tokio::main]
async fn main() {
    let dur = secs();
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .env("TRELLIS_LOG", "warn")
        .args(["--http-addr", "127.0.0.1:0"]);
    let bin = trellis_tests::trellis_bin();
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "bench", &token(&db, "bench", Role::Admin).await);
    let (status, body) = api.put("/meshes/shop", &json!({"spec": {}})).await;
    assert!(status == 200 || status == 201, "{body}");
    // Leaves are recorded only for a service that exists.
    let svc = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    let (status, body) = api.put("/meshes/shop/services/reviews", &svc).await;
    assert!(status == 200 || status == 201, "{body}");
    let store = db.store().await;
    let root = platform_root(&store).await;
    // A multi-use join token, valid for an hour.
    let join = join_token(&store, "bench", "shop", "reviews").await;

    let csrs: Arc<Vec<Vec<u8>>> =
        Arc::new((0..CSR_POOL).map(|_| trellis_ca::workload_key_and_csr().unwrap().1.into_bytes()).collect());

    // Baseline: a P-256 root like the server's, signing for an identity of the same shape.
    let td = TrustDomain::parse("shop.bench.example").unwrap();
    let ca =
        Arc::new(MeshCa::generate_root(&td, Duration::from_secs(365 * 86_400), SystemTime::now()).unwrap());
    let id = SpiffeId::workload(&td, "shop", "reviews").unwrap();
    let raw1 = tokio::task::block_in_place(|| raw_signing(&ca, &id, &csrs, 1, dur));
    let raw2 = tokio::task::block_in_place(|| raw_signing(&ca, &id, &csrs, 2, dur));

    let max = *CLIENTS.iter().max().unwrap();
    // Each renewing client presents an SVID of its own, issued once with the join token.
    let mut svids: Vec<Svid> = Vec::with_capacity(max);
    for _ in 0..max {
        svids.push(issue(&t.xds, &root, &join).await.unwrap());
    }
    let mut mtls = Vec::with_capacity(max);
    let mut plain = Vec::with_capacity(max);
    for s in &svids {
        mtls.push(channel(&t.xds, &root, Some(s)).await.unwrap());
        plain.push(channel(&t.xds, &root, None).await.unwrap());
    }

    let mut rows = Vec::new();
    for &n in &CLIENTS {
        let label = format!("renewal over mTLS, {n} client(s)");
        let row = drive(label, &mtls[..n], &csrs, "", dur).await;
        eprintln!("{}", row.markdown(raw2.per_sec()));
        rows.push(row);
    }
    for &n in &CLIENTS {
        let label = format!("join token (multi-use, shared), {n} client(s)");
        let row = drive(label, &plain[..n], &csrs, &join, dur).await;
        eprintln!("{}", row.markdown(raw2.per_sec()));
        rows.push(row);
    }

    println!();
    println!("server: {}", bin.display());
    println!(
        "{:.1} s per row after {:.1} s warm-up; {CSR_POOL} pre-generated P-256 CSRs (PEM)",
        dur.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    println!("ratio: throughput over signing alone on 2 threads");
    println!();
    println!("| operation | issuances/s | p50 | p90 | p99 | max | ratio | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    println!("{}", raw1.markdown(raw2.per_sec()));
    println!("{}", raw2.markdown(raw2.per_sec()));
    for r in &rows {
        println!("{}", r.markdown(raw2.per_sec()));
    }
    drop(t);
    store.close().await;
}
