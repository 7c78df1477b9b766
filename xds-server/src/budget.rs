//! Per-organization budgets of stored rows in each 10 s bucket, so that one noisy tenant
//! cannot fill the tables the others share: at most `series` distinct edge series (mesh,
//! source, destination, subset, route, response class) and `log_entries` access-log entries
//! per organization and bucket, on this replica. A series already admitted in a bucket is
//! always admitted again (the writer merges it into the same row, so it costs no new row);
//! only new series past the budget are dropped. Pure: the caller passes the bucket.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use trellis_model::telemetry::EdgeKey;
use trellis_model::{MeshId, OrgId};
use trellis_store::EdgeSample;

/// Buckets kept per organization: the current one and the one before, for a report that
/// raced the bucket's turn.
const KEPT_BUCKETS: usize = 2;

/// What one organization has admitted in one bucket.
#[derive(Default)]
struct Admitted {
    series: HashSet<(MeshId, EdgeKey)>,
    log_entries: usize,
}

/// The budgets and what each organization has used of them.
pub(crate) struct Budgets {
    series: usize,
    log_entries: usize,
    used: HashMap<OrgId, BTreeMap<DateTime<Utc>, Admitted>>,
    /// The newest bucket a sweep of idle organizations ran for.
    swept: Option<DateTime<Utc>>,
}

impl Budgets {
    /// At most `series` edge series and `log_entries` access-log entries per organization
    /// and bucket.
    pub(crate) fn new(series: usize, log_entries: usize) -> Self {
        Self { series, log_entries, used: HashMap::new(), swept: None }
    }

    fn bucket(&mut self, org: OrgId, bucket: DateTime<Utc>) -> &mut Admitted {
        // Once per new bucket, forget organizations that reported in none of the kept ones:
        // memory follows the active tenants.
        if self.swept.is_none_or(|s| bucket > s) {
            self.swept = Some(bucket);
            let oldest = bucket - TimeDelta::seconds(10 * KEPT_BUCKETS as i64);
            self.used.retain(|_, b| b.last_key_value().is_some_and(|(at, _)| *at > oldest));
        }
        let buckets = self.used.entry(org).or_default();
        while buckets.len() >= KEPT_BUCKETS && !buckets.contains_key(&bucket) {
            buckets.pop_first();
        }
        buckets.entry(bucket).or_default()
    }

    /// Keeps of `samples` (all of `bucket`) those whose series `org` already has in the
    /// bucket or that still fit its budget; returns how many were dropped.
    pub(crate) fn admit_edges(
        &mut self,
        org: OrgId,
        bucket: DateTime<Utc>,
        samples: &mut Vec<EdgeSample>,
    ) -> usize {
        let budget = self.series;
        let admitted = self.bucket(org, bucket);
        let before = samples.len();
        samples.retain(|s| {
            let series = (s.mesh, s.key.clone());
            if admitted.series.contains(&series) {
                true
            } else if admitted.series.len() < budget {
                admitted.series.insert(series);
                true
            } else {
                false
            }
        });
        before - samples.len()
    }

    /// How many of `n` access-log entries of `org` in `bucket` fit its budget (the first
    /// ones are kept); they are counted as used.
    pub(crate) fn admit_log_entries(&mut self, org: OrgId, bucket: DateTime<Utc>, n: usize) -> usize {
        let budget = self.log_entries;
        let admitted = self.bucket(org, bucket);
        let fit = n.min(budget.saturating_sub(admitted.log_entries));
        admitted.log_entries += fit;
        fit
    }
}

#[cfg(test)]
mod tests {
    use trellis_model::telemetry::{EdgeCounts, ResponseClass};
    use trellis_model::{ResourceName, Tags};

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn sample(mesh: MeshId, bucket: DateTime<Utc>, destination: &str, class: ResponseClass) -> EdgeSample {
        EdgeSample {
            mesh,
            bucket_start: bucket,
            key: EdgeKey {
                source: ResourceName::parse("web").unwrap(),
                destination: ResourceName::parse(destination).unwrap(),
                destination_subset: Tags::default(),
                route: None,
                class,
            },
            counts: EdgeCounts { requests: 1, ..Default::default() },
        }
    }

    fn destinations(samples: &[EdgeSample]) -> Vec<String> {
        samples.iter().map(|s| format!("{}/{}", s.key.destination, s.key.class.as_str())).collect()
    }

    #[test]
    fn known_series_are_always_admitted_and_only_new_ones_past_the_budget_dropped() {
        let (org, mesh) = (OrgId::new(), MeshId::new());
        let mut b = Budgets::new(2, 0);
        let mut first = vec![sample(mesh, at(0), "a", ResponseClass::Success)];
        assert_eq!(b.admit_edges(org, at(0), &mut first), 0);
        // The same series again, two new ones: one fits, one does not.
        let mut next = vec![
            sample(mesh, at(0), "a", ResponseClass::Success),
            sample(mesh, at(0), "b", ResponseClass::Success),
            sample(mesh, at(0), "c", ResponseClass::Success),
        ];
        assert_eq!(b.admit_edges(org, at(0), &mut next), 1);
        assert_eq!(destinations(&next), ["a/2xx", "b/2xx"]);
        // Full: known series still pass (merged into their rows), a new class is a new series.
        let mut later = vec![
            sample(mesh, at(0), "b", ResponseClass::Success),
            sample(mesh, at(0), "b", ResponseClass::ServerError),
            sample(mesh, at(0), "a", ResponseClass::Success),
        ];
        assert_eq!(b.admit_edges(org, at(0), &mut later), 1);
        assert_eq!(destinations(&later), ["b/2xx", "a/2xx"]);
    }

    #[test]
    fn each_organization_and_bucket_has_its_own_budget() {
        let (noisy, quiet, mesh, other) = (OrgId::new(), OrgId::new(), MeshId::new(), MeshId::new());
        let mut b = Budgets::new(1, 0);
        let mut s = vec![
            sample(mesh, at(0), "a", ResponseClass::Success),
            sample(mesh, at(0), "b", ResponseClass::Success),
        ];
        assert_eq!(b.admit_edges(noisy, at(0), &mut s), 1);
        // Another organization is untouched by the noisy one's use.
        let mut q = vec![sample(other, at(0), "a", ResponseClass::Success)];
        assert_eq!(b.admit_edges(quiet, at(0), &mut q), 0);
        // The same edge in another mesh of the organization is another series.
        let mut m = vec![sample(other, at(0), "a", ResponseClass::Success)];
        assert_eq!(b.admit_edges(noisy, at(0), &mut m), 1);
        // A new bucket starts afresh; the one before is still known to a late report.
        let mut n = vec![sample(mesh, at(10), "b", ResponseClass::Success)];
        assert_eq!(b.admit_edges(noisy, at(10), &mut n), 0);
        let mut late = vec![
            sample(mesh, at(0), "a", ResponseClass::Success),
            sample(mesh, at(0), "c", ResponseClass::Success),
        ];
        assert_eq!(b.admit_edges(noisy, at(0), &mut late), 1);
        assert_eq!(destinations(&late), ["a/2xx"]);
    }

    #[test]
    fn access_log_entries_fit_the_budget_per_bucket() {
        let (org, quiet) = (OrgId::new(), OrgId::new());
        let mut b = Budgets::new(0, 5);
        assert_eq!(b.admit_log_entries(org, at(0), 3), 3);
        assert_eq!(b.admit_log_entries(org, at(0), 3), 2);
        assert_eq!(b.admit_log_entries(org, at(0), 3), 0);
        assert_eq!(b.admit_log_entries(quiet, at(0), 5), 5);
        assert_eq!(b.admit_log_entries(org, at(10), 4), 4);
    }

    #[test]
    fn idle_organizations_are_forgotten() {
        let (idle, busy) = (OrgId::new(), OrgId::new());
        let mut b = Budgets::new(0, 5);
        b.admit_log_entries(idle, at(0), 1);
        b.admit_log_entries(busy, at(30), 1);
        assert!(!b.used.contains_key(&idle));
        assert_eq!(b.used.len(), 1);
    }
}
