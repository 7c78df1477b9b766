//! Unexpected traffic: the leader's scan of the final minutes (the pure decision is
//! `trellis_model::traffic_events::detect`), the events it records, and their reads.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use trellis_model::traffic_events::{MINUTE, Observations, Thresholds, TrafficEvent, detect};
use trellis_model::{MeshId, OrgId};
use uuid::Uuid;

use crate::{Store, StoreError, TenantTx};

/// Most minutes one scan examines: a leader that was away catches up an hour at a time.
const MAX_SCAN: TimeDelta = TimeDelta::hours(1);
/// Minutes further back than this are not examined at all once a scan has fallen behind.
const MAX_CATCH_UP: TimeDelta = TimeDelta::hours(2);
/// How long events are kept: as long as the hour rollups they can be checked against.
const EVENT_RETENTION: TimeDelta = TimeDelta::days(90);

/// A recorded event as read back.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredTrafficEvent {
    pub id: Uuid,
    pub mesh_id: Uuid,
    pub kind: String,
    pub minute: DateTime<Utc>,
    pub source: Option<String>,
    pub destination: String,
    pub evidence: serde_json::Value,
    pub detected_at: DateTime<Utc>,
}

/// Which events a listing wants, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficEventQuery {
    pub mesh: MeshId,
    /// Minutes at or after this.
    pub since: DateTime<Utc>,
    pub kind: Option<String>,
    /// Events whose caller or destination is this service.
    pub service: Option<String>,
    /// Events strictly older than this one (the last of the previous page).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Minutes examined (0 when the rollups had nothing new).
    pub minutes: i64,
    /// Events recorded (an event found again is not counted).
    pub events: u64,
    /// Organizations whose part failed (logged; their minutes are not examined again).
    pub failed: usize,
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Examines the minutes rolled up since the last scan, in every mesh of every
    /// organization, and records what `detect` finds (a leader duty, after the rollups).
    pub async fn scan_traffic_events(&self, t: &Thresholds) -> Result<ScanReport, StoreError> {
        let (done, rolled): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT s.done_until, (SELECT done_until FROM telemetry_rollups WHERE resolution_s = 60) \
             FROM traffic_event_scans s",
        )
        .fetch_one(&self.pool)
        .await?;
        let Some(rolled) = rolled else { return Ok(ScanReport::default()) };
        let from = done.max(rolled - MAX_CATCH_UP);
        let to = rolled.min(from + MAX_SCAN);
        if to <= from {
            return Ok(ScanReport::default());
        }
        let orgs: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM organizations").fetch_all(&self.pool).await?;
        let mut report = ScanReport { minutes: (to - from).num_minutes(), ..Default::default() };
        for org in orgs {
            let org = OrgId::from_uuid(org);
            match self.scan_org(org, from, to, t).await {
                Ok(n) => report.events += n,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(org = %org, error = %e, "examining an organization's traffic failed");
                }
            }
        }
        // Only from where this scan started: a concurrent scan's progress is kept.
        sqlx::query("UPDATE traffic_event_scans SET done_until = $2 WHERE done_until = $1")
            .bind(done)
            .bind(to)
            .execute(&self.pool)
            .await?;
        Ok(report)
    }

    /// One organization's part of a scan, in one transaction: its events and what it saw.
    async fn scan_org(
        &self,
        org: OrgId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        t: &Thresholds,
    ) -> Result<u64, StoreError> {
        let mut tx = self.tenant(org).await?;
        let recent_from = from - TimeDelta::minutes(t.recent_minutes);
        let look_back = TimeDelta::seconds(t.look_back_secs);
        let mut meshes: std::collections::BTreeMap<Uuid, Observations> = Default::default();

        let known: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT mesh_id, source, destination FROM traffic_edges_seen \
             WHERE org_id = $1 AND first_seen < $2 AND last_seen >= $3",
        )
        .bind(org.as_uuid())
        .bind(from)
        .bind(from - look_back)
        .fetch_all(tx.conn())
        .await?;
        for (mesh, s, d) in known {
            meshes.entry(mesh).or_default().known_edges.insert((s, d));
        }
        #[derive(sqlx::FromRow)]
        struct MinuteRow {
            mesh_id: Uuid,
            bucket_start: DateTime<Utc>,
            source: String,
            destination: String,
            requests: i64,
            failures: i64,
            tcp_connections: i64,
        }
        let minutes: Vec<MinuteRow> = sqlx::query_as(
            "SELECT mesh_id, bucket_start, source, destination, sum(requests)::int8 AS requests, \
                    sum(requests - successes)::int8 AS failures, sum(tcp_connections)::int8 AS tcp_connections \
             FROM telemetry_edges \
             WHERE org_id = $1 AND resolution_s = 60 AND bucket_start >= $2 AND bucket_start < $3 \
             GROUP BY 1, 2, 3, 4",
        )
        .bind(org.as_uuid())
        .bind(recent_from)
        .bind(to)
        .fetch_all(tx.conn())
        .await?;
        for r in minutes {
            let calls = trellis_model::traffic_events::MinuteCalls {
                requests: to_u64(r.requests),
                failures: to_u64(r.failures),
                tcp_connections: to_u64(r.tcp_connections),
            };
            let key = (r.bucket_start.timestamp(), (r.source, r.destination));
            meshes.entry(r.mesh_id).or_default().minutes.insert(key, calls);
        }
        #[derive(sqlx::FromRow)]
        struct DeniedRow {
            mesh_id: Uuid,
            minute: DateTime<Utc>,
            destination: String,
            source: Option<String>,
            denials: i64,
        }
        let denied: Vec<DeniedRow> = sqlx::query_as(
            "SELECT mesh_id, date_trunc('minute', received_at) AS minute, destination_service AS destination, \
                    source_service AS source, count(*) AS denials \
             FROM access_log \
             WHERE org_id = $1 AND received_at >= $2 AND received_at < $3 AND outcome = 'denied' \
               AND destination_service IS NOT NULL \
             GROUP BY 1, 2, 3, 4",
        )
        .bind(org.as_uuid())
        .bind(recent_from)
        .bind(to)
        .fetch_all(tx.conn())
        .await?;
        for r in denied {
            let by = meshes
                .entry(r.mesh_id)
                .or_default()
                .denied
                .entry((r.minute.timestamp(), r.destination))
                .or_default();
            *by.entry(r.source).or_default() += to_u64(r.denials);
        }

        let mut recorded = 0;
        for (mesh, obs) in &meshes {
            let events = detect(obs, from.timestamp(), to.timestamp(), t);
            recorded += insert_events(&mut tx, *mesh, &events).await?;
            // What the examined minutes carried becomes the look-back of the next scans.
            let mut seen: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
            for ((minute, (s, d)), calls) in
                obs.minutes.range((from.timestamp(), (String::new(), String::new()))..)
            {
                if calls.calls() > 0 {
                    let e = seen.entry((s.as_str(), d.as_str())).or_insert((*minute, *minute));
                    e.0 = e.0.min(*minute);
                    e.1 = e.1.max(*minute);
                }
            }
            if !seen.is_empty() {
                let (mut sources, mut destinations, mut firsts, mut lasts) = (vec![], vec![], vec![], vec![]);
                for ((s, d), (first, last)) in seen {
                    sources.push(s.to_owned());
                    destinations.push(d.to_owned());
                    firsts.push(DateTime::from_timestamp(first, 0).unwrap_or(from));
                    lasts.push(DateTime::from_timestamp(last + MINUTE, 0).unwrap_or(to));
                }
                sqlx::query(
                    "INSERT INTO traffic_edges_seen AS e (org_id, mesh_id, source, destination, first_seen, last_seen) \
                     SELECT $1, $2, t.s, t.d, t.f, t.l \
                     FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS t(s, d, f, l) \
                     ON CONFLICT ON CONSTRAINT traffic_edges_seen_pkey DO UPDATE SET \
                         first_seen = least(e.first_seen, EXCLUDED.first_seen), \
                         last_seen = greatest(e.last_seen, EXCLUDED.last_seen)",
                )
                .bind(org.as_uuid())
                .bind(mesh)
                .bind(sources)
                .bind(destinations)
                .bind(firsts)
                .bind(lasts)
                .execute(tx.conn())
                .await?;
            }
        }
        sqlx::query("DELETE FROM traffic_edges_seen WHERE org_id = $1 AND last_seen < $2")
            .bind(org.as_uuid())
            .bind(to - look_back)
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM traffic_events WHERE org_id = $1 AND minute < $2")
            .bind(org.as_uuid())
            .bind(to - EVENT_RETENTION)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Moves the scan back to `at` (tests, and an operator re-examining minutes).
    pub async fn rewind_traffic_scan(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE traffic_event_scans SET done_until = $1").bind(at).execute(&self.pool).await?;
        Ok(())
    }
}

/// Records events of one mesh; one found before (same key) is left as it is.
async fn insert_events(tx: &mut TenantTx, mesh: Uuid, events: &[TrafficEvent]) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let (mut kinds, mut minutes, mut sources, mut destinations, mut keys, mut evidence) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for e in events {
        kinds.push(e.kind.as_str());
        minutes.push(DateTime::from_timestamp(e.minute, 0).unwrap_or_default());
        sources.push(e.source.clone());
        destinations.push(e.destination.clone());
        keys.push(e.key());
        evidence.push(serde_json::to_value(&e.evidence).unwrap_or_default());
    }
    let org = tx.org().as_uuid();
    let done = sqlx::query(
        "INSERT INTO traffic_events (org_id, mesh_id, kind, minute, source, destination, event_key, evidence) \
         SELECT $1, $2, t.k, t.m, t.s, t.d, t.key, t.ev \
         FROM unnest($3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::jsonb[]) \
              AS t(k, m, s, d, key, ev) \
         ON CONFLICT ON CONSTRAINT traffic_events_key DO NOTHING",
    )
    .bind(org)
    .bind(mesh)
    .bind(kinds)
    .bind(minutes)
    .bind(sources)
    .bind(destinations)
    .bind(keys)
    .bind(evidence)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected())
}

/// The columns of a [`StoredTrafficEvent`].
const EVENT_COLUMNS: &str = "id, mesh_id, kind, minute, source, destination, evidence, detected_at";

impl TenantTx {
    /// One page of a mesh's events, newest first (at most `q.limit`).
    pub async fn traffic_events(
        &mut self,
        q: &TrafficEventQuery,
    ) -> Result<Vec<StoredTrafficEvent>, StoreError> {
        let (after_at, after_id) = q.after.unzip();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM traffic_events \
             WHERE mesh_id = $1 AND minute >= $2 AND ($3::text IS NULL OR kind = $3) \
               AND ($4::text IS NULL OR source = $4 OR destination = $4) \
               AND ($5::timestamptz IS NULL OR (minute, id) < ($5, $6::uuid)) \
             ORDER BY minute DESC, id DESC LIMIT $7"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(q.mesh.as_uuid())
            .bind(q.since)
            .bind(&q.kind)
            .bind(&q.service)
            .bind(after_at)
            .bind(after_id)
            .bind(q.limit)
            .fetch_all(self.conn())
            .await?)
    }

    /// One event of a mesh, by id.
    pub async fn traffic_event(
        &mut self,
        mesh: MeshId,
        id: Uuid,
    ) -> Result<Option<StoredTrafficEvent>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM traffic_events WHERE mesh_id = $1 AND id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(mesh.as_uuid())
            .bind(id)
            .fetch_optional(self.conn())
            .await?)
    }

    /// The callers of `destination` seen in `[from, to)` (by the scans), and those of them
    /// denied by it in that time (by the access log): what a draft policy allows and denies.
    pub async fn callers_of(
        &mut self,
        mesh: MeshId,
        destination: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), StoreError> {
        let seen: Vec<String> = sqlx::query_scalar(
            "SELECT source FROM traffic_edges_seen \
             WHERE mesh_id = $1 AND destination = $2 AND first_seen < $4 AND last_seen > $3",
        )
        .bind(mesh.as_uuid())
        .bind(destination)
        .bind(from)
        .bind(to)
        .fetch_all(self.conn())
        .await?;
        let denied: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT source_service FROM access_log \
             WHERE mesh_id = $1 AND destination_service = $2 AND received_at >= $3 AND received_at < $4 \
               AND outcome = 'denied' AND source_service IS NOT NULL",
        )
        .bind(mesh.as_uuid())
        .bind(destination)
        .bind(from)
        .bind(to)
        .fetch_all(self.conn())
        .await?;
        Ok((seen.into_iter().collect(), denied.into_iter().collect()))
    }
}
