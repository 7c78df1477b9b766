//! Telemetry ingestion on the TLS port: Envoy's `MetricsService/StreamMetrics` and
//! `AccessLogService/StreamAccessLogs`, for Envoy and the agent alike. A stream is
//! authenticated by its SVID like ADS, and its organization, mesh and service come from that
//! certificate only. Everything a peer controls is bounded (message size, families and
//! entries per message, series per stream, items per second per organization); what is
//! dropped is counted in `trellis_telemetry_dropped_total`. One task writes batches.

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
use trellis_model::{OrgId, ResourceName};
use trellis_pki::{Authority, Peer};
use trellis_store::{AccessLogRecord, EdgeSample, Store, StoreError, TenantTx};

use crate::ads::authenticate;
use crate::envoy_stats::{Baseline, Reporter, Side, http_record, tcp_record};
use crate::metrics::{DropReason, XdsMetrics};

/// Most metric families in one message (Envoy sends every stat it has each flush).
pub const MAX_FAMILIES: usize = 20_000;
/// Most access-log entries in one message.
pub const MAX_ENTRIES: usize = 1_000;
/// Most queued batches of increments before new ones are dropped (the database lags).
const QUEUE: usize = 4_096;
/// Most queued items written in one transaction.
const BATCH: usize = 256;

/// Settings of the ingestion services.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// Items (metric families and log entries) one organization may send per second to
    /// this replica; a burst of two seconds' worth is allowed.
    pub rate_per_org: u32,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self { rate_per_org: 20_000 }
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

/// One message's worth of rows for one organization.
struct Rows {
    org: OrgId,
    edges: Vec<EdgeSample>,
    logs: Vec<AccessLogRecord>,
}

struct Ctx {
    authority: Authority,
    metrics: XdsMetrics,
    limits: RateLimits,
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
        tokio::spawn(write_batches(store, rx, metrics.clone()));
        let limits = RateLimits { rate: f64::from(options.rate_per_org.max(1)), buckets: Mutex::default() };
        Self { ctx: Arc::new(Ctx { authority, metrics, limits, queue }) }
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

    /// Admits `items` of `org` under its rate, counting what is refused.
    fn admit(&self, org: OrgId, items: usize) -> bool {
        let admitted = self.ctx.limits.take(org, items);
        if !admitted {
            self.ctx.metrics.dropped(DropReason::RateLimited, items);
        }
        admitted
    }

    /// Queues rows for the writer, counting them, or what is dropped when it lags.
    fn queue(&self, rows: Rows) {
        let (edges, logs) = (rows.edges.len(), rows.logs.len());
        match self.ctx.queue.try_send(rows) {
            Ok(()) => {
                self.ctx.metrics.telemetry_edges.inc_by(edges as u64);
                self.ctx.metrics.telemetry_log_entries.inc_by(logs as u64);
            }
            Err(_) => self.ctx.metrics.dropped(DropReason::QueueFull, edges + logs),
        }
    }
}

/// The 10 s bucket a report received now belongs to (the control plane's clock decides).
fn current_bucket() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(TimeDelta::seconds(10)).unwrap_or(now)
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
        while let Some(message) = inbound.message().await? {
            let families = &message.envoy_metrics;
            if families.len() > MAX_FAMILIES {
                self.ctx.metrics.dropped(DropReason::TooLarge, families.len());
                return Err(too_many("metric families", families.len(), MAX_FAMILIES));
            }
            // Refused messages leave the baseline as it was: the next admitted report of a
            // cumulative counter still counts everything since.
            if !self.admit(peer.org, families.len()) {
                continue;
            }
            let read = baseline.read(&reporter, families);
            self.ctx.metrics.dropped(DropReason::TooManySeries, read.over_limit as usize);
            if read.edges.is_empty() {
                continue;
            }
            let bucket_start = current_bucket();
            let edges = read
                .edges
                .into_iter()
                .map(|(key, counts)| EdgeSample { mesh: peer.mesh_id, bucket_start, key, counts })
                .collect();
            self.queue(Rows { org: peer.org, edges, logs: Vec::new() });
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
                    self.ctx.metrics.dropped(DropReason::TooLarge, l.log_entry.len());
                    return Err(too_many("log entries", l.log_entry.len(), MAX_ENTRIES));
                }
                Some(LogEntries::TcpLogs(l)) if l.log_entry.len() > MAX_ENTRIES => {
                    self.ctx.metrics.dropped(DropReason::TooLarge, l.log_entry.len());
                    return Err(too_many("log entries", l.log_entry.len(), MAX_ENTRIES));
                }
                Some(LogEntries::HttpLogs(l)) => {
                    l.log_entry.iter().map(|e| http_record(e, &reporter, side, mesh, received)).collect()
                }
                Some(LogEntries::TcpLogs(l)) => {
                    l.log_entry.iter().map(|e| tcp_record(e, &reporter, side, mesh, received)).collect()
                }
            };
            if logs.is_empty() || !self.admit(peer.org, logs.len()) {
                continue;
            }
            self.queue(Rows { org: peer.org, edges: Vec::new(), logs });
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// Writes queued rows in batches: one transaction per batch, each organization's part after
/// a savepoint, so that one tenant's failure (a mesh deleted a moment ago) drops only its
/// rows. The partitions of the current hour are made sure of once per hour.
async fn write_batches(store: Store, mut rx: mpsc::Receiver<Rows>, metrics: XdsMetrics) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut prepared_hour = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let now = Utc::now();
        let hour = now.duration_trunc(TimeDelta::hours(1)).ok();
        if hour != prepared_hour {
            match store.prepare_telemetry(now).await {
                Ok(()) => prepared_hour = hour,
                Err(e) => tracing::warn!(error = %e, "preparing this hour's telemetry partitions failed"),
            }
        }
        let mut by_org: BTreeMap<OrgId, (Vec<EdgeSample>, Vec<AccessLogRecord>)> = BTreeMap::new();
        for rows in batch.drain(..) {
            let part = by_org.entry(rows.org).or_default();
            part.0.extend(rows.edges);
            part.1.extend(rows.logs);
        }
        let items = |p: &(Vec<EdgeSample>, Vec<AccessLogRecord>)| p.0.len() + p.1.len();
        let total: usize = by_org.values().map(items).sum();
        match write(&store, &by_org).await {
            Ok(failed) => failed.iter().for_each(|org| {
                metrics.dropped(DropReason::WriteFailed, by_org.get(org).map_or(0, items));
            }),
            Err(e) => {
                tracing::warn!(error = %e, "writing telemetry failed");
                metrics.dropped(DropReason::WriteFailed, total);
                // Let an outage pass before the next batch.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One transaction over every organization's part; returns the organizations whose part
/// failed alone.
async fn write(
    store: &Store,
    by_org: &BTreeMap<OrgId, (Vec<EdgeSample>, Vec<AccessLogRecord>)>,
) -> Result<Vec<OrgId>, StoreError> {
    let mut failed = Vec::new();
    let mut tx: Option<TenantTx> = None;
    for (org, (edges, logs)) in by_org {
        let tx = match &mut tx {
            Some(tx) => {
                tx.rebind(*org).await?;
                tx
            }
            None => tx.insert(store.tenant(*org).await?),
        };
        tx.savepoint().await?;
        let part = async {
            tx.record_edges(edges).await?;
            tx.record_access_log(logs).await
        }
        .await;
        match part {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                tracing::warn!(%org, error = %e, "a tenant's telemetry was not written; the others are");
                tx.rollback_to().await?;
                failed.push(*org);
            }
        }
    }
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(failed)
}
