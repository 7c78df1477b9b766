//! `trellis install kubernetes` and `trellis install systemd`, run as the real binary: the
//! manifests validate against Kubernetes' own schemas (PyPI kubernetes-validate, installed into
//! .venv by scripts/test), the unit passes `systemd-analyze verify`, and both keep the security
//! properties an operator relies on.

use std::path::{Path, PathBuf};

use serde_json::Value;
use trellis_tests::trellis;

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

/// Every `TRELLIS_*` variable in `text` is one that `trellis` reads (its --help lists each).
async fn assert_known_variables(text: &str) {
    let mut help = install(&["--help"]).await;
    for sub in ["migrate", "serve"] {
        help.push_str(&install(&[sub, "--help"]).await);
    }
    let mut seen = 0;
    for (at, _) in text.match_indices("TRELLIS_") {
        let var: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        assert!(help.contains(&format!("[env: {var}")), "{var} is not a variable trellis reads");
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
    assert_known_variables(&first).await;
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

    let dir = temp_dir("systemd");
    let file = dir.join("trellis.service");
    std::fs::write(&file, &unit).unwrap();
    let out = tokio::process::Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown or malformed settings are only warnings to verify: any line about the unit fails.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("trellis.service")).collect();
    assert!(out.status.success() && about_unit.is_empty(), "systemd-analyze verify:\n{stderr}\n{unit}");
    std::fs::remove_dir_all(dir).unwrap();

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
    assert_known_variables(&unit).await;

    let (ok, _, err) = run(&["install", "systemd", "--binary", "relative/trellis"]).await;
    assert!(!ok && err.contains("--binary"), "{err}");
}
