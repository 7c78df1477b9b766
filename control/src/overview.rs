//! A mesh at a glance, read in one transaction: what the console's mesh page shows.

use trellis_model::Action;
use trellis_pki::CaStatus;
use trellis_store::{Resource, Selector};

use crate::{AppError, Control, Dataplanes, Scope};

/// Most resources an overview lists (the rest are a page of the API away).
pub const OVERVIEW_LIMIT: i64 = 1000;

pub struct MeshOverview {
    /// The mesh, its dataplanes and their ledger.
    pub fleet: Dataplanes,
    /// Every resource (up to [`OVERVIEW_LIMIT`]), by kind and name.
    pub resources: Vec<Resource>,
    pub ca: CaStatus,
}

impl Control {
    /// The mesh's resources, dataplanes and certificate authority.
    pub async fn mesh_overview(&self, scope: Scope, mesh: &str) -> Result<MeshOverview, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let mut resources =
            scope.tx.list_resources(m.id, None, &Selector::default(), None, OVERVIEW_LIMIT).await?;
        resources.sort_by(|a, b| (&a.kind, a.name.as_str()).cmp(&(&b.kind, b.name.as_str())));
        let dataplanes = scope.tx.list_dataplanes(m.id).await?;
        let ledger = scope.tx.ledger(m.id).await?;
        let ca = self.authority.status(&mut scope.tx, &m).await?;
        scope.commit().await?;
        Ok(MeshOverview { fleet: Dataplanes { mesh: m, dataplanes, ledger }, resources, ca })
    }
}
