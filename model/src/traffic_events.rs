//! Unexpected traffic: the pure core that reads a mesh's recent minutes and decides which
//! of them hold a new caller of a service, a burst of denied calls, or an edge whose rate or
//! error rate left its recent range — each an event with the figures that triggered it.
//!
//! The input is what the leader rolled up (final 1 min buckets) plus which edges carried
//! anything in the look-back before them; the output is deterministic for the same input, and
//! each event has a stable [`TrafficEvent::key`], so examining a minute twice (a retried run,
//! a new leader) records nothing twice.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{
    AccessAction, AccessPolicySpec, AccessRule, MAX_ACCESS_RULES, MAX_ACCESS_SOURCES, Source, TargetRef,
};

/// One minute in seconds.
pub const MINUTE: i64 = 60;

/// What the detection compares a minute with, and how far it must stray.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// How far back a caller counts as known (and the draft policy's callers come from).
    pub look_back_secs: i64,
    /// The minutes before the examined one that make its recent range.
    pub recent_minutes: i64,
    /// Fewest minutes of history (since the edge first carried traffic within the recent
    /// minutes) before a rate or an error rate is judged: a new edge has no range yet.
    pub min_history_minutes: usize,
    /// How many robust standard deviations (1.4826 · MAD) away is "far".
    pub spread_factor: f64,
    /// A rate jump changes the calls of a minute by at least this many…
    pub rate_floor: f64,
    /// …and by at least this share of the median (1.0: doubles; down: falls by half).
    pub rate_relative: f64,
    /// Fewest requests in a minute for its error rate to be judged.
    pub error_min_requests: u64,
    /// Fewest failures in a minute for an error-rate jump.
    pub error_min_failures: u64,
    /// An error-rate jump is at least this many points (0.10 = 10 points) above the median.
    pub error_floor: f64,
    /// Fewest denials of one destination in a minute for a burst.
    pub denied_floor: u64,
    /// Most events one scan records per mesh (a flood of edges cannot flood the table).
    pub max_events: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            look_back_secs: 7 * 86_400,
            recent_minutes: 60,
            min_history_minutes: 10,
            spread_factor: 6.0,
            rate_floor: 30.0,
            rate_relative: 1.0,
            error_min_requests: 20,
            error_min_failures: 5,
            error_floor: 0.10,
            denied_floor: 10,
            max_events: 100,
        }
    }
}

/// What one edge carried in one final minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCalls {
    pub requests: u64,
    /// Requests that failed (server errors and no response).
    pub failures: u64,
    pub tcp_connections: u64,
}

impl MinuteCalls {
    /// HTTP requests and TCP connections: the calls a rate counts.
    pub fn calls(&self) -> u64 {
        self.requests.saturating_add(self.tcp_connections)
    }
}

/// A caller and a service it called.
pub type Edge = (String, String);

/// What the detection reads for one mesh.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Edges that carried anything in the look-back before the recent minutes (from hour
    /// and minute rollups); the recent minutes themselves are in `minutes`.
    pub known_edges: BTreeSet<Edge>,
    /// Per minute (Unix seconds of its start) and edge: the calls, from `from − recent`
    /// up to the last examined minute.
    pub minutes: BTreeMap<(i64, Edge), MinuteCalls>,
    /// Per minute and destination: denied calls by caller (None: no identity).
    pub denied: BTreeMap<(i64, String), BTreeMap<Option<String>, u64>>,
}

/// The kind of an event; its stored name is [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EventKind {
    NewCaller,
    DeniedBurst,
    RateJump,
    ErrorRateJump,
}

impl EventKind {
    pub const ALL: [EventKind; 4] =
        [EventKind::NewCaller, EventKind::DeniedBurst, EventKind::RateJump, EventKind::ErrorRateJump];

    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NewCaller => "new-caller",
            EventKind::DeniedBurst => "denied-burst",
            EventKind::RateJump => "rate-jump",
            EventKind::ErrorRateJump => "error-rate-jump",
        }
    }

    /// Reads the stored name back.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Can an access policy settle it (deny the caller, allow the usual ones)?
    pub fn has_draft_policy(self) -> bool {
        matches!(self, EventKind::NewCaller | EventKind::DeniedBurst)
    }
}

/// Which way a rate left its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RateJumpDirection))]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    Up,
    Down,
}

/// A caller's denials in a burst.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeniedCaller {
    /// None: the caller presented no mesh identity.
    pub source: Option<String>,
    pub denials: u64,
}

/// Most callers an event's evidence lists.
pub const MAX_EVIDENCE_CALLERS: usize = 20;

/// The figures that triggered an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = TrafficEventEvidence))]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Evidence {
    #[serde(rename = "new-caller", rename_all = "camelCase")]
    NewCaller {
        /// Its calls in the minute it first appeared.
        calls: u64,
        look_back_days: f64,
        /// The destination's callers in the look-back (at most [`MAX_EVIDENCE_CALLERS`]).
        known_callers: Vec<String>,
        known_callers_total: usize,
    },
    #[serde(rename = "denied-burst", rename_all = "camelCase")]
    DeniedBurst {
        denials: u64,
        /// Denials per minute over the recent minutes: their median, and the count a burst
        /// had to exceed.
        recent_median: f64,
        threshold: f64,
        recent_minutes: i64,
        /// Most denied first (at most [`MAX_EVIDENCE_CALLERS`]).
        callers: Vec<DeniedCaller>,
    },
    #[serde(rename = "rate-jump", rename_all = "camelCase")]
    RateJump {
        direction: Direction,
        calls_per_minute: u64,
        recent_median: f64,
        recent_min: u64,
        recent_max: u64,
        /// The calls per minute it had to pass (above or below).
        threshold: f64,
        history_minutes: usize,
    },
    #[serde(rename = "error-rate-jump", rename_all = "camelCase")]
    ErrorRateJump {
        error_rate: f64,
        requests: u64,
        failures: u64,
        recent_median: f64,
        recent_max: f64,
        threshold: f64,
        history_minutes: usize,
    },
}

/// An unexpected traffic pattern in one minute of a mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficEvent {
    pub kind: EventKind,
    /// The minute's start, Unix seconds.
    pub minute: i64,
    /// The caller; None for a burst of denials of a destination (its callers are in the
    /// evidence).
    pub source: Option<String>,
    pub destination: String,
    pub evidence: Evidence,
}

impl TrafficEvent {
    /// The same event found twice has the same key (stored unique per mesh).
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.kind.as_str(),
            self.source.as_deref().unwrap_or("*"),
            self.destination,
            self.minute
        )
    }
}

/// Median and scaled median absolute deviation of `values` (not empty).
fn robust_range(values: &[f64]) -> (f64, f64) {
    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    }
    let mut v = values.to_vec();
    let m = median(&mut v);
    let mut dev: Vec<f64> = values.iter().map(|x| (x - m).abs()).collect();
    // 1.4826 · MAD estimates the standard deviation of normal data, unmoved by outliers.
    (m, 1.4826 * median(&mut dev))
}

/// The minutes `[from, to)` of `obs` examined for unexpected traffic, in time order (at most
/// `t.max_events`). `obs.minutes` must hold the recent minutes before `from` as well.
pub fn detect(obs: &Observations, from: i64, to: i64, t: &Thresholds) -> Vec<TrafficEvent> {
    let from = from.div_euclid(MINUTE) * MINUTE;
    let mut per_edge: BTreeMap<&Edge, BTreeMap<i64, MinuteCalls>> = BTreeMap::new();
    for ((minute, edge), calls) in &obs.minutes {
        per_edge.entry(edge).or_default().insert(*minute, *calls);
    }
    let mut events = Vec::new();
    let mut minute = from;
    while minute < to {
        new_callers(obs, &per_edge, minute, t, &mut events);
        denied_bursts(obs, minute, t, &mut events);
        for (edge, series) in &per_edge {
            rate_jump(edge, series, minute, t, &mut events);
            error_rate_jump(edge, series, minute, t, &mut events);
        }
        minute += MINUTE;
    }
    events.truncate(t.max_events);
    events
}

fn carried(c: &MinuteCalls) -> bool {
    c.calls() > 0
}

/// An edge carrying calls in `minute` with none in the look-back, into a destination that
/// had callers then: a service's first callers teach what is usual, so a new mesh or a new
/// service raises nothing.
fn new_callers(
    obs: &Observations,
    per_edge: &BTreeMap<&Edge, BTreeMap<i64, MinuteCalls>>,
    minute: i64,
    t: &Thresholds,
    out: &mut Vec<TrafficEvent>,
) {
    let seen_before = |edge: &Edge| {
        obs.known_edges.contains(edge)
            || per_edge.get(edge).is_some_and(|s| s.range(..minute).any(|(_, c)| carried(c)))
    };
    for (edge, series) in per_edge {
        let Some(now) = series.get(&minute).filter(|c| carried(c)) else { continue };
        if seen_before(edge) {
            continue;
        }
        let (source, destination) = (*edge).clone();
        let known: BTreeSet<&String> = obs
            .known_edges
            .iter()
            .chain(per_edge.keys().copied().filter(|e| seen_before(e)))
            .filter(|(s, d)| *d == destination && *s != source)
            .map(|(s, _)| s)
            .collect();
        if known.is_empty() {
            continue;
        }
        out.push(TrafficEvent {
            kind: EventKind::NewCaller,
            minute,
            source: Some(source),
            destination,
            evidence: Evidence::NewCaller {
                calls: now.calls(),
                look_back_days: t.look_back_secs as f64 / 86_400.0,
                known_callers_total: known.len(),
                known_callers: known.into_iter().take(MAX_EVIDENCE_CALLERS).cloned().collect(),
            },
        });
    }
}

/// A destination's denials in `minute` beyond the recent range of its denials per minute
/// (and at least `denied_floor`); a burst that goes on is one event, at its first minute.
fn denied_bursts(obs: &Observations, minute: i64, t: &Thresholds, out: &mut Vec<TrafficEvent>) {
    let total = |m: i64, d: &String| -> u64 {
        obs.denied.get(&(m, d.clone())).map_or(0, |by| by.values().fold(0u64, |a, n| a.saturating_add(*n)))
    };
    // (denials, median, threshold) when `m` is a burst.
    let burst = |m: i64, d: &String| -> Option<(u64, f64, f64)> {
        let n = total(m, d);
        if n < t.denied_floor {
            return None;
        }
        let history: Vec<f64> = (1..=t.recent_minutes).map(|i| total(m - i * MINUTE, d) as f64).collect();
        let (median, spread) = robust_range(&history);
        let threshold = median + (t.spread_factor * spread).max(t.denied_floor as f64).max(median);
        (n as f64 >= threshold).then_some((n, median, threshold))
    };
    let destinations: BTreeSet<&String> =
        obs.denied.keys().filter(|(m, _)| *m == minute).map(|(_, d)| d).collect();
    for d in destinations {
        let Some((denials, median, threshold)) = burst(minute, d) else { continue };
        if burst(minute - MINUTE, d).is_some() {
            continue;
        }
        let mut callers: Vec<DeniedCaller> = obs.denied[&(minute, d.clone())]
            .iter()
            .map(|(source, n)| DeniedCaller { source: source.clone(), denials: *n })
            .collect();
        callers.sort_by(|a, b| b.denials.cmp(&a.denials).then_with(|| a.source.cmp(&b.source)));
        callers.truncate(MAX_EVIDENCE_CALLERS);
        out.push(TrafficEvent {
            kind: EventKind::DeniedBurst,
            minute,
            source: None,
            destination: d.clone(),
            evidence: Evidence::DeniedBurst {
                denials,
                recent_median: median,
                threshold,
                recent_minutes: t.recent_minutes,
                callers,
            },
        });
    }
}

/// The recent minutes before `minute` since the edge first carried calls in them (zeros
/// included after that), or None with fewer than `min_history_minutes`.
fn history(series: &BTreeMap<i64, MinuteCalls>, minute: i64, t: &Thresholds) -> Option<Vec<MinuteCalls>> {
    let start = minute - t.recent_minutes * MINUTE;
    let first = series.range(start..minute).find(|(_, c)| carried(c)).map(|(m, _)| *m)?;
    let h: Vec<MinuteCalls> = (first..minute)
        .step_by(MINUTE as usize)
        .map(|m| series.get(&m).copied().unwrap_or_default())
        .collect();
    (h.len() >= t.min_history_minutes).then_some(h)
}

/// (direction, median, threshold) when the calls of `minute` are far outside the range.
fn rate_outlier(
    series: &BTreeMap<i64, MinuteCalls>,
    minute: i64,
    t: &Thresholds,
) -> Option<(Direction, f64, f64, Vec<MinuteCalls>)> {
    let h = history(series, minute, t)?;
    let values: Vec<f64> = h.iter().map(|c| c.calls() as f64).collect();
    let (median, spread) = robust_range(&values);
    let now = series.get(&minute).map_or(0, MinuteCalls::calls) as f64;
    let far = (t.spread_factor * spread).max(t.rate_floor);
    let high = median + far.max(t.rate_relative * median);
    let low = median - far.max(median / (1.0 + t.rate_relative));
    if now >= high {
        Some((Direction::Up, median, high, h))
    } else if now <= low {
        Some((Direction::Down, median, low, h))
    } else {
        None
    }
}

/// An edge's calls in `minute` far above or below its recent range; a jump that lasts is one
/// event, at its first minute.
fn rate_jump(
    edge: &Edge,
    series: &BTreeMap<i64, MinuteCalls>,
    minute: i64,
    t: &Thresholds,
    out: &mut Vec<TrafficEvent>,
) {
    let Some((direction, median, threshold, h)) = rate_outlier(series, minute, t) else { return };
    if rate_outlier(series, minute - MINUTE, t).is_some_and(|(d, ..)| d == direction) {
        return;
    }
    out.push(TrafficEvent {
        kind: EventKind::RateJump,
        minute,
        source: Some(edge.0.clone()),
        destination: edge.1.clone(),
        evidence: Evidence::RateJump {
            direction,
            calls_per_minute: series.get(&minute).map_or(0, MinuteCalls::calls),
            recent_median: median,
            recent_min: h.iter().map(MinuteCalls::calls).min().unwrap_or(0),
            recent_max: h.iter().map(MinuteCalls::calls).max().unwrap_or(0),
            threshold,
            history_minutes: h.len(),
        },
    });
}

fn error_rate(c: &MinuteCalls) -> f64 {
    c.failures.min(c.requests) as f64 / c.requests as f64
}

/// (median, max, threshold, history minutes) when the error rate of `minute` is far above
/// its recent range.
fn error_outlier(
    series: &BTreeMap<i64, MinuteCalls>,
    minute: i64,
    t: &Thresholds,
) -> Option<(f64, f64, f64, usize)> {
    let now = series.get(&minute).filter(|c| c.requests >= t.error_min_requests)?;
    if now.failures < t.error_min_failures {
        return None;
    }
    let rates: Vec<f64> = series
        .range(minute - t.recent_minutes * MINUTE..minute)
        .filter(|(_, c)| c.requests >= t.error_min_requests)
        .map(|(_, c)| error_rate(c))
        .collect();
    if rates.len() < t.min_history_minutes {
        return None;
    }
    let (median, spread) = robust_range(&rates);
    let threshold = median + (t.spread_factor * spread).max(t.error_floor);
    let max = rates.iter().copied().fold(0.0, f64::max);
    (error_rate(now) >= threshold).then_some((median, max, threshold, rates.len()))
}

/// An edge's error rate in `minute` far above its recent range; one event per jump.
fn error_rate_jump(
    edge: &Edge,
    series: &BTreeMap<i64, MinuteCalls>,
    minute: i64,
    t: &Thresholds,
    out: &mut Vec<TrafficEvent>,
) {
    let Some((median, max, threshold, n)) = error_outlier(series, minute, t) else { return };
    if error_outlier(series, minute - MINUTE, t).is_some() {
        return;
    }
    let now = series[&minute];
    out.push(TrafficEvent {
        kind: EventKind::ErrorRateJump,
        minute,
        source: Some(edge.0.clone()),
        destination: edge.1.clone(),
        evidence: Evidence::ErrorRateJump {
            error_rate: error_rate(&now),
            requests: now.requests,
            failures: now.failures,
            recent_median: median,
            recent_max: max,
            threshold,
            history_minutes: n,
        },
    });
}

/// The name of the AccessPolicy a draft proposes for `destination`.
pub fn draft_policy_name(destination: &str) -> String {
    const SUFFIX: &str = "-expected-callers";
    let keep = crate::ResourceName::MAX_LEN - SUFFIX.len();
    let stem: String = destination.chars().take(keep).collect();
    format!("{}{SUFFIX}", stem.trim_end_matches('-'))
}

/// The access policy that settles a new caller or a denied burst at `destination`: deny
/// the unexpected callers (explicitly, so it holds under default allow too) and allow the
/// callers it usually has (so that, under default deny, they keep working). `source` names
/// a caller as the rule's source: a service of the mesh, or its SPIFFE identity when no
/// such service exists any more. None when there is nobody to name.
pub fn draft_policy(
    destination: &str,
    unexpected: &[String],
    usual: &[String],
    source: impl Fn(&str) -> Source,
) -> Option<AccessPolicySpec> {
    let usual: Vec<&String> = usual.iter().filter(|u| !unexpected.contains(u)).collect();
    let mut rules = Vec::new();
    for chunk in unexpected.chunks(MAX_ACCESS_SOURCES) {
        rules.push(AccessRule {
            action: AccessAction::Deny,
            from: chunk.iter().map(|s| source(s)).collect(),
            to: None,
        });
    }
    for chunk in usual.chunks(MAX_ACCESS_SOURCES) {
        rules.push(AccessRule {
            action: AccessAction::Allow,
            from: chunk.iter().map(|s| source(s)).collect(),
            to: None,
        });
    }
    rules.truncate(MAX_ACCESS_RULES);
    (!rules.is_empty())
        .then(|| AccessPolicySpec { target_ref: TargetRef { service: destination.to_owned() }, rules })
}

#[cfg(test)]
#[path = "traffic_events_tests.rs"]
mod tests;
