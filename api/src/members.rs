//! Members and invitations of an organization, and accepting an invitation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::{Action, Role, SECRET_LEN, Token, TokenKind};
use trellis_store::{AuditEvent, Invite, Member, StoreError};
use uuid::Uuid;

use crate::auth::{Caller, Principal, authenticate, authorize, token_hash};
use crate::body::{JsonBody, from_value};
use crate::{ApiError, AppState, request_id};

/// Longest an invitation may stay valid, in hours (30 days); the default is 7 days.
pub const MAX_INVITE_HOURS: i64 = 720;
const DEFAULT_INVITE_HOURS: i64 = 168;

fn render_member(m: &Member) -> Value {
    json!({
        "userId": m.user_id,
        "email": m.email,
        "name": m.display_name,
        "role": m.role,
        "joinedAt": m.created_at,
    })
}

fn invite_status(i: &Invite) -> &'static str {
    if i.accepted_at.is_some() {
        "accepted"
    } else if i.revoked_at.is_some() {
        "revoked"
    } else if i.expires_at <= Utc::now() {
        "expired"
    } else {
        "pending"
    }
}

fn render_invite(i: &Invite) -> Value {
    json!({
        "id": i.id,
        "email": i.email,
        "role": i.role,
        "status": invite_status(i),
        "createdBy": i.created_by,
        "createdAt": i.created_at,
        "expiresAt": i.expires_at,
        "acceptedAt": i.accepted_at,
        "acceptedBy": i.accepted_by,
        "revokedAt": i.revoked_at,
    })
}

fn parse_user(user: &str) -> Result<Uuid, ApiError> {
    user.parse().map_err(|_| ApiError::not_found("member not found"))
}

/// A caller may not act on a member more powerful than itself, nor hand out a role more
/// powerful than its own (roles order from owner down to viewer).
fn check_rank(caller: &Caller, target: Role, granted: Option<Role>) -> Result<(), ApiError> {
    if target < caller.role {
        return Err(ApiError::forbidden(format!("a {} may not change or remove an {}", caller.role, target)));
    }
    if let Some(g) = granted
        && g < caller.role
    {
        return Err(ApiError::forbidden(format!("a {} may not grant the role {g}", caller.role)));
    }
    Ok(())
}

fn last_owner(e: StoreError) -> ApiError {
    match e {
        StoreError::LastOwner => {
            ApiError::conflict("the organization must keep at least one owner: make someone else owner first")
        }
        other => other.into(),
    }
}

pub(crate) async fn list_members(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let members = tx.members().await?;
    Ok(Json(json!({ "items": members.iter().map(render_member).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemberPatch {
    role: Role,
}

pub(crate) async fn update_member(
    State(s): State<AppState>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageMembers).await?;
    let user = parse_user(&user)?;
    crate::schema_check::check("MemberPatch", &body.value)?;
    let req: MemberPatch = from_value(body.value)?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let before = tx.member(user).await?;
    check_rank(&caller, before.role, Some(req.role))?;
    let after = tx.set_member_role(user, req.role).await.map_err(last_owner)?;
    if before.role != after.role {
        tx.record_audit(&AuditEvent {
            actor: caller.actor.clone(),
            action: "member.update".into(),
            target: format!("members/{user}"),
            request_id: request_id(&headers),
            details: json!({ "from": before.role, "to": after.role }),
        })
        .await?;
    }
    tx.commit().await?;
    Ok(Json(render_member(&after)))
}

pub(crate) async fn remove_member(
    State(s): State<AppState>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageMembers).await?;
    let user = parse_user(&user)?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let before = tx.member(user).await?;
    check_rank(&caller, before.role, None)?;
    tx.remove_member(user).await.map_err(last_owner)?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "member.remove".into(),
        target: format!("members/{user}"),
        request_id: request_id(&headers),
        details: json!({ "role": before.role, "email": before.email }),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewInvite {
    email: String,
    role: Role,
    #[serde(default)]
    expires_in_hours: Option<i64>,
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    (3..=320).contains(&e.len())
        && !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(crate) async fn create_invite(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageMembers).await?;
    crate::schema_check::check("NewInvite", &body.value)?;
    let req: NewInvite = from_value(body.value)?;
    if !valid_email(&req.email) {
        return Err(ApiError::invalid_field("email", "must be an email address (3-320 characters)"));
    }
    let hours = req.expires_in_hours.unwrap_or(DEFAULT_INVITE_HOURS);
    if !(1..=MAX_INVITE_HOURS).contains(&hours) {
        return Err(ApiError::invalid_field("expiresInHours", "must be 1 to 720"));
    }
    if req.role < caller.role {
        return Err(ApiError::forbidden(format!(
            "a {} may not invite with the role {}",
            caller.role, req.role
        )));
    }
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = Token::new(TokenKind::Invite, caller.org.id, secret).to_string();
    let mut tx = s.store.tenant(caller.org.id).await?;
    let invite = tx
        .create_invite(
            &req.email,
            req.role,
            &token_hash(&token),
            &caller.actor,
            Utc::now() + Duration::hours(hours),
        )
        .await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "invite.create".into(),
        target: format!("invites/{}", invite.id),
        request_id: request_id(&headers),
        details: json!({ "email": invite.email, "role": invite.role }),
    })
    .await?;
    tx.commit().await?;
    let mut out = render_invite(&invite);
    out["acceptUrl"] = Value::String(s.accounts.link(&format!("/api/v1/invites/{token}/accept")));
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(crate) async fn list_invites(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageMembers).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let invites = tx.list_invites().await?;
    Ok(Json(json!({ "items": invites.iter().map(render_invite).collect::<Vec<_>>() })))
}

pub(crate) async fn revoke_invite(
    State(s): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageMembers).await?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invitation not found"))?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let invite = tx.revoke_invite(id).await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "invite.revoke".into(),
        target: format!("invites/{id}"),
        request_id: request_id(&headers),
        details: json!({ "email": invite.email }),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(render_invite(&invite)))
}

/// `POST /api/v1/invites/{token}/accept`: the logged-in user joins the organization.
pub(crate) async fn accept_invite(
    State(s): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let Principal::User { user, .. } = authenticate(&s, &headers).await? else {
        return Err(ApiError::forbidden(
            "an invitation is accepted by a logged-in user, not with an API token",
        ));
    };
    let gone = || ApiError::not_found("invitation not found: it may have been used, revoked or have expired");
    let parsed = Token::parse(TokenKind::Invite, &token).map_err(|_| gone())?;
    let mut tx = s.store.tenant(parsed.org).await?;
    let invite = tx.pending_invite(&token_hash(&token)).await?.ok_or_else(gone)?;
    let matches = user.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(&invite.email));
    if !matches {
        return Err(ApiError::forbidden(
            "this invitation was sent to another email address than the one you logged in with",
        ));
    }
    if tx.member_role(user.id).await?.is_some() {
        return Err(ApiError::conflict("you are already a member of this organization"));
    }
    tx.add_member(user.id, invite.role).await?;
    tx.accept_invite(invite.id, user.id).await?;
    tx.record_audit(&AuditEvent {
        actor: format!("user:{}", user.id),
        action: "invite.accept".into(),
        target: format!("invites/{}", invite.id),
        request_id: request_id(&headers),
        details: json!({ "email": invite.email, "role": invite.role }),
    })
    .await?;
    let org = tx.own_org().await?;
    tx.commit().await?;
    Ok(Json(json!({
        "org": { "id": org.id, "slug": org.slug.as_str(), "name": org.name },
        "role": invite.role,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_loosely_but_bounded() {
        assert!(valid_email("a@b"));
        assert!(valid_email("alice.x+y@example.com"));
        for bad in ["", "ab", "no-at", "@x.y", "x@", "a@b@c", "a b@c", "a\n@b"] {
            assert!(!valid_email(bad), "{bad:?}");
        }
        assert!(!valid_email(&format!("{}@example.com", "a".repeat(320))));
    }
}
