//! Organizations (who am I, mine, rename, delete), API tokens and the audit log.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use trellis_model::{Action, OrgSlug, Role, SECRET_LEN, Token, TokenKind};
use trellis_store::{ApiToken, AuditFilter, AuditRecord, Membership, Org, Session, User};
use uuid::Uuid;

use crate::caller::token_hash;
use crate::{AppError, Caller, Control, Principal, Request, Scope};

/// Who the caller is.
pub enum Me {
    /// An API token, with its organization.
    Token { record: ApiToken, org: Org },
    /// A logged-in user with every organization they belong to.
    User { user: User, session: Session, memberships: Vec<Membership> },
}

/// An API token to mint.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Longest actor, action or target filter of the audit log.
pub const MAX_AUDIT_FILTER: usize = 256;

/// Which audit events to list (all optional): page size, the previous page's cursor, actor,
/// action, target prefix and a start time (RFC 3339).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
}

impl AuditQuery {
    fn filter(self) -> Result<AuditFilter, AppError> {
        let bad =
            |field: &str, msg: &str| AppError::bad_request(format!("{field}: {msg}")).with_field(field, msg);
        let limit = match self.limit {
            None => 100,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| bad("limit", "must be 1 to 500"))?,
        };
        let before = match self.cursor {
            None => None,
            Some(c) => Some(
                c.parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("cursor", "use the nextCursor of the previous page"))?,
            ),
        };
        let since = match self.since {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(&t)
                    .map_err(|_| bad("since", "must be an RFC 3339 time"))?
                    .with_timezone(&Utc),
            ),
        };
        for (field, v) in [("actor", &self.actor), ("action", &self.action), ("target", &self.target)] {
            if v.as_ref().is_some_and(|v| v.len() > MAX_AUDIT_FILTER || v.contains('\0')) {
                return Err(bad(field, &format!("must be at most {MAX_AUDIT_FILTER} characters")));
            }
        }
        Ok(AuditFilter {
            before,
            actor: self.actor,
            action: self.action,
            target_prefix: self.target,
            since,
            limit,
        })
    }
}

fn printable_name(n: &str) -> bool {
    !n.trim().is_empty() && n.chars().count() <= 100 && !n.chars().any(char::is_control)
}

impl Control {
    /// The organization as its caller sees it.
    pub async fn get_org(&self, scope: Scope) -> Result<Caller, AppError> {
        scope.allow(Action::Read)?.commit().await
    }

    /// Who the caller is: a token with its organization, or a user with their organizations.
    pub async fn me(&self, request: &Request) -> Result<Me, AppError> {
        match self.authenticate(request).await? {
            Principal::Token { org, record } => Ok(Me::Token { record, org }),
            Principal::User { user, session } => {
                let mut utx = self.store.user_tx(user.id).await?;
                let memberships = utx.memberships().await?;
                utx.commit().await?;
                Ok(Me::User { user, session, memberships })
            }
        }
    }

    /// The organizations the caller belongs to, with its role in each: a token's one, or a
    /// user's every one.
    pub async fn my_orgs(&self, request: &Request) -> Result<Vec<Membership>, AppError> {
        Ok(match self.me(request).await? {
            Me::Token { record, org } => vec![Membership { org, role: record.role }],
            Me::User { memberships, .. } => memberships,
        })
    }

    /// Renames an organization and/or changes its slug (its URL handle).
    pub async fn update_org(
        &self,
        scope: Scope,
        slug: Option<&str>,
        name: Option<&str>,
    ) -> Result<(Org, Caller), AppError> {
        let mut scope = scope.allow(Action::ManageOrg)?;
        let slug = slug
            .map(OrgSlug::parse)
            .transpose()
            .map_err(|e| AppError::invalid_field("slug", e.to_string()))?;
        if name.is_some_and(|n| !printable_name(n)) {
            return Err(AppError::invalid_field("name", "must be 1-100 printable characters"));
        }
        let updated = scope.tx.update_own_org(slug.as_ref(), name).await?;
        let org = &scope.caller.org;
        let details = json!({
            "from": { "slug": org.slug.as_str(), "name": org.name },
            "to": { "slug": updated.slug.as_str(), "name": updated.name },
        });
        scope.audit("org.update", format!("orgs/{}", updated.slug), details).await?;
        let caller = scope.commit().await?;
        Ok((updated, caller))
    }

    /// Deletes the organization (owner only) and everything in it, in one transaction:
    /// members, invitations, API and join tokens, meshes with their configuration, CAs, trust
    /// domains and dataplanes. Each mesh's deletion reaches every replica through the change
    /// feed, which ends the mesh's xDS streams; the slug and trust domains are free at once.
    /// The audit trail, this deletion last, outlives it (README: "Deleting an organization").
    pub async fn delete_org(&self, scope: Scope) -> Result<(), AppError> {
        let mut scope = scope.allow(Action::DeleteOrg)?;
        let meshes = scope.tx.list_meshes().await?;
        let org = scope.caller.org.clone();
        let details = json!({
            "slug": org.slug.as_str(),
            "name": org.name,
            "meshes": meshes.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        });
        scope.audit("org.delete", format!("orgs/{}", org.slug), details).await?;
        scope.tx.delete_org().await?;
        let caller = scope.commit().await?;
        for m in &meshes {
            self.authority.forget(m.id);
        }
        tracing::info!(org = %org.id, slug = %org.slug, actor = %caller.actor, "organization deleted");
        Ok(())
    }

    /// The organization's API tokens, newest first (never the tokens themselves).
    pub async fn list_tokens(&self, scope: Scope) -> Result<Vec<ApiToken>, AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let tokens = scope.tx.list_tokens().await?;
        scope.commit().await?;
        Ok(tokens)
    }

    /// Mints an API token; its text is returned this once. A caller cannot mint a token more
    /// powerful than itself.
    pub async fn create_token(&self, scope: Scope, req: NewToken) -> Result<(ApiToken, String), AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        if req.name.trim().is_empty() || req.name.len() > 100 || req.name.chars().any(char::is_control) {
            return Err(AppError::invalid_field("name", "must be 1-100 printable characters"));
        }
        let role = scope.caller.role;
        if req.role < role {
            return Err(AppError::forbidden(format!(
                "a {role} may not create a token with the role {}",
                req.role
            )));
        }
        if req.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AppError::invalid_field("expiresAt", "must be in the future"));
        }
        let mut secret = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        let token = Token::new(TokenKind::Pat, scope.caller.org.id, secret).to_string();
        let actor = scope.caller.actor.clone();
        let record =
            scope.tx.create_token(&req.name, req.role, &token_hash(&token), &actor, req.expires_at).await?;
        let details = json!({ "name": record.name, "role": record.role });
        scope.audit("token.create", format!("tokens/{}", record.id), details).await?;
        scope.commit().await?;
        Ok((record, token))
    }

    /// Revokes an API token; at once, on every replica (each request reads it).
    pub async fn revoke_token(&self, scope: Scope, id: &str) -> Result<ApiToken, AppError> {
        let mut scope = scope.allow(Action::ManageTokens)?;
        let id: Uuid = id.parse().map_err(|_| AppError::not_found("token not found"))?;
        let record = scope.tx.revoke_token(id).await?;
        scope.audit("token.revoke", format!("tokens/{id}"), json!({})).await?;
        scope.commit().await?;
        Ok(record)
    }

    /// The audit log, newest first, and the cursor of the next page.
    pub async fn audit_events(
        &self,
        scope: Scope,
        query: AuditQuery,
    ) -> Result<(Vec<AuditRecord>, Option<String>), AppError> {
        let mut scope = scope.allow(Action::ReadAudit)?;
        let filter = query.filter()?;
        let events = scope.tx.list_audit_events(&filter).await?;
        scope.commit().await?;
        let next =
            (events.len() as i64 == filter.limit).then(|| events.last().map(|e| e.id.to_string())).flatten();
        Ok((events, next))
    }
}
