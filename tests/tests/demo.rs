//! `trellis demo` as a newcomer runs it: one command, a working mesh, Ctrl-C leaves nothing,
//! and the next run works too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedReceiver;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::trellis;

/// The demo's workloads: productpage, reviews v1 and v2, ratings, details.
const WORKLOADS: u16 = 5;

/// The agents' addresses (127.0.0.2…, with their admin ports) are the same in every run: one
/// demo at a time in this binary (and on the host, under /tmp/trellis-fixed-ports.lock).
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port nobody listens on now, with the `count - 1` ports after it free too.
fn free_ports(count: u16) -> u16 {
    // Below the kernel's ephemeral range (from 32768 by default): a port found free there
    // cannot become an outgoing connection's source port before the demo binds it.
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let offset = (std::process::id() % u32::from(SPAN)) as u16;
    (0..SPAN)
        .map(|k| LOW + (offset + k) % (SPAN - count))
        .find(|&base| (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a run of free ports below the ephemeral range")
}

fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Every process: (pid, parent, process group), from /proc.
fn processes() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp …: the command may hold spaces, the fields after `)` do not.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // A zombie has stopped; only its parent's wait is missing.
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let (Some(Ok(ppid)), Some(Ok(pgrp))) =
            (fields.get(1).map(|f| f.parse()), fields.get(2).map(|f| f.parse()))
        {
            out.push((pid, ppid, pgrp));
        }
    }
    out
}

/// `pid`'s descendants, however deep.
fn descendants(pid: u32) -> BTreeSet<u32> {
    let all = processes();
    let mut found = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid, _) in &all {
            if ppid == parent && found.insert(child) {
                frontier.push(child);
            }
        }
    }
    found
}

async fn json(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// What the demo said it started: `started <name> (pid <pid>; listens on <addr>, …)`.
struct Started {
    name: String,
    pid: u32,
    listens: Vec<SocketAddr>,
}

fn started(text: &str) -> Vec<Started> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("started "))
        .map(|l| {
            let (name, rest) = l.split_once(" (pid ").unwrap_or_else(|| panic!("a started line: {l}"));
            let (pid, listens) = rest.split_once("; listens on ").unwrap_or_else(|| panic!("{l}"));
            let listens = listens.trim_end_matches(')').split(", ").map(|a| a.parse().unwrap()).collect();
            Started { name: name.to_owned(), pid: pid.parse().unwrap(), listens }
        })
        .collect()
}

/// A running `trellis demo`, its output collected as it comes.
struct Demo {
    child: tokio::process::Child,
    pid: u32,
    output: Arc<Mutex<Vec<String>>>,
    /// The ready block's last line and the traffic reports, as they come.
    lines: UnboundedReceiver<String>,
    /// The tasks that read its stdout and stderr, done at their end.
    readers: Vec<tokio::task::JoinHandle<()>>,
    stopped: bool,
}

impl Demo {
    /// Starts the demo in a process group of its own and waits until it says it is ready.
    async fn start(mut cmd: tokio::process::Command) -> Demo {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().expect("starting trellis demo");
        let pid = child.id().unwrap();
        let output = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (output, tx) = (output.clone(), tx.clone());
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // The ready block ends with how to stop the demo.
                    if line.contains("press Ctrl-C") || line.starts_with("last 10s:") {
                        let _ = tx.send(line.clone());
                    }
                    output.lock().unwrap().push(line);
                }
            }));
        }
        let mut demo = Demo { child, pid, output, lines, readers, stopped: false };
        let ready = tokio::time::timeout(Duration::from_secs(180), demo.lines.recv()).await;
        assert!(
            matches!(&ready, Ok(Some(l)) if l.contains("press Ctrl-C")),
            "the demo never said it was ready:\n{}",
            demo.said()
        );
        assert!(demo.said().contains("The demo is ready"), "{}", demo.said());
        demo
    }

    fn said(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// The node ids of its dataplanes: the agents it said it started.
    fn nodes(&self) -> Vec<String> {
        let nodes: Vec<String> = started(&self.said())
            .into_iter()
            .filter_map(|s| s.name.strip_suffix("-agent").map(str::to_owned))
            .collect();
        assert_eq!(nodes.len(), usize::from(WORKLOADS), "{nodes:?}:\n{}", self.said());
        nodes
    }

    /// Ctrl-C, then: it exits with success, no process it started (its children, theirs, or
    /// any in their process groups) remains, and nothing listens on an address it said a
    /// process of it listens on.
    async fn interrupt_and_check_nothing_is_left(mut self) {
        let said = started(&self.said());
        // The control plane, and an application and an agent per workload.
        assert_eq!(said.len(), 1 + 2 * usize::from(WORKLOADS), "{}", self.said());
        let tree = descendants(self.pid);
        let mut groups: BTreeSet<u32> = processes()
            .into_iter()
            .filter(|(pid, _, _)| tree.contains(pid))
            .map(|(_, _, pgrp)| pgrp)
            .collect();
        groups.insert(self.pid);
        let addrs: Vec<SocketAddr> = said.iter().flat_map(|s| s.listens.iter().copied()).collect();
        for s in &said {
            assert!(tree.contains(&s.pid), "{} (pid {}) is no process of the demo: {tree:?}", s.name, s.pid);
        }
        // The addresses it printed are the ones its processes listen on.
        let closed: Vec<&SocketAddr> = addrs.iter().filter(|a| !listening(**a)).collect();
        assert!(closed.is_empty(), "not listening while the demo runs: {closed:?}");
        // Ports 15000 (the agents' admin ports) are among them.
        assert_eq!(addrs.iter().filter(|a| a.port() == 15000).count(), usize::from(WORKLOADS), "{addrs:?}");

        let ok = tokio::process::Command::new("kill").arg("-INT").arg(self.pid.to_string()).status().await;
        assert!(ok.unwrap().success());
        self.stopped = true;
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        let status = status.unwrap_or_else(|_| panic!("the demo did not stop:\n{}", self.said())).unwrap();
        // Its last words, read to the end of its output.
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        assert!(status.success(), "{status}:\n{}", self.said());
        assert!(self.said().contains("stopped 11 demo processes"), "{}", self.said());

        let left: Vec<(u32, u32, u32)> = processes()
            .into_iter()
            .filter(|(pid, _, pgrp)| tree.contains(pid) || groups.contains(pgrp))
            .collect();
        assert!(left.is_empty(), "processes left running (pid, parent, group): {left:?}");
        let open: Vec<SocketAddr> = addrs.into_iter().filter(|a| listening(*a)).collect();
        assert!(open.is_empty(), "still listening: {open:?}");
    }
}

impl Drop for Demo {
    /// Stops the demo as a person does (SIGINT), also when the test fails half-way: killed,
    /// it could not stop its children, which would outlive the test.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let _ = std::process::Command::new("kill").arg("-INT").arg(self.pid.to_string()).status();
        for _ in 0..300 {
            if !alive(self.pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `trellis demo` on its own run of free ports, in `work`.
fn demo_command(work: &Path, base: u16, rate: u32) -> tokio::process::Command {
    let mut cmd = trellis();
    cmd.args([
        "demo",
        "--http-addr",
        &format!("127.0.0.1:{base}"),
        "--xds-addr",
        &format!("127.0.0.1:{}", base + 1),
    ])
    .args(["--app-port", &(base + 2).to_string(), "--rate", &rate.to_string()])
    .arg("--work-dir")
    .arg(work);
    cmd
}

/// The ports a demo uses on 127.0.0.1: the REST port, the TLS port, then the applications'
/// and their agents' HTTP proxies.
const PORTS: u16 = 2 + 2 * WORKLOADS;

/// Waits until every dataplane named is online and in sync (the API's view).
async fn assert_in_sync(http: SocketAddr, token: &str, nodes: &[String]) {
    let client = reqwest::Client::new();
    let list = json(
        client.get(format!("http://{http}/api/v1/orgs/default/meshes/shop/dataplanes")).bearer_auth(token),
    )
    .await;
    for node in nodes {
        let dp =
            list["items"].as_array().unwrap().iter().find(|d| d["nodeId"] == *node && d["online"] == true);
        let dp = dp.unwrap_or_else(|| panic!("no online dataplane {node}: {list:#}"));
        assert_eq!(dp["state"], "in-sync", "{dp:#}");
    }
}

#[tokio::test]
async fn the_demo_runs_the_shop_mesh_ctrl_c_stops_everything_and_it_runs_again() {
    trellis_tests::init();
    let _one = ONE_DEMO.lock().await;
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let work = work.path().join("demo");
    let base = free_ports(PORTS);
    let http = SocketAddr::from(([127, 0, 0, 1], base));
    let app_port = base + 2;
    // A slow generator: one call in ten of its goes on the beta channel (always v2), which
    // would blur the 75/25 split of the test's own calls in the topology.
    let mut cmd = demo_command(&work, base, 2);
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url());
    let started_at = std::time::Instant::now();
    let mut demo = Demo::start(cmd).await;
    let text = demo.said();
    assert!(text.contains("/auth/local"), "no one-time login link:\n{text}");
    // What it tells a newcomer to look at.
    for guidance in [
        "reviews: 75 % of calls go to v1, 25 % to v2",
        "beta testers always to v2",
        "every call between services is mutual TLS, each workload with its own SVID",
        "reviews v2 -> ratings is gRPC",
        "productpage -> details is denied",
    ] {
        assert!(text.contains(guidance), "the demo does not say {guidance:?}:\n{text}");
    }

    // Every demo dataplane is connected and has acknowledged its configuration.
    let token = trellis_tests::token(&db, "default", Role::Viewer).await;
    let nodes = demo.nodes();
    assert_in_sync(http, &token, &nodes).await;

    // productpage -> reviews through the agents: about 75/25, beta always v2, details denied.
    // Paced at 40 calls/s: with the generator's 2/s that stays within the local rate limit
    // examples/reviews.yaml puts on reviews (100/s), past which the agent answers 429.
    const CALLS: u32 = 800;
    let client = reqwest::Client::new();
    let page = format!("http://127.0.0.1:{app_port}");
    let mut pace = tokio::time::interval(Duration::from_millis(25));
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..CALLS {
        pace.tick().await;
        let body = json(client.get(format!("{page}/"))).await;
        *versions.entry(body["reviews"]["version"].as_str().unwrap_or("none").to_owned()).or_default() += 1;
    }
    let v1 = f64::from(versions.get("v1").copied().unwrap_or(0)) / f64::from(CALLS);
    assert!((0.69..=0.81).contains(&v1), "v1 share {v1}: {versions:?}");
    assert_eq!(versions.keys().filter(|v| !["v1", "v2"].contains(&v.as_str())).count(), 0, "{versions:?}");

    // The topology sees the same split: productpage → reviews, about 75 % to v1, 25 % to v2.
    let topology_url = format!("http://{http}/api/v1/orgs/default/meshes/shop/topology?window=300");
    let edge = |topology: &Value, source: &str, destination: &str| -> Value {
        topology["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["source"] == source && e["destination"] == destination)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut to_reviews = Value::Null;
    for _ in 0..60 {
        let topology = json(client.get(&topology_url).bearer_auth(&token)).await;
        to_reviews = edge(&topology, "productpage", "reviews");
        if to_reviews["metrics"]["requests"].as_f64().unwrap_or(0.0) >= f64::from(CALLS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let share = |version: &str| -> f64 {
        to_reviews["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["tags"] == serde_json::json!({ "version": version }))
            .and_then(|s| s["share"].as_f64())
            .unwrap_or(0.0)
    };
    assert!((0.70..=0.80).contains(&share("v1")), "v1 share in the topology: {to_reviews:#}");
    assert!((0.20..=0.30).contains(&share("v2")), "v2 share in the topology: {to_reviews:#}");
    assert!((share("v1") + share("v2") - 1.0).abs() < 1e-9, "every call went to a version: {to_reviews:#}");
    // Beta calls: always v2, whose ratings answer over gRPC through the agents.
    for _ in 0..20 {
        pace.tick().await;
        let body = json(client.get(format!("{page}/")).header("x-beta", "true")).await;
        assert_eq!(body["reviews"]["version"], "v2", "{body:#}");
        assert_eq!(body["reviews"]["ratings"]["service"], "ratings", "{body:#}");
        assert_eq!(body["reviews"]["ratings"]["protocol"], "grpc", "{body:#}");
        assert_eq!(body["reviews"]["ratings"]["stars"], 4, "{body:#}");
    }
    let res = client.get(format!("{page}/details")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert!(body["details"]["error"].as_str().unwrap().contains("403"), "{body:#}");

    // The agents report golden metrics: the mesh's topology shows the calls between services,
    // the gRPC hop reviews → ratings among them.
    let requests = |topology: &Value, source: &str, destination: &str| {
        edge(topology, source, destination)["metrics"]["requests"].as_f64().unwrap_or(0.0)
    };
    let mut topology = Value::Null;
    for _ in 0..60 {
        topology = json(client.get(&topology_url).bearer_auth(&token)).await;
        if requests(&topology, "productpage", "reviews") > 0.0
            && requests(&topology, "reviews", "ratings") >= 20.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(requests(&topology, "productpage", "reviews") > 0.0, "{topology:#}");
    assert!(requests(&topology, "reviews", "ratings") >= 20.0, "the beta calls' gRPC hop: {topology:#}");
    assert_eq!(
        edge(&topology, "reviews", "ratings")["metrics"]["successRate"].as_f64(),
        Some(1.0),
        "every gRPC call succeeded: {topology:#}"
    );

    // What a newcomer does next: the printed one-time link signs in to the console, and the
    // mesh's topology page draws productpage → reviews with its split between versions.
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/auth/local"))
        .unwrap_or_else(|| panic!("no one-time login link:\n{text}"))
        .trim_end_matches(')')
        .to_owned();
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    b.goto(&link).await.unwrap();
    b.goto(&format!("http://{http}/orgs/default/meshes/shop/topology")).await.unwrap();
    let Ok(row) =
        b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("row-productpage-reviews")).await
    else {
        panic!(
            "no productpage → reviews edge on the topology page:\n{}",
            b.source().await.unwrap_or_default()
        );
    };
    let row = row.text().await.unwrap();
    assert!(row.contains("version=v1") && row.contains("version=v2"), "the edge's row: {row}");
    b.find(Locator::Css("#edge-productpage-reviews")).await.expect("the edge is drawn");
    println!(
        "the demo's topology was on screen {:.1} s after `trellis demo` started",
        started_at.elapsed().as_secs_f64()
    );
    chromium.close().await;

    // The traffic generator reports what the mesh did: its beta calls reach reviews v2, whose
    // ratings answer over gRPC, and its calls of details are denied.
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, demo.lines.recv()).await {
        let done = line.contains("beta -> reviews v2 -> ratings (grpc)") && line.contains("details denied");
        reports.push(line);
        if done {
            break;
        }
    }
    assert!(
        reports.last().is_some_and(|l| l.contains("beta -> reviews v2 -> ratings (grpc)")),
        "no traffic report of beta calls reaching reviews v2 and ratings: {reports:#?}"
    );
    assert!(reports.iter().any(|l| l.contains("details denied")), "{reports:#?}");
    assert!(reports.iter().any(|l| l.contains("regular -> reviews v1")), "{reports:#?}");

    demo.interrupt_and_check_nothing_is_left().await;

    // A second run, on the same work directory and database, works as the first did.
    let mut cmd = demo_command(&work, base, 2);
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url());
    let demo = Demo::start(cmd).await;
    assert_in_sync(http, &token, &demo.nodes()).await;
    let body = json(client.get(format!("{page}/")).header("x-beta", "true")).await;
    assert_eq!(body["reviews"]["ratings"]["protocol"], "grpc", "{body:#}");
    demo.interrupt_and_check_nothing_is_left().await;
}

/// With no database configured, the demo runs on the embedded default (here the local
/// PostgreSQL, in a database of the test's own that it creates) and stops cleanly.
#[tokio::test]
async fn the_demo_runs_on_the_embedded_default() {
    trellis_tests::init();
    let _one = ONE_DEMO.lock().await;
    // Dropped at the end: the database the demo's control plane creates.
    let db = TestDb::reserve();
    let work = tempfile::tempdir().unwrap();
    let base = free_ports(PORTS);
    let mut cmd = demo_command(&work.path().join("demo"), base, 10);
    cmd.args(["--embedded-database", &db.name]).arg("--data-dir").arg(work.path().join("data"));
    let demo = Demo::start(cmd).await;
    let log = std::fs::read_to_string(work.path().join("demo/logs/trellis.log")).unwrap();
    assert!(log.contains(&format!("PostgreSQL at 127.0.0.1:5432, database {}", db.name)), "{log}");
    assert!(demo.said().contains(&format!("all {WORKLOADS} dataplanes are connected and in sync")));
    let body = json(reqwest::Client::new().get(format!("http://127.0.0.1:{}/", base + 2))).await;
    assert!(["v1", "v2"].contains(&body["reviews"]["version"].as_str().unwrap_or("")), "{body:#}");
    demo.interrupt_and_check_nothing_is_left().await;
}
