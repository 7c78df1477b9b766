//! Resource names: stable, readable, and unique within a mesh.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Name;
use trellis_model::config::Tags;

/// How the Listener names of xDS-enabled gRPC servers begin (the bootstrap's template).
pub const GRPC_SERVER_LISTENER_PREFIX: &str = "grpc/server?xds.resource.listening_address=";
const INBOUND_PREFIX: &str = "inbound:";
const OUTBOUND_PREFIX: &str = "outbound:";

/// The Listener (and RouteConfiguration) name gRPC clients dial: `<service>.<mesh>:<port>`.
pub fn grpc_listener_name(service: &str, mesh: &str, port: u32) -> String {
    format!("{service}.{mesh}:{port}")
}

/// The Listener name an xDS-enabled gRPC server asks for, with the template
/// `grpc/server?xds.resource.listening_address=%s`.
pub fn grpc_server_listener_name(addr: std::net::SocketAddr) -> String {
    format!("{GRPC_SERVER_LISTENER_PREFIX}{addr}")
}

/// The cluster of one port of a service, over its instances that carry `tags` (all of them
/// when empty): `reviews.shop:9080` or `reviews.shop:9080~version=v2`. One cluster per port,
/// so that EDS for `:9080` never holds the instances' `:9090`; tags are sorted, so equal
/// subsets share a cluster. The dot keeps it apart from a sidecar's `inbound:<port>`.
pub fn cluster_name(service: &str, mesh: &str, port: u32, tags: &Tags) -> String {
    let base = format!("{service}.{mesh}:{port}");
    if tags.is_empty() {
        return base;
    }
    format!("{base}~{}", tags.joined())
}

/// A cluster name read back: the service, mesh and port of `<service>.<mesh>:<port>[~tags]`
/// (what [`cluster_name`] writes); None for any other name (`inbound:<port>`, the xDS
/// cluster). [`cluster_subset`] reads the tags.
pub fn parse_cluster_name(name: &str) -> Option<(&str, &str, u32)> {
    let base = name.split_once('~').map_or(name, |(base, _)| base);
    let (service_mesh, port) = base.rsplit_once(':')?;
    let (service, mesh) = service_mesh.split_once('.')?;
    let port = port.parse().ok()?;
    (!service.is_empty() && !mesh.is_empty() && !mesh.contains('.')).then_some((service, mesh, port))
}

/// The subset of a cluster name (`version=v2` of `reviews.shop:9080~version=v2`; no tags for
/// the whole service); None when what follows `~` is not tags.
pub fn cluster_subset(name: &str) -> Option<Tags> {
    match name.split_once('~') {
        None => Some(Tags::new()),
        Some((_, subset)) => Tags::parse_joined(subset).ok(),
    }
}

/// The workload identity of a service: `spiffe://<trust domain>/ns/<mesh>/sa/<service>`, the
/// same scheme the CA signs.
pub fn spiffe_id(trust_domain: &trellis_ca::TrustDomain, mesh: &str, service: &str) -> String {
    match trellis_ca::SpiffeId::workload(trust_domain, mesh, service) {
        Ok(id) => id.to_string(),
        // Mesh and service names are DNS labels, always valid path segments.
        Err(e) => unreachable!("DNS labels make valid SPIFFE paths: {e}"),
    }
}

/// An Envoy sidecar's inbound Listener for `port`, and the local cluster of the application
/// behind it: `inbound:<port>`.
pub fn sidecar_inbound_name(port: u32) -> String {
    format!("{INBOUND_PREFIX}{port}")
}

/// An Envoy sidecar's outbound Listener (and its RouteConfiguration) for one port of a
/// service: `outbound:<service>.<mesh>:<port>`.
pub fn sidecar_outbound_name(service: &str, mesh: &str, port: u32) -> String {
    format!("{OUTBOUND_PREFIX}{service}.{mesh}:{port}")
}

/// What the resources a proxy holds configure: its side as a caller of some services (their
/// listeners, routes, clusters and endpoints) and its own inbound side. Read back from the
/// names above; secrets configure neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyReach {
    /// The services it holds caller-side resources of.
    pub calls: BTreeSet<String>,
    /// It holds inbound resources of its own service (a server Listener, inbound listeners).
    pub serves: bool,
}

impl ProxyReach {
    /// The reach of the resources named, given as (type URL, name).
    pub fn of<'a>(held: impl IntoIterator<Item = (&'a str, &'a str)>) -> ProxyReach {
        let mut reach = ProxyReach::default();
        for (type_url, name) in held {
            if name.starts_with(INBOUND_PREFIX) || name.starts_with(GRPC_SERVER_LISTENER_PREFIX) {
                reach.serves = true;
                continue;
            }
            let caller_side = [
                Listener::type_url(),
                RouteConfiguration::type_url(),
                Cluster::type_url(),
                ClusterLoadAssignment::type_url(),
            ]
            .iter()
            .any(|t| t == type_url);
            // Every caller-side name starts `<service>.<mesh>:<port>`: for gRPC plain, for a
            // sidecar's listeners and routes after `outbound:`, for clusters before `~<tags>`.
            let service = caller_side
                .then(|| name.strip_prefix(OUTBOUND_PREFIX).unwrap_or(name).split('.').next())
                .flatten();
            if let Some(service) = service.filter(|s| !s.is_empty()) {
                reach.calls.insert(service.to_owned());
            }
        }
        reach
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

    use super::*;

    #[test]
    fn cluster_names_read_back_to_service_mesh_and_port() {
        let tags = Tags::parse([("version", "v2"), ("zone", "a")]).unwrap();
        assert_eq!(
            parse_cluster_name(&cluster_name("reviews", "shop", 9080, &tags)),
            Some(("reviews", "shop", 9080))
        );
        assert_eq!(
            parse_cluster_name(&cluster_name("db", "m1", 5432, &Tags::default())),
            Some(("db", "m1", 5432))
        );
        for other in ["inbound:9080", "xds", "reviews.shop", "reviews.shop:x", ".shop:80", "a.b.c:80", ""] {
            assert_eq!(parse_cluster_name(other), None, "{other}");
        }
        assert_eq!(cluster_subset(&cluster_name("reviews", "shop", 9080, &tags)), Some(tags));
        assert_eq!(cluster_subset("reviews.shop:9080"), Some(Tags::new()));
        assert_eq!(cluster_subset("reviews.shop:9080~not tags"), None);
    }

    #[test]
    fn a_proxys_reach_is_read_back_from_the_names_it_holds() {
        let tags = Tags::parse([("version", "v2")]).unwrap();
        let (lds, rds, cds, eds, sds) = (
            Listener::type_url(),
            RouteConfiguration::type_url(),
            Cluster::type_url(),
            ClusterLoadAssignment::type_url(),
            Secret::type_url(),
        );
        let grpc_client = [
            (lds.as_str(), grpc_listener_name("reviews", "shop", 9080)),
            (rds.as_str(), grpc_listener_name("reviews", "shop", 9080)),
            (cds.as_str(), cluster_name("reviews", "shop", 9080, &tags)),
            (eds.as_str(), cluster_name("ratings", "shop", 9080, &Tags::default())),
        ];
        let reach = ProxyReach::of(grpc_client.iter().map(|(t, n)| (*t, n.as_str())));
        assert_eq!(reach.calls, ["ratings".to_owned(), "reviews".to_owned()].into());
        assert!(!reach.serves);

        let addr = "127.0.0.1:9080".parse().unwrap();
        let grpc_server = [(lds.as_str(), grpc_server_listener_name(addr))];
        let reach = ProxyReach::of(grpc_server.iter().map(|(t, n)| (*t, n.as_str())));
        assert_eq!(reach, ProxyReach { calls: BTreeSet::new(), serves: true });

        let sidecar = [
            (lds.as_str(), sidecar_inbound_name(9080)),
            (cds.as_str(), sidecar_inbound_name(9080)),
            (lds.as_str(), sidecar_outbound_name("details", "shop", 8080)),
            (rds.as_str(), sidecar_outbound_name("details", "shop", 8080)),
            (sds.as_str(), "workload".to_owned()),
        ];
        let reach = ProxyReach::of(sidecar.iter().map(|(t, n)| (*t, n.as_str())));
        assert_eq!(reach, ProxyReach { calls: ["details".to_owned()].into(), serves: true });
    }
}
