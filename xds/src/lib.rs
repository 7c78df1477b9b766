//! The pure core of the xDS server: no I/O, no tonic.
//!
//! - Translation of one mesh's configuration into Envoy xDS v3 resources: a [`MeshView`] in,
//!   [`Resources`] out. The xDS server feeds it from the store and the registered dataplanes,
//!   versions what it returns by content ([`version`]), and streams it.
//! - [`sotw`]: the state-of-the-world ADS protocol per stream — subscriptions, nonces,
//!   ACK/NACK, what to send and when — as a state machine the server drives.
//! - [`delta`]: the same for Delta (incremental) ADS, where each resource has its own version.
//!
//! This first cut produces the shapes the proxyless gRPC client accepts (XDS.md §3, §4):
//! `api_listener` Listeners named after the `xds:///` target, RDS, EDS clusters per service
//! subset with mTLS through certificate-provider instances, and server Listeners with RBAC
//! for xDS-enabled gRPC servers. Envoy sidecar shapes (SDS, inbound listeners) come next.

#![forbid(unsafe_code)]

mod access;
mod clusters;
pub mod delta;
mod names;
mod routes;
pub mod sotw;
mod util;
mod view;

pub use names::{cluster_name, grpc_listener_name, grpc_server_listener_name, spiffe_id};
pub use view::{Endpoint, MeshView, Resources};

use envoy_types::pb::envoy::config::listener::v3::Listener;

/// A resource's version: a hash of its encoding, which is canonical for everything this crate
/// builds (policy maps are written in name order).
pub fn version<M: prost::Message>(resource: &M) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &resource.encode_to_vec());
    hex::encode(&digest.as_ref()[..12])
}

/// The certificate-provider instance name the generated gRPC bootstrap defines.
pub const CERT_PROVIDER: &str = "trellis";

/// Resources for gRPC clients of this mesh: every HTTP-family port of every service
/// becomes a dial target `xds:///<service>.<mesh>:<port>`.
pub fn grpc_client(view: &MeshView) -> Resources {
    let mut out = Resources::default();
    for (service, spec) in &view.services {
        for port in spec.ports.iter().filter(|p| p.protocol.is_http()) {
            let name = grpc_listener_name(service, &view.mesh, port.port);
            out.listeners.insert(name.clone(), routes::api_listener(&name));
            out.routes.insert(name.clone(), routes::route_config(view, service, &name));
        }
    }
    for cluster in clusters::clusters(view) {
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
mod tests;
