//! Organizations (who am I, mine, rename, delete), API tokens and the audit log, over REST.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_control::{AuditQuery, Caller, Control, Me, NewToken, Via};
use trellis_model::Role;
use trellis_store::{ApiToken, AuditRecord, Org};

use crate::auth::{OrgScope, Scoped, Who};
use crate::body::{ApiQuery, JsonBody};
use crate::error::{ApiError, ReadErrors, Unauthorized, WriteErrors};
use crate::params::{OrgPath, TokenPath};
use crate::session::{csrf_token, session_secret};

#[utoipa::path(get, path = "/api/v1/orgs/{org}", operation_id = "getOrg", summary = "The organization and the caller's role",
    params(OrgPath),
    responses((status = 200, description = "The organization", body = Organization), ReadErrors))]
pub(crate) async fn get_org(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Organization>, ApiError> {
    let caller = ctl.get_org(scope).await?;
    Ok(Json(render_org(&caller.org, Some(&caller))))
}

/// An organization as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Organization {
    id: uuid::Uuid,
    slug: String,
    name: String,
    created_at: DateTime<Utc>,
    /// The caller's role (in the list of the caller's organizations)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    role: Option<Role>,
    /// The caller's role and token id or user id
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    you: Option<You>,
}

/// The caller's role in the organization, and its token id (a token) or user id (a session).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct You {
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    user_id: Option<uuid::Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OrganizationList {
    items: Vec<Organization>,
}

fn render_org(org: &Org, caller: Option<&Caller>) -> Organization {
    let you = caller.map(|c| match c.via {
        Via::Token(id) => You { role: c.role, token_id: Some(id), user_id: None },
        Via::Session { user } => You { role: c.role, token_id: None, user_id: Some(user) },
    });
    Organization {
        id: org.id.as_uuid(),
        slug: org.slug.as_str().to_owned(),
        name: org.name.clone(),
        created_at: org.created_at,
        role: None,
        you,
    }
}

/// The caller: an API token, or a logged-in user's session.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[schema(as = Me)]
pub(crate) enum MeBody {
    Token(TokenCaller),
    Session(SessionCaller),
}

/// An API token, its role and its organization.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenCaller {
    token_id: uuid::Uuid,
    name: String,
    role: Role,
    org: OrgRef,
}

/// A logged-in user, every organization they belong to with their role, and the session.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionCaller {
    user: SessionUser,
    organizations: Vec<OrgRef>,
    /// Send it as x-csrf-token on every write made with the session cookie
    csrf_token: String,
    session: SessionTimes,
}

/// The logged-in user.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionUser {
    id: uuid::Uuid,
    /// As the OpenID provider gave it
    #[schema(required)]
    email: Option<String>,
    #[schema(required)]
    name: Option<String>,
}

/// When the session began and when it ends.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionTimes {
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// An organization named in another body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OrgRef {
    id: uuid::Uuid,
    slug: String,
    name: String,
    /// The caller's role in it (in a list of the caller's organizations)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    role: Option<Role>,
}

impl OrgRef {
    pub(crate) fn of(org: &Org, role: Option<Role>) -> OrgRef {
        OrgRef { id: org.id.as_uuid(), slug: org.slug.as_str().to_owned(), name: org.name.clone(), role }
    }
}

fn render_me(me: Me, headers: &HeaderMap) -> MeBody {
    match me {
        Me::Token { record, org } => MeBody::Token(TokenCaller {
            token_id: record.id,
            name: record.name,
            role: record.role,
            org: OrgRef::of(&org, None),
        }),
        Me::User { user, session, memberships } => {
            let secret = session_secret(headers).expect("a session principal came from the cookie");
            MeBody::Session(SessionCaller {
                user: SessionUser { id: user.id, email: user.email, name: user.display_name },
                organizations: memberships.iter().map(|m| OrgRef::of(&m.org, Some(m.role))).collect(),
                csrf_token: csrf_token(secret),
                session: SessionTimes { created_at: session.created_at, expires_at: session.expires_at },
            })
        }
    }
}

/// Who the caller is. A token: the token, its role and its organization. A session: the
/// user, every organization they belong to with their role, and the session's CSRF token.
#[utoipa::path(get, path = "/api/v1/me", operation_id = "getMe",
    summary = "The caller: a token (its role and organization) or a session (the user, their organizations and roles, the CSRF token)",
    responses((status = 200, description = "The caller", body = MeBody), (status = 401, response = Unauthorized)))]
pub(crate) async fn me(
    State(ctl): State<Control>,
    headers: HeaderMap,
    Who(request): Who,
) -> Result<Json<MeBody>, ApiError> {
    Ok(Json(render_me(ctl.me(&request).await?, &headers)))
}

/// The organizations the caller belongs to: a token's one, or a user's every one.
#[utoipa::path(get, path = "/api/v1/orgs", operation_id = "listOrgs", summary = "The organizations the caller belongs to, with the caller's role",
    responses((status = 200, description = "Organizations", body = OrganizationList), (status = 401, response = Unauthorized)))]
pub(crate) async fn list_orgs(
    State(ctl): State<Control>,
    Who(request): Who,
) -> Result<Json<OrganizationList>, ApiError> {
    let items = ctl
        .my_orgs(&request)
        .await?
        .iter()
        .map(|m| Organization { role: Some(m.role), ..render_org(&m.org, None) })
        .collect();
    Ok(Json(OrganizationList { items }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1)]
pub(crate) struct OrgPatch {
    #[serde(default)]
    #[schema(nullable = false, min_length = 1, max_length = 39, pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$")]
    slug: Option<String>,
    #[serde(default)]
    #[schema(nullable = false, min_length = 1, max_length = 100)]
    name: Option<String>,
}

/// Renames an organization and/or changes its slug (its URL handle).
#[utoipa::path(patch, path = "/api/v1/orgs/{org}", operation_id = "updateOrg", summary = "Change the organization's slug or name (owner, admin)",
    params(OrgPath),
    request_body = OrgPatch,
    responses((status = 200, description = "The organization", body = Organization), WriteErrors))]
pub(crate) async fn patch_org(
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Json<Organization>, ApiError> {
    let req: OrgPatch = crate::schema_check::parse(body.value)?;
    let (updated, caller) = ctl.update_org(scope, req.slug.as_deref(), req.name.as_deref()).await?;
    Ok(Json(render_org(&updated, Some(&caller))))
}

/// Deletes the organization (owner only) and everything in it (`Control::delete_org`).
#[utoipa::path(delete, path = "/api/v1/orgs/{org}", operation_id = "deleteOrg",
    summary = "Delete the organization and everything in it (owner): members, invitations, tokens, meshes, CAs, dataplanes; its xDS streams end, its slug and trust domains are freed; its audit trail is kept for the retention period, readable by no one through the API",
    params(OrgPath),
    responses((status = 204, description = "Deleted"), ReadErrors))]
pub(crate) async fn delete_org(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<StatusCode, ApiError> {
    ctl.delete_org(scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An API token as the API shows it: never its hash.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Token {
    id: uuid::Uuid,
    name: String,
    role: Role,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    /// The token itself: only in the response that creates it
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    items: Vec<Token>,
}

fn render_token(t: &ApiToken) -> Token {
    Token {
        id: t.id,
        name: t.name.clone(),
        role: t.role,
        created_by: t.created_by.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
        last_used_at: t.last_used_at,
        token: None,
    }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/tokens", operation_id = "listTokens", summary = "API tokens (never their secrets)",
    params(OrgPath),
    responses((status = 200, description = "Tokens", body = TokenList), ReadErrors))]
pub(crate) async fn list_tokens(
    State(ctl): State<Control>,
    OrgScope(scope): OrgScope,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = ctl.list_tokens(scope).await?;
    Ok(Json(TokenList { items: tokens.iter().map(render_token).collect() }))
}

/// Creates a token and shows it once.
#[utoipa::path(post, path = "/api/v1/orgs/{org}/tokens", operation_id = "createToken", summary = "Create an API token; the response shows it once",
    params(OrgPath),
    request_body = NewToken,
    responses((status = 201, description = "The token, with its secret", body = Token), WriteErrors))]
pub(crate) async fn create_token(
    State(ctl): State<Control>,
    Scoped { scope, body }: Scoped<JsonBody>,
) -> Result<Response, ApiError> {
    let req: NewToken = crate::schema_check::parse(body.value)?;
    let (record, token) = ctl.create_token(scope, req).await?;
    let out = Token { token: Some(token), ..render_token(&record) };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/tokens/{id}", operation_id = "revokeToken", summary = "Revoke a token, on every replica at once",
    params(TokenPath),
    responses((status = 200, description = "The revoked token", body = Token), ReadErrors))]
pub(crate) async fn revoke_token(
    State(ctl): State<Control>,
    Path((_, id)): Path<(String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Token>, ApiError> {
    Ok(Json(render_token(&ctl.revoke_token(scope, &id).await?)))
}

/// A page of the audit log.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEventList {
    items: Vec<AuditEventBody>,
    /// Pass as cursor for the next page; null on the last
    #[schema(required)]
    next_cursor: Option<String>,
}

/// One state-changing call, as the audit log keeps it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuditEvent)]
pub(crate) struct AuditEventBody {
    id: i64,
    at: DateTime<Utc>,
    /// Who made it: `token:<id>`, `user:<id>`, …
    actor: String,
    action: String,
    target: String,
    /// The request's id, as its response's `x-request-id` gave it
    #[schema(required)]
    request_id: Option<String>,
    #[schema(value_type = Object)]
    details: Value,
}

fn render_audit_event(e: &AuditRecord) -> AuditEventBody {
    AuditEventBody {
        id: e.id,
        at: e.at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        request_id: e.request_id.clone(),
        details: e.details.clone(),
    }
}

/// The audit log: newest first, cursor-paginated, filtered by actor, action, target prefix
/// and time.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/audit-events", operation_id = "listAuditEvents", summary = "The audit log, newest first",
    params(OrgPath, crate::params::AuditParams),
    responses((status = 200, description = "A page of events", body = AuditEventList), ReadErrors))]
pub(crate) async fn audit_events(
    State(ctl): State<Control>,
    ApiQuery(q): ApiQuery<AuditQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<AuditEventList>, ApiError> {
    let (events, next_cursor) = ctl.audit_events(scope, q).await?;
    Ok(Json(AuditEventList { items: events.iter().map(render_audit_event).collect(), next_cursor }))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use chrono::TimeZone;
    use trellis_model::{OrgId, OrgSlug};
    use trellis_store::{Membership, Session, User};

    use serde_json::json;

    use super::*;
    use crate::schema_check::assert_published;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn org(slug: &str) -> Org {
        Org { id: OrgId::new(), slug: OrgSlug::parse(slug).unwrap(), name: "Acme".into(), created_at: at() }
    }

    #[test]
    fn bodies_match_their_published_schemas() {
        let mut headers = HeaderMap::new();
        let cookie = format!("{}=secret", crate::session::SESSION_COOKIE);
        headers.insert("cookie", HeaderValue::from_str(&cookie).unwrap());
        let record = ApiToken {
            id: uuid::Uuid::new_v4(),
            name: "ci".into(),
            role: Role::Admin,
            created_by: "user:x".into(),
            created_at: at(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        let token =
            serde_json::to_value(render_me(Me::Token { record, org: org("acme") }, &headers)).unwrap();
        assert_eq!(token["kind"], "token");
        assert!(token["org"].get("role").is_none());
        assert_published("Me", &token);

        let user = User {
            id: uuid::Uuid::new_v4(),
            oidc_issuer: "https://login.example.com".into(),
            oidc_subject: "s".into(),
            email: None,
            display_name: Some("Ann".into()),
            created_at: at(),
            last_login_at: None,
        };
        let session = Session {
            id: uuid::Uuid::new_v4(),
            user_id: user.id,
            created_at: at(),
            last_seen_at: at(),
            expires_at: at(),
        };
        let memberships = vec![Membership { org: org("acme"), role: Role::Owner }];
        let me = serde_json::to_value(render_me(Me::User { user, session, memberships }, &headers)).unwrap();
        assert_eq!(
            (&me["kind"], &me["user"]["email"], &me["organizations"][0]["role"]),
            (&json!("session"), &Value::Null, &json!("owner"))
        );
        assert_published("Me", &me);

        let event = AuditRecord {
            id: 4,
            at: at(),
            actor: "user:x".into(),
            action: "mesh.create".into(),
            target: "meshes/shop".into(),
            request_id: None,
            details: json!({"name": "shop"}),
        };
        let page = AuditEventList { items: vec![render_audit_event(&event)], next_cursor: None };
        let page = serde_json::to_value(page).unwrap();
        assert_eq!(page["nextCursor"], Value::Null);
        assert_published("AuditEventList", &page);

        for (via, you) in [
            (Via::Token(some_id()), json!({"role": "editor", "tokenId": some_id()})),
            (Via::Session { user: some_id() }, json!({"role": "editor", "userId": some_id()})),
        ] {
            let caller = Caller {
                org: org("acme"),
                role: Role::Editor,
                via,
                actor: "user:x".into(),
                request_id: None,
            };
            let body = serde_json::to_value(render_org(&caller.org, Some(&caller))).unwrap();
            assert_eq!(body["you"], you);
            assert_published("Organization", &body);
        }
    }

    fn some_id() -> uuid::Uuid {
        uuid::Uuid::from_u128(42)
    }
}
