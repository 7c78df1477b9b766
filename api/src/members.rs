//! Members and invitations of an organization, and accepting an invitation, over REST.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{Control, NewInvite};
use trellis_model::Role;
use trellis_store::{Invite, Member};

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::{JsonBody, from_value};
use crate::error::ApiError;
use crate::state::AppState;

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

pub(crate) async fn list_members(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let members = ctl.list_members(scope).await?;
    Ok(Json(json!({ "items": members.iter().map(render_member).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemberPatch {
    role: Role,
}

pub(crate) async fn update_member(
    State(ctl): State<Control>,
    Path((_, user)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Value>, ApiError> {
    crate::schema_check::check("MemberPatch", &body.value)?;
    let req: MemberPatch = from_value(body.value)?;
    Ok(Json(render_member(&ctl.update_member(scope, &user, req.role).await?)))
}

pub(crate) async fn remove_member(
    State(ctl): State<Control>,
    Path((_, user)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    ctl.remove_member(scope, &user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn create_invite(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    crate::schema_check::check("NewInvite", &body.value)?;
    let req: NewInvite = from_value(body.value)?;
    let (invite, token) = ctl.create_invite(scope, req).await?;
    let mut out = render_invite(&invite);
    out["acceptUrl"] = Value::String(s.accounts.link(&format!("/api/v1/invites/{token}/accept")));
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(crate) async fn list_invites(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let invites = ctl.list_invites(scope).await?;
    Ok(Json(json!({ "items": invites.iter().map(render_invite).collect::<Vec<_>>() })))
}

pub(crate) async fn revoke_invite(
    State(ctl): State<Control>,
    Path((_, id)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(render_invite(&ctl.revoke_invite(scope, &id).await?)))
}

/// `POST /api/v1/invites/{token}/accept`: the logged-in user joins the organization.
pub(crate) async fn accept_invite(
    State(ctl): State<Control>,
    Path(token): Path<String>,
    Who(request): Who,
) -> Result<Json<Value>, ApiError> {
    let a = ctl.accept_invite(&request, &token).await?;
    Ok(Json(json!({
        "org": { "id": a.org.id, "slug": a.org.slug.as_str(), "name": a.org.name },
        "role": a.role,
    })))
}
