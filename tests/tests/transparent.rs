//! Transparent mode as a pod runs it (issue #12): two network namespaces, a "client pod" and
//! a "server pod" on a bridge in a private /24, each with `trellis-agent init`'s capture
//! rules and `trellis-agent run --transparent` as UID 1337; the control plane in the root
//! namespace, reached over the bridge. The applications know nothing of the mesh: a plain
//! HTTP server on the service port, and `curl` calling the server pod's IP.
//!
//! Needs root and `ip`, `iptables`, `setpriv`, `curl` and `python3`; binds only addresses of
//! its own /24 and namespaces named after its process id (run it under the fixed-ports lock
//! all the same, as scripts/test's other networked tests).

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
const TOOLS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
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

/// The two pods' namespaces and the bridge between them, removed when dropped (a failing
/// test included).
struct Pods {
    client: String,
    server: String,
    bridge: String,
    /// The first three octets of the /24: `.1` the bridge, `.2` the client, `.3` the server.
    net: String,
}

impl Pods {
    fn create() -> Pods {
        let id = std::process::id();
        let pods = Pods {
            client: format!("trellis-client-{id}"),
            server: format!("trellis-server-{id}"),
            bridge: format!("trlsbr{}", id % 10_000_000),
            net: format!("10.231.{}", id % 250),
        };
        run(&["ip", "link", "add", &pods.bridge, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{}.1/24", pods.net), "dev", &pods.bridge]);
        run(&["ip", "link", "set", &pods.bridge, "up"]);
        for (ns, host) in [(&pods.client, 2), (&pods.server, 3)] {
            let veth = format!("trv{}{}", host, id % 10_000_000);
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
            run(&["ip", "link", "set", &veth, "master", &pods.bridge, "up"]);
            run(&["ip", "-n", ns, "addr", "add", &format!("{}.{host}/24", pods.net), "dev", "eth0"]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pods
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.net)
    }

    /// A command run inside namespace `ns`.
    fn exec(ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// `iptables-save -t nat` in `ns`.
    async fn nat(ns: &str) -> String {
        let out = Pods::exec(ns, Path::new("iptables-save")).args(["-t", "nat"]).output().await.unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
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
    let out = Pods::exec(ns, Path::new("curl"))
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
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

/// The server pod's application: answers every GET with who called it, as the agent
/// forwarded the caller (`x-forwarded-client-cert`).
const APP: &str = r#"
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("api saw " + self.headers.get("x-forwarded-client-cert", "nobody")).encode()
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

#[tokio::test]
async fn pods_call_each_other_by_ip_through_both_agents_with_mtls_access_control_and_strict_refusal() {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(t, pkg)| format!("{t} (Debian/Ubuntu: apt install {pkg})"))
        .collect();
    assert!(missing.is_empty(), "transparent mode's test needs: {}", missing.join(", "));
    let pods = Pods::create();
    let (client_ip, server_ip) = (pods.ip(2), pods.ip(3));

    // The control plane in the root namespace, its TLS port on the bridge.
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .env("TRELLIS_XDS_ADDR", format!("{}:0", pods.ip(1)))
        .args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Admin).await);
    for (path, doc) in [
        ("/meshes/shop", json!({"spec": {"mtls": {"mode": "STRICT"}, "defaultAccess": "deny"}})),
        ("/meshes/shop/services/web", json!({"spec": {"ports": [{"port": 8080, "protocol": "http"}]}})),
        ("/meshes/shop/services/api", json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}})),
        (
            "/meshes/shop/access-policies/api-callers",
            json!({"spec": {"targetRef": {"service": "api"}, "rules": [
                {"action": "Deny", "from": [{"service": "web"}], "to": {"paths": [{"type": "PathPrefix", "value": "/admin"}]}},
                {"action": "Allow", "from": [{"service": "web"}]},
            ]}}),
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
    for service in ["web", "api"] {
        let (status, body) = api.post("/meshes/shop/join-tokens", &json!({"service": service})).await;
        assert_eq!(status, 201, "{body}");
        let dir = owned_dir(tmp.path(), service);
        std::fs::write(dir.join("token"), body["token"].as_str().unwrap()).unwrap();
        dirs.push(dir);
    }

    // The init step: what --dry-run prints is what is installed; a second run replaces it.
    let dry = init(&pods.client, &bin, &["--dry-run"]).await;
    let printed = String::from_utf8(dry.stdout).unwrap();
    assert!(printed.contains("-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"), "{printed}");
    assert!(!Pods::nat(&pods.client).await.contains("TRELLIS_"), "a dry run changes nothing");
    for ns in [&pods.client, &pods.server, &pods.client] {
        init(ns, &bin, &[]).await;
    }
    let installed = Pods::nat(&pods.client).await;
    for line in printed.lines().filter(|l| l.starts_with("-A ")) {
        assert_eq!(installed.lines().filter(|l| *l == line).count(), 1, "{line} once in:\n{installed}");
    }

    // The server pod's application on its service port, on every address, as in a pod.
    let mut app = Process::start({
        let mut cmd = Pods::exec(&pods.server, Path::new("python3"));
        cmd.args(["-c", APP, "9080"]);
        cmd
    });
    app.wait_for_line("serving", Duration::from_secs(20)).await;

    let agents = Agents { bin: &bin, server: &t.xds, ca: &ca };
    let mut server = agents.run(&pods.server, &dirs[1], "api", &server_ip, &["--port", "9080"]);
    let mut client = agents.run(&pods.client, &dirs[0], "web", &client_ip, &[]);
    for p in [&mut server, &mut client] {
        p.wait_for_line("transparent mode: taking redirected connections", Duration::from_secs(30)).await;
    }

    // The client calls the server pod's IP in plain HTTP, unaware of the mesh: both agents
    // carry it, over mTLS that tells the server who called.
    let url = format!("http://{server_ip}:9080/hello");
    let mut answer = Err("not called".to_owned());
    for _ in 0..150 {
        answer = curl(&pods.client, &url).await;
        if matches!(&answer, Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = answer.unwrap_or_else(|e| {
        panic!("{e}\nclient agent:\n{}\nserver agent:\n{}", client.output(), server.output())
    });
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("api saw URI=spiffe://") && body.ends_with("/ns/shop/sa/web"),
        "the caller's identity arrives: {body}"
    );

    // The server agent's access policy still decides: /admin is denied to web.
    let (status, body) = curl(&pods.client, &format!("http://{server_ip}:9080/admin/users")).await.unwrap();
    assert_eq!((status, body.trim()), (403, "RBAC: access denied"));

    // Something outside the mesh passes through as it was sent: an HTTP server in the root
    // namespace, on the bridge.
    let outside = tokio::net::TcpListener::bind(format!("{}:0", pods.ip(1))).await.unwrap();
    let outside_addr = outside.local_addr().unwrap();
    tokio::spawn(async move {
        let router = axum::Router::new().fallback(|| async { "outside the mesh" });
        axum::serve(outside, router).await.unwrap();
    });
    let (status, body) = curl(&pods.client, &format!("http://{outside_addr}/")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "outside the mesh"));

    // STRICT: a plaintext caller that bypasses the client agent (here the root namespace)
    // reaches the server agent, not the application, and is refused.
    let refusals = |p: &Process| p.output().matches("plaintext refused: the mesh requires mTLS").count();
    let before = refusals(&server);
    let bypass = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await;
    assert!(bypass.is_err(), "a plaintext call must get no answer: {bypass:?}");
    for _ in 0..100 {
        if refusals(&server) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refusals(&server) > before, "the server agent refused it:\n{}", server.output());

    // Uninstalling leaves no rule of ours behind.
    init(&pods.client, &bin, &["--uninstall"]).await;
    let after = Pods::nat(&pods.client).await;
    assert!(!after.contains("TRELLIS_"), "{after}");
    let out = init(&pods.client, &bin, &["--uninstall"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("no capture rules to remove"));

    drop((client, server, app));
    t.kill().await;
}
