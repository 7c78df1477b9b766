//! Envoy's telemetry read into the model's terms, without I/O: the Prometheus metric
//! families of `MetricsService` become edge increments, and `AccessLogService` entries
//! become access-log records. The reporter (mesh and service) is always the caller's
//! verified identity; nothing in a message can name another.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use envoy_types::pb::envoy::config::core::v3::{Address, RequestMethod, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry, tls_properties,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::io::prometheus::client::{MetricFamily, MetricType};
use trellis_model::ResourceName;
use trellis_model::Tags;
use trellis_model::telemetry::{EdgeCounts, EdgeKey, LatencyHistogram, Membership, ResponseClass};
use trellis_store::AccessLogRecord;
use trellis_xds::contract::{access_log_name, cluster_gauge, rbac};
use trellis_xds::{cluster_subset, parse_cluster_name};

/// Most series (cluster and stat) one stream's baseline holds: a label or cluster flood
/// cannot grow a stream's memory past it.
pub const MAX_SERIES: usize = 20_000;
/// Longest text kept of a logged field (a path, an authority, details).
const MAX_FIELD: usize = 1_024;
/// A logged time further than this from the time of receipt is replaced by it.
const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(10);

/// The verified proxy a stream belongs to.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub mesh: String,
    pub service: ResourceName,
}

/// What one metrics message came to.
#[derive(Debug, Default, PartialEq)]
pub struct Increments {
    pub edges: Vec<(EdgeKey, EdgeCounts)>,
    /// Series beyond [`MAX_SERIES`], not counted.
    pub over_limit: u64,
}

/// The stats of a cluster that telemetry reads; every other stat is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stat {
    Requests(ResponseClass),
    Connections,
    Bytes,
}

/// One stream's last cumulative values: Envoy reports counters and histograms as totals
/// since it started, so each report counts what grew since the previous one. The first
/// report of a series on a stream is its baseline (a proxy that reconnects is never counted
/// twice); a series that went down restarted, and counts from zero.
#[derive(Debug, Default)]
pub struct Baseline {
    counters: HashMap<(String, Stat, &'static str), u64>,
    histograms: HashMap<String, LatencyHistogram>,
}

impl Baseline {
    fn len(&self) -> usize {
        self.counters.len() + self.histograms.len()
    }

    /// Reads one message's families.
    pub fn read(&mut self, reporter: &Reporter, families: &[MetricFamily]) -> Increments {
        let mut out: HashMap<EdgeKey, EdgeCounts> = HashMap::new();
        let mut over_limit = 0;
        for family in families {
            let Some((cluster, stat)) = family.name.as_deref().and_then(split_stat) else { continue };
            let Some((destination, subset)) = destination_of(cluster, reporter) else { continue };
            let class = match classify(stat) {
                Some(Stat::Requests(c)) => Some((Stat::Requests(c), c)),
                Some(s) => Some((s, ResponseClass::Unclassified)),
                None => None,
            };
            let edge = |class| EdgeKey {
                source: reporter.service.clone(),
                destination: destination.clone(),
                destination_subset: subset.clone(),
                route: None,
                class,
            };
            if stat == "upstream_rq_time" {
                for metric in &family.metric {
                    let Some(h) = &metric.histogram else { continue };
                    let bounds: Vec<(f64, u64)> = h
                        .bucket
                        .iter()
                        .filter_map(|b| Some((b.upper_bound?, b.cumulative_count?)))
                        .filter(|(bound, _)| bound.is_finite())
                        .collect();
                    let now = LatencyHistogram::from_cumulative(&bounds, h.sample_count.unwrap_or(0));
                    let key = cluster.to_owned();
                    if !self.histograms.contains_key(&key) && self.len() >= MAX_SERIES {
                        over_limit += 1;
                        continue;
                    }
                    let grown = match self.histograms.insert(key, now.clone()) {
                        Some(before) => now.since(&before),
                        None => LatencyHistogram::default(),
                    };
                    if !grown.is_empty() {
                        out.entry(edge(ResponseClass::Unclassified)).or_default().latency.merge(&grown);
                    }
                }
                continue;
            }
            let Some((stat_kind, class)) = class else { continue };
            if family.r#type.is_some_and(|t| t != MetricType::Counter as i32) {
                continue;
            }
            for metric in &family.metric {
                let Some(value) = metric.counter.as_ref().and_then(|c| c.value) else { continue };
                if !(value.is_finite() && value >= 0.0) {
                    continue;
                }
                let value = value as u64;
                // Bytes have two stats (received and sent) that add to one figure.
                let key = (cluster.to_owned(), stat_kind, if stat.contains("_tx_") { "tx" } else { "rx" });
                if !self.counters.contains_key(&key) && self.len() >= MAX_SERIES {
                    over_limit += 1;
                    continue;
                }
                let grown = match self.counters.insert(key, value) {
                    Some(before) if value >= before => value - before,
                    Some(_) => value,
                    None => 0,
                };
                if grown == 0 {
                    continue;
                }
                let counts = out.entry(edge(class)).or_default();
                match stat_kind {
                    Stat::Requests(c) => {
                        counts.requests += grown;
                        if c.is_success() {
                            counts.successes += grown;
                        }
                    }
                    Stat::Connections => counts.tcp_connections += grown,
                    Stat::Bytes => counts.tcp_bytes += grown,
                }
            }
        }
        let mut edges: Vec<(EdgeKey, EdgeCounts)> = out.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        edges.sort_by(|a, b| a.0.cmp(&b.0));
        Increments { edges, over_limit }
    }
}

/// `cluster.<cluster name>.<stat>` → (cluster name, stat): Envoy's full stat names (tags
/// are not extracted: its default extractor stops at the first dot of a cluster name).
fn split_stat(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("cluster.")?;
    rest.rsplit_once('.')
}

fn classify(stat: &str) -> Option<Stat> {
    match stat {
        "upstream_cx_total" => Some(Stat::Connections),
        "upstream_cx_rx_bytes_total" | "upstream_cx_tx_bytes_total" => Some(Stat::Bytes),
        _ => {
            let digit = stat.strip_prefix("upstream_rq_")?.strip_suffix("xx")?;
            let digit: u32 = digit.parse().ok()?;
            ResponseClass::of_class_digit(digit).map(Stat::Requests)
        }
    }
}

/// An upstream cluster of the reporter's mesh, read back from its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upstream {
    pub service: ResourceName,
    pub port: u32,
    pub subset: Tags,
}

/// The service, port and subset a cluster of the reporter's own mesh leads to; None for any
/// other cluster (another mesh's, `inbound:<port>`, the xDS cluster).
fn upstream_of(cluster: &str, reporter: &Reporter) -> Option<Upstream> {
    let (service, mesh, port) = parse_cluster_name(cluster)?;
    if mesh != reporter.mesh {
        return None;
    }
    Some(Upstream { service: ResourceName::parse(service).ok()?, port, subset: cluster_subset(cluster)? })
}

/// The service (and subset) a cluster of the reporter's own mesh leads to.
fn destination_of(cluster: &str, reporter: &Reporter) -> Option<(ResourceName, Tags)> {
    upstream_of(cluster, reporter).map(|u| (u.service, u.subset))
}

/// The endpoints one message says the reporter sees, per upstream cluster of its own mesh:
/// the latest values of the cluster gauges (`contract::cluster_gauge`). A cluster counts once
/// its `membership_total` is reported; other meshes' clusters, values that are not finite
/// counts, and clusters past [`MAX_SERIES`] are ignored.
pub fn memberships(reporter: &Reporter, families: &[MetricFamily]) -> Vec<(Upstream, Membership)> {
    let mut seen: HashMap<&str, (Upstream, Membership, bool)> = HashMap::new();
    for family in families {
        if family.r#type.is_some_and(|t| t != MetricType::Gauge as i32) {
            continue;
        }
        let Some(name) = family.name.as_deref().and_then(|n| n.strip_prefix("cluster.")) else { continue };
        let Some((cluster, gauge)) =
            CLUSTER_GAUGES.iter().find_map(|g| Some((name.strip_suffix(g)?.strip_suffix('.')?, *g)))
        else {
            continue;
        };
        let Some(value) = family.metric.first().and_then(|m| m.gauge.as_ref()?.value) else { continue };
        if !(value.is_finite() && value >= 0.0) {
            continue;
        }
        if !seen.contains_key(cluster) {
            if seen.len() >= MAX_SERIES {
                continue;
            }
            let Some(upstream) = upstream_of(cluster, reporter) else { continue };
            seen.insert(cluster, (upstream, Membership::default(), false));
        }
        let (_, m, counted) = seen.get_mut(cluster).expect("inserted above");
        let value = value as u64;
        match gauge {
            cluster_gauge::MEMBERSHIP_TOTAL => {
                m.total = value;
                *counted = true;
            }
            cluster_gauge::MEMBERSHIP_HEALTHY => m.healthy = value,
            cluster_gauge::MEMBERSHIP_DEGRADED => m.degraded = value,
            _ => m.ejected = value,
        }
    }
    let mut out: Vec<(Upstream, Membership)> =
        seen.into_values().filter(|(_, _, counted)| *counted).map(|(u, m, _)| (u, m)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every gauge [`memberships`] reads.
const CLUSTER_GAUGES: [&str; 4] = [
    cluster_gauge::EJECTIONS_ACTIVE,
    cluster_gauge::MEMBERSHIP_TOTAL,
    cluster_gauge::MEMBERSHIP_HEALTHY,
    cluster_gauge::MEMBERSHIP_DEGRADED,
];

/// Which side of the proxy a log stream's entries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inbound,
    Outbound,
}

impl Side {
    /// From the stream's `log_name`; None for a name Trellis did not configure (then each
    /// entry's upstream cluster tells).
    pub fn of_log_name(name: &str) -> Option<Side> {
        match name {
            access_log_name::INBOUND => Some(Side::Inbound),
            access_log_name::OUTBOUND => Some(Side::Outbound),
            _ => None,
        }
    }
}

fn bounded(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].chars().filter(|c| !c.is_control()).collect())
}

fn address_text(a: &Option<Address>) -> Option<String> {
    match a.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            bounded(&format!("{}:{port}", s.address))
        }
        _ => None,
    }
}

/// `rbac_access_denied_matched_policy[<name>]` → the policy's name; Envoy's own text when
/// its RBAC filter denied (None for `none`: no allow rule matched).
fn rbac_policy(details: &str) -> Option<String> {
    rbac::policy_of_details(details).and_then(bounded)
}

/// The audit rule that matched: the shadow policy the audit RBAC filter wrote into the
/// entry's dynamic metadata (`<audit prefix>shadow_effective_policy_id`).
fn audit_policy(common: &AccessLogCommon) -> Option<String> {
    let key = format!("{}{}", rbac::AUDIT_STAT_PREFIX, rbac::SHADOW_POLICY_KEY);
    let metadata = common.metadata.as_ref()?;
    rbac::METADATA_NAMESPACES.iter().find_map(|ns| {
        match metadata.filter_metadata.get(*ns)?.fields.get(&key)?.kind.as_ref()? {
            Kind::StringValue(p) => bounded(p),
            _ => None,
        }
    })
}

/// Envoy's short response flags (`UF,URX`) of the flags set.
fn flags_text(f: &Option<ResponseFlags>) -> String {
    let Some(f) = f else { return String::new() };
    let named = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.duration_timeout, "DT"),
        (f.downstream_remote_reset, "DR"),
    ];
    named.iter().filter(|(set, _)| *set).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// The SPIFFE ID the peer presented, as the proxy logged it.
fn peer_identity(common: &AccessLogCommon) -> Option<String> {
    let peer = common.tls_properties.as_ref()?.peer_certificate_properties.as_ref()?;
    peer.subject_alt_name.iter().find_map(|san| match &san.san {
        Some(tls_properties::certificate_properties::subject_alt_name::San::Uri(u)) => bounded(u),
        _ => None,
    })
}

/// The service of a workload identity of the reporter's mesh (`…/ns/<mesh>/sa/<service>`).
fn service_of_identity(id: &str, mesh: &str) -> Option<String> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let service = path.strip_prefix("ns/")?.strip_prefix(mesh)?.strip_prefix("/sa/")?;
    ResourceName::parse(service).ok().map(|s| s.as_str().to_owned())
}

fn millis(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<f64> {
    let d = d.as_ref()?;
    let ms = d.seconds as f64 * 1_000.0 + f64::from(d.nanos) / 1_000_000.0;
    (ms.is_finite() && ms >= 0.0).then_some(ms)
}

/// The fields both entry types share: who, when, how long, why denied.
fn common_record(
    common: &AccessLogCommon,
    reporter: &Reporter,
    side: Option<Side>,
    mesh_id: uuid::Uuid,
    received: DateTime<Utc>,
    protocol: &str,
) -> AccessLogRecord {
    let cluster = common.upstream_cluster.as_str();
    let side = side.unwrap_or(if cluster.starts_with("inbound:") { Side::Inbound } else { Side::Outbound });
    let logged_at = common
        .start_time
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .filter(|t| (*t - received).abs() <= MAX_CLOCK_SKEW)
        .unwrap_or(received);
    let peer = peer_identity(common);
    let me = Some(reporter.service.as_str().to_owned());
    let (source_service, destination_service) = match side {
        Side::Inbound => (peer.as_deref().and_then(|p| service_of_identity(p, &reporter.mesh)), me),
        Side::Outbound => (me, destination_of(cluster, reporter).map(|(s, _)| s.as_str().to_owned())),
    };
    let termination = common.connection_termination_details.as_str();
    AccessLogRecord {
        mesh_id,
        logged_at,
        reporter: reporter.service.as_str().to_owned(),
        direction: match side {
            Side::Inbound => "inbound",
            Side::Outbound => "outbound",
        }
        .into(),
        protocol: protocol.into(),
        outcome: String::new(),
        source_service,
        source_identity: if side == Side::Inbound { peer.clone() } else { None },
        source_address: address_text(&common.downstream_remote_address),
        destination_service,
        destination_identity: if side == Side::Outbound { peer } else { None },
        method: None,
        authority: None,
        path: None,
        status: None,
        response_flags: flags_text(&common.response_flags),
        response_details: bounded(termination).unwrap_or_default(),
        rbac_policy: rbac_policy(termination),
        audit_policy: audit_policy(common),
        route: bounded(&common.route_name),
        upstream_cluster: bounded(cluster),
        duration_ms: millis(&common.duration).or_else(|| millis(&common.time_to_last_downstream_tx_byte)),
        bytes_received: None,
        bytes_sent: None,
    }
}

/// Why an entry was logged: a denial, a failure, an audit rule's match, or the sample.
fn outcome(r: &AccessLogRecord, failed: bool) -> String {
    if rbac::is_denial(&r.response_details) {
        "denied"
    } else if failed {
        "error"
    } else if r.audit_policy.is_some() {
        "audited"
    } else {
        "sampled"
    }
    .into()
}

/// An HTTP entry as stored.
pub fn http_record(
    e: &HttpAccessLogEntry,
    reporter: &Reporter,
    side: Option<Side>,
    mesh_id: uuid::Uuid,
    received: DateTime<Utc>,
) -> AccessLogRecord {
    let common = e.common_properties.clone().unwrap_or_default();
    let mut r = common_record(&common, reporter, side, mesh_id, received, "http");
    if let Some(req) = &e.request {
        r.method = RequestMethod::try_from(req.request_method)
            .ok()
            .filter(|m| *m != RequestMethod::MethodUnspecified)
            .map(|m| m.as_str_name().to_owned());
        r.authority = bounded(&req.authority);
        r.path = bounded(&req.path);
        r.bytes_received = i64::try_from(req.request_body_bytes).ok();
    }
    let status = e.response.as_ref().and_then(|resp| resp.response_code.as_ref()).map_or(0, |c| c.value);
    if let Some(resp) = &e.response {
        r.bytes_sent = i64::try_from(resp.response_body_bytes).ok();
        if !resp.response_code_details.is_empty() {
            r.response_details = bounded(&resp.response_code_details).unwrap_or_default();
            r.rbac_policy = rbac_policy(&resp.response_code_details).or(r.rbac_policy);
        }
    }
    r.status = i32::try_from(status).ok().filter(|s| *s > 0);
    // An injected delay (`DI`) alone is no failure: the request was answered, only later.
    let flagged = r.response_flags.split(',').any(|f| !f.is_empty() && f != "DI");
    let failed = !ResponseClass::of_status(status).is_success() || flagged;
    r.outcome = outcome(&r, failed);
    r
}

/// A TCP entry as stored.
pub fn tcp_record(
    e: &TcpAccessLogEntry,
    reporter: &Reporter,
    side: Option<Side>,
    mesh_id: uuid::Uuid,
    received: DateTime<Utc>,
) -> AccessLogRecord {
    let common = e.common_properties.clone().unwrap_or_default();
    let mut r = common_record(&common, reporter, side, mesh_id, received, "tcp");
    if let Some(c) = &e.connection_properties {
        r.bytes_received = i64::try_from(c.received_bytes).ok();
        r.bytes_sent = i64::try_from(c.sent_bytes).ok();
    }
    let failed = !r.response_flags.is_empty();
    r.outcome = outcome(&r, failed);
    r
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::data::accesslog::v3::{
        HttpRequestProperties, HttpResponseProperties, TlsProperties, tls_properties::CertificateProperties,
        tls_properties::certificate_properties::SubjectAltName,
    };
    use envoy_types::pb::io::prometheus::client::{Bucket, Counter, Gauge, Histogram, Metric};

    use super::*;

    fn reporter() -> Reporter {
        Reporter { mesh: "shop".into(), service: ResourceName::parse("web").unwrap() }
    }

    fn counter(name: &str, value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter { value: Some(value), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn histogram(name: &str, buckets: &[(f64, u64)], count: u64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(count),
                    bucket: buckets
                        .iter()
                        .map(|(b, c)| Bucket {
                            upper_bound: Some(*b),
                            cumulative_count: Some(*c),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn edge(class: ResponseClass) -> EdgeKey {
        EdgeKey {
            source: ResourceName::parse("web").unwrap(),
            destination: ResourceName::parse("reviews").unwrap(),
            destination_subset: Tags::parse([("version", "v2")]).unwrap(),
            route: None,
            class,
        }
    }

    #[test]
    fn cumulative_counters_count_what_grew_since_the_streams_first_report() {
        let mut b = Baseline::default();
        let c = "cluster.reviews.shop:9080~version=v2";
        let report = |ok: f64, err: f64, cx: f64| {
            vec![
                counter(&format!("{c}.upstream_rq_2xx"), ok),
                counter(&format!("{c}.upstream_rq_5xx"), err),
                counter(&format!("{c}.upstream_rq_200"), ok),
                counter(&format!("{c}.upstream_cx_total"), cx),
                counter("cluster.inbound:8080.upstream_rq_2xx", 99.0),
                counter("cluster.xds.upstream_rq_2xx", 5.0),
                counter("cluster.reviews.othermesh:9080.upstream_rq_2xx", 7.0),
                counter("server.uptime", 12.0),
            ]
        };
        // The first report is the baseline.
        assert!(b.read(&reporter(), &report(10.0, 1.0, 2.0)).edges.is_empty());
        let second = b.read(&reporter(), &report(25.0, 3.0, 2.0));
        assert_eq!(
            second.edges,
            vec![
                (
                    edge(ResponseClass::Success),
                    EdgeCounts { requests: 15, successes: 15, ..Default::default() }
                ),
                (
                    edge(ResponseClass::ServerError),
                    EdgeCounts { requests: 2, successes: 0, ..Default::default() }
                ),
            ]
        );
        // The proxy restarted: its counters start over, and all of it is new.
        let third = b.read(&reporter(), &report(4.0, 3.0, 3.0));
        assert_eq!(third.edges[0].1.tcp_connections, 0);
        assert_eq!(
            third.edges.iter().find(|(k, _)| k.class == ResponseClass::Success).unwrap().1.requests,
            4
        );
        assert_eq!(
            third
                .edges
                .iter()
                .find(|(k, _)| k.class == ResponseClass::Unclassified)
                .unwrap()
                .1
                .tcp_connections,
            1
        );
    }

    fn gauge(name: &str, value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric { gauge: Some(Gauge { value: Some(value) }), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn cluster_gauges_are_read_per_upstream_cluster_of_the_reporters_mesh_only() {
        let c = "cluster.reviews.shop:9080~version=v2";
        let families = vec![
            gauge(&format!("{c}.membership_total"), 3.0),
            gauge(&format!("{c}.membership_healthy"), 1.0),
            gauge(&format!("{c}.membership_degraded"), 0.0),
            gauge(&format!("{c}.outlier_detection.ejections_active"), 1.0),
            // A counter of the same cluster and Envoy's other gauges are not memberships.
            counter(&format!("{c}.upstream_rq_2xx"), 5.0),
            gauge(&format!("{c}.upstream_cx_active"), 4.0),
            // Another mesh's cluster, the inbound and xDS clusters, hostile values.
            gauge("cluster.reviews.othermesh:9080.membership_total", 9.0),
            gauge("cluster.inbound:9080.membership_total", 1.0),
            gauge("cluster.xds.membership_total", 1.0),
            gauge("cluster.ratings.shop:9080.membership_total", f64::NAN),
            gauge("cluster.ratings.shop:9080.outlier_detection.ejections_active", 2.0),
        ];
        let read = memberships(&reporter(), &families);
        let reviews = Upstream {
            service: ResourceName::parse("reviews").unwrap(),
            port: 9080,
            subset: Tags::parse([("version", "v2")]).unwrap(),
        };
        let m = Membership { total: 3, healthy: 1, degraded: 0, ejected: 1 };
        assert_eq!(read, vec![(reviews, m)], "ratings never reported its membership");
        assert_eq!((m.unhealthy(), m.is_impaired()), (2, true));
        let flood: Vec<MetricFamily> = (0..MAX_SERIES + 10)
            .map(|i| gauge(&format!("cluster.s{i}.shop:80.membership_total"), 1.0))
            .collect();
        assert_eq!(memberships(&reporter(), &flood).len(), MAX_SERIES);
    }

    #[test]
    fn latency_histograms_are_differenced_too() {
        let mut b = Baseline::default();
        let name = "cluster.reviews.shop:9080.upstream_rq_time";
        b.read(&reporter(), &[histogram(name, &[(1.0, 1), (10.0, 2)], 2)]);
        let grown = b.read(&reporter(), &[histogram(name, &[(1.0, 1), (10.0, 5), (f64::INFINITY, 6)], 6)]);
        let (key, counts) = &grown.edges[0];
        assert_eq!(key.class, ResponseClass::Unclassified);
        assert_eq!(counts.latency.total(), 4);
        assert_eq!(counts.latency.counts()[trellis_model::telemetry::bucket_of_ms(10.0)], 3);
    }

    #[test]
    fn hostile_values_and_floods_are_bounded() {
        let mut b = Baseline::default();
        let bad = [f64::NAN, -1.0, f64::INFINITY];
        let families: Vec<MetricFamily> =
            bad.iter().map(|v| counter("cluster.reviews.shop:9080.upstream_rq_2xx", *v)).collect();
        assert!(b.read(&reporter(), &families).edges.is_empty());
        let flood: Vec<MetricFamily> = (0..MAX_SERIES + 10)
            .map(|i| counter(&format!("cluster.s{i}.shop:80.upstream_rq_2xx"), 1.0))
            .collect();
        let read = b.read(&reporter(), &flood);
        assert_eq!(read.over_limit, 10);
        assert!(b.len() <= MAX_SERIES);
    }

    #[test]
    fn a_denied_inbound_call_names_the_caller_and_the_policy() {
        let received = Utc::now();
        let entry = HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                tls_properties: Some(TlsProperties {
                    peer_certificate_properties: Some(CertificateProperties {
                        subject_alt_name: vec![SubjectAltName {
                            san: Some(tls_properties::certificate_properties::subject_alt_name::San::Uri(
                                "spiffe://shop.acme.test/ns/shop/sa/admin".into(),
                            )),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                start_time: Some(envoy_types::pb::google::protobuf::Timestamp { seconds: 1, nanos: 0 }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_method: RequestMethod::Delete as i32,
                path: "/reviews/1".into(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 403 }),
                response_code_details: "rbac_access_denied_matched_policy[deny-admin]".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = http_record(&entry, &reporter(), Some(Side::Inbound), uuid::Uuid::nil(), received);
        assert_eq!(r.outcome, "denied");
        assert_eq!(r.rbac_policy.as_deref(), Some("deny-admin"));
        assert_eq!(r.source_service.as_deref(), Some("admin"));
        assert_eq!(r.destination_service.as_deref(), Some("web"));
        assert_eq!(r.method.as_deref(), Some("DELETE"));
        assert_eq!(r.status, Some(403));
        // A start time from a skewed clock is replaced by the time of receipt.
        assert_eq!(r.logged_at, received);
        // An outbound failure names the upstream service from its cluster.
        let failed = HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                upstream_cluster: "reviews.shop:9080".into(),
                response_flags: Some(ResponseFlags {
                    upstream_connection_failure: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 503 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = http_record(&failed, &reporter(), None, uuid::Uuid::nil(), received);
        assert_eq!(
            (r.outcome.as_str(), r.direction.as_str(), r.response_flags.as_str()),
            ("error", "outbound", "UF")
        );
        assert_eq!(r.destination_service.as_deref(), Some("reviews"));
        // A delayed success is a success; an injected abort is an error.
        let mut delayed = failed.clone();
        let common = delayed.common_properties.as_mut().unwrap();
        common.response_flags = Some(ResponseFlags { delay_injected: true, ..Default::default() });
        delayed.response.as_mut().unwrap().response_code =
            Some(envoy_types::pb::google::protobuf::UInt32Value { value: 200 });
        let r = http_record(&delayed, &reporter(), None, uuid::Uuid::nil(), received);
        assert_eq!((r.outcome.as_str(), r.response_flags.as_str()), ("sampled", "DI"));
        let mut aborted = delayed.clone();
        let common = aborted.common_properties.as_mut().unwrap();
        common.response_flags =
            Some(ResponseFlags { delay_injected: true, fault_injected: true, ..Default::default() });
        aborted.response.as_mut().unwrap().response_code =
            Some(envoy_types::pb::google::protobuf::UInt32Value { value: 200 });
        let r = http_record(&aborted, &reporter(), None, uuid::Uuid::nil(), received);
        assert_eq!((r.outcome.as_str(), r.response_flags.as_str()), ("error", "DI,FI"));
    }
}
