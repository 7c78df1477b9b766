//! Telemetry ingestion on the TLS port: Envoy's `MetricsService/StreamMetrics` and
//! `AccessLogService/StreamAccessLogs`, for Envoy and the agent alike. A stream is
//! authenticated by its SVID like ADS, and its organization, mesh and service come from that
//! certificate only. Everything a peer controls is bounded (message size, families and
//! entries per message, series per stream, items per second per organization, new edge
//! series and access-log entries per organization and 10 s bucket); what is dropped is counted
//! in `trellis_telemetry_dropped_total` and, per tenant, mesh and minute, in the store, where
//! the tenant reads it. One task writes batches, and the drop counts with them. The cluster
//! gauges of a metrics message (what the proxy sees of its upstreams' endpoints) are kept as
//! the latest report of the node the stream's first message named, never summed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsService;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use trellis_model::{MeshId, OrgId, ResourceName};
use trellis_pki::{Authority, Peer};
use trellis_store::{AccessLogRecord, DropCount, EdgeSample, EndpointReport, Store, StoreError, TenantTx};

use crate::ads::{MAX_NODE_ID, authenticate};
use crate::budget::Budgets;
use crate::envoy_stats::{Baseline, Reporter, Side, http_record, memberships, tcp_record};
use trellis_model::telemetry::DropReason;

use crate::metrics::XdsMetrics;

/// Most metric families in one message (Envoy sends every stat it has each flush).
pub const MAX_FAMILIES: usize = 20_000;
/// Most access-log entries in one message.
pub const MAX_ENTRIES: usize = 1_000;
/// Most queued batches of increments before new ones are dropped (the database lags).
const QUEUE: usize = 4_096;
/// Most queued items written in one transaction.
const BATCH: usize = 256;
/// How often drop counts are written when no rows come to carry them.
const FLUSH: Duration = Duration::from_secs(1);
/// Most distinct (organization, mesh, minute, reason) drop counts held for the writer; past
/// it (the database is away) new keys are counted in the platform metric only.
const MAX_PENDING_DROPS: usize = 10_000;

/// Settings of the ingestion services.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// Items (metric families and log entries) one organization may send per second to
    /// this replica; a burst of two seconds' worth is allowed.
    pub rate_per_org: u32,
    /// Distinct edge series one organization may add to one 10 s bucket through this
    /// replica; a new series past it is dropped, a known one always merged.
    pub series_per_bucket: usize,
    /// Access-log entries one organization may store per 10 s bucket through this replica.
    pub log_entries_per_bucket: usize,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self { rate_per_org: 20_000, series_per_bucket: 10_000, log_entries_per_bucket: 5_000 }
    }
}

/// A token bucket per organization.
struct RateLimits {
    rate: f64,
    buckets: Mutex<HashMap<OrgId, (f64, Instant)>>,
}

impl RateLimits {
    /// Takes `cost` items from `org`'s allowance; false (and nothing taken) when it has not
    /// that many left.
    fn take(&self, org: OrgId, cost: usize) -> bool {
        let burst = self.rate * 2.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limits lock");
        let (tokens, at) = buckets.entry(org).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        let cost = cost as f64;
        if *tokens >= cost {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// One message's worth of rows for one mesh of one organization.
struct Rows {
    org: OrgId,
    mesh: MeshId,
    edges: Vec<EdgeSample>,
    logs: Vec<AccessLogRecord>,
    endpoints: Vec<EndpointReport>,
}

/// Items dropped per tenant, mesh, minute and reason, until the writer stores them.
#[derive(Default)]
struct PendingDrops(Mutex<HashMap<DropKey, u64>>);

/// Whose items, in which mesh and minute, and why.
type DropKey = (OrgId, MeshId, DateTime<Utc>, DropReason);

impl PendingDrops {
    fn add(&self, org: OrgId, mesh: MeshId, minute: DateTime<Utc>, reason: DropReason, items: u64) {
        let mut pending = self.0.lock().expect("pending drops lock");
        let len = pending.len();
        match pending.get_mut(&(org, mesh, minute, reason)) {
            Some(n) => *n = n.saturating_add(items),
            None if len < MAX_PENDING_DROPS => {
                pending.insert((org, mesh, minute, reason), items);
            }
            None => {}
        }
    }

    /// Everything pending, by organization.
    fn take(&self) -> BTreeMap<OrgId, Vec<DropCount>> {
        let pending = std::mem::take(&mut *self.0.lock().expect("pending drops lock"));
        let mut by_org: BTreeMap<OrgId, Vec<DropCount>> = BTreeMap::new();
        for ((org, mesh, minute, reason), items) in pending {
            by_org.entry(org).or_default().push(DropCount { mesh, minute, reason, items });
        }
        by_org
    }

    /// Puts back counts a failed write took.
    fn restore(&self, org: OrgId, counts: &[DropCount]) {
        for c in counts {
            self.add(org, c.mesh, c.minute, c.reason, c.items);
        }
    }
}

/// Counts dropped items in the platform metric and for their tenant.
#[derive(Clone)]
struct Drops {
    metrics: XdsMetrics,
    pending: Arc<PendingDrops>,
}

impl Drops {
    fn count(&self, org: OrgId, mesh: MeshId, reason: DropReason, items: usize) {
        if items == 0 {
            return;
        }
        self.metrics.dropped(reason, items);
        self.pending.add(org, mesh, current_minute(), reason, items as u64);
    }
}

struct Ctx {
    authority: Authority,
    metrics: XdsMetrics,
    limits: RateLimits,
    budgets: Mutex<Budgets>,
    drops: Drops,
    queue: mpsc::Sender<Rows>,
}

/// Both telemetry services (clone one into each tonic server).
#[derive(Clone)]
pub struct TelemetryService {
    ctx: Arc<Ctx>,
}

impl TelemetryService {
    /// Starts the writer task.
    pub fn start(store: Store, authority: Authority, metrics: XdsMetrics, options: TelemetryOptions) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let drops = Drops { metrics: metrics.clone(), pending: Arc::default() };
        tokio::spawn(write_batches(store, rx, drops.clone()));
        let limits = RateLimits { rate: f64::from(options.rate_per_org.max(1)), buckets: Mutex::default() };
        let budgets = Mutex::new(Budgets::new(options.series_per_bucket, options.log_entries_per_bucket));
        Self { ctx: Arc::new(Ctx { authority, metrics, limits, budgets, drops, queue }) }
    }

    async fn open<T>(&self, request: &Request<T>) -> Result<(Peer, Reporter), Status> {
        let (peer, _) = authenticate(&self.ctx.authority, request).await.inspect_err(|_| {
            self.ctx.metrics.telemetry_streams_refused.inc();
        })?;
        let service = ResourceName::parse(&peer.service)
            .map_err(|e| Status::permission_denied(format!("the certificate's service: {e}")))?;
        let reporter = Reporter { mesh: peer.mesh.clone(), service };
        Ok((peer, reporter))
    }

    /// Counts `items` of the peer's dropped for `reason`.
    fn dropped(&self, peer: &Peer, reason: DropReason, items: usize) {
        self.ctx.drops.count(peer.org, peer.mesh_id, reason, items);
    }

    /// Admits `items` of the peer's organization under its rate, counting what is refused.
    fn admit(&self, peer: &Peer, items: usize) -> bool {
        let admitted = self.ctx.limits.take(peer.org, items);
        if !admitted {
            self.dropped(peer, DropReason::RateLimited, items);
        }
        admitted
    }

    /// Queues rows for the writer, counting them, or what is dropped when it lags.
    fn queue(&self, rows: Rows) {
        let (org, mesh, edges, logs) = (rows.org, rows.mesh, rows.edges.len(), rows.logs.len());
        let endpoints = rows.endpoints.len();
        match self.ctx.queue.try_send(rows) {
            Ok(()) => {
                self.ctx.metrics.telemetry_edges.inc_by(edges as u64);
                self.ctx.metrics.telemetry_log_entries.inc_by(logs as u64);
            }
            Err(_) => self.ctx.drops.count(org, mesh, DropReason::QueueFull, edges + logs + endpoints),
        }
    }
}

/// The cluster gauges of one message as the reporter's latest view of its upstreams'
/// endpoints, stamped with the control plane's clock.
fn endpoint_reports(
    peer: &Peer,
    reporter: &Reporter,
    node_id: &str,
    families: &[envoy_types::pb::io::prometheus::client::MetricFamily],
) -> Vec<EndpointReport> {
    let reported_at = Utc::now();
    memberships(reporter, families)
        .into_iter()
        .map(|(upstream, membership)| EndpointReport {
            mesh: peer.mesh_id,
            node_id: node_id.to_owned(),
            source: reporter.service.clone(),
            destination: upstream.service,
            port: upstream.port,
            subset: upstream.subset,
            membership,
            reported_at,
        })
        .collect()
}

/// The 10 s bucket a report received now belongs to (the control plane's clock decides).
fn current_bucket() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(TimeDelta::seconds(10)).unwrap_or(now)
}

/// The minute drops are counted in.
fn current_minute() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now)
}

fn too_many(what: &str, n: usize, max: usize) -> Status {
    Status::invalid_argument(format!("{n} {what} in one message; at most {max}"))
}

#[tonic::async_trait]
impl MetricsService for TelemetryService {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let (peer, reporter) = self.open(&request).await?;
        let mut inbound = request.into_inner();
        let mut baseline = Baseline::default();
        // The node Envoy names on a stream's first message: whose view of the endpoints the
        // cluster gauges are (service health counts it only while that dataplane is online).
        let mut node_id = None;
        while let Some(message) = inbound.message().await? {
            if let Some(node) = message.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                node_id = Some(node.id.clone()).filter(|id| !id.is_empty() && id.len() <= MAX_NODE_ID);
            }
            let families = &message.envoy_metrics;
            if families.len() > MAX_FAMILIES {
                self.dropped(&peer, DropReason::TooLarge, families.len());
                return Err(too_many("metric families", families.len(), MAX_FAMILIES));
            }
            // Refused messages leave the baseline as it was: the next admitted report of a
            // cumulative counter still counts everything since.
            if !self.admit(&peer, families.len()) {
                continue;
            }
            let read = baseline.read(&reporter, families);
            self.dropped(&peer, DropReason::TooManySeries, read.over_limit as usize);
            let endpoints = match &node_id {
                Some(node_id) => endpoint_reports(&peer, &reporter, node_id, families),
                None => Vec::new(),
            };
            if !endpoints.is_empty() {
                self.queue(Rows {
                    org: peer.org,
                    mesh: peer.mesh_id,
                    edges: Vec::new(),
                    logs: Vec::new(),
                    endpoints,
                });
            }
            if read.edges.is_empty() {
                continue;
            }
            let bucket_start = current_bucket();
            let mut edges = read
                .edges
                .into_iter()
                .map(|(key, counts)| EdgeSample { mesh: peer.mesh_id, bucket_start, key, counts })
                .collect();
            let over = self.ctx.budgets.lock().expect("budgets lock").admit_edges(
                peer.org,
                bucket_start,
                &mut edges,
            );
            self.dropped(&peer, DropReason::SeriesBudget, over);
            if !edges.is_empty() {
                self.queue(Rows {
                    org: peer.org,
                    mesh: peer.mesh_id,
                    edges,
                    logs: Vec::new(),
                    endpoints: Vec::new(),
                });
            }
        }
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

#[tonic::async_trait]
impl AccessLogService for TelemetryService {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let (peer, reporter) = self.open(&request).await?;
        let mut inbound = request.into_inner();
        let mut side = None;
        while let Some(message) = inbound.message().await? {
            if let Some(id) = &message.identifier {
                side = Side::of_log_name(&id.log_name);
            }
            let received = Utc::now();
            let mesh = peer.mesh_id.as_uuid();
            let logs: Vec<AccessLogRecord> = match &message.log_entries {
                None => continue,
                Some(LogEntries::HttpLogs(l)) if l.log_entry.len() > MAX_ENTRIES => {
                    self.dropped(&peer, DropReason::TooLarge, l.log_entry.len());
                    return Err(too_many("log entries", l.log_entry.len(), MAX_ENTRIES));
                }
                Some(LogEntries::TcpLogs(l)) if l.log_entry.len() > MAX_ENTRIES => {
                    self.dropped(&peer, DropReason::TooLarge, l.log_entry.len());
                    return Err(too_many("log entries", l.log_entry.len(), MAX_ENTRIES));
                }
                Some(LogEntries::HttpLogs(l)) => {
                    l.log_entry.iter().map(|e| http_record(e, &reporter, side, mesh, received)).collect()
                }
                Some(LogEntries::TcpLogs(l)) => {
                    l.log_entry.iter().map(|e| tcp_record(e, &reporter, side, mesh, received)).collect()
                }
            };
            let mut logs = logs;
            if logs.is_empty() || !self.admit(&peer, logs.len()) {
                continue;
            }
            let fit = self.ctx.budgets.lock().expect("budgets lock").admit_log_entries(
                peer.org,
                current_bucket(),
                logs.len(),
            );
            self.dropped(&peer, DropReason::LogBudget, logs.len() - fit);
            logs.truncate(fit);
            if !logs.is_empty() {
                self.queue(Rows {
                    org: peer.org,
                    mesh: peer.mesh_id,
                    edges: Vec::new(),
                    logs,
                    endpoints: Vec::new(),
                });
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// One organization's part of a batch.
#[derive(Default)]
struct Part {
    edges: Vec<EdgeSample>,
    logs: Vec<AccessLogRecord>,
    endpoints: Vec<EndpointReport>,
    /// Items per mesh, to count them per tenant if the part fails.
    items: BTreeMap<MeshId, usize>,
    drops: Vec<DropCount>,
}

/// Writes queued rows in batches: one transaction per batch, each organization's part after
/// a savepoint, so that one tenant's failure (a mesh deleted a moment ago) drops only its
/// rows; the drop counts pending go in the same transaction, or alone every [`FLUSH`] when
/// no rows come. The partitions of the current hour are made sure of once per hour.
async fn write_batches(store: Store, mut rx: mpsc::Receiver<Rows>, drops: Drops) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut prepared_hour = None;
    loop {
        // A timeout is the drop counts' turn: they are written without rows.
        if let Ok(0) = tokio::time::timeout(FLUSH, rx.recv_many(&mut batch, BATCH)).await {
            break;
        }
        let mut by_org: BTreeMap<OrgId, Part> = BTreeMap::new();
        for (org, counts) in drops.pending.take() {
            by_org.entry(org).or_default().drops = counts;
        }
        if batch.is_empty() && by_org.is_empty() {
            continue;
        }
        let now = Utc::now();
        let hour = now.duration_trunc(TimeDelta::hours(1)).ok();
        if !batch.is_empty() && hour != prepared_hour {
            match store.prepare_telemetry(now).await {
                Ok(()) => prepared_hour = hour,
                Err(e) => tracing::warn!(error = %e, "preparing this hour's telemetry partitions failed"),
            }
        }
        for rows in batch.drain(..) {
            let part = by_org.entry(rows.org).or_default();
            *part.items.entry(rows.mesh).or_default() +=
                rows.edges.len() + rows.logs.len() + rows.endpoints.len();
            part.edges.extend(rows.edges);
            part.logs.extend(rows.logs);
            part.endpoints.extend(rows.endpoints);
        }
        let failed_part = |org: &OrgId, part: &Part| {
            part.items.iter().for_each(|(mesh, n)| drops.count(*org, *mesh, DropReason::WriteFailed, *n));
        };
        match write(&store, &by_org).await {
            Ok(failed) => failed.iter().for_each(|org| {
                if let Some(part) = by_org.get(org) {
                    failed_part(org, part);
                }
            }),
            Err(e) => {
                tracing::warn!(error = %e, "writing telemetry failed");
                for (org, part) in &by_org {
                    failed_part(org, part);
                    drops.pending.restore(*org, &part.drops);
                }
                // Let an outage pass before the next batch.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One transaction over every organization's part; returns the organizations whose rows
/// failed alone (their drop counts, after a savepoint of their own, may still be written).
async fn write(store: &Store, by_org: &BTreeMap<OrgId, Part>) -> Result<Vec<OrgId>, StoreError> {
    let mut failed = Vec::new();
    let mut tx: Option<TenantTx> = None;
    for (org, part) in by_org {
        let tx = match &mut tx {
            Some(tx) => {
                tx.rebind(*org).await?;
                tx
            }
            None => tx.insert(store.tenant(*org).await?),
        };
        if !part.items.is_empty() {
            tx.savepoint().await?;
            let rows = async {
                tx.record_edges(&part.edges).await?;
                tx.record_endpoint_health(&part.endpoints).await?;
                tx.record_access_log(&part.logs).await
            }
            .await;
            match rows {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(%org, error = %e, "a tenant's telemetry was not written; the others are");
                    tx.rollback_to().await?;
                    failed.push(*org);
                }
            }
        }
        if !part.drops.is_empty() {
            tx.savepoint().await?;
            match tx.record_drops(&part.drops).await {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    // A mesh deleted since: its counts go with it.
                    tracing::warn!(%org, error = %e, "a tenant's telemetry drop counts were not written");
                    tx.rollback_to().await?;
                }
            }
        }
    }
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(failed)
}
