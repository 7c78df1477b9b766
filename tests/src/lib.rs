//! Black-box test support: start the real `trellis` binary and talk to it as users do.

#![forbid(unsafe_code)]

pub mod browser;
pub mod console;
pub mod grpc;
pub mod oidc;
pub mod synthetic;
pub mod tenant_root;
pub mod websocket;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Installs the one crypto provider (ring) for this test process.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The `trellis` binary built beside this test executable, or the one `TRELLIS_BIN` names
/// (benchmarks use it to compare builds).
pub fn trellis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TRELLIS_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/trellis
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("trellis");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --bin trellis` (scripts/test does)",
        bin.display()
    );
    bin
}

/// The Python of the test peers' virtual environment (scripts/test creates it and installs
/// tests/requirements.txt into it).
pub fn venv_python() -> PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: scripts/test creates it and installs tests/requirements.txt",
        python.display()
    );
    python
}

/// The `trellis-agent` binary the tests run: the one built beside this test executable, or,
/// for a benchmark (built into the `release` directory), the `agent` profile's build, which
/// is the agent as it ships.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let (dir, build) = if profile_dir.ends_with("release") {
        (profile_dir.with_file_name("agent"), "`cargo build --profile agent -p trellis-agent`")
    } else {
        (profile_dir.to_owned(), "`cargo build --bin trellis-agent` (scripts/test does)")
    };
    let bin = dir.join("trellis-agent");
    assert!(bin.is_file(), "{} is missing: build it first with {build}", bin.display());
    bin
}

/// The YAML of the route `reviews` in mesh `shop`, setting `x-route-version: <version>`;
/// `mirrored` adds what the agents refuse (request mirroring), so that they NACK it.
pub fn reviews_route_yaml(version: &str, mirrored: bool) -> String {
    let mirror = if mirrored { "\n      mirror: {service: reviews, percent: 100}" } else { "" };
    format!(
        "kind: HTTPRoute\nmetadata: {{name: reviews, mesh: shop}}\nspec:\n  targetRef: {{service: reviews}}\n  \
         rules:\n    - backendRefs: [{{service: reviews}}]\n      \
         requestHeaderModifier: {{set: [{{name: x-route-version, value: {version}}}]}}{mirror}\n"
    )
}

/// An application on 127.0.0.1 that answers every request with 200 `ok`; its port.
pub async fn ok_app() -> u16 {
    let router = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// `trellis-agent run` for `service` in `mesh` on `address`, joining with `token` (written
/// to a file in `dir`, its certificates under `dir/certs`), logging at info: the agent every
/// test and bench starts, to which each adds its own flags.
pub fn agent_command(
    server: &str,
    ca: &std::path::Path,
    dir: &std::path::Path,
    token: &str,
    mesh: &str,
    service: &str,
    address: &str,
) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .args(["--server", server, "--mesh", mesh, "--service", service, "--address", address])
        .arg("--platform-ca")
        .arg(ca)
        .arg("--join-token-file")
        .arg(&token_file)
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .env("TRELLIS_LOG", "info")
        .env_remove("TRELLIS_JOIN_TOKEN");
    cmd
}

/// An agent of `service` in mesh `shop` on `address` ([`agent_command`]), calling nothing,
/// logging no sampled successes and reporting telemetry every second: the observe tests'
/// agent.
pub fn telemetry_agent(
    server: &str,
    ca: &std::path::Path,
    dir: &std::path::Path,
    token: &str,
    service: &str,
    address: &str,
    extra: &[&str],
) -> Process {
    let mut cmd = agent_command(server, ca, dir, token, "shop", service, address);
    cmd.args(["--outbound", "none", "--access-log-sample", "0", "--telemetry-interval", "1s"]).args(extra);
    Process::start(cmd)
}

/// A running process whose output lines are kept (stdout and stderr together), killed
/// when dropped.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `cmd` with its output captured.
    pub fn start(mut cmd: Command) -> Process {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        let err = BufReader::new(child.stderr.take().unwrap()).lines();
        for mut reader in [Box::new(out) as Box<dyn LineSource>, Box::new(err)] {
            let lines = lines.clone();
            tokio::spawn(async move {
                while let Some(line) = reader.next().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Process { child, lines }
    }

    /// The first output line containing `needle`, waiting up to `within`.
    pub async fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("no line with {needle:?} (exit: {exited:?}); output:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the exit, at most `within`.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait()).await.expect("exits in time").unwrap()
    }

    /// Kills the process without a chance to clean up.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub async fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid).status().await.unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

trait LineSource: Send {
    fn next(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>>;
}

impl<R: tokio::io::AsyncBufRead + Unpin + Send> LineSource for tokio::io::Lines<R> {
    fn next(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.next_line().await.ok().flatten() })
    }
}

/// A command that runs `trellis` with a clean environment: no inherited TRELLIS_* or
/// DATABASE_URL, logs at info.
pub fn trellis() -> Command {
    let mut cmd = Command::new(trellis_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("TRELLIS_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    // Every test process of one database must unseal the same CA keys; the TLS port is
    // picked by the system so that tests run in parallel.
    cmd.env("TRELLIS_LOG", "info")
        .env("TRELLIS_KEK", TEST_KEK)
        .env("TRELLIS_XDS_ADDR", "127.0.0.1:0")
        .kill_on_drop(true);
    cmd
}

/// The key-encryption key of test runs (32 bytes of 0x2a): not a secret of anything real.
pub const TEST_KEK: &str = "test:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A running `trellis serve`, killed when dropped.
pub struct Trellis {
    child: Child,
    /// `http://host:port` it announced.
    pub base: String,
    /// `host:port` of its TLS port (xDS and identity), as announced.
    pub xds: String,
    pub http: reqwest::Client,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Trellis {
    /// Starts `cmd` (which must serve on some address) and waits until it prints where it
    /// listens.
    pub async fn start(mut cmd: Command) -> Trellis {
        init();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn trellis");
        let stdout: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (xtx, mut xrx) = tokio::sync::mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let so = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
                if let Some(rest) = line.split("(gRPC over TLS): ").nth(1) {
                    let _ = xtx.send(rest.trim().to_owned());
                }
                so.lock().unwrap().push(line);
            }
        });
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let se = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                se.lock().unwrap().push(line);
            }
        });
        let base = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(b)) => b,
            _ => {
                let status = child.try_wait().ok().flatten();
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "trellis did not announce its address (exit: {status:?})\nstdout:\n{}\nstderr:\n{}",
                    stdout.lock().unwrap().join("\n"),
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        let xds =
            tokio::time::timeout(Duration::from_secs(5), xrx.recv()).await.ok().flatten().unwrap_or_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Trellis { child, base, xds, http, stdout, stderr }
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.expect("request to trellis")
    }

    /// The value of an unlabelled metric, if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = self.get("/metrics").await.text().await.ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Everything printed so far.
    pub fn output(&self) -> (String, String) {
        (self.stdout.lock().unwrap().join("\n"), self.stderr.lock().unwrap().join("\n"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub async fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().await.unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    pub async fn stop(mut self, within: Duration) -> ExitStatus {
        self.signal("TERM").await;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!("trellis did not stop within {within:?} after SIGTERM"),
        }
    }

    /// Kills the process without a chance to clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Creates the organization `slug` if needed and a token of `role` for it, directly in
/// the store (as an operator's `trellis create-token` would).
pub async fn token(db: &trellis_store::testing::TestDb, slug: &str, role: trellis_model::Role) -> String {
    use rand::RngCore;
    use trellis_model::{OrgSlug, SECRET_LEN, Token, TokenKind};
    let store = db.store().await;
    let slug = OrgSlug::parse(slug).unwrap();
    let org = match store.org_by_slug(&slug).await.unwrap() {
        Some(o) => o,
        None => store.create_org(&slug, slug.as_str()).await.unwrap(),
    };
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = Token::new(TokenKind::Pat, org.id, secret).to_string();
    let mut tx = store.tenant(org.id).await.unwrap();
    tx.create_token("test", role, &trellis_api::auth::token_hash(&token), "test", None).await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;
    token
}

/// `trellis serve` on `db` (with `env` on top of the test environment), organization
/// `acme` holding the example mesh `shop` (examples/reviews.yaml), an admin client of it,
/// and the platform root that the TLS port's certificate chains to.
pub async fn serve_example_mesh(
    db: &trellis_store::testing::TestDb,
    env: &[(&str, &str)],
) -> (Trellis, Api, trellis_store::Store, String) {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(db, "acme", trellis_model::Role::Admin).await);
    for doc in example_documents() {
        let (status, body) = api.put(&document_path(&doc), &doc).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let store = db.store().await;
    let root = grpc::platform_root(&store).await;
    (t, api, store, root)
}

/// A REST client for one organization with one token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub org: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    /// A client of `t` as organization `org` with `token`.
    pub fn new(t: &Trellis, org: &str, token: &str) -> Api {
        Api { base: t.base.clone(), org: org.into(), token: token.into(), http: t.http.clone() }
    }

    /// The URL of a path under `/api/v1/orgs/{org}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1/orgs/{}{path}", self.base, self.org)
    }

    /// A request with the token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    /// GET, returning status and JSON body (Null when empty).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }

    /// PUT a JSON body.
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        send(self.req(reqwest::Method::PUT, path).json(body)).await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        send(self.req(reqwest::Method::POST, path).json(body)).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        send(self.req(reqwest::Method::DELETE, path)).await
    }
}

/// Sends and decodes; a non-JSON error body fails the test (every error is problem+json).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = res.text().await.unwrap();
    if text.is_empty() {
        return (status, serde_json::Value::Null);
    }
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "error {status} without a problem document: {text}");
    }
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The documents of `examples/reviews.yaml`, in order.
pub fn example_documents() -> Vec<serde_json::Value> {
    let text = include_str!("../../examples/reviews.yaml");
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
        .collect()
}

/// The REST path of a document: `/meshes/{mesh}` or `/meshes/{mesh}/{kind}/{name}`.
pub fn document_path(doc: &serde_json::Value) -> String {
    let name = doc["metadata"]["name"].as_str().unwrap();
    match doc["kind"].as_str().unwrap() {
        "Mesh" => format!("/meshes/{name}"),
        kind => {
            let k = trellis_model::config::Kind::lookup(kind).unwrap();
            format!("/meshes/{}/{}/{name}", doc["metadata"]["mesh"].as_str().unwrap(), k.plural())
        }
    }
}

/// `pg_dump --data-only` of a test database, as text: what a stolen backup would show.
pub async fn pg_dump(db: &trellis_store::testing::TestDb) -> String {
    let admin = trellis_store::testing::admin_url();
    let server = admin.rsplit_once('/').map(|(s, _)| s).unwrap_or(&admin);
    let out = Command::new("pg_dump")
        .args(["--data-only", "--dbname", &format!("{server}/{}", db.name)])
        .output()
        .await
        .expect("pg_dump runs (Debian/Ubuntu: apt install postgresql-client)");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the dump is UTF-8")
}

/// Fails when any of `secrets` (or its last 20 characters) appears in `dump`.
pub fn assert_no_secret_in(dump: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!dump.contains(secret.as_str()), "the dump contains a secret in clear: {secret}");
        let tail = &secret[secret.len().saturating_sub(20)..];
        assert!(!dump.contains(tail), "the dump contains the tail of a secret: {tail}");
    }
}

/// A TCP relay in front of PostgreSQL that a test can take down and bring back, as a database
/// restart would: down, it cuts every relayed connection and refuses new ones (nothing
/// listens); up, it listens again on the same address.
pub struct DbRelay {
    /// `host:port` to connect to instead of the database.
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DbRelay {
    /// Relays to `target` (`host:port`).
    pub async fn start(target: String) -> DbRelay {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = first.local_addr().unwrap();
        let (up, mut watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(first);
            let for_connections = watch.clone();
            loop {
                let current = match listener.take() {
                    Some(l) => l,
                    None => {
                        tokio::net::TcpListener::bind(addr).await.expect("the relay's address is free again")
                    }
                };
                loop {
                    tokio::select! {
                        accepted = current.accept() => {
                            let Ok((mut inbound, _)) = accepted else { break };
                            let target = target.clone();
                            let mut down = for_connections.clone();
                            tokio::spawn(async move {
                                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                    _ = down.wait_for(|up| !*up) => {}
                                }
                            });
                        }
                        _ = watch.wait_for(|up| !*up) => break,
                    }
                }
                drop(current);
                if watch.wait_for(|up| *up).await.is_err() {
                    return;
                }
            }
        });
        DbRelay { addr, up, task }
    }

    /// Cuts every connection and refuses new ones until [`DbRelay::up`].
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    /// Relays again.
    pub fn up(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for DbRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
