//! Who is calling, as the REST API reads it: an API token (`Authorization: Bearer
//! trls_pat_…`) or a console session (the `__Host-trellis_session` cookie), handed to the
//! application core, which authenticates it, resolves the organization and checks roles.
//! The extractors here replace the opening every handler once wrote for itself.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use std::collections::HashMap;
use trellis_control::{Control, Credential, Request, Scope};

use crate::error::ApiError;
use crate::session::session_secret;
use crate::state::REQUEST_ID;

/// SHA-256 of a token's text: what is stored and looked up.
pub use trellis_control::token_hash;

/// The request as the application core sees it: its credential (a bearer token when the
/// Authorization header is present, a cookie then being ignored; else the session cookie)
/// and its request id.
pub fn request(headers: &HeaderMap) -> Request {
    let credential = if headers.contains_key(header::AUTHORIZATION) {
        match bearer(headers) {
            Ok(token) => Credential::ApiToken(token.to_owned()),
            Err(why) => Credential::Malformed(why),
        }
    } else {
        match session_secret(headers) {
            Some(secret) => Credential::Session(secret.to_owned()),
            None => Credential::None,
        }
    };
    let request_id = headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Request { credential, request_id }
}

/// The bearer token of the Authorization header, or why it is not one.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("send an API token as `Authorization: Bearer trls_pat_…`")?;
    let value = value.to_str().map_err(|_| "the Authorization header is not text")?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("use the Bearer scheme: `Authorization: Bearer trls_pat_…`");
    }
    Ok(token.trim())
}

/// The request's credential and id, not yet checked: for the routes outside any organization.
pub struct Who(pub Request);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Who(request(&parts.headers)))
    }
}

/// The caller, authenticated, in the organization of the path's `{org}`, with that tenant's
/// transaction open (one pool connection for the whole request).
pub struct OrgScope(pub Scope);

impl<S: Send + Sync> FromRequestParts<S> for OrgScope
where
    Control: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let org = org_param(parts, state).await?;
        let scope = Control::from_ref(state).open(&request(&parts.headers), &org).await?;
        Ok(OrgScope(scope))
    }
}

/// [`OrgScope`] with a request body `B`, read first: no pool connection waits on a client's
/// upload.
pub struct Scoped<B> {
    pub scope: Scope,
    pub body: B,
}

impl<S, B> FromRequest<S> for Scoped<B>
where
    S: Send + Sync,
    Control: FromRef<S>,
    B: FromRequest<S> + Send,
    ApiError: From<B::Rejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let org = org_param(&mut parts, state).await?;
        let request = request(&parts.headers);
        let body = B::from_request(axum::extract::Request::from_parts(parts, body), state).await?;
        let scope = Control::from_ref(state).open(&request, &org).await?;
        Ok(Scoped { scope, body })
    }
}

async fn org_param<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    params.remove("org").ok_or_else(|| ApiError::internal(&"a scoped route without {org}"))
}
