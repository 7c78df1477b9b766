//! Observe: golden metrics per service and per edge, and the topology of a mesh, over a
//! window ending now, read from the stored edge buckets (never from a live scan of proxies);
//! the access log, and why one logged call was denied (or let through).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_control::{
    AccessLogSearch, Control, EdgeWindow, TopologySearch, TopologyWindow, Why, attribution_of,
};
use trellis_model::ResourceName;
use trellis_model::Tags;
use trellis_model::attribution::{Attribution, AttributionKind};
use trellis_model::config::{EdgeImpact, ImpactTotals};
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

/// Golden metrics over the window; latency quantiles are within 9.05 % of the true value.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = GoldenMetrics)]
pub(crate) struct Golden {
    requests: u64,
    rps: f64,
    /// Non-5xx share; null without requests.
    #[schema(required)]
    success_rate: Option<f64>,
    #[schema(required)]
    p50_ms: Option<f64>,
    #[schema(required)]
    p95_ms: Option<f64>,
    #[schema(required)]
    p99_ms: Option<f64>,
    tcp_connections: u64,
    bytes: u64,
}

impl From<&GoldenMetrics> for Golden {
    fn from(m: &GoldenMetrics) -> Self {
        Golden {
            requests: m.requests,
            rps: m.rps,
            success_rate: m.success_rate,
            p50_ms: m.p50_ms,
            p95_ms: m.p95_ms,
            p99_ms: m.p99_ms,
            tcp_connections: m.tcp_connections,
            bytes: m.bytes,
        }
    }
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
) -> Result<Json<Topology>, ApiError> {
    let search = TopologySearch { service: q.service, group: q.group, grouping: q.grouping };
    let TopologyWindow { seconds, resolution, view, .. } =
        ctl.topology(scope, &mesh, q.window, &search, API_MAX_NODES).await?;
    let nodes = view
        .nodes
        .iter()
        .map(|n| {
            let (kind, service, group) = match &n.kind {
                NodeKind::Service => (TopologyNodeKind::Service, Some(n.name.clone()), None),
                NodeKind::Group(g) => (TopologyNodeKind::Group, None, Some(g.clone())),
                NodeKind::Other => (TopologyNodeKind::Other, None, None),
            };
            TopologyNode {
                name: n.name.clone(),
                kind,
                service,
                group,
                members: n.members,
                metrics: Golden::from(&n.metrics),
            }
        })
        .collect();
    let edges = view
        .edges
        .iter()
        .map(|e| TopologyEdge {
            source: view.nodes[e.source].name.clone(),
            destination: view.nodes[e.destination].name.clone(),
            metrics: Golden::from(&e.metrics),
            subsets: e
                .subsets
                .iter()
                .map(|s| EdgeSubset { tags: s.subset.clone(), requests: s.requests, share: s.share })
                .collect(),
            merged: e.merged,
        })
        .collect();
    Ok(Json(Topology {
        mesh,
        window_seconds: seconds,
        resolution_seconds: resolution.seconds(),
        services: view.services,
        grouped: view.grouped,
        nodes,
        edges,
    }))
}

/// Over 150 services, services are grouped by name prefix (`billing-api` is in `billing-*`)
/// and past 150 groups the least busy share the node `(other)`; an edge between two nodes
/// merges exactly the service edges it stands for (calls inside a group are its loop), so
/// the edges' requests add up to every call the filter kept.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Topology {
    mesh: String,
    window_seconds: i64,
    /// The finest bucket width the window was read in.
    resolution_seconds: i64,
    /// Services at either end of an edge the filter kept.
    services: usize,
    /// Were services grouped to stay within 150 nodes?
    grouped: bool,
    nodes: Vec<TopologyNode>,
    edges: Vec<TopologyEdge>,
}

/// A node of the topology: a service, a group of services, or the rest.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopologyNode {
    /// The service, `<group>-*` for a group, or `(other)`; what edges name.
    name: String,
    kind: TopologyNodeKind,
    /// The service, for a service's node.
    #[schema(required)]
    service: Option<String>,
    /// The name prefix, for a group's node (`?group=` opens it).
    #[schema(required)]
    group: Option<String>,
    /// Services the node stands for.
    members: usize,
    metrics: Golden,
}

/// What a topology node stands for.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TopologyNodeKind {
    Service,
    Group,
    Other,
}

/// Who called whom between two nodes of the topology.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopologyEdge {
    source: String,
    destination: String,
    metrics: Golden,
    /// How the edge's requests split between subsets of the destination (a route's weighted
    /// backends, e.g. versions), in tag order.
    subsets: Vec<EdgeSubset>,
    /// Service edges merged into this one (1 between two services).
    merged: usize,
}

/// The requests of an edge that went to one subset of the destination.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EdgeSubset {
    tags: Tags,
    requests: u64,
    /// Of every request on the edge; null without requests.
    #[schema(required)]
    share: Option<f64>,
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
) -> Result<Json<ServiceMetrics>, ApiError> {
    let EdgeWindow { seconds: secs, resolution, totals, .. } =
        ctl.edge_totals(scope, &mesh, q.window).await?;
    let service =
        ResourceName::parse(&service).map_err(|e| ApiError::bad_request(format!("service name: {e}")))?;
    let window = secs as f64;
    let edge = |e: &EdgeTotal| ServiceEdge {
        source: e.source.clone(),
        destination: e.destination.clone(),
        metrics: Golden::from(&GoldenMetrics::of(&e.counts, window)),
    };
    let name = service.as_str();
    Ok(Json(ServiceMetrics {
        mesh,
        service: name.to_owned(),
        window_seconds: secs,
        resolution_seconds: resolution.seconds(),
        inbound: Golden::from(&service_metrics(&totals, name, window)),
        callers: totals.iter().filter(|e| e.destination == name).map(edge).collect(),
        callees: totals.iter().filter(|e| e.source == name).map(edge).collect(),
    }))
}

/// A service's golden metrics and the edges into and out of it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceMetrics {
    mesh: String,
    service: String,
    window_seconds: i64,
    /// The finest bucket width the window was read in.
    resolution_seconds: i64,
    /// The calls the service received.
    inbound: Golden,
    callers: Vec<ServiceEdge>,
    callees: Vec<ServiceEdge>,
}

/// The calls of one caller to one service.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceEdge {
    source: String,
    destination: String,
    metrics: Golden,
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

/// What decided the call.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallDecision {
    kind: AttributionKind,
    /// The AccessPolicy whose rule decided (deny-rule, audit-rule).
    #[schema(required)]
    policy: Option<String>,
    /// The rule's index in spec.rules.
    #[schema(required)]
    rule: Option<usize>,
    summary: String,
}

impl From<&Attribution> for CallDecision {
    fn from(a: &Attribution) -> Self {
        let (policy, rule) = a.rule().unzip();
        CallDecision { kind: a.kind(), policy: policy.map(str::to_owned), rule, summary: a.to_string() }
    }
}

/// One call a proxy logged.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessLogEntry {
    id: uuid::Uuid,
    received_at: DateTime<Utc>,
    logged_at: DateTime<Utc>,
    /// The service of the proxy that logged it (from its certificate).
    reporter: String,
    #[schema(value_type = AccessLogDirection)]
    direction: String,
    #[schema(value_type = AccessLogProtocol)]
    protocol: String,
    #[schema(value_type = AccessLogOutcome)]
    outcome: String,
    source: CallSource,
    destination: CallDestination,
    method: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    status: Option<i32>,
    /// Envoy's response flags (empty: none).
    response_flags: String,
    response_details: String,
    rbac_policy: Option<String>,
    audit_policy: Option<String>,
    duration_ms: Option<f64>,
    /// The mesh's revision when the entry was stored.
    mesh_revision: Option<i64>,
    decision: CallDecision,
}

// The values the proxies log (agent and Envoy alike), stored as text: the schema names them.
/// `inbound`: the reporter was called; `outbound`: it called.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AccessLogDirection {
    Inbound,
    Outbound,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AccessLogProtocol {
    Http,
    Tcp,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum AccessLogOutcome {
    Denied,
    Error,
    Audited,
    Sampled,
}

/// The caller of a logged call.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallSource {
    service: Option<String>,
    identity: Option<String>,
    address: Option<String>,
}

/// The callee of a logged call.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallDestination {
    service: Option<String>,
    identity: Option<String>,
}

impl From<&StoredAccessLog> for AccessLogEntry {
    fn from(e: &StoredAccessLog) -> Self {
        let r = &e.record;
        AccessLogEntry {
            id: e.id,
            received_at: e.received_at,
            logged_at: r.logged_at,
            reporter: r.reporter.clone(),
            direction: r.direction.clone(),
            protocol: r.protocol.clone(),
            outcome: r.outcome.clone(),
            source: CallSource {
                service: r.source_service.clone(),
                identity: r.source_identity.clone(),
                address: r.source_address.clone(),
            },
            destination: CallDestination {
                service: r.destination_service.clone(),
                identity: r.destination_identity.clone(),
            },
            method: r.method.clone(),
            authority: r.authority.clone(),
            path: r.path.clone(),
            status: r.status,
            response_flags: r.response_flags.clone(),
            response_details: r.response_details.clone(),
            rbac_policy: r.rbac_policy.clone(),
            audit_policy: r.audit_policy.clone(),
            duration_ms: r.duration_ms,
            mesh_revision: e.mesh_revision,
            decision: CallDecision::from(&attribution_of(r)),
        }
    }
}

/// A page of a mesh's access log, newest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessLogPage {
    mesh: String,
    items: Vec<AccessLogEntry>,
    /// Pass as cursor for the next page; null on the last.
    next_cursor: Option<String>,
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
) -> Result<Json<AccessLogPage>, ApiError> {
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
    Ok(Json(AccessLogPage {
        mesh: page.mesh.name.to_string(),
        items: page.entries.iter().map(AccessLogEntry::from).collect(),
        next_cursor: page.next_cursor,
    }))
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
) -> Result<Json<AccessLogWhy>, ApiError> {
    let Why { entry, attribution, rule } = ctl.why(scope, &mesh, &id).await?;
    let rule = rule.map(|r| DecidingRule {
        exists: r.resource.is_some(),
        policy_revision: r.resource.as_ref().and_then(|p| p.mesh_revision),
        policy: r.policy,
        rule: r.rule,
        rule_now: r.rule_spec,
        changed_since_entry: r.changed_since,
    });
    Ok(Json(AccessLogWhy {
        entry: AccessLogEntry::from(&entry),
        decision: CallDecision::from(&attribution),
        mesh_revision_at_entry: entry.mesh_revision,
        rule,
    }))
}

/// What decided a logged call, and the deciding rule as it is now.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessLogWhy {
    entry: AccessLogEntry,
    decision: CallDecision,
    mesh_revision_at_entry: Option<i64>,
    /// The deciding rule as it is now.
    rule: Option<DecidingRule>,
}

/// The AccessPolicy rule that decided a logged call, as it is now.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DecidingRule {
    policy: String,
    /// The rule's index in spec.rules.
    rule: usize,
    /// The policy still exists.
    exists: bool,
    /// The rule in the policy's spec now, if it still has one at that index.
    #[schema(value_type = Option<Object>)]
    rule_now: Option<Value>,
    policy_revision: Option<i64>,
    /// The policy was written or deleted after the entry was stored.
    changed_since_entry: bool,
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

/// What saving an AccessPolicy would change among the mesh's recorded calls (the impact
/// preview's body, built by `config::impact_preview`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessImpact {
    pub(crate) mesh: String,
    pub(crate) policy: String,
    pub(crate) window_seconds: i64,
    /// The calls of every changed edge, by what the change does to them.
    pub(crate) calls: ImpactTotals,
    /// Edges whose verdict changes (`edges` lists the first 500).
    pub(crate) edges_changed: usize,
    /// Most calls first.
    pub(crate) edges: Vec<EdgeImpact>,
}

#[cfg(test)]
mod tests {
    use trellis_model::telemetry::{EdgeCounts, LatencyHistogram};

    use super::*;

    /// A call a deny rule refused, every field the proxy can log set.
    fn denied_entry() -> StoredAccessLog {
        let at = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().to_utc();
        StoredAccessLog {
            id: uuid::Uuid::nil(),
            received_at: at,
            mesh_revision: Some(7),
            record: trellis_store::AccessLogRecord {
                mesh_id: uuid::Uuid::nil(),
                logged_at: at,
                reporter: "reviews".into(),
                direction: "inbound".into(),
                protocol: "http".into(),
                outcome: "denied".into(),
                source_service: Some("web".into()),
                source_identity: Some("spiffe://acme.trellis/mesh/shop/service/web".into()),
                source_address: Some("10.0.0.1:4000".into()),
                destination_service: Some("reviews".into()),
                destination_identity: None,
                method: Some("GET".into()),
                authority: Some("reviews".into()),
                path: Some("/".into()),
                status: Some(403),
                response_flags: "RBAC".into(),
                response_details: "rbac_access_denied".into(),
                rbac_policy: Some("lockdown/rules/0".into()),
                audit_policy: None,
                route: None,
                upstream_cluster: None,
                duration_ms: Some(1.5),
                bytes_received: None,
                bytes_sent: None,
            },
        }
    }

    #[test]
    fn a_logged_denial_is_sent_as_the_published_schema_says() {
        let entry = denied_entry();
        let why = AccessLogWhy {
            entry: AccessLogEntry::from(&entry),
            decision: CallDecision::from(&attribution_of(&entry.record)),
            mesh_revision_at_entry: entry.mesh_revision,
            rule: Some(DecidingRule {
                policy: "lockdown".into(),
                rule: 0,
                exists: true,
                rule_now: Some(serde_json::json!({"action": "deny"})),
                policy_revision: Some(9),
                changed_since_entry: true,
            }),
        };
        let body = serde_json::to_value(&why).unwrap();
        crate::schema_check::assert_published("AccessLogWhy", &body);
        assert_eq!(
            body["decision"],
            serde_json::json!({"kind": "deny-rule", "policy": "lockdown", "rule": 0,
                "summary": "denied by rule 0 of AccessPolicy lockdown"})
        );
        assert_eq!(body["entry"]["source"]["address"], "10.0.0.1:4000");
        assert_eq!(body["entry"]["destination"]["identity"], Value::Null);
        assert_eq!(body["entry"]["receivedAt"], "2026-03-01T10:00:00Z");
        let page = AccessLogPage {
            mesh: "shop".into(),
            items: vec![AccessLogEntry::from(&entry)],
            next_cursor: None,
        };
        let page = serde_json::to_value(&page).unwrap();
        crate::schema_check::assert_published("AccessLogPage", &page);
        assert_eq!(page["nextCursor"], Value::Null, "the last page says so");
    }

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
