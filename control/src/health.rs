//! A service's health, at a glance: its proxies online and offline and where each stands
//! with its configuration (by the one sync-state rule, [`Dataplanes::state`]), how long
//! until the SVIDs they hold and the mesh's CA expire, the last rejection one of them
//! sent, and how many of its endpoints its callers see ejected by outlier detection or
//! failing health checks (each online caller proxy's latest report, no older than
//! [`ENDPOINT_REPORT_MAX_AGE`]).

use chrono::{DateTime, Utc};
use trellis_model::config::Kind;
use trellis_model::telemetry::{ENDPOINT_REPORT_MAX_AGE, Membership};
use trellis_model::{Action, ResourceName, Tags};
use trellis_store::{CaState, HeldSvids, LastNack, Mesh, SeenEndpoints};

use crate::{AppError, Control, Dataplanes, FleetCounts, Scope};

/// One service's health.
pub struct ServiceHealth {
    pub mesh: Mesh,
    pub service: ResourceName,
    pub dataplanes: FleetCounts,
    pub svids: HeldSvids,
    /// When the mesh's active CA expires.
    pub ca_not_after: Option<DateTime<Utc>>,
    pub last_nack: Option<LastNack>,
    /// What its callers see of its endpoints.
    pub endpoints: CallersView,
    /// When it was read: what the days to expiry count from.
    pub at: DateTime<Utc>,
}

impl ServiceHealth {
    /// Whole days from the reading to `t` (negative once past).
    pub fn days_to(&self, t: DateTime<Utc>) -> i64 {
        (t - self.at).num_days()
    }
}

/// What one caller proxy sees of one cluster (port and subset) of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerReport {
    pub caller: String,
    pub dataplane: uuid::Uuid,
    pub node: String,
    pub port: u32,
    pub subset: Tags,
    pub membership: Membership,
    pub reported_at: DateTime<Utc>,
}

impl From<SeenEndpoints> for CallerReport {
    fn from(s: SeenEndpoints) -> Self {
        CallerReport {
            membership: s.membership(),
            caller: s.source_service,
            dataplane: s.dataplane_id,
            node: s.node_id,
            port: u32::try_from(s.destination_port).unwrap_or(0),
            // Written from a parsed cluster name; unreadable would mean the whole service.
            subset: Tags::parse_joined(&s.destination_subset).unwrap_or_default(),
            reported_at: s.reported_at,
        }
    }
}

/// A service's endpoints as its callers see them: the latest report of each online caller
/// proxy per cluster, received since `since`, the impaired first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallersView {
    pub since: DateTime<Utc>,
    pub reports: Vec<CallerReport>,
}

impl CallersView {
    /// The most endpoints one caller sees ejected in one cluster (callers each see their own,
    /// so their counts are not added).
    pub fn ejected(&self) -> u64 {
        self.reports.iter().map(|r| r.membership.ejected).max().unwrap_or(0)
    }

    /// The most endpoints one caller sees unhealthy (failing health checks or ejected).
    pub fn unhealthy(&self) -> u64 {
        self.reports.iter().map(|r| r.membership.unhealthy()).max().unwrap_or(0)
    }

    /// The caller proxies that see any endpoint ejected or unhealthy.
    pub fn impaired_callers(&self) -> usize {
        let mut seen: Vec<uuid::Uuid> =
            self.reports.iter().filter(|r| r.membership.is_impaired()).map(|r| r.dataplane).collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

impl Control {
    /// The health of `service` in `mesh` (a 404 when the mesh has no such Service).
    pub async fn service_health(
        &self,
        scope: Scope,
        mesh: &str,
        service: &str,
    ) -> Result<ServiceHealth, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let not_found = || AppError::not_found(format!("service {service:?} not found in mesh {mesh:?}"));
        let n = ResourceName::parse(service).map_err(|_| not_found())?;
        scope.tx.get_resource(m.id, Kind::Service.name(), &n).await?.ok_or_else(not_found)?;
        let dataplanes: Vec<_> =
            scope.tx.list_dataplanes(m.id).await?.into_iter().filter(|d| d.service == n.as_str()).collect();
        let ledger = scope.tx.ledger(m.id).await?;
        let svids = scope.tx.held_svids(m.id, n.as_str()).await?;
        let last_nack = scope.tx.last_nack(m.id, n.as_str()).await?;
        let since = Utc::now() - ENDPOINT_REPORT_MAX_AGE;
        let seen = scope.tx.seen_endpoints(m.id, n.as_str(), since).await?;
        let ca_not_after = scope
            .tx
            .mesh_cas(m.id)
            .await?
            .into_iter()
            .find(|c| c.state == CaState::Active)
            .and_then(|c| c.not_after);
        scope.commit().await?;
        let fleet = Dataplanes { mesh: m, dataplanes, ledger };
        let counts = fleet.counts();
        Ok(ServiceHealth {
            mesh: fleet.mesh,
            service: n,
            dataplanes: counts,
            svids,
            ca_not_after,
            last_nack,
            endpoints: CallersView { since, reports: seen.into_iter().map(CallerReport::from).collect() },
            at: Utc::now(),
        })
    }
}
