//! OpenID Connect login against a real provider on loopback, driven like a browser:
//! sign-up, a second login, sessions and their cookies, CSRF, logout, and every way a
//! login must fail without leaving a session behind.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgConnection;
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::oidc::{Browser, OidcPeer, PeerUser, Session, login, start_login, trellis_with_idp};
use trellis_tests::{Api, send, token};

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(conn)
        .await
        .unwrap()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn assert_cookie_flags(set_cookie: &str, name: &str) {
    assert!(set_cookie.starts_with(&format!("{name}=")), "{set_cookie}");
    for flag in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(set_cookie.split("; ").any(|a| a == flag), "{name} lacks {flag}: {set_cookie}");
    }
    assert!(!set_cookie.to_ascii_lowercase().contains("domain="), "{set_cookie}");
}

#[tokio::test]
async fn sign_up_then_log_in_again_with_session_cookies_and_csrf() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &[]).await;
    let mut admin = db.admin_conn().await;
    let alice = PeerUser::new("alice");

    // /auth/login redirects to the provider with the code flow, PKCE S256, state and nonce.
    peer.next(&alice, None).await;
    let browser = Browser::new();
    let res = browser.get(&format!("{}/auth/login?return_to=/meshes", t.base)).await;
    assert_eq!(res.status(), 303);
    let authorize = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(authorize.starts_with(&format!("{}/authorize?", peer.issuer)), "{authorize}");
    assert_eq!(query_param(&authorize, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(&authorize, "client_id").as_deref(), Some("trellis-console"));
    assert_eq!(query_param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&authorize, "redirect_uri").unwrap(), format!("{}/auth/callback", t.base));
    for p in ["state", "nonce", "code_challenge"] {
        assert!(query_param(&authorize, p).is_some_and(|v| v.len() >= 22), "{p} in {authorize}");
    }
    assert!(query_param(&authorize, "scope").unwrap().split(' ').any(|s| s == "openid"));
    let login_cookie = browser.set_cookies.lock().unwrap()[0].clone();
    assert_cookie_flags(&login_cookie, "__Host-trellis_login");
    // The pending login is on the server, keyed by a hash: the cookie value is not in it.
    let login_id = browser.cookie("__Host-trellis_login").unwrap();
    assert_eq!(count(&mut admin, "oidc_logins").await, 1);

    // Provider → callback → the page we asked for, with a session cookie.
    let (res, landed) = browser.follow(&authorize, |_| false).await;
    assert_eq!(res.status(), 404, "the login lands on the path it was asked for (no page there)");
    assert_eq!(landed, format!("{}/meshes", t.base));
    let session_line = browser
        .set_cookies
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.starts_with("__Host-trellis_session=") && !c.contains("Max-Age=0"))
        .cloned()
        .expect("a session cookie");
    assert_cookie_flags(&session_line, "__Host-trellis_session");
    assert!(browser.cookie("__Host-trellis_login").is_none(), "the login cookie is cleared");
    assert_eq!(count(&mut admin, "oidc_logins").await, 0, "the pending login is consumed");
    assert_ne!(login_id, browser.cookie("__Host-trellis_session").unwrap());

    // Sign-up made the user and an organization they own.
    let s1 = Session::from_browser(&t, browser).await;
    assert_eq!(s1.me["user"]["email"], "alice@example.com");
    assert_eq!(s1.me["user"]["name"], "alice");
    let orgs = s1.me["organizations"].as_array().unwrap();
    assert_eq!(orgs.len(), 1, "{}", s1.me);
    assert_eq!(orgs[0]["slug"], "alice");
    assert_eq!(orgs[0]["role"], "owner");
    assert_eq!(count(&mut admin, "users").await, 1);
    assert_eq!(count(&mut admin, "organizations").await, 1);
    assert_eq!(count(&mut admin, "memberships").await, 1);
    assert_eq!(count(&mut admin, "sessions").await, 1);
    let (status, list) = s1.call(Method::GET, "/api/v1/orgs", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["slug"], "alice");
    assert_eq!(list["items"][0]["role"], "owner");

    // A second login (another browser) reuses the user and the organization.
    let s2 = login(&t, &peer, &alice).await;
    assert_eq!(s2.user_id(), s1.user_id());
    assert_eq!(s2.me["organizations"], s1.me["organizations"]);
    assert_ne!(s2.csrf, s1.csrf, "each session has its own CSRF token");
    assert_eq!(count(&mut admin, "users").await, 1);
    assert_eq!(count(&mut admin, "organizations").await, 1);
    assert_eq!(count(&mut admin, "sessions").await, 2);

    // Logging in again in the same browser rotates the session id: the old one is dead.
    let old = s2.browser.cookie("__Host-trellis_session").unwrap();
    let (_, callback) = start_login(&t, &peer, &alice, None).await;
    assert_eq!(
        s2.browser.get(&callback).await.status(),
        400,
        "a callback needs its own browser's login cookie"
    );
    let res = s2.browser.get(&format!("{}/auth/login", t.base)).await;
    let authorize = res.headers()["location"].to_str().unwrap().to_owned();
    let (res, landed) = s2.browser.follow(&authorize, |_| false).await;
    assert_eq!(res.status(), 200, "the login ends on the console's page of the user's organization");
    assert!(landed.starts_with(&format!("{}/orgs/", t.base)), "{landed}");
    let new = s2.browser.cookie("__Host-trellis_session").unwrap();
    assert_ne!(old, new);
    let stale = Browser::new();
    stale.set_cookie("__Host-trellis_session", Some(&old));
    assert_eq!(stale.get(&format!("{}/api/v1/me", t.base)).await.status(), 401);
    assert_eq!(count(&mut admin, "sessions").await, 2);
    let s2 = Session::from_browser(&t, s2.browser).await;

    // CSRF: a cookie-authenticated write needs the session's token.
    let new_token = json!({"name": "ci", "role": "viewer"});
    let url = format!("{}/api/v1/orgs/alice/tokens", t.base);
    let (status, problem) = send(s2.browser.request(Method::POST, &url).json(&new_token)).await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("x-csrf-token"));
    // What a cross-origin form post looks like: another Origin, a form body, no token.
    let (status, _) = send(
        s2.browser
            .request(Method::POST, &url)
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=ci&role=owner"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) =
        send(s2.browser.request(Method::POST, &url).header("x-csrf-token", &s1.csrf).json(&new_token)).await;
    assert_eq!(status, 403, "another session's CSRF token does not fit");
    let (status, created) = s2.call(Method::POST, "/api/v1/orgs/alice/tokens", Some(&new_token)).await;
    assert_eq!(status, 201, "{created}");
    assert!(created["createdBy"].as_str().unwrap().starts_with("user:"));
    // A bearer token needs no CSRF token, even with a stray cookie.
    let owner_token = created["token"].as_str().unwrap().to_owned();
    let (status, _) =
        s1.call(Method::PATCH, "/api/v1/orgs/alice", Some(&json!({"name": "Alice & Co"}))).await;
    assert_eq!(status, 200);
    let bearer = Api::new(&t, "alice", &owner_token);
    assert_eq!(bearer.get("/members").await.0, 200, "viewer tokens read members");
    let (status, _) = send(bearer.req(Method::DELETE, "/tokens/00000000-0000-0000-0000-000000000000")).await;
    assert_eq!(status, 403, "a viewer token is authenticated without CSRF, then refused by role");

    // The owner changes the slug; the old one is gone.
    let (status, org) =
        s1.call(Method::PATCH, "/api/v1/orgs/alice", Some(&json!({"slug": "alice-co"}))).await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["slug"], "alice-co");
    assert_eq!(s1.call(Method::GET, "/api/v1/orgs/alice", None).await.0, 404);
    assert_eq!(
        s1.call(Method::PATCH, "/api/v1/orgs/alice-co", Some(&json!({"slug": "Bad Slug"}))).await.0,
        422
    );

    // Logout: needs the CSRF token, ends the session, clears the cookie.
    let (status, _) = send(s1.browser.request(Method::POST, &format!("{}/auth/logout", t.base))).await;
    assert_eq!(status, 403);
    let res = s1.browser.send(s1.req(Method::POST, "/auth/logout")).await;
    assert_eq!(res.status(), 204);
    assert!(s1.browser.cookie("__Host-trellis_session").is_none());
    assert_eq!(count(&mut admin, "sessions").await, 1);
    let (_, log) = s2.call(Method::GET, "/api/v1/orgs/alice-co/audit-events", None).await;
    let actions: Vec<&str> =
        log["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.signup", "org.create", "session.login", "token.create", "org.update", "session.logout"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn every_bad_login_ends_without_a_session() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &[]).await;
    let mut admin = db.admin_conn().await;
    let mallory = PeerUser::new("mallory");

    let with_state = |url: &str, state: Option<&str>| {
        let mut u = reqwest::Url::parse(url).unwrap();
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "state")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        drop(q);
        u.to_string()
    };

    // State: missing, wrong.
    for (case, state) in [("missing state", None), ("wrong state", Some("forged-state-value"))] {
        let (browser, callback) = start_login(&t, &peer, &mallory, None).await;
        let (status, problem) = send(browser.request(Method::GET, &with_state(&callback, state))).await;
        assert_eq!(status, 400, "{case}: {problem}");
        assert_eq!(count(&mut admin, "sessions").await, 0, "{case}");
        // The failed attempt used up the login: even the genuine callback is refused now.
        assert_eq!(browser.get(&callback).await.status(), 400, "{case}");
        assert_eq!(count(&mut admin, "sessions").await, 0, "{case}");
    }

    // ID tokens that must be refused, each for its own reason (as the server logs it).
    for (i, (mutation, reason)) in [
        ("wrong-nonce", "nonce mismatch"),
        ("wrong-aud", "must contain `trellis-console`"),
        ("extra-aud-no-azp", "is not a trusted audience"),
        ("wrong-iss", "Invalid issuer"),
        ("expired", "ID token expired at"),
        ("alg-none", "No signature found"),
        ("unknown-kid", "No matching key found"),
        ("tampered-signature", "bad signature"),
    ]
    .into_iter()
    .enumerate()
    {
        let (browser, callback) = start_login(&t, &peer, &mallory, Some(mutation)).await;
        let (status, problem) = send(browser.request(Method::GET, &callback)).await;
        assert_eq!(status, 401, "{mutation}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("ID token"), "{mutation}: {problem}");
        assert!(browser.cookie("__Host-trellis_session").is_none(), "{mutation}");
        assert_eq!(count(&mut admin, "sessions").await, 0, "{mutation}");
        assert_eq!(count(&mut admin, "users").await, 0, "{mutation}: no sign-up either");
        // The server's log is read asynchronously; wait for this attempt's line.
        let mut refusals = Vec::new();
        for _ in 0..50 {
            refusals =
                t.output().1.lines().filter(|l| l.contains("login refused")).map(str::to_owned).collect();
            if refusals.len() > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let line = refusals.get(i).cloned().unwrap_or_default();
        assert!(line.contains(reason), "{mutation}: expected {reason:?} in {line:?}");
    }

    // Replay: the callback URL works once. Log in, log out, replay it: refused.
    let (browser, callback) = start_login(&t, &peer, &mallory, None).await;
    let login_cookie = browser.cookie("__Host-trellis_login").unwrap();
    assert_eq!(browser.get(&callback).await.status(), 303);
    let s = Session::from_browser(&t, browser).await;
    assert_eq!(s.browser.send(s.req(Method::POST, "/auth/logout")).await.status(), 204);
    assert_eq!(count(&mut admin, "sessions").await, 0);
    let replay = Browser::new();
    replay.set_cookie("__Host-trellis_login", Some(&login_cookie));
    let (status, problem) = send(replay.request(Method::GET, &callback)).await;
    assert_eq!(status, 400, "replayed callback: {problem}");
    assert_eq!(count(&mut admin, "sessions").await, 0, "replayed callback");
    // And a callback with no login cookie at all.
    assert_eq!(Browser::new().get(&callback).await.status(), 400);
    assert_eq!(count(&mut admin, "sessions").await, 0);
}

#[tokio::test]
async fn logins_survive_a_key_rotation_at_the_provider() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &[]).await;
    let rita = PeerUser::new("rita");
    // The first login makes Trellis discover and cache the provider's one key.
    let first = login(&t, &peer, &rita).await;
    peer.add_key(&rita).await;
    // Tokens now alternate between the old and the new key; the new one is not in the
    // cached JWKS, so Trellis must fetch it again rather than refuse.
    for _ in 0..3 {
        let s = login(&t, &peer, &rita).await;
        assert_eq!(s.user_id(), first.user_id());
    }
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_expiry() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &["--session-idle-timeout", "2s", "--session-lifetime", "8s"]).await;
    let idle = login(&t, &peer, &PeerUser::new("ida")).await;
    let cookie = idle
        .browser
        .set_cookies
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|c| c.starts_with("__Host-trellis_session="))
        .cloned()
        .unwrap();
    assert!(cookie.contains("Max-Age=8"), "the cookie lives as long as the session may: {cookie}");
    // Activity keeps a session alive past the idle timeout …
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(idle.call(Method::GET, "/api/v1/me", None).await.0, 200);
    }
    // … idleness ends it (well before the 8 s lifetime).
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(idle.call(Method::GET, "/api/v1/me", None).await.0, 401);

    // A busy session still ends at its absolute expiry.
    let busy = login(&t, &peer, &PeerUser::new("bea")).await;
    let started = std::time::Instant::now();
    loop {
        let status = busy.call(Method::GET, "/api/v1/me", None).await.0;
        let elapsed = started.elapsed();
        if status == 401 {
            assert!(elapsed > Duration::from_secs(7), "ended early, after {elapsed:?}");
            break;
        }
        assert!(elapsed < Duration::from_secs(10), "still alive after {elapsed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // API tokens are unaffected, and see the members' emails.
    let api = Api::new(&t, "ida", &token(&db, "ida", Role::Viewer).await);
    assert_eq!(api.get("").await.0, 200);
    let (_, body): (u16, Value) = api.get("/members").await;
    assert_eq!(body["items"][0]["email"], "ida@example.com");
}
