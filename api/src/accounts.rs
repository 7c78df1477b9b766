//! Accounts: settings, the login routes (OpenID Connect and the no-IdP local link),
//! sign-up, sessions and logout.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use trellis_control::{Control, NewSession};
use trellis_store::{Store, StoreError};

use crate::auth::{request, token_hash};
use crate::body::ApiQuery;
use crate::error::{ApiError, BadGateway, BadRequest, Forbidden, NotFound, Unauthorized};
use crate::oidc::LoginError;
use crate::session::{
    LOGIN_COOKIE, SESSION_COOKIE, clear_cookie, cookie, random_secret, session_secret, set_cookie,
};
use crate::state::{Accounts, AppState};

/// How long a login may take between `/auth/login` and the callback.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Mints a one-time local admin login link (no-IdP mode), valid for `ttl`.
pub async fn mint_local_login(
    store: &Store,
    accounts: &Accounts,
    ttl: Duration,
) -> Result<String, StoreError> {
    let token = random_secret();
    trellis_control::mint_local_login(store, &token, ttl).await?;
    Ok(accounts.link(&format!("/auth/local?token={token}")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LoginQuery {
    /// A local path to land on after login
    #[serde(default)]
    #[param(nullable = false, max_length = 512)]
    return_to: Option<String>,
}

/// Longest `return_to` that is followed after login (the document's `max_length` above).
const MAX_RETURN_TO: usize = 512;
const _: () = assert!(MAX_RETURN_TO == 512);

/// Only a local absolute path may be a redirect target after login (no open redirect).
fn safe_return_to(r: Option<String>) -> String {
    match r {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && p.len() <= MAX_RETURN_TO
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
#[utoipa::path(get, path = "/auth/login", operation_id = "login",
    summary = "Start an OpenID Connect login: redirects to the identity provider (code flow, PKCE, state, nonce)",
    security(),
    params(LoginQuery),
    responses(
        (status = 303, description = "To the identity provider; sets the short-lived login cookie", headers(("Location" = String))),
        (status = 400, response = BadRequest), (status = 404, response = NotFound), (status = 502, response = BadGateway)))]
pub(crate) async fn login(
    State(s): State<AppState>,
    State(ctl): State<Control>,
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
    ctl.begin_login(&login_id, &pending, LOGIN_TTL).await?;
    let mut res = redirect(req.url.as_str());
    res.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &login_id, LOGIN_TTL.as_secs()));
    Ok(res)
}

fn idp_unreachable(e: LoginError) -> ApiError {
    tracing::warn!(error = %e, "OpenID provider");
    ApiError::bad_gateway("the identity provider could not be reached or answered wrongly; try again later")
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    #[param(nullable = false)]
    code: Option<String>,
    #[serde(default)]
    #[param(nullable = false)]
    state: Option<String>,
    #[serde(default)]
    #[param(nullable = false)]
    error: Option<String>,
}

/// `GET /auth/callback`: finishes the login. The pending login is consumed by the first
/// callback, whatever its outcome, so a callback URL works at most once.
#[utoipa::path(get, path = "/auth/callback", operation_id = "loginCallback",
    summary = "The identity provider's redirect back: validates state and the ID token, signs up new users, starts a session",
    security(),
    params(CallbackQuery),
    responses(
        (status = 303, description = "Logged in; sets the session cookie", headers(("Location" = String))),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 502, response = BadGateway)))]
pub(crate) async fn callback(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let result = finish_login(&s, &ctl, q, &headers).await;
    let mut res = match result {
        Ok(res) => res,
        Err(e) => no_store(e.into_response()),
    };
    res.headers_mut().append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
    res
}

async fn finish_login(
    s: &AppState,
    ctl: &Control,
    q: CallbackQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let oidc =
        s.accounts.oidc.as_ref().ok_or_else(|| ApiError::not_found("no OpenID provider is configured"))?;
    let login_id = cookie(headers, LOGIN_COOKIE).ok_or_else(|| {
        ApiError::bad_request(
            "no login is in progress in this browser (its login cookie is missing); start again",
        )
    })?;
    let pending = ctl
        .take_login(login_id)
        .await?
        .ok_or_else(|| ApiError::bad_request("this login has expired or was already used; start again"))?;
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
    let session = ctl.log_in(&identity, session_secret(headers), request(headers).request_id).await?;
    Ok(session_started(ctl, &session, &pending.return_to))
}

/// The answer to a login: the new session's cookie, and a redirect.
fn session_started(ctl: &Control, session: &NewSession, return_to: &str) -> Response {
    let mut res = redirect(return_to);
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session.secret, ctl.session_lifetime().as_secs()),
    );
    res
}

/// `POST /auth/logout`: ends the session (the CSRF guard has already checked the token).
#[utoipa::path(post, path = "/auth/logout", operation_id = "logout",
    summary = "End the session (with a session cookie it needs x-csrf-token; without one it only clears the cookie)",
    security(),
    responses((status = 204, description = "Logged out; the session cookie is cleared"), (status = 403, response = Forbidden)))]
pub(crate) async fn logout(State(ctl): State<Control>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(secret) = session_secret(&headers) {
        ctl.log_out(secret, request(&headers).request_id).await?;
    }
    let mut res = no_store(StatusCode::NO_CONTENT.into_response());
    res.headers_mut().append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    Ok(res)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LocalQuery {
    #[serde(default)]
    #[param(nullable = false, required = true)]
    token: Option<String>,
}

/// `GET /auth/local?token=…`: the no-IdP mode's one-time link logs in the local admin,
/// owner of the organization it created at its first login.
#[utoipa::path(get, path = "/auth/local", operation_id = "localLogin",
    summary = "No-IdP mode: the one-time link printed by `trellis serve` logs in the local admin",
    security(),
    params(LocalQuery),
    responses(
        (status = 303, description = "Logged in; sets the session cookie", headers(("Location" = String))),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 404, response = NotFound)))]
pub(crate) async fn local_login(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<LocalQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if s.accounts.oidc.is_some() {
        return Err(ApiError::not_found(
            "local login links exist only when no OpenID provider is configured",
        ));
    }
    let token = q.token.ok_or_else(|| ApiError::bad_request("the link has no token"))?;
    let session = ctl.log_in_locally(&token, session_secret(&headers), request(&headers).request_id).await?;
    Ok(session_started(&ctl, &session, "/"))
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
