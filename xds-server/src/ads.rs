//! Aggregated Discovery Service streams: authentication by client certificate, registration
//! of the dataplane, the SotW protocol per stream, pushes on mesh changes, and the ledger.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind as PbKind;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};
use envoy_types::util::pack_any;
use futures::Stream;
use prost::Name;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_pki::{Authority, Peer};
use trellis_store::{Registration, Store};
use trellis_xds::sotw::{self, Reply, Snapshot, StreamError};
use uuid::Uuid;

use crate::identity::status;
use crate::ledger::{Ledger, LedgerOp};
use crate::metrics::{TypeLabel, XdsMetrics};
use crate::snapshots::{MeshState, Snapshots};
use crate::tls::PeerInfo;

/// The Listener names xDS-enabled gRPC servers ask for start with this.
const SERVER_LISTENER_PREFIX: &str = "grpc/server?xds.resource.listening_address=";
/// Bounds on what a node may declare.
const MAX_NODE_ID: usize = 256;
const MAX_PORTS: usize = 32;
const MAX_TAGS: usize = 16;
const MAX_TAG_LEN: usize = 63;

/// Settings of the ADS service.
#[derive(Debug, Clone)]
pub struct AdsOptions {
    /// A stream that does not take a response within this long is closed.
    pub send_timeout: Duration,
    /// Most streams computing or sending a push at the same time.
    pub max_concurrent_pushes: usize,
    /// This replica's name, recorded on the dataplanes it serves.
    pub replica: String,
}

impl Default for AdsOptions {
    fn default() -> Self {
        Self { send_timeout: Duration::from_secs(10), max_concurrent_pushes: 256, replica: "trellis".into() }
    }
}

struct Ctx {
    authority: Authority,
    store: Store,
    snapshots: Arc<Snapshots>,
    ledger: Ledger,
    metrics: XdsMetrics,
    options: AdsOptions,
    pushes: Semaphore,
}

/// The ADS gRPC service.
#[derive(Clone)]
pub struct AdsService {
    ctx: Arc<Ctx>,
}

impl AdsService {
    pub fn new(
        authority: Authority,
        store: Store,
        snapshots: Arc<Snapshots>,
        ledger: Ledger,
        metrics: XdsMetrics,
        options: AdsOptions,
    ) -> Self {
        let pushes = Semaphore::new(options.max_concurrent_pushes.max(1));
        Self { ctx: Arc::new(Ctx { authority, store, snapshots, ledger, metrics, options, pushes }) }
    }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The verified workload behind a request, from its TLS client certificate only.
async fn authenticate<T>(authority: &Authority, request: &Request<T>) -> Result<(Peer, SocketAddr), Status> {
    let info =
        request.extensions().get::<PeerInfo>().cloned().ok_or_else(|| {
            Status::unauthenticated("xDS is served only over TLS with a client certificate")
        })?;
    let certs = info
        .certs
        .ok_or_else(|| Status::unauthenticated("present your mesh SVID as the TLS client certificate"))?;
    let peer = authority.authenticate_peer(&certs).await.map_err(status)?;
    Ok((peer, info.addr))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = Outbound<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Outbound<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (peer, addr) = match authenticate(&self.ctx.authority, &request).await {
            Ok(p) => p,
            Err(s) => {
                self.ctx.metrics.streams_refused.inc();
                return Err(s);
            }
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sotw(self.ctx.clone(), peer, addr, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        authenticate(&self.ctx.authority, &request).await?;
        Err(Status::unimplemented("Delta ADS is not served yet; use state-of-the-world ADS"))
    }
}

/// What kind of client a node is, from the user agent it reports.
fn client_kind(node: &Node) -> &'static str {
    let ua = node.user_agent_name.to_ascii_lowercase();
    if ua.contains("grpc") {
        "grpc"
    } else if ua.contains("envoy") {
        "envoy"
    } else {
        "agent"
    }
}

fn string_of(v: &PbValue) -> Option<String> {
    match &v.kind {
        Some(PbKind::StringValue(s)) => Some(s.clone()),
        Some(PbKind::NumberValue(n)) if n.fract() == 0.0 => Some(format!("{n}")),
        _ => None,
    }
}

/// The registration a node asks for, bounded; the service comes from the identity only.
fn registration(peer: &Peer, node: &Node, remote: SocketAddr, replica: &str) -> Result<Registration, Status> {
    let bad = |m: String| Status::invalid_argument(format!("node: {m}"));
    if node.id.is_empty() || node.id.len() > MAX_NODE_ID {
        return Err(bad(format!("id must be 1 to {MAX_NODE_ID} characters")));
    }
    let empty = Struct::default();
    let meta = node.metadata.as_ref().unwrap_or(&empty);
    let address = match meta.fields.get("address").and_then(string_of) {
        Some(a) => {
            a.parse::<IpAddr>().map_err(|_| bad(format!("metadata.address {a:?} is not an IP address")))?
        }
        None => remote.ip(),
    };
    let mut ports = Vec::new();
    if let Some(v) = meta.fields.get("ports") {
        let items: Vec<String> = match &v.kind {
            Some(PbKind::ListValue(l)) => l.values.iter().filter_map(string_of).collect(),
            Some(PbKind::StringValue(s)) => s.split(',').map(|p| p.trim().to_owned()).collect(),
            Some(PbKind::NumberValue(_)) => string_of(v).into_iter().collect(),
            _ => return Err(bad("metadata.ports must be a list of port numbers".into())),
        };
        for p in items {
            let port: u16 = p.parse().map_err(|_| bad(format!("metadata.ports: {p:?} is not a port")))?;
            if port == 0 {
                return Err(bad("metadata.ports: 0 is not a port".into()));
            }
            ports.push(i32::from(port));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_PORTS {
        return Err(bad(format!("at most {MAX_PORTS} ports")));
    }
    let mut tags = serde_json::Map::new();
    if let Some(v) = meta.fields.get("tags") {
        let Some(PbKind::StructValue(s)) = &v.kind else {
            return Err(bad("metadata.tags must be a map of strings".into()));
        };
        if s.fields.len() > MAX_TAGS {
            return Err(bad(format!("at most {MAX_TAGS} tags")));
        }
        for (k, v) in &s.fields {
            let v = string_of(v).ok_or_else(|| bad(format!("metadata.tags.{k} must be a string")))?;
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= MAX_TAG_LEN
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !ok(k) || !ok(&v) {
                return Err(bad(format!(
                    "metadata.tags.{k}: keys and values are 1 to {MAX_TAG_LEN} letters, digits, '-', '_' or '.'"
                )));
            }
            // The identity decides which service and mesh this is; tags cannot say otherwise.
            if matches!(k.as_str(), "service" | "mesh") {
                return Err(bad(format!("metadata.tags.{k} is set from the certificate, not the node")));
            }
            tags.insert(k.clone(), serde_json::Value::String(v));
        }
    }
    let zone: String = node.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default();
    if zone.len() > MAX_TAG_LEN {
        return Err(bad(format!("locality.zone: at most {MAX_TAG_LEN} characters")));
    }
    Ok(Registration {
        service: peer.service.clone(),
        node_id: node.id.clone(),
        client: client_kind(node).to_owned(),
        address: Some(address),
        ports,
        tags: serde_json::Value::Object(tags),
        zone,
        replica: replica.to_owned(),
    })
}

async fn register(ctx: &Ctx, peer: &Peer, reg: &Registration) -> Result<Uuid, Status> {
    let result = async {
        let mut tx = ctx.store.tenant(peer.org).await?;
        let dp = tx.register_dataplane(peer.mesh_id, reg).await?;
        tx.commit().await?;
        Ok::<_, trellis_store::StoreError>(dp.id)
    }
    .await;
    result.map_err(|e| {
        tracing::error!(error = %e, "registering a dataplane failed");
        Status::unavailable("could not register the dataplane; retry")
    })
}

/// The resources one stream may be sent: the mesh's shared gRPC resources, plus the server
/// Listeners it asked for (computed for its own service only).
fn stream_snapshot(state: &MeshState, peer: &Peer, servers: &BTreeSet<SocketAddr>) -> Arc<Snapshot> {
    if servers.is_empty() {
        return state.grpc.clone();
    }
    let mut snap = (*state.grpc).clone();
    let listeners = snap.types.entry(Listener::type_url()).or_default();
    for addr in servers {
        let l = trellis_xds::grpc_server(&state.view, &peer.service, *addr);
        listeners.insert(l.name.clone(), (trellis_xds::version(&l), pack_any(l)));
    }
    Arc::new(snap)
}

/// One SotW stream, after authentication.
async fn run_sotw(
    ctx: Arc<Ctx>,
    peer: Peer,
    remote: SocketAddr,
    mut inbound: Streaming<DiscoveryRequest>,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let first = match inbound.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let Some(node) = first.node.clone() else {
        let _ = out.send(Err(Status::invalid_argument("the first request must carry a node"))).await;
        return;
    };
    let mut reg = match registration(&peer, &node, remote, &ctx.options.replica) {
        Ok(r) => r,
        Err(s) => {
            ctx.metrics.streams_refused.inc();
            let _ = out.send(Err(s)).await;
            return;
        }
    };
    let mut watch = match ctx.snapshots.watch(peer.org, peer.mesh_id).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "loading a mesh for a stream failed");
            let _ = out.send(Err(Status::unavailable("could not load the mesh; retry"))).await;
            return;
        }
    };
    let dataplane = match register(&ctx, &peer, &reg).await {
        Ok(id) => id,
        Err(s) => {
            let _ = out.send(Err(s)).await;
            return;
        }
    };
    tracing::info!(mesh = %peer.mesh, service = %peer.service, node = %node.id, client = %reg.client,
        %dataplane, "xDS stream opened");
    ctx.metrics.streams.inc();
    let mut stream = Sotw {
        ctx: &ctx,
        peer: &peer,
        dataplane,
        proto: sotw::Stream::default(),
        servers: BTreeSet::new(),
        state: watch.borrow_and_update().clone(),
        snap: Arc::new(Snapshot::default()),
        out: &out,
        sent_at_revision: HashMap::new(),
    };
    stream.refresh();
    let mut next = Some(first);
    loop {
        let result = if let Some(req) = next.take() {
            stream.on_request(req, &mut reg).await
        } else {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => stream.on_request(req, &mut reg).await,
                    Ok(None) | Err(_) => break,
                },
                changed = watch.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    stream.state = watch.borrow_and_update().clone();
                    stream.on_change().await
                }
            }
        };
        if let Err(s) = result {
            if let Some(s) = s {
                let _ = tokio::time::timeout(ctx.options.send_timeout, out.send(Err(s))).await;
            }
            break;
        }
    }
    ctx.metrics.streams.dec();
    ctx.ledger.record_now(peer.org, LedgerOp::Offline { dataplane }).await;
    tracing::info!(mesh = %peer.mesh, service = %peer.service, %dataplane, "xDS stream closed");
}

/// A stream's state between requests and pushes.
struct Sotw<'a> {
    ctx: &'a Ctx,
    peer: &'a Peer,
    dataplane: Uuid,
    proto: sotw::Stream,
    /// Listening addresses of the xDS-enabled gRPC server behind this stream.
    servers: BTreeSet<SocketAddr>,
    state: Option<Arc<MeshState>>,
    snap: Arc<Snapshot>,
    out: &'a mpsc::Sender<Result<DiscoveryResponse, Status>>,
    /// Per type URL, the mesh revision of the last response.
    sent_at_revision: HashMap<String, i64>,
}

/// `Err(Some(status))` ends the stream with that status; `Err(None)` ends it quietly.
type Step = Result<(), Option<Status>>;

impl Sotw<'_> {
    fn refresh(&mut self) {
        if let Some(state) = &self.state {
            self.snap = stream_snapshot(state, self.peer, &self.servers);
        }
    }

    async fn on_request(&mut self, req: DiscoveryRequest, reg: &mut Registration) -> Step {
        if self.state.is_none() {
            return Err(Some(Status::not_found("the mesh no longer exists")));
        }
        if req.type_url == Listener::type_url() {
            let addrs: BTreeSet<SocketAddr> = req
                .resource_names
                .iter()
                .filter_map(|n| n.strip_prefix(SERVER_LISTENER_PREFIX))
                .filter_map(|a| a.parse().ok())
                .collect();
            if !addrs.is_subset(&self.servers) {
                // A server tells where it listens by asking for its Listener: that port is
                // where its peers reach it.
                let before = reg.ports.clone();
                reg.ports.extend(addrs.iter().map(|a| i32::from(a.port())));
                reg.ports.sort_unstable();
                reg.ports.dedup();
                reg.ports.truncate(MAX_PORTS);
                if reg.ports != before {
                    register(self.ctx, self.peer, reg).await.map_err(Some)?;
                }
                self.servers.extend(addrs);
                self.refresh();
            }
        }
        let (reply, responses) = match self.proto.on_request(&req, &self.snap) {
            Ok(r) => r,
            Err(StreamError::NodeChanged { first, now }) => {
                self.ctx.metrics.streams_refused.inc();
                return Err(Some(Status::permission_denied(format!(
                    "this stream belongs to node {first:?}; a request for node {now:?} needs a stream of its own"
                ))));
            }
            Err(e) => return Err(Some(Status::invalid_argument(format!("{e:?}")))),
        };
        let label = TypeLabel { type_url: req.type_url.clone() };
        match reply {
            Reply::Ack { version } => {
                self.ctx.metrics.acks.get_or_create(&label).inc();
                let convergence_ms = self.state.as_ref().and_then(|s| {
                    // Only an ACK of what this revision sent measures the revision.
                    let sent = self.proto.types.get(&req.type_url)?.sent_version.as_deref()?;
                    (sent == version && self.sent_at_revision.get(&req.type_url) == Some(&s.revision)).then(
                        || {
                            let ms = (chrono::Utc::now() - s.committed_at).num_microseconds().unwrap_or(0)
                                as f64
                                / 1e3;
                            ms.max(0.0)
                        },
                    )
                });
                if let Some(ms) = convergence_ms {
                    self.ctx.metrics.convergence.observe(ms / 1e3);
                }
                self.ctx.ledger.record(
                    self.peer.org,
                    LedgerOp::Acked {
                        dataplane: self.dataplane,
                        type_url: req.type_url.clone(),
                        version,
                        convergence_ms,
                    },
                );
            }
            Reply::Nack { version, error } => {
                self.ctx.metrics.nacks.get_or_create(&label).inc();
                tracing::warn!(mesh = %self.peer.mesh, service = %self.peer.service, type_url = %req.type_url,
                    %version, %error, "xDS response rejected");
                self.ctx.ledger.record(
                    self.peer.org,
                    LedgerOp::Nacked {
                        dataplane: self.dataplane,
                        type_url: req.type_url.clone(),
                        version,
                        error,
                    },
                );
            }
            Reply::Initial | Reply::Stale => {}
        }
        self.send(responses).await
    }

    async fn on_change(&mut self) -> Step {
        if self.state.is_none() {
            return Err(Some(Status::not_found("the mesh was deleted")));
        }
        let _permit = self.ctx.pushes.acquire().await.ok();
        self.refresh();
        let responses = self.proto.on_snapshot(&self.snap);
        self.send(responses).await
    }

    async fn send(&mut self, responses: Vec<DiscoveryResponse>) -> Step {
        let revision = self.state.as_ref().map_or(0, |s| s.revision);
        for resp in responses {
            self.ctx.metrics.responses.get_or_create(&TypeLabel { type_url: resp.type_url.clone() }).inc();
            self.sent_at_revision.insert(resp.type_url.clone(), revision);
            self.ctx.ledger.record(
                self.peer.org,
                LedgerOp::Sent {
                    dataplane: self.dataplane,
                    type_url: resp.type_url.clone(),
                    version: resp.version_info.clone(),
                    nonce: resp.nonce.clone(),
                    revision,
                },
            );
            match tokio::time::timeout(self.ctx.options.send_timeout, self.out.send(Ok(resp))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(None),
                Err(_) => {
                    self.ctx.metrics.slow_streams_closed.inc();
                    tracing::warn!(mesh = %self.peer.mesh, dataplane = %self.dataplane,
                        "closing an xDS stream that took no response within the send timeout");
                    return Err(None);
                }
            }
        }
        Ok(())
    }
}
