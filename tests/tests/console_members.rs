//! The console's members and certificate-authority pages, in a real headless Chromium: an
//! owner invites, the invitee opens the link and joins, roles change, a member is removed,
//! the last owner is kept (the refusal beside the control); a tenant's own intermediate is
//! brought in (CSR downloaded, signed by a root made here, a bad chain refused beside the
//! field, the good one prepared and activated) and the SVID lifetime set. Then, over plain
//! HTTP, the same rules as the API: a viewer sees no controls and gets 403 posting anyway, a
//! post without the CSRF token is refused, another organization finds nothing (404).

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::json;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::browser::Chromium;
use trellis_tests::browser::assert_only_to;
use trellis_tests::console::{
    OrgIds, SESSION_COOKIE, as_user, assert_hidden_from, assert_valid_html, csrf_of, login_link, page_loaded,
    session, start,
};
use trellis_tests::tenant_root::TenantRoot;
use trellis_tests::{Api, token};

const WAIT: Duration = Duration::from_secs(5);

async fn click(b: &Client, xpath: &str) {
    b.find(Locator::XPath(xpath)).await.unwrap_or_else(|e| panic!("{xpath}: {e}")).click().await.unwrap();
}

async fn wait_for(b: &Client, xpath: &str) -> fantoccini::elements::Element {
    match b.wait().at_most(WAIT).for_element(Locator::XPath(xpath)).await {
        Ok(e) => e,
        Err(e) => panic!("{xpath} did not appear ({e}):\n{}", b.source().await.unwrap_or_default()),
    }
}

/// Replaces the value of the field `id` by typing `value`.
async fn set_field(b: &Client, id: &str, value: &str) {
    let input = b.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

/// After a page load: it asked nothing of any other host (`origin` is Trellis); saved as a
/// screenshot `name`, scrolled to the element `id`.
async fn shot(b: &Client, origin: &str, name: &str, id: &str) {
    b.execute("document.getElementById(arguments[0]).scrollIntoView()", vec![json!(id)]).await.unwrap();
    page_loaded(b, origin, name).await;
}

/// The xpath of the members table's row of `name`.
fn row(name: &str) -> String {
    format!("//table[@id='members']//tr[td[1][text()='{name}']]")
}

#[tokio::test]
async fn an_owner_invites_changes_roles_and_removes_members_and_brings_a_tenant_intermediate() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let chromium = Chromium::start().await;
    let b = &chromium.client;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // The local admin, owner of `default`, opens the members page from the organization's.
    b.goto(&login_link(&t)).await.unwrap();
    assert_only_to(b, &t.base).await;
    click(b, "//a[text()='Members']").await;
    wait_for(b, "//h1[text()='Members']").await;
    wait_for(b, &format!("{}/td[@class='role' and text()='owner']", row("Local admin"))).await;
    shot(b, &t.base, "members-page", "members").await;

    // An invitation: its link is shown once.
    set_field(b, "invite-email", "ivan@example.com").await;
    b.find(Locator::Css("#invite-role option[value=editor]")).await.unwrap().click().await.unwrap();
    click(b, "//button[text()='Invite']").await;
    let link = wait_for(b, "//code[@id='invite-link']").await.text().await.unwrap();
    assert!(link.starts_with(&format!("{}/invites/trls_inv_", t.base)), "{link}");
    wait_for(b, "//table[@id='invites']//tr[td[text()='ivan@example.com']]/td[text()='pending']").await;
    shot(b, &t.base, "members-invited", "invite-link").await;
    // (A reload would post the form again: the page is opened anew.)
    let members = format!("{}/orgs/default/members", t.base);
    b.goto(&members).await.unwrap();
    assert!(!b.source().await.unwrap().contains(&link), "the link is shown only once");
    assert_only_to(b, &t.base).await;

    // Opened signed out, the link asks to sign in first.
    let res = http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("then open the invitation link again"), "{page}");
    assert_valid_html("invitation, signed out", &page).await;

    // Ivan, signed in with the invited address, opens the link and joins.
    let ivan = session(&db, "ivan", "ivan", Role::Owner).await;
    let res = as_user(&ivan, http.get(&link)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = res.text().await.unwrap();
    assert_valid_html("accept an invitation", &page).await;
    let accept = |csrf: String| as_user(&ivan, http.post(&link).form(&[("csrf", csrf)])).send();
    assert_eq!(accept(String::new()).await.unwrap().status(), 403, "the CSRF token is needed");
    let res = accept(csrf_of(&page)).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/orgs/default/members");
    assert_eq!(accept(csrf_of(&page)).await.unwrap().status(), 404, "an invitation is used once");

    // Ivan now belongs to two organizations: the switcher lists both, the current one
    // marked, and its other link opens the other organization (where, an editor, he is
    // offered neither API tokens nor the audit log).
    let switcher = |page: &str| {
        let nav =
            page.split("<nav aria-label=\"Organizations\">").nth(1).unwrap().split("</nav>").next().unwrap();
        nav.to_owned()
    };
    let own = as_user(&ivan, http.get(format!("{}/orgs/ivan", t.base))).send().await.unwrap();
    let nav = switcher(&own.text().await.unwrap());
    assert!(
        nav.contains("href=\"/orgs/ivan\" aria-current=\"page\"")
            && nav.contains("href=\"/orgs/default\">default</a>"),
        "{nav}"
    );
    let other = as_user(&ivan, http.get(format!("{}/orgs/default", t.base))).send().await.unwrap();
    assert_eq!(other.status(), 200);
    let page = other.text().await.unwrap();
    let nav = switcher(&page);
    assert!(
        nav.contains("href=\"/orgs/default\" aria-current=\"page\"")
            && nav.contains("href=\"/orgs/ivan\">ivan</a>"),
        "{nav}"
    );
    assert!(page.contains("<h1>default</h1>") && page.contains("href=\"/orgs/default/members\""), "{page}");
    assert!(!page.contains("/orgs/default/tokens") && !page.contains("/orgs/default/audit"), "{page}");

    // The owner sees Ivan as an editor; demotes him to viewer.
    b.goto(&members).await.unwrap();
    wait_for(b, &format!("{}/td[@class='role' and text()='editor']", row("ivan"))).await;
    assert_only_to(b, &t.base).await;
    wait_for(b, "//table[@id='invites']//tr[td[text()='ivan@example.com']]/td[text()='accepted']").await;
    let invitations = b.find_all(Locator::Css("#invites tbody tr")).await.unwrap();
    assert_eq!(invitations.len(), 1, "one invitation, accepted");
    click(b, &format!("{}//select/option[@value='viewer']", row("ivan"))).await;
    click(b, "//button[@aria-label='Change the role of ivan']").await;
    wait_for(b, &format!("{}/td[@class='role' and text()='viewer']", row("ivan"))).await;

    // The only owner cannot step down: the refusal is shown in their row.
    click(b, &format!("{}//select/option[@value='admin']", row("Local admin"))).await;
    click(b, "//button[@aria-label='Change the role of Local admin']").await;
    let refusal = wait_for(b, &format!("{}//p[@class='field-error']", row("Local admin"))).await;
    assert!(
        refusal.text().await.unwrap().contains("at least one owner"),
        "{}",
        refusal.text().await.unwrap()
    );
    wait_for(b, &format!("{}/td[@class='role' and text()='owner']", row("Local admin"))).await;
    shot(b, &t.base, "members-last-owner", "members").await;

    // Ivan is removed; a second invitation is revoked.
    click(b, "//button[@aria-label='Remove ivan']").await;
    wait_for(b, "//h1[text()='Members']").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath("//table[@id='members' and not(.//td[text()='ivan'])]"))
        .await
        .unwrap();
    set_field(b, "invite-email", "joan@example.com").await;
    click(b, "//button[text()='Invite']").await;
    wait_for(b, "//code[@id='invite-link']").await;
    click(b, "//button[@aria-label='Revoke the invitation of joan@example.com']").await;
    wait_for(b, "//table[@id='invites']//tr[td[text()='joan@example.com']]/td[text()='revoked']").await;
    shot(b, &t.base, "members", "invites").await;

    // Bring your own intermediate on a new mesh: the CSR is downloaded and signed offline.
    let api = Api::new(&t, "default", &token(&db, "default", Role::Owner).await);
    let (status, body) = api.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    b.goto(&format!("{}/orgs/default/meshes/shop", t.base)).await.unwrap();
    shot(b, &t.base, "ca", "ca").await;
    click(b, "//button[text()='Create an intermediate CSR']").await;
    let download = wait_for(b, "//a[@id='download-csr']").await;
    let href = download.attr("href").await.unwrap().unwrap();
    wait_for(b, "//p[contains(., 'Phase')]/strong[text()='awaiting-chain']").await;
    shot(b, &t.base, "ca-awaiting-chain", "byo-pending").await;
    let cookie = b.get_named_cookie(SESSION_COOKIE).await.unwrap();
    let res = as_user(cookie.value(), http.get(format!("{}{href}", t.base))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-disposition"], "attachment; filename=\"shop-intermediate.csr\"");
    let csr = res.text().await.unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{csr}");
    let root = TenantRoot::new("shop.default.trellis.internal");

    // A chain that is not a CA's is refused beside the field, with what was pasted kept.
    let not_ca = root.sign(&csr, false);
    set_field(b, "ca-chain", &not_ca).await;
    click(b, "//button[text()='Upload the chain']").await;
    let error = wait_for(b, "//p[@id='ca-chain-error']").await.text().await.unwrap();
    assert_eq!(error, "certificateChain: certificate 0 is not a CA (basic constraints cA must be true)");
    let kept = b.find(Locator::Id("ca-chain")).await.unwrap().prop("value").await.unwrap().unwrap();
    assert_eq!(kept.trim(), not_ca.trim());
    shot(b, &t.base, "ca-chain-refused", "ca-chain").await;

    // The CA certificate: the intermediate is prepared, then signs once activated.
    set_field(b, "ca-chain", &root.sign(&csr, true)).await;
    click(b, "//button[text()='Upload the chain']").await;
    wait_for(b, "//p[contains(., 'Phase')]/strong[text()='prepared']").await;
    wait_for(
        b,
        "//table[@id='ca-authorities']//tr[td[1][text()='intermediate_csr']]/td[2][text()='prepared']",
    )
    .await;
    click(b, "//button[text()='Activate the new root']").await;
    wait_for(b, "//table[@id='ca-authorities']//tr[td[1][text()='intermediate_csr']]/td[2][text()='active']")
        .await;
    shot(b, &t.base, "ca-intermediate", "ca").await;
    let (_, ca) = api.get("/meshes/shop/ca").await;
    let active = ca["authorities"].as_array().unwrap().iter().find(|a| a["state"] == "active").unwrap();
    assert_eq!(active["origin"], "intermediate_csr", "{ca}");

    // The SVID lifetime: one out of bounds is refused beside the field; a good one is shown.
    set_field(b, "svid-ttl", "60").await;
    click(b, "//button[text()='Set the lifetime']").await;
    let error = wait_for(b, "//p[@id='svid-ttl-error']").await.text().await.unwrap();
    assert!(error.starts_with("svidTtlSeconds: must be from 3600"), "{error}");
    let kept = b.find(Locator::Id("svid-ttl")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("60"));
    shot(b, &t.base, "ca-svid-ttl-refused", "svid-ttl").await;
    set_field(b, "svid-ttl", "7200").await;
    click(b, "//button[text()='Set the lifetime']").await;
    wait_for(b, "//p[contains(., 'workload certificates live 2 h')]").await;
    shot(b, &t.base, "ca-svid-ttl", "svid-ttl").await;
    let (_, ca) = api.get("/meshes/shop/ca").await;
    assert_eq!(ca["svidTtlSeconds"], 7200);

    // Each step is in the audit log.
    b.goto(&format!("{}/orgs/default/audit", t.base)).await.unwrap();
    let log = b.find(Locator::Id("audit-events")).await.unwrap().text().await.unwrap();
    shot(b, &t.base, "members-audit", "audit-events").await;
    for action in [
        "invite.create",
        "invite.accept",
        "member.update",
        "member.remove",
        "invite.revoke",
        "ca.intermediate.csr",
        "ca.intermediate.upload",
        "ca.settings.update",
    ] {
        assert!(log.contains(action), "{action} missing from the audit log:\n{log}");
    }
    chromium.close().await;
}

/// The user id in the form that changes the role of `email`'s member, from the page.
fn member_id(page: &str, name: &str) -> String {
    let row = page.split("<tr>").find(|r| r.contains(&format!("<td>{name}</td>"))).unwrap();
    row.split("action=\"/orgs/acme/members/").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn members_and_ca_forms_follow_the_api_rules_for_viewers_forgeries_and_other_tenants() {
    let db = TestDb::create().await;
    let t = start(&db).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let owner = session(&db, "acme", "olivia", Role::Owner).await;
    let viewer = session(&db, "acme", "victor", Role::Viewer).await;
    let stranger = session(&db, "globex", "sam", Role::Owner).await;
    let api = Api::new(&t, "acme", &token(&db, "acme", Role::Owner).await);
    let (status, body) = api.put("/meshes/web", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let url = |path: &str| format!("{}{path}", t.base);
    let get = |secret: &str, path: &str| as_user(secret, http.get(url(path))).send();
    let post = |secret: &str, path: &str, form: Vec<(&str, String)>| {
        as_user(secret, http.post(url(path)).form(&form)).send()
    };

    // The owner's page: valid, with every control.
    let page = get(&owner, "/orgs/acme/members").await.unwrap().text().await.unwrap();
    assert_valid_html("members", &page).await;
    let csrf = csrf_of(&page);
    let olivia = member_id(&page, "olivia");
    let victor = member_id(&page, "victor");
    for control in ["Invite someone", "Change role", "Remove"] {
        assert!(page.contains(control), "{control:?} missing:\n{page}");
    }
    // A bad address comes back beside the field, with the core's words.
    let res = post(
        &owner,
        "/orgs/acme/members",
        vec![("csrf", csrf.clone()), ("email", "no-at".into()), ("role", "viewer".into())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("id=\"invite-email-error\"") && page.contains("must be an email address"),
        "{page}"
    );
    assert!(page.contains("value=\"no-at\""), "what was typed is kept");
    assert_valid_html("refused invitation", &page).await;
    // A good one: the page with the link is never cached.
    let invite = |secret: &str, csrf: String, email: &str| {
        post(
            secret,
            "/orgs/acme/members",
            vec![("csrf", csrf), ("email", email.into()), ("role", "editor".into())],
        )
    };
    let res = invite(&owner, csrf.clone(), "ines@example.com").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = res.text().await.unwrap();
    assert!(page.contains("id=\"invite-link\""), "{page}");
    assert_valid_html("invitation created", &page).await;
    let ines = page.split("/orgs/acme/invites/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    // Without the CSRF token nothing is done.
    assert_eq!(invite(&owner, String::new(), "forged@example.com").await.unwrap().status(), 403);
    assert_eq!(invite(&owner, "not-the-token".into(), "forged@example.com").await.unwrap().status(), 403);
    let remove_victor = format!("/orgs/acme/members/{victor}/remove");
    assert_eq!(post(&owner, &remove_victor, vec![]).await.unwrap().status(), 403);
    let settings = "/orgs/acme/meshes/web/ca/settings";
    let ttl = |csrf: String| vec![("csrf", csrf), ("svid_ttl_seconds", "7200".into())];
    assert_eq!(post(&owner, settings, ttl(String::new())).await.unwrap().status(), 403);
    assert_eq!(post(&owner, "/orgs/acme/meshes/web/ca/intermediate", vec![]).await.unwrap().status(), 403);
    let page = get(&owner, "/orgs/acme/members").await.unwrap().text().await.unwrap();
    assert!(!page.contains("forged@example.com") && page.contains("victor"), "{page}");
    let (_, ca) = api.get("/meshes/web/ca").await;
    assert_eq!(ca["svidTtlSeconds"], 86400);
    assert_eq!(ca["phase"], "stable");

    // The mesh page's CA forms, valid; a lifetime that is not a number is refused beside it.
    let page = get(&owner, "/orgs/acme/meshes/web").await.unwrap().text().await.unwrap();
    assert!(page.contains("Create an intermediate CSR") && page.contains("id=\"svid-ttl\""), "{page}");
    let res = post(&owner, settings, vec![("csrf", csrf.clone()), ("svid_ttl_seconds", "a day".into())]);
    let res = res.await.unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("svidTtlSeconds: must be a whole number of seconds"), "{page}");
    assert_valid_html("refused lifetime", &page).await;
    let res =
        post(&owner, "/orgs/acme/meshes/web/ca/intermediate", vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(res.status(), 303);
    let page = get(&owner, "/orgs/acme/meshes/web").await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"ca-chain\""), "{page}");
    assert_valid_html("mesh awaiting a chain", &page).await;
    let pending = page.split("/ca/authorities/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let chain = format!("/orgs/acme/meshes/web/ca/authorities/{pending}/chain");
    let res = post(&owner, &chain, vec![("csrf", csrf.clone()), ("chain", "hello".into())]).await.unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("id=\"ca-chain-error\"") && page.contains("certificateChain: "), "{page}");
    assert_valid_html("refused chain", &page).await;

    // A viewer sees the members, but no control; posting anyway is a 403, and nothing changes.
    let page = get(&viewer, "/orgs/acme/members").await.unwrap().text().await.unwrap();
    assert!(page.contains("olivia"), "{page}");
    for control in ["Invite someone", "Change role", "Remove", "ines@example.com", "name=\"role\""] {
        assert!(!page.contains(control), "a viewer sees {control:?}:\n{page}");
    }
    assert_valid_html("members (viewer)", &page).await;
    let viewer_csrf = csrf_of(&page);
    let page = get(&viewer, "/orgs/acme/meshes/web").await.unwrap().text().await.unwrap();
    for control in ["Create an intermediate CSR", "ca-chain", "svid-ttl", "Discard"] {
        assert!(!page.contains(control), "a viewer sees {control:?}:\n{page}");
    }
    let forged = |path: String, extra: Vec<(&'static str, String)>| {
        let mut form = vec![("csrf", viewer_csrf.clone())];
        form.extend(extra);
        (path, form)
    };
    for (path, form) in [
        forged(
            "/orgs/acme/members".into(),
            vec![("email", "v@example.com".into()), ("role", "viewer".into())],
        ),
        forged(format!("/orgs/acme/members/{olivia}"), vec![("role", "viewer".into())]),
        forged(format!("/orgs/acme/members/{olivia}/remove"), vec![]),
        forged(format!("/orgs/acme/invites/{ines}/revoke"), vec![]),
        forged(settings.into(), vec![("svid_ttl_seconds", "7200".into())]),
        forged(settings.into(), vec![("svid_ttl_seconds", "not a number".into())]),
        forged(chain.clone(), vec![("chain", "hello".into())]),
        forged(format!("/orgs/acme/meshes/web/ca/authorities/{pending}/discard"), vec![]),
    ] {
        let res = post(&viewer, &path, form).await.unwrap();
        assert_eq!(res.status(), 403, "{path}");
    }
    let page = get(&owner, "/orgs/acme/members").await.unwrap().text().await.unwrap();
    assert!(page.contains("ines@example.com") && !page.contains("v@example.com"), "{page}");
    let (_, ca) = api.get("/meshes/web/ca").await;
    assert_eq!((ca["svidTtlSeconds"].as_i64(), ca["phase"].as_str()), (Some(86400), Some("awaiting-chain")));

    // Another organization finds nothing of acme's: every page and every form is a 404.
    let stranger_csrf = csrf_of(&get(&stranger, "/orgs/globex/members").await.unwrap().text().await.unwrap());
    let mut ids = OrgIds::new("acme", "web");
    ids.member = olivia.clone();
    ids.invite = ines.clone();
    ids.authority = pending.clone();
    assert_hidden_from(&t, &stranger, &stranger_csrf, &ids, "olivia").await;

    // The owner's own forms still work: the CSR is discarded, the invitation revoked.
    let discard = format!("/orgs/acme/meshes/web/ca/authorities/{pending}/discard");
    assert_eq!(post(&owner, &discard, vec![("csrf", csrf.clone())]).await.unwrap().status(), 303);
    let (_, ca) = api.get("/meshes/web/ca").await;
    assert_eq!(ca["phase"], "stable");
    let revoke = format!("/orgs/acme/invites/{ines}/revoke");
    assert_eq!(post(&owner, &revoke, vec![("csrf", csrf.clone())]).await.unwrap().status(), 303);
    let (_, invites) = api.get("/invites").await;
    assert_eq!(invites["items"][0]["status"], "revoked", "{invites}");
}
