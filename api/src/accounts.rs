//! Accounts: settings, the login routes (OpenID Connect and the no-IdP local link),
//! sign-up, sessions and logout.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use trellis_model::{OrgId, OrgSlug, Role};
use trellis_store::{AuditEvent, NewUser, Store, StoreError, User};
use url::Url;

use crate::auth::token_hash;
use crate::body::ApiQuery;
use crate::oidc::{Identity, LoginError, OidcProvider};
use crate::session::{
    LOGIN_COOKIE, SESSION_COOKIE, clear_cookie, cookie, random_secret, session_secret, set_cookie,
};
use crate::{ApiError, AppState};

/// The issuer recorded for the no-IdP mode's local admin.
pub const LOCAL_ISSUER: &str = "trellis:local";
const LOCAL_SUBJECT: &str = "admin";
/// How long a login may take between `/auth/login` and the callback.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Everything the account routes need to know about this installation.
pub struct Accounts {
    /// Where browsers reach Trellis; the OIDC redirect URI and links are built from it.
    pub public_url: Url,
    /// The OpenID provider; `None` is the no-IdP mode (one-time local login links).
    pub oidc: Option<OidcProvider>,
    /// A session ends after this long without a request …
    pub session_idle: Duration,
    /// … and this long after login, whatever happens.
    pub session_lifetime: Duration,
    /// No-IdP mode: the slug of the organization the local admin's first login creates.
    pub local_org: OrgSlug,
}

impl Accounts {
    /// `<public_url><path>`.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.public_url.as_str().trim_end_matches('/'))
    }
}

/// Mints a one-time local admin login link (no-IdP mode), valid for `ttl`.
pub async fn mint_local_login(
    store: &Store,
    accounts: &Accounts,
    ttl: Duration,
) -> Result<String, StoreError> {
    let token = random_secret();
    store.create_local_login(&token_hash(&token), Utc::now() + ttl).await?;
    Ok(accounts.link(&format!("/auth/local?token={token}")))
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    return_to: Option<String>,
}

/// Only a local absolute path may be a redirect target after login (no open redirect).
fn safe_return_to(r: Option<String>) -> String {
    match r {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && p.len() <= 512
                && !p.chars().any(char::is_control) =>
        {
            p
        }
        _ => "/".to_owned(),
    }
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res
}

fn redirect(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    res.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_str(location).unwrap_or(header::HeaderValue::from_static("/")),
    );
    no_store(res)
}

/// `GET /auth/login`: starts the authorization code flow.
pub(crate) async fn login(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<LoginQuery>,
) -> Result<Response, ApiError> {
    let Some(oidc) = &s.accounts.oidc else {
        return Err(ApiError::not_found(
            "no OpenID provider is configured (TRELLIS_OIDC_ISSUER); use the one-time login link that \
             `trellis serve` prints",
        ));
    };
    let req = oidc.authorization_request().await.map_err(idp_unreachable)?;
    let login_id = random_secret();
    let pending = trellis_store::PendingLogin {
        state: req.state,
        nonce: req.nonce,
        pkce_verifier: req.pkce_verifier,
        return_to: safe_return_to(q.return_to),
    };
    s.store.begin_login(&token_hash(&login_id), &pending, Utc::now() + LOGIN_TTL).await?;
    let mut res = redirect(req.url.as_str());
    res.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &login_id, LOGIN_TTL.as_secs()));
    Ok(res)
}

fn idp_unreachable(e: LoginError) -> ApiError {
    tracing::warn!(error = %e, "OpenID provider");
    ApiError::bad_gateway("the identity provider could not be reached or answered wrongly; try again later")
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /auth/callback`: finishes the login. The pending login is consumed by the first
/// callback, whatever its outcome, so a callback URL works at most once.
pub(crate) async fn callback(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let result = finish_login(&s, q, &headers).await;
    let mut res = match result {
        Ok(res) => res,
        Err(e) => no_store(e.into_response()),
    };
    res.headers_mut().append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
    res
}

async fn finish_login(s: &AppState, q: CallbackQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    let oidc =
        s.accounts.oidc.as_ref().ok_or_else(|| ApiError::not_found("no OpenID provider is configured"))?;
    let login_id = cookie(headers, LOGIN_COOKIE).ok_or_else(|| {
        ApiError::bad_request(
            "no login is in progress in this browser (its login cookie is missing); start again",
        )
    })?;
    let pending =
        s.store.take_login(&token_hash(login_id)).await?.ok_or_else(|| {
            ApiError::bad_request("this login has expired or was already used; start again")
        })?;
    if let Some(error) = q.error {
        let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(100).collect();
        return Err(ApiError::unauthorized(format!("the identity provider refused the login: {error}")));
    }
    let state = q.state.ok_or_else(|| ApiError::bad_request("the callback has no state parameter"))?;
    // Comparing digests keeps the comparison's timing independent of the expected state.
    if token_hash(&state) != token_hash(&pending.state) {
        return Err(ApiError::bad_request("the state parameter does not match this login; start again"));
    }
    let code = q.code.ok_or_else(|| ApiError::bad_request("the callback has no code parameter"))?;
    let identity = oidc.finish(&code, &pending.pkce_verifier, &pending.nonce).await.map_err(|e| match e {
        LoginError::IdToken(_) | LoginError::NoIdToken => {
            tracing::warn!(error = %e, "login refused");
            ApiError::unauthorized("the identity provider's ID token failed validation; the login is refused")
        }
        other => idp_unreachable(other),
    })?;
    let (user, _) = find_or_sign_up(&s.store, &identity, crate::auth::request(headers).request_id).await?;
    start_session(s, &user, headers, &pending.return_to).await
}

/// The user for this identity, created with an organization of their own on first login.
/// Returns whether it was a sign-up.
async fn find_or_sign_up(
    store: &Store,
    id: &Identity,
    request_id: Option<String>,
) -> Result<(User, bool), ApiError> {
    if let Some(user) = store.user_by_subject(&id.issuer, &id.subject).await? {
        let user = store.record_login(user.id, id.email.as_deref(), id.name.as_deref()).await?;
        return Ok((user, false));
    }
    let label = id.name.as_deref().or(id.email.as_deref()).unwrap_or("my organization");
    let base = OrgSlug::derive(label, 30);
    let org_name: String = label.chars().take(100).collect();
    for slug in candidate_slugs(&base) {
        if store.org_by_slug(&slug).await?.is_some() {
            continue;
        }
        let new = NewUser {
            oidc_issuer: &id.issuer,
            oidc_subject: &id.subject,
            email: id.email.as_deref(),
            display_name: id.name.as_deref(),
        };
        match sign_up(store, &new, &slug, &org_name, request_id.clone()).await {
            Ok(user) => return Ok((user, true)),
            Err(StoreError::Conflict { constraint }) if constraint == "organizations_slug_key" => continue,
            // A concurrent first login of the same person won the race: use its user.
            Err(StoreError::Conflict { constraint }) if constraint == "users_subject_key" => {
                let user = store.user_by_subject(&id.issuer, &id.subject).await?.ok_or_else(|| {
                    ApiError::internal(&"a user vanished right after a conflicting sign-up")
                })?;
                return Ok((user, false));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict("no free organization slug was found for the sign-up; try again"))
}

/// Slugs to try for a new organization: `base`, then `base-<4 random hex digits>`.
fn candidate_slugs(base: &OrgSlug) -> impl Iterator<Item = OrgSlug> + '_ {
    std::iter::once(base.clone()).chain((1..8).map(|_| {
        base.with_suffix(&format!("{:04x}", rand::random::<u16>())).expect("a hex suffix keeps a slug valid")
    }))
}

/// Creates the user, their organization, the owner membership and the audit events in
/// one transaction.
async fn sign_up(
    store: &Store,
    new: &NewUser<'_>,
    slug: &OrgSlug,
    org_name: &str,
    request_id: Option<String>,
) -> Result<User, StoreError> {
    let mut tx = store.tenant(OrgId::new()).await?;
    let user = tx.insert_user(new).await?;
    let org = tx.create_own_org(slug, org_name).await?;
    tx.add_member(user.id, Role::Owner).await?;
    let actor = format!("user:{}", user.id);
    tx.record_audit(&AuditEvent {
        actor: actor.clone(),
        action: "user.signup".into(),
        target: format!("users/{}", user.id),
        request_id: request_id.clone(),
        details: json!({ "issuer": new.oidc_issuer, "email": new.email }),
    })
    .await?;
    tx.record_audit(&AuditEvent {
        actor,
        action: "org.create".into(),
        target: format!("orgs/{}", org.slug),
        request_id,
        details: json!({ "name": org.name }),
    })
    .await?;
    tx.commit().await?;
    tracing::info!(user = %user.id, org = %org.slug, "sign-up");
    Ok(user)
}

/// Creates a session for `user` (replacing the browser's previous one: the id is rotated
/// at every login), records the login, sets the cookie and redirects.
async fn start_session(
    s: &AppState,
    user: &User,
    headers: &HeaderMap,
    return_to: &str,
) -> Result<Response, ApiError> {
    if let Some(old) = session_secret(headers) {
        s.store.delete_session(&token_hash(old)).await?;
    }
    let secret = random_secret();
    let session = s
        .store
        .create_session(&token_hash(&secret), user.id, Utc::now() + s.accounts.session_lifetime)
        .await?;
    audit_in_every_org(
        s,
        user,
        "session.login",
        crate::auth::request(headers).request_id,
        json!({ "session": session.id }),
    )
    .await?;
    let mut res = redirect(return_to);
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &secret, s.accounts.session_lifetime.as_secs()),
    );
    Ok(res)
}

/// Logins and logouts concern every organization the user can act in: each one's audit
/// log shows them.
async fn audit_in_every_org(
    s: &AppState,
    user: &User,
    action: &str,
    request_id: Option<String>,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let mut utx = s.store.user_tx(user.id).await?;
    let orgs = utx.memberships().await?;
    utx.commit().await?;
    for m in orgs {
        let mut tx = s.store.tenant(m.org.id).await?;
        tx.record_audit(&AuditEvent {
            actor: format!("user:{}", user.id),
            action: action.to_owned(),
            target: format!("users/{}", user.id),
            request_id: request_id.clone(),
            details: details.clone(),
        })
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// `POST /auth/logout`: ends the session (the CSRF guard has already checked the token).
pub(crate) async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(secret) = session_secret(&headers)
        && let Some(session) = s.store.session(&token_hash(secret), s.accounts.session_idle).await?
    {
        s.store.delete_session(&token_hash(secret)).await?;
        if let Some(user) = s.store.user(session.user_id).await? {
            audit_in_every_org(
                &s,
                &user,
                "session.logout",
                crate::auth::request(&headers).request_id,
                json!({ "session": session.id }),
            )
            .await?;
        }
    }
    let mut res = no_store(StatusCode::NO_CONTENT.into_response());
    res.headers_mut().append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    Ok(res)
}

#[derive(Deserialize)]
pub(crate) struct LocalQuery {
    #[serde(default)]
    token: Option<String>,
}

/// `GET /auth/local?token=…`: the no-IdP mode's one-time link logs in the local admin,
/// owner of the organization it created at its first login.
pub(crate) async fn local_login(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<LocalQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if s.accounts.oidc.is_some() {
        return Err(ApiError::not_found(
            "local login links exist only when no OpenID provider is configured",
        ));
    }
    let token = q.token.ok_or_else(|| ApiError::bad_request("the link has no token"))?;
    if !s.store.use_local_login(&token_hash(&token)).await? {
        return Err(ApiError::unauthorized(
            "this login link was already used or has expired; restart `trellis serve` for a new one",
        ));
    }
    let user = ensure_local_admin(&s, crate::auth::request(&headers).request_id).await?;
    start_session(&s, &user, &headers, "/").await
}

/// The local admin, bound by id to the organization it created (never to whatever
/// organization holds `TRELLIS_LOCAL_ORG` today: any tenant may rename itself to that slug).
/// A login changes no membership of an existing organization; only when there is none yet,
/// or it was deleted, does the local admin get a new organization, under the configured slug
/// when that is free.
async fn ensure_local_admin(s: &AppState, request_id: Option<String>) -> Result<User, ApiError> {
    let mut tx = s.store.tenant(OrgId::new()).await?;
    let binding = tx.lock_local_admin().await?;
    let existing_user = s.store.user_by_subject(LOCAL_ISSUER, LOCAL_SUBJECT).await?;
    let bound_org = match (&binding, &existing_user) {
        (Some(b), _) => b.org,
        // Installed before the binding existed: the organization it created is the one it
        // has owned the longest.
        (None, Some(user)) => {
            let mut utx = s.store.user_tx(user.id).await?;
            let org = utx.oldest_owned_org().await?;
            utx.commit().await?;
            org
        }
        (None, None) => None,
    };
    if let (Some(user), Some(org)) = (&existing_user, bound_org) {
        if binding.is_none() {
            tx.bind_local_admin(user.id, org).await?;
        }
        tx.commit().await?;
        return Ok(s.store.record_login(user.id, None, None).await?);
    }
    let user = match existing_user {
        Some(u) => u,
        None => {
            tx.insert_user(&NewUser {
                oidc_issuer: LOCAL_ISSUER,
                oidc_subject: LOCAL_SUBJECT,
                email: None,
                display_name: Some("Local admin"),
            })
            .await?
        }
    };
    let mut slug = None;
    for candidate in candidate_slugs(&s.accounts.local_org) {
        if s.store.org_by_slug(&candidate).await?.is_none() {
            slug = Some(candidate);
            break;
        }
    }
    let slug = slug.ok_or_else(|| {
        ApiError::conflict("no free organization slug was found for the local admin; set TRELLIS_LOCAL_ORG")
    })?;
    if slug != s.accounts.local_org {
        tracing::warn!(taken = %s.accounts.local_org, %slug,
            "the local organization's slug belongs to another organization; the local admin gets its own");
    }
    let org = tx.create_own_org(&slug, slug.as_str()).await?;
    tx.add_member(user.id, Role::Owner).await?;
    tx.bind_local_admin(user.id, org.id).await?;
    let actor = format!("user:{}", user.id);
    tx.record_audit(&AuditEvent {
        actor: actor.clone(),
        action: "org.create".into(),
        target: format!("orgs/{}", org.slug),
        request_id: request_id.clone(),
        details: json!({ "name": org.name, "via": "local-admin" }),
    })
    .await?;
    tx.record_audit(&AuditEvent {
        actor,
        action: "member.add".into(),
        target: format!("members/{}", user.id),
        request_id,
        details: json!({ "role": Role::Owner, "via": "local-admin" }),
    })
    .await?;
    tx.commit().await?;
    Ok(s.store.record_login(user.id, None, None).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_return_targets() {
        assert_eq!(safe_return_to(Some("/meshes?x=1".into())), "/meshes?x=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "evil", ""] {
            assert_eq!(safe_return_to(Some(bad.into())), "/", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/");
    }
}
