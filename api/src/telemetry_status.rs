//! What became of a mesh's telemetry: the items its proxies sent that were not stored, by
//! reason, for the tenant to see (its status endpoint and its Prometheus exposition).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use trellis_control::{Control, TelemetryStatus};
use trellis_model::telemetry::DropReason;

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

/// The telemetry a mesh's proxies sent that was not stored over a window.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TelemetryStatus)]
pub(crate) struct TelemetryStatusBody {
    mesh: String,
    window_seconds: i64,
    /// The start of the first minute counted
    since: DateTime<Utc>,
    dropped_total: u64,
    /// Items not stored, by reason; reasons with none are left out
    dropped: Vec<DroppedItems>,
}

/// The items dropped for one reason.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DroppedItems {
    #[schema(schema_with = drop_reason)]
    reason: String,
    items: u64,
}

fn drop_reason() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(DropReason::ALL.map(DropReason::as_str)))
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
) -> Result<Json<TelemetryStatusBody>, ApiError> {
    Ok(Json(render(ctl.telemetry_status(scope, &mesh, q.window).await?)))
}

fn render(TelemetryStatus { mesh, seconds, since, dropped }: TelemetryStatus) -> TelemetryStatusBody {
    TelemetryStatusBody {
        mesh: mesh.name.as_str().to_owned(),
        window_seconds: seconds,
        since,
        dropped_total: dropped.iter().map(|(_, n)| n).sum(),
        dropped: dropped.into_iter().map(|(reason, items)| DroppedItems { reason, items }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use trellis_model::{MeshId, MeshName, TrustDomain};
    use trellis_store::Mesh;
    use uuid::Uuid;

    use super::*;
    use crate::schema_check::assert_published;

    #[test]
    fn drops_are_totalled_and_match_the_published_schema() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 0).unwrap();
        let mesh = Mesh {
            id: MeshId::new(),
            name: MeshName::parse("shop").unwrap(),
            trust_domain: TrustDomain::parse("shop.acme.trellis").unwrap(),
            spec: json!({}),
            labels: json!({}),
            generation: 1,
            version: Uuid::new_v4(),
            revision: 7,
            created_at: at,
            updated_at: at,
        };
        let dropped = vec![
            (DropReason::RateLimited.as_str().to_owned(), 40),
            (DropReason::WriteFailed.as_str().to_owned(), 2),
        ];
        let body = serde_json::to_value(render(TelemetryStatus { mesh, seconds: 3600, since: at, dropped }))
            .unwrap();
        assert_eq!(
            body,
            json!({"mesh": "shop", "windowSeconds": 3600, "since": "2026-01-02T03:04:00Z", "droppedTotal": 42,
                "dropped": [{"reason": "rate_limited", "items": 40}, {"reason": "write_failed", "items": 2}]})
        );
        assert_published("TelemetryStatus", &body);
    }
}
