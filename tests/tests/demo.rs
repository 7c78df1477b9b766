//! `trellis demo` as a newcomer runs it: one command, a working mesh, Ctrl-C leaves nothing.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::trellis;

/// Demo workloads (node ids) and the loopback addresses of their inbound listeners.
const WORKLOADS: [(&str, [u8; 4]); 5] = [
    ("productpage", [127, 0, 0, 2]),
    ("reviews-v1", [127, 0, 0, 3]),
    ("reviews-v2", [127, 0, 0, 4]),
    ("ratings", [127, 0, 0, 5]),
    ("details", [127, 0, 0, 6]),
];
const SERVICE_PORT: u16 = 9080;

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

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …: the command may hold spaces, the fields after `)` do not.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

async fn json(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stops the demo as a person does (SIGINT), also when the test fails half-way: killed, it
/// could not stop its children, which would outlive the test.
struct Interrupt(u32);

impl Drop for Interrupt {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-INT").arg(self.0.to_string()).status();
        for _ in 0..300 {
            if !alive(self.0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn the_demo_runs_the_shop_mesh_and_ctrl_c_stops_everything_it_started() {
    trellis_tests::init();
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    // One run of free ports: the REST port, the TLS port, then the applications' and their
    // agents' HTTP proxies.
    let base = free_ports(2 + 2 * WORKLOADS.len() as u16);
    let http = SocketAddr::from(([127, 0, 0, 1], base));
    let xds = SocketAddr::from(([127, 0, 0, 1], base + 1));
    let app_port = base + 2;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .args(["demo", "--http-addr", &http.to_string(), "--xds-addr", &xds.to_string()])
        // A slow generator: one call in ten of its goes on the beta channel (always v2), which
        // would blur the 75/25 split of the test's own calls in the topology.
        .args(["--app-port", &app_port.to_string(), "--rate", "2"])
        .arg("--work-dir")
        .arg(work.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started_at = std::time::Instant::now();
    let mut demo = cmd.spawn().expect("starting trellis demo");
    let pid = demo.id().unwrap();
    let _stop = Interrupt(pid);
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    for pipe in [
        Box::new(demo.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(demo.stderr.take().unwrap()),
    ] {
        let (output, ready_tx) = (output.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The ready block ends with how to stop the demo.
                if line.contains("press Ctrl-C") || line.starts_with("last 10s:") {
                    let _ = ready_tx.send(line.clone());
                }
                output.lock().unwrap().push(line);
            }
        });
    }
    let said = |output: &Arc<Mutex<Vec<String>>>| output.lock().unwrap().join("\n");
    let ready = tokio::time::timeout(Duration::from_secs(180), ready_rx.recv()).await;
    assert!(
        matches!(&ready, Ok(Some(l)) if l.contains("press Ctrl-C")),
        "the demo never said it was ready:\n{}",
        said(&output)
    );
    let text = said(&output);
    assert!(text.contains("The demo is ready"), "{text}");
    assert!(text.contains("/auth/local"), "no one-time login link:\n{text}");

    // Every demo dataplane is connected and has acknowledged its configuration.
    let token = trellis_tests::token(&db, "default", Role::Viewer).await;
    let client = reqwest::Client::new();
    let list = json(
        client.get(format!("http://{http}/api/v1/orgs/default/meshes/shop/dataplanes")).bearer_auth(&token),
    )
    .await;
    for (node, _) in WORKLOADS {
        let dp = list["items"].as_array().unwrap().iter().find(|d| d["nodeId"] == node);
        let dp = dp.unwrap_or_else(|| panic!("no dataplane {node}: {list:#}"));
        assert_eq!(dp["online"], true, "{dp:#}");
        assert_eq!(dp["state"], "in-sync", "{dp:#}");
    }

    // productpage -> reviews through the agents: about 75/25, beta always v2, details denied.
    // Paced at 40 calls/s: with the generator's 2/s that stays within the local rate limit
    // examples/reviews.yaml puts on reviews (100/s), past which the agent answers 429.
    const CALLS: u32 = 800;
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
    for _ in 0..20 {
        pace.tick().await;
        let body = json(client.get(format!("{page}/")).header("x-beta", "true")).await;
        assert_eq!(body["reviews"]["version"], "v2", "{body:#}");
        assert_eq!(body["reviews"]["ratings"]["service"], "ratings", "{body:#}");
    }
    let res = client.get(format!("{page}/details")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert!(body["details"]["error"].as_str().unwrap().contains("403"), "{body:#}");

    // The agents report golden metrics: the mesh's topology shows the calls between services.
    let requests = |topology: &Value, source: &str, destination: &str| {
        topology["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["source"] == source && e["destination"] == destination)
            .and_then(|e| e["metrics"]["requests"].as_f64())
            .unwrap_or(0.0)
    };
    let mut topology = Value::Null;
    for _ in 0..60 {
        topology = json(client.get(&topology_url).bearer_auth(&token)).await;
        if requests(&topology, "productpage", "reviews") > 0.0
            && requests(&topology, "reviews", "ratings") > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(requests(&topology, "productpage", "reviews") > 0.0, "{topology:#}");
    assert!(requests(&topology, "reviews", "ratings") > 0.0, "{topology:#}");

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

    // The traffic generator reports what the mesh did.
    let report = tokio::time::timeout(Duration::from_secs(15), ready_rx.recv()).await;
    assert!(
        matches!(&report, Ok(Some(l)) if l.contains("reviews v1")),
        "no traffic report:\n{}",
        said(&output)
    );

    // Ctrl-C: every process it started stops, and nothing it listened on stays open.
    let started = children_of(pid);
    assert!(started.len() > 2 * WORKLOADS.len(), "children {started:?}");
    let ok = tokio::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status().await.unwrap();
    assert!(ok.success());
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait()).await;
    let status = status.unwrap_or_else(|_| panic!("the demo did not stop:\n{}", said(&output))).unwrap();
    assert!(status.success(), "{status}:\n{}", said(&output));
    let left: Vec<u32> = started.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    let mut addrs = vec![http, xds];
    addrs.extend((0..WORKLOADS.len() as u16).map(|i| SocketAddr::from(([127, 0, 0, 1], app_port + i))));
    addrs.extend(WORKLOADS.iter().map(|(_, ip)| SocketAddr::from((*ip, SERVICE_PORT))));
    let open: Vec<SocketAddr> = addrs.into_iter().filter(|a| listening(*a)).collect();
    assert!(open.is_empty(), "still listening: {open:?}");
}
