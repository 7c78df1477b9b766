//! Organizations (who am I, mine, rename, delete), API tokens and the audit log, over REST.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{AuditQuery, Caller, Control, Me, NewToken, Via};
use trellis_store::{ApiToken, Org};

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::{ApiQuery, JsonBody, from_value};
use crate::error::ApiError;
use crate::session::{csrf_token, session_secret};

pub(crate) async fn get_org(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let caller = ctl.get_org(scope).await?;
    Ok(Json(render_org(&caller.org, Some(&caller))))
}

fn render_org(org: &Org, caller: Option<&Caller>) -> Value {
    let mut out = json!({
        "id": org.id,
        "slug": org.slug.as_str(),
        "name": org.name,
        "createdAt": org.created_at,
    });
    if let Some(c) = caller {
        out["you"] = match c.via {
            Via::Token(id) => json!({ "role": c.role, "tokenId": id }),
            Via::Session { user } => json!({ "role": c.role, "userId": user }),
        };
    }
    out
}

/// Who the caller is. A token: the token, its role and its organization. A session: the
/// user, every organization they belong to with their role, and the session's CSRF token.
pub(crate) async fn me(
    State(ctl): State<Control>,
    headers: HeaderMap,
    Who(request): Who,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(match ctl.me(&request).await? {
        Me::Token { record, org } => json!({
            "kind": "token",
            "tokenId": record.id,
            "name": record.name,
            "role": record.role,
            "org": { "id": org.id, "slug": org.slug.as_str(), "name": org.name },
        }),
        Me::User { user, session, memberships } => {
            let secret = session_secret(&headers).expect("a session principal came from the cookie");
            json!({
                "kind": "session",
                "user": { "id": user.id, "email": user.email, "name": user.display_name },
                "organizations": memberships.iter().map(|m| json!({
                    "id": m.org.id, "slug": m.org.slug.as_str(), "name": m.org.name, "role": m.role,
                })).collect::<Vec<_>>(),
                "csrfToken": csrf_token(secret),
                "session": { "createdAt": session.created_at, "expiresAt": session.expires_at },
            })
        }
    }))
}

/// The organizations the caller belongs to: a token's one, or a user's every one.
pub(crate) async fn list_orgs(
    State(ctl): State<Control>,
    Who(request): Who,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = ctl
        .my_orgs(&request)
        .await?
        .iter()
        .map(|m| {
            let mut v = render_org(&m.org, None);
            v["role"] = json!(m.role);
            v
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OrgPatch {
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Renames an organization and/or changes its slug (its URL handle).
pub(crate) async fn patch_org(
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Value>, ApiError> {
    crate::schema_check::check("OrgPatch", &body.value)?;
    let req: OrgPatch = from_value(body.value)?;
    let (updated, caller) = ctl.update_org(scope, req.slug.as_deref(), req.name.as_deref()).await?;
    Ok(Json(render_org(&updated, Some(&caller))))
}

/// Deletes the organization (owner only) and everything in it (`Control::delete_org`).
pub(crate) async fn delete_org(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<StatusCode, ApiError> {
    ctl.delete_org(scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn render_token(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "createdBy": t.created_by,
        "createdAt": t.created_at,
        "expiresAt": t.expires_at,
        "revokedAt": t.revoked_at,
        "lastUsedAt": t.last_used_at,
    })
}

pub(crate) async fn list_tokens(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let tokens = ctl.list_tokens(scope).await?;
    Ok(Json(json!({ "items": tokens.iter().map(render_token).collect::<Vec<_>>() })))
}

/// Creates a token and shows it once.
pub(crate) async fn create_token(
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    crate::schema_check::check("NewToken", &body.value)?;
    let req: NewToken = from_value(body.value)?;
    let (record, token) = ctl.create_token(scope, req).await?;
    let mut out = render_token(&record);
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(crate) async fn revoke_token(
    State(ctl): State<Control>,
    Path((_, id)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(render_token(&ctl.revoke_token(scope, &id).await?)))
}

/// The audit log: newest first, cursor-paginated, filtered by actor, action, target prefix
/// and time.
pub(crate) async fn audit_events(
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<AuditQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let (events, next) = ctl.audit_events(scope, q).await?;
    Ok(Json(json!({
        "items": events.iter().map(|e| json!({
            "id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "requestId": e.request_id, "details": e.details,
        })).collect::<Vec<_>>(),
        "nextCursor": next,
    })))
}
