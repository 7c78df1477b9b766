//! Proxyless gRPC against the real xDS server: gRPC's own xDS client and xDS-enabled server
//! (Python `grpcio`, installed into .venv by scripts/test), with SVIDs from the identity
//! service and mTLS everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::{Svid, issue, join_token, platform_root, write_files};
use trellis_tests::{Api, Trellis, document_path, example_documents, token, trellis};

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("xds-peer/peer.py")
}

/// The gRPC xDS bootstrap Trellis generates for one workload whose files are in `dir`, with
/// the workload's tags added to the node metadata (as an operator would for `version: v2`).
async fn bootstrap(api: &Api, dir: &Path, node: &str, service: &str, tags: Value) -> PathBuf {
    let path = format!("/meshes/shop/bootstrap/grpc?service={service}&node={node}&certDir={}", dir.display());
    let (status, mut doc) = api.get(&path).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        doc["certificate_providers"]["trellis"]["config"]["ca_certificate_file"],
        json!(format!("{}/bundle.pem", dir.display()))
    );
    assert!(doc["node"]["locality"].is_object(), "gRPC for Node.js requires node.locality: {doc}");
    doc["node"]["metadata"]["tags"] = tags;
    doc["node"]["locality"] = json!({"zone": "z1"});
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn peer(bootstrap: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(trellis_tests::venv_python());
    cmd.arg(peer_script())
        .args(args)
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const REVIEWS: &str = "xds:///reviews.shop:9080";

/// Runs the client for `calls` calls; returns replies by text and errors by code.
async fn call(boot: &Path, calls: usize, headers: &[&str]) -> Value {
    call_within(boot, REVIEWS, calls, headers, 30).await
}

/// The client's arguments: `calls` calls to `target`, the first one waiting `ready_secs` at
/// most for the channel to get its configuration.
fn client_args(target: &str, calls: usize, headers: &[&str], ready_secs: u32) -> Vec<String> {
    let mut args: Vec<String> = ["client", "--target", target, "--calls", &calls.to_string()]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(["--ready-timeout".to_owned(), ready_secs.to_string()]);
    for h in headers {
        args.extend(["--header".to_owned(), (*h).to_owned()]);
    }
    args
}

async fn call_within(boot: &Path, target: &str, calls: usize, headers: &[&str], ready_secs: u32) -> Value {
    let args = client_args(target, calls, headers, ready_secs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tokio::time::timeout(Duration::from_secs(120), peer(boot, &args).output())
        .await
        .expect("the gRPC client finished within 2 minutes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("client output is not JSON:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

/// The mesh of the example, with an access policy for the gRPC method used here.
async fn apply_mesh(api: &Api) {
    for doc in example_documents() {
        if doc["kind"] == "AccessPolicy" {
            continue;
        }
        let (status, body) = api.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{}: {body}", document_path(&doc));
    }
    let policy = json!({"apiVersion": "trellis.dev/v1", "kind": "AccessPolicy",
        "metadata": {"name": "reviews-callers", "mesh": "shop"},
        "spec": {"targetRef": {"service": "reviews"}, "rules": [{"action": "Allow",
            "from": [{"service": "productpage"}],
            "to": {"paths": [{"type": "PathPrefix", "value": "/reviews.Reviews/"}]}}]}});
    let (status, body) = api.put("/meshes/shop/access-policies/reviews-callers", &policy).await;
    assert!(status == 200 || status == 201, "{body}");
}

struct Backends {
    _children: Vec<Child>,
}

async fn start_backends(
    t: &Trellis,
    api: &Api,
    store: &trellis_store::Store,
    root: &str,
    dir: &Path,
) -> Backends {
    let mut children = Vec::new();
    for version in ["v1", "v2"] {
        let svid = issue(&t.xds, root, &join_token(store, "acme", "shop", "reviews").await).await.unwrap();
        let d = dir.join(format!("reviews-{version}"));
        write_files(&d, root, &svid);
        let boot =
            bootstrap(api, &d, &format!("reviews-{version}"), "reviews", json!({"version": version})).await;
        let port = free_port().to_string();
        let child = peer(&boot, &["server", "--port", &port, "--reply", version])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python runs");
        children.push(child);
    }
    Backends { _children: children }
}

/// Waits until both backends registered the port they serve on.
async fn wait_registered(api: &Api) {
    for _ in 0..300 {
        let (status, body) = api.get("/meshes/shop/dataplanes").await;
        assert_eq!(status, 200, "{body}");
        let ready = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["service"] == "reviews" && !d["ports"].as_array().unwrap().is_empty())
            .count();
        if ready == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the two reviews backends did not register within 30 s");
}

fn count(v: &Value, reply: &str) -> u64 {
    v["replies"][reply].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn grpc_xds_clients_follow_routes_over_mtls_and_the_ledger_shows_acks() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    apply_mesh(&api).await;
    let store = db.store().await;
    // The platform root the workloads pin, as the API hands it out; it is the one in the store.
    let res = api.req(reqwest::Method::GET, "/meshes/shop/bootstrap/ca.pem").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let root = res.text().await.unwrap();
    assert_eq!(root, platform_root(&store).await);
    let dir = tempfile::tempdir().unwrap();

    let _backends = start_backends(&t, &api, &store, &root, dir.path()).await;
    wait_registered(&api).await;

    let client: Svid =
        issue(&t.xds, &root, &join_token(&store, "acme", "shop", "productpage").await).await.unwrap();
    let d = dir.path().join("productpage");
    write_files(&d, &root, &client);
    let boot = bootstrap(&api, &d, "productpage-1", "productpage", json!({})).await;

    // The seed's canary: 75 % v1, 25 % v2.
    let split = call(&boot, 2000, &[]).await;
    let (v1, v2) = (count(&split, "v1"), count(&split, "v2"));
    eprintln!("split: {split}");
    assert_eq!(v1 + v2, 2000, "every call succeeds: {split}");
    let share = v1 as f64 / 2000.0;
    assert!((0.70..=0.80).contains(&share), "75 % ± 5 % to v1, got {share}: {split}");

    // Beta testers always reach v2.
    let beta = call(&boot, 200, &["x-beta=true"]).await;
    assert_eq!(count(&beta, "v2"), 200, "{beta}");

    // The ledger: every dataplane ACKed every type it was sent, and nothing was rejected.
    let (status, ledger) = api.get("/meshes/shop/dataplanes").await;
    assert_eq!(status, 200);
    for dp in ledger["items"].as_array().unwrap() {
        let sync = dp["sync"].as_array().unwrap_or_else(|| panic!("sync state listed: {dp}"));
        assert!(!sync.is_empty(), "{dp}");
        for line in sync {
            assert_eq!(line["ackedVersion"], line["sentVersion"], "{dp}");
            assert!(line["nack"].is_null(), "{dp}");
        }
    }

    // Without the route, the default: all of reviews, both versions.
    let (status, body) = api.delete("/meshes/shop/http-routes/reviews").await;
    assert!(status == 204 || status == 200, "{body}");
    let after = call(&boot, 400, &["x-beta=true"]).await;
    assert_eq!(count(&after, "v1") + count(&after, "v2"), 400, "{after}");
    assert!(count(&after, "v1") > 100, "x-beta no longer pins v2 once the route is gone: {after}");

    // A caller the access policy does not allow is refused by the server's RBAC.
    let stranger = issue(&t.xds, &root, &join_token(&store, "acme", "shop", "db").await).await.unwrap();
    let d = dir.path().join("db");
    write_files(&d, &root, &stranger);
    let boot = bootstrap(&api, &d, "db-1", "db", json!({})).await;
    let denied = call_within(&boot, REVIEWS, 5, &[], 5).await;
    eprintln!("after the route was deleted: {after}; unknown caller: {denied}");
    assert_eq!(count(&denied, "v1") + count(&denied, "v2"), 0, "{denied}");
    assert!(denied["errors"]["PERMISSION_DENIED"].as_u64().unwrap_or(0) > 0, "{denied}");
}

/// A running Trellis with the example mesh applied, and where its workloads keep their files.
struct Fixture {
    _db: TestDb,
    t: Trellis,
    api: Api,
    store: trellis_store::Store,
    root: String,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    apply_mesh(&api).await;
    let store = db.store().await;
    let root = platform_root(&store).await;
    Fixture { _db: db, t, api, store, root, dir: tempfile::tempdir().unwrap() }
}

impl Fixture {
    /// The files and the bootstrap of a gRPC workload of `service` named `node`.
    async fn workload(&self, service: &str, node: &str) -> PathBuf {
        let svid = issue(&self.t.xds, &self.root, &join_token(&self.store, "acme", "shop", service).await)
            .await
            .unwrap();
        let d = self.dir.path().join(node);
        write_files(&d, &self.root, &svid);
        bootstrap(&self.api, &d, node, service, json!({})).await
    }
}

/// xDS responses the server has sent, per type (`Listener`, `Cluster`, …): the counter
/// `trellis_xds_responses_total` of its /metrics.
async fn responses_sent(t: &Trellis) -> BTreeMap<String, u64> {
    let body = t.get("/metrics").await.text().await.unwrap();
    body.lines()
        .filter_map(|l| {
            let (url, value) =
                l.strip_prefix("trellis_xds_responses_total{type_url=\"")?.split_once("\"} ")?;
            let short = url.rsplit('.').next()?.to_owned();
            Some((short, value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

const CLIENT_TYPES: [&str; 4] = ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"];

/// Responses sent per type while `dial` ran, with this stream the only one open.
async fn responses_during<F: std::future::Future<Output = Value>>(
    t: &Trellis,
    dial: F,
) -> (BTreeMap<String, u64>, Value) {
    let before = responses_sent(t).await;
    let out = dial.await;
    let after = responses_sent(t).await;
    let sent = CLIENT_TYPES
        .iter()
        .map(|ty| {
            let n = after.get(*ty).copied().unwrap_or(0) - before.get(*ty).copied().unwrap_or(0);
            ((*ty).to_owned(), n)
        })
        .collect();
    (sent, out)
}

/// XDS.md §1: an ACK of the current version needs no answer, also when the name asked for
/// does not exist. gRPC's own xDS client dials a missing target for about five seconds, then
/// an existing one, one stream at a time; the server's counters give what each stream was
/// sent per type. Before the fix the missing target made the server answer every ACK:
/// thousands of Listener responses in those seconds.
#[tokio::test]
async fn a_grpc_client_is_answered_once_per_type_also_for_a_missing_target() {
    let f = fixture().await;
    let boot = f.workload("productpage", "productpage-1").await;

    let (missing, out) = responses_during(&f.t, call_within(&boot, "xds:///nope.shop:9080", 1, &[], 4)).await;
    eprintln!("missing target: responses {missing:?}; client {out}");
    assert_eq!(out["replies"], json!({}), "nothing answers for a missing target: {out}");
    assert!(
        (1..=2).contains(&missing["Listener"]),
        "the missing Listener is answered once (or twice), not on every ACK: {missing:?}"
    );
    for ty in ["RouteConfiguration", "Cluster", "ClusterLoadAssignment"] {
        assert_eq!(missing[ty], 0, "without a Listener the client asks for no {ty}: {missing:?}");
    }

    // An existing target (with no backend running, so the client keeps waiting on it). The
    // client names the endpoints of the route's clusters one request at a time as it finds
    // them (three EDS names: three responses), and each new name is answered: a few
    // responses per type, not one per ACK.
    let (existing, out) = responses_during(&f.t, call_within(&boot, REVIEWS, 1, &[], 4)).await;
    eprintln!("existing target: responses {existing:?}; client {out}");
    for ty in CLIENT_TYPES {
        assert!(
            (1..=4).contains(&existing[ty]),
            "{ty} is answered a few times, not on every ACK: {existing:?}"
        );
    }
}

/// The status' summary of the resource at `path` once it reads `want` (proxies ACK
/// asynchronously), or the last one read.
async fn propagation_summary(api: &Api, path: &str, want: &str) -> Value {
    let mut line = Value::Null;
    for _ in 0..100 {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 200, "{body}");
        line = body["status"]["propagation"].clone();
        if line["summary"] == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    line
}

/// A resource's status counts the proxies it configures, not the whole mesh: with one gRPC
/// client of reviews and two xDS-enabled reviews servers online, the route and the circuit
/// breaker reach the client only, the access policy the servers only, the service all
/// three, and the db service and its TCP route nobody.
#[tokio::test]
async fn propagation_counts_only_the_proxies_a_resource_configures() {
    let f = fixture().await;
    let _backends = start_backends(&f.t, &f.api, &f.store, &f.root, f.dir.path()).await;
    wait_registered(&f.api).await;
    let boot = f.workload("productpage", "productpage-1").await;
    // The client keeps its channel (and its xDS stream) open after its calls.
    let mut args = client_args(REVIEWS, 10, &[], 30);
    args.extend(["--hold".to_owned(), "120".to_owned()]);
    let mut client = peer(&boot, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python runs");
    let stdout = client.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the client reports within a minute")
        .unwrap()
        .unwrap_or_default();
    let out: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("client output is not JSON: {line}"));
    assert_eq!(count(&out, "v1") + count(&out, "v2"), 10, "{out}");

    for (path, want) in [
        ("/meshes/shop/http-routes/reviews", "applied by 1 of 1 proxies"),
        ("/meshes/shop/circuit-breakers/reviews", "applied by 1 of 1 proxies"),
        ("/meshes/shop/access-policies/reviews-callers", "applied by 2 of 2 proxies"),
        ("/meshes/shop/services/reviews", "applied by 3 of 3 proxies"),
        ("/meshes/shop/services/db", "applied by 0 of 0 proxies"),
        ("/meshes/shop/tcp-routes/db", "applied by 0 of 0 proxies"),
    ] {
        let line = propagation_summary(&f.api, path, want).await;
        assert_eq!(line["summary"], want, "{path}: {line}");
    }
    // Why: what each proxy's resources configure.
    let (_, dataplanes) = f.api.get("/meshes/shop/dataplanes").await;
    for d in dataplanes["items"].as_array().unwrap() {
        let want =
            if d["service"] == "productpage" { (json!(["reviews"]), false) } else { (json!([]), true) };
        assert_eq!((d["calls"].clone(), d["serves"].as_bool().unwrap()), want, "{d}");
    }
    // The list shows the same counts as the single resource.
    let (status, list) = f.api.get("/meshes/shop/http-routes").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["status"]["propagation"]["summary"], "applied by 1 of 1 proxies", "{list}");
    client.kill().await.unwrap();
}
