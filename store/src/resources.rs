use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::{MeshId, ResourceName};
use uuid::Uuid;

use crate::{StoreError, TenantTx};

/// A mesh-scoped configuration resource, stored with its spec as JSON. The `kind` names the
/// model type that the spec was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: Uuid,
    pub mesh_id: MeshId,
    pub kind: String,
    pub name: ResourceName,
    pub spec: Value,
    pub labels: Value,
    pub generation: i64,
    /// Changes on every write: the ETag.
    pub version: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ResourceRow {
    id: Uuid,
    mesh_id: Uuid,
    kind: String,
    name: String,
    spec: Value,
    labels: Value,
    generation: i64,
    version: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ResourceRow> for Resource {
    type Error = StoreError;
    fn try_from(r: ResourceRow) -> Result<Self, StoreError> {
        Ok(Resource {
            id: r.id,
            mesh_id: MeshId::from_uuid(r.mesh_id),
            name: ResourceName::parse(&r.name).map_err(|e| {
                StoreError::Db(sqlx::Error::Decode(format!("stored name {:?}: {e}", r.name).into()))
            })?,
            kind: r.kind,
            spec: r.spec,
            labels: r.labels,
            generation: r.generation,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! resource_columns {
    () => {
        "id, mesh_id, kind, name, spec, labels, generation, version, created_at, updated_at"
    };
}

impl TenantTx {
    /// Creates or replaces a resource. With `if_version`, the write happens only when the
    /// stored version still matches ([`StoreError::Stale`] otherwise). Returns the row and
    /// whether it was created.
    pub async fn put_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
        spec: &Value,
        labels: &Value,
        if_version: Option<Uuid>,
    ) -> Result<(Resource, bool), StoreError> {
        let org = self.org().as_uuid();
        if let Some(expected) = if_version {
            let row: Option<ResourceRow> = sqlx::query_as(concat!(
                "UPDATE resources SET spec = $5, labels = $6, generation = generation + 1, \
                   version = gen_random_uuid(), updated_at = now() \
                 WHERE org_id = $1 AND mesh_id = $2 AND kind = $3 AND name = $4 AND version = $7 \
                 RETURNING ",
                resource_columns!(),
                ""
            ))
            .bind(org)
            .bind(mesh.as_uuid())
            .bind(kind)
            .bind(name.as_str())
            .bind(spec)
            .bind(labels)
            .bind(expected)
            .fetch_optional(self.conn())
            .await?;
            return match row {
                Some(r) => Ok((r.try_into()?, false)),
                None => Err(StoreError::Stale),
            };
        }
        let (row, created): (ResourceRow, bool) = {
            let r: ResourceRowCreated = sqlx::query_as(concat!(
                "INSERT INTO resources (org_id, mesh_id, kind, name, spec, labels) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT ON CONSTRAINT resources_name_key DO UPDATE \
                   SET spec = EXCLUDED.spec, labels = EXCLUDED.labels, \
                       generation = resources.generation + 1, version = gen_random_uuid(), \
                       updated_at = now() \
                 RETURNING ",
                resource_columns!(),
                ", (xmax = 0) AS created"
            ))
            .bind(org)
            .bind(mesh.as_uuid())
            .bind(kind)
            .bind(name.as_str())
            .bind(spec)
            .bind(labels)
            .fetch_one(self.conn())
            .await?;
            (r.row, r.created)
        };
        Ok((row.try_into()?, created))
    }

    /// One resource by mesh, kind and name.
    pub async fn get_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
    ) -> Result<Option<Resource>, StoreError> {
        let row: Option<ResourceRow> = sqlx::query_as(concat!(
            "SELECT ",
            resource_columns!(),
            " FROM resources WHERE mesh_id = $1 AND kind = $2 AND name = $3"
        ))
        .bind(mesh.as_uuid())
        .bind(kind)
        .bind(name.as_str())
        .fetch_optional(self.conn())
        .await?;
        row.map(Resource::try_from).transpose()
    }

    /// Deletes one resource.
    pub async fn delete_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM resources WHERE mesh_id = $1 AND kind = $2 AND name = $3")
            .bind(mesh.as_uuid())
            .bind(kind)
            .bind(name.as_str())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("resource"));
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct ResourceRowCreated {
    #[sqlx(flatten)]
    row: ResourceRow,
    created: bool,
}
