//! The gRPC server on the control plane's TLS port: ADS for Envoy, gRPC's xDS client and the
//! Trellis agent, and the workload identity service that signs their SVIDs.
//!
//! - [`tls`]: the port's TLS (platform server certificate; client certificates checked by
//!   each handler against the caller's mesh).
//! - [`snapshots`]: per-mesh state rebuilt from the store on change-feed events.
//! - ADS streams ([`AdsService`]) and the ledger writer ([`Ledger`]).
//! - [`IdentityService`]: CSR → SVID by join token or renewal.
//! - [`TelemetryService`]: Envoy's MetricsService and AccessLogService, for every proxy.

#![forbid(unsafe_code)]

mod ads;
mod budget;
mod envoy_stats;
mod identity;
mod ledger;
mod metrics;
pub mod snapshots;
mod telemetry;
pub mod tls;

/// Trellis's own protos (the identity service), generated in `trellis-proto`.
pub use trellis_proto::identity as proto;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsServiceServer;
use tokio::net::TcpListener;

pub use ads::{AdsOptions, AdsService};
pub use identity::IdentityService;
pub use ledger::{Ledger, LedgerOp};
pub use metrics::XdsMetrics;
pub use snapshots::{MeshState, SnapshotOptions, Snapshots};
pub use telemetry::{MAX_ENTRIES, MAX_FAMILIES, TelemetryOptions, TelemetryService};

/// Largest request a client may send (a DiscoveryRequest with many names, a CSR, one
/// telemetry message).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Serves ADS, the identity service and telemetry ingestion on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ads: AdsService,
    identity: IdentityService,
    telemetry: TelemetryService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(MAX_REQUEST))
        .add_service(
            proto::identity_server::IdentityServer::new(identity).max_decoding_message_size(MAX_REQUEST),
        )
        .add_service(MetricsServiceServer::new(telemetry.clone()).max_decoding_message_size(MAX_REQUEST))
        .add_service(AccessLogServiceServer::new(telemetry).max_decoding_message_size(MAX_REQUEST))
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
}
