//! The agent's own metrics (Prometheus, served on the admin port's `/metrics`): requests,
//! latency and TCP connections by direction and peer service, and what the access log lost.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    /// The caller's service (inbound) or the destination's (outbound): services of the
    /// mesh only, so the cardinality is bounded by the mesh.
    peer_service: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
    peer_service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The agent's golden signals, by direction and peer service, and what its access log lost.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<DirectionLabels, Histogram>,
    connections: Family<DirectionLabels, Counter>,
    access_log_dropped: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trellis_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<DirectionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let connections = Family::<DirectionLabels, Counter>::default();
        registry.register("requests", "HTTP requests proxied, by response status class", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from a request to its response's headers",
            duration.clone(),
        );
        registry.register("tcp_connections", "TCP connections proxied", connections.clone());
        let access_log_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "access_log_dropped",
            "Access-log entries dropped: the queue was full, or the backlog for the control plane",
            access_log_dropped.clone(),
        );
        Metrics { registry: Arc::new(registry), requests, duration, connections, access_log_dropped }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One peer's request counters and latency, found once (for a connection) instead of being
/// looked up by their labels for every request.
pub struct PeerMetrics {
    requests: Family<RequestLabels, Counter>,
    labels: DirectionLabels,
    /// By status class, each made when the first response of its class is counted.
    by_class: [OnceLock<Counter>; 5],
    duration: Histogram,
}

impl PeerMetrics {
    pub fn request(&self, status: StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let counter = self.by_class[class].get_or_init(|| {
            let labels = RequestLabels {
                direction: self.labels.direction,
                peer_service: self.labels.peer_service.clone(),
                status_class: STATUS_CLASSES[class],
            };
            self.requests.get_or_create(&labels).clone()
        });
        counter.inc();
        self.duration.observe(took.as_secs_f64());
    }
}

/// Which way traffic goes through the agent.
pub fn direction(inbound: bool) -> &'static str {
    if inbound { "inbound" } else { "outbound" }
}

impl Metrics {
    /// The request metrics of one direction and peer service.
    pub fn peer(&self, inbound: bool, peer_service: &str) -> PeerMetrics {
        let labels = DirectionLabels { direction: direction(inbound), peer_service: peer_service.to_owned() };
        let duration = self.duration.get_or_create(&labels).clone();
        PeerMetrics { requests: self.requests.clone(), labels, by_class: Default::default(), duration }
    }

    pub fn connection(&self, inbound: bool, peer_service: &str) {
        let labels = DirectionLabels { direction: direction(inbound), peer_service: peer_service.to_owned() };
        self.connections.get_or_create(&labels).inc();
    }

    /// Counts access-log entries dropped for `reason` (`queue_full`, `backlog_full`).
    pub fn access_log_dropped(&self, reason: &'static str, n: u64) {
        self.access_log_dropped.get_or_create(&ReasonLabels { reason }).inc_by(n);
    }

    pub(crate) fn encode(&self) -> String {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry).expect("writing to a String");
        body
    }
}
