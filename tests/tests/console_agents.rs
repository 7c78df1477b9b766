//! The console with real proxies, in a real headless Chromium: a join token minted on the
//! "connect a workload" page, a real `trellis-agent` started with it, and "waiting for the
//! first proxy" turning green; the dataplane pages showing that agent in sync per type; a
//! route edited in the console applied by it, then one it rejects (NACK) named with its
//! reason; and the steps that fail — a TLS handshake that never reaches the token, a token
//! presented and refused, an identity whose xDS stream is refused.
//!
//! The agents use 127.0.0.60 and 127.0.0.61 (no other test does); run under
//! `flock /tmp/trellis-fixed-ports.lock` beside the other tests that start agents.

use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::json;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::console::{SESSION_COOKIE, as_user, assert_valid_html, login_link, page_loaded, start};
use trellis_tests::{Api, Trellis, ok_app, reviews_route_yaml, telemetry_agent, token};

/// Signs in with the login link (the local administrator's organization is made then), and
/// makes its mesh `shop` with the HTTP service `reviews`.
async fn sign_in_to_shop(b: &Client, t: &Trellis, db: &TestDb) -> Api {
    b.goto(&login_link(t)).await.unwrap();
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/orgs/default", "the link lands on the organization's page");
    let api = Api::new(t, "default", &token(db, "default", Role::Admin).await);
    for (path, doc) in [
        ("/meshes/shop", json!({"spec": {"defaultAccess": "allow"}})),
        ("/meshes/shop/services/reviews", json!({"spec": {"ports": [{"port": 9080, "protocol": "http"}]}})),
    ] {
        let (status, body) = api.put(path, &doc).await;
        assert!(status == 200 || status == 201, "{path}: {body}");
    }
    api
}

/// Mints a join token for `reviews` on the mesh's page and
/// opens "waiting for the first proxy": the token and the platform root as the page showed
/// them, and the token's id.
async fn mint_and_watch(b: &Client, t: &Trellis, tags: &str) -> (String, String, String) {
    b.goto(&format!("{}/orgs/default/meshes/shop", t.base)).await.unwrap();
    let Ok(service) = b.find(Locator::Css("#workload-service option[value=reviews]")).await else {
        panic!("no form to connect a workload of reviews:\n{}", b.source().await.unwrap());
    };
    service.click().await.unwrap();
    b.find(Locator::Id("workload-tags")).await.unwrap().send_keys(tags).await.unwrap();
    b.find(Locator::XPath("//button[text()='Create a join token']")).await.unwrap().click().await.unwrap();
    let token =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("join-token")).await.unwrap();
    let token = token.text().await.unwrap();
    let files = b.find(Locator::Id("agent-files")).await.unwrap().text().await.unwrap();
    let begin = files.find("-----BEGIN CERTIFICATE-----").expect("the page shows the platform root");
    let end = files.rfind("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let root = format!("{}\n", &files[begin..end]);
    b.find(Locator::LinkText("Watch for the first proxy")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("first-proxy-state")).await.unwrap();
    let id = b.current_url().await.unwrap().path().rsplit('/').next().unwrap().to_owned();
    (token, root, id)
}

async fn text_of(b: &Client, id: &str) -> String {
    b.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// Waits until the element `id` reads `want` (the page reloads itself meanwhile).
async fn wait_for_text(b: &Client, id: &str, want: &str, within: Duration) {
    let xpath = format!("//*[@id='{id}' and normalize-space(.)={}]", xpath_literal(want));
    if b.wait().at_most(within).for_element(Locator::XPath(&xpath)).await.is_err() {
        let now = match b.find(Locator::Id(id)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => "(absent)".into(),
        };
        panic!("#{id} never read {want:?} within {within:?}; it reads:\n{now}");
    }
}

/// Waits until the element `id` contains every one of `parts`.
async fn wait_for_parts(b: &Client, id: &str, parts: &[&str], within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = match b.find(Locator::Id(id)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if parts.iter().all(|p| text.contains(p)) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "#{id} never held {parts:?}; it reads:\n{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The page in view, fetched again with the browser's session, is valid, labelled HTML.
async fn assert_valid_page(b: &Client, name: &str) {
    let cookie = b.get_named_cookie(SESSION_COOKIE).await.unwrap();
    let url = b.current_url().await.unwrap();
    let page = as_user(cookie.value(), reqwest::Client::new().get(url.as_str())).send().await.unwrap();
    assert_valid_html(name, &page.text().await.unwrap()).await;
}

fn xpath_literal(s: &str) -> String {
    if s.contains('\'') { format!("\"{s}\"") } else { format!("'{s}'") }
}

/// The rows (type, state) of the sync table of the dataplane section or page in view.
async fn sync_rows(scope: &fantoccini::elements::Element) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for tr in scope.find_all(Locator::Css("table tbody tr")).await.unwrap() {
        let cells = tr.find_all(Locator::Css("td")).await.unwrap();
        rows.push((cells[0].text().await.unwrap(), cells[3].text().await.unwrap()));
    }
    rows
}

/// Types `yaml` into the editor of the page in view, reviews it and saves it; waits for the
/// resource's page.
async fn edit(b: &Client, review: &str, yaml: &str) {
    let editor = b.find(Locator::Id("yaml-editor")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys(yaml).await.unwrap();
    b.find(Locator::XPath(&format!("//button[text()='{review}']"))).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("diff")).await.unwrap();
    b.find(Locator::XPath("//button[text()='Save']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("propagation")).await.unwrap();
}

#[tokio::test]
async fn a_real_agent_turns_the_first_proxy_page_green_and_shows_live_on_the_dataplane_and_route_pages() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    sign_in_to_shop(b, &t, &db).await;

    let (token, root, id) = mint_and_watch(b, &t, "").await;
    assert_eq!(text_of(b, "first-proxy-state").await, "Waiting for an agent to use the join token…");
    let steps = text_of(b, "first-proxy-steps").await;
    assert!(
        steps.contains(
            "The agent reached the control plane over TLS: no attempt seen yet — if the agent logs a TLS \
             error, check --platform-ca and --server"
        ),
        "{steps}"
    );

    // A real agent, started with what the page showed.
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, &root).unwrap();
    let app = format!("9080={}", ok_app().await);
    let mut agent = telemetry_agent(
        &t.xds,
        &ca,
        &tmp.path().join("reviews"),
        &token,
        "reviews",
        "127.0.0.60",
        &["--port", "9080", "--app-port", &app],
    );
    let node = "reviews-127.0.0.60";
    let green = format!("Proxy {node} is connected and in sync");
    let within = Duration::from_secs(30);
    let state = Locator::XPath("//p[@id='first-proxy-state' and @class='ok']");
    if b.wait().at_most(within).for_element(state).await.is_err() {
        panic!(
            "the page never turned green: {:?}\nagent:\n{}",
            text_of(b, "first-proxy-state").await,
            agent.output()
        );
    }
    assert_eq!(text_of(b, "first-proxy-state").await, green);
    let steps = text_of(b, "first-proxy-steps").await;
    assert_eq!(steps.matches(": done").count(), 4, "every step is done:\n{steps}");
    page_loaded(b, &t.base, "first-proxy-connected").await;
    assert_valid_page(b, "first proxy, connected").await;
    agent.wait_for_line("joined the mesh", Duration::from_secs(1)).await;

    // The dataplanes page: the agent, in sync for every type it was sent.
    let mesh_url = format!("{}/orgs/default/meshes/shop", t.base);
    b.goto(&format!("{mesh_url}/dataplanes")).await.unwrap();
    let section = b
        .find(Locator::XPath(&format!("//section[h2/a/code[text()='{node}']]")))
        .await
        .expect("the agent is listed");
    let summary = section.find(Locator::Css("p")).await.unwrap().text().await.unwrap();
    assert!(summary.contains("Service reviews, agent") && summary.contains(": in-sync"), "{summary}");
    let rows = sync_rows(&section).await;
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    for t in ["Listener", "Cluster", "Secret"] {
        assert!(types.contains(&t), "{t} missing: {rows:?}");
    }
    assert!(rows.iter().all(|(_, s)| s == "in sync"), "{rows:?}");
    page_loaded(b, &t.base, "dataplanes-live").await;
    assert_valid_page(b, "dataplanes, live").await;

    // Its own page: the same, and what it was sent, as YAML.
    section.find(Locator::Css("h2 a")).await.unwrap().click().await.unwrap();
    let h1 = b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css("h1")).await.unwrap();
    assert_eq!(h1.text().await.unwrap(), format!("Dataplane {node}"));
    let body = b.find(Locator::Css("main")).await.unwrap();
    let rows = sync_rows(&body).await;
    assert!(!rows.is_empty() && rows.iter().all(|(_, s)| s == "in sync"), "{rows:?}");
    let page = b.source().await.unwrap();
    assert!(page.contains("inbound") && page.contains("9080"), "the config is shown:\n{page}");
    page_loaded(b, &t.base, "dataplane-live").await;
    assert_valid_page(b, "one dataplane, live").await;

    // A route made in the console: the live line counts the agent's answer.
    b.goto(&format!("{mesh_url}/config/http-routes")).await.unwrap();
    edit(b, "Review the new resource", &reviews_route_yaml("v1", false)).await;
    wait_for_text(b, "propagation", "applied by 1 of 1 proxies", within).await;
    page_loaded(b, &t.base, "route-applied-live").await;
    // An edit the agent cannot apply: rejected, by whom and why.
    edit(b, "Review changes", &reviews_route_yaml("v2", true)).await;
    let line = wait_for_parts(
        b,
        "propagation",
        &["rejected by 1: RouteConfiguration: ", "request mirroring"],
        within,
    )
    .await;
    assert!(line.starts_with("applied by 0 of 1 proxies"), "{line}");
    page_loaded(b, &t.base, "route-rejected-live").await;
    assert_valid_page(b, "a rejected route").await;

    // The dataplanes page shows the rejection with its reason, and so does the first
    // proxy's page (a NACK).
    b.goto(&format!("{mesh_url}/dataplanes")).await.unwrap();
    let section = b.find(Locator::XPath(&format!("//section[h2/a/code[text()='{node}']]"))).await.unwrap();
    let rows = sync_rows(&section).await;
    let route_row = rows.iter().find(|(t, _)| t == "RouteConfiguration").expect("routes were sent");
    assert!(
        route_row.1.starts_with("rejected version ") && route_row.1.contains("request mirroring"),
        "{rows:?}"
    );
    b.goto(&format!("{mesh_url}/workloads/{id}")).await.unwrap();
    assert_eq!(text_of(b, "first-proxy-state").await, format!("Proxy {node} rejected its configuration"));
    let steps = text_of(b, "first-proxy-steps").await;
    assert!(
        steps.contains("accepted its configuration: failed — rejected: ")
            && steps.contains("request mirroring"),
        "{steps}"
    );
    page_loaded(b, &t.base, "first-proxy-rejected").await;
    assert_valid_page(b, "first proxy, rejected").await;
    chromium.close().await;
    drop(agent);
}

#[tokio::test]
async fn the_first_proxy_page_names_a_tls_failure_as_likely_and_a_refused_token_as_certain() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    let api = sign_in_to_shop(b, &t, &db).await;
    let (token, root, id) = mint_and_watch(b, &t, "").await;
    let tmp = tempfile::tempdir().unwrap();

    // An agent pinning another installation's root never gets past TLS: nothing reaches the
    // token, and the page says where to look.
    let other = trellis_ca::PlatformCa::generate(Duration::from_secs(86_400), std::time::SystemTime::now())
        .unwrap()
        .root_pem();
    let wrong = tmp.path().join("other-ca.pem");
    std::fs::write(&wrong, other).unwrap();
    let run = |ca: &Path, dir: &str| {
        telemetry_agent(
            &t.xds,
            ca,
            &tmp.path().join(dir),
            &token,
            "reviews",
            "127.0.0.61",
            &["--port", "9080"],
        )
    };
    let mut agent = run(&wrong, "wrong-root");
    let said = agent.wait_for_line("trellis-agent: joining the mesh", Duration::from_secs(30)).await;
    assert!(said.to_lowercase().contains("certificate"), "a TLS error: {said}");
    assert!(!agent.wait(Duration::from_secs(10)).await.success(), "the agent cannot join");
    b.refresh().await.unwrap();
    assert_eq!(text_of(b, "first-proxy-state").await, "Waiting for an agent to use the join token…");
    let steps = text_of(b, "first-proxy-steps").await;
    assert!(
        steps.contains(
            "over TLS: no attempt seen yet — if the agent logs a TLS error, check --platform-ca and --server"
        ),
        "{steps}"
    );
    page_loaded(b, &t.base, "first-proxy-no-attempt").await;
    assert_valid_page(b, "first proxy, no attempt").await;

    // The token revoked: the page says so before any agent tries it…
    let (status, body) = api.delete(&format!("/meshes/shop/join-tokens/{id}")).await;
    assert!(status == 200 || status == 204, "{body}");
    b.refresh().await.unwrap();
    assert_eq!(text_of(b, "first-proxy-state").await, "The join token was refused");

    // …and once an agent (with the right root) presented it, that it was refused and why,
    // which also shows that TLS worked.
    let ca = tmp.path().join("platform-ca.pem");
    std::fs::write(&ca, &root).unwrap();
    let mut agent = run(&ca, "revoked");
    agent.wait_for_line("credential refused", Duration::from_secs(30)).await;
    assert!(!agent.wait(Duration::from_secs(10)).await.success(), "the agent is refused");
    b.refresh().await.unwrap();
    assert_eq!(text_of(b, "first-proxy-state").await, "The join token was refused: revoked join token");
    let steps = text_of(b, "first-proxy-steps").await;
    assert!(steps.contains("over TLS: done"), "{steps}");
    assert!(
        steps.contains("identity certificate: failed — token refused: revoked join token (at "),
        "{steps}"
    );
    page_loaded(b, &t.base, "first-proxy-refused").await;
    assert_valid_page(b, "first proxy, refused").await;

    // A token bound to version=v2, and an agent that claims v9: its identity is issued, its
    // xDS stream refused, and the page says why.
    let (bound, _, _) = mint_and_watch(b, &t, "version=v2").await;
    let mut agent = telemetry_agent(
        &t.xds,
        &ca,
        &tmp.path().join("v9"),
        &bound,
        "reviews",
        "127.0.0.61",
        &["--port", "9080", "--tags", "version=v9"],
    );
    agent.wait_for_line("joined the mesh", Duration::from_secs(30)).await;
    let parts = ["Identity issued, but its xDS stream was refused: ", "metadata.tags.version", "v9"];
    wait_for_parts(b, "first-proxy-state", &parts, Duration::from_secs(30)).await;
    let steps = text_of(b, "first-proxy-steps").await;
    assert!(
        steps.contains("over TLS: done")
            && steps.contains("identity certificate: done")
            && steps.contains("xDS stream to the control plane: failed — refused: "),
        "{steps}"
    );
    page_loaded(b, &t.base, "first-proxy-stream-refused").await;
    assert_valid_page(b, "first proxy, stream refused").await;
    chromium.close().await;
}
