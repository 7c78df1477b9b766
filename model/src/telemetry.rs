//! Telemetry's pure core: the edge a request travels, its response class, and latency as
//! fixed log-scale bucket counts.
//!
//! Every proxy and every time bucket uses the same bucket bounds, so histograms merge exactly
//! by adding counts (across proxies, across 10 s buckets into minutes and hours) and a
//! quantile of the merged histogram is as good as one of a single histogram.

use std::fmt;

use crate::{ResourceName, Tags};

/// Bucket bounds grow by 2^(1/4) per bucket: a quantile estimate is off by at most
/// [`QUANTILE_RELATIVE_ERROR`] of the true value (see [`LatencyHistogram::quantile_ms`]).
const STEPS_PER_DOUBLING: i32 = 4;
/// The first bucket's upper bound is 2^(FIRST_EXPONENT / 4) ms = 0.25 ms.
const FIRST_EXPONENT: i32 = -8;
/// Buckets with a finite upper bound: from 0.25 ms to 2^15.75 ms ≈ 55 s.
const FINITE_BUCKETS: usize = 72;
/// Buckets in every histogram: the finite ones and one for everything slower.
pub const LATENCY_BUCKETS: usize = FINITE_BUCKETS + 1;
/// Largest relative error of a quantile estimate for a value within the finite buckets:
/// 2^(1/8) − 1 (the estimate is a bucket's geometric midpoint).
pub const QUANTILE_RELATIVE_ERROR: f64 = 0.090_507_732_665_257_66;

/// The upper bound (inclusive, in milliseconds) of finite bucket `i`; Prometheus's `le`.
pub fn bucket_upper_bound_ms(i: usize) -> f64 {
    debug_assert!(i < FINITE_BUCKETS);
    2f64.powf(f64::from(FIRST_EXPONENT + i as i32) / f64::from(STEPS_PER_DOUBLING))
}

/// Every finite upper bound, smallest first, computed once.
static BOUNDS: std::sync::LazyLock<[f64; FINITE_BUCKETS]> =
    std::sync::LazyLock::new(|| std::array::from_fn(bucket_upper_bound_ms));

/// Every finite upper bound, smallest first: what a proxy configures its histogram with so
/// that its buckets are exactly ours.
pub fn bucket_upper_bounds_ms() -> Vec<f64> {
    BOUNDS.to_vec()
}

/// The bucket a duration of `ms` milliseconds falls in (`ms ≤ upper bound`): the first whose
/// bound is not below it (proxies call this for every request).
pub fn bucket_of_ms(ms: f64) -> usize {
    if ms.is_nan() {
        return 0;
    }
    BOUNDS.partition_point(|bound| ms > *bound)
}

/// Latency as counts per fixed bucket. Merging is adding; nothing is ever interpolated away.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: [0; LATENCY_BUCKETS] }
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero: Vec<(usize, u64)> =
            self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
        f.debug_struct("LatencyHistogram").field("nonzero", &nonzero).finish()
    }
}

/// Why stored counts were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    #[error("a packed latency histogram is 1 to {PACKED_DIGITS} decimal digits")]
    NotPacked,
}

/// Decimal digits of one bucket in the packed form: every count a bucket holds (a `u64`) is
/// below 10^20, and 20 digits are five of PostgreSQL's base-10,000 numeric digits.
const DIGITS_PER_BUCKET: usize = 20;
/// Digits of the largest packed histogram.
const PACKED_DIGITS: usize = DIGITS_PER_BUCKET * LATENCY_BUCKETS;

impl LatencyHistogram {
    /// Records one observation.
    pub fn record_ms(&mut self, ms: f64) {
        self.add_to_bucket(bucket_of_ms(ms), 1);
    }

    /// Adds `n` observations to bucket `i` (saturating: counts never wrap).
    pub fn add_to_bucket(&mut self, i: usize, n: u64) {
        let slot = &mut self.counts[i.min(LATENCY_BUCKETS - 1)];
        *slot = slot.saturating_add(n);
    }

    /// Adds another histogram's counts: the exact merge.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Observations in all buckets.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Is there no observation at all?
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// The counts, bucket by bucket.
    pub fn counts(&self) -> &[u64; LATENCY_BUCKETS] {
        &self.counts
    }

    /// The histogram as one non-negative integer in decimal, as the store keeps it: bucket
    /// `i`'s count in the 20 digits from 20·`i` counted from the right. Adding two packed
    /// histograms adds them bucket by bucket (no bucket's count in a window reaches 10^20, so
    /// nothing carries into the next), which lets the store merge with one numeric addition
    /// per row rather than 73.
    pub fn to_packed(&self) -> String {
        let Some(highest) = self.counts.iter().rposition(|c| *c > 0) else {
            return "0".to_owned();
        };
        let mut packed = String::with_capacity(DIGITS_PER_BUCKET * (highest + 1));
        packed.push_str(&self.counts[highest].to_string());
        for c in self.counts[..highest].iter().rev() {
            packed.push_str(&format!("{c:0width$}", width = DIGITS_PER_BUCKET));
        }
        packed
    }

    /// Reads [`to_packed`](Self::to_packed)'s form (or a sum of them) back; refuses anything
    /// but decimal digits, or more than 73 buckets of them. A bucket past `u64::MAX` (only a
    /// sum could make one) saturates, as [`merge`](Self::merge) does.
    pub fn from_packed(packed: &str) -> Result<Self, HistogramError> {
        let digits = packed.as_bytes();
        if digits.is_empty() || digits.len() > PACKED_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
            return Err(HistogramError::NotPacked);
        }
        let mut h = Self::default();
        for (slot, field) in h.counts.iter_mut().zip(digits.rchunks(DIGITS_PER_BUCKET)) {
            // At most 20 ASCII digits: fits a u128, and every digit was checked above.
            let n = field.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
            *slot = u64::try_from(n).unwrap_or(u64::MAX);
        }
        Ok(h)
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds, or None without observations.
    ///
    /// The estimate is the geometric midpoint of the bucket holding the observation of rank
    /// ⌈q·n⌉; for a true value inside the finite buckets it is within
    /// [`QUANTILE_RELATIVE_ERROR`] (≈ 9.05 %) of it. The first bucket answers its upper bound
    /// (0.25 ms), the last (over ≈ 55 s) its lower bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return Some(match i {
                    0 => bucket_upper_bound_ms(0),
                    i if i == FINITE_BUCKETS => bucket_upper_bound_ms(FINITE_BUCKETS - 1),
                    i => (bucket_upper_bound_ms(i - 1) * bucket_upper_bound_ms(i)).sqrt(),
                });
            }
        }
        None
    }

    /// A histogram reported with other bounds (Prometheus style: cumulative counts per
    /// inclusive upper bound, in milliseconds, then the total): each bound's count goes to
    /// our bucket holding that bound, which is exact when the sender uses our bounds and
    /// never makes a latency look faster otherwise. Counts that fall (a counter reset in a
    /// bad report) add nothing.
    pub fn from_cumulative(bounds: &[(f64, u64)], total: u64) -> Self {
        let mut h = Self::default();
        let mut below = 0u64;
        for (bound, cumulative) in bounds {
            let n = cumulative.saturating_sub(below);
            below = below.max(*cumulative);
            if n > 0 {
                h.add_to_bucket(bucket_of_ms(*bound), n);
            }
        }
        h.add_to_bucket(LATENCY_BUCKETS - 1, total.saturating_sub(below));
        h
    }

    /// The counts added since `earlier` (a cumulative report minus the previous one); a
    /// bucket that went down means the sender restarted its counters, so its whole count
    /// is new.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut d = Self::default();
        let reset = self.counts.iter().zip(earlier.counts.iter()).any(|(now, before)| now < before);
        for (i, (now, before)) in self.counts.iter().zip(earlier.counts.iter()).enumerate() {
            d.counts[i] = if reset { *now } else { now - before };
        }
        d
    }
}

/// The class of a response, as the golden metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResponseClass {
    /// 1xx.
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx (the caller's mistake; counts as success for the server, like Linkerd).
    ClientError,
    /// 5xx, or no response at all (reset, timeout, refused).
    ServerError,
    /// Figures a sender cannot split by class: TCP connections and bytes, and latency from
    /// a proxy that reports it per upstream rather than per class.
    Unclassified,
}

impl ResponseClass {
    /// The class of an HTTP status; 0 (no response) is a server error.
    pub fn of_status(status: u32) -> ResponseClass {
        match status {
            100..=199 => ResponseClass::Informational,
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirection,
            400..=499 => ResponseClass::ClientError,
            _ => ResponseClass::ServerError,
        }
    }

    /// The class of a status class digit (`2` for 2xx), as proxies report them.
    pub fn of_class_digit(digit: u32) -> Option<ResponseClass> {
        match digit {
            1 => Some(ResponseClass::Informational),
            2 => Some(ResponseClass::Success),
            3 => Some(ResponseClass::Redirection),
            4 => Some(ResponseClass::ClientError),
            5 => Some(ResponseClass::ServerError),
            _ => None,
        }
    }

    /// Does a request of this class count as a success (everything but a server error)?
    pub fn is_success(self) -> bool {
        !matches!(self, ResponseClass::ServerError)
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Informational => "1xx",
            ResponseClass::Success => "2xx",
            ResponseClass::Redirection => "3xx",
            ResponseClass::ClientError => "4xx",
            ResponseClass::ServerError => "5xx",
            ResponseClass::Unclassified => "-",
        }
    }

    /// Reads the stored form back.
    pub fn parse(s: &str) -> Option<ResponseClass> {
        [
            ResponseClass::Informational,
            ResponseClass::Success,
            ResponseClass::Redirection,
            ResponseClass::ClientError,
            ResponseClass::ServerError,
            ResponseClass::Unclassified,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ResponseClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The edge a request or connection travels within one mesh: who called, whom (and which
/// subset of its instances), by which route (None when the sender cannot tell), and how it
/// ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub source: ResourceName,
    pub destination: ResourceName,
    /// The subset a route sent the call to (`version=v2` of a weighted backend); no tags for
    /// the whole service.
    pub destination_subset: Tags,
    pub route: Option<ResourceName>,
    pub class: ResponseClass,
}

/// What crossed one edge in one time bucket. Adding two is merging them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeCounts {
    pub requests: u64,
    pub successes: u64,
    pub bytes: u64,
    pub latency: LatencyHistogram,
    pub tcp_connections: u64,
    pub tcp_bytes: u64,
}

impl EdgeCounts {
    /// Adds another's figures.
    pub fn merge(&mut self, other: &EdgeCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.successes = self.successes.saturating_add(other.successes);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.latency.merge(&other.latency);
        self.tcp_connections = self.tcp_connections.saturating_add(other.tcp_connections);
        self.tcp_bytes = self.tcp_bytes.saturating_add(other.tcp_bytes);
    }

    /// Nothing to record?
    pub fn is_empty(&self) -> bool {
        *self == EdgeCounts::default()
    }
}

/// Golden metrics of a service or an edge over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenMetrics {
    pub requests: u64,
    pub successes: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// Successes / requests; None without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub tcp_connections: u64,
    pub bytes: u64,
}

impl GoldenMetrics {
    /// The figures of `counts` (merged over the window) for a window of `window_secs`.
    pub fn of(counts: &EdgeCounts, window_secs: f64) -> GoldenMetrics {
        GoldenMetrics {
            requests: counts.requests,
            successes: counts.successes,
            rps: if window_secs > 0.0 { counts.requests as f64 / window_secs } else { 0.0 },
            success_rate: (counts.requests > 0).then(|| counts.successes as f64 / counts.requests as f64),
            p50_ms: counts.latency.quantile_ms(0.50),
            p95_ms: counts.latency.quantile_ms(0.95),
            p99_ms: counts.latency.quantile_ms(0.99),
            tcp_connections: counts.tcp_connections,
            bytes: counts.bytes.saturating_add(counts.tcp_bytes),
        }
    }
}

/// The width of a stored time bucket: raw 10 s buckets and their rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    TenSeconds,
    Minute,
    TenMinutes,
    Hour,
}

impl Resolution {
    /// Finest first.
    pub const ALL: [Resolution; 4] =
        [Resolution::TenSeconds, Resolution::Minute, Resolution::TenMinutes, Resolution::Hour];

    /// The bucket width in seconds (the stored `resolution_s`).
    pub fn seconds(self) -> i64 {
        match self {
            Resolution::TenSeconds => 10,
            Resolution::Minute => 60,
            Resolution::TenMinutes => 600,
            Resolution::Hour => 3600,
        }
    }

    /// The start (Unix seconds) of the bucket holding `unix_secs`.
    pub fn bucket_start(self, unix_secs: i64) -> i64 {
        unix_secs.div_euclid(self.seconds()) * self.seconds()
    }
}

/// How far the leader has rolled the 10 s buckets up (Unix seconds): minute, 10-minute and
/// hour buckets that start before these instants are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledUp {
    pub minute: i64,
    pub ten_minutes: i64,
    pub hour: i64,
}

/// One piece of a read: the rows of `resolution` whose bucket starts in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSpan {
    pub resolution: Resolution,
    pub from: i64,
    pub to: i64,
}

/// The stored rows that add up to the buckets starting in `[from, to)` (Unix seconds): the
/// final hours inside it, then final 10-minute buckets, final minutes, and 10 s buckets for
/// the rest, so that an hour reads about 20 rows per edge rather than 360 and the figures
/// stay exact (a rollup is the sum of what it covers). Spans are in time order and do not
/// overlap: at most seven (coarser in the middle, finer at each end).
pub fn read_plan(from: i64, to: i64, rolled_up: RolledUp) -> Vec<ReadSpan> {
    fn cover(from: i64, to: i64, coarser: &[(Resolution, i64)], out: &mut Vec<ReadSpan>) {
        if from >= to {
            return;
        }
        let Some((&(resolution, final_until), finer)) = coarser.split_first() else {
            out.push(ReadSpan { resolution: Resolution::TenSeconds, from, to });
            return;
        };
        let width = resolution.seconds();
        let start = resolution.bucket_start(from + width - 1);
        let end = resolution.bucket_start(to).min(resolution.bucket_start(final_until));
        if start < end {
            cover(from, start, finer, out);
            out.push(ReadSpan { resolution, from: start, to: end });
            cover(end, to, finer, out);
        } else {
            cover(from, to, finer, out);
        }
    }
    let mut spans = Vec::new();
    cover(
        from,
        to,
        &[
            (Resolution::Hour, rolled_up.hour),
            (Resolution::TenMinutes, rolled_up.ten_minutes),
            (Resolution::Minute, rolled_up.minute),
        ],
        &mut spans,
    );
    spans
}

/// What crossed from one service to another over a window, every route, class and subset
/// merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTotal {
    pub source: String,
    pub destination: String,
    pub counts: EdgeCounts,
    /// The requests that went to each named subset of the destination, in subset order
    /// (none when every call went to the whole service).
    pub subsets: Vec<SubsetRequests>,
}

/// An edge's requests to one subset of its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetRequests {
    pub subset: Tags,
    pub requests: u64,
}

impl EdgeTotal {
    /// One total per (source, destination) of per-subset figures sorted by source and
    /// destination: the counts merged, each named subset's requests kept.
    pub fn merge_subsets(
        rows: impl IntoIterator<Item = (String, String, Tags, EdgeCounts)>,
    ) -> Vec<EdgeTotal> {
        let mut out: Vec<EdgeTotal> = Vec::new();
        for (source, destination, subset, counts) in rows {
            let same = out.last().is_some_and(|t| t.source == source && t.destination == destination);
            if !same {
                out.push(EdgeTotal {
                    source,
                    destination,
                    counts: EdgeCounts::default(),
                    subsets: Vec::new(),
                });
            }
            let total = out.last_mut().expect("pushed above");
            total.counts.merge(&counts);
            if !subset.is_empty() {
                total.subsets.push(SubsetRequests { subset, requests: counts.requests });
            }
        }
        out
    }
}

/// An edge's requests to one subset, and their share of the edge's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetShare {
    pub subset: Tags,
    pub requests: u64,
    /// Of every request on the edge; None without requests.
    pub share: Option<f64>,
}

/// One edge of a mesh's topology.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyEdge {
    pub source: String,
    pub destination: String,
    pub metrics: GoldenMetrics,
    /// How the edge's requests split between subsets of the destination (e.g. versions).
    pub subsets: Vec<SubsetShare>,
}

/// Who calls whom in a mesh over a window: the services that carried traffic, and the edges.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Every service at either end of an edge, sorted.
    pub nodes: Vec<String>,
    pub edges: Vec<TopologyEdge>,
}

impl Topology {
    /// The topology of the edge totals of a window of `window_secs`.
    pub fn of(totals: &[EdgeTotal], window_secs: f64) -> Topology {
        let mut nodes: Vec<String> =
            totals.iter().flat_map(|t| [t.source.clone(), t.destination.clone()]).collect();
        nodes.sort();
        nodes.dedup();
        let edges = totals
            .iter()
            .map(|t| TopologyEdge {
                source: t.source.clone(),
                destination: t.destination.clone(),
                metrics: GoldenMetrics::of(&t.counts, window_secs),
                subsets: t
                    .subsets
                    .iter()
                    .map(|s| SubsetShare {
                        subset: s.subset.clone(),
                        requests: s.requests,
                        share: (t.counts.requests > 0).then(|| s.requests as f64 / t.counts.requests as f64),
                    })
                    .collect(),
            })
            .collect();
        Topology { nodes, edges }
    }
}

/// A service's golden metrics: every call it received (the edges into it, merged).
pub fn service_metrics(totals: &[EdgeTotal], service: &str, window_secs: f64) -> GoldenMetrics {
    let mut inbound = EdgeCounts::default();
    totals.iter().filter(|t| t.destination == service).for_each(|t| inbound.merge(&t.counts));
    GoldenMetrics::of(&inbound, window_secs)
}

/// Why telemetry a proxy sent was not stored: the label of the platform's
/// `trellis_telemetry_dropped_total`, what the store keeps per tenant (`telemetry_drops`,
/// whose CHECK lists the same values) and what a tenant's telemetry status shows.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The organization sent more than its rate.
    RateLimited,
    /// A new edge series past the organization's budget for the bucket.
    SeriesBudget,
    /// Access-log entries past the organization's budget for the bucket.
    LogBudget,
    /// A message held more families or entries than allowed (the stream was ended).
    TooLarge,
    /// A stream reported more series than it may keep a baseline for.
    TooManySeries,
    /// The writer lagged and its queue was full.
    QueueFull,
    /// The database refused the rows.
    WriteFailed,
}

impl DropReason {
    /// Every reason, in the order they are shown.
    pub const ALL: [DropReason; 7] = [
        DropReason::RateLimited,
        DropReason::SeriesBudget,
        DropReason::LogBudget,
        DropReason::TooLarge,
        DropReason::TooManySeries,
        DropReason::QueueFull,
        DropReason::WriteFailed,
    ];

    /// The label value, also what the store keeps and the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::SeriesBudget => "series_budget",
            DropReason::LogBudget => "log_budget",
            DropReason::TooLarge => "too_large",
            DropReason::TooManySeries => "too_many_series",
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
        }
    }
}

/// What one proxy sees of one upstream cluster's endpoints: the latest values of its cluster
/// gauges (`contract::cluster_gauge`), not sums. A proxy that never ejected keeps no
/// ejection gauge; that reads as none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub total: u64,
    pub healthy: u64,
    pub degraded: u64,
    /// Ejected by outlier detection (Envoy counts them out of `healthy` too).
    pub ejected: u64,
}

impl Membership {
    /// Endpoints the proxy does not send to: failing active health checks or ejected.
    pub fn unhealthy(&self) -> u64 {
        self.total.saturating_sub(self.healthy).saturating_sub(self.degraded)
    }

    /// Any endpoint ejected or unhealthy.
    pub fn is_impaired(&self) -> bool {
        self.ejected > 0 || self.unhealthy() > 0
    }
}

/// How old a proxy's endpoint report may be for service health to show it: six of Envoy's
/// 10 s stats flushes. Older reports (a proxy gone quiet) are not shown.
pub const ENDPOINT_REPORT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the properties below run over many values without a
    /// test-only dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A latency between 0.3 ms and 50 s, log-uniform.
        fn latency_ms(&mut self) -> f64 {
            let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
            0.3 * (50_000.0f64 / 0.3).powf(u)
        }
    }

    #[test]
    fn bounds_grow_by_a_fourth_root_of_two_and_every_value_lands_in_its_bucket() {
        assert_eq!(bucket_upper_bound_ms(0), 0.25);
        assert_eq!(bucket_upper_bound_ms(8), 1.0);
        assert_eq!(bucket_upper_bound_ms(48), 1024.0);
        for i in 0..FINITE_BUCKETS {
            let b = bucket_upper_bound_ms(i);
            // A bound itself belongs to its bucket (`le`), the next value up to the next.
            assert_eq!(bucket_of_ms(b), i, "bound {b}");
            assert_eq!(bucket_of_ms(b * (1.0 + 1e-12)), i + 1, "just above {b}");
        }
        assert_eq!(bucket_of_ms(0.0), 0);
        assert_eq!(bucket_of_ms(-1.0), 0);
        assert_eq!(bucket_of_ms(f64::NAN), 0);
        assert_eq!(bucket_of_ms(1e12), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_of_ms(f64::INFINITY), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn a_quantile_is_within_the_documented_relative_error_of_the_true_value() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let n = 1 + (rng.next() % 500) as usize;
            let mut values: Vec<f64> = (0..n).map(|_| rng.latency_ms()).collect();
            let mut h = LatencyHistogram::default();
            values.iter().for_each(|v| h.record_ms(*v));
            values.sort_by(f64::total_cmp);
            for q in [0.5, 0.95, 0.99, 1.0] {
                let exact = values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
                let estimate = h.quantile_ms(q).unwrap();
                let error = (estimate - exact).abs() / exact;
                assert!(error <= QUANTILE_RELATIVE_ERROR + 1e-12, "q{q}: {estimate} vs {exact} ({error})");
            }
        }
        assert!((QUANTILE_RELATIVE_ERROR - (2f64.powf(0.125) - 1.0)).abs() < 1e-15);
    }

    #[test]
    fn merging_is_adding_so_order_and_grouping_do_not_matter() {
        let mut rng = XorShift(42);
        let parts: Vec<LatencyHistogram> = (0..20)
            .map(|_| {
                let mut h = LatencyHistogram::default();
                (0..(rng.next() % 100)).for_each(|_| h.record_ms(rng.latency_ms()));
                h
            })
            .collect();
        let mut forward = LatencyHistogram::default();
        parts.iter().for_each(|p| forward.merge(p));
        let mut backward = LatencyHistogram::default();
        parts.iter().rev().for_each(|p| backward.merge(p));
        // Grouped as rollups do: pairs first (10 s → 1 min), then the pairs.
        let mut grouped = LatencyHistogram::default();
        for pair in parts.chunks(2) {
            let mut g = LatencyHistogram::default();
            pair.iter().for_each(|p| g.merge(p));
            grouped.merge(&g);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward, grouped);
        assert_eq!(forward.total(), parts.iter().map(LatencyHistogram::total).sum::<u64>());
        // And the merged histogram is the histogram of all the values at once.
        let mut rng = XorShift(7);
        let values: Vec<f64> = (0..1000).map(|_| rng.latency_ms()).collect();
        let mut whole = LatencyHistogram::default();
        values.iter().for_each(|v| whole.record_ms(*v));
        let mut halves = [LatencyHistogram::default(), LatencyHistogram::default()];
        values.iter().enumerate().for_each(|(i, v)| halves[i % 2].record_ms(*v));
        halves[0].merge(&halves[1].clone());
        assert_eq!(halves[0], whole);
    }

    /// Adds two non-negative decimal integers digit by digit, as PostgreSQL's numeric does.
    fn add_decimals(a: &str, b: &str) -> String {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut sum, mut carry) = (Vec::new(), 0);
        for i in 0..a.len().max(b.len()) {
            let digit = |d: &[u8]| d.len().checked_sub(i + 1).map_or(0, |j| d[j] - b'0');
            let s = digit(a) + digit(b) + carry;
            sum.push(b'0' + s % 10);
            carry = s / 10;
        }
        if carry > 0 {
            sum.push(b'0' + carry);
        }
        let sum: String = sum.iter().rev().map(|d| char::from(*d)).collect();
        sum.trim_start_matches('0').to_owned()
    }

    #[test]
    fn packed_histograms_round_trip_and_adding_them_is_merging() {
        let mut rng = XorShift(0x5eed);
        let mut histogram = || {
            let mut h = LatencyHistogram::default();
            (0..(rng.next() % 300)).for_each(|_| h.record_ms(rng.latency_ms()));
            h.add_to_bucket((rng.next() % 73) as usize, rng.next() >> 4);
            h
        };
        let parts: Vec<LatencyHistogram> = (0..20).map(|_| histogram()).collect();
        let mut merged = LatencyHistogram::default();
        let mut packed_sum = "0".to_owned();
        for p in &parts {
            assert_eq!(LatencyHistogram::from_packed(&p.to_packed()).unwrap(), *p);
            merged.merge(p);
            packed_sum = add_decimals(&packed_sum, &p.to_packed());
        }
        assert_eq!(LatencyHistogram::from_packed(&packed_sum).unwrap(), merged, "a sum unpacks to the merge");
        // The first and the last bucket, and the largest count, keep their places.
        let mut edges = LatencyHistogram::default();
        edges.add_to_bucket(0, u64::MAX);
        edges.add_to_bucket(LATENCY_BUCKETS - 1, 7);
        let packed = edges.to_packed();
        assert_eq!(packed.len(), 20 * LATENCY_BUCKETS - 19);
        assert!(packed.starts_with('7') && packed.ends_with(&u64::MAX.to_string()), "{packed}");
        assert_eq!(LatencyHistogram::from_packed(&packed).unwrap(), edges);
        let mut one = LatencyHistogram::default();
        one.add_to_bucket(1, 3);
        assert_eq!(one.to_packed(), format!("3{}", "0".repeat(20)));
        assert_eq!(LatencyHistogram::default().to_packed(), "0");
        assert_eq!(LatencyHistogram::from_packed("0").unwrap(), LatencyHistogram::default());
        assert_eq!(LatencyHistogram::default().quantile_ms(0.99), None);
        // A bucket past u64::MAX saturates; what is not 73 buckets of digits is refused.
        let over = LatencyHistogram::from_packed(&"9".repeat(20)).unwrap();
        assert_eq!(over.counts()[0], u64::MAX);
        for bad in ["", "-1", "1.5", "12a", &"1".repeat(20 * LATENCY_BUCKETS + 1)] {
            assert_eq!(LatencyHistogram::from_packed(bad), Err(HistogramError::NotPacked), "{bad}");
        }
    }

    #[test]
    fn a_report_with_our_bounds_is_taken_exactly_and_other_bounds_never_look_faster() {
        let mut original = LatencyHistogram::default();
        [0.2, 1.0, 1.1, 9.0, 9.0, 120.0, 99_999.0].iter().for_each(|v| original.record_ms(*v));
        let mut cumulative = 0;
        let report: Vec<(f64, u64)> = bucket_upper_bounds_ms()
            .into_iter()
            .zip(original.counts())
            .map(|(b, c)| {
                cumulative += c;
                (b, cumulative)
            })
            .collect();
        assert_eq!(LatencyHistogram::from_cumulative(&report, original.total()), original);
        // Envoy's default bounds: 3 requests ≤ 5 ms and 1 ≤ 25 ms land at those bounds.
        let envoy =
            LatencyHistogram::from_cumulative(&[(0.5, 0), (1.0, 0), (5.0, 3), (10.0, 3), (25.0, 4)], 4);
        assert_eq!(envoy.total(), 4);
        assert!(envoy.quantile_ms(0.5).unwrap() >= 5.0 / (1.0 + QUANTILE_RELATIVE_ERROR));
        // Falling cumulative counts add nothing; the total's excess goes to the last bucket.
        let odd = LatencyHistogram::from_cumulative(&[(1.0, 5), (2.0, 3)], 9);
        assert_eq!(odd.total(), 9);
        assert_eq!(odd.counts()[LATENCY_BUCKETS - 1], 4);
    }

    #[test]
    fn deltas_of_cumulative_reports_and_counter_resets() {
        let mut first = LatencyHistogram::default();
        first.add_to_bucket(3, 5);
        let mut second = first.clone();
        second.add_to_bucket(3, 2);
        second.add_to_bucket(9, 1);
        let d = second.since(&first);
        assert_eq!((d.counts()[3], d.counts()[9], d.total()), (2, 1, 3));
        // A restarted sender reports less than before: everything it reports is new.
        let mut restarted = LatencyHistogram::default();
        restarted.add_to_bucket(3, 1);
        assert_eq!(restarted.since(&second), restarted);
    }

    #[test]
    fn response_classes() {
        assert_eq!(ResponseClass::of_status(204), ResponseClass::Success);
        assert_eq!(ResponseClass::of_status(404), ResponseClass::ClientError);
        assert_eq!(ResponseClass::of_status(503), ResponseClass::ServerError);
        assert_eq!(ResponseClass::of_status(0), ResponseClass::ServerError);
        assert_eq!(ResponseClass::of_status(999), ResponseClass::ServerError);
        assert_eq!(ResponseClass::of_class_digit(3), Some(ResponseClass::Redirection));
        assert_eq!(ResponseClass::of_class_digit(7), None);
        assert!(ResponseClass::ClientError.is_success());
        assert!(!ResponseClass::ServerError.is_success());
        for c in [ResponseClass::Informational, ResponseClass::ServerError, ResponseClass::Unclassified] {
            assert_eq!(ResponseClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(ResponseClass::parse("6xx"), None);
    }

    #[test]
    fn resolutions_and_their_buckets() {
        assert_eq!(Resolution::Minute.bucket_start(125), 120);
        assert_eq!(Resolution::TenSeconds.bucket_start(-5), -10);
    }

    #[test]
    fn a_read_takes_final_rollups_inside_its_window_and_10_s_rows_at_its_ends() {
        let span = |resolution, from, to| ReadSpan { resolution, from, to };
        use Resolution::{Hour, Minute, TenMinutes, TenSeconds};
        // An hour from 10:00:25, minutes rolled up to 10:59:00, hours to 10:00:00.
        let (from, to) = (36_025, 39_625);
        let plan = read_plan(from, to, RolledUp { minute: 39_540, ten_minutes: 36_000, hour: 36_000 });
        assert_eq!(
            plan,
            [
                span(TenSeconds, 36_025, 36_060),
                span(Minute, 36_060, 39_540),
                span(TenSeconds, 39_540, 39_625)
            ]
        );
        // Rolled up past the window's end: whole minutes up to the last one that started.
        let plan = read_plan(from, to, RolledUp { minute: 40_000, ten_minutes: 36_000, hour: 36_000 });
        assert_eq!(plan[1], span(Minute, 36_060, 39_600));
        assert_eq!(plan[2], span(TenSeconds, 39_600, 39_625));
        // Two days: whole final hours in the middle, minutes and 10 s rows at both ends.
        let plan = read_plan(
            3_590,
            3_590 + 172_800,
            RolledUp { minute: 176_340, ten_minutes: 172_800, hour: 172_800 },
        );
        assert_eq!(
            plan,
            [
                span(TenSeconds, 3_590, 3_600),
                span(Hour, 3_600, 172_800),
                span(Minute, 172_800, 176_340),
                span(TenSeconds, 176_340, 176_390),
            ]
        );
        // With 10-minute rollups: hours, then 10 minutes, then minutes, then 10 s at each end.
        let plan =
            read_plan(3_590, 3_590 + 7_200, RolledUp { minute: 10_740, ten_minutes: 10_200, hour: 7_200 });
        assert_eq!(
            plan,
            [
                span(TenSeconds, 3_590, 3_600),
                span(Hour, 3_600, 7_200),
                span(TenMinutes, 7_200, 10_200),
                span(Minute, 10_200, 10_740),
                span(TenSeconds, 10_740, 10_790),
            ]
        );
        // The last hour at 10:43:25, rolled up as the leader does: about 20 rows per edge.
        let now = 38_605;
        let plan =
            read_plan(now - 3_600, now, RolledUp { minute: 38_520, ten_minutes: 38_400, hour: 36_000 });
        assert_eq!(
            plan,
            [
                span(TenSeconds, 35_005, 35_040),
                span(Minute, 35_040, 35_400),
                span(TenMinutes, 35_400, 38_400),
                span(Minute, 38_400, 38_520),
                span(TenSeconds, 38_520, 38_605),
            ]
        );
        let rows: i64 =
            plan.iter().map(|s| (s.to - s.from + s.resolution.seconds() - 1) / s.resolution.seconds()).sum();
        assert_eq!(rows, 4 + 6 + 5 + 2 + 9, "instead of 60 minutes and 10 s rows at the ends");
        // Nothing rolled up yet: 10 s rows only.
        assert_eq!(
            read_plan(0, 3_600, RolledUp { minute: 0, ten_minutes: 0, hour: 0 }),
            [span(TenSeconds, 0, 3_600)]
        );
        // Every plan covers its window exactly, in order, without overlap.
        for (from, to, m, t, h) in [
            (5, 7_205, 7_000, 6_600, 3_600),
            (-65, 125, 60, 0, 0),
            (100, 100, 0, 0, 0),
            (0, 59, 60, 0, 0),
            (-605, 9_999, 9_960, 9_600, 7_200),
        ] {
            let plan = read_plan(from, to, RolledUp { minute: m, ten_minutes: t, hour: h });
            let mut at = from;
            for s in &plan {
                assert_eq!(s.from, at, "{plan:?}");
                assert!(s.from < s.to, "{plan:?}");
                assert!(s.resolution == TenSeconds || s.from % s.resolution.seconds() == 0, "{plan:?}");
                at = s.to;
            }
            assert_eq!(at, to.max(from), "{plan:?}");
        }
    }

    #[test]
    fn topology_and_service_metrics_merge_the_edges() {
        let edge = |s: &str, d: &str, requests, successes| EdgeTotal {
            source: s.into(),
            destination: d.into(),
            counts: EdgeCounts { requests, successes, ..Default::default() },
            subsets: Vec::new(),
        };
        let totals = [
            edge("web", "reviews", 100, 90),
            edge("admin", "reviews", 100, 100),
            edge("reviews", "db", 5, 5),
        ];
        let t = Topology::of(&totals, 10.0);
        assert_eq!(t.nodes, ["admin", "db", "reviews", "web"]);
        assert_eq!(t.edges.len(), 3);
        assert_eq!(t.edges[0].metrics.success_rate, Some(0.9));
        let reviews = service_metrics(&totals, "reviews", 10.0);
        assert_eq!((reviews.requests, reviews.rps, reviews.success_rate), (200, 20.0, Some(0.95)));
        assert_eq!(service_metrics(&totals, "nobody", 10.0).requests, 0);
    }

    #[test]
    fn an_edges_subsets_keep_their_requests_and_share_of_the_edge() {
        let v = |version: &str| Tags::parse([("version", version)]).unwrap();
        let counts = |requests| EdgeCounts { requests, successes: requests, ..Default::default() };
        let row =
            |s: &str, d: &str, subset: Tags, requests| (s.to_owned(), d.to_owned(), subset, counts(requests));
        let totals = EdgeTotal::merge_subsets([
            row("productpage", "reviews", Tags::new(), 20),
            row("productpage", "reviews", v("v1"), 135),
            row("productpage", "reviews", v("v2"), 45),
            row("reviews", "ratings", Tags::new(), 7),
        ]);
        assert_eq!(totals.len(), 2);
        assert_eq!(totals[0].counts.requests, 200);
        assert_eq!(totals[1].subsets, []);
        let t = Topology::of(&totals, 10.0);
        let split: Vec<(String, u64, Option<f64>)> =
            t.edges[0].subsets.iter().map(|s| (s.subset.joined(), s.requests, s.share)).collect();
        assert_eq!(split, [("version=v1".into(), 135, Some(0.675)), ("version=v2".into(), 45, Some(0.225))]);
    }

    #[test]
    fn golden_metrics_of_merged_counts() {
        let mut counts = EdgeCounts { requests: 200, successes: 190, ..Default::default() };
        (0..100).for_each(|i| counts.latency.record_ms(f64::from(i) + 1.0));
        let g = GoldenMetrics::of(&counts, 10.0);
        assert_eq!(g.rps, 20.0);
        assert_eq!(g.success_rate, Some(0.95));
        let p99 = g.p99_ms.unwrap();
        assert!((p99 - 99.0).abs() / 99.0 <= QUANTILE_RELATIVE_ERROR);
        assert_eq!(GoldenMetrics::of(&EdgeCounts::default(), 10.0).success_rate, None);
    }
}
