//! The web console as a person meets it, in a real headless Chromium: the one-time login
//! link, an organization's meshes, creating a mesh with the server's errors beside the
//! field; and what a page must never do (show another tenant's data, let a viewer write,
//! accept a form without its CSRF token, load anything from another host).

use std::time::Duration;

use fantoccini::Locator;
use fantoccini::key::Key;
use trellis_model::{OrgSlug, Role};
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::console::{
    OrgIds, as_user, assert_hidden_from, assert_valid_html, csrf_of, login_link, page_loaded, session, start,
};

/// A proxy of service `api` as the xDS server records one: registered, its clusters sent
/// (and kept in readable form) and accepted, its listeners rejected. Its id.
async fn ledger_of_a_proxy(db: &TestDb, slug: &str, mesh: &str) -> uuid::Uuid {
    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let store = db.store().await;
    let org = store.org_by_slug(&OrgSlug::parse(slug).unwrap()).await.unwrap().unwrap();
    let mut tx = store.tenant(org.id).await.unwrap();
    let m = tx.mesh_by_name(&trellis_model::MeshName::parse(mesh).unwrap()).await.unwrap().unwrap();
    let registration = trellis_store::Registration {
        service: "api".into(),
        node_id: "api-1".into(),
        client: "agent".into(),
        address: Some("10.0.0.7".parse().unwrap()),
        ports: vec![9080],
        tags: serde_json::json!({ "version": "v1" }),
        zone: String::new(),
        replica: "test".into(),
    };
    let d = tx.register_dataplane(m.id, &registration).await.unwrap();
    let clusters = serde_json::json!([{ "name": "outbound|9080||api", "type": "EDS" }]);
    tx.record_xds_config(m.id, CLUSTER, "1", &clusters).await.unwrap();
    tx.ledger_sent(d.id, CLUSTER, "1", "n1", m.revision).await.unwrap();
    tx.ledger_acked(d.id, CLUSTER, "1", Some(12.0)).await.unwrap();
    tx.ledger_sent(d.id, LISTENER, "2", "n2", m.revision).await.unwrap();
    tx.ledger_nacked(d.id, LISTENER, "2", "listener api: bind failed").await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;
    d.id
}

const SERVICE_YAML: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata:
  name: reviews
  mesh: shop
spec:
  ports:
    - name: http
      port: 9080
      protocol: http
";

/// Replaces the YAML editor's content by typing `text` into it.
async fn type_yaml(b: &fantoccini::Client, text: &str) {
    let editor = b.find(Locator::Id("yaml-editor")).await.unwrap();
    editor.clear().await.unwrap();
    editor.send_keys(text).await.unwrap();
}

/// Replaces the value of the input `id` by typing `value`.
async fn set_field(b: &fantoccini::Client, id: &str, value: &str) {
    let input = b.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

#[tokio::test]
async fn the_login_link_opens_the_console_where_a_mesh_is_created_with_errors_beside_the_field() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    // After each page load: it asked nothing of any other host, and is saved as a screenshot.
    let loaded = |name: &'static str| page_loaded(b, &t.base, name);

    b.goto(&t.base).await.unwrap();
    b.find(Locator::XPath("//h1[text()='Sign in to Trellis']")).await.unwrap();
    loaded("sign-in").await;
    b.goto(&login_link(&t)).await.unwrap();
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/orgs/default", "the link lands on the organization's page");
    let h1 = b.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "default");
    assert!(b.source().await.unwrap().contains("No meshes yet"));
    loaded("org").await;

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
    loaded("org-invalid").await;

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
    let summary = b.find(Locator::Id("propagation-summary")).await.unwrap().text().await.unwrap();
    assert_eq!(summary, "0 proxies: 0 in sync, 0 syncing, 0 rejecting, 0 offline.");
    // The rotation's three steps, each saying what it does, the next one marked.
    let steps = b.find_all(Locator::Css("#rotation-steps li")).await.unwrap();
    let mut texts = Vec::new();
    for step in &steps {
        texts.push(step.text().await.unwrap());
    }
    assert_eq!(texts.len(), 3, "{texts:?}");
    for (text, (step, does)) in texts.iter().zip([
        ("Prepare a new root — the next step", "Adds a new root to the trust bundle without signing with it"),
        ("Activate the new root", "New workload certificates are signed by the new root"),
        ("Retire the old root", "Removes the old root from the trust bundle"),
    ]) {
        assert!(text.starts_with(step) && text.contains(does), "{text:?}: {step:?}, {does:?}");
    }
    let current = b.find(Locator::Css("#rotation-steps li[aria-current=step] strong")).await.unwrap();
    assert_eq!(current.text().await.unwrap(), "Prepare a new root");
    loaded("mesh").await;

    // Configuration from the mesh's page: a Service created from YAML, reviewed as a diff
    // from nothing, then saved.
    let api =
        trellis_tests::Api::new(&t, "default", &trellis_tests::token(&db, "default", Role::Editor).await);
    b.find(Locator::Css("a[aria-label='New Service']")).await.unwrap().click().await.unwrap();
    b.find(Locator::Id("yaml-editor")).await.unwrap();
    loaded("services").await;
    type_yaml(b, SERVICE_YAML).await;
    b.find(Locator::XPath("//button[text()='Review the new resource']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let added = b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("diff")).await.unwrap();
    assert!(added.text().await.unwrap().contains("port: 9080"), "the new document is shown");
    loaded("service-review").await;
    b.find(Locator::XPath("//button[text()='Save']")).await.unwrap().click().await.unwrap();
    let shop = url.join("/orgs/default/meshes/shop/config/").unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_url(&shop.join("services/reviews?saved=1").unwrap())
        .await
        .unwrap();
    let line = b.find(Locator::Id("propagation")).await.unwrap().text().await.unwrap();
    assert_eq!(line, "applied by 0 of 0 proxies", "no proxy yet");
    loaded("service-saved").await;

    // The seed's route, typed in with an even split, then set to 75/25 through its form.
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reviews.yaml")).unwrap();
    let route = seed.split("---").find(|d| d.contains("kind: HTTPRoute")).unwrap().trim().to_owned();
    b.goto(shop.join("http-routes").unwrap().as_str()).await.unwrap();
    loaded("http-routes").await;
    type_yaml(b, &route.replace("weight: 75", "weight: 50").replace("weight: 25", "weight: 50")).await;
    b.find(Locator::XPath("//button[text()='Review the new resource']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("diff")).await.unwrap();
    loaded("route-new-review").await;
    b.find(Locator::XPath("//button[text()='Save']")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_url(&shop.join("http-routes/reviews?saved=1").unwrap())
        .await
        .unwrap();
    loaded("route").await;
    let v1 = "spec-rules-1-backendRefs-0-weight";
    let v2 = "spec-rules-1-backendRefs-1-weight";
    // A weight the model refuses comes back beside that weight's input, with what was typed.
    set_field(b, v1, "-5").await;
    b.find(Locator::XPath("//button[text()='Review weights']")).await.unwrap().click().await.unwrap();
    let error = b
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Id(&format!("{v1}-error")))
        .await
        .unwrap();
    assert!(error.text().await.unwrap().contains("-5"), "the error names the bad value");
    let kept = b.find(Locator::Id(v1)).await.unwrap().prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("-5"));
    assert!(b.find(Locator::Id(&format!("{v2}-error"))).await.is_err(), "only the bad field has an error");
    loaded("route-invalid-weight").await;
    set_field(b, v1, "75").await;
    set_field(b, v2, "25").await;
    b.find(Locator::XPath("//button[text()='Review weights']")).await.unwrap().click().await.unwrap();
    let diff = b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("diff")).await.unwrap();
    let removed = diff.find_all(Locator::Css("tr.removed")).await.unwrap();
    let added = diff.find_all(Locator::Css("tr.added")).await.unwrap();
    let (mut gone, mut come) = (Vec::new(), Vec::new());
    for r in removed {
        gone.push(r.text().await.unwrap());
    }
    for r in added {
        come.push(r.text().await.unwrap());
    }
    assert_eq!(gone.len(), 2, "two weights go: {gone:?}");
    assert!(gone.iter().all(|l| l.contains("weight: 50")), "{gone:?}");
    assert!(
        come.iter().any(|l| l.contains("weight: 75")) && come.iter().any(|l| l.contains("weight: 25")),
        "{come:?}"
    );
    loaded("route-review").await;
    b.find(Locator::XPath("//button[text()='Save']")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_url(&shop.join("http-routes/reviews?saved=1").unwrap())
        .await
        .unwrap();
    let line = b.find(Locator::Id("propagation")).await.unwrap().text().await.unwrap();
    assert!(line.starts_with("applied by 0 of 0 proxies"), "{line}");
    loaded("route-saved").await;
    // What is stored is the seed's route: applying the seed changes nothing.
    let seed_route: serde_json::Value = serde_yaml::from_str(&route).unwrap();
    let res = api
        .req(reqwest::Method::PUT, "/meshes/shop/http-routes/reviews")
        .json(&seed_route)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("trellis-unchanged").map(|v| v.to_str().unwrap()), Some("true"));

    // An edit reviewed while someone else changes the route is refused at saving, not
    // written over theirs.
    set_field(b, v1, "70").await;
    set_field(b, v2, "30").await;
    b.find(Locator::XPath("//button[text()='Review weights']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("diff")).await.unwrap();
    let mut theirs = seed_route.clone();
    theirs["metadata"]["labels"] = serde_json::json!({ "owner": "someone-else" });
    let (status, body) = api.put("/meshes/shop/http-routes/reviews", &theirs).await;
    assert_eq!(status, 200, "{body}");
    b.find(Locator::XPath("//button[text()='Save']")).await.unwrap().click().await.unwrap();
    let refusal =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("edit-error")).await.unwrap();
    assert!(refusal.text().await.unwrap().contains("changed since you began editing"));
    loaded("route-save-refused").await;
    let (_, stored) = api.get("/meshes/shop/http-routes/reviews").await;
    assert_eq!(stored["metadata"]["labels"]["owner"], "someone-else");
    assert_eq!(stored["spec"]["rules"][1]["backendRefs"][0]["weight"], 75);

    // Connect a workload: a join token for one of the mesh's services, shown once with the
    // commands that run an agent, and good for an SVID.
    b.goto(&format!("{}/orgs/default/meshes/shop", t.base)).await.unwrap();
    loaded("mesh-configured").await;
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
    let systemd = b.find(Locator::Id("agent-systemd")).await.unwrap().text().await.unwrap();
    for part in [
        format!("TRELLIS_SERVER={}", t.xds),
        "TRELLIS_MESH=shop".into(),
        "TRELLIS_SERVICE=reviews".into(),
        "TRELLIS_TAGS=version=v2".into(),
        "trellis install agent-systemd".into(),
        "systemctl enable --now trellis-agent".into(),
    ] {
        assert!(systemd.contains(&part), "{part:?} missing from:\n{systemd}");
    }
    // Kubernetes: the names `trellis inject`'s sidecar reads, the token and the root in them.
    let kube = b.find(Locator::Id("agent-kubernetes")).await.unwrap().text().await.unwrap();
    for part in [
        "create configmap trellis-platform-ca --from-file=ca.pem=".to_owned(),
        "BEGIN CERTIFICATE".into(),
        format!(
            "printf %s '{token}' | kubectl -n <namespace> create secret generic trellis-join-reviews --from-file=token="
        ),
        format!(
            "trellis inject --mesh shop --server {} --service reviews -f <workload>.yaml | kubectl -n <namespace> apply -f -",
            t.xds
        ),
        "binds the tags version=v2".into(),
    ] {
        assert!(kube.contains(&part), "{part:?} missing from:\n{kube}");
    }
    loaded("connect-workload").await;
    let store = db.store().await;
    let root = trellis_tests::grpc::platform_root(&store).await;
    store.close().await;
    // Waiting for the first proxy: the page names the step it is at.
    b.find(Locator::LinkText("Watch for the first proxy")).await.unwrap().click().await.unwrap();
    let state =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("first-proxy-state")).await.unwrap();
    assert_eq!(state.text().await.unwrap(), "Waiting for an agent to use the join token…");
    loaded("first-proxy-waiting").await;
    trellis_tests::grpc::issue(&t.xds, &root, &token).await.expect("the token shown is good for an SVID");
    b.refresh().await.unwrap();
    let state = b.find(Locator::Id("first-proxy-state")).await.unwrap().text().await.unwrap();
    assert_eq!(state, "Identity issued, but no xDS stream yet", "the failing step is named");
    let steps = b.find(Locator::Id("first-proxy-steps")).await.unwrap().text().await.unwrap();
    assert!(
        steps.contains("identity certificate: done")
            && steps.contains("xDS stream to the control plane: failed"),
        "{steps}"
    );
    loaded("first-proxy").await;

    // Rotate the mesh's root, one step at a time, each saying what it will do.
    b.goto(&format!("{}/orgs/default/meshes/shop", t.base)).await.unwrap();
    for (button, phase, next) in [
        ("Prepare a new root", "prepared", "Activate the new root"),
        ("Activate the new root", "rotated", "Retire the old root"),
    ] {
        b.find(Locator::XPath(&format!("//button[text()='{button}']"))).await.unwrap().click().await.unwrap();
        let xpath = format!("//p[contains(., 'Phase')]/strong[text()='{phase}']");
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::XPath(&xpath)).await.unwrap();
        let current = b.find(Locator::Css("#rotation-steps li[aria-current=step] strong")).await.unwrap();
        assert_eq!(current.text().await.unwrap(), next, "the step after {button:?} is marked");
        b.execute("document.getElementById('rotation-steps').scrollIntoView()", vec![]).await.unwrap();
        loaded(if phase == "prepared" { "ca-prepared" } else { "ca-rotated" }).await;
    }
    // The old root signed the SVID above, which has not expired: retiring it is refused, saying why.
    b.find(Locator::XPath("//button[text()='Retire the old root']")).await.unwrap().click().await.unwrap();
    let refusal = Locator::XPath("//p[contains(., 'unexpired certificates still chain to this CA')]");
    b.wait().at_most(Duration::from_secs(5)).for_element(refusal).await.unwrap();
    loaded("ca-retire-refused").await;

    // The dataplanes page, and the mesh's unexpected traffic: nothing yet.
    b.goto(&format!("{}/orgs/default/meshes/shop/dataplanes", t.base)).await.unwrap();
    b.find(Locator::XPath("//p[text()='No proxy has connected yet.']")).await.unwrap();
    loaded("dataplanes").await;
    b.goto(&format!("{}/orgs/default/meshes/shop/events", t.base)).await.unwrap();
    b.find(Locator::Css("h1")).await.unwrap();
    loaded("events").await;

    // Back on the organization's page, the mesh is listed.
    b.goto(&format!("{}/orgs/default", t.base)).await.unwrap();
    b.find(Locator::LinkText("shop")).await.unwrap();
    loaded("org-with-mesh").await;

    // An API token, shown once, works against the API until it is revoked here.
    b.find(Locator::LinkText("API tokens")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("token-name")).await.unwrap();
    loaded("tokens").await;
    b.find(Locator::Id("token-name")).await.unwrap().send_keys("ci").await.unwrap();
    b.find(Locator::XPath("//button[text()='Create token']")).await.unwrap().click().await.unwrap();
    let pat = b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("new-token")).await.unwrap();
    let pat = pat.text().await.unwrap();
    assert!(pat.starts_with("trls_pat_"), "{pat}");
    loaded("token-created").await;
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
    loaded("token-revoked").await;

    // The audit log shows each step, and filters.
    b.goto(&format!("{}/orgs/default", t.base)).await.unwrap();
    b.find(Locator::LinkText("Audit log")).await.unwrap().click().await.unwrap();
    let log =
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::Id("audit-events")).await.unwrap();
    let log = log.text().await.unwrap();
    loaded("audit").await;
    for action in [
        "mesh.create",
        "service.create",
        "httproute.create",
        "httproute.update",
        "join-token.create",
        "ca.rotation.prepare",
        "ca.rotation.activate",
        "token.create",
        "token.revoke",
    ] {
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
    loaded("audit-by-action").await;
    // By target: the route's creation and update from the console, and the API token's update.
    let audit = format!("{}/orgs/default/audit", t.base);
    let audit = &audit;
    let filter = |field: &'static str, value: String| async move {
        b.goto(audit).await.unwrap();
        b.find(Locator::Id(field)).await.unwrap().send_keys(&value).await.unwrap();
        b.find(Locator::XPath("//button[text()='Filter']")).await.unwrap().click().await.unwrap();
        let field = format!("//input[@id='{field}' and @value='{value}']");
        b.wait().at_most(Duration::from_secs(5)).for_element(Locator::XPath(&field)).await.unwrap();
        let mut rows = Vec::new();
        for row in b.find_all(Locator::Css("#audit-events tbody tr")).await.unwrap() {
            let cells = row.find_all(Locator::Css("td")).await.unwrap();
            let mut text = Vec::new();
            for c in cells {
                text.push(c.text().await.unwrap());
            }
            rows.push(text);
        }
        rows
    };
    let rows = filter("audit-target", "meshes/shop/http-routes".into()).await;
    let actions: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(actions, ["httproute.update", "httproute.update", "httproute.create"], "{rows:?}");
    assert!(rows.iter().all(|r| r[3] == "meshes/shop/http-routes/reviews"), "{rows:?}");
    loaded("audit-by-target").await;
    // By actor: the API token's write alone, not the signed-in user's.
    let token_actor = rows.iter().map(|r| r[1].clone()).find(|a| a.starts_with("token:")).unwrap();
    let rows = filter("audit-actor", token_actor.clone()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0][1].as_str(), rows[0][2].as_str()), (token_actor.as_str(), "httproute.update"));
    loaded("audit-by-actor").await;

    // Signing out ends the session: the console asks to sign in again.
    b.find(Locator::Css("header form button")).await.unwrap().click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath("//h1[text()='Sign in to Trellis']"))
        .await
        .unwrap();
    loaded("signed-out").await;
    b.goto(&format!("{}/orgs/default", t.base)).await.unwrap();
    let h1 = b.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "Sign in to Trellis");
    loaded("signed-out-org").await;
    chromium.close().await;
}

/// Presses each key of `keys` (a character, or a [`Key`] such as Tab), as a keyboard would.
async fn press(b: &fantoccini::Client, keys: &str) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let mut actions = KeyActions::new("keyboard".into());
    for value in keys.chars() {
        actions = actions.then(KeyAction::Down { value }).then(KeyAction::Up { value });
    }
    b.perform_actions(actions).await.unwrap();
}

/// The id, or else the text, of the element that has the keyboard's focus.
async fn focused(b: &fantoccini::Client) -> String {
    let e = b.active_element().await.unwrap();
    match e.attr("id").await.unwrap() {
        Some(id) if !id.is_empty() => format!("#{id}"),
        _ => e.text().await.unwrap(),
    }
}

#[tokio::test]
async fn a_mesh_is_created_with_the_keyboard_alone() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    b.goto(&login_link(&t)).await.unwrap();
    b.find(Locator::Id("mesh-name")).await.unwrap();

    // Tab from the top of the page to the name field, passing every control before it.
    let mut passed = Vec::new();
    while focused(b).await != "#mesh-name" {
        assert!(passed.len() < 20, "Tab never reaches the mesh's name; it went through {passed:?}");
        press(b, &Key::Tab.to_string()).await;
        passed.push(focused(b).await);
    }
    press(b, "keys").await;
    // Down arrows pick the options of the two selects; Tab goes on to the button.
    press(b, &Key::Tab.to_string()).await;
    assert_eq!(focused(b).await, "#mesh-mtls");
    press(b, &(Key::Down + "")).await;
    press(b, &Key::Tab.to_string()).await;
    assert_eq!(focused(b).await, "#mesh-access");
    press(b, &Key::Tab.to_string()).await;
    assert_eq!(focused(b).await, "Create mesh");
    press(b, &Key::Enter.to_string()).await;
    let created = Locator::XPath("//h1[text()='Mesh keys']");
    b.wait().at_most(Duration::from_secs(5)).for_element(created).await.unwrap();
    page_loaded(b, &t.base, "keyboard-mesh-created").await;
    let page = b.source().await.unwrap();
    assert!(page.contains("mTLS PERMISSIVE"), "the option picked with the arrow key was sent:\n{page}");
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
    // Nor links to the pages a viewer may not open (the API tokens, the audit log).
    assert!(page.contains("href=\"/orgs/acme/members\""), "{page}");
    for link in ["href=\"/orgs/acme/tokens\"", "href=\"/orgs/acme/audit\""] {
        assert!(!page.contains(link), "a viewer sees {link}:\n{page}");
        let owners = get(&owner, "/orgs/acme").send().await.unwrap().text().await.unwrap();
        assert!(owners.contains(link), "the owner misses {link}:\n{owners}");
    }
    let viewer_csrf =
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    let mut post = form(&viewer_csrf);
    post[1].1 = "viewer-mesh".into();
    let res = as_user(&viewer, http.post(format!("{}/orgs/acme", t.base)).form(&post)).send().await.unwrap();
    assert_eq!(res.status(), 403);

    // Configuration: a Service saved from YAML, its page, the review of an edit, the
    // dataplanes: each valid HTML.
    let config = format!("{}/orgs/acme/meshes/web/config", t.base);
    let service = SERVICE_YAML.replace("name: reviews", "name: api").replace("mesh: shop", "mesh: web");
    let post = |secret: &str, url: String, fields: Vec<(&str, String)>| {
        as_user(secret, http.post(url).form(&fields)).send()
    };
    let res = post(
        &owner,
        format!("{config}/services"),
        vec![("csrf", csrf.clone()), ("step", "save".into()), ("yaml", service.clone())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
    assert_eq!(res.headers()["location"], "/orgs/acme/meshes/web/config/services/api?saved=1");
    let proxy = ledger_of_a_proxy(&db, "acme", "web").await;
    // The mesh's page sums its proxies up by the dataplane list's rule, with the rejection.
    let page = get(&owner, "/orgs/acme/meshes/web").send().await.unwrap().text().await.unwrap();
    let summary = page.split("id=\"propagation-summary\">").nth(1).unwrap().split("</p>").next().unwrap();
    let text: String = summary.split('<').map(|s| s.split_once('>').map_or(s, |(_, t)| t)).collect();
    assert_eq!(
        text,
        "1 proxy: 0 in sync, 0 syncing, 1 rejecting, 0 offline (last rejection: api-1 refused Listener \
         version 2: listener api: bind failed)."
    );
    let page = get(&owner, "/orgs/acme/meshes/web/dataplanes").send().await.unwrap().text().await.unwrap();
    for shown in ["api-1", "in sync", "rejected version 2: listener api: bind failed", "rejected"] {
        assert!(page.contains(shown), "{shown:?} missing from the dataplanes page:\n{page}");
    }
    let page = get(&owner, &format!("/orgs/acme/meshes/web/dataplanes/{proxy}")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("outbound|9080||api") && page.contains("type: EDS"),
        "the config is shown as YAML:\n{page}"
    );
    assert_valid_html("dataplane", &page).await;
    for path in ["/config/services", "/config/services/api?saved=1", "/dataplanes"] {
        let res = get(&owner, &format!("/orgs/acme/meshes/web{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_valid_html(path, &res.text().await.unwrap()).await;
    }
    let page =
        get(&owner, "/orgs/acme/meshes/web/config/services/api").send().await.unwrap().text().await.unwrap();
    let version =
        page.split("name=\"version\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    let edited = service.replace("port: 9080", "port: 9090");
    let review = |secret: &str, csrf: &str| {
        post(
            secret,
            format!("{config}/services/api"),
            vec![
                ("csrf", csrf.to_owned()),
                ("step", "review".into()),
                ("source", "yaml".into()),
                ("version", version.clone()),
                ("yaml", edited.clone()),
            ],
        )
    };
    let res = review(&owner, &csrf).await.unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("port: 9090") && page.contains("port: 9080"), "{page}");
    assert_valid_html("review", &page).await;
    // A bad document is shown again with the field's path and the model's words.
    let res = post(
        &owner,
        format!("{config}/services/api"),
        vec![
            ("csrf", csrf.clone()),
            ("step", "review".into()),
            ("source", "yaml".into()),
            ("version", version.clone()),
            ("yaml", service.replace("port: 9080", "port: 0")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("spec.ports[0].port"), "{page}");
    assert_valid_html("refused edit", &page).await;
    // Without the CSRF token an edit is refused and nothing changes.
    let save_without_csrf = post(
        &owner,
        format!("{config}/services/api"),
        vec![("step", "save".into()), ("version", version.clone()), ("yaml", edited.clone())],
    );
    assert_eq!(save_without_csrf.await.unwrap().status(), 403);
    let page =
        get(&owner, "/orgs/acme/meshes/web/config/services/api").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("port: 9080") && !page.contains("port: 9090"));

    // A viewer reads configuration without edit controls; posting anyway is a 403.
    let page =
        get(&viewer, "/orgs/acme/meshes/web/config/services/api").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("port: 9080"), "{page}");
    for control in ["yaml-editor", "Review", "name=\"step\""] {
        assert!(!page.contains(control), "a viewer sees {control:?}:\n{page}");
    }
    let page = get(&viewer, "/orgs/acme/meshes/web").send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("aria-label=\"New "), "{page}");
    assert_eq!(review(&viewer, &viewer_csrf).await.unwrap().status(), 403);
    let res = post(
        &viewer,
        format!("{config}/services"),
        vec![
            ("csrf", viewer_csrf.clone()),
            ("step", "save".into()),
            ("yaml", service.replace("name: api", "name: other")),
        ],
    );
    assert_eq!(res.await.unwrap().status(), 403);

    // The organization's other pages, each valid: API tokens (one minted), the audit log,
    // a join token with the agent's commands, its first proxy, unexpected traffic, and the
    // error pages.
    for path in ["/orgs/acme/tokens", "/orgs/acme/audit", "/orgs/acme/audit?action=mesh.create"] {
        let res = get(&owner, path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_valid_html(path, &res.text().await.unwrap()).await;
    }
    let minted = as_user(&owner, http.post(format!("{}/orgs/acme/tokens", t.base)))
        .form(&[("csrf", csrf.as_str()), ("name", "ci"), ("role", "viewer")])
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 200);
    let page = minted.text().await.unwrap();
    assert!(page.contains("id=\"new-token\""), "{page}");
    assert_valid_html("token minted", &page).await;
    let api_token = page.split("/orgs/acme/tokens/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let joined = as_user(&owner, http.post(format!("{}/orgs/acme/meshes/web/workloads", t.base)))
        .form(&[("csrf", csrf.as_str()), ("service", "api"), ("tags", "version=v1")])
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), 200);
    let page = joined.text().await.unwrap();
    assert!(page.contains("id=\"join-token\""), "{page}");
    assert_valid_html("join token", &page).await;
    let join_token =
        page.split("/orgs/acme/meshes/web/workloads/").nth(1).unwrap().split('"').next().unwrap().to_owned();
    for path in
        [format!("/orgs/acme/meshes/web/workloads/{join_token}"), "/orgs/acme/meshes/web/events".into()]
    {
        let res = get(&owner, &path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_valid_html(&path, &res.text().await.unwrap()).await;
    }
    for (path, status) in [
        ("/orgs/acme/meshes/nowhere", 404),
        ("/orgs/acme/meshes/web/events/not-an-event/draft", 404),
        ("/orgs/acme/meshes/web/topology?window=5", 400),
    ] {
        let res = get(&owner, path).send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_valid_html(path, &res.text().await.unwrap()).await;
    }
    let res = get(&viewer, "/orgs/acme/tokens").send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_valid_html("403", &res.text().await.unwrap()).await;

    // Another organization's user finds nothing of acme's: every page and form is a 404.
    let mut ids = OrgIds::new("acme", "web");
    ids.proxy = proxy.to_string();
    ids.api_token = api_token;
    ids.join_token = join_token;
    let stranger_csrf = csrf_of(&get(&stranger, "/orgs/globex").send().await.unwrap().text().await.unwrap());
    assert_hidden_from(&t, &stranger, &stranger_csrf, &ids, "9080").await;
    let home = get(&stranger, "/").send().await.unwrap();
    assert_eq!(home.headers()["location"], "/orgs/globex");

    // An API token does not open the console.
    let token = trellis_tests::token(&db, "acme", Role::Owner).await;
    let res = http.get(format!("{}/orgs/acme", t.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
}

/// Whether `path` (query aside) is an instance of the route `pattern` (`{name}` segments
/// match any one segment).
fn matches_route(pattern: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap();
    let (p, u): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == u.len() && p.iter().zip(&u).all(|(p, u)| p.starts_with('{') || p == u)
}

#[test]
fn every_console_route_of_an_organization_is_in_the_list_the_tenancy_checks_walk() {
    let urls = trellis_tests::console::org_urls(&OrgIds::new("acme", "web"));
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/src");
    let mut routes = 0;
    for file in std::fs::read_dir(&web).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(path).unwrap();
        // Each route is one line: `.route("/orgs/{org}/…", get(page).post(form))`.
        for line in source.lines().filter(|l| l.trim_start().starts_with(".route(\"/orgs/")) {
            let pattern = line.split('"').nth(1).unwrap();
            for (method, call) in [(reqwest::Method::GET, "get("), (reqwest::Method::POST, "post(")] {
                if line.contains(call) {
                    routes += 1;
                    assert!(
                        urls.iter().any(|(m, u)| *m == method && matches_route(pattern, u)),
                        "{method} {pattern} is not in trellis_tests::console::org_urls"
                    );
                }
            }
        }
    }
    assert!(routes > 30, "only {routes} routes found under {}", web.display());
}
