//! `trellis apply / get / delete` against a running server, as an operator uses them.

use serde_json::Value;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::{Api, Trellis, token, trellis};

struct Cli {
    server: String,
    token: String,
    home: std::path::PathBuf,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = trellis()
            .env("TRELLIS_SERVER", &self.server)
            .env("TRELLIS_TOKEN", &self.token)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

#[tokio::test]
async fn apply_get_delete_round_trip() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let secret = token(&db, "acme", Role::Editor).await;
    let home = std::env::temp_dir().join(format!("trellis-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).unwrap();
    let cli = Cli { server: t.base.clone(), token: secret.clone(), home: home.clone() };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reviews.yaml");

    // Apply creates the mesh first (it is not first in the file order that matters), then the rest.
    let (ok, out, err) = cli.run(&["apply", "-f", example]).await;
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "mesh/shop created");
    assert!(lines.contains(&"httproute/reviews created"), "{out}");
    assert_eq!(lines.iter().filter(|l| l.ends_with("created")).count(), 10, "{out}");
    // Applying again changes nothing.
    let (ok, out, _) = cli.run(&["apply", "-f", example]).await;
    assert!(ok);
    assert_eq!(out.lines().filter(|l| l.ends_with("unchanged")).count(), 10, "{out}");

    // get -o json is exactly what the API returns.
    let (ok, out, err) = cli.run(&["get", "httproute", "reviews", "--mesh", "shop", "-o", "json"]).await;
    assert!(ok, "{err}");
    let from_cli: Value = serde_json::from_str(&out).unwrap();
    let api = Api::new(&t, "acme", &secret);
    assert_eq!(from_cli, api.get("/meshes/shop/http-routes/reviews").await.1);
    // -o yaml parses back, and can be applied again unchanged.
    let (ok, yaml, _) = cli.run(&["get", "services", "--mesh", "shop", "-o", "yaml"]).await;
    assert!(ok);
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    let file = home.join("services.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let (ok, out, err) = cli.run(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.ends_with("unchanged")).count(), 3, "{out}");
    // The table names every service; a selector narrows it.
    let (ok, out, _) = cli.run(&["get", "svc", "--mesh", "shop"]).await;
    assert!(ok);
    assert!(out.starts_with("NAME"), "{out}");
    for name in ["reviews", "productpage", "db"] {
        assert!(out.contains(name), "{out}");
    }
    let (_, out, _) = cli.run(&["get", "services", "--mesh", "shop", "-l", "team=books"]).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out, _) = cli.run(&["get", "meshes"]).await;
    assert!(ok && out.contains("shop"), "{out}");

    // A bad document: the server's field path, a non-zero exit, and the good ones still applied.
    let bad = home.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Service\nmetadata: {name: ok, mesh: shop}\nspec: {ports: [{port: 80, protocol: http}]}\n---\n\
         kind: HTTPRoute\nmetadata: {name: broken, mesh: shop}\nspec:\n  targetRef: {service: reviews}\n  rules:\n    - backendRefs: [{service: reviews, weight: -1}]\n",
    )
    .unwrap();
    let (ok, out, err) = cli.run(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(out.contains("service/ok created"), "{out}");
    assert!(err.contains("spec.rules[0].backendRefs[0].weight"), "{err}");

    // Delete, then it is gone (and get says so, with a non-zero exit).
    let (ok, out, _) = cli.run(&["delete", "httproute", "reviews", "--mesh", "shop"]).await;
    assert!(ok && out.contains("httproute/reviews deleted"), "{out}");
    let (ok, _, err) = cli.run(&["get", "httproute", "reviews", "--mesh", "shop"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");

    // Server and token from a config file instead of the environment.
    let conf = home.join(".config/trellis");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("config.yaml"), format!("server: {}\ntoken: {secret}\nmesh: shop\n", t.base))
        .unwrap();
    let out = trellis()
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .args(["get", "services"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reviews"));
    // No token anywhere: a clear message.
    let empty = home.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = trellis().env("HOME", &empty).args(["get", "meshes"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn a_client_error_is_printed_once_plainly_with_a_failing_exit() {
    // Nothing listens on this port: the server is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = trellis()
        .env("TRELLIS_SERVER", format!("http://127.0.0.1:{port}"))
        .env("TRELLIS_TOKEN", "trls_pat_unused")
        .env("TRELLIS_ORG", "acme")
        .env("TRELLIS_LOG", "info")
        .args(["get", "meshes"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stderr.lines().count(), 1, "one line, once: {stderr:?}");
    assert!(stderr.starts_with("trellis: ") && stderr.contains(&port.to_string()), "{stderr:?}");
    assert!(!stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'), "no colour codes: {stderr:?}");
    assert!(stdout.is_empty(), "{stdout:?}");
}
