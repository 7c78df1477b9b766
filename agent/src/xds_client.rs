//! The Delta ADS client: one stream over mTLS with the SVID, every sidecar type subscribed
//! by wildcard, each response applied whole or NACKed with the reason; reconnects with
//! jittered backoff, telling the server what it holds so that only changes come back.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::control::{ControlPlane, explain};
use crate::identity::{Backoff, Identity};
use crate::state::{ConfigSink, type_urls};

/// Largest response accepted from the control plane.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Longest NACK reason sent back (the ledger keeps it).
const MAX_ERROR_DETAIL: usize = 4096;

/// Keeps a stream open for as long as the process runs.
pub async fn run(cp: ControlPlane, identity: Arc<Identity>, node: Node, sink: Arc<dyn ConfigSink>) {
    let mut backoff = Backoff::default();
    loop {
        match stream(&cp, &identity, &node, sink.as_ref()).await {
            Ok(()) => tracing::warn!("the xDS stream ended"),
            Err(Failure { why, answered }) => {
                if answered {
                    backoff = Backoff::default();
                }
                tracing::warn!(error = %why, "xDS stream failed");
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

struct Failure {
    why: String,
    /// The stream got at least one response before failing.
    answered: bool,
}

async fn stream(
    cp: &ControlPlane,
    identity: &Identity,
    node: &Node,
    sink: &dyn ConfigSink,
) -> Result<(), Failure> {
    let fail = |why: String| Failure { why, answered: false };
    let channel = cp.channel(Some(&identity.current())).map_err(|e| fail(format!("{e:#}")))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE);
    let (tx, rx) = mpsc::channel(16);
    for (i, type_url) in type_urls().into_iter().enumerate() {
        let held = sink.held(&type_url);
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            resource_names_subscribe: vec!["*".into()],
            initial_resource_versions: held,
            type_url,
            ..Default::default()
        };
        tx.send(req).await.expect("the receiver is ours");
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| fail(explain(&cp.addr, &s)))?
        .into_inner();
    tracing::info!(server = %cp.addr, "xDS stream open");
    let mut answered = false;
    loop {
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(s) => return Err(Failure { why: explain(&cp.addr, &s), answered }),
        };
        answered = true;
        let outcome = sink.apply(&resp.type_url, &resp.resources, &resp.removed_resources);
        let error_detail = match outcome {
            Ok(()) => {
                tracing::debug!(type_url = %resp.type_url, updated = resp.resources.len(),
                    removed = resp.removed_resources.len(), "applied");
                None
            }
            Err(mut why) => {
                tracing::warn!(type_url = %resp.type_url, nonce = %resp.nonce, reason = %why, "rejected (NACK)");
                if why.len() > MAX_ERROR_DETAIL {
                    let mut cut = MAX_ERROR_DETAIL;
                    while !why.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    why.truncate(cut);
                }
                Some(RpcStatus { code: tonic::Code::InvalidArgument as i32, message: why, details: vec![] })
            }
        };
        let ack = DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Ok(());
        }
    }
}
