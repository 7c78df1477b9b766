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

/// A row of `trellis_authenticate_token`: the token and its organization.
#[derive(sqlx::FromRow)]
pub(crate) struct TokenOrgRow {
    #[sqlx(flatten)]
    token: TokenRow,
    org_id: Uuid,
    org_slug: String,
    org_name: String,
    org_created_at: DateTime<Utc>,
}

impl TokenOrgRow {
    pub(crate) fn into_parts(self) -> Result<(ApiToken, Org), StoreError> {
        let org = OrgRow {
            id: self.org_id,
            slug: self.org_slug,
            name: self.org_name,
            created_at: self.org_created_at,
        };
        Ok((self.token.try_into()?, org.into_org()?))
    }
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
    /// statement (`trellis_authenticate_token`, which also marks the token used at most once a
    /// minute without making concurrent requests with one token wait on each other).
    pub async fn authenticate_token(
        &mut self,
        sha256: &[u8; 32],
    ) -> Result<Option<(ApiToken, Org)>, StoreError> {
        let row: Option<TokenOrgRow> = sqlx::query_as("SELECT * FROM trellis_authenticate_token($1)")
            .bind(&sha256[..])
            .fetch_optional(self.conn())
            .await?;
        row.map(TokenOrgRow::into_parts).transpose()
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
