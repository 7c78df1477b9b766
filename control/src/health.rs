//! A service's health, at a glance: its proxies online and offline and where each stands
//! with its configuration (by the one sync-state rule, [`Dataplanes::state`]), how long
//! until the SVIDs they hold and the mesh's CA expire, and the last rejection one of them
//! sent.

use chrono::{DateTime, Utc};
use trellis_model::config::Kind;
use trellis_model::{Action, ResourceName};
use trellis_store::{CaState, HeldSvids, LastNack, Mesh};

use crate::{AppError, Control, Dataplanes, Scope, SyncState};

/// How many of a service's dataplanes are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub online: usize,
    pub offline: usize,
    pub in_sync: usize,
    pub syncing: usize,
    pub rejected: usize,
}

impl FleetCounts {
    fn count(&mut self, state: SyncState) {
        match state {
            SyncState::Offline => self.offline += 1,
            SyncState::InSync => self.in_sync += 1,
            SyncState::Syncing => self.syncing += 1,
            SyncState::Rejected => self.rejected += 1,
        }
        if state != SyncState::Offline {
            self.online += 1;
        }
    }
}

/// One service's health.
pub struct ServiceHealth {
    pub mesh: Mesh,
    pub service: ResourceName,
    pub dataplanes: FleetCounts,
    pub svids: HeldSvids,
    /// When the mesh's active CA expires.
    pub ca_not_after: Option<DateTime<Utc>>,
    pub last_nack: Option<LastNack>,
    /// When it was read: what the days to expiry count from.
    pub at: DateTime<Utc>,
}

impl ServiceHealth {
    /// Whole days from the reading to `t` (negative once past).
    pub fn days_to(&self, t: DateTime<Utc>) -> i64 {
        (t - self.at).num_days()
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
        let ca_not_after = scope
            .tx
            .mesh_cas(m.id)
            .await?
            .into_iter()
            .find(|c| c.state == CaState::Active)
            .and_then(|c| c.not_after);
        scope.commit().await?;
        let fleet = Dataplanes { mesh: m, dataplanes, ledger };
        let mut counts = FleetCounts::default();
        for d in &fleet.dataplanes {
            counts.count(fleet.state(d));
        }
        Ok(ServiceHealth {
            mesh: fleet.mesh,
            service: n,
            dataplanes: counts,
            svids,
            ca_not_after,
            last_nack,
            at: Utc::now(),
        })
    }
}
