//! Members and invitations as an organization's people meet them: invite, accept, change
//! roles, remove, the last owner kept; each role against each account endpoint; other
//! tenants get 404; no secret in clear in a dump of the database; the no-IdP login link.

use reqwest::Method;
use serde_json::{Value, json};
use trellis_model::Role;
use trellis_store::testing::TestDb;
use trellis_tests::oidc::{Browser, OidcPeer, PeerUser, Session, login, trellis_with_idp};
use trellis_tests::{Api, Trellis, assert_no_secret_in, pg_dump, send, token, trellis};

/// Invites `who` into `org` as `role` (by `inviter`) and has them log in and accept.
async fn join(
    t: &Trellis,
    peer: &OidcPeer,
    inviter: &Session,
    org: &str,
    who: &PeerUser,
    role: &str,
) -> (Session, String) {
    let (status, invite) = inviter
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/invites"),
            Some(&json!({"email": who.email, "role": role})),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    let token = invite["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("trls_inv_"));
    assert_eq!(invite["acceptUrl"], format!("{}/api/v1/invites/{token}/accept", t.base));
    let s = login(t, peer, who).await;
    let (status, accepted) = s.call(Method::POST, &format!("/api/v1/invites/{token}/accept"), None).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["role"], role);
    (s, token)
}

#[tokio::test]
async fn members_and_invitations_keep_an_owner_and_leave_no_secret_in_the_database() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &[]).await;
    let mut secrets: Vec<String> = Vec::new();

    let alice = login(&t, &peer, &PeerUser::new("alice")).await;
    let (bob, bob_invite) = join(&t, &peer, &alice, "alice", &PeerUser::new("bob"), "editor").await;
    secrets.push(bob_invite.clone());

    // The invitation is used up; its list entry shows no token.
    let (status, _) = bob.call(Method::POST, &format!("/api/v1/invites/{bob_invite}/accept"), None).await;
    assert_eq!(status, 404);
    let (_, invites) = alice.call(Method::GET, "/api/v1/orgs/alice/invites", None).await;
    assert_eq!(invites["items"][0]["status"], "accepted");
    assert_eq!(invites["items"][0]["acceptedBy"], bob.user_id());
    assert!(invites["items"][0].get("token").is_none());

    // Bob is in two organizations now: his own and alice's.
    let (_, orgs) = bob.call(Method::GET, "/api/v1/orgs", None).await;
    let mine: Vec<(String, String)> = orgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["slug"].as_str().unwrap().to_owned(), o["role"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(mine, [("alice".to_owned(), "editor".to_owned()), ("bob".to_owned(), "owner".to_owned())]);
    let (_, me) = bob.call(Method::GET, "/api/v1/me", None).await;
    assert_eq!(me["organizations"].as_array().unwrap().len(), 2);

    // An invitation for someone else's address cannot be taken; neither a revoked or
    // expired one.
    let (_, for_dave) = alice
        .call(
            Method::POST,
            "/api/v1/orgs/alice/invites",
            Some(&json!({"email": "dave@example.com", "role": "viewer"})),
        )
        .await;
    let dave_token = for_dave["token"].as_str().unwrap().to_owned();
    secrets.push(dave_token.clone());
    let carol = login(&t, &peer, &PeerUser::new("carol")).await;
    let (status, problem) =
        carol.call(Method::POST, &format!("/api/v1/invites/{dave_token}/accept"), None).await;
    assert_eq!(status, 403, "{problem}");
    let (_, for_carol) = alice
        .call(
            Method::POST,
            "/api/v1/orgs/alice/invites",
            Some(&json!({"email": "CAROL@example.com", "role": "viewer"})),
        )
        .await;
    let carol_token = for_carol["token"].as_str().unwrap().to_owned();
    let id = for_carol["id"].as_str().unwrap();
    assert_eq!(alice.call(Method::DELETE, &format!("/api/v1/orgs/alice/invites/{id}"), None).await.0, 200);
    assert_eq!(carol.call(Method::POST, &format!("/api/v1/invites/{carol_token}/accept"), None).await.0, 404);
    let (_, for_carol) = alice
        .call(
            Method::POST,
            "/api/v1/orgs/alice/invites",
            Some(&json!({"email": "carol@example.com", "role": "viewer"})),
        )
        .await;
    let carol_token = for_carol["token"].as_str().unwrap().to_owned();
    let mut admin = db.admin_conn().await;
    sqlx::query("UPDATE invites SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(for_carol["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(carol.call(Method::POST, &format!("/api/v1/invites/{carol_token}/accept"), None).await.0, 404);
    assert_eq!(carol.call(Method::POST, "/api/v1/invites/trls_inv_garbage/accept", None).await.0, 404);
    // Accepting is for people: an API token cannot.
    let owner_token = token(&db, "alice", Role::Owner).await;
    secrets.push(owner_token.clone());
    let (status, _) = send(
        reqwest::Client::new()
            .post(format!("{}/api/v1/invites/{dave_token}/accept", t.base))
            .bearer_auth(&owner_token),
    )
    .await;
    assert_eq!(status, 403);
    // Only admins invite, and never above their own role.
    let (status, _) = bob
        .call(
            Method::POST,
            "/api/v1/orgs/alice/invites",
            Some(&json!({"email": "x@example.com", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        alice
            .call(
                Method::POST,
                "/api/v1/orgs/alice/invites",
                Some(&json!({"email": "nope", "role": "viewer"}))
            )
            .await
            .0,
        422
    );

    // The last owner can be neither demoted nor removed.
    let a = alice.user_id();
    let b = bob.user_id();
    let member = |u: &str| format!("/api/v1/orgs/alice/members/{u}");
    let (status, problem) = alice.call(Method::PATCH, &member(&a), Some(&json!({"role": "admin"}))).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("owner"));
    assert_eq!(alice.call(Method::DELETE, &member(&a), None).await.0, 409);
    // Hand over: bob becomes owner, alice steps down to admin.
    assert_eq!(alice.call(Method::PATCH, &member(&b), Some(&json!({"role": "owner"}))).await.0, 200);
    assert_eq!(alice.call(Method::PATCH, &member(&a), Some(&json!({"role": "admin"}))).await.0, 200);
    // An admin can touch neither an owner nor grant ownership.
    assert_eq!(alice.call(Method::PATCH, &member(&b), Some(&json!({"role": "viewer"}))).await.0, 403);
    assert_eq!(alice.call(Method::DELETE, &member(&b), None).await.0, 403);
    assert_eq!(alice.call(Method::PATCH, &member(&a), Some(&json!({"role": "owner"}))).await.0, 403);
    // Bob is now the last owner.
    assert_eq!(bob.call(Method::PATCH, &member(&b), Some(&json!({"role": "editor"}))).await.0, 409);
    assert_eq!(bob.call(Method::DELETE, &member(&a), None).await.0, 204);
    let (_, members) = bob.call(Method::GET, "/api/v1/orgs/alice/members", None).await;
    let roles: Vec<(&str, &str)> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [("bob@example.com", "owner")]);
    // Alice is out: her session sees alice's organization no more, exactly as if absent.
    assert_eq!(alice.call(Method::GET, "/api/v1/orgs/alice/members", None).await.0, 404);
    assert_eq!(alice.call(Method::GET, "/api/v1/orgs/no-such-org/members", None).await.0, 404);
    let (_, orgs) = alice.call(Method::GET, "/api/v1/orgs", None).await;
    assert_eq!(orgs["items"].as_array().unwrap().len(), 0);

    // The audit log has it all, with the users as actors.
    let (_, log) = bob.call(Method::GET, "/api/v1/orgs/alice/audit-events?limit=500", None).await;
    let actions: Vec<&str> =
        log["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["invite.create", "invite.accept", "invite.revoke", "member.update", "member.remove"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let removal = log["items"].as_array().unwrap().iter().find(|e| e["action"] == "member.remove").unwrap();
    assert_eq!(removal["actor"], format!("user:{b}"));
    assert_eq!(removal["target"], format!("members/{a}"));

    // A token minted through a session, and every session's id and CSRF token.
    let (_, minted) = bob
        .call(Method::POST, "/api/v1/orgs/alice/tokens", Some(&json!({"name": "ci", "role": "editor"})))
        .await;
    secrets.push(minted["token"].as_str().unwrap().to_owned());
    for s in [&alice, &bob, &carol] {
        secrets.push(s.browser.cookie("__Host-trellis_session").unwrap());
        secrets.push(s.csrf.clone());
    }

    // The login ids of every browser's logins, from the cookies they were given.
    for s in [&alice, &bob, &carol] {
        for line in s.browser.set_cookies.lock().unwrap().iter() {
            if let Some(v) = line.strip_prefix("__Host-trellis_login=").and_then(|r| r.split(';').next())
                && !v.is_empty()
            {
                secrets.push(v.to_owned());
            }
        }
    }

    // A dump of the whole database holds none of them in clear.
    let dump = pg_dump(&db).await;
    assert!(dump.contains("bob@example.com"), "the dump is of the right database");
    assert!(secrets.len() >= 13, "{}", secrets.len());
    assert_no_secret_in(&dump, &secrets);
}

/// One cell row of the matrix: method, path under the organization, body, the roles
/// allowed, and the status when allowed.
type Cell = (Method, String, Option<Value>, &'static [Role], u16);

/// Each role, through a session and through an API token, against each account endpoint:
/// only the allowed cells succeed; the rest get 403.
#[tokio::test]
async fn each_role_against_each_account_endpoint() {
    let db = TestDb::create().await;
    let peer = OidcPeer::start().await;
    let t = trellis_with_idp(&db, &peer, &[]).await;
    let owner = login(&t, &peer, &PeerUser::new("olga")).await;
    let (admin, _) = join(&t, &peer, &owner, "olga", &PeerUser::new("adam"), "admin").await;
    let (editor, _) = join(&t, &peer, &owner, "olga", &PeerUser::new("eddie"), "editor").await;
    let (viewer, _) = join(&t, &peer, &owner, "olga", &PeerUser::new("vera"), "viewer").await;
    let sessions =
        [(Role::Owner, &owner), (Role::Admin, &admin), (Role::Editor, &editor), (Role::Viewer, &viewer)];
    let victim = viewer.user_id();
    let nobody = uuid::Uuid::new_v4();

    // (method, path, body, roles allowed, status when allowed). Paths under the org.
    let cells: Vec<Cell> = vec![
        (Method::GET, String::new(), None, &Role::ALL, 200),
        (Method::PATCH, String::new(), Some(json!({"name": "Olga's"})), &[Role::Owner, Role::Admin], 200),
        (Method::GET, "/members".into(), None, &Role::ALL, 200),
        (
            Method::PATCH,
            format!("/members/{victim}"),
            Some(json!({"role": "viewer"})),
            &[Role::Owner, Role::Admin],
            200,
        ),
        (Method::DELETE, format!("/members/{nobody}"), None, &[Role::Owner, Role::Admin], 404),
        (Method::GET, "/invites".into(), None, &[Role::Owner, Role::Admin], 200),
        (
            Method::POST,
            "/invites".into(),
            Some(json!({"email": "z@example.com", "role": "viewer"})),
            &[Role::Owner, Role::Admin],
            201,
        ),
        (Method::DELETE, format!("/invites/{nobody}"), None, &[Role::Owner, Role::Admin], 404),
        (Method::GET, "/audit-events".into(), None, &[Role::Owner, Role::Admin], 200),
        (Method::GET, "/tokens".into(), None, &[Role::Owner, Role::Admin], 200),
    ];
    for (role, session) in sessions {
        let api = Api::new(&t, "olga", &token(&db, "olga", role).await);
        for (method, path, body, allowed, ok) in &cells {
            let expected = if allowed.contains(&role) { *ok } else { 403 };
            let (status, res) =
                session.call(method.clone(), &format!("/api/v1/orgs/olga{path}"), body.as_ref()).await;
            assert_eq!(status, expected, "session {role} {method} {path}: {res}");
            let mut req = api.req(method.clone(), path);
            if let Some(b) = body {
                req = req.json(b);
            }
            let (status, res) = send(req).await;
            assert_eq!(status, expected, "token {role} {method} {path}: {res}");
        }
        // Everyone may ask who they are and where they belong.
        assert_eq!(session.call(Method::GET, "/api/v1/me", None).await.0, 200);
        assert_eq!(session.call(Method::GET, "/api/v1/orgs", None).await.0, 200);
    }

    // Another tenant: a token and a session of organization "other" get 404 on every
    // endpoint of olga's, and not a byte of it.
    let intruder_token = token(&db, "other", Role::Owner).await;
    let intruder = login(&t, &peer, &PeerUser::new("ivan")).await;
    let foreign = Api::new(&t, "olga", &intruder_token);
    for (method, path, body, _, _) in &cells {
        let mut req = foreign.req(method.clone(), path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, res) = send(req).await;
        assert_eq!(status, 404, "token of another org: {method} {path}: {res}");
        assert!(!res.to_string().contains("olga@example.com") && !res.to_string().contains(&victim));
        let (status, res) =
            intruder.call(method.clone(), &format!("/api/v1/orgs/olga{path}"), body.as_ref()).await;
        assert_eq!(status, 404, "session of another org: {method} {path}: {res}");
        assert!(!res.to_string().contains("olga@example.com") && !res.to_string().contains(&victim));
    }
    let (_, orgs) = intruder.call(Method::GET, "/api/v1/orgs", None).await;
    assert_eq!(orgs["items"].as_array().unwrap().len(), 1, "only ivan's own: {orgs}");
}

#[tokio::test]
async fn without_an_idp_the_printed_link_logs_in_once() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let mut link = None;
    for _ in 0..100 {
        link =
            t.output().0.lines().find_map(|l| {
                l.trim().strip_prefix(&format!("{}/auth/local?token=", t.base)).map(str::to_owned)
            });
        if link.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let link =
        format!("{}/auth/local?token={}", t.base, link.expect("trellis serve prints a one-time login link"));
    assert_eq!(
        Browser::new().get(&format!("{}/auth/login", t.base)).await.status(),
        404,
        "no IdP, no OIDC login"
    );

    let browser = Browser::new();
    let res = browser.get(&link).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let s = Session::from_browser(&t, browser).await;
    assert_eq!(s.me["organizations"][0]["slug"], "default");
    assert_eq!(s.me["organizations"][0]["role"], "owner");

    // Once only.
    let again = Browser::new();
    let (status, problem) = send(again.request(Method::GET, &link)).await;
    assert_eq!(status, 401, "{problem}");
    assert!(again.cookie("__Host-trellis_session").is_none());

    // The local admin mints an API token through the API, and it works.
    let (status, minted) = s
        .call(
            Method::POST,
            "/api/v1/orgs/default/tokens",
            Some(&json!({"name": "terraform", "role": "editor"})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let api = Api::new(&t, "default", minted["token"].as_str().unwrap());
    assert_eq!(api.put("/meshes/prod", &json!({"spec": {}})).await.0, 201);
    let (_, log) = s.call(Method::GET, "/api/v1/orgs/default/audit-events", None).await;
    let actions: Vec<&str> =
        log["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"session.login") && actions.contains(&"token.create"), "{actions:?}");
    let token = link.rsplit_once("token=").unwrap().1.to_owned();
    let secrets = [
        token,
        s.browser.cookie("__Host-trellis_session").unwrap(),
        s.csrf.clone(),
        minted["token"].as_str().unwrap().to_owned(),
    ];
    assert_no_secret_in(&pg_dump(&db).await, &secrets);
}

/// A one-time local login link, made as `trellis serve` makes the one it prints at start-up.
async fn local_link(db: &TestDb, t: &Trellis) -> String {
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let store = db.store().await;
    let expires = chrono::Utc::now() + chrono::Duration::minutes(10);
    store.create_local_login(&trellis_api::auth::token_hash(&secret), expires).await.unwrap();
    store.close().await;
    format!("{}/auth/local?token={secret}", t.base)
}

/// Follows a local login link: the local admin's session.
async fn local_login(t: &Trellis, link: &str) -> Session {
    let browser = Browser::new();
    let res = browser.get(link).await;
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap_or_default());
    Session::from_browser(t, browser).await
}

/// (slug, role) of each organization a session belongs to.
fn orgs_of(s: &Session) -> Vec<(String, String)> {
    s.me["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["slug"].as_str().unwrap().to_owned(), o["role"].as_str().unwrap().to_owned()))
        .collect()
}

async fn member_ids(api: &Api) -> Vec<String> {
    let (status, members) = api.get("/members").await;
    assert_eq!(status, 200, "{members}");
    members["items"].as_array().unwrap().iter().map(|m| m["userId"].as_str().unwrap().to_owned()).collect()
}

/// Issue #10, item 7: the local admin is bound to the organization it created, by id. A
/// tenant holding `TRELLIS_LOCAL_ORG`'s slug — before the first local login, or after the
/// local organization renamed itself away — gains no owner.
#[tokio::test]
async fn the_local_admin_never_takes_over_an_organization_that_holds_its_slug() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;

    // Before the first local login, another tenant renames itself to the local slug.
    let mut squatter = Api::new(&t, "squatter", &token(&db, "squatter", Role::Owner).await);
    let (status, body) = send(squatter.req(Method::PATCH, "").json(&json!({"slug": "default"}))).await;
    assert_eq!(status, 200, "{body}");
    squatter.org = "default".into();
    let admin = local_login(&t, &local_link(&db, &t).await).await;
    let mine = orgs_of(&admin);
    assert_eq!(mine.len(), 1, "{mine:?}");
    let (own_slug, role) = mine[0].clone();
    assert!(own_slug.starts_with("default-") && role == "owner", "an organization of its own: {mine:?}");
    let own_id = admin.me["organizations"][0]["id"].clone();
    assert!(!member_ids(&squatter).await.contains(&admin.user_id()), "not a member of the squatter's");
    assert_eq!(admin.call(Method::GET, "/api/v1/orgs/default", None).await.0, 404);

    // The local admin renames its organization away; another tenant takes the old slug.
    let (status, body) =
        admin.call(Method::PATCH, &format!("/api/v1/orgs/{own_slug}"), Some(&json!({"slug": "home"}))).await;
    assert_eq!(status, 200, "{body}");
    let mut victim = Api::new(&t, "victim", &token(&db, "victim", Role::Owner).await);
    let (status, body) = send(victim.req(Method::PATCH, "").json(&json!({"slug": own_slug}))).await;
    assert_eq!(status, 200, "{body}");
    victim.org = own_slug.clone();

    // The next link (a restart of `trellis serve` prints one) logs in to its own
    // organization, by id, and nothing else.
    let again = local_login(&t, &local_link(&db, &t).await).await;
    assert_eq!(again.user_id(), admin.user_id());
    assert_eq!(orgs_of(&again), [("home".to_owned(), "owner".to_owned())]);
    assert_eq!(again.me["organizations"][0]["id"], own_id);
    assert!(member_ids(&victim).await.is_empty(), "the victim's organization gained no member");
    assert!(member_ids(&squatter).await.is_empty(), "nor the squatter's");
    let (status, problem) = again.call(Method::GET, &format!("/api/v1/orgs/{own_slug}"), None).await;
    assert_eq!(status, 404, "{problem}");

    // Once its organization is deleted, the next login creates a new one of its own.
    let (status, body) = again.call(Method::DELETE, "/api/v1/orgs/home", None).await;
    assert_eq!(status, 204, "{body}");
    let third = local_login(&t, &local_link(&db, &t).await).await;
    let mine = orgs_of(&third);
    assert!(mine.len() == 1 && mine[0].0.starts_with("default-") && mine[0].1 == "owner", "{mine:?}");
    assert_ne!(third.me["organizations"][0]["id"], own_id);
    assert!(member_ids(&squatter).await.is_empty() && member_ids(&victim).await.is_empty());
}

/// `trellis create-token --local-admin --local-org ORG`: the token and what the command said.
async fn local_admin_token(db: &TestDb, org: &str) -> (String, String) {
    let out = trellis()
        .env("TRELLIS_DATABASE_URL", db.owner_url())
        .args(["create-token", "--local-admin", "--local-org", org])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), said)
}

/// `trellis create-token --local-admin` (what `trellis demo` runs): the token belongs to the
/// organization the local admin owns, made as its first login would make it, so the one-time
/// link then shows what the token created. It takes over no tenant holding the slug.
#[tokio::test]
async fn a_local_admin_token_belongs_to_the_organization_the_login_link_opens() {
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    // The token comes first and creates a mesh; the first login then lands where it is.
    let api = Api::new(&t, "shop-team", &local_admin_token(&db, "shop-team").await.0);
    let (status, body) = api.put("/meshes/shop", &json!({"spec": {}})).await;
    assert_eq!(status, 201, "{body}");
    let admin = local_login(&t, &local_link(&db, &t).await).await;
    assert_eq!(orgs_of(&admin), [("shop-team".to_owned(), "owner".to_owned())]);
    let (status, mesh) = admin.call(Method::GET, "/api/v1/orgs/shop-team/meshes/shop", None).await;
    assert_eq!(status, 200, "{mesh}");
    assert_eq!(member_ids(&api).await, [admin.user_id()]);
    // Again: the same organization, no second one.
    let again = Api::new(&t, "shop-team", &local_admin_token(&db, "shop-team").await.0);
    assert_eq!(again.get("/meshes/shop").await.0, 200);
    let admin = local_login(&t, &local_link(&db, &t).await).await;
    assert_eq!(orgs_of(&admin), [("shop-team".to_owned(), "owner".to_owned())]);

    // A tenant that holds the slug first is not taken over: the local admin gets its own.
    let db = TestDb::create().await;
    let mut cmd = trellis();
    cmd.env("TRELLIS_DATABASE_URL", db.owner_url()).args(["serve", "--http-addr", "127.0.0.1:0"]);
    let t = Trellis::start(cmd).await;
    let squatter = Api::new(&t, "shop-team", &token(&db, "shop-team", Role::Owner).await);
    let (_, said) = local_admin_token(&db, "shop-team").await;
    assert!(said.contains("for organization shop-team-"), "{said}");
    assert!(member_ids(&squatter).await.is_empty(), "the squatter's organization gained no member");
}
