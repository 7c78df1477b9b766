//! Observe: golden metrics per service and per edge, and the topology of a mesh, over a
//! window ending now, read from the stored edge buckets (never from a live scan of proxies).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use chrono::{TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_model::telemetry::{EdgeTotal, GoldenMetrics, Resolution, Topology, service_metrics};
use trellis_model::{Action, MeshName, ResourceName};

use crate::auth::authorize;
use crate::body::ApiQuery;
use crate::{ApiError, AppState};

/// Longest window a read may cover: the 1 h rollups' default retention.
pub(crate) const MAX_WINDOW_SECS: i64 = 90 * 86_400;
const DEFAULT_WINDOW_SECS: i64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WindowQuery {
    /// Seconds back from now.
    window: Option<i64>,
}

/// The window's length and the edge totals of `mesh` over it.
async fn totals(
    s: &AppState,
    headers: &HeaderMap,
    org: &str,
    mesh: &str,
    window: Option<i64>,
) -> Result<(i64, Resolution, Vec<EdgeTotal>), ApiError> {
    let caller = authorize(s, headers, org, Action::Read).await?;
    let secs = window.unwrap_or(DEFAULT_WINDOW_SECS);
    if !(10..=MAX_WINDOW_SECS).contains(&secs) {
        return Err(ApiError::bad_request(format!(
            "window must be 10 to {MAX_WINDOW_SECS} seconds, got {secs}"
        )));
    }
    let mut tx = s.store.tenant(caller.org.id).await?;
    let not_found = || ApiError::not_found(format!("mesh {mesh:?} not found"));
    let name = MeshName::parse(mesh).map_err(|_| not_found())?;
    let m = tx.mesh_by_name(&name).await?.ok_or_else(not_found)?;
    let resolution = Resolution::for_window(secs);
    let to = Utc::now();
    let totals = tx.edge_totals(m.id, resolution, to - TimeDelta::seconds(secs), to).await?;
    tx.commit().await?;
    Ok((secs, resolution, totals))
}

fn metrics_json(m: &GoldenMetrics) -> Value {
    json!({
        "requests": m.requests,
        "rps": m.rps,
        "successRate": m.success_rate,
        "p50Ms": m.p50_ms,
        "p95Ms": m.p95_ms,
        "p99Ms": m.p99_ms,
        "tcpConnections": m.tcp_connections,
        "bytes": m.bytes,
    })
}

/// `GET …/meshes/{mesh}/topology`: every service that carried traffic in the window, with
/// its golden metrics, and every edge between two of them.
pub(crate) async fn topology(
    State(s): State<AppState>,
    Path((org, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (secs, resolution, totals) = totals(&s, &headers, &org, &mesh, q.window).await?;
    let window = secs as f64;
    let t = Topology::of(&totals, window);
    let nodes: Vec<Value> = t
        .nodes
        .iter()
        .map(|n| json!({ "service": n, "metrics": metrics_json(&service_metrics(&totals, n, window)) }))
        .collect();
    let edges: Vec<Value> = t
        .edges
        .iter()
        .map(|e| json!({ "source": e.source, "destination": e.destination, "metrics": metrics_json(&e.metrics) }))
        .collect();
    Ok(Json(json!({
        "mesh": mesh,
        "windowSeconds": secs,
        "resolutionSeconds": resolution.seconds(),
        "nodes": nodes,
        "edges": edges,
    })))
}

/// `GET …/meshes/{mesh}/services/{service}/metrics`: the service's golden metrics (the calls
/// it received) and each edge into and out of it.
pub(crate) async fn service(
    State(s): State<AppState>,
    Path((org, mesh, service)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (secs, resolution, totals) = totals(&s, &headers, &org, &mesh, q.window).await?;
    let service =
        ResourceName::parse(&service).map_err(|e| ApiError::bad_request(format!("service name: {e}")))?;
    let window = secs as f64;
    let edge = |e: &EdgeTotal| {
        json!({
            "source": e.source,
            "destination": e.destination,
            "metrics": metrics_json(&GoldenMetrics::of(&e.counts, window)),
        })
    };
    let name = service.as_str();
    Ok(Json(json!({
        "mesh": mesh,
        "service": name,
        "windowSeconds": secs,
        "resolutionSeconds": resolution.seconds(),
        "inbound": metrics_json(&service_metrics(&totals, name, window)),
        "callers": totals.iter().filter(|e| e.destination == name).map(edge).collect::<Vec<_>>(),
        "callees": totals.iter().filter(|e| e.source == name).map(edge).collect::<Vec<_>>(),
    })))
}
