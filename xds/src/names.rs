//! Resource names: stable, readable, and unique within a mesh.

use trellis_model::config::Tags;

/// The Listener (and RouteConfiguration) name gRPC clients dial: `<service>.<mesh>:<port>`.
pub fn grpc_listener_name(service: &str, mesh: &str, port: u32) -> String {
    format!("{service}.{mesh}:{port}")
}

/// The Listener name an xDS-enabled gRPC server asks for, with the template
/// `grpc/server?xds.resource.listening_address=%s`.
pub fn grpc_server_listener_name(addr: std::net::SocketAddr) -> String {
    format!("grpc/server?xds.resource.listening_address={addr}")
}

/// The cluster of a service's instances that carry `tags` (all of them when empty):
/// `reviews` or `reviews~version=v2`. Tags are sorted, so equal subsets share a cluster.
pub fn cluster_name(service: &str, tags: &Tags) -> String {
    if tags.is_empty() {
        return service.to_owned();
    }
    let subset: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{service}~{}", subset.join(","))
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
    format!("inbound:{port}")
}

/// An Envoy sidecar's outbound Listener (and its RouteConfiguration) for one port of a
/// service: `outbound:<service>.<mesh>:<port>`.
pub fn sidecar_outbound_name(service: &str, mesh: &str, port: u32) -> String {
    format!("outbound:{service}.{mesh}:{port}")
}
