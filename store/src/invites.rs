//! Invitations into an organization: single use, with expiry; only the SHA-256 of the
//! invitation token is stored.

use chrono::{DateTime, Utc};
use trellis_model::Role;
use uuid::Uuid;

use crate::{StoreError, TenantTx};

/// An invitation's record (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct InviteRow {
    id: Uuid,
    email: String,
    role: String,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    accepted_by: Option<Uuid>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<InviteRow> for Invite {
    type Error = StoreError;
    fn try_from(r: InviteRow) -> Result<Self, StoreError> {
        Ok(Invite {
            id: r.id,
            email: r.email,
            role: r.role.parse().map_err(|e: String| StoreError::Db(sqlx::Error::Decode(e.into())))?,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            accepted_at: r.accepted_at,
            accepted_by: r.accepted_by,
            revoked_at: r.revoked_at,
        })
    }
}

macro_rules! invite_columns {
    () => {
        "id, email, role, created_by, created_at, expires_at, accepted_at, accepted_by, revoked_at"
    };
}

impl TenantTx {
    /// Records an invitation by its token's hash.
    pub async fn create_invite(
        &mut self,
        email: &str,
        role: Role,
        sha256: &[u8; 32],
        created_by: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Invite, StoreError> {
        let org = self.org().as_uuid();
        let row: InviteRow = sqlx::query_as(concat!(
            "INSERT INTO invites (org_id, email, role, token_sha256, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            invite_columns!()
        ))
        .bind(org)
        .bind(email)
        .bind(role.as_str())
        .bind(&sha256[..])
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(self.conn())
        .await?;
        row.try_into()
    }

    /// Every invitation of this organization, newest first.
    pub async fn list_invites(&mut self) -> Result<Vec<Invite>, StoreError> {
        let rows: Vec<InviteRow> = sqlx::query_as(concat!(
            "SELECT ",
            invite_columns!(),
            " FROM invites ORDER BY created_at DESC, id"
        ))
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(Invite::try_from).collect()
    }

    /// Revokes a pending invitation.
    pub async fn revoke_invite(&mut self, id: Uuid) -> Result<Invite, StoreError> {
        let row: Option<InviteRow> = sqlx::query_as(concat!(
            "UPDATE invites SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING ",
            invite_columns!()
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        row.ok_or(StoreError::NotFound("invitation"))?.try_into()
    }

    /// The usable invitation with this hash (pending, unexpired), locked until the
    /// transaction ends so that it is accepted at most once.
    pub async fn pending_invite(&mut self, sha256: &[u8; 32]) -> Result<Option<Invite>, StoreError> {
        let row: Option<InviteRow> = sqlx::query_as(concat!(
            "SELECT ",
            invite_columns!(),
            " FROM invites WHERE token_sha256 = $1 AND accepted_at IS NULL AND revoked_at IS NULL \
               AND expires_at > now() FOR UPDATE"
        ))
        .bind(&sha256[..])
        .fetch_optional(self.conn())
        .await?;
        row.map(Invite::try_from).transpose()
    }

    /// Marks an invitation used by `user`.
    pub async fn accept_invite(&mut self, id: Uuid, user: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE invites SET accepted_at = now(), accepted_by = $2 WHERE id = $1")
            .bind(id)
            .bind(user)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
