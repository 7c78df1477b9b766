//! What became of a mesh's telemetry: the items its proxies sent that were not stored, by
//! reason, for the tenant to see (its status endpoint and its Prometheus exposition).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{Control, TelemetryStatus};

use crate::ApiError;
use crate::auth::OrgScope;
use crate::body::ApiQuery;
use crate::error::ReadErrors;
use crate::observe::label;
use crate::params::MeshPath;

// The bound `window` publishes (utoipa takes literals only).
const _: () = assert!(trellis_control::MAX_WINDOW_SECS == 7_776_000);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusQuery {
    /// Seconds back from now (default 3600); drops are counted per minute, from the minute holding the window's start
    #[param(nullable = false, minimum = 10, maximum = 7_776_000)]
    window: Option<i64>,
}

/// `GET …/meshes/{mesh}/telemetry/status`: the mesh's dropped telemetry by reason.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/telemetry/status", operation_id = "getTelemetryStatus",
    summary = "Telemetry this mesh's proxies sent that was not stored over the window, by reason: over the organization's ingest rate (rate_limited), a new edge series past its cardinality budget per 10 s bucket (series_budget), access-log entries past their budget (log_budget), oversized messages (too_large, too_many_series), a lagging or failing writer (queue_full, write_failed)",
    params(MeshPath, StatusQuery),
    responses((status = 200, description = "The drops", body = ref("#/components/schemas/TelemetryStatus")), ReadErrors))]
pub(crate) async fn status(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<StatusQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let TelemetryStatus { mesh, seconds, since, dropped } =
        ctl.telemetry_status(scope, &mesh, q.window).await?;
    let total: u64 = dropped.iter().map(|(_, n)| n).sum();
    Ok(Json(json!({
        "mesh": mesh.name,
        "windowSeconds": seconds,
        "since": since,
        "droppedTotal": total,
        "dropped": dropped.iter().map(|(reason, items)| json!({"reason": reason, "items": items})).collect::<Vec<_>>(),
    })))
}

/// The drops of a window in the Prometheus text format, one mesh's only, as the window's
/// totals (gauges, like the rest of the exposition).
pub(crate) fn dropped_text(mesh: &str, dropped: &[(String, u64)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP trellis_telemetry_dropped_total Telemetry items this mesh's proxies sent that were not stored, over the window, by reason."
    );
    let _ = writeln!(out, "# TYPE trellis_telemetry_dropped_total gauge");
    for (reason, items) in dropped {
        let _ = writeln!(
            out,
            "trellis_telemetry_dropped_total{{mesh=\"{}\",reason=\"{}\"}} {items}",
            label(mesh),
            label(reason)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_labelled_with_the_mesh_and_reason() {
        let text = dropped_text("shop", &[("rate_limited".into(), 12), ("series_budget".into(), 3)]);
        assert!(
            text.contains("trellis_telemetry_dropped_total{mesh=\"shop\",reason=\"rate_limited\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains("trellis_telemetry_dropped_total{mesh=\"shop\",reason=\"series_budget\"} 3\n"),
            "{text}"
        );
    }
}
