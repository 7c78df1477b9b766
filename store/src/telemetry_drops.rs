//! Telemetry a tenant sent that was not stored, counted per mesh, minute and reason: written
//! by the ingestion's batching writer, read back by the tenant.

use chrono::{DateTime, Utc};
use trellis_model::MeshId;
use trellis_model::telemetry::DropReason;

use crate::{Store, StoreError, TenantTx};

/// Items of one mesh dropped for one reason within one minute (`minute` its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCount {
    pub mesh: MeshId,
    pub minute: DateTime<Utc>,
    /// Kept as `DropReason::as_str` (the table's check names them all).
    pub reason: DropReason,
    pub items: u64,
}

/// How long drop counts are kept: the longest window a read covers.
pub const DROP_RETENTION: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

impl Store {
    /// Deletes, in every organization, the drop counts of minutes that started longer than
    /// `keep` ago; returns how many rows went (a leader duty).
    pub async fn expire_telemetry_drops(&self, keep: std::time::Duration) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT trellis_telemetry_drops_expire(make_interval(secs => $1))")
            .bind(keep.as_secs_f64())
            .fetch_one(&self.pool)
            .await?)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TenantTx {
    /// Adds drop counts to their minutes (one statement; counts of one key must be summed
    /// by the caller). Returns the rows written.
    pub async fn record_drops(&mut self, counts: &[DropCount]) -> Result<u64, StoreError> {
        if counts.is_empty() {
            return Ok(0);
        }
        let meshes: Vec<uuid::Uuid> = counts.iter().map(|c| c.mesh.as_uuid()).collect();
        let minutes: Vec<DateTime<Utc>> = counts.iter().map(|c| c.minute).collect();
        let reasons: Vec<&str> = counts.iter().map(|c| c.reason.as_str()).collect();
        let items: Vec<i64> = counts.iter().map(|c| to_i64(c.items)).collect();
        let done = sqlx::query(
            "INSERT INTO telemetry_drops AS d (org_id, mesh_id, minute, reason, items) \
             SELECT $1, t.m, t.b, t.r, t.n \
             FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::int8[]) AS t(m, b, r, n) \
             ON CONFLICT ON CONSTRAINT telemetry_drops_pkey DO UPDATE SET \
                 items = d.items + EXCLUDED.items",
        )
        .bind(self.org().as_uuid())
        .bind(meshes)
        .bind(minutes)
        .bind(reasons)
        .bind(items)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected())
    }

    /// The items of `mesh` dropped in the minutes that start in `[from, to)`, by reason
    /// (reasons with none left out), in the reasons' order.
    pub async fn drops(
        &mut self,
        mesh: MeshId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT reason, sum(items)::int8 FROM telemetry_drops \
             WHERE mesh_id = $1 AND minute >= $2 AND minute < $3 \
             GROUP BY reason ORDER BY reason",
        )
        .bind(mesh.as_uuid())
        .bind(from)
        .bind(to)
        .fetch_all(self.conn())
        .await?;
        Ok(rows.into_iter().map(|(r, n)| (r, u64::try_from(n).unwrap_or(0))).collect())
    }
}
