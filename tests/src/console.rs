//! What the console's tests share: starting `trellis serve`, signing users in without a
//! browser, checking HTML, and where screenshots go.

use trellis_model::{OrgSlug, Role};
use trellis_store::NewUser;
use trellis_store::testing::TestDb;

use crate::{Trellis, trellis};

pub const SESSION_COOKIE: &str = "__Host-trellis_session";

/// `trellis serve` on `db`, its HTTP port chosen by the system.
pub async fn start(db: &TestDb) -> Trellis {
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    Trellis::start(cmd).await
}

/// The one-time login link `trellis serve` printed.
pub fn login_link(t: &Trellis) -> String {
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
pub async fn session(db: &TestDb, slug: &str, subject: &str, role: Role) -> String {
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

/// `req` sent as the user of the session `secret`.
pub fn as_user(secret: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("cookie", format!("{SESSION_COOKIE}={secret}"))
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in:\n{page}"))
        .to_owned()
}

/// What every console page must be, read by html5lib: valid HTML (the strict parser raises
/// otherwise); every form control named for assistive technology (a `<label for>`, an
/// enclosing `<label>`, or `aria-label`/`aria-labelledby`); usable with the keyboard alone
/// (no positive or negative `tabindex`, every link with an `href`, no scripted clicks); and
/// without script of any kind (the console works without JavaScript, and has none).
const PAGE_CHECK: &str = r#"
import sys, html5lib
doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(sys.stdin.read())
parents = {c: p for p in doc.iter() for c in p}
labelled = {l.get("for") for l in doc.iter("label") if l.get("for")}
def in_label(e):
    while e in parents:
        e = parents[e]
        if e.tag == "label":
            return True
    return False
wrong = []
for e in doc.iter():
    kind = e.get("type", "text")
    control = e.tag in ("select", "textarea") or (e.tag == "input" and kind not in ("hidden", "submit", "button", "reset", "image"))
    if control and not (e.get("id") in labelled or e.get("aria-label") or e.get("aria-labelledby") or in_label(e)):
        wrong.append(f"<{e.tag} name={e.get('name')!r}> has no label")
    if e.get("tabindex") not in (None, "0"):
        wrong.append(f"<{e.tag}> has tabindex={e.get('tabindex')}: out of the keyboard's order")
    if e.tag == "a" and e.get("href") is None:
        wrong.append(f"<a> without href cannot be reached with the keyboard: {''.join(e.itertext())!r}")
    if isinstance(e.tag, str) and e.tag.rsplit("}", 1)[-1] == "script":
        wrong.append(f"<script src={e.get('src')!r}>: the console has no JavaScript")
    if e.get("href", "").strip().lower().startswith("javascript:"):
        wrong.append(f"<{e.tag}> links to javascript:")
    if any(k.startswith("on") for k in e.keys()):
        wrong.append(f"<{e.tag}> has an inline event handler")
if wrong:
    sys.exit("\n".join(wrong))
"#;

/// Checks a page with [`PAGE_CHECK`] (html5lib from the test peers' .venv).
pub async fn assert_valid_html(name: &str, html: &str) {
    let mut child = tokio::process::Command::new(crate::venv_python())
        .args(["-c", PAGE_CHECK])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(html.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{name} is not a valid, labelled, keyboard-usable page: {}\n{html}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a browser test does after each page load: checks that the page (and everything
/// since the last check) asked nothing of any host but Trellis at `origin`, and saves a
/// screenshot of it as `name`.png in [`screenshot_dir`].
pub async fn page_loaded(b: &fantoccini::Client, origin: &str, name: &str) {
    crate::browser::assert_only_to(b, origin).await;
    std::fs::write(screenshot_dir().join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
}

/// Where the browser tests save their screenshots (test artifacts, not committed).
pub fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The ids the console's URLs of one organization name; those a test has not made are a
/// made-up id (the URL still answers 404 to another organization).
pub struct OrgIds {
    pub org: String,
    pub mesh: String,
    /// A Service of the mesh, and a resource kind's plural with one of its resources.
    pub service: String,
    pub kind: String,
    pub resource: String,
    pub proxy: String,
    pub api_token: String,
    pub join_token: String,
    pub event: String,
    pub denied: String,
    pub member: String,
    pub invite: String,
    pub authority: String,
}

impl OrgIds {
    /// Ids for `org`'s mesh `mesh`, made up until a test sets them.
    pub fn new(org: &str, mesh: &str) -> OrgIds {
        let made_up = uuid::Uuid::new_v4().to_string();
        OrgIds {
            org: org.into(),
            mesh: mesh.into(),
            service: "api".into(),
            kind: "services".into(),
            resource: "api".into(),
            proxy: made_up.clone(),
            api_token: made_up.clone(),
            join_token: made_up.clone(),
            event: made_up.clone(),
            denied: made_up.clone(),
            member: made_up.clone(),
            invite: made_up.clone(),
            authority: made_up,
        }
    }
}

/// Every console URL of one organization, by method: the one list the tests walk to check
/// that another organization finds none of them (`every_console_route_is_in_org_urls`
/// checks it against the console's routes).
pub fn org_urls(ids: &OrgIds) -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    let org = format!("/orgs/{}", ids.org);
    let mesh = format!("{org}/meshes/{}", ids.mesh);
    let get = [
        org.clone(),
        format!("{org}/members"),
        format!("{org}/tokens"),
        format!("{org}/audit"),
        format!("{org}/audit?action=mesh.create"),
        mesh.clone(),
        format!("{mesh}/config/{}", ids.kind),
        format!("{mesh}/config/{}/{}", ids.kind, ids.resource),
        format!("{mesh}/dataplanes"),
        format!("{mesh}/dataplanes/{}", ids.proxy),
        format!("{mesh}/workloads/{}", ids.join_token),
        format!("{mesh}/ca/authorities/{}/csr", ids.authority),
        format!("{mesh}/topology"),
        format!("{mesh}/services/{}/metrics", ids.service),
        format!("{mesh}/denied"),
        format!("{mesh}/denied/{}", ids.denied),
        format!("{mesh}/events"),
        format!("{mesh}/events/{}/draft", ids.event),
    ];
    let post = [
        org.clone(),
        format!("{org}/members"),
        format!("{org}/members/{}", ids.member),
        format!("{org}/members/{}/remove", ids.member),
        format!("{org}/invites/{}/revoke", ids.invite),
        format!("{org}/tokens"),
        format!("{org}/tokens/{}/revoke", ids.api_token),
        format!("{mesh}/config/{}", ids.kind),
        format!("{mesh}/config/{}/{}", ids.kind, ids.resource),
        format!("{mesh}/workloads"),
        format!("{mesh}/ca"),
        format!("{mesh}/ca/intermediate"),
        format!("{mesh}/ca/authorities/{}/chain", ids.authority),
        format!("{mesh}/ca/authorities/{}/discard", ids.authority),
        format!("{mesh}/ca/settings"),
        format!("{mesh}/impact"),
    ];
    get.into_iter().map(|u| (Method::GET, u)).chain(post.into_iter().map(|u| (Method::POST, u))).collect()
}

/// A form with every field any console form reads (each handler takes what it needs), so
/// that a post reaches the handler's checks rather than failing to parse.
pub fn any_form(csrf: &str) -> Vec<(&'static str, String)> {
    [
        ("name", "x"),
        ("mtls", "STRICT"),
        ("default_access", "deny"),
        ("step", "review"),
        ("source", "yaml"),
        ("id", ""),
        ("service", "api"),
        ("tags", ""),
        ("role", "owner"),
        ("email", "s@example.com"),
        ("chain", "hello"),
        ("svid_ttl_seconds", "7200"),
        ("yaml", "kind: Service"),
        ("version", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .chain([("csrf", csrf.to_owned())])
    .collect()
}

/// Asserts that the user of session `stranger` (with its CSRF token) gets a 404 for every
/// URL of `ids`' organization, and that no page it gets names `secret` (something only
/// that organization has).
pub async fn assert_hidden_from(
    t: &Trellis,
    stranger: &str,
    stranger_csrf: &str,
    ids: &OrgIds,
    secret: &str,
) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (method, path) in org_urls(ids) {
        let req = http.request(method.clone(), format!("{}{path}", t.base));
        let req = if method == reqwest::Method::POST { req.form(&any_form(stranger_csrf)) } else { req };
        let res = as_user(stranger, req).send().await.unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains(secret), "{method} {path} shows {secret:?}:\n{body}");
    }
}
