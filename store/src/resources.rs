use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::{MeshId, ResourceName};
use uuid::Uuid;

use crate::meshes::{Precondition, Put};
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
    /// The mesh revision this resource's last write made (proxies at or past it have it).
    pub mesh_revision: Option<i64>,
    /// The service it configures (its own name for a Service, else its `targetRef`); None:
    /// every proxy of the mesh. Derived by PostgreSQL from the spec.
    pub target: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ResourceRow {
    pub(crate) id: Uuid,
    pub(crate) mesh_id: Uuid,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) spec: Value,
    pub(crate) labels: Value,
    pub(crate) generation: i64,
    pub(crate) version: Uuid,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) mesh_revision: Option<i64>,
    pub(crate) target: Option<String>,
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
            mesh_revision: r.mesh_revision,
            target: r.target,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ResourceRowCreated {
    created: bool,
    #[sqlx(flatten)]
    row: ResourceRow,
}

macro_rules! resource_columns {
    () => {
        "id, mesh_id, kind, name, spec, labels, generation, version, created_at, updated_at, mesh_revision, \
         target"
    };
}

/// What a deletion left: the mesh revision it made and the service the resource configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub mesh_revision: i64,
    pub target: Option<String>,
}

/// A label selector in store terms: `k=v` pairs, `k!=v` pairs, keys that must exist and
/// keys that must not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub equal: Vec<(String, String)>,
    pub not_equal: Vec<(String, String)>,
    pub exists: Vec<String>,
    pub absent: Vec<String>,
}

impl TenantTx {
    /// Creates or replaces a resource, under `pre`. A conditional replace is always a new
    /// generation; an unconditional write of identical content changes nothing (so `apply`
    /// is idempotent).
    pub async fn put_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
        spec: &Value,
        labels: &Value,
        pre: Precondition,
    ) -> Result<Put<Resource>, StoreError> {
        let org = self.org().as_uuid();
        match pre {
            Precondition::Version(expected) => {
                let row: Option<ResourceRow> = sqlx::query_as(concat!(
                    "UPDATE resources SET spec = $5, labels = $6, generation = generation + 1, \
                       version = gen_random_uuid(), updated_at = now() \
                     WHERE org_id = $1 AND mesh_id = $2 AND kind = $3 AND name = $4 AND version = $7 \
                     RETURNING ",
                    resource_columns!()
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
                    Some(r) => Ok(Put { value: r.try_into()?, created: false, changed: true }),
                    None => Err(StoreError::Stale),
                };
            }
            Precondition::Absent | Precondition::Unconditional => {}
        }
        let row = self.insert_resource(pre, mesh, kind, name, spec, labels).await?;
        match (row, pre) {
            (Some(r), _) => Ok(Put { value: r.row.try_into()?, created: r.created, changed: true }),
            (None, Precondition::Absent) => Err(StoreError::Exists),
            (None, _) => {
                let r = self.get_resource(mesh, kind, name).await?.ok_or(StoreError::NotFound("resource"))?;
                Ok(Put { value: r, created: false, changed: false })
            }
        }
    }

    /// Creates a resource that must not exist yet (a conflict on `resources_name_key` if it does).
    pub async fn create_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
        spec: &Value,
        labels: &Value,
    ) -> Result<Resource, StoreError> {
        match self.insert_resource(Precondition::Absent, mesh, kind, name, spec, labels).await? {
            Some(r) => r.row.try_into(),
            None => Err(StoreError::Conflict { constraint: "resources_name_key".into() }),
        }
    }

    /// Inserts a resource. An existing one of that kind and name is left alone when `pre` is
    /// create-only (then `None`), and otherwise gets the new content unless it already is
    /// exactly that (then `None` too). A concurrent insert of the same name waits for the
    /// other and then finds it.
    async fn insert_resource(
        &mut self,
        pre: Precondition,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
        spec: &Value,
        labels: &Value,
    ) -> Result<Option<ResourceRowCreated>, StoreError> {
        let sql = match pre {
            Precondition::Absent => concat!(
                "INSERT INTO resources (org_id, mesh_id, kind, name, spec, labels) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT ON CONSTRAINT resources_name_key DO NOTHING RETURNING true AS created, ",
                resource_columns!()
            ),
            _ => concat!(
                "INSERT INTO resources (org_id, mesh_id, kind, name, spec, labels) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT ON CONSTRAINT resources_name_key DO UPDATE \
                   SET spec = EXCLUDED.spec, labels = EXCLUDED.labels, \
                       generation = resources.generation + 1, version = gen_random_uuid(), \
                       updated_at = now() \
                   WHERE (resources.spec, resources.labels) IS DISTINCT FROM (EXCLUDED.spec, EXCLUDED.labels) \
                 RETURNING (xmax = 0) AS created, ",
                resource_columns!()
            ),
        };
        Ok(sqlx::query_as(sql)
            .bind(self.org().as_uuid())
            .bind(mesh.as_uuid())
            .bind(kind)
            .bind(name.as_str())
            .bind(spec)
            .bind(labels)
            .fetch_optional(self.conn())
            .await?)
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

    /// Resources of one kind (or every kind) in a mesh, by name after `after`, matching
    /// `selector`, at most `limit`.
    pub async fn list_resources(
        &mut self,
        mesh: MeshId,
        kind: Option<&str>,
        selector: &Selector,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Resource>, StoreError> {
        let equal: serde_json::Map<String, Value> =
            selector.equal.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let (ne_keys, ne_values): (Vec<&str>, Vec<&str>) =
            selector.not_equal.iter().map(|(k, v)| (k.as_str(), v.as_str())).unzip();
        let rows: Vec<ResourceRow> = sqlx::query_as(concat!(
            "SELECT ",
            resource_columns!(),
            " FROM resources WHERE mesh_id = $1 AND ($2::text IS NULL OR kind = $2) \
               AND ($3::text IS NULL OR name > $3) AND labels @> $4 \
               AND labels ?& $5::text[] AND NOT labels ?| $6::text[] \
               AND NOT EXISTS (SELECT 1 FROM unnest($7::text[], $8::text[]) AS ne(k, v) \
                               WHERE labels ->> ne.k = ne.v) \
             ORDER BY kind, name LIMIT $9"
        ))
        .bind(mesh.as_uuid())
        .bind(kind)
        .bind(after)
        .bind(Value::Object(equal))
        .bind(&selector.exists)
        .bind(&selector.absent)
        .bind(&ne_keys)
        .bind(&ne_values)
        .bind(limit)
        .fetch_all(self.conn())
        .await?;
        rows.into_iter().map(Resource::try_from).collect()
    }

    /// Deletes one resource; with `if_version`, only when the stored version matches.
    pub async fn delete_resource(
        &mut self,
        mesh: MeshId,
        kind: &str,
        name: &ResourceName,
        if_version: Option<Uuid>,
    ) -> Result<Deleted, StoreError> {
        let target: Option<Option<String>> = sqlx::query_scalar(
            "DELETE FROM resources WHERE mesh_id = $1 AND kind = $2 AND name = $3 \
             AND ($4::uuid IS NULL OR version = $4) RETURNING target",
        )
        .bind(mesh.as_uuid())
        .bind(kind)
        .bind(name.as_str())
        .bind(if_version)
        .fetch_optional(self.conn())
        .await?;
        let Some(target) = target else {
            if if_version.is_some() && self.get_resource(mesh, kind, name).await?.is_some() {
                return Err(StoreError::Stale);
            }
            return Err(StoreError::NotFound("resource"));
        };
        // The trigger bumped the mesh's revision in this transaction: the deletion's revision.
        let mesh_revision: i64 = sqlx::query_scalar("SELECT revision FROM meshes WHERE id = $1")
            .bind(mesh.as_uuid())
            .fetch_one(self.conn())
            .await?;
        Ok(Deleted { mesh_revision, target })
    }
}
