//! Telemetry: edge figures per time bucket and access-log entries (partitioned by time; the
//! leader prepares partitions, rolls buckets up and drops what is past retention).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use trellis_model::MeshId;
use trellis_model::Tags;
use trellis_model::telemetry::{
    EdgeCounts, EdgeKey, EdgeTotal, LatencyHistogram, Resolution, RolledUp, read_plan,
};
use uuid::Uuid;

use crate::{Store, StoreError, TenantTx};

/// What crossed one edge of a mesh in one 10 s bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSample {
    pub mesh: MeshId,
    pub bucket_start: DateTime<Utc>,
    pub key: EdgeKey,
    pub counts: EdgeCounts,
}

/// One access-log entry as stored. `reporter` is the service of the proxy that logged it,
/// from its certificate; the rest is what the proxy logged.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccessLogRecord {
    pub mesh_id: Uuid,
    pub logged_at: DateTime<Utc>,
    pub reporter: String,
    /// `inbound` (the reporter was called) or `outbound` (it called).
    pub direction: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// `denied`, `error`, `audited` or `sampled`.
    pub outcome: String,
    pub source_service: Option<String>,
    pub source_identity: Option<String>,
    pub source_address: Option<String>,
    pub destination_service: Option<String>,
    pub destination_identity: Option<String>,
    pub method: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub response_flags: String,
    pub response_details: String,
    /// The RBAC policy a denial named (`<AccessPolicy>/rules/<i>`, or Trellis's own).
    pub rbac_policy: Option<String>,
    /// The audit rule (shadow policy) that matched, if any.
    pub audit_policy: Option<String>,
    pub route: Option<String>,
    pub upstream_cluster: Option<String>,
    pub duration_ms: Option<f64>,
    pub bytes_received: Option<i64>,
    pub bytes_sent: Option<i64>,
}

/// An access-log entry as read back: its id, when it was stored, and the mesh's revision
/// then (None for entries stored before revisions were kept).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredAccessLog {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub mesh_revision: Option<i64>,
    #[sqlx(flatten)]
    pub record: AccessLogRecord,
}

/// Which access-log entries a search wants, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogQuery {
    pub mesh: MeshId,
    /// Received in `[since, until)`.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Called by or calling this service.
    pub service: Option<String>,
    pub status: Option<i32>,
    pub denied_only: bool,
    /// Entries strictly older than this one (the last of the previous page).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// The columns of a [`StoredAccessLog`], for `concat!` (sqlx takes only static SQL).
macro_rules! access_log_columns {
    () => {
        "id, received_at, mesh_revision, mesh_id, logged_at, reporter, direction, protocol, outcome, \
         source_service, source_identity, source_address, destination_service, destination_identity, \
         method, authority, path, status, response_flags, response_details, rbac_policy, audit_policy, \
         route, upstream_cluster, duration_ms, bytes_received, bytes_sent"
    };
}

/// How long each kind of telemetry is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryRetention {
    pub edges_10s: Duration,
    pub edges_1m: Duration,
    pub edges_1h: Duration,
    pub access_log: Duration,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Most spans one read sums: 10 s rows, minutes, 10 minutes, hours, 10 minutes, minutes,
/// 10 s rows (`read_plan`).
const MAX_SPANS: usize = 7;

/// The statement behind the edge reads, over `spans` ranges of one resolution each
/// (`$2 + 3i` the resolution, then the range). The packed histograms merge with `sum()`
/// (`LatencyHistogram::to_packed`): one numeric addition per row. The
/// `(org_id, mesh_id, resolution_s, bucket_start)` prefix of the primary key serves each range.
fn edge_totals_sql(spans: usize) -> &'static str {
    static SQL: [OnceLock<String>; MAX_SPANS] = [const { OnceLock::new() }; MAX_SPANS];
    SQL[spans - 1].get_or_init(|| {
        let ranges: Vec<String> = (0..spans)
            .map(|i| {
                let p = 2 + 3 * i;
                format!(
                    "SELECT source, destination, destination_subset, requests, successes, bytes, latency_packed, \
                            tcp_connections, tcp_bytes \
                     FROM telemetry_edges \
                     WHERE mesh_id = $1 AND resolution_s = ${p} AND bucket_start >= ${} AND bucket_start < ${}",
                    p + 1,
                    p + 2
                )
            })
            .collect();
        format!(
            "SELECT source, destination, destination_subset, sum(requests)::int8 AS requests, sum(successes)::int8 AS successes, \
                    sum(bytes)::int8 AS bytes, sum(latency_packed)::text AS latency, \
                    sum(tcp_connections)::int8 AS tcp_connections, sum(tcp_bytes)::int8 AS tcp_bytes \
             FROM ({}) AS e \
             GROUP BY source, destination, destination_subset \
             ORDER BY source, destination, destination_subset",
            ranges.join(" UNION ALL ")
        )
    })
}

/// The whole seconds from which every bucket start (a whole second) at or after `at` counts.
fn seconds_from(at: DateTime<Utc>) -> i64 {
    at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0)
}

fn instant(unix_secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix_secs, 0).unwrap_or_default()
}

impl TenantTx {
    /// Adds edge figures to their 10 s buckets (one statement; samples of the same edge and
    /// bucket are merged first). Returns the rows written.
    pub async fn record_edges(&mut self, samples: &[EdgeSample]) -> Result<u64, StoreError> {
        let mut merged: BTreeMap<(MeshId, DateTime<Utc>, &EdgeKey), EdgeCounts> = BTreeMap::new();
        for s in samples {
            merged.entry((s.mesh, s.bucket_start, &s.key)).or_default().merge(&s.counts);
        }
        if merged.is_empty() {
            return Ok(0);
        }
        let n = merged.len();
        let mut subsets = Vec::with_capacity(n);
        let (mut meshes, mut buckets, mut sources, mut destinations, mut routes, mut classes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut requests, mut successes, mut bytes, mut latency, mut tcp_connections, mut tcp_bytes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((mesh, bucket, key), c) in merged {
            meshes.push(mesh.as_uuid());
            buckets.push(bucket);
            sources.push(key.source.as_str().to_owned());
            destinations.push(key.destination.as_str().to_owned());
            subsets.push(key.destination_subset.joined());
            routes.push(key.route.as_ref().map(|r| r.as_str().to_owned()).unwrap_or_default());
            classes.push(key.class.as_str());
            requests.push(to_i64(c.requests));
            successes.push(to_i64(c.successes.min(c.requests)));
            bytes.push(to_i64(c.bytes));
            latency.push(c.latency.to_packed());
            tcp_connections.push(to_i64(c.tcp_connections));
            tcp_bytes.push(to_i64(c.tcp_bytes));
        }
        let done = sqlx::query(
            "INSERT INTO telemetry_edges AS e (org_id, mesh_id, resolution_s, bucket_start, source, \
                 destination, route, response_class, requests, successes, bytes, latency_packed, \
                 tcp_connections, tcp_bytes, destination_subset) \
             SELECT $1, t.m, 10, t.b, t.s, t.d, t.r, t.c, t.rq, t.ok, t.bt, t.l::numeric, t.tc, t.tb, t.ds \
             FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], \
                         $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::int8[], $13::int8[], \
                         $14::text[]) \
                  AS t(m, b, s, d, r, c, rq, ok, bt, l, tc, tb, ds) \
             ON CONFLICT ON CONSTRAINT telemetry_edges_pkey DO UPDATE SET \
                 requests = e.requests + EXCLUDED.requests, \
                 successes = e.successes + EXCLUDED.successes, \
                 bytes = e.bytes + EXCLUDED.bytes, \
                 latency_packed = e.latency_packed + EXCLUDED.latency_packed, \
                 tcp_connections = e.tcp_connections + EXCLUDED.tcp_connections, \
                 tcp_bytes = e.tcp_bytes + EXCLUDED.tcp_bytes",
        )
        .bind(self.org().as_uuid())
        .bind(meshes)
        .bind(buckets)
        .bind(sources)
        .bind(destinations)
        .bind(routes)
        .bind(classes)
        .bind(requests)
        .bind(successes)
        .bind(bytes)
        .bind(latency)
        .bind(tcp_connections)
        .bind(tcp_bytes)
        .bind(subsets)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected())
    }

    /// Stores access-log entries (one statement), each with its mesh's current revision.
    /// Returns how many.
    pub async fn record_access_log(&mut self, entries: &[AccessLogRecord]) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        macro_rules! column {
            ($field:ident) => {
                entries.iter().map(|e| e.$field.clone()).collect::<Vec<_>>()
            };
        }
        let done = sqlx::query(
            "INSERT INTO access_log (org_id, mesh_id, logged_at, reporter, direction, protocol, outcome, \
                 source_service, source_identity, source_address, destination_service, \
                 destination_identity, method, authority, path, status, response_flags, \
                 response_details, rbac_policy, route, upstream_cluster, duration_ms, bytes_received, \
                 bytes_sent, audit_policy, mesh_revision) \
             SELECT $1, t.*, (SELECT m.revision FROM meshes m WHERE m.org_id = $1 AND m.id = t.mesh) \
             FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                 $14::text[], $15::text[], $16::int4[], $17::text[], $18::text[], $19::text[], $20::text[], \
                 $21::text[], $22::float8[], $23::int8[], $24::int8[], $25::text[]) \
                 AS t(mesh, logged_at, reporter, direction, protocol, outcome, source_service, source_identity, \
                      source_address, destination_service, destination_identity, method, authority, path, \
                      status, response_flags, response_details, rbac_policy, route, upstream_cluster, \
                      duration_ms, bytes_received, bytes_sent, audit_policy)",
        )
        .bind(self.org().as_uuid())
        .bind(column!(mesh_id))
        .bind(column!(logged_at))
        .bind(column!(reporter))
        .bind(column!(direction))
        .bind(column!(protocol))
        .bind(column!(outcome))
        .bind(column!(source_service))
        .bind(column!(source_identity))
        .bind(column!(source_address))
        .bind(column!(destination_service))
        .bind(column!(destination_identity))
        .bind(column!(method))
        .bind(column!(authority))
        .bind(column!(path))
        .bind(column!(status))
        .bind(column!(response_flags))
        .bind(column!(response_details))
        .bind(column!(rbac_policy))
        .bind(column!(route))
        .bind(column!(upstream_cluster))
        .bind(column!(duration_ms))
        .bind(column!(bytes_received))
        .bind(column!(bytes_sent))
        .bind(column!(audit_policy))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected())
    }

    /// Per (source, destination): every route, class and subset of the buckets that start in
    /// `[from, to)` merged (each subset's requests kept), read from the final rollups inside
    /// the window and from 10 s buckets at its ends (`read_plan`): the one read behind golden
    /// metrics and topology. Also returns the finest resolution it read.
    pub async fn window_totals(
        &mut self,
        mesh: MeshId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<EdgeTotal>, Resolution), StoreError> {
        type Watermark = Option<DateTime<Utc>>;
        let (minute, ten_minutes, hour): (Watermark, Watermark, Watermark) = sqlx::query_as(
            "SELECT (SELECT done_until FROM telemetry_rollups WHERE resolution_s = 60), \
                    (SELECT done_until FROM telemetry_rollups WHERE resolution_s = 600), \
                    (SELECT done_until FROM telemetry_rollups WHERE resolution_s = 3600)",
        )
        .fetch_one(self.conn())
        .await?;
        let final_until = |w: Watermark| w.map_or(i64::MIN, |t| t.timestamp());
        let rolled_up = RolledUp {
            minute: final_until(minute),
            ten_minutes: final_until(ten_minutes),
            hour: final_until(hour),
        };
        let plan = read_plan(seconds_from(from), seconds_from(to), rolled_up);
        let finest =
            plan.iter().map(|s| s.resolution).min_by_key(|r| r.seconds()).unwrap_or(Resolution::TenSeconds);
        let spans: Vec<_> = plan.iter().map(|s| (s.resolution, instant(s.from), instant(s.to))).collect();
        Ok((self.sum_spans(mesh, &spans).await?, finest))
    }

    /// [`window_totals`](Self::window_totals) from the buckets of one resolution only.
    pub async fn edge_totals(
        &mut self,
        mesh: MeshId,
        resolution: Resolution,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<EdgeTotal>, StoreError> {
        self.sum_spans(mesh, &[(resolution, from, to)]).await
    }

    async fn sum_spans(
        &mut self,
        mesh: MeshId,
        spans: &[(Resolution, DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Vec<EdgeTotal>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            source: String,
            destination: String,
            destination_subset: String,
            requests: i64,
            successes: i64,
            bytes: i64,
            latency: String,
            tcp_connections: i64,
            tcp_bytes: i64,
        }
        if spans.is_empty() {
            return Ok(Vec::new());
        }
        assert!(spans.len() <= MAX_SPANS, "a read plan has at most {MAX_SPANS} spans");
        // The planner overestimates the edges and would sort every wide row (on disk) to group
        // them; one mesh's edges hash in a few MB. For the rest of this transaction only.
        sqlx::query("SELECT set_config('work_mem', '256MB', true)").execute(self.conn()).await?;
        let mut query = sqlx::query_as::<_, Row>(edge_totals_sql(spans.len())).bind(mesh.as_uuid());
        for &(resolution, from, to) in spans {
            query = query.bind(i32::try_from(resolution.seconds()).unwrap_or(i32::MAX)).bind(from).bind(to);
        }
        let rows = query.fetch_all(self.conn()).await?;
        let rows = rows
            .into_iter()
            .map(|r| {
                let decode =
                    |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Db(sqlx::Error::Decode(e));
                let latency = LatencyHistogram::from_packed(&r.latency).map_err(|e| decode(Box::new(e)))?;
                // Written by `record_edges` from `Tags::joined`.
                let subset = Tags::parse_joined(&r.destination_subset).map_err(|e| decode(Box::new(e)))?;
                let counts = EdgeCounts {
                    requests: to_u64(r.requests),
                    successes: to_u64(r.successes),
                    bytes: to_u64(r.bytes),
                    latency,
                    tcp_connections: to_u64(r.tcp_connections),
                    tcp_bytes: to_u64(r.tcp_bytes),
                };
                Ok((r.source, r.destination, subset, counts))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(EdgeTotal::merge_subsets(rows))
    }

    /// What `service` received in each bucket of `resolution` in `[from, to)` that carried
    /// anything (every caller, route, class and subset merged), oldest first: the golden
    /// metrics' time series.
    pub async fn service_series(
        &mut self,
        mesh: MeshId,
        service: &str,
        resolution: Resolution,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, EdgeCounts)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            bucket_start: DateTime<Utc>,
            requests: i64,
            successes: i64,
            bytes: i64,
            latency: String,
            tcp_connections: i64,
            tcp_bytes: i64,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT bucket_start, sum(requests)::int8 AS requests, sum(successes)::int8 AS successes, \
                    sum(bytes)::int8 AS bytes, sum(latency_packed)::text AS latency, \
                    sum(tcp_connections)::int8 AS tcp_connections, sum(tcp_bytes)::int8 AS tcp_bytes \
             FROM telemetry_edges \
             WHERE mesh_id = $1 AND resolution_s = $2 AND bucket_start >= $3 AND bucket_start < $4 \
               AND destination = $5 \
             GROUP BY bucket_start ORDER BY bucket_start",
        )
        .bind(mesh.as_uuid())
        .bind(i32::try_from(resolution.seconds()).unwrap_or(i32::MAX))
        .bind(from)
        .bind(to)
        .bind(service)
        .fetch_all(self.conn())
        .await?;
        rows.into_iter()
            .map(|r| {
                let latency = LatencyHistogram::from_packed(&r.latency)
                    .map_err(|e| StoreError::Db(sqlx::Error::Decode(Box::new(e))))?;
                let counts = EdgeCounts {
                    requests: to_u64(r.requests),
                    successes: to_u64(r.successes),
                    bytes: to_u64(r.bytes),
                    latency,
                    tcp_connections: to_u64(r.tcp_connections),
                    tcp_bytes: to_u64(r.tcp_bytes),
                };
                Ok((r.bucket_start, counts))
            })
            .collect()
    }

    /// One page of a mesh's access log, newest first (at most `q.limit` entries).
    pub async fn access_log(&mut self, q: &AccessLogQuery) -> Result<Vec<StoredAccessLog>, StoreError> {
        let (after_at, after_id) = q.after.unzip();
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            access_log_columns!(),
            " FROM access_log \
             WHERE mesh_id = $1 AND received_at >= $2 AND received_at < $3 \
               AND ($4::text IS NULL OR source_service = $4 OR destination_service = $4) \
               AND ($5::int4 IS NULL OR status = $5) AND (NOT $6 OR outcome = 'denied') \
               AND ($7::timestamptz IS NULL OR (received_at, id) < ($7, $8::uuid)) \
             ORDER BY received_at DESC, id DESC LIMIT $9"
        ))
        .bind(q.mesh.as_uuid())
        .bind(q.since)
        .bind(q.until)
        .bind(&q.service)
        .bind(q.status)
        .bind(q.denied_only)
        .bind(after_at)
        .bind(after_id)
        .bind(q.limit)
        .fetch_all(self.conn())
        .await?)
    }

    /// One access-log entry of a mesh, by id.
    pub async fn access_log_entry(
        &mut self,
        mesh: MeshId,
        id: Uuid,
    ) -> Result<Option<StoredAccessLog>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            access_log_columns!(),
            " FROM access_log WHERE mesh_id = $1 AND id = $2"
        ))
        .bind(mesh.as_uuid())
        .bind(id)
        .fetch_optional(self.conn())
        .await?)
    }
}

impl Store {
    /// Makes sure the partitions holding `at` exist (a no-op when they do).
    pub async fn prepare_telemetry(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("SELECT trellis_telemetry_prepare($1)").bind(at).execute(&self.pool).await?;
        Ok(())
    }

    /// Rolls finished 10 s buckets up to minutes, minutes to 10 minutes and those to hours,
    /// `lag` after a bucket ends (a leader duty). Returns the rows written.
    pub async fn rollup_telemetry(&self, lag: Duration) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT trellis_telemetry_rollup(make_interval(secs => $1))")
            .bind(lag.as_secs_f64())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Drops the partitions past `retention` (a leader duty). Returns how many went.
    pub async fn expire_telemetry(&self, retention: &TelemetryRetention) -> Result<i64, StoreError> {
        let keep = serde_json::json!({
            "telemetry_edges_10s": retention.edges_10s.as_secs_f64(),
            "telemetry_edges_1m": retention.edges_1m.as_secs_f64(),
            // The 10-minute rows are kept as long as the minutes they add up.
            "telemetry_edges_10m": retention.edges_1m.as_secs_f64(),
            "telemetry_edges_1h": retention.edges_1h.as_secs_f64(),
            "access_log": retention.access_log.as_secs_f64(),
        });
        Ok(sqlx::query_scalar("SELECT trellis_telemetry_expire($1)").bind(keep).fetch_one(&self.pool).await?)
    }
}
