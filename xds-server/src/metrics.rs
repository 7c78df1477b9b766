//! The xDS server's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
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
        }
    }
}

impl XdsMetrics {
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
    }
}
