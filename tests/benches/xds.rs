//! Benchmark: the xDS server of the real `trellis` binary against simulated proxyless gRPC
//! clients (tonic ADS streams, many per HTTP/2 connection, each ACKing every response).
//!
//! 1. Propagation: 100 meshes × 10 streams (LDS → RDS → CDS → EDS by name); a route `PUT` in
//!    one random mesh, timed until every stream of that mesh has received and ACKed the new
//!    RDS version, and the bytes that streams of the other meshes received meanwhile.
//! 2. Idle streams: CDS-only streams (~50 clusters each) added in steps; the server's RSS.
//! 3. Reconnect storm: every idle stream dropped at once, then N full clients reconnect at
//!    once; the time until all of them have ACKed all four types.
//!
//! Baseline from the same run: the route `PUT` alone (request → response).
//!
//! Run (needs PostgreSQL like the tests, and a release build of the binary, which
//! `trellis_bin()` finds beside the bench executable in target/release):
//!
//! ```text
//! cargo build --release --bin trellis && cargo bench -p trellis-tests --bench xds
//! ```
//!
//! Knobs (environment): XDS_BENCH_ITERATIONS (200), XDS_BENCH_IDLE_STEPS
//! ("1000,2000,5000,10000"), XDS_BENCH_STORM (5000), XDS_BENCH_STORM_PER_CONN (10).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures::StreamExt;
use prost::{Message, Name};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, channel, issue, join_token, platform_root};
use trellis_tests::{Api, Trellis, document_path, example_documents, token, trellis};

const ORGS: usize = 10;
const MESHES_PER_ORG: usize = 10;
const MESHES: usize = ORGS * MESHES_PER_ORG;
const STREAMS_PER_MESH: usize = 10;
/// Services added to each mesh beside the example's, so that it has about 50 clusters.
const EXTRA_SERVICES: usize = 45;
/// Streams of one mesh that share one HTTP/2 connection in the idle scenario.
const IDLE_PER_CONN: usize = 100;
const USER_AGENT: &str = "grpc-bench";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Figures

fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// A markdown row: label, n, p50, p90, p99, max (milliseconds).
fn row(label: &str, ms: &[f64]) -> String {
    format!(
        "| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        ms.len(),
        pct(ms, 0.50),
        pct(ms, 0.90),
        pct(ms, 0.99),
        pct(ms, 1.0)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

// ---------------------------------------------------------------------------------------
// Simulated gRPC xDS clients

const LDS: usize = 0;
const RDS: usize = 1;
const CDS: usize = 2;
const EDS: usize = 3;

fn type_urls() -> [String; 4] {
    [
        Listener::type_url(),
        RouteConfiguration::type_url(),
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
    ]
}

/// What one simulated client has received and ACKed, per type (LDS, RDS, CDS, EDS).
#[derive(Default, Clone)]
struct Seen {
    acked_at: [Option<Instant>; 4],
    version: [String; 4],
    responses: [u32; 4],
    resources: [usize; 4],
    error: Option<String>,
    retries: u32,
}

struct Probe {
    mesh: usize,
    seen: Mutex<Seen>,
}

impl Probe {
    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

/// Bytes of responses received by the streams of each mesh (encoded length).
struct MeshBytes(Vec<AtomicU64>);

impl MeshBytes {
    fn total_except(&self, mesh: usize) -> u64 {
        self.0.iter().enumerate().filter(|(i, _)| *i != mesh).map(|(_, b)| b.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Wants {
    /// LDS and RDS for the listener, then CDS and EDS for what they reference.
    Full,
    /// CDS only, for a fixed list of names.
    Clusters,
}

fn request(
    t: usize,
    names: impl IntoIterator<Item = String>,
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_urls()[t].clone(),
        resource_names: names.into_iter().collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn clusters_of_routes(resp: &DiscoveryResponse) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for any in &resp.resources {
        let Ok(rc) = RouteConfiguration::decode(any.value.as_slice()) else { continue };
        for route in rc.virtual_hosts.iter().flat_map(|vh| &vh.routes) {
            if let Some(Action::Route(ra)) = &route.action {
                match &ra.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => drop(out.insert(c.clone())),
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()))
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn eds_names_of_clusters(resp: &DiscoveryResponse) -> BTreeSet<String> {
    resp.resources
        .iter()
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .map(|c| match c.eds_cluster_config {
            Some(e) if !e.service_name.is_empty() => e.service_name,
            _ => c.name,
        })
        .collect()
}

/// One ADS stream as gRPC's xDS client runs it: subscribe by name, ACK every response,
/// follow references LDS → RDS → CDS → EDS.
async fn client_stream(
    client: AggregatedDiscoveryServiceClient<Channel>,
    node_id: String,
    listener: String,
    wants: Wants,
    cds_names: Vec<String>,
    probe: Arc<Probe>,
    bytes: Arc<MeshBytes>,
) {
    // Like gRPC's xDS client: an UNAVAILABLE stream is retried with backoff.
    for attempt in 0..20u32 {
        let got = one_stream(
            client.clone(),
            node_id.clone(),
            listener.clone(),
            wants,
            cds_names.clone(),
            probe.clone(),
            bytes.clone(),
        )
        .await;
        match got {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                probe.seen.lock().unwrap().retries += 1;
                let backoff = 100u64 << attempt.min(4);
                let jitter = rand::rng().random_range(0..backoff);
                tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
            }
            _ => return,
        }
    }
}

/// One attempt; `Err` when the stream failed before its first response.
async fn one_stream(
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    node_id: String,
    listener: String,
    wants: Wants,
    cds_names: Vec<String>,
    probe: Arc<Probe>,
    bytes: Arc<MeshBytes>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let node = Node { id: node_id, user_agent_name: USER_AGENT.into(), ..Default::default() };
    let mut cds: BTreeSet<String> = cds_names.into_iter().collect();
    let mut eds: BTreeSet<String> = BTreeSet::new();
    let mut first = match wants {
        Wants::Full => request(LDS, [listener.clone()], "", ""),
        Wants::Clusters => request(CDS, cds.iter().cloned(), "", ""),
    };
    first.node = Some(node);
    let _ = tx.send(first).await;
    let mut inbound = match client.stream_aggregated_resources(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            probe.seen.lock().unwrap().error = Some(s.to_string());
            return Err(s);
        }
    };
    let mut rds_subscribed = false;
    let mut last_cds: (String, String) = Default::default();
    loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(s) => {
                probe.seen.lock().unwrap().error = Some(s.to_string());
                if probe.seen.lock().unwrap().responses.iter().all(|n| *n == 0) {
                    return Err(s);
                }
                break;
            }
        };
        probe.seen.lock().unwrap().error = None;
        bytes.0[probe.mesh].fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        let Some(t) = type_urls().iter().position(|u| *u == resp.type_url) else { continue };
        let names: Vec<String> = match t {
            LDS | RDS => vec![listener.clone()],
            CDS => cds.iter().cloned().collect(),
            _ => eds.iter().cloned().collect(),
        };
        if tx.send(request(t, names, &resp.version_info, &resp.nonce)).await.is_err() {
            break;
        }
        let at = Instant::now();
        {
            let mut seen = probe.seen.lock().unwrap();
            seen.acked_at[t] = Some(at);
            seen.version[t] = resp.version_info.clone();
            seen.responses[t] += 1;
            seen.resources[t] = resp.resources.len();
        }
        let follow = match t {
            LDS if !rds_subscribed => {
                rds_subscribed = true;
                Some(request(RDS, [listener.clone()], "", ""))
            }
            RDS => {
                let refs = clusters_of_routes(&resp);
                (!refs.is_subset(&cds)).then(|| {
                    cds.extend(refs);
                    request(CDS, cds.iter().cloned(), &last_cds.0, &last_cds.1)
                })
            }
            CDS => {
                last_cds = (resp.version_info.clone(), resp.nonce.clone());
                let refs = eds_names_of_clusters(&resp);
                (wants == Wants::Full && !refs.is_subset(&eds)).then(|| {
                    eds.extend(refs);
                    request(EDS, eds.iter().cloned(), "", "")
                })
            }
            _ => None,
        };
        if let Some(r) = follow
            && tx.send(r).await.is_err()
        {
            break;
        }
    }
    Ok(())
}

/// A set of running client streams.
#[derive(Default)]
struct Fleet {
    probes: Vec<Arc<Probe>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    fn spawn(
        &mut self,
        client: &AggregatedDiscoveryServiceClient<Channel>,
        mesh: &Mesh,
        node_id: String,
        wants: Wants,
        cds: Vec<String>,
        bytes: &Arc<MeshBytes>,
    ) {
        let probe = Arc::new(Probe { mesh: mesh.index, seen: Mutex::default() });
        self.probes.push(probe.clone());
        self.tasks.push(tokio::spawn(client_stream(
            client.clone(),
            node_id,
            mesh.listener(),
            wants,
            cds,
            probe,
            bytes.clone(),
        )));
    }

    /// Waits until every stream has ACKed the types it wants; false after `within`.
    async fn in_sync(&self, types: &[usize], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let synced = self.probes.iter().all(|p| {
                let s = p.seen.lock().unwrap();
                types.iter().all(|t| s.acked_at[*t].is_some())
            });
            if synced {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn retries(&self) -> u32 {
        self.probes.iter().map(|p| p.seen().retries).sum()
    }

    fn errors(&self) -> Vec<String> {
        self.probes.iter().filter_map(|p| p.seen().error).collect()
    }

    /// Ends every stream at once (as clients that go away: RST_STREAM, connections closed).
    fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The meshes

struct Mesh {
    index: usize,
    name: String,
    api: Api,
    svid: Svid,
    /// Current weight of v1 in the example route.
    weight: u32,
}

impl Mesh {
    fn listener(&self) -> String {
        format!("reviews.{}:9080", self.name)
    }
}

fn mesh_documents(mesh: &str) -> Vec<Value> {
    let mut docs = example_documents();
    for d in &mut docs {
        if d["kind"] == "Mesh" {
            d["metadata"]["name"] = json!(mesh);
        } else {
            d["metadata"]["mesh"] = json!(mesh);
        }
    }
    for i in 0..EXTRA_SERVICES {
        docs.push(json!({
            "apiVersion": "trellis.dev/v1", "kind": "Service",
            "metadata": {"name": format!("svc{i:02}"), "mesh": mesh},
            "spec": {"ports": [{"port": 9080, "protocol": "http"}]},
        }));
    }
    docs
}

fn route_doc(mesh: &str, v1: u32) -> Value {
    let mut doc = example_documents().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    doc["metadata"]["mesh"] = json!(mesh);
    doc["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(v1);
    doc["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(100 - v1);
    doc
}

async fn connect(t: &Trellis, root: &str, svid: &Svid) -> AggregatedDiscoveryServiceClient<Channel> {
    let ch = channel(&t.xds, root, Some(svid)).await.expect("TLS connection to the xDS port");
    AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(16 << 20)
}

#[tokio::main]
async fn main() {
    trellis_tests::init();
    let iterations: usize = env_or("XDS_BENCH_ITERATIONS", 200);
    let idle_steps: Vec<usize> = std::env::var("XDS_BENCH_IDLE_STEPS")
        .unwrap_or_else(|_| "1000,2000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let storm: usize = env_or("XDS_BENCH_STORM", 5000);
    let storm_per_conn: usize = env_or("XDS_BENCH_STORM_PER_CONN", 10);

    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let pid = t.pid();
    let store = db.store().await;
    let root = platform_root(&store).await;
    println!("trellis {} (pid {pid}), xDS on {}", trellis_tests::trellis_bin().display(), t.xds);

    // Setup: 10 organizations × 10 meshes, each the example mesh plus 45 services.
    let setup = Instant::now();
    let mut apis = Vec::new();
    for o in 0..ORGS {
        let slug = format!("org{o:02}");
        apis.push(Api::new(&t, &slug, &token(&db, &slug, Role::Admin).await));
    }
    let meshes: Vec<Mesh> = futures::stream::iter(0..MESHES)
        .map(|i| {
            let api = apis[i / MESHES_PER_ORG].clone();
            let (t, store, root) = (&t, &store, &root);
            async move {
                let name = format!("m{i:02}");
                for doc in mesh_documents(&name) {
                    let (status, body) = api.put(&document_path(&doc), &doc).await;
                    assert!(status == 200 || status == 201, "{body}");
                }
                let join = join_token(store, &api.org, &name, "productpage").await;
                let svid = issue(&t.xds, root, &join).await.expect("an SVID");
                Mesh { index: i, name, api, svid, weight: 75 }
            }
        })
        .buffered(8)
        .collect()
        .await;
    println!(
        "setup: {ORGS} organizations × {MESHES_PER_ORG} meshes, {} documents each, in {:.1} s; RSS {} MiB",
        mesh_documents("x").len(),
        setup.elapsed().as_secs_f64(),
        rss_kib(pid) / 1024
    );
    let bytes = Arc::new(MeshBytes((0..MESHES).map(|_| AtomicU64::new(0)).collect()));
    let mut meshes = meshes;

    // ----------------------------------------------------------------------------------
    // 1. Propagation
    let mut fleet = Fleet::default();
    let opened = Instant::now();
    let mut channels = Vec::new();
    for m in &meshes {
        // The streams of one mesh share one SVID, so they share one connection.
        let client = connect(&t, &root, &m.svid).await;
        for s in 0..STREAMS_PER_MESH {
            fleet.spawn(&client, m, format!("p-{}-{s}", m.name), Wants::Full, Vec::new(), &bytes);
        }
        channels.push(client);
    }
    assert!(fleet.in_sync(&[LDS, RDS, CDS, EDS], Duration::from_secs(120)).await, "{:?}", fleet.errors());
    let s0 = fleet.probes[0].seen();
    println!(
        "\n### 1. Propagation\n\n{} streams on {} connections in sync (LDS {} / RDS {} / CDS {} / EDS {} resources) in {:.2} s; RSS {} MiB\n",
        fleet.probes.len(),
        channels.len(),
        s0.resources[LDS],
        s0.resources[RDS],
        s0.resources[CDS],
        s0.resources[EDS],
        opened.elapsed().as_secs_f64(),
        rss_kib(pid) / 1024
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut put_ms = Vec::new();
    let mut from_put_ms = Vec::new();
    let mut from_response_ms = Vec::new();
    let mut per_stream_ms = Vec::new();
    let mut leaked = Vec::new();
    let mut changed_bytes = Vec::new();
    let mut other_types = 0u32;
    let mut timeouts = 0;
    let mut rng = rand::rng();
    for _ in 0..iterations {
        let m = rng.random_range(0..MESHES);
        let mesh = &mut meshes[m];
        let mut w = rng.random_range(1..100);
        if w == mesh.weight {
            w = w % 99 + 1;
        }
        mesh.weight = w;
        let probes: Vec<&Arc<Probe>> = fleet.probes.iter().filter(|p| p.mesh == m).collect();
        let before: Vec<Seen> = probes.iter().map(|p| p.seen()).collect();
        let others_before = bytes.total_except(m);
        let mine_before = bytes.0[m].load(Ordering::Relaxed);
        let doc = route_doc(&mesh.name, w);
        let sent = Instant::now();
        let (status, body) = mesh.api.put(&document_path(&doc), &doc).await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        put_ms.push(ms(answered - sent));
        let deadline = sent + Duration::from_secs(10);
        let done = loop {
            let now: Vec<Seen> = probes.iter().map(|p| p.seen()).collect();
            let all = now.iter().zip(&before).all(|(n, b)| n.responses[RDS] > b.responses[RDS]);
            if all {
                break Some(now);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let Some(now) = done else {
            timeouts += 1;
            continue;
        };
        let last = now.iter().filter_map(|s| s.acked_at[RDS]).max().unwrap();
        for (n, b) in now.iter().zip(&before) {
            assert_ne!(n.version[RDS], b.version[RDS], "a new RDS version");
            per_stream_ms.push(ms(n.acked_at[RDS].unwrap() - sent));
            other_types += (0..4).filter(|t| *t != RDS).map(|t| n.responses[t] - b.responses[t]).sum::<u32>();
        }
        from_put_ms.push(ms(last - sent));
        from_response_ms.push(ms(last.saturating_duration_since(answered)));
        // Past the debounce window, so that a late push to another mesh would show.
        tokio::time::sleep(Duration::from_millis(50)).await;
        leaked.push(bytes.total_except(m) - others_before);
        changed_bytes.push((bytes.0[m].load(Ordering::Relaxed) - mine_before) as f64 / probes.len() as f64);
    }
    println!(
        "{iterations} route PUTs, each in one random mesh of {MESHES} ({STREAMS_PER_MESH} streams each):\n"
    );
    println!("| measure | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    println!("{}", row("REST PUT alone, request → response (baseline)", &put_ms));
    println!("{}", row("PUT response → all streams of the mesh ACKed the new RDS", &from_response_ms));
    println!("{}", row("PUT request → all streams of the mesh ACKed", &from_put_ms));
    println!("{}", row("PUT request → one stream ACKed (per stream)", &per_stream_ms));
    println!(
        "\nratio (PUT request → all ACKed) / PUT alone: p50 {:.2}×, p99 {:.2}×",
        pct(&from_put_ms, 0.5) / pct(&put_ms, 0.5),
        pct(&from_put_ms, 0.99) / pct(&put_ms, 0.99)
    );
    println!(
        "bytes received by streams of the other {} meshes during a change: max {} (sum {} over {} changes); \
         by each stream of the changed mesh: {:.0} bytes; other types resent: {other_types}; timeouts: {timeouts}",
        MESHES - 1,
        leaked.iter().max().unwrap_or(&0),
        leaked.iter().sum::<u64>(),
        leaked.len(),
        pct(&changed_bytes, 0.5),
    );
    println!("server RSS {} MiB, CPU {:.1} s so far", rss_kib(pid) / 1024, cpu_secs(pid));
    fleet.close();
    drop(channels);

    // ----------------------------------------------------------------------------------
    // 2. Idle streams
    println!("\n### 2. Idle streams (CDS only, ~50 clusters each)\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss0 = rss_kib(pid);
    let mut cds_names: Vec<String> =
        ["reviews", "reviews~version=v1", "reviews~version=v2", "productpage", "db"]
            .into_iter()
            .map(String::from)
            .collect();
    cds_names.extend((0..EXTRA_SERVICES).map(|i| format!("svc{i:02}")));
    println!("server RSS with no stream open (after scenario 1): {} MiB\n", rss0 / 1024);
    println!(
        "| streams | connections | set-up time (all ACKed) | client retries (UNAVAILABLE) | server RSS | RSS − RSS(0 streams) | per stream |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut idle = Fleet::default();
    let mut idle_clients: Vec<Vec<AggregatedDiscoveryServiceClient<Channel>>> = vec![Vec::new(); MESHES];
    let mut clusters_each = 0;
    for &target in &idle_steps {
        let began = Instant::now();
        while idle.probes.len() < target {
            let i = idle.probes.len();
            let (m, k) = (i % MESHES, i / MESHES);
            if k / IDLE_PER_CONN >= idle_clients[m].len() {
                idle_clients[m].push(connect(&t, &root, &meshes[m].svid).await);
            }
            let client = &idle_clients[m][k / IDLE_PER_CONN];
            idle.spawn(
                client,
                &meshes[m],
                format!("i-{}-{k}", meshes[m].name),
                Wants::Clusters,
                cds_names.clone(),
                &bytes,
            );
        }
        let ok = idle.in_sync(&[CDS], Duration::from_secs(300)).await;
        let setup = began.elapsed();
        if !ok {
            let (out, _) = t.output();
            let lines: Vec<&str> =
                out.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
            panic!(
                "idle streams not in sync: {:?}\n{}",
                idle.errors().first(),
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
        clusters_each = idle.probes[0].seen().resources[CDS];
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(pid);
        println!(
            "| {target} | {} | {:.1} s | {} | {} MiB | {} MiB | {:.1} KiB |",
            idle_clients.iter().map(Vec::len).sum::<usize>(),
            setup.as_secs_f64(),
            idle.retries(),
            rss / 1024,
            rss.saturating_sub(rss0) / 1024,
            rss.saturating_sub(rss0) as f64 / target as f64
        );
    }
    println!("\neach idle stream holds {clusters_each} clusters; server CPU {:.1} s so far", cpu_secs(pid));

    // ----------------------------------------------------------------------------------
    // 3. Reconnect storm
    let dropped = idle.probes.len();
    let cpu_before = cpu_secs(pid);
    let storm_start = Instant::now();
    idle.close();
    drop(idle_clients);
    let mut fleet = Fleet::default();
    let clients: Vec<(usize, AggregatedDiscoveryServiceClient<Channel>)> =
        futures::stream::iter(0..storm.div_ceil(storm_per_conn))
            .map(|c| {
                let m = c % MESHES;
                let (t, root, svid) = (&t, &root, &meshes[m].svid);
                async move { (m, connect(t, root, svid).await) }
            })
            .buffer_unordered(storm.div_ceil(storm_per_conn))
            .collect()
            .await;
    let connected = storm_start.elapsed();
    let mut per_mesh = vec![0usize; MESHES];
    for i in 0..storm {
        let (m, client) = &clients[i % clients.len()];
        let k = per_mesh[*m];
        per_mesh[*m] += 1;
        // The node ids of the idle streams that just went away, as restarted clients.
        fleet.spawn(
            client,
            &meshes[*m],
            format!("i-{}-{k}", meshes[*m].name),
            Wants::Full,
            Vec::new(),
            &bytes,
        );
    }
    let ok = fleet.in_sync(&[LDS, RDS, CDS, EDS], Duration::from_secs(120)).await;
    let all = storm_start.elapsed();
    let errors = fleet.errors();
    let to_sync: Vec<f64> = fleet
        .probes
        .iter()
        .filter_map(|p| {
            let s = p.seen();
            let last = s.acked_at.iter().flatten().max().copied()?;
            s.acked_at.iter().all(Option::is_some).then(|| ms(last - storm_start))
        })
        .collect();
    println!(
        "\n### 3. Reconnect storm\n\n{dropped} idle streams dropped at once; {storm} full clients (LDS+RDS+CDS+EDS) \
         reconnect at once on {} new TLS connections ({storm_per_conn} streams each)\n",
        clients.len()
    );
    println!("| measure | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    println!("{}", row("drop → stream in sync (all four types ACKed)", &to_sync));
    println!(
        "\nall {storm} in sync: {ok} after {:.2} s (TLS connections up after {:.2} s); client retries {}; errors: {}{}; \
         server CPU during the storm {:.1} s; RSS {} MiB",
        all.as_secs_f64(),
        connected.as_secs_f64(),
        fleet.retries(),
        errors.len(),
        errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        cpu_secs(pid) - cpu_before,
        rss_kib(pid) / 1024
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = meshes[0].api.get(&format!("/meshes/{}/dataplanes", meshes[0].name)).await;
    if status == 200 {
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let online = items.iter().filter(|d| d["online"] == json!(true)).count();
        println!("mesh {}: {online} of {} dataplanes online after the storm", meshes[0].name, items.len());
    }
    fleet.close();
    store.close().await;
}
