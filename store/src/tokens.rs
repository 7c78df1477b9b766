//! API tokens: only their SHA-256 is stored; lookups happen inside the token's tenant.

use chrono::{DateTime, Utc};
use trellis_model::Role;
use uuid::Uuid;

use crate::orgs::{Org, OrgRow};
use crate::{StoreError, TenantTx};

/// A token's record (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(ApiToken {
            id: r.id,
            name: r.name,
            role: r.role.parse().map_err(|e: String| StoreError::Db(sqlx::Error::Decode(e.into())))?,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TokenOrgRow {
    #[sqlx(flatten)]
    token: TokenRow,
    org_id: Uuid,
    org_slug: String,
    org_name: String,
    org_created_at: DateTime<Utc>,
}

macro_rules! token_columns {
    () => {
        "id, name, role, created_by, created_at, expires_at, revoked_at, last_used_at"
    };
}

impl TenantTx {
    /// Records a new token by its hash.
    pub async fn create_token(
        &mut self,
        name: &str,
        role: Role,
        sha256: &[u8; 32],
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiToken, StoreError> {
        let org = self.org().as_uuid();
        let row: TokenRow = sqlx::query_as(concat!(
            "INSERT INTO api_tokens (org_id, name, role, token_sha256, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            token_columns!()
        ))
        .bind(org)
        .bind(name)
        .bind(role.as_str())
        .bind(&sha256[..])
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(self.conn())
        .await?;
        row.try_into()
    }

    /// The live token with this hash (not revoked, not expired) and its organization, in one
    /// statement, marking the token used at most once a minute. The mark skips a row another
    /// request is marking (`SKIP LOCKED`), so concurrent reads with one token never wait on
    /// each other; a read that marks nothing stays a read-only transaction.
    pub async fn authenticate_token(
        &mut self,
        sha256: &[u8; 32],
    ) -> Result<Option<(ApiToken, Org)>, StoreError> {
        let row: Option<TokenOrgRow> = sqlx::query_as(concat!(
            "WITH tok AS (SELECT org_id, ",
            token_columns!(),
            " FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL \
               AND (expires_at IS NULL OR expires_at > now())), \
             marked AS (UPDATE api_tokens SET last_used_at = now() WHERE id IN ( \
               SELECT a.id FROM api_tokens a JOIN tok ON tok.id = a.id \
               WHERE a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute' \
               FOR UPDATE OF a SKIP LOCKED)) \
             SELECT tok.id, tok.name, tok.role, tok.created_by, tok.created_at, tok.expires_at, \
               tok.revoked_at, tok.last_used_at, o.id AS org_id, o.slug AS org_slug, \
               o.name AS org_name, o.created_at AS org_created_at \
             FROM tok JOIN organizations o ON o.id = tok.org_id"
        ))
        .bind(&sha256[..])
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let org =
            OrgRow { id: row.org_id, slug: row.org_slug, name: row.org_name, created_at: row.org_created_at };
        Ok(Some((row.token.try_into()?, org.into_org()?)))
    }

    /// Every token of this tenant, newest first.
    pub async fn list_tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens ORDER BY created_at DESC, id"
        ))
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    /// Revokes a token; revoking twice is not an error.
    pub async fn revoke_token(&mut self, id: Uuid) -> Result<ApiToken, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(concat!(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING ",
            token_columns!()
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        row.ok_or(StoreError::NotFound("token"))?.try_into()
    }
}
