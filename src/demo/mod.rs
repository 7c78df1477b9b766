//! `trellis demo`: a working mesh on this machine in one command.
//!
//! It runs the control plane (`trellis serve`, on the embedded default unless configured),
//! creates the `shop` mesh of examples/reviews.yaml in the local admin's organization, and
//! starts the book shop's applications ([`apps`]), each behind a `trellis-agent` of its own
//! with its own SVID. A traffic generator calls `productpage` steadily, a tenth of the time on
//! the beta channel and now and then on a path no policy allows, and prints what the mesh did
//! with the calls. Every process it starts is its child; Ctrl-C (or SIGTERM) stops them all.
//!
//! Every workload runs on this host, so each agent gets a loopback address of its own
//! (127.0.0.2, …) for its inbound listener and admin port, its application a port of its own
//! on 127.0.0.1, and the application reaches other services through its agent's HTTP proxy
//! (explicit mode: no name resolution, no outbound listeners that agents would share). The
//! demo prints each process it starts with its pid and the addresses it listens on
//! ([`Addresses`]), which is also how a test checks that Ctrl-C left nothing behind.

pub mod apps;
mod processes;
mod traffic;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::cli::Client;
use crate::config::{Demo, DemoRole, Global};
use processes::Processes;

/// The mesh the demo builds: examples/reviews.yaml, and the two services it adds.
const MESH: &str = "shop";
const REVIEWS_YAML: &str = include_str!("../../examples/reviews.yaml");
const DEMO_YAML: &str = include_str!("demo.yaml");
/// Every demo service serves HTTP on this port (each at its own agent's address).
const SERVICE_PORT: u16 = 9080;

/// One demo workload: an application and its agent.
struct Workload {
    /// Process names, e.g. `reviews-v2`.
    name: &'static str,
    service: &'static str,
    version: &'static str,
    role: DemoRole,
    /// The services its application calls (through its agent's HTTP proxy).
    calls: &'static [&'static str],
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "productpage",
        service: "productpage",
        version: "v1",
        role: DemoRole::Productpage,
        calls: &["reviews", "details"],
    },
    Workload { name: "reviews-v1", service: "reviews", version: "v1", role: DemoRole::Reviews, calls: &[] },
    Workload {
        name: "reviews-v2",
        service: "reviews",
        version: "v2",
        role: DemoRole::Reviews,
        calls: &["ratings"],
    },
    Workload { name: "ratings", service: "ratings", version: "v1", role: DemoRole::Ratings, calls: &[] },
    Workload { name: "details", service: "details", version: "v1", role: DemoRole::Details, calls: &[] },
];

/// Where the processes of workload `index` listen: every address of the demo's workloads
/// comes from here, and the demo prints them as it starts each process.
struct Addresses {
    /// The application, on 127.0.0.1 from `--app-port` on.
    app: SocketAddr,
    /// Its agent's inbound listener: the agent's own loopback address, 127.0.0.2 onwards.
    inbound: SocketAddr,
    /// The agent's admin port, on the same address.
    admin: SocketAddr,
    /// The agent's HTTP proxy, which the application calls other services through: on
    /// 127.0.0.1, after the applications' ports.
    proxy: SocketAddr,
}

/// The agent's admin port (`trellis-agent run`'s default, given explicitly here).
const ADMIN_PORT: u16 = 15000;

impl Addresses {
    fn of(index: usize, app_port: u16) -> Self {
        let address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + index as u8));
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Addresses {
            app: local(app_port + index as u16),
            inbound: SocketAddr::new(address, SERVICE_PORT),
            admin: SocketAddr::new(address, ADMIN_PORT),
            proxy: local(app_port + (WORKLOADS.len() + index) as u16),
        }
    }
}

pub async fn run(args: Demo, global: &Global) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the trellis binary")?;
    let agent = agent_binary(&exe, args.agent.as_deref())?;
    let work = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("trellis-demo"));
    prepare_dir(&work)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;

    let mut procs = Processes::new(logs.clone());
    let outcome = tokio::select! {
        r = build_and_run(&args, global, &exe, &agent, &work, &mut procs) => r,
        () = crate::serve::shutdown_signal() => Ok(()),
    };
    let stopped = procs.stop_all(Duration::from_secs(10)).await;
    println!("\nstopped {stopped} demo processes; their logs are in {}", logs.display());
    outcome
}

async fn build_and_run(
    args: &Demo,
    global: &Global,
    exe: &Path,
    agent: &Path,
    work: &Path,
    procs: &mut Processes,
) -> anyhow::Result<()> {
    let api_url = format!("http://{}", args.http_addr);
    println!("starting the control plane on {api_url} (log: {})", procs.log_of("trellis").display());
    let mut serve = tokio::process::Command::new(exe);
    serve
        .arg("serve")
        .args(["--http-addr", &args.http_addr.to_string(), "--xds-addr", &args.xds_addr.to_string()])
        .env("TRELLIS_LOCAL_ORG", args.org.as_str())
        .envs(global.child_env());
    procs.spawn("trellis", serve, &[args.http_addr, args.xds_addr])?;
    wait_ready(&api_url, procs).await?;

    let token = create_token(exe, global, args.org.as_str()).await?;
    // The local admin's organization: `args.org` unless that slug was taken before it.
    let client = Client::new(api_url.clone(), token.clone(), String::new())?;
    let orgs = client.call_json(reqwest::Method::GET, "/api/v1/orgs", &serde_json::Value::Null).await?;
    let org = orgs["items"][0]["slug"].as_str().context("the demo token's organization")?.to_owned();
    let client = Client::new(api_url.clone(), token, org.clone())?;
    let documents = [REVIEWS_YAML, DEMO_YAML]
        .iter()
        .map(|text| crate::cli::parse_documents("demo", text))
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    crate::cli::apply_documents(&client, &documents, None, None, |line| println!("  {line}")).await?;

    let mesh_path = format!("/meshes/{MESH}");
    let platform_ca = work.join("platform-ca.pem");
    let ca = client.get_text(&client.org_path(&format!("{mesh_path}/bootstrap/ca.pem"))).await?;
    std::fs::write(&platform_ca, ca)?;

    for (i, w) in WORKLOADS.iter().enumerate() {
        let addrs = Addresses::of(i, args.app_port);
        let dir = work.join(w.name);
        std::fs::create_dir_all(&dir)?;
        let join = client
            .call_json(
                reqwest::Method::POST,
                &client.org_path(&format!("{mesh_path}/join-tokens")),
                &json!({ "service": w.service, "tags": { "version": w.version } }),
            )
            .await?;
        let token_file = dir.join("join-token");
        write_private(&token_file, join["token"].as_str().ok_or_else(|| anyhow!("no join token returned"))?)?;

        let mut app = tokio::process::Command::new(exe);
        app.arg("demo-app").arg(w.role.name()).args([
            "--listen",
            &addrs.app.to_string(),
            "--version",
            w.version,
        ]);
        for upstream in w.calls {
            app.arg(format!("--{upstream}")).arg(format!("http://{upstream}.{MESH}:{SERVICE_PORT}"));
        }
        app.args(["--proxy", &format!("http://{}", addrs.proxy)]);
        procs.spawn(w.name, app, &[addrs.app])?;

        let mut sidecar = tokio::process::Command::new(agent);
        sidecar
            .arg("run")
            .args(["--server", &args.xds_addr.to_string()])
            .arg("--platform-ca")
            .arg(&platform_ca)
            .arg("--join-token-file")
            .arg(&token_file)
            .arg("--cert-dir")
            .arg(dir.join("certs"))
            .args(["--mesh", MESH, "--service", w.service])
            .args(["--port", &SERVICE_PORT.to_string()])
            .args(["--app-port", &format!("{SERVICE_PORT}={}", addrs.app.port())])
            .args(["--tags", &format!("version={}", w.version)])
            .args(["--address", &addrs.inbound.ip().to_string()])
            .args(["--admin-addr", &addrs.admin.to_string()])
            .args(["--node-id", w.name])
            .args(["--outbound", "none", "--http-proxy-addr", &addrs.proxy.to_string()])
            // Reported often, so that the topology fills within seconds of the start.
            .args(["--telemetry-interval", "5s"]);
        procs.spawn(&format!("{}-agent", w.name), sidecar, &[addrs.inbound, addrs.admin, addrs.proxy])?;
    }

    let productpage = SocketAddr::from(([127, 0, 0, 1], args.app_port));
    wait_in_sync(&client, procs).await?;
    // In sync is not yet serving: a caller can be one push away from the endpoints of the
    // last agents to join. Ready is when a beta call crosses the mesh end to end, and every
    // dataplane is in sync after it.
    wait_served(productpage, procs).await?;
    wait_in_sync(&client, procs).await?;
    println!("all {} dataplanes are connected and in sync", WORKLOADS.len());
    let login = procs.login_link("trellis");
    print_ready(&api_url, &org, login.as_deref(), productpage);
    traffic::generate(productpage, args.rate, procs).await
}

/// The `trellis-agent` binary: given, or beside this one (as `cargo build` puts them).
fn agent_binary(exe: &Path, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = given.map(Path::to_path_buf).unwrap_or_else(|| exe.with_file_name("trellis-agent"));
    if !path.is_file() {
        bail!("no trellis-agent at {}: build it (`cargo build --bins`) or pass --agent PATH", path.display());
    }
    Ok(path)
}

/// A fresh working directory: what a previous run left is removed first.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("clearing {}", dir.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Waits for the control plane's readiness, or its early exit.
async fn wait_ready(api_url: &str, procs: &mut Processes) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    // The embedded default may have to create a database (or a private PostgreSQL) first.
    for _ in 0..600 {
        procs.check_running()?;
        if let Ok(res) = http.get(format!("{api_url}/readyz")).send().await
            && res.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the control plane was not ready within 2 minutes; see {}", procs.log_of("trellis").display())
}

/// An owner token of the local admin's organization, from `trellis create-token` (same
/// database), so that the console's one-time link signs in to the demo's mesh.
async fn create_token(exe: &Path, global: &Global, org: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(exe)
        .args(["create-token", "--local-admin", "--local-org", org, "--name", "demo"])
        .envs(global.child_env())
        .output()
        .await?;
    if !out.status.success() {
        bail!("trellis create-token failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Waits until every demo dataplane is connected and has acknowledged its configuration.
async fn wait_in_sync(client: &Client, procs: &mut Processes) -> anyhow::Result<()> {
    let path = client.org_path(&format!("/meshes/{MESH}/dataplanes"));
    let mut last = String::new();
    for _ in 0..300 {
        procs.check_running()?;
        let list = client.call_json(reqwest::Method::GET, &path, &Value::Null).await?;
        let online: Vec<&Value> =
            list["items"].as_array().into_iter().flatten().filter(|d| d["online"] == true).collect();
        let state = |node: &str| online.iter().find(|d| d["nodeId"] == node).map(|d| describe_state(d));
        if WORKLOADS.iter().all(|w| state(w.name).as_deref() == Some("in-sync")) {
            return Ok(());
        }
        last = WORKLOADS
            .iter()
            .map(|w| format!("{}: {}", w.name, state(w.name).unwrap_or_else(|| "not connected".into())))
            .collect::<Vec<_>>()
            .join("; ");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the dataplanes did not all come in sync within a minute (last seen: {last}); see the logs")
}

/// Waits until productpage answers a beta call (productpage → reviews v2 → ratings over
/// gRPC) and a regular one.
async fn wait_served(productpage: SocketAddr, procs: &mut Processes) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut last = String::new();
    for _ in 0..150 {
        procs.check_running()?;
        let mut served = true;
        for beta in [true, false] {
            let request = http.get(format!("http://{productpage}/"));
            let request = if beta { request.header("x-beta", "true") } else { request };
            match request.send().await {
                Ok(res) if res.status().is_success() => {}
                Ok(res) => {
                    served = false;
                    last = format!("{}: {}", res.status(), res.text().await.unwrap_or_default());
                }
                Err(e) => {
                    served = false;
                    last = e.to_string();
                }
            }
        }
        if served {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("productpage was not served through the mesh within 30 s (last answer: {last}); see the logs")
}

/// A dataplane's state, with the reasons it gave for any configuration it rejected.
fn describe_state(dataplane: &Value) -> String {
    let state = dataplane["state"].as_str().unwrap_or("unknown");
    let reasons: Vec<&str> = dataplane["sync"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["nack"]["error"].as_str())
        .collect();
    if reasons.is_empty() { state.to_owned() } else { format!("{state} ({})", reasons.join("; ")) }
}

fn print_ready(api_url: &str, org: &str, login: Option<&str>, productpage: SocketAddr) {
    println!("\nThe demo is ready.");
    match login {
        Some(link) => println!("  console: {api_url}/  (log in once with {link})"),
        None => println!("  console: {api_url}/"),
    }
    println!("  productpage: curl http://{productpage}/   (add -H 'x-beta: true' for the beta channel)");
    println!("  what to look at:");
    println!("    - the topology, live: {api_url}/orgs/{org}/meshes/{MESH}/topology");
    println!(
        "    - reviews: 75 % of calls go to v1, 25 % to v2 (examples/reviews.yaml), beta testers always to v2"
    );
    println!("    - every call between services is mutual TLS, each workload with its own SVID");
    println!("    - reviews v2 -> ratings is gRPC (HTTP/2), through the same agents");
    println!(
        "    - productpage -> details is denied: no access policy allows it (the mesh denies by default)"
    );
    println!("    - dataplanes and their sync state: {api_url}/orgs/{org}/meshes/{MESH}/dataplanes");
    println!("  press Ctrl-C to stop every process the demo started\n");
}
