//! The xDS server's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use trellis_model::telemetry::DropReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `DropReason::as_str`.
    pub reason: &'static str,
}

/// Counters shared by every stream.
#[derive(Clone)]
pub struct XdsMetrics {
    pub streams: Gauge,
    pub streams_refused: Counter,
    pub responses: Family<TypeLabel, Counter>,
    pub acks: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub slow_streams_closed: Counter,
    pub convergence: Histogram,
    pub svids_issued: Counter,
    /// Edge increments queued for storage.
    pub telemetry_edges: Counter,
    /// Access-log entries queued for storage.
    pub telemetry_log_entries: Counter,
    /// Telemetry items (families, edges or entries) not stored, by reason.
    pub telemetry_dropped: Family<DropLabel, Counter>,
    pub telemetry_streams_refused: Counter,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        Self {
            streams: Gauge::default(),
            streams_refused: Counter::default(),
            responses: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            slow_streams_closed: Counter::default(),
            convergence: Histogram::new(buckets),
            svids_issued: Counter::default(),
            telemetry_edges: Counter::default(),
            telemetry_log_entries: Counter::default(),
            telemetry_dropped: Family::default(),
            telemetry_streams_refused: Counter::default(),
        }
    }
}

impl XdsMetrics {
    /// Counts `items` of telemetry dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, items: usize) {
        if items > 0 {
            self.telemetry_dropped.get_or_create(&DropLabel { reason: reason.as_str() }).inc_by(items as u64);
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("trellis_xds_streams", "Open ADS streams", self.streams.clone());
        registry.register(
            "trellis_xds_streams_refused",
            "ADS streams refused (unauthenticated, bad node, node swap)",
            self.streams_refused.clone(),
        );
        registry.register("trellis_xds_responses", "xDS responses sent", self.responses.clone());
        registry.register("trellis_xds_acks", "xDS responses accepted by clients", self.acks.clone());
        registry.register("trellis_xds_nacks", "xDS responses rejected by clients", self.nacks.clone());
        registry.register(
            "trellis_xds_slow_streams_closed",
            "Streams closed because they did not take a response within the send timeout",
            self.slow_streams_closed.clone(),
        );
        registry.register(
            "trellis_xds_convergence_seconds",
            "Time from a mesh revision's commit to a client's ACK of it",
            self.convergence.clone(),
        );
        registry.register(
            "trellis_telemetry_edges",
            "Edge increments received from proxies and queued for storage",
            self.telemetry_edges.clone(),
        );
        registry.register(
            "trellis_telemetry_log_entries",
            "Access-log entries received from proxies and queued for storage",
            self.telemetry_log_entries.clone(),
        );
        registry.register(
            "trellis_telemetry_dropped",
            "Telemetry items not stored, by reason (rate_limited, series_budget, log_budget, too_large, too_many_series, queue_full, write_failed)",
            self.telemetry_dropped.clone(),
        );
        registry.register(
            "trellis_telemetry_streams_refused",
            "Telemetry streams refused (no or unknown client certificate)",
            self.telemetry_streams_refused.clone(),
        );
    }
}
