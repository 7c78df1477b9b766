//! `trellis install kubernetes`, `trellis install systemd` and `trellis inject`, run as the
//! real binary: the manifests validate against Kubernetes' own schemas (PyPI
//! kubernetes-validate, installed into .venv by scripts/test), the unit passes `systemd-analyze
//! verify`, and all keep the security properties an operator relies on. The injected manifests
//! are golden files (tests/golden/inject; `UPDATE_EXPECT=1` rewrites them).

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use trellis_store::testing::TestDb;
use trellis_tests::{TEST_KEK, Trellis, trellis};

/// Kubernetes versions the manifests must validate against: the oldest we support and a current one.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.33.0"];

async fn run(args: &[&str]) -> (bool, String, String) {
    let out = trellis().args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `trellis` with `stdin` as its standard input.
async fn run_with_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = trellis()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A refusal may come before `trellis` has read all of its input; the pipe is then closed.
    match input.write_all(stdin.as_bytes()).await {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn install(args: &[&str]) -> String {
    let (ok, out, err) = run(args).await;
    assert!(ok, "trellis {args:?} failed: {err}");
    out
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::with::singleton_map_recursive::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind.next().unwrap_or_else(|| panic!("no {kind} in the manifests"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

/// A fresh directory for files the tools read.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trellis-install-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kubernetes_validate() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kubernetes-validate");
    assert!(
        venv.is_file(),
        "kubernetes-validate is missing: run scripts/test, which installs it into .venv from tests/requirements.txt \
         (PyPI kubernetes-validate)"
    );
    venv
}

/// Validates every document strictly (unknown fields are errors) against each version's schemas.
async fn assert_valid(yaml: &str, name: &str) {
    let dir = temp_dir(name);
    let file = dir.join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    for version in KUBERNETES_VERSIONS {
        let out = tokio::process::Command::new(kubernetes_validate())
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "Kubernetes {version} rejects the manifests:\n{stdout}{}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One line per document: none was skipped for a kind the schemas lack.
        assert_eq!(stdout.matches("passed for resource").count(), documents(yaml).len(), "{stdout}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// What `trellis` reads from the environment: its --help lists each variable.
async fn trellis_help() -> String {
    let mut help = install(&["--help"]).await;
    for sub in ["migrate", "serve"] {
        help.push_str(&install(&[sub, "--help"]).await);
    }
    help
}

/// Every `TRELLIS_*` variable in `text` is one that `help` lists.
fn assert_known_variables(text: &str, help: &str) {
    // Help text is wrapped to the terminal's width, sometimes inside `[env: …]`.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut seen = 0;
    for (at, _) in text.match_indices("TRELLIS_") {
        let var: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        assert!(help.contains(&format!("[env: {var}")), "{var} is not a variable the program reads");
        seen += 1;
    }
    assert!(seen > 3, "expected the output to configure trellis through its variables");
}

#[tokio::test]
async fn kubernetes_manifests_are_deterministic_and_valid() {
    let first = install(&["install", "kubernetes"]).await;
    let second = install(&["install", "kubernetes"]).await;
    assert_eq!(first, second, "two runs must print the same bytes");
    assert_valid(&first, "default").await;

    let custom = install(&[
        "install",
        "kubernetes",
        "--namespace",
        "mesh-system",
        "--replicas",
        "3",
        "--image",
        "registry.example/trellis:1",
    ])
    .await;
    assert_valid(&custom, "custom").await;
    assert_known_variables(&first, &trellis_help().await);
}

#[tokio::test]
async fn kubernetes_manifests_run_a_locked_down_replicated_control_plane() {
    let docs = documents(&install(&["install", "kubernetes"]).await);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ServiceAccount", "Job", "Deployment", "PodDisruptionBudget", "Service"]);
    for doc in &docs[1..] {
        assert_eq!(doc["metadata"]["namespace"], "trellis", "{doc}");
    }

    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Deployment's selector must match its pods");
    }
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let container = &pod["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["serve"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    // With the KEK and the database URL from the Secret, trellis writes nothing: no volume.
    assert!(pod.get("volumes").is_none());

    let env = |c: &Value, name: &str| -> Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    for (var, key) in [("TRELLIS_KEK", "kek"), ("TRELLIS_DATABASE_URL", "database-url")] {
        let from = &env(container, var)["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], "trellis", "{var}");
        assert_eq!(from["key"], key, "{var}");
        assert_eq!(from["optional"], false, "{var}");
    }
    // The ports listen beyond loopback and the TLS certificate names the Service.
    assert_eq!(env(container, "TRELLIS_HTTP_ADDR")["value"], "0.0.0.0:8080");
    assert_eq!(env(container, "TRELLIS_XDS_ADDR")["value"], "0.0.0.0:15012");
    assert!(
        env(container, "TRELLIS_XDS_SERVER_NAMES")["value"].as_str().unwrap().contains("trellis.trellis.svc")
    );

    let pdb = find(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let service = find(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], selector);
    let ports: Vec<(u64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["targetPort"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, [(8080, "http"), (15012, "xds")]);
    let container_ports: Vec<&str> =
        container["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(container_ports, ["http", "xds"]);

    let job = find(&docs, "Job");
    let migrate = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(migrate["args"], serde_json::json!(["migrate"]));
    assert_eq!(migrate["image"], container["image"]);
    assert_eq!(migrate["securityContext"], container["securityContext"]);
    assert_eq!(env(migrate, "TRELLIS_DATABASE_URL")["valueFrom"]["secretKeyRef"]["key"], "database-url");
}

#[tokio::test]
async fn kubernetes_flags_set_namespace_replicas_image_and_secret() {
    let docs = documents(
        &install(&[
            "install",
            "kubernetes",
            "--namespace",
            "mesh-system",
            "--replicas",
            "3",
            "--image",
            "registry.example/trellis:1",
            "--secret",
            "trellis-secrets",
        ])
        .await,
    );
    assert_eq!(find(&docs, "Namespace")["metadata"]["name"], "mesh-system");
    assert!(docs[1..].iter().all(|d| d["metadata"]["namespace"] == "mesh-system"));
    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/trellis:1");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["valueFrom"]["secretKeyRef"]["name"] == "trellis-secrets")
    );

    for (flag, value) in [("--namespace", "Not_A_Namespace"), ("--replicas", "0"), ("--image", "two words")] {
        let (ok, out, err) = run(&["install", "kubernetes", flag, value]).await;
        assert!(!ok && out.is_empty(), "{flag} {value} was accepted");
        assert!(err.contains(flag), "the error names the flag: {err}");
    }
}

#[tokio::test]
async fn kubernetes_manifests_run_the_image_the_containerfile_builds() {
    let containerfile = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/trellis.Containerfile"),
    )
    .unwrap();
    let version = install(&["--version"]).await;
    let version = version.trim().strip_prefix("trellis ").unwrap();
    let build_line = containerfile.lines().find(|l| l.contains("podman build")).expect("the build command");
    let tag = build_line.split_whitespace().skip_while(|w| *w != "-t").nth(1).expect("a -t tag");
    assert_eq!(tag, format!("trellis:{version}"), "the build command tags this version");
    let user = containerfile.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    let (uid, gid) = user.split_once(':').unwrap();
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/trellis\"]"));

    let docs = documents(&install(&["install", "kubernetes"]).await);
    for kind in ["Deployment", "Job"] {
        let pod = &find(&docs, kind)["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], tag, "{kind}");
        assert_eq!(pod["securityContext"]["runAsUser"].to_string(), uid, "{kind}");
        assert_eq!(pod["securityContext"]["runAsGroup"].to_string(), gid, "{kind}");
    }
}

#[tokio::test]
async fn injected_pods_run_the_image_the_agent_containerfile_builds() {
    let containerfile = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/trellis-agent.Containerfile"),
    )
    .unwrap();
    let version = install(&["--version"]).await;
    let version = version.trim().strip_prefix("trellis ").unwrap();
    let build_line = containerfile.lines().find(|l| l.contains("podman build")).expect("the build command");
    let tag = build_line.split_whitespace().skip_while(|w| *w != "-t").nth(1).expect("a -t tag");
    assert_eq!(tag, format!("trellis-agent:{version}"), "the build command tags this version");
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/trellis-agent\"]"));
    // The init container's redirect needs iptables in the image.
    assert!(containerfile.contains("iptables"), "the image installs iptables");

    // Without --agent-image, both injected containers run that tag; their args are the
    // agent's subcommands, which the image's entrypoint runs.
    let (ok, out, err) =
        run(&["inject", "--mesh", "shop", "-f", golden("deployment.in.yaml").to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let docs = documents(&out);
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    let agent = container(&pod["containers"], "trellis-agent");
    let init = container(&pod["initContainers"], "trellis-init");
    for (c, subcommand) in [(agent, "run"), (init, "init")] {
        assert_eq!(c["image"], tag, "{c:#}");
        assert!(c.get("command").is_none(), "the entrypoint stays the image's: {c:#}");
        assert_eq!(c["args"][0], subcommand, "{c:#}");
    }
}

fn systemd_analyze() -> &'static str {
    let found = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "systemd-analyze is missing: install it (Debian/Ubuntu: apt install systemd)");
    "systemd-analyze"
}

#[tokio::test]
async fn systemd_unit_verifies_and_is_hardened() {
    let binary = trellis_tests::trellis_bin();
    let binary = binary.to_str().unwrap();
    let unit = install(&["install", "systemd", "--binary", binary]).await;
    assert_eq!(unit, install(&["install", "systemd", "--binary", binary]).await, "deterministic");

    assert_unit_verifies("trellis.service", &unit).await;

    let settings: Vec<(&str, &str)> =
        unit.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
    let has = |k: &str, v: &str| settings.contains(&(k, v));
    assert!(has("ExecStart", &format!("{binary} serve")));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "trellis"),
        ("LoadCredential", "kek:/etc/trellis/kek"),
        ("Environment", "TRELLIS_KEK_FILE=%d/kek"),
        ("EnvironmentFile", "/etc/trellis/trellis.env"),
    ] {
        assert!(has(k, v), "{k}={v} is missing from\n{unit}");
    }
    // The KEK never travels in the environment.
    assert!(!unit.contains("TRELLIS_KEK="));
    assert_known_variables(&unit, &trellis_help().await);

    let (ok, _, err) = run(&["install", "systemd", "--binary", "relative/trellis"]).await;
    assert!(!ok && err.contains("--binary"), "{err}");
}

/// `systemd-analyze verify` on a unit. Unknown or malformed settings are only warnings to
/// verify: any line about the unit fails.
async fn assert_unit_verifies(name: &str, unit: &str) {
    let dir = temp_dir(name);
    let file = dir.join(name);
    std::fs::write(&file, unit).unwrap();
    let out = tokio::process::Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
    assert!(out.status.success() && about_unit.is_empty(), "systemd-analyze verify:\n{stderr}\n{unit}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_agent_unit_verifies_is_hardened_and_sets_only_what_the_agent_reads() {
    let agent = trellis_tests::agent_bin();
    let agent = agent.to_str().unwrap();
    let args = ["install", "agent-systemd", "--binary", agent];
    let unit = install(&args).await;
    assert_eq!(unit, install(&args).await, "deterministic");
    assert_unit_verifies("trellis-agent.service", &unit).await;

    let settings: Vec<(&str, &str)> =
        unit.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
    let has = |k: &str, v: &str| settings.contains(&(k, v));
    assert!(has("ExecStart", &format!("{agent} run")));
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "trellis-agent"),
        ("Environment", "TRELLIS_CERT_DIR=%S/trellis-agent"),
        ("LoadCredential", "join-token:/etc/trellis-agent/join-token"),
        ("Environment", "TRELLIS_JOIN_TOKEN_FILE=%d/join-token"),
        ("EnvironmentFile", "/etc/trellis-agent/agent.env"),
    ] {
        assert!(has(k, v), "{k}={v} is missing from\n{unit}");
    }
    // The join token never travels in the environment.
    assert!(!unit.contains("TRELLIS_JOIN_TOKEN="));
    let out = tokio::process::Command::new(agent).args(["run", "--help"]).output().await.unwrap();
    assert_known_variables(&unit, &String::from_utf8_lossy(&out.stdout));
}

/// `trellis` with only the given environment (and a HOME of its own, to see what it writes).
fn trellis_with_env(env: &BTreeMap<String, String>, home: &Path) -> tokio::process::Command {
    let mut cmd = trellis();
    cmd.env_remove("TRELLIS_KEK")
        .env_remove("TRELLIS_XDS_ADDR")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", home);
    cmd.current_dir(home).envs(env);
    cmd
}

/// Loopback on a free port instead of the fixed ones, so that tests run side by side.
fn on_loopback(env: &mut BTreeMap<String, String>) {
    for var in ["TRELLIS_HTTP_ADDR", "TRELLIS_XDS_ADDR"] {
        let addr = env.get(var).unwrap_or_else(|| panic!("{var} is set"));
        assert!(addr.starts_with("0.0.0.0:"), "{var}={addr} listens beyond loopback");
        env.insert(var.into(), "127.0.0.1:0".into());
    }
}

async fn wait_ready(t: &Trellis) {
    for _ in 0..150 {
        if t.get("/readyz").await.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("trellis did not become ready: {:?}", t.output());
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test]
async fn the_manifests_environment_migrates_and_serves_without_writing_a_file() {
    let db = TestDb::create().await;
    let secret = BTreeMap::from([("database-url", db.owner_url()), ("kek", TEST_KEK.to_owned())]);
    // A container's environment as Kubernetes builds it from the manifest and the Secret.
    let container_env = |container: &Value| -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for e in container["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().to_owned();
            if let Some(value) = e["value"].as_str() {
                env.insert(name, value.to_owned());
            } else {
                let from = &e["valueFrom"]["secretKeyRef"];
                match secret.get(from["key"].as_str().unwrap()) {
                    Some(value) => env.insert(name, value.clone()),
                    None => {
                        assert_eq!(
                            from["optional"], true,
                            "{name} needs a Secret key the README does not ask for"
                        );
                        None
                    }
                };
            }
        }
        env
    };
    let args = |container: &Value| -> Vec<String> {
        container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
    };
    let docs = documents(&install(&["install", "kubernetes"]).await);
    let home = temp_dir("kubernetes-home");

    let job = &find(&docs, "Job")["spec"]["template"]["spec"]["containers"][0];
    let out = trellis_with_env(&container_env(job), &home).args(args(job)).output().await.unwrap();
    assert!(out.status.success(), "the migration Job fails: {}", String::from_utf8_lossy(&out.stderr));

    let container = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mut env = container_env(container);
    on_loopback(&mut env);
    let mut cmd = trellis_with_env(&env, &home);
    cmd.args(args(container));
    let t = Trellis::start(cmd).await;
    wait_ready(&t).await;
    assert!(is_empty_dir(&home), "trellis wrote files, which a read-only root filesystem refuses");
    t.stop(Duration::from_secs(15)).await;
    std::fs::remove_dir_all(home).unwrap();
}

#[tokio::test]
async fn the_units_environment_serves_with_the_kek_credential() {
    let db = TestDb::create().await;
    let binary = trellis_tests::trellis_bin();
    let unit = install(&["install", "systemd", "--binary", binary.to_str().unwrap()]).await;
    let root = temp_dir("systemd-run");
    let (credentials, state, home) = (root.join("credentials"), root.join("state"), root.join("home"));
    for dir in [&credentials, &state, &home] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The KEK file as the operator writes it; systemd copies it into the credentials directory.
    let (id, key) = TEST_KEK.split_once(':').unwrap();
    let kek_file = format!("{id} {key}\n");
    std::fs::write(credentials.join("kek"), &kek_file).unwrap();

    // The environment systemd gives the service: Environment= with its specifiers, then the
    // environment file's settings over them.
    let mut env = BTreeMap::new();
    let mut exec = Vec::new();
    for line in unit.lines().filter(|l| !l.starts_with('#')) {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let (k, v) = assignment.split_once('=').unwrap();
            let v = v.replace("%d", credentials.to_str().unwrap()).replace("%S", state.to_str().unwrap());
            assert!(!v.contains('%'), "a specifier this test does not resolve: {line}");
            env.insert(k.to_owned(), v);
        } else if let Some(command) = line.strip_prefix("ExecStart=") {
            exec = command.split_whitespace().map(str::to_owned).collect();
        }
    }
    env.insert("TRELLIS_DATABASE_URL".into(), db.owner_url());
    on_loopback(&mut env);

    let mut cmd = trellis_with_env(&env, &home);
    assert_eq!(Path::new(&exec[0]), binary);
    cmd.args(&exec[1..]);
    let t = Trellis::start(cmd).await;
    wait_ready(&t).await;
    // The KEK is the credential's (no key was made), and nothing else was written.
    assert!(!t.output().0.contains("Created a key-encryption key"), "{:?}", t.output());
    assert_eq!(std::fs::read_to_string(credentials.join("kek")).unwrap(), kek_file);
    assert!(is_empty_dir(&state) && is_empty_dir(&home));
    t.stop(Duration::from_secs(15)).await;
    std::fs::remove_dir_all(root).unwrap();
}

/// The flags of the golden files: an image tag that no release changes.
const INJECT: &[&str] = &["inject", "--mesh", "shop", "--agent-image", "registry.example/trellis-agent:1"];

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/inject").join(name)
}

async fn inject(extra: &[&str]) -> String {
    install(&[INJECT, extra].concat()).await
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_of<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test]
async fn inject_matches_the_golden_files_validates_and_injects_once() {
    for case in ["deployment", "statefulset", "daemonset", "pod", "multi", "already-injected"] {
        let input = golden(&format!("{case}.in.yaml"));
        let out = inject(&["-f", input.to_str().unwrap()]).await;
        expect_test::expect_file![golden(&format!("{case}.out.yaml"))].assert_eq(&out);
        assert_valid(&out, &format!("inject-{case}")).await;
        let (ok, again, err) = run_with_stdin(INJECT, &out).await;
        assert!(ok, "{err}");
        assert_eq!(again, out, "{case}: injecting the injected manifests changed them");
    }
    // A workload that has an agent, and kinds that are not workloads, pass unchanged.
    let read = |name: &str| documents(&std::fs::read_to_string(golden(name)).unwrap());
    assert_eq!(read("already-injected.out.yaml"), read("already-injected.in.yaml"));
    let (multi_in, multi_out) = (read("multi.in.yaml"), read("multi.out.yaml"));
    assert_eq!(multi_out[0], multi_in[0], "the Service");
    assert_eq!(multi_out[2], multi_in[2], "the host-network DaemonSet");
    assert_ne!(multi_out[1], multi_in[1], "the Deployment");
}

#[tokio::test]
async fn inject_adds_a_locked_down_agent_and_a_redirecting_init_container() {
    let out = inject(&["-f", golden("deployment.in.yaml").to_str().unwrap()]).await;
    let docs = documents(&out);
    let pod = &docs[0]["spec"]["template"]["spec"];
    let names = |list: &Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    };
    // The agent starts before the application; the redirect is set up after the pod's own
    // init containers, whose traffic no agent would carry yet.
    assert_eq!(names(&pod["containers"]), ["trellis-agent", "reviews"]);
    assert_eq!(names(&pod["initContainers"]), ["warm-cache", "trellis-init"]);

    let init = container(&pod["initContainers"], "trellis-init");
    assert_eq!(
        init["args"],
        serde_json::json!([
            "init",
            "--inbound-capture-port",
            "15006",
            "--outbound-capture-port",
            "15001",
            "--proxy-uid",
            "1337",
            "--exclude-inbound-ports",
            "15000,15021"
        ])
    );
    let security = &init["securityContext"];
    assert_eq!(security["capabilities"]["add"], serde_json::json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!((&security["runAsUser"], &security["runAsNonRoot"]), (&0.into(), &false.into()));

    let agent = container(&pod["containers"], "trellis-agent");
    assert_eq!(agent["image"], "registry.example/trellis-agent:1");
    assert_eq!(init["image"], agent["image"]);
    assert_eq!(
        agent["args"],
        serde_json::json!(["run", "--transparent", "--readiness-addr", "0.0.0.0:15021"])
    );
    let security = &agent["securityContext"];
    assert_eq!(security["runAsUser"], 1337, "the uid the init container exempts from the redirect");
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // The kubelet probes the readiness listener on the pod IP (the admin port is loopback
    // only), a port the redirect leaves alone.
    let probe = &agent["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/ready", "{agent}");
    let port = agent["ports"].as_array().unwrap().iter().find(|p| p["name"] == probe["port"]).unwrap();
    assert_eq!(port["containerPort"], 15021, "{agent}");
    assert!(
        agent["resources"]["requests"]["cpu"].is_string()
            && agent["resources"]["requests"]["memory"].is_string()
    );

    // The service and its version from the pod's labels, the ports from its TCP containerPorts.
    assert_eq!(env_of(agent, "TRELLIS_MESH")["value"], "shop");
    assert_eq!(env_of(agent, "TRELLIS_SERVICE")["value"], "reviews");
    assert_eq!(env_of(agent, "TRELLIS_PORTS")["value"], "9080,9090");
    assert_eq!(env_of(agent, "TRELLIS_TAGS")["value"], "version=v1");
    assert_eq!(env_of(agent, "TRELLIS_ADDRESS")["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let token = &env_of(agent, "TRELLIS_JOIN_TOKEN")["valueFrom"]["secretKeyRef"];
    assert_eq!((&token["name"], &token["key"]), (&"trellis-join-reviews".into(), &"token".into()));

    // The default server is the Service of `trellis install kubernetes`, a name its
    // certificate carries.
    let server = env_of(agent, "TRELLIS_SERVER")["value"].as_str().unwrap().to_owned();
    let control_plane = documents(&install(&["install", "kubernetes"]).await);
    let cp = &find(&control_plane, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let (host, port) = server.rsplit_once(':').unwrap();
    assert!(env_of(cp, "TRELLIS_XDS_SERVER_NAMES")["value"].as_str().unwrap().split(',').any(|n| n == host));
    assert_eq!(port, env_of(cp, "TRELLIS_XDS_ADDR")["value"].as_str().unwrap().rsplit_once(':').unwrap().1);

    // The files the agent reads are on the pod's volumes: the platform root from the
    // ConfigMap, the certificate directory in memory.
    let mounted = |path: &str| -> Value {
        let mount = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{path} is on no volume"));
        pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap().clone()
    };
    let ca = env_of(agent, "TRELLIS_PLATFORM_CA")["value"].as_str().unwrap();
    let ca_volume = mounted(ca);
    assert_eq!(ca_volume["configMap"]["name"], "trellis-platform-ca");
    assert!(ca.ends_with(&format!("/{}", ca_volume["configMap"]["items"][0]["path"].as_str().unwrap())));
    assert_eq!(ca_volume["configMap"]["items"][0]["key"], "ca.pem");
    assert!(mounted(env_of(agent, "TRELLIS_CERT_DIR")["value"].as_str().unwrap())["emptyDir"].is_object());

    let agent_bin = trellis_tests::agent_bin();
    let help = tokio::process::Command::new(agent_bin).args(["run", "--help"]).output().await.unwrap();
    assert_known_variables(&out, &String::from_utf8_lossy(&help.stdout));
}

#[tokio::test]
async fn inject_flags_override_the_defaults_and_it_reports_each_workload() {
    let multi = golden("multi.in.yaml");
    let args = [
        "-f",
        multi.to_str().unwrap(),
        "--service",
        "storefront",
        "--ports",
        "8080,8443",
        "--token-secret",
        "storefront-token",
        "--server",
        "trellis.example.com:443",
        "--platform-ca-configmap",
        "mesh-root",
    ];
    let (ok, out, err) = run(&[INJECT, &args].concat()).await;
    assert!(ok, "{err}");
    assert_eq!(
        err,
        "Deployment/productpage-v1 injected (service storefront)\n\
         DaemonSet/node-exporter skipped: it uses the host's network, which the redirect would capture\n"
    );
    let docs = documents(&out);
    let pod = &docs[1]["spec"]["template"]["spec"];
    let agent = container(&pod["containers"], "trellis-agent");
    assert_eq!(env_of(agent, "TRELLIS_SERVICE")["value"], "storefront");
    assert_eq!(env_of(agent, "TRELLIS_PORTS")["value"], "8080,8443");
    assert_eq!(env_of(agent, "TRELLIS_SERVER")["value"], "trellis.example.com:443");
    assert_eq!(env_of(agent, "TRELLIS_JOIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"], "storefront-token");
    assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["configMap"]["name"] == "mesh-root"));
    assert_valid(&out, "inject-flags").await;

    // With no app label, the workload's name; with no port, no TRELLIS_PORTS (a client only).
    let (ok, out, err) =
        run(&[INJECT, &["-f", golden("daemonset.in.yaml").to_str().unwrap()]].concat()).await;
    assert!(ok, "{err}");
    let docs = documents(&out);
    let agent = container(&docs[0]["spec"]["template"]["spec"]["containers"], "trellis-agent");
    assert_eq!(env_of(agent, "TRELLIS_SERVICE")["value"], "log-shipper");
    assert!(!agent["env"].as_array().unwrap().iter().any(|e| e["name"] == "TRELLIS_PORTS"));
    assert_eq!(err, "DaemonSet/log-shipper injected (service log-shipper)\n");
}

#[tokio::test]
async fn inject_refuses_what_it_cannot_inject_and_prints_nothing() {
    let deployment = |pod: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n\
             spec: {{selector: {{matchLabels: {{app: web}}}}, template: {pod}}}\n"
        )
    };
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n";
    let cases: Vec<(Vec<&str>, String, &str)> = vec![
        (
            vec![],
            deployment("{metadata: {labels: {app: web}}, spec: {containers: []}}"),
            "stdin#1 (Deployment/web): no containers",
        ),
        (
            vec![],
            format!(
                "{service}{}",
                deployment("{spec: {containers: [{name: a, image: b}]}, metadata: {labels: {app: Web_App}}}")
            ),
            "stdin#2 (Deployment/web): the service name \"Web_App\"",
        ),
        (vec![], deployment("7"), "stdin#1 (Deployment/web): no pod spec"),
        (
            vec![],
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: 3\n".into(),
            "no spec.template",
        ),
        (vec![], "kind: [\n".into(), "not valid YAML"),
        (vec!["--ports", "0"], deployment("{}"), "--ports"),
        (vec!["--server", "no-port"], deployment("{}"), "--server"),
        (vec!["--service", "Not_A_Name"], deployment("{}"), "--service"),
        (vec!["--token-secret", "a b"], deployment("{}"), "--token-secret"),
        (vec!["--agent-image", "two words"], deployment("{}"), "--agent-image"),
    ];
    for (flags, input, expected) in cases {
        let (ok, out, err) = run_with_stdin(&[INJECT, &flags].concat(), &input).await;
        assert!(!ok && out.is_empty(), "{flags:?} {input:?} was accepted: {out}");
        assert!(err.contains(expected), "{flags:?} {input:?}: expected {expected:?} in {err}");
    }
    let (ok, _, err) = run_with_stdin(&["inject"], "").await;
    assert!(!ok && err.contains("--mesh"), "{err}");
    let (ok, _, err) = run_with_stdin(&["inject", "--mesh", "Bad Mesh"], "").await;
    assert!(!ok && err.contains("--mesh"), "{err}");
}
