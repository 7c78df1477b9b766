//! A write's propagation, waited on: after the write commits, its status is read again (one
//! statement each time, with backoff, no connection held in between) until every proxy it
//! configures has applied it, one of them rejected it, or the wait is over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;
use trellis_model::config::Reach;
use trellis_model::{MeshId, OrgId, PropagationWait};
use trellis_store::{Reached, ReachedNow, Waiting};

use crate::{AppError, Control};

/// Most proxies a wait's answer names.
pub const WAIT_SHOWN: usize = 20;
/// The first pause between two reads, doubled each time up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// How a wait ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WaitOutcome {
    /// Every proxy the write configures applied it.
    Applied,
    /// A proxy rejected (NACKed) it.
    Rejected,
    /// The wait ended with proxies that had neither applied nor rejected it.
    TimedOut,
}

/// What a wait saw last.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitReport {
    pub outcome: WaitOutcome,
    pub waited_ms: u64,
    pub timeout_ms: u64,
    /// The proxies that have not applied the write, rejecting ones first (at most
    /// [`WAIT_SHOWN`]; `pending` in the counts says how many there are).
    pub not_applied: Vec<ProxyState>,
    /// One line for a person: "applied by all 3 proxies", or who rejected it and why, or who
    /// did not apply it in time.
    pub summary: String,
}

/// One proxy that has not applied a write.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    pub service: String,
    pub node: String,
    pub state: NotApplied,
    pub last_seen_at: DateTime<Utc>,
    /// Its outstanding rejection (of this write when `rejected`, of an earlier one otherwise).
    pub rejection: Option<RejectionNote>,
}

/// Why a proxy has not applied a write.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NotApplied {
    /// It refused this write (NACK).
    Rejected,
    /// It had not applied it when the wait timed out.
    Stale,
    /// Still on its way when another proxy's rejection ended the wait.
    Pending,
}

/// A rejection a proxy sent back.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionNote {
    /// The resource type, e.g. `RouteConfiguration`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub version: String,
    /// The proxy's reason.
    pub error: String,
    pub at: Option<DateTime<Utc>>,
}

impl ProxyState {
    fn of(w: Waiting, outcome: WaitOutcome) -> ProxyState {
        let state = match (w.rejected, outcome) {
            (true, _) => NotApplied::Rejected,
            (false, WaitOutcome::TimedOut) => NotApplied::Stale,
            (false, _) => NotApplied::Pending,
        };
        let rejection = w.rejection.map(|(r, at)| RejectionNote {
            type_name: short_type(&r.type_url).to_owned(),
            version: r.version,
            error: r.error,
            at,
        });
        ProxyState { service: w.service, node: w.node_id, state, last_seen_at: w.last_seen_at, rejection }
    }

    /// `service/node`, as a person names a proxy.
    pub fn name(&self) -> String {
        format!("{}/{}", self.service, self.node)
    }
}

impl WaitReport {
    fn new(now: ReachedNow, outcome: WaitOutcome, waited: Duration, wait: PropagationWait) -> WaitReport {
        let proxies = now.reached.proxies;
        let not_applied: Vec<ProxyState> =
            now.waiting.into_iter().map(|w| ProxyState::of(w, outcome)).collect();
        let missing = (proxies - now.reached.applied).max(0);
        let summary = match outcome {
            WaitOutcome::Applied => format!("applied by all {proxies} proxies it configures"),
            WaitOutcome::Rejected => {
                let lines: Vec<String> = not_applied
                    .iter()
                    .filter(|p| p.state == NotApplied::Rejected)
                    .map(|p| {
                        let r = p.rejection.as_ref().map_or(String::new(), |r| {
                            format!(": {} version {}: {}", r.type_name, r.version, r.error)
                        });
                        format!("{}{r}", p.name())
                    })
                    .collect();
                format!("rejected by {}", lines.join("; "))
            }
            WaitOutcome::TimedOut => {
                let names: Vec<String> = not_applied.iter().map(ProxyState::name).collect();
                let more = usize::try_from(missing).unwrap_or(0).saturating_sub(names.len());
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                format!(
                    "not applied within {wait} by {missing} of {proxies} proxies: {}{more}",
                    names.join(", ")
                )
            }
        };
        WaitReport {
            outcome,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(wait.get().as_millis()).unwrap_or(u64::MAX),
            not_applied,
            summary,
        }
    }
}

/// Which proxies a write configures, and the revision that carries it.
pub(crate) struct Landing<'a> {
    pub org: OrgId,
    pub mesh: MeshId,
    pub revision: i64,
    pub reach: Reach,
    /// None: every proxy of the mesh.
    pub target: Option<&'a str>,
}

impl Control {
    /// Reads a committed write's propagation until every proxy it configures has applied
    /// it, one rejected it, or `wait` is over; its status with how the wait ended.
    pub(crate) async fn await_propagation(
        &self,
        landing: Landing<'_>,
        wait: PropagationWait,
    ) -> Result<Propagation, AppError> {
        let start = Instant::now();
        let deadline = start + wait.get();
        let mut pause = FIRST_PAUSE;
        loop {
            let now = self
                .store
                .propagation_now(
                    landing.org,
                    landing.mesh,
                    landing.revision,
                    landing.reach,
                    landing.target,
                    WAIT_SHOWN as i32,
                )
                .await?;
            let outcome = if now.reached.applied >= now.reached.proxies {
                Some(WaitOutcome::Applied)
            } else if now.waiting.iter().any(|w| w.rejected) {
                Some(WaitOutcome::Rejected)
            } else if Instant::now() >= deadline {
                Some(WaitOutcome::TimedOut)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                let reached = now.reached.clone();
                let report = WaitReport::new(now, outcome, start.elapsed(), wait);
                let mut status = Propagation::new(landing.revision, reached);
                status.wait = Some(report);
                return Ok(status);
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// "applied by N of M proxies; rejected by K: reason" for a resource's last write.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    /// The mesh revision the resource's last write made.
    pub mesh_revision: i64,
    /// Online proxies the resource configures.
    pub proxies: usize,
    /// Of those, the ones that applied the revision.
    pub applied: usize,
    /// Proxies that have not applied it and have a rejection outstanding.
    pub rejected: usize,
    pub pending: usize,
    /// The first few rejection reasons.
    pub errors: Vec<String>,
    /// "applied by N of M proxies; rejected by K: reason".
    pub summary: String,
    /// Only when the write was sent with `?wait=`: how the wait ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitReport>,
}

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` → `Cluster`: an xDS type as a person names it.
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Propagation {
    /// The status of mesh revision `rev` from PostgreSQL's counts of the proxies it configures.
    pub(crate) fn new(rev: i64, r: Reached) -> Propagation {
        let errors: Vec<String> = r
            .rejections
            .iter()
            .map(|n| format!("{}: {} (version {})", short_type(&n.type_url), n.error, n.version))
            .collect();
        let mut summary = format!("applied by {} of {} proxies", r.applied, r.proxies);
        if let Some(first) = errors.first() {
            summary.push_str(&format!("; rejected by {}: {first}", r.rejected));
        }
        let count = |n: i64| usize::try_from(n).unwrap_or(0);
        Propagation {
            mesh_revision: rev,
            proxies: count(r.proxies),
            applied: count(r.applied),
            rejected: count(r.rejected),
            pending: count(r.proxies - r.applied - r.rejected),
            errors,
            summary,
            wait: None,
        }
    }
}
