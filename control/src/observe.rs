//! Observe: a mesh's edge totals over a window ending now, read from the stored buckets
//! (never from a live scan of proxies), for golden metrics and the topology.

use chrono::{TimeDelta, Utc};
use trellis_model::Action;
use trellis_model::telemetry::{EdgeTotal, Resolution};
use trellis_store::Mesh;

use crate::{AppError, Control, Scope};

/// Longest window a read may cover: the 1 h rollups' default retention.
pub const MAX_WINDOW_SECS: i64 = 90 * 86_400;
/// The window of a read that names none.
pub const DEFAULT_WINDOW_SECS: i64 = 300;

/// Every edge's totals over a window, at the resolution that window is read in.
pub struct EdgeWindow {
    pub mesh: Mesh,
    pub seconds: i64,
    pub resolution: Resolution,
    pub totals: Vec<EdgeTotal>,
}

impl Control {
    /// The edge totals of `mesh` over the last `window` seconds (default five minutes).
    pub async fn edge_totals(
        &self,
        scope: Scope,
        mesh: &str,
        window: Option<i64>,
    ) -> Result<EdgeWindow, AppError> {
        // Authorized before the parameters are judged: a stranger learns nothing from them.
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, DEFAULT_WINDOW_SECS)?;
        let m = scope.mesh(mesh).await?;
        let resolution = Resolution::for_window(seconds);
        let to = Utc::now();
        let totals = scope.tx.edge_totals(m.id, resolution, to - TimeDelta::seconds(seconds), to).await?;
        scope.commit().await?;
        Ok(EdgeWindow { mesh: m, seconds, resolution, totals })
    }
}

/// A read's window in seconds: `window`, or `default` when it names none; 10 s to
/// [`MAX_WINDOW_SECS`].
pub(crate) fn window_seconds(window: Option<i64>, default: i64) -> Result<i64, AppError> {
    let seconds = window.unwrap_or(default);
    if !(10..=MAX_WINDOW_SECS).contains(&seconds) {
        return Err(AppError::bad_request(format!(
            "window must be 10 to {MAX_WINDOW_SECS} seconds, got {seconds}"
        ))
        .with_field("window", &format!("must be 10 to {MAX_WINDOW_SECS}")));
    }
    Ok(seconds)
}
