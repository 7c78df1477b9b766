//! The pure core of the xDS server: no I/O, no tonic.
//!
//! - Translation of one mesh's configuration into Envoy xDS v3 resources: a [`MeshView`] in,
//!   [`Resources`] out. The xDS server feeds it from the store and the registered dataplanes,
//!   versions what it returns by content ([`version`]), and streams it.
//! - [`sotw`]: the state-of-the-world ADS protocol per stream — subscriptions, nonces,
//!   ACK/NACK, what to send and when — as a state machine the server drives.
//! - [`delta`]: the same for Delta (incremental) ADS, where each resource has its own version.
//!
//! Two client kinds, shaped apart (XDS.md §7, "one config for everyone"):
//! - proxyless gRPC ([`grpc_client`], [`grpc_server`], XDS.md §3, §4): `api_listener`
//!   Listeners named after the `xds:///` target, RDS, EDS clusters per service port and subset with mTLS
//!   through certificate-provider instances, and server Listeners with RBAC;
//! - Envoy sidecars ([`envoy_sidecar`], [`sds_secrets`], XDS.md §6): inbound Listeners that
//!   terminate mTLS with RBAC, rate limits and shadow (audit) rules, outbound Listeners per
//!   service port, the same routes and clusters with SDS secrets.

#![forbid(unsafe_code)]

/// The proxy wire contract, defined in `model` so that the REST API can use it too.
pub use trellis_model::contract;

mod access;
mod access_log;
mod clusters;
pub mod delta;
mod names;
pub mod readable;
mod routes;
mod secrets;
mod sidecar;
pub mod sotw;
mod util;
mod view;

pub use access::{AUDIT_STAT_PREFIX, RBAC_ALLOW, RBAC_AUDIT, RBAC_DENY};
pub use names::{
    GRPC_SERVER_LISTENER_PREFIX, ProxyReach, cluster_name, cluster_subset, grpc_listener_name,
    grpc_server_listener_name, parse_cluster_name, sidecar_inbound_name, sidecar_outbound_name, spiffe_id,
};
pub use routes::FAULT_FILTER;
pub use secrets::{TRUST_BUNDLE_SECRET, WORKLOAD_SECRET, sds_secrets};
pub use sidecar::{RATE_LIMIT_FILTER, envoy_sidecar, outbound_addresses};
pub use view::{Endpoint, MeshView, Resources};

use envoy_types::pb::envoy::config::listener::v3::Listener;

/// A resource's version: a hash of its encoding, which is canonical for everything this crate
/// builds (policy maps are written in name order).
pub fn version<M: prost::Message>(resource: &M) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &resource.encode_to_vec());
    hex::encode(&digest.as_ref()[..12])
}

/// Resources for gRPC clients of this mesh: every HTTP-family port of every service
/// becomes a dial target `xds:///<service>.<mesh>:<port>`.
pub fn grpc_client(view: &MeshView) -> Resources {
    let mut out = Resources::default();
    for (service, spec) in &view.services {
        for port in spec.ports.iter().filter(|p| p.protocol.is_http()) {
            let name = grpc_listener_name(service, &view.mesh, port.port);
            out.listeners.insert(name.clone(), routes::api_listener(&name));
            out.routes.insert(
                name.clone(),
                routes::route_config(view, service, port.port, &name, vec![name.clone()]),
            );
        }
    }
    for cluster in clusters::clusters(view, clusters::Client::Grpc) {
        let cla = clusters::load_assignment(view, &cluster.name);
        out.endpoints.insert(cluster.name.clone(), cla);
        out.clusters.insert(cluster.name.clone(), cluster);
    }
    out
}

/// The Listener an xDS-enabled gRPC server of `service` listening on `addr` asks for, with
/// the mesh's access policies as RBAC.
pub fn grpc_server(view: &MeshView, service: &str, addr: std::net::SocketAddr) -> Listener {
    access::server_listener(view, service, addr)
}

#[cfg(test)]
mod sidecar_tests;
#[cfg(test)]
mod tests;
