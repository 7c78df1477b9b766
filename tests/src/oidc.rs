//! A real OpenID provider on loopback (`tests/oidc-peer`: oauth2-mock-server under Node.js)
//! and a browser-like client that follows redirects by hand and keeps cookies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running OpenID provider, killed when dropped.
pub struct OidcPeer {
    _child: Child,
    /// Its issuer URL, `http://127.0.0.1:<port>`.
    pub issuer: String,
    http: reqwest::Client,
}

/// Who the provider says logs in next.
#[derive(Debug, Clone)]
pub struct PeerUser {
    pub sub: String,
    pub email: String,
    pub name: String,
}

impl PeerUser {
    /// A user `name` with the email `<name>@example.com`.
    pub fn new(name: &str) -> PeerUser {
        PeerUser { sub: format!("sub-{name}"), email: format!("{name}@example.com"), name: name.to_owned() }
    }
}

impl OidcPeer {
    /// Starts the provider. Fails, naming what to install, when Node.js or the peer's npm
    /// packages are missing (scripts/test installs them with `npm ci`).
    pub async fn start() -> OidcPeer {
        crate::init();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc-peer");
        let installed = dir.join("node_modules/oauth2-mock-server/package.json");
        assert!(
            installed.is_file(),
            "the OpenID provider test peer (npm package oauth2-mock-server) is not installed: run \
             `npm ci --prefix tests/oidc-peer` (scripts/test does it; needs Node.js >= 20.19 and npm)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("peer.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` for the OpenID provider test peer ({e}): install Node.js >= 20.19")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("issuer ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the OpenID provider test peer did not announce its issuer");
        OidcPeer { _child: child, issuer, http: reqwest::Client::new() }
    }

    /// Sets who logs in next, and how to break the ID token (`None`: not at all).
    pub async fn next(&self, user: &PeerUser, mutation: Option<&str>) {
        self.configure(user, mutation, false).await
    }

    /// Rotates keys: a new signing key joins the provider's JWKS, and tokens are signed
    /// with each key in turn from now on.
    pub async fn add_key(&self, user: &PeerUser) {
        self.configure(user, None, true).await
    }

    async fn configure(&self, user: &PeerUser, mutation: Option<&str>, add_key: bool) {
        let res = self
            .http
            .post(format!("{}/__peer/next", self.issuer))
            .json(&serde_json::json!({
                "sub": user.sub, "email": user.email, "name": user.name, "mutation": mutation,
                "addKey": add_key,
            }))
            .send()
            .await
            .expect("the OpenID provider test peer answers");
        assert_eq!(res.status(), 204);
    }
}

/// A client that behaves like a browser for our purposes: it follows `Location` by hand
/// and keeps cookies (including `Secure` ones over loopback http, which a browser treats
/// as a secure context).
pub struct Browser {
    http: reqwest::Client,
    jar: Mutex<BTreeMap<String, String>>,
    /// Every `Set-Cookie` header received, in order.
    pub set_cookies: Mutex<Vec<String>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A browser with no cookies.
    pub fn new() -> Browser {
        crate::init();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Browser { http, jar: Mutex::default(), set_cookies: Mutex::default() }
    }

    /// A cookie's current value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    /// Sets (or with `None` removes) a cookie by hand.
    pub fn set_cookie(&self, name: &str, value: Option<&str>) {
        let mut jar = self.jar.lock().unwrap();
        match value {
            Some(v) => jar.insert(name.to_owned(), v.to_owned()),
            None => jar.remove(name),
        };
    }

    /// A request carrying the cookies.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let jar = self.jar.lock().unwrap();
        let mut req = self.http.request(method, url);
        if !jar.is_empty() {
            let header = jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            req = req.header("cookie", header);
        }
        req
    }

    /// Sends and stores the cookies the response sets.
    pub async fn send(&self, req: RequestBuilder) -> Response {
        let res = req.send().await.expect("request");
        for v in res.headers().get_all("set-cookie") {
            let line = v.to_str().unwrap().to_owned();
            let (pair, attrs) = line.split_once(';').unwrap_or((&line, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let expired = attrs.split(';').any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.set_cookie(name.trim(), if expired || value.is_empty() { None } else { Some(value.trim()) });
            self.set_cookies.lock().unwrap().push(line);
        }
        res
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Response {
        self.send(self.request(Method::GET, url)).await
    }

    /// GETs `url` and follows redirects until a response that is not one, or until the
    /// next URL satisfies `stop`; returns the last response and the URL it came from.
    pub async fn follow(&self, url: &str, stop: impl Fn(&str) -> bool) -> (Response, String) {
        let mut url = url.to_owned();
        for _ in 0..10 {
            let res = self.get(&url).await;
            if !res.status().is_redirection() {
                return (res, url);
            }
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            let next = reqwest::Url::parse(&url).unwrap().join(&location).unwrap().to_string();
            if stop(&next) {
                return (res, next);
            }
            url = next;
        }
        panic!("too many redirects from {url}");
    }
}

/// Starts `trellis serve` on `db` with `peer` as its OpenID provider (loopback http,
/// allowed by the explicit development flag), plus `extra` arguments.
pub async fn trellis_with_idp(
    db: &trellis_store::testing::TestDb,
    peer: &OidcPeer,
    extra: &[&str],
) -> crate::Trellis {
    let mut cmd = crate::trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url())
        .env("TRELLIS_OIDC_ISSUER", &peer.issuer)
        .env("TRELLIS_OIDC_CLIENT_ID", "trellis-console")
        .env("TRELLIS_OIDC_CLIENT_SECRET", "test-client-secret")
        .env("TRELLIS_OIDC_ALLOW_INSECURE_LOOPBACK", "true")
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .args(extra);
    crate::Trellis::start(cmd).await
}

/// Starts a login as `user` (with `mutation` applied to the ID token) in a new browser and
/// stops at the provider's redirect back: returns the browser and the callback URL.
pub async fn start_login(
    t: &crate::Trellis,
    peer: &OidcPeer,
    user: &PeerUser,
    mutation: Option<&str>,
) -> (Browser, String) {
    peer.next(user, mutation).await;
    let browser = Browser::new();
    let callback_prefix = format!("{}/auth/callback", t.base);
    let (res, callback) =
        browser.follow(&format!("{}/auth/login", t.base), |next| next.starts_with(&callback_prefix)).await;
    assert!(res.status().is_redirection(), "login did not reach the callback: {}", res.status());
    (browser, callback)
}

/// A logged-in browser and its CSRF token.
pub struct Session {
    pub browser: Browser,
    pub base: String,
    pub csrf: String,
    pub me: serde_json::Value,
}

/// Logs in as `user` through the whole flow and checks that it worked.
pub async fn login(t: &crate::Trellis, peer: &OidcPeer, user: &PeerUser) -> Session {
    let (browser, callback) = start_login(t, peer, user, None).await;
    let res = browser.get(&callback).await;
    assert_eq!(res.status(), 303, "callback: {}", res.text().await.unwrap_or_default());
    Session::from_browser(t, browser).await
}

impl Session {
    /// Wraps a browser that holds a session cookie; reads `/api/v1/me`.
    pub async fn from_browser(t: &crate::Trellis, browser: Browser) -> Session {
        let res = browser.get(&format!("{}/api/v1/me", t.base)).await;
        assert_eq!(res.status(), 200);
        let me: serde_json::Value = res.json().await.unwrap();
        assert_eq!(me["kind"], "session");
        Session { csrf: me["csrfToken"].as_str().unwrap().to_owned(), browser, base: t.base.clone(), me }
    }

    /// The session's user id.
    pub fn user_id(&self) -> String {
        self.me["user"]["id"].as_str().unwrap().to_owned()
    }

    /// A request to `path` (under the server) with the cookie and, for writes, the CSRF token.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let write = method != Method::GET;
        let req = self.browser.request(method, &format!("{}{path}", self.base));
        if write { req.header("x-csrf-token", &self.csrf) } else { req }
    }

    /// Sends a request and decodes it like [`crate::send`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.req(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        crate::send(req).await
    }
}
