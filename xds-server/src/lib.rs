//! The gRPC server on the control plane's TLS port: ADS for Envoy, gRPC's xDS client and the
//! Trellis agent, and the workload identity service that signs their SVIDs.
//!
//! - [`tls`]: the port's TLS (platform server certificate; client certificates checked by
//!   each handler against the caller's mesh).
//! - [`snapshots`]: per-mesh state rebuilt from the store on change-feed events.
//! - ADS streams ([`AdsService`]) and the ledger writer ([`Ledger`]).
//! - [`IdentityService`]: CSR → SVID by join token or renewal.

#![forbid(unsafe_code)]

mod ads;
mod identity;
mod ledger;
mod metrics;
pub mod snapshots;
pub mod tls;

/// Trellis's own protos (the identity service), generated in `trellis-proto`.
pub use trellis_proto::identity as proto;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;

pub use ads::{AdsOptions, AdsService};
pub use identity::IdentityService;
pub use ledger::{Ledger, LedgerOp};
pub use metrics::XdsMetrics;
pub use snapshots::{MeshState, SnapshotOptions, Snapshots};

/// Largest request a client may send (a DiscoveryRequest with many names, or a CSR).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Serves ADS and the identity service on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ads: AdsService,
    identity: IdentityService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(MAX_REQUEST))
        .add_service(
            proto::identity_server::IdentityServer::new(identity).max_decoding_message_size(MAX_REQUEST),
        )
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
}
