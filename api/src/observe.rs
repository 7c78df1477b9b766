//! Observe: golden metrics per service and per edge, and the topology of a mesh, over a
//! window ending now, read from the stored edge buckets (never from a live scan of proxies).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_control::{Control, EdgeWindow};
use trellis_model::ResourceName;
use trellis_model::telemetry::{EdgeTotal, GoldenMetrics, Topology, service_metrics};

use crate::ApiError;
use crate::auth::OrgScope;
use crate::body::ApiQuery;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WindowQuery {
    /// Seconds back from now.
    window: Option<i64>,
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
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let EdgeWindow { seconds: secs, resolution, totals, .. } =
        ctl.edge_totals(scope, &mesh, q.window).await?;
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
        .map(|e| {
            let subsets: Vec<Value> = e
                .subsets
                .iter()
                .map(|s| json!({ "tags": s.subset, "requests": s.requests, "share": s.share }))
                .collect();
            json!({ "source": e.source, "destination": e.destination, "metrics": metrics_json(&e.metrics), "subsets": subsets })
        })
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
    State(ctl): State<Control>,
    Path((_, mesh, service)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let EdgeWindow { seconds: secs, resolution, totals, .. } =
        ctl.edge_totals(scope, &mesh, q.window).await?;
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
