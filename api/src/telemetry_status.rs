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
