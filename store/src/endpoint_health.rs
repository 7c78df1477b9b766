//! What proxies see of their upstream clusters' endpoints (ejected, unhealthy), the latest
//! report per proxy and destination cluster: written by the ingestion's batching writer,
//! read by service health for the online proxies that reported recently.

use chrono::{DateTime, Utc};
use trellis_model::telemetry::Membership;
use trellis_model::{MeshId, ResourceName, Tags};

use crate::{Store, StoreError, TenantTx};

/// How long a report is kept after it was received (a leader duty): well past the age
/// service health shows, so nothing it could show is deleted.
pub const ENDPOINT_HEALTH_RETENTION: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Most reports service health reads for one service (the impaired first).
pub const MAX_SEEN_ENDPOINTS: i64 = 500;

/// One proxy's latest gauges for one upstream cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    pub mesh: MeshId,
    /// The reporting proxy's node id, as its stream named it.
    pub node_id: String,
    /// The reporting proxy's service, from its certificate.
    pub source: ResourceName,
    pub destination: ResourceName,
    pub port: u32,
    pub subset: Tags,
    pub membership: Membership,
    pub reported_at: DateTime<Utc>,
}

/// A report as service health reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SeenEndpoints {
    pub source_service: String,
    pub node_id: String,
    pub dataplane_id: uuid::Uuid,
    pub destination_port: i32,
    /// `key=value,…`, empty for the whole service.
    pub destination_subset: String,
    pub total: i64,
    pub healthy: i64,
    pub degraded: i64,
    pub ejected: i64,
    pub reported_at: DateTime<Utc>,
}

impl SeenEndpoints {
    pub fn membership(&self) -> Membership {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Membership {
            total: n(self.total),
            healthy: n(self.healthy),
            degraded: n(self.degraded),
            ejected: n(self.ejected),
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Deletes, in every organization, the reports received longer than `keep` ago; returns
    /// how many rows went (a leader duty).
    pub async fn expire_endpoint_health(&self, keep: std::time::Duration) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT trellis_endpoint_health_expire(make_interval(secs => $1))")
            .bind(keep.as_secs_f64())
            .fetch_one(&self.pool)
            .await?)
    }
}

impl TenantTx {
    /// Keeps the latest report per proxy and destination cluster (one statement; a key given
    /// twice keeps the later one). Returns the rows written.
    pub async fn record_endpoint_health(&mut self, reports: &[EndpointReport]) -> Result<u64, StoreError> {
        // One row per key: PostgreSQL refuses an upsert that touches a row twice.
        let mut latest: std::collections::BTreeMap<(MeshId, &str, &str, u32, String), &EndpointReport> =
            std::collections::BTreeMap::new();
        for r in reports {
            let key = (r.mesh, r.node_id.as_str(), r.destination.as_str(), r.port, r.subset.joined());
            latest.insert(key, r);
        }
        if latest.is_empty() {
            return Ok(0);
        }
        let rows: Vec<_> = latest.into_iter().collect();
        let meshes: Vec<uuid::Uuid> = rows.iter().map(|(k, _)| k.0.as_uuid()).collect();
        let nodes: Vec<&str> = rows.iter().map(|(k, _)| k.1).collect();
        let sources: Vec<&str> = rows.iter().map(|(_, r)| r.source.as_str()).collect();
        let destinations: Vec<&str> = rows.iter().map(|(k, _)| k.2).collect();
        let ports: Vec<i32> = rows.iter().map(|(k, _)| i32::try_from(k.3).unwrap_or(i32::MAX)).collect();
        let subsets: Vec<&str> = rows.iter().map(|(k, _)| k.4.as_str()).collect();
        let m = |f: fn(&Membership) -> u64| rows.iter().map(|(_, r)| to_i64(f(&r.membership))).collect();
        let (total, healthy, degraded, ejected): (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) =
            (m(|m| m.total), m(|m| m.healthy), m(|m| m.degraded), m(|m| m.ejected));
        let at: Vec<DateTime<Utc>> = rows.iter().map(|(_, r)| r.reported_at).collect();
        let done = sqlx::query(
            "INSERT INTO endpoint_health AS e (org_id, mesh_id, node_id, source_service, \
                 destination_service, destination_port, destination_subset, \
                 total, healthy, degraded, ejected, reported_at) \
             SELECT $1, t.* FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[], \
                 $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::timestamptz[]) \
                 AS t(m, n, s, d, p, b, tot, h, deg, ej, at) \
             ON CONFLICT ON CONSTRAINT endpoint_health_pkey DO UPDATE SET \
                 source_service = EXCLUDED.source_service, total = EXCLUDED.total, \
                 healthy = EXCLUDED.healthy, degraded = EXCLUDED.degraded, \
                 ejected = EXCLUDED.ejected, reported_at = EXCLUDED.reported_at \
             WHERE e.reported_at <= EXCLUDED.reported_at",
        )
        .bind(self.org().as_uuid())
        .bind(meshes)
        .bind(nodes)
        .bind(sources)
        .bind(destinations)
        .bind(ports)
        .bind(subsets)
        .bind(total)
        .bind(healthy)
        .bind(degraded)
        .bind(ejected)
        .bind(at)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected())
    }

    /// What the online proxies of `mesh` reported since `since` of the endpoints of
    /// `destination`: a report counts only from a registered dataplane of the node it named
    /// and of the service its certificate holds. The impaired first, then by caller; at most
    /// [`MAX_SEEN_ENDPOINTS`].
    pub async fn seen_endpoints(
        &mut self,
        mesh: MeshId,
        destination: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<SeenEndpoints>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT e.source_service, e.node_id, d.id AS dataplane_id, e.destination_port, \
                    e.destination_subset, e.total, e.healthy, e.degraded, e.ejected, e.reported_at \
             FROM endpoint_health e \
             JOIN dataplanes d ON d.org_id = e.org_id AND d.mesh_id = e.mesh_id \
                  AND d.node_id = e.node_id AND d.service = e.source_service AND d.online \
             WHERE e.mesh_id = $1 AND e.destination_service = $2 AND e.reported_at >= $3 \
             ORDER BY (e.ejected > 0 OR e.total > e.healthy + e.degraded) DESC, \
                      e.source_service, e.node_id, e.destination_port, e.destination_subset \
             LIMIT $4",
        )
        .bind(mesh.as_uuid())
        .bind(destination)
        .bind(since)
        .bind(MAX_SEEN_ENDPOINTS)
        .fetch_all(self.conn())
        .await?)
    }
}
