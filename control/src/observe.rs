//! Observe: a mesh's edge totals over a window ending now, read from the stored buckets
//! (never from a live scan of proxies), for golden metrics and the topology; its access log
//! and, for one entry, the rule that decided the call ("why denied").

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use trellis_model::attribution::Attribution;
use trellis_model::config::{FieldError, Kind};
use trellis_model::telemetry::{EdgeCounts, EdgeTotal, GoldenMetrics, Resolution};
use trellis_model::topology::{Filter, View, ViewError, view};
use trellis_model::{Action, MeshId, ResourceName};
use trellis_store::{AccessLogQuery, AccessLogRecord, Mesh, Resource, StoredAccessLog};
use uuid::Uuid;

use crate::{AppError, Control, Scope};

/// Longest window a read may cover: the 1 h rollups' default retention.
pub const MAX_WINDOW_SECS: i64 = 90 * 86_400;
/// The window of a read that names none.
pub const DEFAULT_WINDOW_SECS: i64 = 300;

/// Every edge's totals over a window, and the finest resolution it was read in.
pub struct EdgeWindow {
    pub mesh: Mesh,
    pub seconds: i64,
    pub resolution: Resolution,
    pub totals: Vec<EdgeTotal>,
}

impl Control {
    /// The edge totals of `mesh` over the last `window` seconds (default five minutes).
    pub async fn edge_totals(
        &self,
        scope: Scope,
        mesh: &str,
        window: Option<i64>,
    ) -> Result<EdgeWindow, AppError> {
        // Authorized before the parameters are judged: a stranger learns nothing from them.
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, DEFAULT_WINDOW_SECS)?;
        let m = scope.mesh(mesh).await?;
        let to = Utc::now();
        let (totals, resolution) = scope.tx.window_totals(m.id, to - TimeDelta::seconds(seconds), to).await?;
        scope.commit().await?;
        Ok(EdgeWindow { mesh: m, seconds, resolution, totals })
    }
}

/// A mesh's topology over a window, as [`trellis_model::topology::view`] shows it.
pub struct TopologyWindow {
    pub mesh: Mesh,
    pub seconds: i64,
    pub resolution: Resolution,
    pub view: View,
}

/// A topology request's filter as a front end received it: text, parsed by the core.
#[derive(Debug, Default, Clone)]
pub struct TopologySearch {
    pub service: Option<String>,
    pub group: Option<String>,
    pub grouping: Option<String>,
}

impl Control {
    /// The topology of `mesh` over the last `window` seconds (default five minutes),
    /// narrowed by `search`, in at most `max_nodes` nodes unless it asks for no grouping:
    /// the one rule behind the REST topology and the console's drawing.
    pub async fn topology(
        &self,
        scope: Scope,
        mesh: &str,
        window: Option<i64>,
        search: &TopologySearch,
        max_nodes: usize,
    ) -> Result<TopologyWindow, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, DEFAULT_WINDOW_SECS)?;
        let filter =
            Filter::parse(search.service.as_deref(), search.group.as_deref(), search.grouping.as_deref())
                .map_err(|e| {
                    AppError::bad_request(format!("{}: {}", e.field, e.message))
                        .with_field(&e.field, &e.message)
                })?;
        let m = scope.mesh(mesh).await?;
        let to = Utc::now();
        let (totals, resolution) = scope.tx.window_totals(m.id, to - TimeDelta::seconds(seconds), to).await?;
        scope.commit().await?;
        let view = view(&totals, seconds as f64, &filter, max_nodes).map_err(|e| match e {
            ViewError::TooManyEdges { .. } => AppError::unprocessable(e.to_string())
                .with_field("grouping", "none is refused over this many edges"),
        })?;
        Ok(TopologyWindow { mesh: m, seconds, resolution, view })
    }
}

/// Most points a service's time series has: finer buckets are merged into this many.
pub const MAX_SERIES_POINTS: usize = 120;

/// A service's golden metrics over a window, point by point, and over the whole window.
pub struct ServiceSeries {
    pub mesh: Mesh,
    pub service: String,
    pub seconds: i64,
    /// The seconds each point covers (a multiple of the stored buckets' width).
    pub step: i64,
    /// Oldest first, one per step of the window (empty steps included, with no calls).
    pub points: Vec<(DateTime<Utc>, GoldenMetrics)>,
    /// The whole window's figures.
    pub total: GoldenMetrics,
}

impl Control {
    /// What `service` of `mesh` received over the last `window` seconds (default five
    /// minutes), as about [`MAX_SERIES_POINTS`] points at most, read from the stored buckets.
    pub async fn service_series(
        &self,
        scope: Scope,
        mesh: &str,
        service: &str,
        window: Option<i64>,
    ) -> Result<ServiceSeries, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let seconds = window_seconds(window, DEFAULT_WINDOW_SECS)?;
        let m = scope.mesh(mesh).await?;
        let service = ResourceName::parse(service)
            .map_err(|e| AppError::invalid_field("service", format!("not a service name: {e}")))?;
        let resolution = series_resolution(seconds);
        let to = Utc::now();
        let from = to - TimeDelta::seconds(seconds);
        let buckets = scope.tx.service_series(m.id, service.as_str(), resolution, from, to).await?;
        scope.commit().await?;
        let (step, points) = series_points(&buckets, resolution.seconds(), from, seconds);
        let mut all = EdgeCounts::default();
        buckets.iter().for_each(|(_, c)| all.merge(c));
        let total = GoldenMetrics::of(&all, seconds as f64);
        Ok(ServiceSeries { mesh: m, service: service.to_string(), seconds, step, points, total })
    }
}

/// The buckets a series of `seconds` is read from: one width for every point (10 s up to an
/// hour, minutes up to two days, hours beyond: each kept that long by default).
fn series_resolution(seconds: i64) -> Resolution {
    match seconds {
        ..=3_600 => Resolution::TenSeconds,
        3_601..=172_800 => Resolution::Minute,
        _ => Resolution::Hour,
    }
}

/// Stored buckets (oldest first) merged into steps of a whole number of buckets, so that a
/// window of `seconds` from `from` has at most [`MAX_SERIES_POINTS`] (one more when the window
/// does not start on a step); every step present, empty or not.
fn series_points(
    buckets: &[(DateTime<Utc>, EdgeCounts)],
    bucket_secs: i64,
    from: DateTime<Utc>,
    seconds: i64,
) -> (i64, Vec<(DateTime<Utc>, GoldenMetrics)>) {
    let max = MAX_SERIES_POINTS as i64;
    let per_step = (seconds / bucket_secs + max - 1) / max;
    let step = bucket_secs * per_step.max(1);
    // Steps start on multiples of `step`, the first one holding `from`.
    let first = from.timestamp().div_euclid(step) * step;
    let last = (from.timestamp() + seconds - 1).div_euclid(step) * step;
    let n = usize::try_from((last - first) / step + 1).unwrap_or(0);
    let mut merged = vec![EdgeCounts::default(); n];
    for (at, counts) in buckets {
        let i = (at.timestamp().div_euclid(step) * step - first) / step;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| merged.get_mut(i)) {
            slot.merge(counts);
        }
    }
    let points = merged
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let start = DateTime::from_timestamp(first + i as i64 * step, 0).unwrap_or(from);
            (start, GoldenMetrics::of(c, step as f64))
        })
        .collect();
    (step, points)
}

/// A read's window in seconds: `window`, or `default` when it names none; 10 s to
/// [`MAX_WINDOW_SECS`].
pub fn window_seconds(window: Option<i64>, default: i64) -> Result<i64, AppError> {
    let seconds = window.unwrap_or(default);
    if !(10..=MAX_WINDOW_SECS).contains(&seconds) {
        return Err(AppError::bad_request(format!(
            "window must be 10 to {MAX_WINDOW_SECS} seconds, got {seconds}"
        ))
        .with_field("window", &format!("must be 10 to {MAX_WINDOW_SECS}")));
    }
    Ok(seconds)
}

/// Most access-log entries one page holds.
pub const MAX_ACCESS_LOG_PAGE: i64 = 500;
/// Entries in a page that names no `limit`.
pub const DEFAULT_ACCESS_LOG_PAGE: i64 = 100;
/// How far back an access-log search reaches when it names no `since`.
pub const DEFAULT_ACCESS_LOG_SECS: i64 = 3_600;

/// An access-log search as a front end received it: text, parsed by [`Control::access_log`].
#[derive(Debug, Default, Clone)]
pub struct AccessLogSearch {
    pub service: Option<String>,
    pub status: Option<String>,
    pub denied: Option<String>,
    /// RFC 3339 times.
    pub since: Option<String>,
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// One page of a mesh's access log, newest first, and the cursor of the next when it is full.
pub struct AccessLogPage {
    pub mesh: Mesh,
    pub entries: Vec<StoredAccessLog>,
    pub next_cursor: Option<String>,
}

/// The AccessPolicy rule an entry names, as it is now.
pub struct RuleNow {
    pub policy: String,
    pub rule: usize,
    /// The resource, unless it was deleted since.
    pub resource: Option<Resource>,
    /// The rule in the resource's spec now, if it still has one at that index.
    pub rule_spec: Option<Value>,
    /// The resource was written (or deleted) after the entry was stored.
    pub changed_since: bool,
}

/// Why a logged call was let through or refused.
pub struct Why {
    pub entry: StoredAccessLog,
    pub attribution: Attribution,
    pub rule: Option<RuleNow>,
}

/// What decided a stored entry (the one reading for every front end).
pub fn attribution_of(e: &AccessLogRecord) -> Attribution {
    // Outbound, the caller is the reporter itself, whose identity is its certificate.
    let identified = e.direction == "outbound" || e.source_identity.is_some();
    Attribution::of(e.outcome == "denied", e.rbac_policy.as_deref(), e.audit_policy.as_deref(), identified)
}

fn encode_cursor(e: &StoredAccessLog) -> String {
    keyset_cursor(e.received_at, e.id)
}

/// The cursor of a page that ends at the row (`at`, `id`) of a list ordered newest first.
pub(crate) fn keyset_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}/{}", at.timestamp_micros(), id))
}

/// Reads a [`keyset_cursor`] back.
pub(crate) fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(c.as_bytes()).ok()?).ok()?;
    let (micros, id) = text.split_once('/')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
}

impl AccessLogSearch {
    /// The store's query, or every parameter that is wrong, by name.
    fn parse(&self, mesh: MeshId, now: DateTime<Utc>) -> Result<AccessLogQuery, AppError> {
        let mut errors = Vec::new();
        let mut bad = |field: &str, message: &str| {
            errors.push(FieldError { field: field.to_owned(), message: message.to_owned() })
        };
        let time =
            |s: &Option<String>| s.as_deref().map(|t| DateTime::parse_from_rfc3339(t).map(|t| t.to_utc()));
        let until = match time(&self.until) {
            None => now,
            Some(Ok(t)) => t,
            Some(Err(_)) => {
                bad("until", "must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z");
                now
            }
        };
        let since = match time(&self.since) {
            None => until - TimeDelta::seconds(DEFAULT_ACCESS_LOG_SECS),
            Some(Ok(t)) if t <= until => t,
            Some(Ok(_)) => {
                bad("since", "must not be after until");
                until
            }
            Some(Err(_)) => {
                bad("since", "must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z");
                until
            }
        };
        let service = match self.service.as_deref().map(ResourceName::parse) {
            None => None,
            Some(Ok(s)) => Some(s.as_str().to_owned()),
            Some(Err(e)) => {
                bad("service", &format!("not a service name: {e}"));
                None
            }
        };
        let status =
            match self.status.as_deref().map(|s| s.parse::<i32>().ok().filter(|n| (100..=599).contains(n))) {
                None => None,
                Some(Some(n)) => Some(n),
                Some(None) => {
                    bad("status", "must be an HTTP status from 100 to 599");
                    None
                }
            };
        let denied_only = match self.denied.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                bad("denied", "must be true or false");
                false
            }
        };
        let after = match self.cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                bad("cursor", "use the nextCursor of the previous page");
                None
            }
        };
        let limit = match self
            .limit
            .as_deref()
            .map(|s| s.parse::<i64>().ok().filter(|n| (1..=MAX_ACCESS_LOG_PAGE).contains(n)))
        {
            None => DEFAULT_ACCESS_LOG_PAGE,
            Some(Some(n)) => n,
            Some(None) => {
                bad("limit", &format!("must be a number from 1 to {MAX_ACCESS_LOG_PAGE}"));
                DEFAULT_ACCESS_LOG_PAGE
            }
        };
        if !errors.is_empty() {
            let mut e = AppError::bad_request(match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                many => format!("{} query parameters are invalid; see errors", many.len()),
            });
            e.errors = errors;
            return Err(e);
        }
        Ok(AccessLogQuery { mesh, since, until, service, status, denied_only, after, limit })
    }
}

impl Control {
    /// One page of `mesh`'s access log, newest first.
    pub async fn access_log(
        &self,
        scope: Scope,
        mesh: &str,
        search: &AccessLogSearch,
    ) -> Result<AccessLogPage, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let query = search.parse(m.id, Utc::now())?;
        let entries = scope.tx.access_log(&query).await?;
        scope.commit().await?;
        let next_cursor = (entries.len() as i64 == query.limit)
            .then(|| encode_cursor(entries.last().expect("a full page")));
        Ok(AccessLogPage { mesh: m, entries, next_cursor })
    }

    /// Why the call an access-log entry records was let through or refused: the rule that
    /// decided (and that rule as it is now), default deny, or no mTLS identity.
    pub async fn why(&self, scope: Scope, mesh: &str, id: &str) -> Result<Why, AppError> {
        let mut scope = scope.allow(Action::Read)?;
        let m = scope.mesh(mesh).await?;
        let not_found = || AppError::not_found(format!("access-log entry {id:?} not found in mesh {mesh:?}"));
        let id: Uuid = id.parse().map_err(|_| not_found())?;
        let entry = scope.tx.access_log_entry(m.id, id).await?.ok_or_else(not_found)?;
        let attribution = attribution_of(&entry.record);
        let rule = match attribution.rule() {
            None => None,
            Some((policy, index)) => {
                let resource = match ResourceName::parse(policy) {
                    Ok(name) => scope.tx.get_resource(m.id, Kind::AccessPolicy.name(), &name).await?,
                    Err(_) => None,
                };
                let rule_spec = resource.as_ref().and_then(|r| r.spec.get("rules")?.get(index).cloned());
                let changed_since = match (&resource, entry.mesh_revision) {
                    (None, _) => true,
                    (Some(r), Some(at)) => r.mesh_revision.is_some_and(|written| written > at),
                    (Some(_), None) => false,
                };
                Some(RuleNow { policy: policy.to_owned(), rule: index, resource, rule_spec, changed_since })
            }
        };
        scope.commit().await?;
        Ok(Why { entry, attribution, rule })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(n: u64) -> EdgeCounts {
        EdgeCounts { requests: n, successes: n, ..Default::default() }
    }

    #[test]
    fn a_series_has_every_step_of_the_window_and_no_more_than_the_maximum() {
        let from = DateTime::from_timestamp(1_000_000, 0).unwrap();
        // Five minutes of 10 s buckets: 30 steps of one bucket (31 when `from` is not on a
        // bucket boundary), the recorded ones where they belong.
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let buckets = vec![(at(1_000_000), requests(10)), (at(1_000_290), requests(30))];
        let (step, points) = series_points(&buckets, 10, from, 300);
        assert_eq!(step, 10);
        assert_eq!(points.len(), 30);
        assert_eq!(points[0].1.requests, 10);
        assert_eq!(points[29].1.requests, 30);
        assert_eq!(points[0].1.rps, 1.0);
        assert!(points[1..29].iter().all(|(_, m)| m.requests == 0));
        // A day of minutes: merged into steps of 12 minutes, at most 120 of them.
        let (step, points) = series_points(&[], 60, from, 86_400);
        assert_eq!(step, 720);
        assert!(points.len() <= MAX_SERIES_POINTS + 1, "{}", points.len());
    }
}
