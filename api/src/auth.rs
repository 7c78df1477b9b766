//! Who is calling: API tokens (`Authorization: Bearer trls_pat_…`), checked against the
//! permission matrix in `model` — in this one place.

use axum::http::{HeaderMap, header};
use ring::digest::{SHA256, digest};
use trellis_model::{Action, OrgId, OrgSlug, Role, Token, TokenKind};
use trellis_store::{ApiToken, Org, Store};
use uuid::Uuid;

use crate::ApiError;

/// An authenticated caller acting within one organization.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Org,
    pub role: Role,
    pub token_id: Uuid,
    /// How the audit log names the caller.
    pub actor: String,
}

/// SHA-256 of a token's text: what is stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    digest(&SHA256, token.as_bytes()).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Authenticates the request and checks that the caller may do `action` in the
/// organization `org_slug`. Another organization's (or a missing) organization is a 404,
/// exactly as if it did not exist; a role that lacks the action is a 403.
pub async fn authorize(
    store: &Store,
    headers: &HeaderMap,
    org_slug: &str,
    action: Action,
) -> Result<Caller, ApiError> {
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
    let not_found = || ApiError::not_found(format!("organization {org_slug:?} not found"));
    let slug = OrgSlug::parse(org_slug).map_err(|_| not_found())?;
    let org = store.org_by_slug(&slug).await?.filter(|o| o.id == token.org).ok_or_else(not_found)?;
    if !record.role.allows(action) {
        return Err(ApiError::forbidden(format!("the role {} may not {}", record.role, describe(action))));
    }
    Ok(Caller { org, role: record.role, token_id: record.id, actor: format!("token:{}", record.id) })
}

/// Checks the bearer token alone: its organization and record.
pub async fn authenticate(store: &Store, headers: &HeaderMap) -> Result<(OrgId, ApiToken), ApiError> {
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
    Ok((token.org, record))
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
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
