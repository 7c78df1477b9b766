//! Dataplanes (registered by their xDS streams) and the propagation ledger.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use trellis_model::config::Reach;
use trellis_model::{MeshId, OrgId};
use uuid::Uuid;

use crate::{Resource, Store, StoreError, TenantTx};

/// What a stream tells about its proxy when it registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub service: String,
    pub node_id: String,
    /// `envoy`, `grpc` or `agent`.
    pub client: String,
    pub address: Option<IpAddr>,
    pub ports: Vec<i32>,
    pub tags: Value,
    pub zone: String,
    pub replica: String,
}

/// A registered dataplane.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Dataplane {
    pub id: Uuid,
    pub mesh_id: Uuid,
    pub service: String,
    pub node_id: String,
    pub client: String,
    pub address: Option<sqlx::types::ipnet::IpNet>,
    pub ports: Vec<i32>,
    pub tags: Value,
    pub zone: String,
    pub online: bool,
    pub replica: Option<String>,
    pub connected_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub offline_since: Option<DateTime<Utc>>,
    pub synced_revision: Option<i64>,
    /// The services whose caller-side resources it was sent.
    pub calls: Vec<String>,
    /// It was sent its own service's inbound resources.
    pub serves: bool,
}

/// How far a resource's last write (a mesh revision) has reached the online proxies it
/// configures, counted by PostgreSQL (`trellis_propagation`): one row, whatever the fleet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reached {
    pub proxies: i64,
    pub applied: i64,
    /// Proxies that have not applied it and have a rejection outstanding.
    pub rejected: i64,
    /// The first five of those (by service and node), each with its first rejected type.
    pub rejections: Vec<Rejection>,
}

/// A response a proxy rejected and has not accepted since.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub type_url: String,
    pub version: String,
    pub error: String,
}

/// A row of `trellis_propagation`.
#[derive(sqlx::FromRow)]
pub(crate) struct ReachedRow {
    pub(crate) proxies: i64,
    pub(crate) applied: i64,
    pub(crate) rejected: i64,
    pub(crate) nack_type_urls: Vec<String>,
    pub(crate) nack_versions: Vec<String>,
    pub(crate) nack_errors: Vec<String>,
}

impl From<ReachedRow> for Reached {
    fn from(r: ReachedRow) -> Reached {
        let rejections = (r.nack_type_urls.into_iter().zip(r.nack_versions).zip(r.nack_errors))
            .map(|((type_url, version), error)| Rejection { type_url, version, error })
            .collect();
        Reached { proxies: r.proxies, applied: r.applied, rejected: r.rejected, rejections }
    }
}

/// Where a write stands with the proxies it configures, read while a client waits for it:
/// the counts, and the proxies that have not applied it (bounded), rejecting ones first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReachedNow {
    pub reached: Reached,
    pub waiting: Vec<Waiting>,
}

/// An online proxy that has not applied a revision yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub service: String,
    pub node_id: String,
    pub last_seen_at: DateTime<Utc>,
    /// Its outstanding rejection, if any, with when it came.
    pub rejection: Option<(Rejection, Option<DateTime<Utc>>)>,
    /// That rejection is of a response made at or after the revision: the proxy refused the
    /// write itself.
    pub rejected: bool,
}

/// A row of `trellis_tenant_propagation_wait`.
#[derive(sqlx::FromRow)]
struct WaitRow {
    #[sqlx(flatten)]
    reached: ReachedRow,
    w_services: Vec<String>,
    w_nodes: Vec<String>,
    w_last_seen: Vec<DateTime<Utc>>,
    w_type_urls: Vec<Option<String>>,
    w_versions: Vec<Option<String>>,
    w_errors: Vec<Option<String>>,
    w_nacked_at: Vec<Option<DateTime<Utc>>>,
    w_rejected: Vec<bool>,
}

impl From<WaitRow> for ReachedNow {
    fn from(r: WaitRow) -> ReachedNow {
        let rejections = r.w_type_urls.into_iter().zip(r.w_versions).zip(r.w_errors).zip(r.w_nacked_at).map(
            |(((type_url, version), error), at)| match (type_url, version, error) {
                (Some(type_url), Some(version), Some(error)) => {
                    Some((Rejection { type_url, version, error }, at))
                }
                _ => None,
            },
        );
        let waiting = r
            .w_services
            .into_iter()
            .zip(r.w_nodes)
            .zip(r.w_last_seen)
            .zip(rejections)
            .zip(r.w_rejected)
            .map(|((((service, node_id), last_seen_at), rejection), rejected)| Waiting {
                service,
                node_id,
                last_seen_at,
                rejection,
                rejected,
            })
            .collect();
        ReachedNow { reached: r.reached.into(), waiting }
    }
}

/// One line of the ledger: a dataplane's sync state for one type URL.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LedgerEntry {
    pub dataplane_id: Uuid,
    pub type_url: String,
    pub sent_version: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub acked_version: Option<String>,
    pub acked_at: Option<DateTime<Utc>>,
    pub nacked_version: Option<String>,
    pub nack_error: Option<String>,
    pub mesh_revision: Option<i64>,
    pub convergence_ms: Option<f64>,
}

macro_rules! dataplane_columns {
    () => {
        "id, mesh_id, service, node_id, client, address, ports, tags, zone, online, replica, \
         connected_at, last_seen_at, offline_since, synced_revision, calls, serves"
    };
}

impl TenantTx {
    /// Registers (or re-registers) the dataplane of a stream: online, with what it serves.
    /// `connected_at` is the clock's time, not the transaction's: two registrations of one
    /// node committed in the same batch stay distinguishable.
    pub async fn register_dataplane(
        &mut self,
        mesh: MeshId,
        r: &Registration,
    ) -> Result<Dataplane, StoreError> {
        let org = self.org().as_uuid();
        Ok(sqlx::query_as(concat!(
            "INSERT INTO dataplanes (org_id, mesh_id, service, node_id, client, address, ports, tags, zone, replica, \
               connected_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp()) \
             ON CONFLICT ON CONSTRAINT dataplanes_node_key DO UPDATE SET \
               service = EXCLUDED.service, client = EXCLUDED.client, address = EXCLUDED.address, \
               ports = EXCLUDED.ports, tags = EXCLUDED.tags, zone = EXCLUDED.zone, replica = EXCLUDED.replica, \
               online = true, offline_since = NULL, connected_at = clock_timestamp(), last_seen_at = now(), \
               synced_revision = NULL \
             RETURNING ",
            dataplane_columns!()
        ))
        .bind(org)
        .bind(mesh.as_uuid())
        .bind(&r.service)
        .bind(&r.node_id)
        .bind(&r.client)
        .bind(r.address.map(sqlx::types::ipnet::IpNet::from))
        .bind(&r.ports)
        .bind(&r.tags)
        .bind(&r.zone)
        .bind(&r.replica)
        .fetch_one(self.conn())
        .await?)
    }

    /// The stream is still there.
    pub async fn dataplane_seen(&mut self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE dataplanes SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// The dataplane holds everything up to mesh revision `revision` (all types ACKed).
    pub async fn dataplane_synced(&mut self, id: Uuid, revision: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dataplanes SET synced_revision = $2 WHERE id = $1 \
             AND (synced_revision IS NULL OR synced_revision < $2)",
        )
        .bind(id)
        .bind(revision)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// What the resources sent to the dataplane configure (see `Dataplane::calls`).
    pub async fn dataplane_reach(
        &mut self,
        id: Uuid,
        calls: &[String],
        serves: bool,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE dataplanes SET calls = $2, serves = $3 WHERE id = $1")
            .bind(id)
            .bind(calls)
            .bind(serves)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// The stream that registered at `connected_at` closed: offline now, out of the endpoints
    /// after the grace period. A newer stream of the same node (a reconnect that registered
    /// first) keeps the dataplane online.
    pub async fn dataplane_offline(
        &mut self,
        id: Uuid,
        connected_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dataplanes SET online = false, offline_since = now() \
             WHERE id = $1 AND online AND connected_at = $2",
        )
        .bind(id)
        .bind(connected_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The stream that registered at `connected_at` was ended by its proxy, which is leaving:
    /// the dataplane goes at once, out of the endpoints without a grace period. A newer
    /// stream of the same node keeps it.
    pub async fn dataplane_left(&mut self, id: Uuid, connected_at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dataplanes WHERE id = $1 AND connected_at = $2")
            .bind(id)
            .bind(connected_at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Dataplanes of a mesh, by service and node.
    pub async fn list_dataplanes(&mut self, mesh: MeshId) -> Result<Vec<Dataplane>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            dataplane_columns!(),
            " FROM dataplanes WHERE mesh_id = $1 ORDER BY service, node_id"
        ))
        .bind(mesh.as_uuid())
        .fetch_all(self.conn())
        .await?)
    }

    /// How far each resource's last write has reached the proxies it configures (resources
    /// of one kind in `mesh`, whose kind has `reach`), in one statement; None for a resource
    /// whose write made no mesh revision.
    pub async fn propagation(
        &mut self,
        mesh: MeshId,
        reach: Reach,
        resources: &[&Resource],
    ) -> Result<Vec<Option<Reached>>, StoreError> {
        let (revisions, targets): (Vec<i64>, Vec<Option<&str>>) =
            resources.iter().filter_map(|r| Some((r.mesh_revision?, r.target.as_deref()))).unzip();
        let mut rows: std::vec::IntoIter<ReachedRow> = if revisions.is_empty() {
            Vec::new().into_iter()
        } else {
            sqlx::query_as::<_, ReachedRow>(
                "SELECT p.* FROM unnest($2::bigint[], $3::text[]) WITH ORDINALITY AS x(revision, target, i) \
                 CROSS JOIN LATERAL trellis_propagation($1, x.revision, $4, $5, x.target) p ORDER BY x.i",
            )
            .bind(mesh.as_uuid())
            .bind(&revisions)
            .bind(&targets)
            .bind(reach.callers)
            .bind(reach.instances)
            .fetch_all(self.conn())
            .await?
            .into_iter()
        };
        Ok(resources.iter().map(|r| r.mesh_revision.and_then(|_| rows.next()).map(Reached::from)).collect())
    }

    /// Ledger lines of a mesh's dataplanes.
    pub async fn ledger(&mut self, mesh: MeshId) -> Result<Vec<LedgerEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT l.dataplane_id, l.type_url, l.sent_version, l.sent_at, l.acked_version, l.acked_at, \
                    l.nacked_version, l.nack_error, l.mesh_revision, l.convergence_ms \
             FROM xds_ledger l JOIN dataplanes d ON d.org_id = l.org_id AND d.id = l.dataplane_id \
             WHERE d.mesh_id = $1 ORDER BY l.dataplane_id, l.type_url",
        )
        .bind(mesh.as_uuid())
        .fetch_all(self.conn())
        .await?)
    }

    /// A response went out.
    pub async fn ledger_sent(
        &mut self,
        dataplane: Uuid,
        type_url: &str,
        version: &str,
        nonce: &str,
        mesh_revision: i64,
    ) -> Result<(), StoreError> {
        let org = self.org().as_uuid();
        sqlx::query(
            "INSERT INTO xds_ledger (org_id, dataplane_id, type_url, sent_version, sent_nonce, sent_at, mesh_revision) \
             VALUES ($1, $2, $3, $4, $5, now(), $6) \
             ON CONFLICT ON CONSTRAINT xds_ledger_pkey DO UPDATE SET sent_version = EXCLUDED.sent_version, \
               sent_nonce = EXCLUDED.sent_nonce, sent_at = now(), mesh_revision = EXCLUDED.mesh_revision",
        )
        .bind(org)
        .bind(dataplane)
        .bind(type_url)
        .bind(version)
        .bind(nonce)
        .bind(mesh_revision)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The client accepted `version`, `convergence_ms` after its mesh revision committed.
    pub async fn ledger_acked(
        &mut self,
        dataplane: Uuid,
        type_url: &str,
        version: &str,
        convergence_ms: Option<f64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE xds_ledger SET acked_version = $3, acked_at = now(), nacked_version = NULL, nack_error = NULL, \
               convergence_ms = coalesce($4, convergence_ms) \
             WHERE dataplane_id = $1 AND type_url = $2",
        )
        .bind(dataplane)
        .bind(type_url)
        .bind(version)
        .bind(convergence_ms)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The client rejected `version` with `error` (bounded to 4 KiB).
    pub async fn ledger_nacked(
        &mut self,
        dataplane: Uuid,
        type_url: &str,
        version: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().filter(|c| *c != '\0').take(4096).collect();
        sqlx::query(
            "UPDATE xds_ledger SET nacked_version = $3, nack_error = $4, nacked_at = now(), \
               last_nack_version = $3, last_nack_error = $4 \
             WHERE dataplane_id = $1 AND type_url = $2",
        )
        .bind(dataplane)
        .bind(type_url)
        .bind(version)
        .bind(error)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

impl TenantTx {
    /// Records the readable form of one version of a type's resources in a mesh (once).
    pub async fn record_xds_config(
        &mut self,
        mesh: MeshId,
        type_url: &str,
        version: &str,
        resources: &Value,
    ) -> Result<(), StoreError> {
        let org = self.org().as_uuid();
        sqlx::query(
            "INSERT INTO xds_configs (org_id, mesh_id, type_url, version, resources) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT ON CONSTRAINT xds_configs_pkey DO NOTHING",
        )
        .bind(org)
        .bind(mesh.as_uuid())
        .bind(type_url)
        .bind(version)
        .bind(resources)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// What a dataplane was last sent, per type URL: the ledger line and the content (if kept).
    pub async fn dataplane_config(
        &mut self,
        dataplane: Uuid,
    ) -> Result<Vec<(LedgerEntry, Option<Value>)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            line: LedgerEntry,
            resources: Option<Value>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT l.dataplane_id, l.type_url, l.sent_version, l.sent_at, l.acked_version, l.acked_at, \
                    l.nacked_version, l.nack_error, l.mesh_revision, l.convergence_ms, c.resources \
             FROM xds_ledger l JOIN dataplanes d ON d.org_id = l.org_id AND d.id = l.dataplane_id \
             LEFT JOIN xds_configs c ON c.org_id = l.org_id AND c.mesh_id = d.mesh_id \
               AND c.type_url = l.type_url AND c.version = l.sent_version \
             WHERE l.dataplane_id = $1 ORDER BY l.type_url",
        )
        .bind(dataplane)
        .fetch_all(self.conn())
        .await?;
        Ok(rows.into_iter().map(|r| (r.line, r.resources)).collect())
    }
}

impl Store {
    /// How far a resource's last write has reached the proxies it configures, read in its
    /// tenant as a statement of its own: for a write, after it committed, so that the write's
    /// transaction never reads the fleet. None when the write made no mesh revision.
    pub async fn propagation(
        &self,
        org: OrgId,
        reach: Reach,
        resource: &Resource,
    ) -> Result<Option<Reached>, StoreError> {
        let Some(revision) = resource.mesh_revision else { return Ok(None) };
        let row: ReachedRow =
            sqlx::query_as("SELECT * FROM trellis_tenant_propagation($1, $2, $3, $4, $5, $6)")
                .bind(org.as_uuid())
                .bind(resource.mesh_id.as_uuid())
                .bind(revision)
                .bind(reach.callers)
                .bind(reach.instances)
                .bind(resource.target.as_deref())
                .fetch_one(&self.pool)
                .await?;
        Ok(Some(row.into()))
    }

    /// [`Store::propagation`] of mesh revision `revision` for a resource of `reach` targeting
    /// `target` (None: every proxy of the mesh), with at most `limit` of the proxies that have
    /// not applied it: one statement of its own, polled by a write that waits.
    #[allow(clippy::too_many_arguments)]
    pub async fn propagation_now(
        &self,
        org: OrgId,
        mesh: MeshId,
        revision: i64,
        reach: Reach,
        target: Option<&str>,
        limit: i32,
    ) -> Result<ReachedNow, StoreError> {
        let row: WaitRow =
            sqlx::query_as("SELECT * FROM trellis_tenant_propagation_wait($1, $2, $3, $4, $5, $6, $7)")
                .bind(org.as_uuid())
                .bind(mesh.as_uuid())
                .bind(revision)
                .bind(reach.callers)
                .bind(reach.instances)
                .bind(target)
                .bind(limit)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.into())
    }

    /// Removes sent contents that no ledger line refers to, older than `keep` (a leader duty).
    pub async fn prune_xds_configs(&self, keep: std::time::Duration) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT trellis_prune_xds_configs(make_interval(secs => $1))")
            .bind(keep.as_secs_f64())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Removes every dataplane offline for longer than `grace`, in every tenant (a leader duty).
    pub async fn prune_dataplanes(&self, grace: std::time::Duration) -> Result<i64, StoreError> {
        let secs = grace.as_secs_f64();
        Ok(sqlx::query_scalar("SELECT trellis_prune_dataplanes(make_interval(secs => $1))")
            .bind(secs)
            .fetch_one(&self.pool)
            .await?)
    }
}
