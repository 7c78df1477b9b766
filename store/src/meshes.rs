use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::{MeshId, MeshName, TrustDomain};
use uuid::Uuid;

use crate::{StoreError, TenantTx};

/// A mesh row: the container of a tenant's services and policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub id: MeshId,
    pub name: MeshName,
    pub trust_domain: TrustDomain,
    pub spec: Value,
    pub labels: Value,
    pub generation: i64,
    /// Changes when the mesh's own spec or labels change: its ETag.
    pub version: Uuid,
    /// Bumped on every write to the mesh or anything in it.
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct MeshRow {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) trust_domain: String,
    pub(crate) spec: Value,
    pub(crate) labels: Value,
    pub(crate) generation: i64,
    pub(crate) version: Uuid,
    pub(crate) revision: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl TryFrom<MeshRow> for Mesh {
    type Error = StoreError;
    fn try_from(r: MeshRow) -> Result<Self, StoreError> {
        Ok(Mesh {
            id: MeshId::from_uuid(r.id),
            name: MeshName::parse(&r.name).map_err(|e| {
                StoreError::Db(sqlx::Error::Decode(format!("stored mesh name {:?}: {e}", r.name).into()))
            })?,
            trust_domain: TrustDomain::parse(&r.trust_domain).map_err(|e| {
                StoreError::Db(sqlx::Error::Decode(
                    format!("stored trust domain {:?}: {e}", r.trust_domain).into(),
                ))
            })?,
            spec: r.spec,
            labels: r.labels,
            generation: r.generation,
            version: r.version,
            revision: r.revision,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! mesh_columns {
    () => {
        "id, name, trust_domain, spec, labels, generation, version, revision, created_at, updated_at"
    };
}

/// The condition a write must meet. It is checked by the statement that writes, never by a
/// read before it, so that concurrent writers cannot both pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Create or replace.
    Unconditional,
    /// Replace only this stored version (`If-Match`); a missing row does not match.
    Version(Uuid),
    /// Create only (`If-None-Match: *`); an existing row fails with [`StoreError::Exists`].
    Absent,
}

/// What a PUT did.
#[derive(Debug, Clone, PartialEq)]
pub struct Put<T> {
    pub value: T,
    pub created: bool,
    /// False when the stored content was already exactly this (nothing was written).
    pub changed: bool,
}

impl TenantTx {
    /// Creates a mesh or replaces its spec and labels, under `pre`. A conditional replace
    /// always counts as a new generation; an unconditional one of identical content changes
    /// nothing. The trust domain is set at creation and never changed here.
    pub async fn put_mesh(
        &mut self,
        name: &MeshName,
        trust_domain: &str,
        spec: &Value,
        labels: &Value,
        pre: Precondition,
    ) -> Result<Put<Mesh>, StoreError> {
        let org = self.org().as_uuid();
        match pre {
            Precondition::Version(expected) => {
                let row: Option<MeshRow> = sqlx::query_as(concat!(
                    "UPDATE meshes SET spec = $3, labels = $4, generation = generation + 1, \
                       version = gen_random_uuid(), updated_at = now() \
                     WHERE org_id = $1 AND name = $2 AND version = $5 RETURNING ",
                    mesh_columns!()
                ))
                .bind(org)
                .bind(name.as_str())
                .bind(spec)
                .bind(labels)
                .bind(expected)
                .fetch_optional(self.conn())
                .await?;
                return row
                    .map(|r| Ok(Put { value: r.try_into()?, created: false, changed: true }))
                    .unwrap_or(Err(StoreError::Stale));
            }
            Precondition::Absent | Precondition::Unconditional => {}
        }
        // Create only: an existing mesh is left alone. Otherwise an existing mesh gets the
        // new content, unless it is already exactly that.
        let sql = match pre {
            Precondition::Absent => concat!(
                "INSERT INTO meshes (org_id, name, trust_domain, spec, labels) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT ON CONSTRAINT meshes_name_key DO NOTHING RETURNING true AS created, ",
                mesh_columns!()
            ),
            _ => concat!(
                "INSERT INTO meshes (org_id, name, trust_domain, spec, labels) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT ON CONSTRAINT meshes_name_key DO UPDATE \
                   SET spec = EXCLUDED.spec, labels = EXCLUDED.labels, generation = meshes.generation + 1, \
                       version = gen_random_uuid(), updated_at = now() \
                   WHERE (meshes.spec, meshes.labels) IS DISTINCT FROM (EXCLUDED.spec, EXCLUDED.labels) \
                 RETURNING (xmax = 0) AS created, ",
                mesh_columns!()
            ),
        };
        let row: Option<MeshRowCreated> = sqlx::query_as(sql)
            .bind(org)
            .bind(name.as_str())
            .bind(trust_domain)
            .bind(spec)
            .bind(labels)
            .fetch_optional(self.conn())
            .await?;
        match (row, pre) {
            (Some(r), _) => Ok(Put { value: r.row.try_into()?, created: r.created, changed: true }),
            (None, Precondition::Absent) => Err(StoreError::Exists),
            (None, _) => {
                let m = self.mesh_by_name(name).await?.ok_or(StoreError::NotFound("mesh"))?;
                Ok(Put { value: m, created: false, changed: false })
            }
        }
    }

    /// The mesh called `name`, if this tenant has one.
    pub async fn mesh_by_name(&mut self, name: &MeshName) -> Result<Option<Mesh>, StoreError> {
        let row: Option<MeshRow> =
            sqlx::query_as(concat!("SELECT ", mesh_columns!(), " FROM meshes WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(self.conn())
                .await?;
        row.map(Mesh::try_from).transpose()
    }

    /// The mesh with this id, if this tenant has it.
    pub async fn mesh_by_id(&mut self, id: MeshId) -> Result<Option<Mesh>, StoreError> {
        let row: Option<MeshRow> =
            sqlx::query_as(concat!("SELECT ", mesh_columns!(), " FROM meshes WHERE id = $1"))
                .bind(id.as_uuid())
                .fetch_optional(self.conn())
                .await?;
        row.map(Mesh::try_from).transpose()
    }

    /// Meshes of this tenant by name, after `after`, at most `limit`.
    pub async fn list_meshes_page(
        &mut self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Mesh>, StoreError> {
        let rows: Vec<MeshRow> = sqlx::query_as(concat!(
            "SELECT ",
            mesh_columns!(),
            " FROM meshes WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(Mesh::try_from).collect()
    }

    /// Every mesh of this tenant, by name.
    pub async fn list_meshes(&mut self) -> Result<Vec<Mesh>, StoreError> {
        self.list_meshes_page(None, i64::MAX).await
    }

    /// Deletes a mesh and everything in it.
    pub async fn delete_mesh(&mut self, id: MeshId) -> Result<(), StoreError> {
        let done =
            sqlx::query("DELETE FROM meshes WHERE id = $1").bind(id.as_uuid()).execute(self.conn()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("mesh"));
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MeshRowCreated {
    created: bool,
    #[sqlx(flatten)]
    row: MeshRow,
}
