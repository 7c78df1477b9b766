//! What became of a mesh's telemetry: the items its proxies sent that were not stored, by
//! reason (the ingest rate, the cardinality and access-log budgets, oversized messages, a
//! lagging writer), over a window ending now, as the ingestion counted them per minute.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use trellis_model::{Action, MeshId};
use trellis_store::{Mesh, TenantTx};

use crate::observe::window_seconds;
use crate::{AppError, Control, EdgeWindow, Scope};

/// The window of a status read that names none.
pub const DEFAULT_STATUS_SECS: i64 = 3_600;

/// A mesh's dropped telemetry over a window.
pub struct TelemetryStatus {
    pub mesh: Mesh,
    pub seconds: i64,
    /// The start of the first minute counted (the minute holding the window's start).
    pub since: DateTime<Utc>,
    /// Items dropped by reason, reasons with none left out.
    pub dropped: Vec<(String, u64)>,
}

/// The drops of the minutes that overlap the last `seconds`.
async fn drops_since(
    tx: &mut TenantTx,
    mesh: MeshId,
    seconds: i64,
) -> Result<(DateTime<Utc>, Vec<(String, u64)>), AppError> {
    let now = Utc::now();
    let from = now - TimeDelta::seconds(seconds);
    let since = from.duration_trunc(TimeDelta::minutes(1)).unwrap_or(from);
    let dropped = tx.drops(mesh, since, now + TimeDelta::minutes(1)).await?;
    Ok((since, dropped))
}

impl Control {
    /// What `mesh`'s proxies sent over the last `window` seconds (default an hour) that was
    /// not stored, by reason.
    pub async fn telemetry_status(
        &self,
        scope: Scope,
        mesh: &str,
        window: Option<i64>,
    ) -> Result<TelemetryStatus, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, DEFAULT_STATUS_SECS)?;
        let m = scope.mesh(mesh).await?;
        let (since, dropped) = drops_since(&mut scope.tx, m.id, seconds).await?;
        scope.commit().await?;
        Ok(TelemetryStatus { mesh: m, seconds, since, dropped })
    }

    /// The edge totals of `mesh` over the last `window` seconds and its drops over the same
    /// minutes, in one transaction: what its Prometheus exposition shows.
    pub async fn exposition(
        &self,
        scope: Scope,
        mesh: &str,
        window: Option<i64>,
    ) -> Result<(EdgeWindow, Vec<(String, u64)>), AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, crate::DEFAULT_WINDOW_SECS)?;
        let m = scope.mesh(mesh).await?;
        let to = Utc::now();
        let (totals, resolution) = scope.tx.window_totals(m.id, to - TimeDelta::seconds(seconds), to).await?;
        let (_, dropped) = drops_since(&mut scope.tx, m.id, seconds).await?;
        scope.commit().await?;
        Ok((EdgeWindow { mesh: m, seconds, resolution, totals }, dropped))
    }
}
