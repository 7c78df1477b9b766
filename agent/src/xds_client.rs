//! The Delta ADS client: one stream over mTLS with the SVID, every sidecar type subscribed
//! by wildcard, each response applied whole or NACKed with the reason; reconnects with
//! jittered backoff, telling the server what it holds so that only changes come back. A
//! renewed SVID is presented at once on a new stream: the control plane counts the old leaf
//! in use (its CA cannot be retired unforced) until it has seen the new one. The old stream
//! closes only once the new one is answered (or after [`OVERLAP`]): a proxy without a stream
//! is no longer a healthy endpoint of its service. When the agent drains, it ends its side of
//! the stream: the control plane takes that as the proxy leaving, and its callers stop sending
//! to it at once rather than after the grace period of a stream cut off.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
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

/// How long a stream replaced after a renewal stays open beside its successor at most: the
/// control plane registers the new stream on its first request, and may have nothing to
/// send on it.
const OVERLAP: Duration = Duration::from_secs(5);
/// Longest the agent waits, having ended its side, for the control plane to end the stream.
pub const LEAVING_WAIT: Duration = Duration::from_secs(2);

/// Keeps a stream open for as long as the process runs, until the agent is `leaving`.
pub async fn run(
    cp: ControlPlane,
    identity: Arc<Identity>,
    node: Node,
    sink: Arc<dyn ConfigSink>,
    mut leaving: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    let mut renewed = identity.changed.subscribe();
    let mut replaced = None;
    while !*leaving.borrow() {
        renewed.mark_unchanged();
        let streamed =
            stream(&cp, &identity, &node, sink.as_ref(), &mut renewed, &mut leaving, replaced.take());
        match streamed.await {
            Ok(Ended::Left) => return,
            Ok(Ended::Renewed(open)) => {
                tracing::info!("presenting the renewed SVID on a new xDS stream");
                replaced = Some(open);
                continue;
            }
            Ok(Ended::ByServer) => tracing::warn!("the xDS stream ended"),
            Err(Failure { why, answered }) => {
                if answered {
                    backoff = Backoff::default();
                }
                tracing::warn!(error = %why, "xDS stream failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next()) => {}
            _ = leaving.wait_for(|l| *l) => return,
        }
    }
}

enum Ended {
    ByServer,
    /// The agent ended its side, leaving, and the control plane ended the stream.
    Left,
    /// The SVID was renewed while this stream was open; it is handed back still open.
    Renewed(Box<OpenStream>),
}

/// A stream's two halves: dropping them closes it.
struct OpenStream {
    _requests: mpsc::Sender<DeltaDiscoveryRequest>,
    _responses: tonic::Streaming<DeltaDiscoveryResponse>,
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
    renewed: &mut tokio::sync::watch::Receiver<u64>,
    leaving: &mut tokio::sync::watch::Receiver<bool>,
    mut replaced: Option<Box<OpenStream>>,
) -> Result<Ended, Failure> {
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
    let overlap_ends = tokio::time::sleep(OVERLAP);
    tokio::pin!(overlap_ends);
    let mut answered = false;
    loop {
        let message = tokio::select! {
            m = responses.message() => m,
            Ok(()) = renewed.changed() => {
                return Ok(Ended::Renewed(Box::new(OpenStream { _requests: tx, _responses: responses })));
            }
            () = &mut overlap_ends, if replaced.is_some() => {
                replaced = None;
                continue;
            }
            true = async { leaving.wait_for(|l| *l).await.is_ok() } => {
                drop(tx);
                tracing::info!("leaving: the xDS stream ended on the agent's side");
                let ended = async { while let Ok(Some(_)) = responses.message().await {} };
                let _ = tokio::time::timeout(LEAVING_WAIT, ended).await;
                return Ok(Ended::Left);
            }
        };
        replaced = None;
        let resp = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Ended::ByServer),
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
            return Ok(Ended::ByServer);
        }
    }
}
