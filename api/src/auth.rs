//! Who is calling: an API token (`Authorization: Bearer trls_pat_…`) or a console session
//! (the `__Host-trellis_session` cookie), checked against the permission matrix in `model`
//! — in this one place. A session user's role is their membership role in the organization
//! the request addresses.

use axum::http::{HeaderMap, header};
use trellis_model::{Action, OrgId, OrgSlug, Role, Token, TokenKind};
use trellis_store::{ApiToken, Org, Session, Store, User};
use uuid::Uuid;

use crate::session::session_secret;
use crate::{ApiError, AppState};

/// An authenticated caller acting within one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Org,
    pub role: Role,
    pub via: Via,
    /// How the audit log names the caller: `token:<id>` or `user:<id>`.
    pub actor: String,
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An API token, by id.
    Token(Uuid),
    /// A console session of this user.
    Session { user: Uuid },
}

/// Whoever is calling, before any organization is involved.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API token: bound to one organization and a role.
    Token { org: OrgId, record: ApiToken },
    /// A logged-in user: the role depends on the organization.
    User { user: User, session: Session },
}

impl Principal {
    /// How the audit log names this principal.
    pub fn actor(&self) -> String {
        match self {
            Principal::Token { record, .. } => format!("token:{}", record.id),
            Principal::User { user, .. } => format!("user:{}", user.id),
        }
    }
}

/// SHA-256 of a token's text: what is stored and looked up.
pub use trellis_model::token_sha256 as token_hash;

/// Authenticates the request and checks that the caller may do `action` in the
/// organization `org_slug`. Another organization's (or a missing) organization is a 404,
/// exactly as if it did not exist; a role that lacks the action is a 403. (CSRF tokens of
/// cookie-authenticated writes are checked before any handler, by `session::csrf_guard`.)
pub async fn authorize(
    s: &AppState,
    headers: &HeaderMap,
    org_slug: &str,
    action: Action,
) -> Result<Caller, ApiError> {
    let principal = authenticate(s, headers).await?;
    let not_found = || ApiError::not_found(format!("organization {org_slug:?} not found"));
    let slug = OrgSlug::parse(org_slug).map_err(|_| not_found())?;
    let org = s.store.org_by_slug(&slug).await?.ok_or_else(not_found)?;
    let (role, via) = match &principal {
        Principal::Token { org: token_org, record } => {
            if *token_org != org.id {
                return Err(not_found());
            }
            (record.role, Via::Token(record.id))
        }
        Principal::User { user, .. } => {
            let mut tx = s.store.tenant(org.id).await?;
            let role = tx.member_role(user.id).await?.ok_or_else(not_found)?;
            tx.commit().await?;
            (role, Via::Session { user: user.id })
        }
    };
    if !role.allows(action) {
        return Err(ApiError::forbidden(format!("the role {role} may not {}", describe(action))));
    }
    Ok(Caller { org, role, via, actor: principal.actor() })
}

/// Authenticates the request: a bearer token when the Authorization header is present
/// (a cookie is then ignored), else the session cookie.
pub async fn authenticate(s: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authenticate_token(&s.store, headers).await;
    }
    match session_secret(headers) {
        Some(secret) => {
            let session = s
                .store
                .session(&token_hash(secret), s.accounts.session_idle)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the session has ended; log in again"))?;
            let user = s
                .store
                .user(session.user_id)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the session has ended; log in again"))?;
            Ok(Principal::User { user, session })
        }
        None => Err(ApiError::unauthorized(
            "log in (session cookie) or send an API token as `Authorization: Bearer trls_pat_…`",
        )),
    }
}

async fn authenticate_token(store: &Store, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let text = bearer(headers)?;
    let token = Token::parse(TokenKind::Pat, text).map_err(|e| {
        ApiError::unauthorized(format!("the bearer token is not a valid Trellis API token: {e}"))
    })?;
    let mut tx = store.tenant(token.org).await?;
    let record = tx
        .authenticate_token(&token_hash(text))
        .await?
        .ok_or_else(|| ApiError::unauthorized("the API token is unknown, revoked or expired"))?;
    tx.commit().await?;
    Ok(Principal::Token { org: token.org, record })
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send an API token as `Authorization: Bearer trls_pat_…`"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("use the Bearer scheme: `Authorization: Bearer trls_pat_…`"));
    }
    Ok(token.trim())
}

fn describe(action: Action) -> &'static str {
    match action {
        Action::Read => "read this organization",
        Action::WriteConfig => "change mesh configuration",
        Action::ReadAudit => "read the audit log",
        Action::ManageMembers => "manage members",
        Action::ManageTokens => "manage tokens",
        Action::ManageCa => "manage certificate authorities",
        Action::ManageOrg => "change the organization",
        Action::DeleteOrg => "delete the organization",
    }
}
