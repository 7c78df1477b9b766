use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::{MeshId, MeshName};

use crate::{StoreError, TenantTx};

/// A mesh row: the container of a tenant's services and policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub id: MeshId,
    pub name: MeshName,
    pub spec: Value,
    pub generation: i64,
    /// Bumped on every write to the mesh or anything in it.
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MeshRow {
    id: uuid::Uuid,
    name: String,
    spec: Value,
    generation: i64,
    revision: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<MeshRow> for Mesh {
    type Error = StoreError;
    fn try_from(r: MeshRow) -> Result<Self, StoreError> {
        Ok(Mesh {
            id: MeshId::from_uuid(r.id),
            name: MeshName::parse(&r.name).map_err(|e| {
                StoreError::Db(sqlx::Error::Decode(format!("stored mesh name {:?}: {e}", r.name).into()))
            })?,
            spec: r.spec,
            generation: r.generation,
            revision: r.revision,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! mesh_columns {
    () => {
        "id, name, spec, generation, revision, created_at, updated_at"
    };
}

impl TenantTx {
    /// Creates a mesh, or replaces its spec (bumping generation) when it exists.
    pub async fn put_mesh(&mut self, name: &MeshName, spec: &Value) -> Result<Mesh, StoreError> {
        let org = self.org().as_uuid();
        let row: MeshRow = sqlx::query_as(concat!(
            "INSERT INTO meshes (org_id, name, spec) VALUES ($1, $2, $3) \
             ON CONFLICT ON CONSTRAINT meshes_name_key DO UPDATE \
               SET spec = EXCLUDED.spec, generation = meshes.generation + 1, updated_at = now() \
             RETURNING ",
            mesh_columns!(),
            ""
        ))
        .bind(org)
        .bind(name.as_str())
        .bind(spec)
        .fetch_one(self.conn())
        .await?;
        row.try_into()
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

    /// Every mesh of this tenant, by name.
    pub async fn list_meshes(&mut self) -> Result<Vec<Mesh>, StoreError> {
        let rows: Vec<MeshRow> =
            sqlx::query_as(concat!("SELECT ", mesh_columns!(), " FROM meshes ORDER BY name"))
                .fetch_all(self.conn())
                .await?;
        rows.into_iter().map(Mesh::try_from).collect()
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
