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
/// enclosing `<label>`, or `aria-label`/`aria-labelledby`); and usable with the keyboard
/// alone (no positive or negative `tabindex`, every link with an `href`, no scripted clicks).
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
    if any(k.startswith("on") for k in e.keys()):
        wrong.append(f"<{e.tag}> has an inline event handler")
if wrong:
    sys.exit("\n".join(wrong))
"#;

/// Checks a page with [`PAGE_CHECK`] (html5lib from the test peers' .venv).
pub async fn assert_valid_html(name: &str, html: &str) {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/test, which installs html5lib", python.display());
    let mut child = tokio::process::Command::new(python)
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

/// Where the browser tests save their screenshots (test artifacts, not committed).
pub fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
