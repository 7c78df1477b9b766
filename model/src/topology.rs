//! A mesh's topology as every front end shows it, pure: a window's edge totals narrowed by a
//! filter and kept within a node budget, so that a graph of 1,000 services stays readable
//! and small (Kiali's and Linkerd's graphs fail there because they send every node).
//!
//! Over the budget, services are grouped by name prefix (the part before the first `-`:
//! `billing-api` and `billing-db` are `billing-*`). A group's node carries the figures of
//! every call into its members and how many they are; the edge between two nodes is the
//! exact merge (counts and latency buckets added) of the service edges it stands for, and
//! the calls inside a group are its loop. If even the groups are too many, the busiest keep
//! a node each and the rest share one, [`OTHER`]: no call is ever left out of a view, so the
//! requests of a view's edges always add up to those of the edges it was made from.

use std::collections::{BTreeMap, HashMap};

use crate::ResourceName;
use crate::config::FieldError;
use crate::telemetry::{EdgeCounts, EdgeTotal, GoldenMetrics, SubsetShare};

/// Most nodes the REST topology's view holds before services are grouped.
pub const API_MAX_NODES: usize = 150;
/// Most edges a view without grouping returns; past it the caller must filter.
pub const MAX_UNGROUPED_EDGES: usize = 5_000;
/// The node that holds what is left when even the groups are over the budget.
pub const OTHER: &str = "(other)";

/// Whether services may be grouped to stay within the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grouping {
    /// By name prefix when the view has more services than the budget.
    #[default]
    ByPrefix,
    /// Every service its own node (bounded by [`MAX_UNGROUPED_EDGES`]).
    None,
}

/// What the viewer narrowed the topology to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only this service, its callers and its callees.
    pub service: Option<ResourceName>,
    /// Only the services of this name prefix one by one, and what they call or are called by.
    pub group: Option<String>,
    pub grouping: Grouping,
}

impl Filter {
    /// The filter of a request's parameters (empty text is no filter): `service` a service
    /// name, `group` a prefix (`billing`, or `billing-*` as a group's node is named),
    /// `grouping` `prefix` (the default) or `none`.
    pub fn parse(
        service: Option<&str>,
        group: Option<&str>,
        grouping: Option<&str>,
    ) -> Result<Filter, FieldError> {
        fn given(s: Option<&str>) -> Option<&str> {
            s.map(str::trim).filter(|s| !s.is_empty())
        }
        let bad = |field: &str, message: String| FieldError { field: field.to_owned(), message };
        let service = given(service)
            .map(|s| ResourceName::parse(s).map_err(|e| bad("service", format!("not a service name: {e}"))))
            .transpose()?;
        let group = given(group)
            .map(|g| {
                let g = g.strip_suffix("-*").unwrap_or(g);
                match ResourceName::parse(g) {
                    Ok(_) if !g.contains('-') => Ok(g.to_owned()),
                    _ => Err(bad(
                        "group",
                        format!(
                            "a group is a service name's part before its first '-' (e.g. billing), got {g:?}"
                        ),
                    )),
                }
            })
            .transpose()?;
        let grouping = match given(grouping) {
            None | Some("prefix") => Grouping::ByPrefix,
            Some("none") => Grouping::None,
            Some(other) => return Err(bad("grouping", format!("must be prefix or none, got {other:?}"))),
        };
        Ok(Filter { service, group, grouping })
    }
}

/// The group a service belongs to: its name up to the first `-`.
pub fn prefix(service: &str) -> &str {
    service.split('-').next().unwrap_or(service)
}

/// What a node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Service,
    /// The services whose name starts with this prefix and `-`.
    Group(String),
    /// The least busy services and groups, past the budget.
    Other,
}

/// A node of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The service, `<prefix>-*` for a group, or [`OTHER`].
    pub name: String,
    pub kind: NodeKind,
    /// Services it stands for (1 for a service).
    pub members: usize,
    /// The service the view is filtered by.
    pub focus: bool,
    /// Every call its members received in the window (from any caller).
    pub metrics: GoldenMetrics,
}

/// An edge of the view, between two nodes (the same one for calls inside a group).
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub source: usize,
    pub destination: usize,
    pub metrics: GoldenMetrics,
    /// How the requests split between subsets (versions) of the destination; only for an
    /// edge between two services.
    pub subsets: Vec<SubsetShare>,
    /// Service edges merged into it.
    pub merged: usize,
}

/// What a front end shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Sorted by name, [`OTHER`] last.
    pub nodes: Vec<Node>,
    /// Sorted by source and destination node.
    pub edges: Vec<Edge>,
    /// Services in the view (those at either end of an edge the filter kept).
    pub services: usize,
    /// Were services grouped?
    pub grouped: bool,
}

impl View {
    /// Service edges inside groups: the loops of group nodes.
    pub fn edges_inside_groups(&self) -> usize {
        self.edges.iter().filter(|e| e.source == e.destination).map(|e| e.merged).sum()
    }
}

/// Why a view was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error(
        "{edges} edges are too many to return without grouping (at most {max}); filter by service or group"
    )]
    TooManyEdges { edges: usize, max: usize },
}

/// The view of `totals` (a window of `window_secs`) as `filter` narrows it, with at most
/// `max_nodes` nodes unless grouping is off.
pub fn view(
    totals: &[EdgeTotal],
    window_secs: f64,
    filter: &Filter,
    max_nodes: usize,
) -> Result<View, ViewError> {
    let max_nodes = max_nodes.max(2);
    let focus = filter.service.as_ref().map(ResourceName::as_str);
    let kept: Vec<&EdgeTotal> = totals
        .iter()
        .filter(|t| match (focus, &filter.group) {
            (Some(s), _) => t.source == s || t.destination == s,
            (None, Some(g)) => prefix(&t.source) == g || prefix(&t.destination) == g,
            (None, None) => true,
        })
        .collect();
    if filter.grouping == Grouping::None && kept.len() > MAX_UNGROUPED_EDGES {
        return Err(ViewError::TooManyEdges { edges: kept.len(), max: MAX_UNGROUPED_EDGES });
    }
    let mut services: Vec<&str> =
        kept.iter().flat_map(|t| [t.source.as_str(), t.destination.as_str()]).collect();
    services.sort_unstable();
    services.dedup();
    let grouped = filter.grouping == Grouping::ByPrefix && services.len() > max_nodes;
    let mut group_sizes: HashMap<&str, usize> = HashMap::new();
    for s in &services {
        *group_sizes.entry(prefix(s)).or_default() += 1;
    }
    // A service's node before the budget: itself, or its group (the focus, the members of
    // the opened group and a group of one stay themselves).
    let first_node = |s: &str| -> String {
        let g = prefix(s);
        let alone = !grouped
            || focus == Some(s)
            || filter.group.as_deref() == Some(g)
            || group_sizes.get(g) == Some(&1);
        if alone { s.to_owned() } else { format!("{g}-*") }
    };
    let node_of_service: HashMap<&str, String> = services.iter().map(|s| (*s, first_node(s))).collect();

    // Over the budget even so: the busiest keep their node (the focus always), the rest
    // share one.
    let mut traffic: BTreeMap<&str, u64> = node_of_service.values().map(|n| (n.as_str(), 0)).collect();
    for t in &kept {
        let calls = t.counts.requests.saturating_add(t.counts.tcp_connections);
        for n in [&node_of_service[t.source.as_str()], &node_of_service[t.destination.as_str()]] {
            if let Some(c) = traffic.get_mut(n.as_str()) {
                *c = c.saturating_add(calls);
            }
        }
    }
    let mut folded: Vec<&str> = Vec::new();
    if grouped && traffic.len() > max_nodes {
        let mut by_traffic: Vec<(&str, u64)> = traffic.iter().map(|(n, c)| (*n, *c)).collect();
        by_traffic.sort_by_key(|(n, c)| (Some(*n) != focus, std::cmp::Reverse(*c), *n));
        folded = by_traffic[max_nodes - 1..].iter().map(|(n, _)| *n).collect();
    }
    let folded: std::collections::HashSet<&str> = folded.into_iter().collect();
    let node_name: HashMap<&str, &str> = node_of_service
        .iter()
        .map(|(s, n)| (*s, if folded.contains(n.as_str()) { OTHER } else { n.as_str() }))
        .collect();

    // Nodes, with their members and every call into them (from all of `totals`).
    let mut inbound: HashMap<&str, EdgeCounts> = HashMap::new();
    for t in totals {
        if node_of_service.contains_key(t.destination.as_str()) {
            inbound.entry(t.destination.as_str()).or_default().merge(&t.counts);
        }
    }
    let mut nodes: BTreeMap<(bool, &str), (usize, EdgeCounts)> = BTreeMap::new();
    for s in &services {
        let n = node_name[s];
        let entry = nodes.entry((n == OTHER, n)).or_default();
        entry.0 += 1;
        if let Some(c) = inbound.get(s) {
            entry.1.merge(c);
        }
    }
    let index: HashMap<&str, usize> = nodes.keys().enumerate().map(|(i, (_, n))| (*n, i)).collect();

    // Edges: the exact merge of the service edges between two nodes.
    let mut edges: BTreeMap<(usize, usize), (EdgeCounts, usize, &EdgeTotal)> = BTreeMap::new();
    for t in &kept {
        let key = (index[node_name[t.source.as_str()]], index[node_name[t.destination.as_str()]]);
        let entry = edges.entry(key).or_insert_with(|| (EdgeCounts::default(), 0, *t));
        entry.0.merge(&t.counts);
        entry.1 += 1;
    }
    let nodes = nodes
        .into_iter()
        .map(|((other, name), (members, counts))| Node {
            name: name.to_owned(),
            kind: if other {
                NodeKind::Other
            } else if name.ends_with("-*") {
                NodeKind::Group(name.trim_end_matches("-*").to_owned())
            } else {
                NodeKind::Service
            },
            members,
            focus: focus == Some(name),
            metrics: GoldenMetrics::of(&counts, window_secs),
        })
        .collect::<Vec<_>>();
    let edges = edges
        .into_iter()
        .map(|((source, destination), (counts, merged, first))| {
            let between_services = merged == 1
                && nodes[source].kind == NodeKind::Service
                && nodes[destination].kind == NodeKind::Service;
            let subsets = if between_services {
                first
                    .subsets
                    .iter()
                    .map(|s| SubsetShare {
                        subset: s.subset.clone(),
                        requests: s.requests,
                        share: (counts.requests > 0).then(|| s.requests as f64 / counts.requests as f64),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Edge { source, destination, metrics: GoldenMetrics::of(&counts, window_secs), subsets, merged }
        })
        .collect();
    Ok(View { nodes, edges, services: services.len(), grouped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tags;
    use crate::telemetry::SubsetRequests;

    fn total(source: &str, destination: &str, requests: u64) -> EdgeTotal {
        let mut counts = EdgeCounts { requests, successes: requests, ..Default::default() };
        counts.latency.add_to_bucket(10, requests);
        EdgeTotal { source: source.into(), destination: destination.into(), counts, subsets: Vec::new() }
    }

    fn names(v: &View) -> Vec<&str> {
        v.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn requests(v: &View) -> u64 {
        v.edges.iter().map(|e| e.metrics.requests).sum()
    }

    fn filter(service: Option<&str>, group: Option<&str>, grouping: Option<&str>) -> Filter {
        Filter::parse(service, group, grouping).unwrap()
    }

    #[test]
    fn a_small_mesh_is_shown_service_by_service_with_its_split() {
        let mut reviews = total("productpage", "reviews", 100);
        reviews.subsets = vec![
            SubsetRequests { subset: Tags::parse([("version", "v1")]).unwrap(), requests: 75 },
            SubsetRequests { subset: Tags::parse([("version", "v2")]).unwrap(), requests: 25 },
        ];
        let totals = [reviews, total("reviews", "ratings", 50)];
        let v = view(&totals, 10.0, &Filter::default(), 30).unwrap();
        assert_eq!(names(&v), ["productpage", "ratings", "reviews"]);
        assert!(!v.grouped);
        let e = &v.edges[0];
        assert_eq!((e.source, e.destination, e.merged), (0, 2, 1));
        assert_eq!(e.metrics.rps, 10.0);
        assert_eq!(e.subsets[1].share, Some(0.25));
        assert_eq!(v.nodes[2].metrics.requests, 100, "what reviews received");
        assert_eq!(v.nodes[0].metrics.requests, 0, "nobody calls productpage");
    }

    #[test]
    fn over_the_budget_services_group_by_prefix_and_every_call_is_kept_exactly() {
        let totals: Vec<EdgeTotal> = (0..200)
            .map(|i| {
                total(&format!("team{}-svc{i}", i % 10), &format!("team{}-svc{}", (i + 1) % 10, i + 1), 5)
            })
            .chain([total("team3-svc3", "team3-svc13", 7)])
            .collect();
        let v = view(&totals, 60.0, &Filter::default(), 30).unwrap();
        assert!(v.grouped);
        assert_eq!(v.nodes.len(), 10, "{:?}", names(&v));
        assert!(v.nodes.iter().all(|n| n.members == 20 || n.members == 21), "{:?}", v.nodes);
        assert_eq!(v.nodes[3].kind, NodeKind::Group("team3".into()));
        // Calls inside a group are its loop; every request and latency count is in the view.
        let inside = v.edges.iter().find(|e| e.source == 3 && e.destination == 3).unwrap();
        assert_eq!((inside.metrics.requests, inside.merged), (7, 1));
        assert_eq!(requests(&v), 200 * 5 + 7);
        assert_eq!(v.edges_inside_groups(), 1);
        let group_in: u64 = v.nodes.iter().map(|n| n.metrics.requests).sum();
        assert_eq!(group_in, 200 * 5 + 7);
        assert!(v.edges.iter().all(|e| e.subsets.is_empty()));
        // One group opened: its members by name, the groups they talk to collapsed.
        let v = view(&totals, 60.0, &filter(None, Some("team3-*"), None), 30).unwrap();
        let singles = v.nodes.iter().filter(|n| n.kind == NodeKind::Service).count();
        assert_eq!(singles, 20, "{:?}", names(&v));
        assert!(v.nodes.len() <= 30);
        let touching =
            totals.iter().filter(|t| prefix(&t.source) == "team3" || prefix(&t.destination) == "team3");
        assert_eq!(requests(&v), touching.map(|t| t.counts.requests).sum::<u64>());
    }

    #[test]
    fn a_service_filter_shows_its_neighbourhood_and_marks_it() {
        let totals = [total("a", "b", 1), total("b", "c", 1), total("c", "d", 1)];
        let v = view(&totals, 1.0, &filter(Some("b"), None, None), 30).unwrap();
        assert_eq!(names(&v), ["a", "b", "c"]);
        assert!(v.nodes[1].focus);
        assert_eq!(v.edges.len(), 2);
        assert_eq!(v.nodes[2].metrics.requests, 1, "c's node counts every call into c");
    }

    #[test]
    fn too_many_groups_fold_the_least_busy_into_one_node() {
        let totals: Vec<EdgeTotal> = (0..80).map(|i| total(&format!("s{i}"), "hub", i + 1)).collect();
        let v = view(&totals, 1.0, &Filter::default(), 30).unwrap();
        assert_eq!(v.nodes.len(), 30);
        let other = v.nodes.last().unwrap();
        assert_eq!(
            (other.name.as_str(), other.kind.clone(), other.members),
            (OTHER, NodeKind::Other, 81 - 29)
        );
        assert!(names(&v).contains(&"hub") && names(&v).contains(&"s79") && !names(&v).contains(&"s0"));
        assert_eq!(requests(&v), (1..=80).sum::<u64>());
        // The focus keeps its node even when it is quiet.
        let v = view(&totals, 1.0, &filter(Some("hub"), None, None), 30).unwrap();
        assert!(v.nodes.iter().any(|n| n.focus));
    }

    #[test]
    fn without_grouping_every_service_is_a_node_up_to_a_bound() {
        let totals: Vec<EdgeTotal> = (0..200).map(|i| total(&format!("s{i}"), "hub", 1)).collect();
        let v = view(&totals, 1.0, &filter(None, None, Some("none")), 30).unwrap();
        assert_eq!(v.nodes.len(), 201);
        let many: Vec<EdgeTotal> =
            (0..=MAX_UNGROUPED_EDGES).map(|i| total(&format!("s{i}"), "hub", 1)).collect();
        assert_eq!(
            view(&many, 1.0, &filter(None, None, Some("none")), 30),
            Err(ViewError::TooManyEdges { edges: MAX_UNGROUPED_EDGES + 1, max: MAX_UNGROUPED_EDGES })
        );
    }

    #[test]
    fn filters_are_parsed_with_the_field_they_came_from() {
        assert_eq!(filter(Some(""), Some(" "), None), Filter::default());
        assert_eq!(filter(None, Some("billing-*"), None).group.as_deref(), Some("billing"));
        let err = |s, g, gr| Filter::parse(s, g, gr).unwrap_err().field;
        assert_eq!(err(Some("Bad Name"), None, None), "service");
        assert_eq!(err(None, Some("billing-api"), None), "group");
        let long = "x".repeat(300);
        assert_eq!(err(None, Some(long.as_str()), None), "group");
        assert_eq!(err(None, None, Some("all")), "grouping");
    }
}
