//! Golden metrics pushed to the control plane through Envoy's own MetricsService, in Envoy's
//! stat names (`cluster.<name>.upstream_rq_<class>xx`, `cluster.<name>.upstream_rq_time` in the
//! control plane's latency buckets), so that one ingestion path serves Envoy and the agent.
//! Values are cumulative since the agent started, as Envoy's are: the control plane counts
//! what grew between two reports of one stream. Beside them, each report carries what the
//! agent sees of every mesh cluster's endpoints now (ejected by outlier detection, failing
//! health checks) as Envoy's cluster gauges (`contract::cluster_gauge`), which the control
//! plane keeps as the latest values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType,
};
use rand::Rng;
use trellis_model::contract::cluster_gauge;
use trellis_model::telemetry::{LATENCY_BUCKETS, Membership, bucket_of_ms, bucket_upper_bounds_ms};

use crate::control::ControlPlane;
use crate::identity::Identity;

/// Most clusters counted: the mesh's configuration names them, but a bound keeps a flood of
/// clusters from growing the agent's memory.
const MAX_CLUSTERS: usize = 10_000;

/// Requests to one upstream cluster since the agent started.
#[derive(Debug, Clone, PartialEq)]
struct ClusterStats {
    /// By response class: 1xx … 5xx (a request without a response counts as 5xx).
    by_class: [u64; 5],
    /// By latency bucket (not cumulative).
    latency: Vec<u64>,
    sum_ms: f64,
}

impl ClusterStats {
    fn new() -> Self {
        ClusterStats { by_class: [0; 5], latency: vec![0; LATENCY_BUCKETS], sum_ms: 0.0 }
    }

    /// Counts one request of response `class` (1 … 5) that took `ms`.
    fn add(&mut self, class: usize, ms: f64) {
        self.by_class[class - 1] += 1;
        self.latency[bucket_of_ms(ms)] += 1;
        self.sum_ms += ms;
    }
}

/// What the agent's upstream requests came to, per cluster.
#[derive(Debug, Default)]
pub struct Upstreams {
    clusters: Mutex<HashMap<String, ClusterStats>>,
}

impl Upstreams {
    /// Counts one upstream request: its status (None: no response) and time to response.
    pub fn record(&self, cluster: &str, status: Option<u16>, elapsed: Duration) {
        let class = status.map_or(5, |s| usize::from(s / 100)).clamp(1, 5);
        let ms = elapsed.as_secs_f64() * 1e3;
        let mut clusters = self.clusters.lock().expect("not poisoned");
        // Per request one lookup; the cluster's name is copied only the first time it is seen.
        if let Some(stats) = clusters.get_mut(cluster) {
            stats.add(class, ms);
        } else if clusters.len() < MAX_CLUSTERS {
            let mut stats = ClusterStats::new();
            stats.add(class, ms);
            clusters.insert(cluster.to_owned(), stats);
        }
    }

    /// Every cluster's figures as Envoy reports them.
    pub fn families(&self) -> Vec<MetricFamily> {
        let clusters = self.clusters.lock().expect("not poisoned").clone();
        let bounds = bucket_upper_bounds_ms();
        let mut out = Vec::with_capacity(clusters.len() * 6);
        for (name, stats) in clusters {
            for (i, count) in stats.by_class.iter().enumerate() {
                out.push(family(
                    format!("cluster.{name}.upstream_rq_{}xx", i + 1),
                    MetricType::Counter,
                    Metric {
                        counter: Some(Counter { value: Some(*count as f64), ..Default::default() }),
                        ..Default::default()
                    },
                ));
            }
            let mut cumulative = 0;
            let bucket = bounds
                .iter()
                .zip(&stats.latency)
                .map(|(bound, n)| {
                    cumulative += n;
                    Bucket {
                        upper_bound: Some(*bound),
                        cumulative_count: Some(cumulative),
                        ..Default::default()
                    }
                })
                .collect();
            let histogram = Histogram {
                sample_count: Some(stats.by_class.iter().sum()),
                sample_sum: Some(stats.sum_ms),
                bucket,
                ..Default::default()
            };
            out.push(family(
                format!("cluster.{name}.upstream_rq_time"),
                MetricType::Histogram,
                Metric { histogram: Some(histogram), ..Default::default() },
            ));
        }
        out
    }
}

/// What the agent sees of its mesh clusters' endpoints, by cluster name.
pub type Memberships = Arc<dyn Fn() -> Vec<(String, Membership)> + Send + Sync>;

/// Each cluster's endpoints as Envoy's cluster gauges (at most [`MAX_CLUSTERS`] clusters).
pub fn membership_families(memberships: &[(String, Membership)]) -> Vec<MetricFamily> {
    let gauge = |cluster: &str, name: &str, value: u64| {
        family(
            format!("cluster.{cluster}.{name}"),
            MetricType::Gauge,
            Metric { gauge: Some(Gauge { value: Some(value as f64) }), ..Default::default() },
        )
    };
    memberships
        .iter()
        .take(MAX_CLUSTERS)
        .flat_map(|(cluster, m)| {
            [
                gauge(cluster, cluster_gauge::MEMBERSHIP_TOTAL, m.total),
                gauge(cluster, cluster_gauge::MEMBERSHIP_HEALTHY, m.healthy),
                gauge(cluster, cluster_gauge::MEMBERSHIP_DEGRADED, m.degraded),
                gauge(cluster, cluster_gauge::EJECTIONS_ACTIVE, m.ejected),
            ]
        })
        .collect()
}

fn family(name: String, kind: MetricType, metric: Metric) -> MetricFamily {
    MetricFamily { name: Some(name), r#type: Some(kind as i32), metric: vec![metric], ..Default::default() }
}

/// Reports every `every` over one long-lived stream, reconnecting with jittered backoff. The
/// first report of each stream is sent at once: it is the baseline the next one counts from.
pub async fn push_forever(
    upstreams: Arc<Upstreams>,
    memberships: Memberships,
    cp: ControlPlane,
    identity: Arc<Identity>,
    node: Node,
    every: Duration,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match push(&upstreams, &memberships, &cp, &identity, &node, every).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "telemetry stream ended"),
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One stream: reports until the control plane ends it.
async fn push(
    upstreams: &Upstreams,
    memberships: &Memberships,
    cp: &ControlPlane,
    identity: &Identity,
    node: &Node,
    every: Duration,
) -> anyhow::Result<()> {
    let channel = cp.channel(Some(&identity.current()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut call = tokio::spawn(async move {
        MetricsServiceClient::new(channel)
            .stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let mut identifier = Some(Identifier { node: Some(node.clone()) });
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut envoy_metrics = upstreams.families();
                envoy_metrics.extend(membership_families(&memberships()));
                let message = StreamMetricsMessage { identifier: identifier.take(), envoy_metrics };
                if tx.send(message).await.is_err() {
                    break;
                }
            }
            ended = &mut call => {
                ended??;
                return Ok(());
            }
        }
    }
    call.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_cumulative_per_cluster_in_envoys_names() {
        let u = Upstreams::default();
        u.record("reviews.shop:9080~version=v1", Some(200), Duration::from_millis(3));
        u.record("reviews.shop:9080~version=v1", Some(503), Duration::from_millis(40));
        u.record("reviews.shop:9080~version=v1", None, Duration::from_secs(2));
        let families = u.families();
        let counter = |name: &str| {
            families
                .iter()
                .find(|f| f.name.as_deref() == Some(name))
                .and_then(|f| f.metric[0].counter.as_ref()?.value)
        };
        assert_eq!(counter("cluster.reviews.shop:9080~version=v1.upstream_rq_2xx"), Some(1.0));
        assert_eq!(counter("cluster.reviews.shop:9080~version=v1.upstream_rq_5xx"), Some(2.0));
        let time = families
            .iter()
            .find(|f| f.name.as_deref() == Some("cluster.reviews.shop:9080~version=v1.upstream_rq_time"))
            .unwrap();
        let h = time.metric[0].histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, Some(3));
        let counts: Vec<u64> = h.bucket.iter().map(|b| b.cumulative_count.unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        assert_eq!(counts.last(), Some(&3));
        let at = |ms: f64| {
            h.bucket.iter().find(|b| b.upper_bound.unwrap() >= ms).unwrap().cumulative_count.unwrap()
        };
        assert_eq!((at(3.0), at(40.0), at(2_000.0)), (1, 2, 3));
        u.record("reviews.shop:9080~version=v1", Some(200), Duration::from_millis(1));
        let again = u.families();
        let ok = again
            .iter()
            .find(|f| f.name.as_deref() == Some("cluster.reviews.shop:9080~version=v1.upstream_rq_2xx"))
            .unwrap();
        assert_eq!(ok.metric[0].counter.as_ref().unwrap().value, Some(2.0), "totals since start");
    }

    #[test]
    fn endpoints_seen_are_reported_as_envoys_cluster_gauges() {
        let seen = Membership { total: 3, healthy: 1, degraded: 0, ejected: 1 };
        let families = membership_families(&[("reviews.shop:9080".into(), seen)]);
        let gauge = |name: &str| {
            let f = families.iter().find(|f| f.name.as_deref() == Some(name)).unwrap();
            assert_eq!(f.r#type, Some(MetricType::Gauge as i32));
            f.metric[0].gauge.as_ref().unwrap().value.unwrap()
        };
        assert_eq!(gauge("cluster.reviews.shop:9080.membership_total"), 3.0);
        assert_eq!(gauge("cluster.reviews.shop:9080.membership_healthy"), 1.0);
        assert_eq!(gauge("cluster.reviews.shop:9080.membership_degraded"), 0.0);
        assert_eq!(gauge("cluster.reviews.shop:9080.outlier_detection.ejections_active"), 1.0);
    }
}
