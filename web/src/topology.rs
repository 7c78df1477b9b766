//! What the topology page draws, pure: a window's edge totals narrowed by the viewer's
//! filter, and kept readable when a mesh has many services. Over [`MAX_NODES`] services,
//! services are collapsed into groups by name prefix (the part before the first `-`:
//! `billing-api` and `billing-db` are `billing-*`); a group links to its own view, where its
//! members are shown one by one and everything else stays grouped. Filtering by a service
//! shows its neighbourhood: who calls it and whom it calls. If even the groups are too many,
//! the busiest are kept and the page says how many are left out.

use std::collections::BTreeMap;

use trellis_model::telemetry::{EdgeCounts, EdgeTotal, GoldenMetrics, SubsetShare};

/// Most nodes a topology drawing holds before services are grouped.
pub const MAX_NODES: usize = 30;

/// What the viewer narrowed the topology to.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this service, its callers and its callees.
    pub service: Option<String>,
    /// Only the services of this name prefix one by one (and what they call or are called by).
    pub group: Option<String>,
}

/// A box of the drawing: a service, or a group of services sharing a name prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// Services in the group; None for a single service.
    pub members: Option<usize>,
    /// The service the view is filtered by.
    pub focus: bool,
}

/// An arrow of the drawing: between two nodes, with its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub source: usize,
    pub destination: usize,
    pub metrics: GoldenMetrics,
    /// How the requests split between subsets (versions) of the destination; none for an
    /// edge between groups.
    pub subsets: Vec<SubsetShare>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Edges inside a group, not drawn.
    pub hidden_inside_groups: usize,
    /// Nodes left out to stay readable.
    pub left_out: usize,
}

/// The group a service belongs to: its name up to the first `-`.
pub fn prefix(service: &str) -> &str {
    service.split('-').next().unwrap_or(service)
}

/// The drawing of `totals` (a window of `window_secs`) as `filter` narrows it.
pub fn view(totals: &[EdgeTotal], window_secs: f64, filter: &Filter) -> View {
    let kept: Vec<&EdgeTotal> = totals
        .iter()
        .filter(|t| match (&filter.service, &filter.group) {
            (Some(s), _) => &t.source == s || &t.destination == s,
            (None, Some(g)) => prefix(&t.source) == g || prefix(&t.destination) == g,
            (None, None) => true,
        })
        .collect();
    let mut services: Vec<&str> =
        kept.iter().flat_map(|t| [t.source.as_str(), t.destination.as_str()]).collect();
    services.sort_unstable();
    services.dedup();
    let grouping = services.len() > MAX_NODES;
    // A service's node name: itself, or its group's (members of the viewed group and the
    // filtered service stay themselves).
    let mut group_sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &services {
        *group_sizes.entry(prefix(s)).or_default() += 1;
    }
    let node_of = |s: &str| -> (String, Option<usize>) {
        let g = prefix(s);
        let alone = !grouping
            || filter.service.as_deref() == Some(s)
            || filter.group.as_deref() == Some(g)
            || group_sizes.get(g) == Some(&1);
        if alone { (s.to_owned(), None) } else { (format!("{g}-*"), group_sizes.get(g).copied()) }
    };

    // Merge the totals per (node, node).
    let mut merged: BTreeMap<(String, String), (EdgeCounts, Vec<SubsetShare>, bool)> = BTreeMap::new();
    let mut members: BTreeMap<String, Option<usize>> = BTreeMap::new();
    let mut hidden_inside_groups = 0;
    for t in &kept {
        let (a, am) = node_of(&t.source);
        let (b, bm) = node_of(&t.destination);
        members.insert(a.clone(), am);
        members.insert(b.clone(), bm);
        if a == b && (am.is_some() || bm.is_some()) {
            hidden_inside_groups += 1;
            continue;
        }
        let grouped = am.is_some() || bm.is_some();
        let entry = merged.entry((a, b)).or_insert_with(|| (EdgeCounts::default(), Vec::new(), grouped));
        entry.0.merge(&t.counts);
        if !grouped {
            entry.1 = t
                .subsets
                .iter()
                .map(|s| SubsetShare {
                    subset: s.subset.clone(),
                    requests: s.requests,
                    share: (t.counts.requests > 0).then(|| s.requests as f64 / t.counts.requests as f64),
                })
                .collect();
        }
    }

    // Too many nodes even so: keep the busiest.
    let mut traffic: BTreeMap<&str, u64> = members.keys().map(|n| (n.as_str(), 0)).collect();
    for ((a, b), (c, ..)) in &merged {
        let calls = c.requests.saturating_add(c.tcp_connections);
        for n in [a, b] {
            if let Some(t) = traffic.get_mut(n.as_str()) {
                *t = t.saturating_add(calls);
            }
        }
    }
    let mut names: Vec<&str> = traffic.keys().copied().collect();
    let left_out = names.len().saturating_sub(MAX_NODES);
    if left_out > 0 {
        names.sort_by_key(|n| (std::cmp::Reverse(traffic[n]), *n));
        names.truncate(MAX_NODES);
        names.sort_unstable();
    }
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let nodes = names
        .iter()
        .map(|n| Node {
            name: (*n).to_owned(),
            members: members.get(*n).copied().flatten(),
            focus: filter.service.as_deref() == Some(*n),
        })
        .collect();
    let edges = merged
        .iter()
        .filter_map(|((a, b), (counts, subsets, _))| {
            Some(Edge {
                source: *index.get(a.as_str())?,
                destination: *index.get(b.as_str())?,
                metrics: GoldenMetrics::of(counts, window_secs),
                subsets: subsets.clone(),
            })
        })
        .collect();
    View { nodes, edges, hidden_inside_groups, left_out }
}

#[cfg(test)]
mod tests {
    use trellis_model::Tags;
    use trellis_model::telemetry::SubsetRequests;

    use super::*;

    fn total(source: &str, destination: &str, requests: u64) -> EdgeTotal {
        EdgeTotal {
            source: source.into(),
            destination: destination.into(),
            counts: EdgeCounts { requests, successes: requests, ..Default::default() },
            subsets: Vec::new(),
        }
    }

    fn names(v: &View) -> Vec<&str> {
        v.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn a_small_mesh_is_drawn_service_by_service_with_its_split() {
        let mut reviews = total("productpage", "reviews", 100);
        reviews.subsets = vec![
            SubsetRequests { subset: Tags::parse([("version", "v1")]).unwrap(), requests: 75 },
            SubsetRequests { subset: Tags::parse([("version", "v2")]).unwrap(), requests: 25 },
        ];
        let v = view(&[reviews, total("reviews", "ratings", 50)], 10.0, &Filter::default());
        assert_eq!(names(&v), ["productpage", "ratings", "reviews"]);
        let e = &v.edges[0];
        assert_eq!((e.source, e.destination), (0, 2));
        assert_eq!(e.metrics.rps, 10.0);
        assert_eq!(e.subsets[1].share, Some(0.25));
    }

    #[test]
    fn two_hundred_services_collapse_into_groups_and_a_group_opens_its_members() {
        let totals: Vec<EdgeTotal> = (0..200)
            .map(|i| {
                total(&format!("team{}-svc{i}", i % 10), &format!("team{}-svc{}", (i + 1) % 10, i + 1), 5)
            })
            .collect();
        let v = view(&totals, 60.0, &Filter::default());
        assert_eq!(v.nodes.len(), 10, "{:?}", names(&v));
        assert!(v.nodes.iter().all(|n| n.members == Some(20) || n.members == Some(21)), "{:?}", v.nodes);
        assert_eq!(v.left_out, 0);
        // One group opened: its 20 members by name, the groups they talk to collapsed.
        let v = view(&totals, 60.0, &Filter { group: Some("team3".into()), ..Filter::default() });
        let singles = v.nodes.iter().filter(|n| n.members.is_none()).count();
        assert_eq!(singles, 20, "{:?}", names(&v));
        assert!(v.nodes.len() <= MAX_NODES);
    }

    #[test]
    fn a_service_filter_shows_its_neighbourhood_and_marks_it() {
        let totals = [total("a", "b", 1), total("b", "c", 1), total("c", "d", 1)];
        let v = view(&totals, 1.0, &Filter { service: Some("b".into()), ..Filter::default() });
        assert_eq!(names(&v), ["a", "b", "c"]);
        assert!(v.nodes[1].focus);
        assert_eq!(v.edges.len(), 2);
    }

    #[test]
    fn too_many_groups_keep_the_busiest() {
        let totals: Vec<EdgeTotal> = (0..80).map(|i| total(&format!("s{i}"), "hub", i)).collect();
        let v = view(&totals, 1.0, &Filter::default());
        assert_eq!(v.nodes.len(), MAX_NODES);
        assert_eq!(v.left_out, 81 - MAX_NODES);
        assert!(names(&v).contains(&"hub") && names(&v).contains(&"s79") && !names(&v).contains(&"s0"));
    }
}
