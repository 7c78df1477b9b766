//! A synthetic mesh of many services for scale tests and benches, written through the store
//! as the ingestion writer writes edges: services `team<k>-svc<i>` in teams of 25 (so that
//! the topology groups them by name prefix), each calling `calls_each` distinct others.

use chrono::{DateTime, Utc};
use trellis_model::telemetry::{EdgeCounts, EdgeKey, ResponseClass};
use trellis_model::{MeshId, OrgId, ResourceName};
use trellis_store::{EdgeSample, Store};

/// Services per team (name prefix).
pub const TEAM_SIZE: usize = 25;

/// The name of service `i`.
pub fn service(i: usize) -> String {
    format!("team{}-svc{i}", i / TEAM_SIZE)
}

/// The edges of a mesh of `services` services each calling `calls_each` others: (source,
/// destination, requests), distinct pairs, no self-calls.
pub fn edges(services: usize, calls_each: usize) -> Vec<(usize, usize, u64)> {
    assert!(calls_each < services, "a service calls at most every other one");
    // Strides of 97 (coprime with the counts used) spread each service's callees across
    // teams; `1 + j * stride` stays distinct and non-zero modulo `services` for small j.
    let stride = 97;
    (0..services)
        .flat_map(|i| {
            (0..calls_each)
                .map(move |j| (i, (i + 1 + j * stride) % services, ((i * 7 + j * 3) % 50 + 1) as u64))
        })
        .collect()
}

/// Writes `edges` of `services` into `mesh` at `bucket` (one 10 s bucket), with a latency
/// per request; returns the requests written.
pub async fn record(
    store: &Store,
    org: OrgId,
    mesh: MeshId,
    edges: &[(usize, usize, u64)],
    bucket: DateTime<Utc>,
) -> u64 {
    let name = |i: usize| ResourceName::parse(&service(i)).unwrap();
    let samples: Vec<EdgeSample> = edges
        .iter()
        .map(|&(s, d, requests)| {
            let mut counts =
                EdgeCounts { requests, successes: requests - requests / 10, ..Default::default() };
            counts.latency.add_to_bucket((s + d) % 40 + 8, requests);
            EdgeSample {
                mesh,
                bucket_start: bucket,
                key: EdgeKey {
                    source: name(s),
                    destination: name(d),
                    destination_subset: Default::default(),
                    route: None,
                    class: ResponseClass::Success,
                },
                counts,
            }
        })
        .collect();
    for chunk in samples.chunks(2_000) {
        let mut tx = store.tenant(org).await.unwrap();
        tx.record_edges(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    edges.iter().map(|e| e.2).sum()
}
