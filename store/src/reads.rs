//! Reads in one round trip: an API token's request for one resource, answered by one SQL
//! function (`trellis_read_resource`) that sets the tenant for its own statement, checks the
//! token and reads the mesh, the resource and its propagation, without `BEGIN` or `COMMIT`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::OrgId;
use trellis_model::config::Reach;
use uuid::Uuid;

use crate::dataplanes::ReachedRow;
use crate::meshes::MeshRow;
use crate::resources::ResourceRow;
use crate::tokens::TokenOrgRow;
use crate::{ApiToken, Mesh, Org, Reached, Resource, Store, StoreError};

/// What one token's read of one resource found: the token and its organization, then the
/// mesh and the resource with its propagation when they exist. The caller decides what the
/// token may see.
#[derive(Debug)]
pub struct TokenRead {
    pub token: ApiToken,
    pub org: Org,
    pub mesh: Option<Mesh>,
    pub resource: Option<(Resource, Option<Reached>)>,
}

/// Where to read: a mesh's resource of one kind (whose kind has `reach`), by name.
pub struct ResourceKey<'a> {
    pub mesh: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub reach: Reach,
}

#[derive(sqlx::FromRow)]
struct ReadRow {
    #[sqlx(flatten)]
    token: TokenOrgRow,
    m_id: Option<Uuid>,
    m_name: Option<String>,
    m_trust_domain: Option<String>,
    m_spec: Option<Value>,
    m_labels: Option<Value>,
    m_generation: Option<i64>,
    m_version: Option<Uuid>,
    m_revision: Option<i64>,
    m_created_at: Option<DateTime<Utc>>,
    m_updated_at: Option<DateTime<Utc>>,
    r_id: Option<Uuid>,
    r_kind: Option<String>,
    r_name: Option<String>,
    r_spec: Option<Value>,
    r_labels: Option<Value>,
    r_generation: Option<i64>,
    r_version: Option<Uuid>,
    r_created_at: Option<DateTime<Utc>>,
    r_updated_at: Option<DateTime<Utc>>,
    r_mesh_revision: Option<i64>,
    r_target: Option<String>,
    proxies: Option<i64>,
    applied: Option<i64>,
    rejected: Option<i64>,
    nack_type_urls: Option<Vec<String>>,
    nack_versions: Option<Vec<String>>,
    nack_errors: Option<Vec<String>>,
}

/// A column that is NOT NULL in its table, read through an outer join whose row exists.
fn present<T>(v: Option<T>, column: &str) -> Result<T, StoreError> {
    v.ok_or_else(|| StoreError::Db(sqlx::Error::Decode(format!("{column} is NULL").into())))
}

impl Store {
    /// One resource as the API token with hash `sha256` of organization `org` reads it.
    /// None: the token is unknown, revoked or expired — as of the request's arrival on every
    /// replica, so a revocation holds at once everywhere. From the read cache when this store
    /// has one and it can vouch for the answer, otherwise in one statement.
    pub async fn read_resource_with_token(
        &self,
        org: OrgId,
        sha256: &[u8; 32],
        key: &ResourceKey<'_>,
    ) -> Result<Option<TokenRead>, StoreError> {
        match &self.reads {
            Some(cache) => cache.read(self, org, sha256, key).await,
            None => self.read_resource_uncached(org, sha256, key).await,
        }
    }

    /// `read_resource_with_token` from the database: one call of `trellis_read_resource`.
    pub(crate) async fn read_resource_uncached(
        &self,
        org: OrgId,
        sha256: &[u8; 32],
        key: &ResourceKey<'_>,
    ) -> Result<Option<TokenRead>, StoreError> {
        let row: Option<ReadRow> =
            sqlx::query_as("SELECT * FROM trellis_read_resource($1, $2, $3, $4, $5, $6, $7)")
                .bind(org.as_uuid())
                .bind(&sha256[..])
                .bind(key.mesh)
                .bind(key.kind)
                .bind(key.name)
                .bind(key.reach.callers)
                .bind(key.reach.instances)
                .fetch_optional(&self.pool)
                .await?;
        row.map(ReadRow::into_read).transpose()
    }

    /// Marks an API token used, as its check in the database does at most once a minute.
    pub(crate) async fn mark_token_used(&self, org: OrgId, sha256: &[u8; 32]) -> Result<(), StoreError> {
        let mut tx = self.tenant(org).await?;
        tx.authenticate_token(sha256).await?;
        tx.commit().await
    }
}

impl ReadRow {
    fn into_read(self) -> Result<TokenRead, StoreError> {
        let (token, org) = self.token.into_parts()?;
        let mesh = match self.m_id {
            None => None,
            Some(id) => Some(Mesh::try_from(MeshRow {
                id,
                name: present(self.m_name, "meshes.name")?,
                trust_domain: present(self.m_trust_domain, "meshes.trust_domain")?,
                spec: present(self.m_spec, "meshes.spec")?,
                labels: present(self.m_labels, "meshes.labels")?,
                generation: present(self.m_generation, "meshes.generation")?,
                version: present(self.m_version, "meshes.version")?,
                revision: present(self.m_revision, "meshes.revision")?,
                created_at: present(self.m_created_at, "meshes.created_at")?,
                updated_at: present(self.m_updated_at, "meshes.updated_at")?,
            })?),
        };
        let resource = match (self.r_id, self.m_id) {
            (Some(id), Some(mesh_id)) => {
                let resource = Resource::try_from(ResourceRow {
                    id,
                    mesh_id,
                    kind: present(self.r_kind, "resources.kind")?,
                    name: present(self.r_name, "resources.name")?,
                    spec: present(self.r_spec, "resources.spec")?,
                    labels: present(self.r_labels, "resources.labels")?,
                    generation: present(self.r_generation, "resources.generation")?,
                    version: present(self.r_version, "resources.version")?,
                    created_at: present(self.r_created_at, "resources.created_at")?,
                    updated_at: present(self.r_updated_at, "resources.updated_at")?,
                    mesh_revision: self.r_mesh_revision,
                    target: self.r_target,
                })?;
                let reached = match resource.mesh_revision {
                    None => None,
                    Some(_) => Some(Reached::from(ReachedRow {
                        proxies: present(self.proxies, "proxies")?,
                        applied: present(self.applied, "applied")?,
                        rejected: present(self.rejected, "rejected")?,
                        nack_type_urls: present(self.nack_type_urls, "nack_type_urls")?,
                        nack_versions: present(self.nack_versions, "nack_versions")?,
                        nack_errors: present(self.nack_errors, "nack_errors")?,
                    })),
                };
                Some((resource, reached))
            }
            _ => None,
        };
        Ok(TokenRead { token, org, mesh, resource })
    }
}
