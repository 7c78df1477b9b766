//! Observe: golden metrics per service and per edge, and the topology of a mesh, over a
//! window ending now, read from the stored edge buckets (never from a live scan of proxies);
//! the access log, and why one logged call was denied (or let through).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_control::{
    AccessLogSearch, Control, EdgeWindow, TopologySearch, TopologyWindow, Why, attribution_of,
};
use trellis_model::ResourceName;
use trellis_model::attribution::Attribution;
use trellis_model::telemetry::{EdgeTotal, GoldenMetrics, service_metrics};
use trellis_model::topology::{API_MAX_NODES, NodeKind};
use trellis_store::StoredAccessLog;

use crate::ApiError;
use crate::auth::OrgScope;
use crate::body::ApiQuery;
use crate::error::{BoundedReadErrors, ReadErrors};
use crate::params::{AccessLogEntryPath, MeshPath, ServicePath};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WindowQuery {
    /// Seconds back from now (default 300); read from the final hour and minute rollups inside the window and from 10 s buckets at its ends, exact to 10 s
    #[param(nullable = false, minimum = 10, maximum = 7_776_000)]
    window: Option<i64>,
}

// The bounds `window` and the access log's `limit` publish (utoipa takes literals only).
const _: () = assert!(trellis_control::MAX_WINDOW_SECS == 7_776_000);
const _: () = assert!(trellis_control::MAX_ACCESS_LOG_PAGE == 500);

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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopologyQuery {
    /// Seconds back from now (default 300); read from the final hour and minute rollups inside the window and from 10 s buckets at its ends, exact to 10 s
    #[param(nullable = false, minimum = 10, maximum = 7_776_000)]
    window: Option<i64>,
    /// Only this service, its callers and its callees (the service stays one node)
    #[param(nullable = false)]
    service: Option<String>,
    /// Only the services of this group (a name's part before its first `-`) one by one, with the nodes they call or are called by
    #[param(nullable = false)]
    group: Option<String>,
    /// `prefix` (the default, also when empty): over 150 services, services are grouped by name prefix, and past 150 groups the least busy share the node `(other)`; `none`: every service its own node, refused over 5,000 edges
    #[param(nullable = false, value_type = Option<String>, pattern = "^(prefix|none)?$")]
    grouping: Option<String>,
}

// The bounds the topology's parameters publish.
const _: () = assert!(trellis_model::topology::API_MAX_NODES == 150);
const _: () = assert!(trellis_model::topology::MAX_UNGROUPED_EDGES == 5_000);

/// `GET …/meshes/{mesh}/topology`: who called whom in the window, services (or groups of
/// them, over 150) as nodes with their golden metrics, and the edges between them.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/topology", operation_id = "getTopology",
    summary = "Who called whom in the window: services (grouped by name prefix over 150) with their golden metrics, and edges with theirs",
    params(MeshPath, TopologyQuery),
    responses((status = 200, description = "The topology", body = ref("#/components/schemas/Topology")), BoundedReadErrors))]
pub(crate) async fn topology(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TopologyQuery>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let search = TopologySearch { service: q.service, group: q.group, grouping: q.grouping };
    let TopologyWindow { seconds, resolution, view, .. } =
        ctl.topology(scope, &mesh, q.window, &search, API_MAX_NODES).await?;
    let nodes: Vec<Value> = view
        .nodes
        .iter()
        .map(|n| {
            let (kind, service, group) = match &n.kind {
                NodeKind::Service => ("service", Some(n.name.as_str()), None),
                NodeKind::Group(g) => ("group", None, Some(g.as_str())),
                NodeKind::Other => ("other", None, None),
            };
            json!({
                "name": n.name,
                "kind": kind,
                "service": service,
                "group": group,
                "members": n.members,
                "metrics": metrics_json(&n.metrics),
            })
        })
        .collect();
    let edges: Vec<Value> = view
        .edges
        .iter()
        .map(|e| {
            let subsets: Vec<Value> = e
                .subsets
                .iter()
                .map(|s| json!({ "tags": s.subset, "requests": s.requests, "share": s.share }))
                .collect();
            json!({
                "source": view.nodes[e.source].name,
                "destination": view.nodes[e.destination].name,
                "metrics": metrics_json(&e.metrics),
                "subsets": subsets,
                "merged": e.merged,
            })
        })
        .collect();
    Ok(Json(json!({
        "mesh": mesh,
        "windowSeconds": seconds,
        "resolutionSeconds": resolution.seconds(),
        "services": view.services,
        "grouped": view.grouped,
        "nodes": nodes,
        "edges": edges,
    })))
}

/// `GET …/meshes/{mesh}/services/{service}/metrics`: the service's golden metrics (the calls
/// it received) and each edge into and out of it.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/services/{service}/metrics", operation_id = "getServiceMetrics",
    summary = "A service's golden metrics over the window (the calls it received), and each edge into and out of it",
    params(ServicePath, WindowQuery),
    responses((status = 200, description = "Golden metrics", body = ref("#/components/schemas/ServiceMetrics")), ReadErrors))]
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

/// `…/access-log` query parameters: text, parsed by the core (so its errors name them).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogParams {
    /// Calls to or from this service
    #[param(nullable = false)]
    service: Option<String>,
    /// HTTP status
    #[param(nullable = false, value_type = Option<i64>, minimum = 100, maximum = 599)]
    status: Option<String>,
    /// Denials only
    #[param(nullable = false, value_type = Option<bool>)]
    denied: Option<String>,
    /// Received at or after (RFC 3339; default an hour before until)
    #[param(nullable = false, value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Received before (RFC 3339; default now)
    #[param(nullable = false, value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// The nextCursor of the previous page
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Entries per page (default 100)
    #[param(nullable = false, value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

fn decision_json(a: &Attribution) -> Value {
    let (policy, rule) = a.rule().unzip();
    json!({ "kind": a.kind(), "policy": policy, "rule": rule, "summary": a.to_string() })
}

fn entry_json(e: &StoredAccessLog) -> Value {
    let r = &e.record;
    json!({
        "id": e.id,
        "receivedAt": e.received_at,
        "loggedAt": r.logged_at,
        "reporter": r.reporter,
        "direction": r.direction,
        "protocol": r.protocol,
        "outcome": r.outcome,
        "source": { "service": r.source_service, "identity": r.source_identity, "address": r.source_address },
        "destination": { "service": r.destination_service, "identity": r.destination_identity },
        "method": r.method,
        "authority": r.authority,
        "path": r.path,
        "status": r.status,
        "responseFlags": r.response_flags,
        "responseDetails": r.response_details,
        "rbacPolicy": r.rbac_policy,
        "auditPolicy": r.audit_policy,
        "durationMs": r.duration_ms,
        "meshRevision": e.mesh_revision,
        "decision": decision_json(&attribution_of(r)),
    })
}

/// `GET …/meshes/{mesh}/access-log`: the denied, failed and sampled calls proxies logged,
/// newest first, one page at a time.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/access-log", operation_id = "getAccessLog",
    summary = "Denied, failed and sampled calls the proxies logged, newest first",
    params(MeshPath, AccessLogParams),
    responses((status = 200, description = "A page of entries", body = ref("#/components/schemas/AccessLogPage")), ReadErrors))]
pub(crate) async fn access_log(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<AccessLogParams>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let search = AccessLogSearch {
        service: q.service,
        status: q.status,
        denied: q.denied,
        since: q.since,
        until: q.until,
        cursor: q.cursor,
        limit: q.limit,
    };
    let page = ctl.access_log(scope, &mesh, &search).await?;
    Ok(Json(json!({
        "mesh": page.mesh.name,
        "items": page.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "nextCursor": page.next_cursor,
    })))
}

/// `GET …/meshes/{mesh}/access-log/{id}/why`: what decided the call an entry records — the
/// AccessPolicy rule (and that rule now), default deny, or no mTLS identity.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/access-log/{id}/why", operation_id = "getAccessLogWhy",
    summary = "Why a logged call was denied or let through: the AccessPolicy rule, default deny, or no mTLS identity",
    params(AccessLogEntryPath),
    responses((status = 200, description = "The decision", body = ref("#/components/schemas/AccessLogWhy")), ReadErrors))]
pub(crate) async fn why(
    State(ctl): State<Control>,
    Path((_, mesh, id)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<Value>, ApiError> {
    let Why { entry, attribution, rule } = ctl.why(scope, &mesh, &id).await?;
    let rule = rule.map(|r| {
        json!({
            "policy": r.policy,
            "rule": r.rule,
            "exists": r.resource.is_some(),
            "ruleNow": r.rule_spec,
            "policyRevision": r.resource.as_ref().and_then(|p| p.mesh_revision),
            "changedSinceEntry": r.changed_since,
        })
    });
    Ok(Json(json!({
        "entry": entry_json(&entry),
        "decision": decision_json(&attribution),
        "meshRevisionAtEntry": entry.mesh_revision,
        "rule": rule,
    })))
}

/// `GET …/meshes/{mesh}/services/{service}/health`: the service's proxies online and
/// offline and where they stand with their configuration, days to the expiry of the SVIDs
/// they hold and of the mesh's CA, the last rejection one of them sent, and its endpoints
/// that its callers see ejected or failing health checks.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/services/{service}/health", operation_id = "getServiceHealth",
    summary = "A service's health: its proxies online and offline and where they stand with their configuration, days to the expiry of the SVIDs they hold and of the mesh's CA, and the last rejection (NACK) one of them sent, and how many of its endpoints its callers currently see ejected by outlier detection or failing health checks, and which callers (reports of online proxies only, no older than `maxReportAgeSeconds`)",
    params(ServicePath),
    responses((status = 200, description = "The service's health", body = ServiceHealth), ReadErrors))]
pub(crate) async fn health(
    State(ctl): State<Control>,
    Path((_, mesh, service)): Path<(String, String, String)>,
    OrgScope(scope): OrgScope,
) -> Result<Json<ServiceHealth>, ApiError> {
    let h = ctl.service_health(scope, &mesh, &service).await?;
    let d = &h.dataplanes;
    Ok(Json(ServiceHealth {
        mesh: h.mesh.name.to_string(),
        service: h.service.to_string(),
        at: h.at,
        dataplanes: HealthDataplanes {
            total: d.online + d.offline,
            online: d.online,
            offline: d.offline,
            in_sync: d.in_sync,
            syncing: d.syncing,
            rejected: d.rejected,
        },
        svid: HeldSvids {
            earliest_expiry: h.svids.earliest_not_after,
            days_to_expiry: h.svids.earliest_not_after.map(|t| h.days_to(t)),
            proxies: h.svids.known,
        },
        ca: ActiveCaExpiry {
            not_after: h.ca_not_after,
            days_to_expiry: h.ca_not_after.map(|t| h.days_to(t)),
        },
        last_nack: h.last_nack.as_ref().map(|n| LastNack {
            dataplane: n.dataplane_id,
            node: n.node_id.clone(),
            type_name: n.type_url.rsplit('.').next().unwrap_or(&n.type_url).to_owned(),
            version: n.version.clone(),
            error: n.error.clone(),
            at: n.at,
            outstanding: n.outstanding,
        }),
        endpoints: EndpointsSeen {
            ejected: h.endpoints.ejected(),
            unhealthy: h.endpoints.unhealthy(),
            impaired_callers: h.endpoints.impaired_callers(),
            max_report_age_seconds: trellis_model::telemetry::ENDPOINT_REPORT_MAX_AGE.as_secs(),
            reports: h
                .endpoints
                .reports
                .iter()
                .map(|r| CallerEndpoints {
                    caller: r.caller.clone(),
                    dataplane: r.dataplane,
                    node: r.node.clone(),
                    port: r.port,
                    subset: r.subset.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    total: r.membership.total,
                    healthy: r.membership.healthy,
                    degraded: r.membership.degraded,
                    ejected: r.membership.ejected,
                    unhealthy: r.membership.unhealthy(),
                    reported_at: r.reported_at,
                })
                .collect(),
        },
    }))
}

/// A service's health.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceHealth {
    mesh: String,
    service: String,
    /// When it was read.
    at: DateTime<Utc>,
    dataplanes: HealthDataplanes,
    svid: HeldSvids,
    ca: ActiveCaExpiry,
    /// The latest rejection any of its proxies sent.
    #[schema(required)]
    last_nack: Option<LastNack>,
    endpoints: EndpointsSeen,
}

/// The service's endpoints as its callers' proxies see them: each online caller proxy's
/// latest report per cluster (port and subset), received within `maxReportAgeSeconds`.
/// Proxies report Envoy's cluster gauges (`membership_total`, `membership_healthy`,
/// `membership_degraded`, `outlier_detection.ejections_active`); Envoy by its bootstrap's
/// stats sink, the agent the same way.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointsSeen {
    /// The most endpoints one caller sees ejected by outlier detection (each caller has its
    /// own view; they are not added).
    ejected: u64,
    /// The most endpoints one caller sees unhealthy: failing health checks or ejected.
    unhealthy: u64,
    /// Caller proxies that see any endpoint ejected or unhealthy.
    impaired_callers: usize,
    /// The oldest report shown, in seconds.
    max_report_age_seconds: u64,
    /// The impaired first (at most 500).
    reports: Vec<CallerEndpoints>,
}

/// What one caller proxy reported of one cluster of the service.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallerEndpoints {
    /// The caller's service.
    caller: String,
    dataplane: uuid::Uuid,
    node: String,
    port: u32,
    /// The cluster's subset (empty: the whole service).
    subset: std::collections::BTreeMap<String, String>,
    /// Endpoints the caller knows of.
    total: u64,
    healthy: u64,
    degraded: u64,
    /// Ejected by outlier detection.
    ejected: u64,
    /// Failing health checks or ejected: not sent to.
    unhealthy: u64,
    reported_at: DateTime<Utc>,
}

/// The service's registered proxies, by the sync state of the dataplane list (offline,
/// rejected, in-sync, syncing).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthDataplanes {
    total: usize,
    online: usize,
    offline: usize,
    in_sync: usize,
    syncing: usize,
    rejected: usize,
}

/// The SVIDs the online proxies hold (as their xDS streams presented them, moved on by each
/// renewal).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeldSvids {
    #[schema(required)]
    earliest_expiry: Option<DateTime<Utc>>,
    /// Whole days from now (negative once past).
    #[schema(required)]
    days_to_expiry: Option<i64>,
    /// Online proxies whose SVID is known.
    proxies: i64,
}

/// The mesh's active CA.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActiveCaExpiry {
    #[schema(required)]
    not_after: Option<DateTime<Utc>>,
    /// Whole days from now (negative once past).
    #[schema(required)]
    days_to_expiry: Option<i64>,
}

/// A rejection (NACK) one of the service's proxies sent.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LastNack {
    dataplane: uuid::Uuid,
    node: String,
    /// The resource type, e.g. `RouteConfiguration`.
    #[serde(rename = "type")]
    type_name: String,
    version: String,
    error: String,
    at: DateTime<Utc>,
    /// The proxy has not accepted a later version of that type since.
    outstanding: bool,
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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

/// The edges of a window in the Prometheus text format, with Linkerd-viz's names and labels
/// (`request_total{direction, src_service, dst_service, classification}`,
/// `response_latency_ms_bucket{…, le}`), one mesh's only. The figures are the window's totals
/// (gauges): a scrape every `window` seconds sees each request once.
pub(crate) fn prometheus_text(mesh: &str, window_secs: i64, totals: &[EdgeTotal]) -> String {
    use std::fmt::Write as _;
    let bounds = trellis_model::telemetry::bucket_upper_bounds_ms();
    let mut out = String::new();
    let _ =
        writeln!(out, "# HELP window_seconds The window every other figure covers, ending at the scrape.");
    let _ = writeln!(out, "# TYPE window_seconds gauge");
    let _ = writeln!(out, "window_seconds{{mesh=\"{}\"}} {window_secs}", label(mesh));
    let edge_labels = |e: &EdgeTotal| {
        format!(
            "mesh=\"{}\",direction=\"outbound\",src_service=\"{}\",dst_service=\"{}\"",
            label(mesh),
            label(&e.source),
            label(&e.destination)
        )
    };
    let _ = writeln!(out, "# HELP request_total HTTP requests over the window, by edge and success.");
    let _ = writeln!(out, "# TYPE request_total gauge");
    for e in totals.iter().filter(|e| e.counts.requests > 0) {
        let l = edge_labels(e);
        let c = &e.counts;
        let _ = writeln!(out, "request_total{{{l},classification=\"success\"}} {}", c.successes);
        let _ = writeln!(
            out,
            "request_total{{{l},classification=\"failure\"}} {}",
            c.requests - c.successes.min(c.requests)
        );
    }
    let _ = writeln!(
        out,
        "# HELP response_latency_ms Time to response over the window, by edge, in milliseconds."
    );
    let _ = writeln!(out, "# TYPE response_latency_ms histogram");
    for e in totals.iter().filter(|e| !e.counts.latency.is_empty()) {
        let l = edge_labels(e);
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(e.counts.latency.counts()) {
            cumulative += n;
            let _ = writeln!(out, "response_latency_ms_bucket{{{l},le=\"{bound}\"}} {cumulative}");
        }
        let total = e.counts.latency.total();
        let _ = writeln!(out, "response_latency_ms_bucket{{{l},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "response_latency_ms_count{{{l}}} {total}");
    }
    let _ = writeln!(out, "# HELP tcp_open_total TCP connections opened over the window, by edge.");
    let _ = writeln!(out, "# TYPE tcp_open_total gauge");
    for e in totals.iter().filter(|e| e.counts.tcp_connections > 0) {
        let _ = writeln!(out, "tcp_open_total{{{}}} {}", edge_labels(e), e.counts.tcp_connections);
    }
    out
}

/// `GET …/meshes/{mesh}/metrics/prometheus`: the mesh's golden metrics for a tenant's own
/// Prometheus to scrape (with an API token, like every call).
#[utoipa::path(get, path = "/api/v1/orgs/{org}/meshes/{mesh}/metrics/prometheus", operation_id = "getPrometheusMetrics",
    summary = "The mesh's golden metrics in the Prometheus text format, Linkerd-viz names and labels (request_total, response_latency_ms, tcp_open_total by src_service, dst_service, classification), and its telemetry not stored (trellis_telemetry_dropped_total by reason): totals of the window (default 60 s)",
    params(MeshPath, WindowQuery),
    responses((status = 200, description = "The exposition (text/plain; version=0.0.4)", body = String, content_type = "text/plain"), ReadErrors))]
pub(crate) async fn prometheus(
    State(ctl): State<Control>,
    Path((_, mesh)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WindowQuery>,
    OrgScope(scope): OrgScope,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let window = q.window.or(Some(PROMETHEUS_WINDOW_SECS));
    let (EdgeWindow { mesh: m, seconds, totals, .. }, dropped) = ctl.exposition(scope, &mesh, window).await?;
    let mut body = prometheus_text(m.name.as_str(), seconds, &totals);
    body.push_str(&dropped_text(m.name.as_str(), &dropped));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
        .into_response())
}

/// The window of a scrape that names none: a common scrape interval.
const PROMETHEUS_WINDOW_SECS: i64 = 60;

#[cfg(test)]
mod tests {
    use trellis_model::telemetry::{EdgeCounts, LatencyHistogram};

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

    #[test]
    fn the_exposition_has_linkerd_names_one_mesh_and_cumulative_buckets() {
        let mut latency = LatencyHistogram::default();
        latency.record_ms(3.0);
        latency.record_ms(40.0);
        let totals = [EdgeTotal {
            source: "web".into(),
            destination: "reviews".into(),
            counts: EdgeCounts { requests: 10, successes: 9, latency, ..Default::default() },
            subsets: Vec::new(),
        }];
        let text = prometheus_text("shop", 60, &totals);
        let l = "mesh=\"shop\",direction=\"outbound\",src_service=\"web\",dst_service=\"reviews\"";
        assert!(text.contains(&format!("request_total{{{l},classification=\"success\"}} 9\n")), "{text}");
        assert!(text.contains(&format!("request_total{{{l},classification=\"failure\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("response_latency_ms_bucket{{{l},le=\"+Inf\"}} 2\n")), "{text}");
        let buckets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("response_latency_ms_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert!(text.lines().filter(|l| !l.starts_with('#')).all(|l| l.contains("mesh=\"shop\"")));
    }
}
