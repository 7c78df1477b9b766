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
use envoy_types::pb::google::protobuf::{Any, Struct, Value as PbValue};
use envoy_types::util::pack_any;
use futures::Stream;
use prost::Name;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_model::Tags;
use trellis_pki::{Authority, Peer};
use trellis_store::Registration;
use trellis_xds::contract::{DEFAULT_CERT_DIR, node_metadata, parse_cert_dir};
use trellis_xds::sotw::{self, Reply, Snapshot, StreamError};
use trellis_xds::{ProxyReach, delta};
use uuid::Uuid;

use crate::identity::status;
use crate::ledger::{Ledger, LedgerOp};
use crate::metrics::{TypeLabel, XdsMetrics};
use crate::snapshots::{MeshState, Snapshots};
use crate::tls::PeerInfo;

/// Bounds on what a node may declare.
pub(crate) const MAX_NODE_ID: usize = 256;
const MAX_PORTS: usize = 32;
/// Longest locality zone.
const MAX_ZONE_LEN: usize = 63;
/// Most resources of one response kept for the config dump.
const MAX_DUMPED: usize = 1_000;

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
    /// (mesh, type URL, version) whose content this replica already recorded.
    recorded: std::sync::Mutex<std::collections::HashSet<(trellis_model::MeshId, String, String)>>,
    authority: Authority,
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
        snapshots: Arc<Snapshots>,
        ledger: Ledger,
        metrics: XdsMetrics,
        options: AdsOptions,
    ) -> Self {
        let pushes = Semaphore::new(options.max_concurrent_pushes.max(1));
        Self {
            ctx: Arc::new(Ctx {
                recorded: Default::default(),
                authority,
                snapshots,
                ledger,
                metrics,
                options,
                pushes,
            }),
        }
    }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The verified workload behind a request, from its TLS client certificate only.
pub(crate) async fn authenticate<T>(
    authority: &Authority,
    request: &Request<T>,
) -> Result<(Peer, SocketAddr), Status> {
    let info =
        request.extensions().get::<PeerInfo>().cloned().ok_or_else(|| {
            Status::unauthenticated("this port serves only over TLS with a client certificate")
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
        self.open::<Sotw>(request).await
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.open::<Delta>(request).await
    }
}

impl AdsService {
    /// Authenticates a new stream and hands it to a task of its own.
    async fn open<P: Protocol>(
        &self,
        request: Request<Streaming<P::Req>>,
    ) -> Result<Response<Outbound<P::Resp>>, Status>
    where
        P::Req: prost::Message + Default,
    {
        let (peer, addr) = match authenticate(&self.ctx.authority, &request).await {
            Ok(p) => p,
            Err(s) => {
                self.ctx.metrics.streams_refused.inc();
                return Err(s);
            }
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run::<P>(self.ctx.clone(), peer, addr, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

/// The registration a node asks for, bounded; the service comes from the identity only, and
/// the identity's tags (its join token's) are the node's: a node that claims another value
/// for one of them is refused, and one that leaves it out gets it.
fn registration(peer: &Peer, node: &Node, remote: SocketAddr, replica: &str) -> Result<Registration, Status> {
    let bad = |m: String| Status::invalid_argument(format!("node: {m}"));
    if node.id.is_empty() || node.id.len() > MAX_NODE_ID {
        return Err(bad(format!("id must be 1 to {MAX_NODE_ID} characters")));
    }
    let empty = Struct::default();
    let meta = node.metadata.as_ref().unwrap_or(&empty);
    let address = match meta.fields.get(node_metadata::ADDRESS).and_then(string_of) {
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
    let mut tags = match meta.fields.get("tags") {
        None => Tags::new(),
        Some(PbValue { kind: Some(PbKind::StructValue(s)) }) => {
            let mut pairs = Vec::with_capacity(s.fields.len());
            for (k, v) in &s.fields {
                let v = string_of(v).ok_or_else(|| bad(format!("metadata.tags.{k} must be a string")))?;
                pairs.push((k.as_str(), v));
            }
            // The model's rule, the one routes and policies select by: a tag registered here
            // is a tag they can name.
            Tags::parse(pairs).map_err(|e| bad(format!("metadata.tags: {e}")))?
        }
        Some(_) => return Err(bad("metadata.tags must be a map of strings".into())),
    };
    for (k, bound) in peer.tags.pairs() {
        match tags.get(k.as_str()) {
            Some(claimed) if claimed != bound.as_str() => {
                return Err(Status::permission_denied(format!(
                    "node: metadata.tags.{k} is {claimed:?}, but the identity {} is bound to {k}={:?} \
                     by its join token",
                    peer.id,
                    bound.as_str()
                )));
            }
            Some(_) => {}
            None => tags
                .insert_absent(&k, &bound)
                .map_err(|e| bad(format!("metadata.tags with the join token's: {e}")))?,
        }
    }
    let zone: String = node.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default();
    if zone.len() > MAX_ZONE_LEN {
        return Err(bad(format!("locality.zone: at most {MAX_ZONE_LEN} characters")));
    }
    Ok(Registration {
        service: peer.service.clone(),
        node_id: node.id.clone(),
        client: client_kind(node).to_owned(),
        address: Some(address),
        ports,
        tags: serde_json::to_value(&tags).expect("tags serialize"),
        zone,
        replica: replica.to_owned(),
    })
}

async fn register(
    ctx: &Ctx,
    peer: &Peer,
    reg: &Registration,
) -> Result<(Uuid, chrono::DateTime<chrono::Utc>), Status> {
    ctx.ledger.register(peer.org, peer.mesh_id, reg.clone()).await.map_err(|e| {
        tracing::error!(error = %e, "registering a dataplane failed");
        Status::unavailable("could not register the dataplane; retry")
    })
}

/// A stream is served only while its service exists: deleting the service revokes the
/// identity (its join tokens and SVIDs), and this ends the streams that were open.
fn service_gone(state: &MeshState, peer: &Peer) -> Option<Status> {
    (!state.services.contains(&peer.service)).then(|| {
        Status::permission_denied(format!(
            "service deleted: mesh {:?} has no service {:?}, so {} is no longer served",
            peer.mesh, peer.service, peer.id
        ))
    })
}

/// What a stream is served: its kind of client, and what it told about itself.
struct Selection {
    client: String,
    /// Listening addresses of the xDS-enabled gRPC server behind this stream.
    servers: BTreeSet<SocketAddr>,
    /// Inbound ports of a sidecar.
    ports: Vec<u32>,
    /// Where a sidecar's agent keeps the workload certificate and key.
    cert_dir: String,
}

/// The resources one stream may be sent, all of its own mesh: for gRPC the mesh's shared
/// client resources plus the server Listeners it asked for (of its own service only); for
/// Envoy and the agent the sidecar resources of its service.
fn select(state: &MeshState, peer: &Peer, sel: &Selection) -> Arc<Snapshot> {
    if sel.client != "grpc" {
        return state.sidecar(&peer.service, &sel.ports, &sel.cert_dir);
    }
    if sel.servers.is_empty() {
        return state.grpc.clone();
    }
    let mut snap = (*state.grpc).clone();
    let listeners = snap.types.entry(Listener::type_url()).or_default();
    for addr in &sel.servers {
        let l = trellis_xds::grpc_server(&state.view, &peer.service, *addr);
        listeners.insert(l.name.clone(), (trellis_xds::version(&l), pack_any(l)));
    }
    Arc::new(snap)
}

/// The SotW or Delta protocol state of one stream.
trait Protocol: Default + Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn node(req: &Self::Req) -> Option<&Node>;
    fn type_url(req: &Self::Req) -> &str;
    /// Names the request subscribes (for learning a gRPC server's listening addresses).
    fn subscribed(req: &Self::Req) -> Vec<&str>;
    fn on_request(
        &mut self,
        req: &Self::Req,
        snap: &Snapshot,
    ) -> Result<(Event, Vec<Self::Resp>), StreamError>;
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Self::Resp>;
    /// For the ledger: type URL, version and nonce of a response.
    fn describe(resp: &Self::Resp) -> (&str, &str, &str);
    /// The named resources a response carries, for the config dump.
    fn contents(resp: &Self::Resp) -> Vec<(String, Option<String>, &Any)>;
    /// The version a client holds for `type_url` after an ACK of `nonce`.
    fn acked_version(&self, type_url: &str, nonce: &str) -> Option<String>;
    /// Every type sent was ACKed and nothing awaits an answer.
    fn in_sync(&self) -> bool;
    /// What the resources the client holds configure (for the propagation status).
    fn reach(&self) -> ProxyReach;
}

/// How a request relates to what was sent, in the terms the ledger needs.
enum Event {
    Ack { nonce: Option<String>, version: String },
    Nack { version: String, error: String },
    Other,
}

#[derive(Default)]
struct Sotw(sotw::Stream);

impl Protocol for Sotw {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }
    fn subscribed(req: &DiscoveryRequest) -> Vec<&str> {
        req.resource_names.iter().map(String::as_str).collect()
    }
    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<(Event, Vec<DiscoveryResponse>), StreamError> {
        let (reply, out) = self.0.on_request(req, snap)?;
        let event = match reply {
            Reply::Ack { version } => Event::Ack { nonce: None, version },
            Reply::Nack { version, error } => Event::Nack { version, error },
            Reply::Initial | Reply::Stale => Event::Other,
        };
        Ok((event, out))
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        self.0.on_snapshot(snap)
    }
    fn describe(r: &DiscoveryResponse) -> (&str, &str, &str) {
        (&r.type_url, &r.version_info, &r.nonce)
    }
    fn contents(r: &DiscoveryResponse) -> Vec<(String, Option<String>, &Any)> {
        r.resources.iter().map(|a| (String::new(), None, a)).collect()
    }
    fn acked_version(&self, type_url: &str, _nonce: &str) -> Option<String> {
        self.0.types.get(type_url)?.sent_version.clone()
    }
    fn in_sync(&self) -> bool {
        self.0.types.values().all(|t| t.nacked.is_none() && t.acked_version == t.sent_version)
    }
    fn reach(&self) -> ProxyReach {
        ProxyReach::of(
            self.0.types.iter().flat_map(|(t, s)| s.sent_names.iter().map(move |n| (t.as_str(), n.as_str()))),
        )
    }
}

#[derive(Default)]
struct Delta(delta::Stream);

impl Protocol for Delta {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }
    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
    fn subscribed(req: &DeltaDiscoveryRequest) -> Vec<&str> {
        req.resource_names_subscribe.iter().map(String::as_str).collect()
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Result<(Event, Vec<DeltaDiscoveryResponse>), StreamError> {
        let (reply, out) = self.0.on_request(req, snap)?;
        let event = match reply {
            delta::Reply::Ack { nonce } => {
                let version = self.0.types.get(&req.type_url).map(|t| t.version()).unwrap_or_default();
                Event::Ack { nonce: Some(nonce), version }
            }
            delta::Reply::Nack { version, error, .. } => Event::Nack { version, error },
            _ => Event::Other,
        };
        Ok((event, out))
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        self.0.on_snapshot(snap)
    }
    fn describe(r: &DeltaDiscoveryResponse) -> (&str, &str, &str) {
        (&r.type_url, &r.system_version_info, &r.nonce)
    }
    fn contents(r: &DeltaDiscoveryResponse) -> Vec<(String, Option<String>, &Any)> {
        r.resources
            .iter()
            .filter_map(|x| x.resource.as_ref().map(|a| (x.name.clone(), Some(x.version.clone()), a)))
            .collect()
    }
    fn acked_version(&self, type_url: &str, nonce: &str) -> Option<String> {
        let t = self.0.types.get(type_url)?;
        (t.sent_nonce.as_deref() == Some(nonce)).then(|| t.version())
    }
    fn in_sync(&self) -> bool {
        self.0.types.values().all(|t| t.nacked.is_none() && (t.sent_nonce.is_none() || t.acked()))
    }
    fn reach(&self) -> ProxyReach {
        ProxyReach::of(
            self.0.types.iter().flat_map(|(t, s)| s.held().keys().map(move |n| (t.as_str(), n.as_str()))),
        )
    }
}

/// One stream, after authentication: registration, then requests and pushes until it ends.
async fn run<P: Protocol>(
    ctx: Arc<Ctx>,
    peer: Peer,
    remote: SocketAddr,
    mut inbound: Streaming<P::Req>,
    out: mpsc::Sender<Result<P::Resp, Status>>,
) where
    P::Req: prost::Message + Default,
{
    let first = match inbound.message().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let Some(node) = P::node(&first).cloned() else {
        let _ = out.send(Err(Status::invalid_argument("the first request must carry a node"))).await;
        return;
    };
    // A refusal is also noted on the join token the identity came from, for "waiting for the
    // first proxy".
    let refuse = |s: &Status| {
        ctx.metrics.streams_refused.inc();
        let refused = LedgerOp::StreamRefused { serial: peer.serial.clone(), reason: s.message().to_owned() };
        ctx.ledger.record(peer.org, refused);
    };
    let mut reg = match registration(&peer, &node, remote, &ctx.options.replica) {
        Ok(r) => r,
        Err(s) => {
            refuse(&s);
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
    let service_gone = watch.borrow().as_deref().and_then(|state| service_gone(state, &peer));
    if let Some(s) = service_gone {
        refuse(&s);
        let _ = out.send(Err(s)).await;
        return;
    }
    let (dataplane, mut connected_at) = match register(&ctx, &peer, &reg).await {
        Ok(r) => r,
        Err(s) => {
            let _ = out.send(Err(s)).await;
            return;
        }
    };
    // The SVID it presented, for its service's health (renewals move it on).
    let svid = LedgerOp::Svid { dataplane, serial: peer.serial.clone(), not_after: peer.not_after };
    ctx.ledger.record(peer.org, svid);
    tracing::info!(mesh = %peer.mesh, service = %peer.service, node = %node.id, client = %reg.client,
        %dataplane, "xDS stream opened");
    ctx.metrics.streams.inc();
    // The bootstrap writes the directory it was fetched with; one it would not write falls
    // back to the default rather than pointing SDS at an odd path.
    let cert_dir = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(node_metadata::CERT_DIR))
        .and_then(string_of)
        .and_then(|d| parse_cert_dir(&d).ok())
        .unwrap_or_else(|| DEFAULT_CERT_DIR.to_owned());
    let selection = Selection {
        client: reg.client.clone(),
        servers: BTreeSet::new(),
        ports: reg.ports.iter().filter_map(|p| u32::try_from(*p).ok()).collect(),
        cert_dir,
    };
    let mut session = Session {
        ctx: &ctx,
        peer: &peer,
        dataplane,
        proto: P::default(),
        selection,
        state: watch.borrow_and_update().clone(),
        snap: Arc::new(Snapshot::default()),
        out: &out,
        sent_at_revision: HashMap::new(),
        synced_at: None,
        reregistered_at: None,
        reach: None,
    };
    session.refresh();
    let mut next = Some(first);
    // The client ended its side of the stream: a proxy leaving (an agent draining), not one
    // cut off.
    let mut left = false;
    loop {
        let result = if let Some(req) = next.take() {
            session.on_request(req, &mut reg).await
        } else {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => session.on_request(req, &mut reg).await,
                    Ok(None) => {
                        left = true;
                        break;
                    }
                    Err(_) => break,
                },
                changed = watch.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    session.state = watch.borrow_and_update().clone();
                    session.on_change().await
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
    if let Some(at) = session.reregistered_at {
        connected_at = at;
    }
    if left {
        ctx.ledger.record_now(peer.org, LedgerOp::Left { dataplane, connected_at }).await;
        tracing::info!(mesh = %peer.mesh, service = %peer.service, %dataplane, "xDS stream ended by the proxy: left");
    } else {
        ctx.ledger.record_now(peer.org, LedgerOp::Offline { dataplane, connected_at }).await;
        tracing::info!(mesh = %peer.mesh, service = %peer.service, %dataplane, "xDS stream closed");
    }
}

/// A stream's state between requests and pushes.
struct Session<'a, P: Protocol> {
    ctx: &'a Ctx,
    peer: &'a Peer,
    dataplane: Uuid,
    proto: P,
    selection: Selection,
    state: Option<Arc<MeshState>>,
    snap: Arc<Snapshot>,
    out: &'a mpsc::Sender<Result<P::Resp, Status>>,
    /// Per type URL, the mesh revision of the last response.
    sent_at_revision: HashMap<String, i64>,
    /// The last revision recorded as fully in sync.
    synced_at: Option<i64>,
    /// When this stream last registered again (it learned a port).
    reregistered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The reach last recorded for this proxy.
    reach: Option<ProxyReach>,
}

/// `Err(Some(status))` ends the stream with that status; `Err(None)` ends it quietly.
type Step = Result<(), Option<Status>>;

impl<P: Protocol> Session<'_, P> {
    fn refresh(&mut self) {
        if let Some(state) = &self.state {
            self.snap = select(state, self.peer, &self.selection);
        }
    }

    async fn on_request(&mut self, req: P::Req, reg: &mut Registration) -> Step {
        if self.state.is_none() {
            return Err(Some(Status::not_found("the mesh no longer exists")));
        }
        let type_url = P::type_url(&req).to_owned();
        if type_url == Listener::type_url() && self.selection.client == "grpc" {
            let addrs: BTreeSet<SocketAddr> = P::subscribed(&req)
                .into_iter()
                .filter_map(|n| n.strip_prefix(trellis_xds::GRPC_SERVER_LISTENER_PREFIX))
                .filter_map(|a| a.parse().ok())
                .collect();
            if !addrs.is_subset(&self.selection.servers) {
                // A server tells where it listens by asking for its Listener: that port is
                // where its peers reach it.
                let before = reg.ports.clone();
                reg.ports.extend(addrs.iter().map(|a| i32::from(a.port())));
                reg.ports.sort_unstable();
                reg.ports.dedup();
                reg.ports.truncate(MAX_PORTS);
                if reg.ports != before {
                    let (_, at) = register(self.ctx, self.peer, reg).await.map_err(Some)?;
                    self.reregistered_at = Some(at);
                }
                self.selection.servers.extend(addrs);
                self.refresh();
            }
        }
        let (event, responses) = match self.proto.on_request(&req, &self.snap) {
            Ok(r) => r,
            Err(StreamError::NodeChanged { first, now }) => {
                self.ctx.metrics.streams_refused.inc();
                return Err(Some(Status::permission_denied(format!(
                    "this stream belongs to node {first:?}; a request for node {now:?} needs a stream of its own"
                ))));
            }
            Err(e) => return Err(Some(Status::invalid_argument(format!("{e:?}")))),
        };
        let label = TypeLabel { type_url: type_url.clone() };
        match event {
            Event::Ack { nonce, version } => {
                self.ctx.metrics.acks.get_or_create(&label).inc();
                // Only an ACK of what the current revision sent measures that revision.
                let current = match &nonce {
                    Some(n) => self.proto.acked_version(&type_url, n).is_some(),
                    None => self.proto.acked_version(&type_url, "").as_deref() == Some(version.as_str()),
                };
                let convergence_ms = self.state.as_ref().and_then(|s| {
                    (current && self.sent_at_revision.get(&type_url) == Some(&s.revision)).then(|| {
                        let micros = (chrono::Utc::now() - s.committed_at).num_microseconds().unwrap_or(0);
                        (micros as f64 / 1e3).max(0.0)
                    })
                });
                if let Some(ms) = convergence_ms {
                    self.ctx.metrics.convergence.observe(ms / 1e3);
                }
                self.ctx.ledger.record(
                    self.peer.org,
                    LedgerOp::Acked { dataplane: self.dataplane, type_url, version, convergence_ms },
                );
                self.note_sync();
            }
            Event::Nack { version, error } => {
                self.ctx.metrics.nacks.get_or_create(&label).inc();
                tracing::warn!(mesh = %self.peer.mesh, service = %self.peer.service, %type_url, %version,
                    %error, "xDS response rejected");
                self.ctx.ledger.record(
                    self.peer.org,
                    LedgerOp::Nacked { dataplane: self.dataplane, type_url, version, error },
                );
            }
            Event::Other => {}
        }
        self.send(responses).await
    }

    async fn on_change(&mut self) -> Step {
        let Some(state) = &self.state else {
            return Err(Some(Status::not_found("the mesh was deleted")));
        };
        if let Some(s) = service_gone(state, self.peer) {
            return Err(Some(s));
        }
        let _permit = self.ctx.pushes.acquire().await.ok();
        self.refresh();
        let responses = self.proto.on_snapshot(&self.snap);
        if responses.is_empty() {
            // Nothing changed for this proxy: it holds the new revision already.
            self.note_sync();
        }
        self.send(responses).await
    }

    /// Keeps the readable form of what a response carries, once per mesh, type and version
    /// on this replica (the store keeps one row per content, whoever sent it).
    fn record_content(&self, resp: &P::Resp) {
        let (type_url, version, _) = P::describe(resp);
        let key = (self.peer.mesh_id, type_url.to_owned(), version.to_owned());
        {
            let mut seen = self.ctx.recorded.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > 100_000 {
                seen.clear();
            }
            if !seen.insert(key) {
                return;
            }
        }
        let items: Vec<serde_json::Value> = P::contents(resp)
            .into_iter()
            .take(MAX_DUMPED)
            .map(|(name, v, any)| {
                serde_json::json!({
                    "name": name,
                    "version": v,
                    "typeUrl": any.type_url,
                    "config": trellis_xds::readable::readable_any(any),
                })
            })
            .collect();
        self.ctx.ledger.record(
            self.peer.org,
            LedgerOp::Content {
                mesh: self.peer.mesh_id,
                type_url: type_url.to_owned(),
                version: version.to_owned(),
                resources: serde_json::Value::Array(items),
            },
        );
    }

    /// Records the revision this proxy is fully in sync with, once per revision.
    fn note_sync(&mut self) {
        let Some(revision) = self.state.as_ref().map(|s| s.revision) else { return };
        if self.synced_at == Some(revision) || !self.proto.in_sync() {
            return;
        }
        self.synced_at = Some(revision);
        self.ctx.ledger.record(self.peer.org, LedgerOp::Synced { dataplane: self.dataplane, revision });
    }

    /// Records what the proxy's resources configure when a response changed it, so that a
    /// resource's status counts only the proxies it reaches.
    fn note_reach(&mut self) {
        let reach = self.proto.reach();
        if self.reach.as_ref() == Some(&reach) {
            return;
        }
        let op = LedgerOp::Reach {
            dataplane: self.dataplane,
            calls: reach.calls.iter().cloned().collect(),
            serves: reach.serves,
        };
        // Written only on a change, so a dropped fact is tried again with the next response.
        if self.ctx.ledger.record(self.peer.org, op) {
            self.reach = Some(reach);
        }
    }

    async fn send(&mut self, responses: Vec<P::Resp>) -> Step {
        if !responses.is_empty() {
            self.note_reach();
        }
        let revision = self.state.as_ref().map_or(0, |s| s.revision);
        for resp in responses {
            let (type_url, version, nonce) = P::describe(&resp);
            self.record_content(&resp);
            self.ctx.metrics.responses.get_or_create(&TypeLabel { type_url: type_url.to_owned() }).inc();
            self.sent_at_revision.insert(type_url.to_owned(), revision);
            self.ctx.ledger.record(
                self.peer.org,
                LedgerOp::Sent {
                    dataplane: self.dataplane,
                    type_url: type_url.to_owned(),
                    version: version.to_owned(),
                    nonce: nonce.to_owned(),
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
