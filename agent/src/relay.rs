//! The local xDS relay: a plaintext ADS endpoint on loopback that forwards each stream to the
//! control plane over the agent's own mTLS, for co-located clients that cannot present a
//! certificate to an xDS server (gRPC for Node.js and Java read no `tls` channel credentials
//! from a bootstrap, gRFC A65). The control plane authenticates every relayed stream as the
//! agent's identity, so a client of the relay is served only what that identity may see.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::control::ControlPlane;
use crate::identity::Identity;

/// Largest message relayed, either way.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

type Relayed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct Relay {
    cp: ControlPlane,
    identity: Arc<Identity>,
}

impl Relay {
    fn upstream(&self) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, Status> {
        let channel = self
            .cp
            .channel(Some(&self.identity.current()))
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        Ok(AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// The client's requests until its stream ends or fails.
fn requests<T: Send + 'static>(inbound: Streaming<T>) -> impl Stream<Item = T> + Send + 'static {
    inbound.map_while(Result::ok)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Relay {
    type StreamAggregatedResourcesStream = Relayed<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Relayed<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let up = self.upstream()?.stream_aggregated_resources(requests(request.into_inner())).await?;
        Ok(Response::new(Box::pin(up.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let up = self.upstream()?.delta_aggregated_resources(requests(request.into_inner())).await?;
        Ok(Response::new(Box::pin(up.into_inner())))
    }
}

/// Serves the relay on `listener` until the process ends.
pub async fn serve(listener: TcpListener, cp: ControlPlane, identity: Arc<Identity>) {
    let service =
        AggregatedDiscoveryServiceServer::new(Relay { cp, identity }).max_decoding_message_size(MAX_MESSAGE);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) =
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await
    {
        tracing::error!(error = %e, "the xDS relay stopped");
    }
}
