//! Members and invitations of an organization, and accepting an invitation, over REST.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use trellis_control::{Control, NewInvite};
use trellis_model::Role;
use trellis_store::{Invite, Member};
use uuid::Uuid;

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::JsonBody;
use crate::error::{
    ApiError, Conflict, Forbidden, NotFound, ReadErrors, StepErrors, Unauthorized, WriteErrors,
};
use crate::orgs::OrgRef;
use crate::params::{InvitePath, MemberPath, OrgPath, TokenPath};
use crate::state::AppState;

/// A member of an organization.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Member)]
pub(crate) struct MemberBody {
    user_id: Uuid,
    email: Option<String>,
    name: Option<String>,
    role: Role,
    joined_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MemberList {
    items: Vec<MemberBody>,
}

fn render_member(m: &Member) -> MemberBody {
    MemberBody {
        user_id: m.user_id,
        email: m.email.clone(),
        name: m.display_name.clone(),
        role: m.role,
        joined_at: m.created_at,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum InviteStatus {
    Pending,
    Accepted,
    Revoked,
    Expired,
}

fn invite_status(i: &Invite) -> InviteStatus {
    if i.accepted_at.is_some() {
        InviteStatus::Accepted
    } else if i.revoked_at.is_some() {
        InviteStatus::Revoked
    } else if i.expires_at <= Utc::now() {
        InviteStatus::Expired
    } else {
        InviteStatus::Pending
    }
}

/// An invitation.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Invite)]
pub(crate) struct InviteBody {
    id: Uuid,
    email: String,
    role: Role,
    status: InviteStatus,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    accepted_by: Option<Uuid>,
    revoked_at: Option<DateTime<Utc>>,
    /// The single-use invitation token: only in the response that creates it
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token: Option<String>,
    /// Where the invited user POSTs (logged in) to accept: only in the response that creates it
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    accept_url: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct InviteList {
    items: Vec<InviteBody>,
}

fn render_invite(i: &Invite) -> InviteBody {
    InviteBody {
        id: i.id,
        email: i.email.clone(),
        role: i.role,
        status: invite_status(i),
        created_by: i.created_by.clone(),
        created_at: i.created_at,
        expires_at: i.expires_at,
        accepted_at: i.accepted_at,
        accepted_by: i.accepted_by,
        revoked_at: i.revoked_at,
        token: None,
        accept_url: None,
    }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/members", operation_id = "listMembers", summary = "Members and their roles",
    params(OrgPath),
    responses((status = 200, description = "Members", body = MemberList), ReadErrors))]
pub(crate) async fn list_members(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<MemberList>, ApiError> {
    let members = ctl.list_members(scope).await?;
    Ok(Json(MemberList { items: members.iter().map(render_member).collect() }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MemberPatch {
    role: Role,
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/members/{user}", operation_id = "updateMember",
    summary = "Change a member's role (admin; the last owner keeps the role)",
    params(MemberPath),
    request_body = MemberPatch,
    responses((status = 200, description = "The member", body = MemberBody), WriteErrors))]
pub(crate) async fn update_member(
    State(ctl): State<Control>,
    Path((_, user)): Path<(String, String)>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<MemberBody>, ApiError> {
    let req: MemberPatch = crate::schema_check::parse(body.value)?;
    Ok(Json(render_member(&ctl.update_member(scope, &user, req.role).await?)))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/members/{user}", operation_id = "removeMember", summary = "Remove a member (admin; never the last owner)",
    params(MemberPath),
    responses((status = 204, description = "Removed"), StepErrors))]
pub(crate) async fn remove_member(
    State(ctl): State<Control>,
    Path((_, user)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Response, ApiError> {
    ctl.remove_member(scope, &user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/invites", operation_id = "createInvite",
    summary = "Invite by email with a role; the response shows the single-use token once",
    params(OrgPath),
    request_body = NewInvite,
    responses((status = 201, description = "The invitation, with its token", body = InviteBody), WriteErrors))]
pub(crate) async fn create_invite(
    State(s): State<AppState>,
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let req: NewInvite = crate::schema_check::parse(body.value)?;
    let (invite, token) = ctl.create_invite(scope, req).await?;
    let out = InviteBody {
        accept_url: Some(s.accounts.link(&format!("/api/v1/invites/{token}/accept"))),
        token: Some(token),
        ..render_invite(&invite)
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/invites", operation_id = "listInvites", summary = "Invitations (never their tokens)",
    params(OrgPath),
    responses((status = 200, description = "Invitations", body = InviteList), ReadErrors))]
pub(crate) async fn list_invites(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<InviteList>, ApiError> {
    let invites = ctl.list_invites(scope).await?;
    Ok(Json(InviteList { items: invites.iter().map(render_invite).collect() }))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/invites/{id}", operation_id = "revokeInvite", summary = "Revoke an invitation",
    params(TokenPath),
    responses((status = 200, description = "The revoked invitation", body = InviteBody), ReadErrors))]
pub(crate) async fn revoke_invite(
    State(ctl): State<Control>,
    Path((_, id)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<InviteBody>, ApiError> {
    Ok(Json(render_invite(&ctl.revoke_invite(scope, &id).await?)))
}

/// `POST /api/v1/invites/{token}/accept`: the logged-in user joins the organization.
#[utoipa::path(post, path = "/api/v1/invites/{token}/accept", operation_id = "acceptInvite",
    summary = "The logged-in user (session) accepts an invitation sent to their email address",
    security(("session" = [])),
    params(InvitePath),
    responses(
        (status = 200, description = "Now a member", body = AcceptedInvite),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 404, response = NotFound), (status = 409, response = Conflict)))]
pub(crate) async fn accept_invite(
    State(ctl): State<Control>,
    Path(token): Path<String>,
    Who(request): Who,
) -> Result<Json<AcceptedInvite>, ApiError> {
    let a = ctl.accept_invite(&request, &token).await?;
    Ok(Json(AcceptedInvite { org: OrgRef::of(&a.org, None), role: a.role }))
}

/// An accepted invitation: the organization joined, with the role.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AcceptedInvite {
    org: OrgRef,
    role: Role,
}
