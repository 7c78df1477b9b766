//! Transparent mode as a pod runs it (issue #12): three network namespaces, a "client pod"
//! (`web`) and two "server pods" (`api`, `ratings`), dual-stack on a bridge in a private /24
//! and a private IPv6 /64, each with `trellis-agent init`'s capture rules (iptables and
//! ip6tables) and `trellis-agent run --transparent` as UID 1337; the control plane in the
//! root namespace, reached over the bridge. `api` is advertised by its IPv4 address,
//! `ratings` by its IPv6 one. The applications know nothing of the mesh: a plain HTTP server
//! on the service port, and `curl` calling the server pods' IPs, or names.
//!
//! Needs root and `ip`, `iptables`, `ip6tables`, `setpriv`, `curl` and `python3`; binds only
//! addresses of its own networks and namespaces named after its process id (run it under
//! the fixed-ports lock all the same, as scripts/test's other networked tests: it listens on
//! port 9080 of the bridge's addresses).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::grpc::platform_root;
use trellis_tests::{Api, Process, Trellis, agent_bin, token, trellis};

const PROXY_UID: &str = "1337";

/// The tools this test drives, and where they come from.
const TOOLS: [(&str, &str); 9] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
    ("ip6tables-save", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("setpriv", "util-linux"),
    ("curl", "curl"),
    ("python3", "python3"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn run(args: &[&str]) -> Output {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The pods' namespaces and the bridge between them, removed when dropped (a failing test
/// included).
struct Pods {
    client: String,
    server: String,
    ratings: String,
    bridge: String,
    /// The first three octets of the /24: `.1` the bridge, `.2` the client, `.3` the server,
    /// `.4` ratings.
    net: String,
    /// The /64's prefix, whose `::1` … `::4` are the same hosts.
    net6: String,
}

impl Pods {
    fn create() -> Pods {
        let id = std::process::id();
        let pods = Pods {
            client: format!("trellis-client-{id}"),
            server: format!("trellis-server-{id}"),
            ratings: format!("trellis-ratings-{id}"),
            bridge: format!("trlsbr{}", id % 10_000_000),
            net: format!("10.231.{}", id % 250),
            net6: format!("fd00:231:{:x}:", id % 0x10000),
        };
        run(&["ip", "link", "add", &pods.bridge, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{}.1/24", pods.net), "dev", &pods.bridge]);
        // nodad: usable at once, not after duplicate address detection.
        run(&["ip", "-6", "addr", "add", &format!("{}/64", pods.ip6(1)), "dev", &pods.bridge, "nodad"]);
        run(&["ip", "link", "set", &pods.bridge, "up"]);
        for (ns, host) in [(&pods.client, 2), (&pods.server, 3), (&pods.ratings, 4)] {
            let veth = format!("trv{}{}", host, id % 10_000_000);
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
            run(&["ip", "link", "set", &veth, "master", &pods.bridge, "up"]);
            run(&["ip", "-n", ns, "addr", "add", &format!("{}/24", pods.ip(host)), "dev", "eth0"]);
            run(&[
                "ip",
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{}/64", pods.ip6(host)),
                "dev",
                "eth0",
                "nodad",
            ]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pods
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.net)
    }

    fn ip6(&self, host: u8) -> String {
        format!("{}:{host}", self.net6)
    }

    /// A command run inside namespace `ns`.
    fn exec(ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// `iptables-save -t nat` and `ip6tables-save -t nat` in `ns`, in this order.
    async fn nat(ns: &str) -> [String; 2] {
        let mut tables = [String::new(), String::new()];
        for (table, save) in tables.iter_mut().zip(["iptables-save", "ip6tables-save"]) {
            let out = Pods::exec(ns, Path::new(save)).args(["-t", "nat"]).output().await.unwrap();
            assert!(out.status.success(), "{save} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
            *table = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        tables
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server, &self.ratings] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// `trellis-agent init` in `ns` with `args`; its output.
async fn init(ns: &str, agent: &Path, args: &[&str]) -> Output {
    let out = Pods::exec(ns, agent).arg("init").args(args).output().await.unwrap();
    assert!(out.status.success(), "init {args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// What every agent of the test shares: its binary, the control plane and its root.
struct Agents<'a> {
    bin: &'a Path,
    server: &'a str,
    ca: &'a Path,
}

impl Agents<'_> {
    /// `trellis-agent run --transparent` in `ns` as the proxy UID, its files in `dir`.
    fn run(&self, ns: &str, dir: &Path, service: &str, address: &str, extra: &[&str]) -> Process {
        let mut cmd = Pods::exec(ns, Path::new("setpriv"));
        cmd.args([&format!("--reuid={PROXY_UID}"), &format!("--regid={PROXY_UID}"), "--clear-groups"])
            .arg(self.bin)
            .args(["run", "--transparent", "--server", self.server, "--mesh", "shop", "--service", service])
            .args(["--address", address, "--telemetry-interval", "off"])
            .arg("--platform-ca")
            .arg(self.ca)
            .arg("--join-token-file")
            .arg(dir.join("token"))
            .arg("--cert-dir")
            .arg(dir.join("certs"))
            .args(extra)
            .env("TRELLIS_LOG", "info,trellis_agent=debug")
            .env_remove("TRELLIS_JOIN_TOKEN");
        Process::start(cmd)
    }
}

/// A directory the proxy UID owns.
fn owned_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let uid = PROXY_UID.parse().unwrap();
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).unwrap();
    d
}

/// `curl` inside the client pod: the status and body, or curl's complaint.
async fn curl(ns: &str, url: &str) -> Result<(u16, String), String> {
    curl_with(ns, url, &[]).await
}

/// [`curl`] with more of curl's options.
async fn curl_with(ns: &str, url: &str, options: &[&str]) -> Result<(u16, String), String> {
    let out = Pods::exec(ns, Path::new("curl"))
        .args(["-sS", "-g", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(options)
        .arg(url)
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Ok((status.parse().unwrap(), body.to_owned()))
}

/// A server pod's application: answers every GET with its name and who called it, as the
/// agent forwarded the caller (`x-forwarded-client-cert`).
const APP: &str = r#"
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (sys.argv[2] + " saw " + self.headers.get("x-forwarded-client-cert", "nobody")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), App)
print("serving", flush=True)
server.serve_forever()
"#;

/// A WebSocket client (the `websockets` package from the test peers' .venv): sends a short
/// message and a long one to the URL it is given and prints the start and length of each
/// answer.
const WEBSOCKET_CLIENT: &str = r#"
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], open_timeout=10, max_size=None) as ws:
    ws.send("hello")
    print(ws.recv(timeout=10), flush=True)
    ws.send("x" * 100000)
    answer = ws.recv(timeout=10)
    print(answer[:20], len(answer), flush=True)
"#;

/// `curl` in `ns` until it answers 200 (the agents may still be joining); the answer, or the
/// agents' output.
async fn curl_until_200(ns: &str, url: &str, options: &[&str], agents: &[&Process]) -> String {
    let mut answer = Err("not called".to_owned());
    for _ in 0..150 {
        answer = curl_with(ns, url, options).await;
        if matches!(&answer, Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match answer {
        Ok((200, body)) => body,
        other => {
            let outputs: Vec<String> = agents.iter().map(|a| a.output()).collect();
            panic!("{url} {options:?}: {other:?}\nagents:\n{}", outputs.join("\n----\n"))
        }
    }
}

/// An HTTP server outside the mesh (HTTP/1.1 and HTTP/2), in the root namespace at `addr`,
/// answering every request with `body` and the authority the request named (`<body> for
/// <authority>`), and a WebSocket endpoint at `/chat`; its address.
async fn outside(addr: &str, body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let answer = move |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
            format!("{body} for {}", uri.authority().map_or(host, |a| a.as_str()))
        };
        let router = axum::Router::new()
            .route("/chat", axum::routing::get(trellis_tests::websocket::echo))
            .fallback(answer);
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// A plaintext GET from the root namespace, bypassing every client agent.
async fn bypass(url: &str) -> Result<reqwest::Response, reqwest::Error> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    client.get(url).send().await
}

#[tokio::test]
async fn pods_call_each_other_by_ipv4_ipv6_and_host_through_both_agents_with_mtls_access_control_and_strict_refusal()
 {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(t, pkg)| format!("{t} (Debian/Ubuntu: apt install {pkg})"))
        .collect();
    assert!(missing.is_empty(), "transparent mode's test needs: {}", missing.join(", "));
    let pods = Pods::create();
    let (client_ip, server_ip, ratings_ip6) = (pods.ip(2), pods.ip(3), pods.ip6(4));

    // The control plane in the root namespace, its TLS port on the bridge.
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .env("TRELLIS_XDS_ADDR", format!("{}:0", pods.ip(1)))
        .args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    let http_9080 = json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}});
    for (path, doc) in [
        ("/meshes/shop", json!({"spec": {"mtls": {"mode": "STRICT"}, "defaultAccess": "deny"}})),
        ("/meshes/shop/services/web", json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}})),
        ("/meshes/shop/services/api", http_9080.clone()),
        ("/meshes/shop/services/ratings", http_9080),
        (
            "/meshes/shop/access-policies/api-callers",
            json!({"spec": {"targetRef": {"service": "api"}, "rules": [
                {"action": "Deny", "from": [{"service": "web"}], "to": {"paths": [{"type": "PathPrefix", "value": "/admin"}]}},
                {"action": "Allow", "from": [{"service": "web"}]},
            ]}}),
        ),
        (
            "/meshes/shop/access-policies/ratings-callers",
            json!({"spec": {"targetRef": {"service": "ratings"}, "rules": [{"action": "Allow", "from": [{"service": "web"}]}]}}),
        ),
    ] {
        let (status, body) = api.put(path, &doc).await;
        assert!(status == 200 || status == 201, "{path}: {body}");
    }

    // Files the proxy UID reads: the agent binary itself (the build directory may be closed
    // to other users), the platform root, the join tokens.
    let tmp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tmp.path().join("trellis-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, platform_root(&db.store().await).await).unwrap();
    let mut dirs = Vec::new();
    for service in ["web", "api", "ratings"] {
        let (status, body) = api.post("/meshes/shop/join-tokens", &json!({"service": service})).await;
        assert_eq!(status, 201, "{body}");
        let dir = owned_dir(tmp.path(), service);
        std::fs::write(dir.join("token"), body["token"].as_str().unwrap()).unwrap();
        dirs.push(dir);
    }

    // The init step: --dry-run prints each family's input under a line naming its binary,
    // and that is what is installed; a second run replaces it.
    let dry =
        init(&pods.client, &bin, &["--dry-run", "--exclude-outbound-cidrs", "fd00:ec2::254,169.254.169.254"])
            .await;
    let printed = String::from_utf8(dry.stdout).unwrap();
    let (v4, v6) = printed
        .strip_prefix("# IPv4: iptables-restore --noflush\n")
        .and_then(|p| p.split_once("# IPv6: ip6tables-restore --noflush\n"))
        .unwrap_or_else(|| panic!("two families, each under its own heading:\n{printed}"));
    for rules in [v4, v6] {
        assert!(rules.contains("-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"), "{printed}");
    }
    assert!(v4.contains("-A TRELLIS_OUTPUT -d 169.254.169.254/32 -j RETURN") && !v4.contains("::"), "{v4}");
    assert!(v6.contains("-A TRELLIS_OUTPUT -d ::1/128 -j RETURN"), "{v6}");
    assert!(
        v6.contains("-A TRELLIS_OUTPUT -d fd00:ec2::254/128 -j RETURN") && !v6.contains("169.254"),
        "{v6}"
    );
    assert!(
        !Pods::nat(&pods.client).await.iter().any(|t| t.contains("TRELLIS_")),
        "a dry run changes nothing"
    );
    let excluding = ["--exclude-outbound-cidrs", "fd00:ec2::254,169.254.169.254"];
    for ns in [&pods.client, &pods.server, &pods.ratings, &pods.client] {
        init(ns, &bin, &excluding).await;
    }
    let installed = Pods::nat(&pods.client).await;
    for (rules, table) in [v4, v6].into_iter().zip(&installed) {
        for line in rules.lines().filter(|l| l.starts_with("-A ")) {
            assert_eq!(table.lines().filter(|l| *l == line).count(), 1, "{line} once in:\n{table}");
        }
    }

    // The server pods' applications on their service port, on every address, as in a pod.
    let mut apps = Vec::new();
    for (ns, name) in [(&pods.server, "api"), (&pods.ratings, "ratings")] {
        let mut app = Process::start({
            let mut cmd = Pods::exec(ns, Path::new("python3"));
            cmd.args(["-c", APP, "9080", name]);
            cmd
        });
        app.wait_for_line("serving", Duration::from_secs(20)).await;
        apps.push(app);
    }

    let agents = Agents { bin: &bin, server: &t.xds, ca: &ca };
    let mut server = agents.run(&pods.server, &dirs[1], "api", &server_ip, &["--port", "9080"]);
    let mut ratings = agents.run(&pods.ratings, &dirs[2], "ratings", &ratings_ip6, &["--port", "9080"]);
    let mut client = agents.run(&pods.client, &dirs[0], "web", &client_ip, &[]);
    for p in [&mut server, &mut ratings, &mut client] {
        let line =
            p.wait_for_line("transparent mode: taking redirected connections", Duration::from_secs(30)).await;
        assert!(line.contains("[::]:15006") && line.contains("[::1]:15001"), "IPv6 is captured too: {line}");
    }
    let all = [&client, &server, &ratings];

    // The client calls the server pod's IP in plain HTTP, unaware of the mesh: both agents
    // carry it, over mTLS that tells the server who called.
    let url = format!("http://{server_ip}:9080/hello");
    let body = curl_until_200(&pods.client, &url, &[], &all).await;
    assert!(
        body.starts_with("api saw URI=spiffe://") && body.ends_with("/ns/shop/sa/web"),
        "the caller's identity arrives: {body}"
    );

    // The same over IPv6: ratings is advertised by its IPv6 address, the client calls it.
    let url6 = format!("http://[{ratings_ip6}]:9080/hello");
    let body = curl_until_200(&pods.client, &url6, &[], &all).await;
    assert!(
        body.starts_with("ratings saw URI=spiffe://") && body.ends_with("/ns/shop/sa/web"),
        "over IPv6 too: {body}"
    );

    // The server agent's access policy still decides: /admin is denied to web.
    let (status, body) = curl(&pods.client, &format!("http://{server_ip}:9080/admin/users")).await.unwrap();
    assert_eq!((status, body.trim()), (403, "RBAC: access denied"));

    // Host-based routing: HTTP on a mesh HTTP port to an address that is no service's (here a
    // server outside the mesh, on the bridge, IPv4 and IPv6) goes to the service its Host
    // names, through both agents; a Host that names no service reaches that address as sent.
    let outside4 = outside(&format!("{}:9080", pods.ip(1)), "outside the mesh").await;
    let outside6 = outside(&format!("[{}]:9080", pods.ip6(1)), "outside the mesh").await;
    for at in [outside4, outside6] {
        for (options, expected) in [
            (vec!["-H", "Host: api.shop:9080"], "api saw"),
            (vec!["-H", "Host: ratings"], "ratings saw"),
            (vec!["-H", "Host: api.default.svc.cluster.local"], "api saw"),
            (vec!["-H", "Host: example.com"], "outside the mesh"),
            (vec![], "outside the mesh"),
        ] {
            let (status, body) =
                curl_with(&pods.client, &format!("http://{at}/hello"), &options).await.unwrap();
            assert_eq!(status, 200, "{at} {options:?}: {body}");
            assert!(body.starts_with(expected), "{at} {options:?}: {body}");
            if expected != "outside the mesh" {
                assert!(body.ends_with("/ns/shop/sa/web"), "over mTLS, from web: {body}");
            }
        }
        // HTTP/2 that names no service reaches that address with the authority it named.
        let options = ["--http2-prior-knowledge", "-H", "Host: example.com"];
        let (status, body) = curl_with(&pods.client, &format!("http://{at}/hello"), &options).await.unwrap();
        assert_eq!((status, body.trim()), (200, "outside the mesh for example.com"), "{at} over HTTP/2");
    }
    // As an application that resolved `<service>.<mesh>` to such an address calls it.
    for (name, expected) in [("api.shop", "api saw"), ("ratings.shop", "ratings saw")] {
        let resolve = format!("{name}:9080:{}", pods.ip(1));
        let url = format!("http://{name}:9080/hello");
        let (status, body) = curl_with(&pods.client, &url, &["--resolve", &resolve]).await.unwrap();
        assert!(status == 200 && body.starts_with(expected), "{name}: {status} {body}");
    }

    // A WebSocket session to that address goes through too (the switch, then both ways),
    // from an application's WebSocket client in the client pod.
    for at in [outside4, outside6] {
        let mut cmd = Pods::exec(&pods.client, &trellis_tests::venv_python());
        cmd.args(["-c", WEBSOCKET_CLIENT, &format!("ws://{at}/chat")]);
        let out = cmd.output().await.unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed,
            "echo: hello\necho: xxxxxxxxxxxxxx 100006\n",
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Something outside the mesh on another port passes through as it was sent, as plain TCP.
    for host in [pods.ip(1), format!("[{}]", pods.ip6(1))] {
        let at = outside(&format!("{host}:0"), "outside the mesh, elsewhere").await;
        let (status, body) = curl(&pods.client, &format!("http://{at}/")).await.unwrap();
        assert_eq!((status, body), (200, format!("outside the mesh, elsewhere for {at}")), "{at}");
    }

    // STRICT: a plaintext caller that bypasses the client agent (here the root namespace)
    // reaches the server agent, not the application, and is refused; over IPv6 as well.
    let refusals = |p: &Process| p.output().matches("plaintext refused: the mesh requires mTLS").count();
    for (url, agent) in [(&url, &server), (&url6, &ratings)] {
        let before = refusals(agent);
        let answer = bypass(url).await;
        assert!(answer.is_err(), "a plaintext call must get no answer: {answer:?}");
        for _ in 0..100 {
            if refusals(agent) > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refusals(agent) > before, "{url}: the agent refused it:\n{}", agent.output());
    }

    // Uninstalling leaves no rule of ours behind, in either family.
    init(&pods.client, &bin, &["--uninstall"]).await;
    for table in Pods::nat(&pods.client).await {
        assert!(!table.contains("TRELLIS_"), "{table}");
    }
    let out = init(&pods.client, &bin, &["--uninstall"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("no capture rules to remove"));

    drop((client, server, ratings, apps));
    t.kill().await;
}
