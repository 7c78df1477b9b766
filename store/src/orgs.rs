use chrono::{DateTime, Utc};
use trellis_model::{OrgId, OrgSlug};

use crate::{Store, StoreError, TenantTx};

/// An organization: the unit of tenancy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub slug: OrgSlug,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct OrgRow {
    pub(crate) id: uuid::Uuid,
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) created_at: DateTime<Utc>,
}

impl OrgRow {
    pub(crate) fn into_org(self) -> Result<Org, StoreError> {
        Ok(Org {
            id: OrgId::from_uuid(self.id),
            // A slug in the table was parsed on the way in; failing here means corruption.
            slug: OrgSlug::parse(&self.slug).map_err(|e| {
                StoreError::Db(sqlx::Error::Decode(format!("stored slug {:?}: {e}", self.slug).into()))
            })?,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

impl Store {
    /// Creates an organization and returns it; its first transaction is already its own.
    pub async fn create_org(&self, slug: &OrgSlug, name: &str) -> Result<Org, StoreError> {
        let mut tx = self.tenant(OrgId::new()).await?;
        let org = insert_org(&mut tx, slug, name).await?;
        tx.commit().await?;
        Ok(org)
    }

    /// Deletes the audit trail of organizations deleted more than `keep` ago (a leader
    /// duty); until then it stays, readable by no API caller. Returns how many
    /// organizations' trails went.
    pub async fn purge_deleted_orgs(&self, keep: std::time::Duration) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT trellis_purge_deleted_orgs(make_interval(secs => $1))")
            .bind(keep.as_secs_f64())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Resolves a slug through the tenant directory. Whether the caller may see the
    /// organization is for the caller to decide (membership), never this lookup.
    pub async fn org_by_slug(&self, slug: &OrgSlug) -> Result<Option<Org>, StoreError> {
        let row: Option<OrgRow> =
            sqlx::query_as("SELECT id, slug, name, created_at FROM organizations WHERE slug = $1")
                .bind(slug.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(OrgRow::into_org).transpose()
    }
}

pub(crate) async fn insert_org(tx: &mut TenantTx, slug: &OrgSlug, name: &str) -> Result<Org, StoreError> {
    let id = tx.org().as_uuid();
    let row: OrgRow = sqlx::query_as(
        "INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3) \
         RETURNING id, slug, name, created_at",
    )
    .bind(id)
    .bind(slug.as_str())
    .bind(name)
    .fetch_one(tx.conn())
    .await?;
    row.into_org()
}

impl TenantTx {
    /// This transaction's organization.
    pub async fn own_org(&mut self) -> Result<Org, StoreError> {
        let id = self.org().as_uuid();
        let row: Option<OrgRow> =
            sqlx::query_as("SELECT id, slug, name, created_at FROM organizations WHERE id = $1")
                .bind(id)
                .fetch_optional(self.conn())
                .await?;
        row.ok_or(StoreError::NotFound("organization"))?.into_org()
    }

    /// Changes this organization's slug and/or name; a taken slug is a conflict
    /// (`organizations_slug_key`).
    pub async fn update_own_org(
        &mut self,
        slug: Option<&OrgSlug>,
        name: Option<&str>,
    ) -> Result<Org, StoreError> {
        let id = self.org().as_uuid();
        let row: Option<OrgRow> = sqlx::query_as(
            "UPDATE organizations SET slug = coalesce($2, slug), name = coalesce($3, name), \
             updated_at = now() WHERE id = $1 RETURNING id, slug, name, created_at",
        )
        .bind(id)
        .bind(slug.map(OrgSlug::as_str))
        .bind(name)
        .fetch_optional(self.conn())
        .await?;
        row.ok_or(StoreError::NotFound("organization"))?.into_org()
    }

    /// Deletes this transaction's organization and, by cascade, everything it owns: members,
    /// invitations, API tokens, meshes with their resources, CAs, join tokens, trust domains
    /// and dataplanes (each mesh's change notification says revision 0). Its slug is free
    /// once this commits. The audit trail stays until `Store::purge_deleted_orgs`.
    pub async fn delete_org(&mut self) -> Result<(), StoreError> {
        let id = self.org().as_uuid();
        let done =
            sqlx::query("DELETE FROM organizations WHERE id = $1").bind(id).execute(self.conn()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("organization"));
        }
        Ok(())
    }
}
