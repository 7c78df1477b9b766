//! The web console as a person meets it, in a real headless Chromium: the one-time login
//! link, an organization's meshes, creating a mesh with the server's errors beside the
//! field; and what a page must never do (show another tenant's data, let a viewer write,
//! accept a form without its CSRF token, load anything from another host).

use std::time::Duration;

use fantoccini::Locator;
use trellis_model::{OrgSlug, Role};
use trellis_store::NewUser;
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::{Trellis, trellis};

const SESSION_COOKIE: &str = "__Host-trellis_session";

async fn start(db: &TestDb) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    Trellis::start(cmd).await
}

/// The one-time login link `trellis serve` printed.
fn login_link(t: &Trellis) -> String {
    let (stdout, _) = t.output();
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http") && l.contains("/auth/local"))
        .unwrap_or_else(|| panic!("no login link in:\n{stdout}"))
        .to_owned()
}

/// A user with `role` in organization `slug` (created if needed), signed in: the session
/// cookie's value.
async fn session(db: &TestDb, slug: &str, subject: &str, role: Role) -> String {
    let store = db.store().await;
    let slug = OrgSlug::parse(slug).unwrap();
    let org = match store.org_by_slug(&slug).await.unwrap() {
        Some(o) => o,
        None => store.create_org(&slug, slug.as_str()).await.unwrap(),
    };
    let mut tx = store.tenant(org.id).await.unwrap();
    let user = tx
        .insert_user(&NewUser {
            oidc_issuer: "https://idp.test",
            oidc_subject: subject,
            email: Some(&format!("{subject}@example.com")),
            display_name: Some(subject),
        })
        .await
        .unwrap();
    tx.add_member(user.id, role).await.unwrap();
    tx.commit().await.unwrap();
    let secret = trellis_api::session::random_secret();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    store.create_session(&trellis_api::auth::token_hash(&secret), user.id, expires).await.unwrap();
    store.close().await;
    secret
}

fn as_user(secret: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("cookie", format!("{SESSION_COOKIE}={secret}"))
}

/// Checks a page with a strict HTML5 parser (html5lib from the test peers' .venv).
async fn assert_valid_html(name: &str, html: &str) {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/test, which installs html5lib", python.display());
    let mut child = tokio::process::Command::new(python)
        .args(["-c", "import sys, html5lib; html5lib.HTMLParser(strict=True).parse(sys.stdin.read())"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(html.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{name} is not valid HTML: {}\n{html}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_login_link_opens_the_console_where_a_mesh_is_created_with_errors_beside_the_field() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    let shots = screenshot_dir();

    b.goto(&login_link(&t)).await.unwrap();
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/orgs/default", "the link lands on the organization's page");
    let h1 = b.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "default");
    assert!(b.source().await.unwrap().contains("No meshes yet"));
    std::fs::write(shots.join("org.png"), b.screenshot().await.unwrap()).unwrap();

    // A name the API refuses: the form comes back with the reason beside the name field.
    let name = b.find(Locator::Id("mesh-name")).await.unwrap();
    name.send_keys("Not_A_Name").await.unwrap();
    b.find(Locator::Css("form.panel button[type=submit]")).await.unwrap().click().await.unwrap();
    let error =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("mesh-name-error")).await.unwrap();
    let text = error.text().await.unwrap();
    assert!(!text.is_empty(), "the name's error is shown");
    let kept = b.find(Locator::Id("mesh-name")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("Not_A_Name"), "what was typed is kept");
    std::fs::write(shots.join("org-invalid.png"), b.screenshot().await.unwrap()).unwrap();

    // A good one: the mesh's page, with its own certificate authority.
    let name = b.find(Locator::Id("mesh-name")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys("shop").await.unwrap();
    b.find(Locator::Css("#mesh-access option[value=deny]")).await.unwrap().click().await.unwrap();
    b.find(Locator::Css("form.panel button[type=submit]")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_url(&url.join("/orgs/default/meshes/shop").unwrap())
        .await
        .unwrap();
    let h1 = b.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "Mesh shop");
    let page = b.source().await.unwrap();
    assert!(page.contains("No proxy has connected yet"), "{page}");
    assert!(page.contains("active"), "the mesh's CA is listed:\n{page}");
    std::fs::write(shots.join("mesh.png"), b.screenshot().await.unwrap()).unwrap();

    // Connect a workload: a join token for one of the mesh's services, shown once with the
    // commands that run an agent, and good for an SVID.
    let api =
        trellis_tests::Api::new(&t, "default", &trellis_tests::token(&db, "default", Role::Editor).await);
    let service = serde_json::json!({
        "apiVersion": "trellis.dev/v1", "kind": "Service", "metadata": { "name": "reviews", "mesh": "shop" },
        "spec": { "ports": [{ "port": 9080, "protocol": "http" }] },
    });
    let (status, body) = api.put("/meshes/shop/services/reviews", &service).await;
    assert_eq!(status, 201, "{body}");
    b.refresh().await.unwrap();
    b.find(Locator::Css("#workload-service option[value=reviews]")).await.unwrap().click().await.unwrap();
    b.find(Locator::Id("workload-tags")).await.unwrap().send_keys("version=v2").await.unwrap();
    b.find(Locator::XPath("//button[text()='Create a join token']")).await.unwrap().click().await.unwrap();
    let token =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("join-token")).await.unwrap();
    let token = token.text().await.unwrap();
    assert!(token.starts_with("trls_join_"), "{token}");
    let run = b.find(Locator::Id("agent-run")).await.unwrap().text().await.unwrap();
    for part in [format!("--server {}", t.xds), "--mesh shop --service reviews --tags version=v2".into()] {
        assert!(run.contains(&part), "{part:?} missing from:\n{run}");
    }
    let files = b.find(Locator::Id("agent-files")).await.unwrap().text().await.unwrap();
    assert!(files.contains(&token) && files.contains("BEGIN CERTIFICATE"), "{files}");
    std::fs::write(shots.join("connect-workload.png"), b.screenshot().await.unwrap()).unwrap();
    let store = db.store().await;
    let root = trellis_tests::grpc::platform_root(&store).await;
    store.close().await;
    trellis_tests::grpc::issue(&t.xds, &root, &token).await.expect("the token shown is good for an SVID");

    // Rotate the mesh's root, one step at a time, each saying what it will do.
    b.goto(&format!("{}/orgs/default/meshes/shop", t.base)).await.unwrap();
    for (button, phase) in [("Prepare a new root", "prepared"), ("Activate the new root", "rotated")] {
        b.find(Locator::XPath(&format!("//button[text()='{button}']"))).await.unwrap().click().await.unwrap();
        let xpath = format!("//p[contains(., 'Phase')]/strong[text()='{phase}']");
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::XPath(&xpath)).await.unwrap();
    }
    std::fs::write(shots.join("ca-rotated.png"), b.screenshot().await.unwrap()).unwrap();
    // The old root signed the SVID above, which has not expired: retiring it is refused, saying why.
    b.find(Locator::XPath("//button[text()='Retire the old root']")).await.unwrap().click().await.unwrap();
    let refusal = Locator::XPath("//p[contains(., 'unexpired certificates still chain to this CA')]");
    b.wait().at_most(Duration::from_secs(5)).for_element(refusal).await.unwrap();

    // Back on the organization's page, the mesh is listed.
    b.goto(&format!("{}/orgs/default", t.base)).await.unwrap();
    b.find(Locator::LinkText("shop")).await.unwrap();

    // Every resource the pages loaded came from Trellis itself.
    let loaded =
        b.execute("return performance.getEntriesByType('resource').map(e => e.name)", vec![]).await.unwrap();
    for url in loaded.as_array().unwrap() {
        assert!(url.as_str().unwrap().starts_with(&t.base), "a page loaded {url} from another host");
    }

    // An API token, shown once, works against the API until it is revoked here.
    b.goto(&format!("{}/orgs/default/tokens", t.base)).await.unwrap();
    b.find(Locator::Id("token-name")).await.unwrap().send_keys("ci").await.unwrap();
    b.find(Locator::XPath("//button[text()='Create token']")).await.unwrap().click().await.unwrap();
    let pat = b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("new-token")).await.unwrap();
    let pat = pat.text().await.unwrap();
    assert!(pat.starts_with("trls_pat_"), "{pat}");
    let meshes = format!("{}/api/v1/orgs/default/meshes", t.base);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&meshes).bearer_auth(&pat).send().await.unwrap().status(), 200);
    b.find(Locator::Css("button[aria-label='Revoke ci']")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath("//td[text()='revoked']"))
        .await
        .unwrap();
    assert_eq!(http.get(&meshes).bearer_auth(&pat).send().await.unwrap().status(), 401);

    // The audit log shows each step, and filters.
    b.goto(&format!("{}/orgs/default/audit", t.base)).await.unwrap();
    let log = b.find(Locator::Id("audit-events")).await.unwrap().text().await.unwrap();
    for action in
        ["join-token.create", "ca.rotation.prepare", "ca.rotation.activate", "token.create", "token.revoke"]
    {
        assert!(log.contains(action), "{action} missing from the audit log:\n{log}");
    }
    b.find(Locator::Id("audit-action")).await.unwrap().send_keys("token.revoke").await.unwrap();
    b.find(Locator::XPath("//button[text()='Filter']")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_url(&url.join("/orgs/default/audit?actor=&action=token.revoke&target=").unwrap())
        .await
        .unwrap();
    // The filtered page has loaded once its filter field shows the filter.
    let field = Locator::XPath("//input[@id='audit-action' and @value='token.revoke']");
    b.wait().at_most(Duration::from_secs(5)).for_element(field).await.unwrap();
    let rows = b.find_all(Locator::Css("#audit-events tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1, "one revocation");
    std::fs::write(shots.join("audit.png"), b.screenshot().await.unwrap()).unwrap();

    // Signing out ends the session: the console asks to sign in again.
    b.find(Locator::Css("header form button")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath("//h1[text()='Sign in to Trellis']"))
        .await
        .unwrap();
    b.goto(&format!("{}/orgs/default", t.base)).await.unwrap();
    let h1 = b.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "Sign in to Trellis");
    chromium.close().await;
}

#[tokio::test]
async fn pages_are_valid_html_with_strict_headers_and_show_each_user_only_their_organizations() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let owner = session(&db, "acme", "olivia", Role::Owner).await;
    let viewer = session(&db, "acme", "victor", Role::Viewer).await;
    let stranger = session(&db, "globex", "sam", Role::Owner).await;
    let get = |secret: &str, path: &str| as_user(secret, http.get(format!("{}{path}", t.base)));

    // Signed out: the sign-in page, valid and locked down.
    let res = http.get(format!("{}/", t.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_valid_html("sign-in", &res.text().await.unwrap()).await;

    // The owner creates a mesh with a form post carrying the CSRF token shown in the page.
    let page = get(&owner, "/orgs/acme").send().await.unwrap().text().await.unwrap();
    assert_valid_html("organization", &page).await;
    let csrf =
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    let form = |csrf: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("name", "web".into()),
            ("mtls", "STRICT".into()),
            ("default_access", "deny".into()),
        ]
    };
    let res =
        as_user(&owner, http.post(format!("{}/orgs/acme", t.base)).form(&form(&csrf))).send().await.unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
    assert_eq!(res.headers()["location"], "/orgs/acme/meshes/web");
    let mesh_page = get(&owner, "/orgs/acme/meshes/web").send().await.unwrap();
    assert_eq!(mesh_page.status(), 200);
    assert_valid_html("mesh", &mesh_page.text().await.unwrap()).await;

    // Without the session's CSRF token the same form is refused, and nothing is created.
    let mut other = form("not-the-token");
    other[1].1 = "forged".into();
    let res = as_user(&owner, http.post(format!("{}/orgs/acme", t.base)).form(&other)).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(get(&owner, "/orgs/acme/meshes/forged").send().await.unwrap().status(), 404);

    // A viewer sees the meshes but no form, and a post anyway is refused.
    let page = get(&viewer, "/orgs/acme").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/orgs/acme/meshes/web") && !page.contains("Create a mesh"), "{page}");
    let viewer_csrf =
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    let mut post = form(&viewer_csrf);
    post[1].1 = "viewer-mesh".into();
    let res = as_user(&viewer, http.post(format!("{}/orgs/acme", t.base)).form(&post)).send().await.unwrap();
    assert_eq!(res.status(), 403);

    // Another organization's user finds nothing of acme's: every page is a 404.
    for path in ["/orgs/acme", "/orgs/acme/meshes/web"] {
        let res = get(&stranger, path).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("web") || !body.contains("Trust domain"), "{path}: {body}");
    }
    let home = get(&stranger, "/").send().await.unwrap();
    assert_eq!(home.headers()["location"], "/orgs/globex");

    // An API token does not open the console.
    let token = trellis_tests::token(&db, "acme", Role::Owner).await;
    let res = http.get(format!("{}/orgs/acme", t.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
}
