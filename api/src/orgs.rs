//! Organizations (who am I, mine, rename, delete), API tokens and the audit log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::{Action, OrgSlug, Role, SECRET_LEN, Token, TokenKind};
use trellis_store::{ApiToken, AuditEvent, Org};
use uuid::Uuid;

use crate::auth::{Caller, Principal, Via, authenticate, authorize, token_hash};
use crate::body::{JsonBody, from_value};
use crate::session::{csrf_token, session_secret};
use crate::{ApiError, AppState, request_id};

pub(crate) async fn get_org(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::Read).await?;
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
pub(crate) async fn me(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    match authenticate(&s, &headers).await? {
        Principal::Token { org: org_id, record } => {
            let mut tx = s.store.tenant(org_id).await?;
            let org = tx.own_org().await?;
            Ok(Json(json!({
                "kind": "token",
                "tokenId": record.id,
                "name": record.name,
                "role": record.role,
                "org": { "id": org.id, "slug": org.slug.as_str(), "name": org.name },
            })))
        }
        Principal::User { user, session } => {
            let mut utx = s.store.user_tx(user.id).await?;
            let orgs = utx.memberships().await?;
            utx.commit().await?;
            let secret = session_secret(&headers).expect("a session principal came from the cookie");
            Ok(Json(json!({
                "kind": "session",
                "user": { "id": user.id, "email": user.email, "name": user.display_name },
                "organizations": orgs.iter().map(|m| json!({
                    "id": m.org.id, "slug": m.org.slug.as_str(), "name": m.org.name, "role": m.role,
                })).collect::<Vec<_>>(),
                "csrfToken": csrf_token(secret),
                "session": { "createdAt": session.created_at, "expiresAt": session.expires_at },
            })))
        }
    }
}

/// The organizations the caller belongs to: a token's one, or a user's every one.
pub(crate) async fn list_orgs(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = match authenticate(&s, &headers).await? {
        Principal::Token { org: org_id, record } => {
            let mut tx = s.store.tenant(org_id).await?;
            let org = tx.own_org().await?;
            let mut v = render_org(&org, None);
            v["role"] = json!(record.role);
            vec![v]
        }
        Principal::User { user, .. } => {
            let mut utx = s.store.user_tx(user.id).await?;
            let orgs = utx.memberships().await?;
            utx.commit().await?;
            orgs.iter()
                .map(|m| {
                    let mut v = render_org(&m.org, None);
                    v["role"] = json!(m.role);
                    v
                })
                .collect()
        }
    };
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
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageOrg).await?;
    crate::schema_check::check("OrgPatch", &body.value)?;
    let req: OrgPatch = from_value(body.value)?;
    let slug = req
        .slug
        .as_deref()
        .map(OrgSlug::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_field("slug", e.to_string()))?;
    if let Some(n) = &req.name
        && (n.trim().is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_field("name", "must be 1-100 printable characters"));
    }
    let mut tx = s.store.tenant(caller.org.id).await?;
    let updated = tx.update_own_org(slug.as_ref(), req.name.as_deref()).await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "org.update".into(),
        target: format!("orgs/{}", updated.slug),
        request_id: request_id(&headers),
        details: json!({
            "from": { "slug": caller.org.slug.as_str(), "name": caller.org.name },
            "to": { "slug": updated.slug.as_str(), "name": updated.name },
        }),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(render_org(&updated, Some(&caller))))
}

/// Deletes the organization (owner only) and everything in it, in one transaction: members,
/// invitations, API and join tokens, meshes with their configuration, CAs, trust domains and
/// dataplanes. Each mesh's deletion reaches every replica through the change feed, which ends
/// the mesh's xDS streams; the slug and trust domains are free at once. The audit trail,
/// this deletion last, outlives it (README: "Deleting an organization").
pub(crate) async fn delete_org(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::DeleteOrg).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let meshes = tx.list_meshes().await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "org.delete".into(),
        target: format!("orgs/{}", caller.org.slug),
        request_id: request_id(&headers),
        details: json!({
            "slug": caller.org.slug.as_str(),
            "name": caller.org.name,
            "meshes": meshes.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        }),
    })
    .await?;
    tx.delete_org().await?;
    tx.commit().await?;
    for m in &meshes {
        s.authority.forget(m.id);
    }
    tracing::info!(org = %caller.org.id, slug = %caller.org.slug, actor = %caller.actor, "organization deleted");
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
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageTokens).await?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let tokens = tx.list_tokens().await?;
    Ok(Json(json!({ "items": tokens.iter().map(render_token).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// Creates a token and shows it once. A caller cannot mint a token more powerful than itself.
pub(crate) async fn create_token(
    State(s): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageTokens).await?;
    crate::schema_check::check("NewToken", &body.value)?;
    let req: NewToken = from_value(body.value)?;
    if req.name.trim().is_empty() || req.name.len() > 100 || req.name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field("name", "must be 1-100 printable characters"));
    }
    if req.role < caller.role {
        return Err(ApiError::forbidden(format!(
            "a {} may not create a token with the role {}",
            caller.role, req.role
        )));
    }
    if let Some(at) = req.expires_at
        && at <= Utc::now()
    {
        return Err(ApiError::invalid_field("expiresAt", "must be in the future"));
    }
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let token = Token::new(TokenKind::Pat, caller.org.id, secret).to_string();
    let mut tx = s.store.tenant(caller.org.id).await?;
    let record =
        tx.create_token(&req.name, req.role, &token_hash(&token), &caller.actor, req.expires_at).await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "token.create".into(),
        target: format!("tokens/{}", record.id),
        request_id: request_id(&headers),
        details: json!({ "name": record.name, "role": record.role }),
    })
    .await?;
    tx.commit().await?;
    let mut out = render_token(&record);
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(crate) async fn revoke_token(
    State(s): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ManageTokens).await?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("token not found"))?;
    let mut tx = s.store.tenant(caller.org.id).await?;
    let record = tx.revoke_token(id).await?;
    tx.record_audit(&AuditEvent {
        actor: caller.actor.clone(),
        action: "token.revoke".into(),
        target: format!("tokens/{id}"),
        request_id: request_id(&headers),
        details: json!({}),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(render_token(&record)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    since: Option<String>,
}

/// The audit log: newest first, cursor-paginated, filtered by actor, action, target prefix
/// and time.
pub(crate) async fn audit_events(
    State(s): State<AppState>,
    Path(org): Path<String>,
    crate::body::ApiQuery(q): crate::body::ApiQuery<AuditQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&s, &headers, &org, Action::ReadAudit).await?;
    let bad =
        |field: &str, msg: &str| ApiError::bad_request(format!("{field}: {msg}")).with_field(field, msg);
    let limit = match q.limit {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| bad("limit", "must be 1 to 500"))?,
    };
    let before = match q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("cursor", "use the nextCursor of the previous page"))?,
        ),
    };
    let since = match q.since {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(&t)
                .map_err(|_| bad("since", "must be an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
    };
    for (field, v) in [("actor", &q.actor), ("action", &q.action), ("target", &q.target)] {
        if v.as_ref().is_some_and(|v| v.len() > 256 || v.contains('\0')) {
            return Err(bad(field, "must be at most 256 characters"));
        }
    }
    let filter = trellis_store::AuditFilter {
        before,
        actor: q.actor,
        action: q.action,
        target_prefix: q.target,
        since,
        limit,
    };
    let mut tx = s.store.tenant(caller.org.id).await?;
    let events = tx.list_audit_events(&filter).await?;
    let next = (events.len() as i64 == limit).then(|| events.last().map(|e| e.id.to_string())).flatten();
    Ok(Json(json!({
        "items": events.iter().map(|e| json!({
            "id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "requestId": e.request_id, "details": e.details,
        })).collect::<Vec<_>>(),
        "nextCursor": next,
    })))
}
