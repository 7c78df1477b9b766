//! What a service's health is read from beyond the fleet and its ledger: the SVIDs its
//! proxies hold (recorded when a stream registers, moved on by each renewal) and the last
//! rejection any of them sent.

use chrono::{DateTime, Utc};
use trellis_model::{MeshId, OrgId};
use uuid::Uuid;

use crate::{Store, StoreError, TenantTx};

/// The latest rejection one of a service's proxies sent.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LastNack {
    pub dataplane_id: Uuid,
    pub node_id: String,
    pub type_url: String,
    pub version: String,
    pub error: String,
    pub at: DateTime<Utc>,
    /// The proxy has not accepted a later version of that type since.
    pub outstanding: bool,
}

/// The SVIDs a service's online proxies hold.
#[derive(Debug, Clone, PartialEq, Default, sqlx::FromRow)]
pub struct HeldSvids {
    /// The earliest expiry among them.
    pub earliest_not_after: Option<DateTime<Utc>>,
    /// How many online proxies hold a known one.
    pub known: i64,
}

impl TenantTx {
    /// The SVID (serial and expiry) a dataplane's stream presented. An older one never
    /// replaces a newer one: a stream that reconnects with the certificate it started with
    /// leaves the renewed one in place.
    pub async fn dataplane_svid(
        &mut self,
        dataplane: Uuid,
        serial: &str,
        not_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dataplanes SET svid_serial = $2, svid_not_after = $3 \
             WHERE id = $1 AND (svid_not_after IS NULL OR svid_not_after < $3)",
        )
        .bind(dataplane)
        .bind(serial)
        .bind(not_after)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// What the online proxies of `service` in `mesh` hold.
    pub async fn held_svids(&mut self, mesh: MeshId, service: &str) -> Result<HeldSvids, StoreError> {
        Ok(sqlx::query_as(
            "SELECT min(svid_not_after) AS earliest_not_after, count(svid_not_after) AS known \
             FROM dataplanes WHERE mesh_id = $1 AND service = $2 AND online",
        )
        .bind(mesh.as_uuid())
        .bind(service)
        .fetch_one(self.conn())
        .await?)
    }

    /// The latest rejection any proxy of `service` in `mesh` sent, outstanding or not.
    pub async fn last_nack(&mut self, mesh: MeshId, service: &str) -> Result<Option<LastNack>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.id AS dataplane_id, d.node_id, l.type_url, \
                    coalesce(l.last_nack_version, l.nacked_version) AS version, \
                    coalesce(l.last_nack_error, l.nack_error) AS error, l.nacked_at AS at, \
                    (l.nacked_version IS NOT NULL AND l.nack_error IS NOT NULL) AS outstanding \
             FROM xds_ledger l JOIN dataplanes d ON d.org_id = l.org_id AND d.id = l.dataplane_id \
             WHERE d.mesh_id = $1 AND d.service = $2 AND l.nacked_at IS NOT NULL \
               AND coalesce(l.last_nack_error, l.nack_error) IS NOT NULL \
             ORDER BY l.nacked_at DESC, d.node_id, l.type_url LIMIT 1",
        )
        .bind(mesh.as_uuid())
        .bind(service)
        .fetch_optional(self.conn())
        .await?)
    }
}

impl Store {
    /// A renewal authenticated with the SVID `old` and was issued `new`: the dataplanes that
    /// held `old` hold `new` now.
    pub async fn svid_renewed(
        &self,
        org: OrgId,
        old: &str,
        new: &str,
        not_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.tenant(org).await?;
        sqlx::query(
            "UPDATE dataplanes SET svid_serial = $2, svid_not_after = $3 \
             WHERE svid_serial = $1 AND (svid_not_after IS NULL OR svid_not_after < $3)",
        )
        .bind(old)
        .bind(new)
        .bind(not_after)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }
}
