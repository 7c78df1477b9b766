//! A mesh's registered dataplanes and their sync state (the propagation ledger), and what
//! one dataplane was last sent; plus what a workload's bootstrap needs to know.

use serde_json::Value;
use trellis_model::config::{Kind, ServiceSpec, Spec};
use trellis_model::{Action, ResourceName};
use trellis_store::{Dataplane, LedgerEntry, Mesh};
use uuid::Uuid;

use crate::{AppError, Control, Problem, Scope};

/// A mesh's dataplanes with every ledger line of theirs.
pub struct Dataplanes {
    pub mesh: Mesh,
    pub dataplanes: Vec<Dataplane>,
    pub ledger: Vec<LedgerEntry>,
}

/// What one dataplane was last sent, per type URL, with the readable form of each resource.
pub struct DataplaneConfig {
    pub dataplane: Dataplane,
    pub types: Vec<(LedgerEntry, Option<Value>)>,
}

/// Where a dataplane stands with its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Not connected.
    Offline,
    /// It rejected (NACKed) the last version of some type.
    Rejected,
    /// It acknowledged every version it was sent.
    InSync,
    /// A version is on its way or unanswered.
    Syncing,
}

/// How many dataplanes are in each state.
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

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Offline => "offline",
            SyncState::Rejected => "rejected",
            SyncState::InSync => "in-sync",
            SyncState::Syncing => "syncing",
        }
    }
}

impl Dataplanes {
    /// The ledger lines of one dataplane.
    pub fn lines_of(&self, dataplane: &Dataplane) -> impl Iterator<Item = &LedgerEntry> {
        let id = dataplane.id;
        self.ledger.iter().filter(move |l| l.dataplane_id == id)
    }

    /// Where `dataplane` stands, from its connection and its ledger lines.
    pub fn state(&self, dataplane: &Dataplane) -> SyncState {
        let lines: Vec<&LedgerEntry> = self.lines_of(dataplane).collect();
        if !dataplane.online {
            SyncState::Offline
        } else if lines.iter().any(|l| l.nacked_version.is_some()) {
            SyncState::Rejected
        } else if !lines.is_empty() && lines.iter().all(|l| in_sync(l)) {
            SyncState::InSync
        } else {
            SyncState::Syncing
        }
    }

    /// How many dataplanes are in each state, by [`Dataplanes::state`].
    pub fn counts(&self) -> FleetCounts {
        let mut counts = FleetCounts::default();
        for d in &self.dataplanes {
            counts.count(self.state(d));
        }
        counts
    }

    /// The outstanding rejection of an online dataplane whose version was sent last: the
    /// one a person looks at first.
    pub fn last_rejection(&self) -> Option<(&Dataplane, &LedgerEntry)> {
        self.dataplanes
            .iter()
            .filter(|d| d.online)
            .flat_map(|d| self.lines_of(d).filter(|l| l.nacked_version.is_some()).map(move |l| (d, l)))
            .max_by_key(|(_, l)| l.sent_at)
    }
}

/// Whether the proxy acknowledged the last version it was sent of this type.
pub fn in_sync(line: &LedgerEntry) -> bool {
    line.sent_version.is_some() && line.sent_version == line.acked_version
}

impl Control {
    /// The mesh's dataplanes and their ledger.
    pub async fn list_dataplanes(&self, scope: Scope, mesh: &str) -> Result<Dataplanes, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let dataplanes = scope.tx.list_dataplanes(m.id).await?;
        let ledger = scope.tx.ledger(m.id).await?;
        scope.commit().await?;
        Ok(Dataplanes { mesh: m, dataplanes, ledger })
    }

    /// What the dataplane `id` of the mesh was last sent and accepted.
    pub async fn dataplane_config(
        &self,
        scope: Scope,
        mesh: &str,
        id: &str,
    ) -> Result<DataplaneConfig, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let not_found = || AppError::not_found(format!("dataplane {id:?} not found in mesh {mesh:?}"));
        let m = match scope.mesh(mesh).await {
            Err(e) if e.problem == Problem::NotFound => return Err(not_found()),
            m => m?,
        };
        let id: Uuid = id.parse().map_err(|_| not_found())?;
        let dataplane =
            scope.tx.list_dataplanes(m.id).await?.into_iter().find(|d| d.id == id).ok_or_else(not_found)?;
        let types = scope.tx.dataplane_config(id).await?;
        scope.commit().await?;
        Ok(DataplaneConfig { dataplane, types })
    }

    /// The Service a workload's bootstrap is for (a 422 on `service` when the mesh has none
    /// of that name), with its mesh.
    pub async fn bootstrap_service(
        &self,
        scope: Scope,
        mesh: &str,
        service: &str,
    ) -> Result<(Mesh, ServiceSpec), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let unknown = || {
            AppError::invalid_field(
                "service",
                format!("no Service {service:?} in mesh {:?}", m.name.as_str()),
            )
        };
        let name = ResourceName::parse(service).map_err(|_| unknown())?;
        let Some(stored) = scope.tx.get_resource(m.id, Kind::Service.name(), &name).await? else {
            return Err(unknown());
        };
        scope.commit().await?;
        let Ok(parsed) = Spec::parse(Kind::Service, "spec", stored.spec) else {
            return Err(AppError::internal(&"a stored Service does not parse"));
        };
        let Spec::Service(spec) = parsed.spec else {
            return Err(AppError::internal(&"a Service is not a Service"));
        };
        Ok((m, spec))
    }
}
