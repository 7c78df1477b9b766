//! The data path: listeners bound from the applied configuration, inbound mTLS with access
//! control in front of the application, outbound routing to mesh services over mTLS that
//! accepts only the destination's SPIFFE ID. HTTP/1.1 and HTTP/2 (gRPC trailers pass
//! through), and raw TCP.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use prost::Name;
use rand::Rng;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use trellis_ca::{SpiffeId, SvidClientVerifier, SvidServerVerifier, TrustBundle, claimed_leaf};
use trellis_model::telemetry::Membership;

use crate::access_log::{AccessLog, Entry, HttpCall, Note};
pub(crate) use crate::body::{Body, local_reply};
use crate::cli::Outbound;
use crate::config::{
    Abort, Denial, Handler, Injected, Listener, RequestView, Retry, RetryOn, RouteSource, RouteTable, Share,
    Side, Target, authority, evaluate, grpc_code_of,
};
use crate::h2_pool::{H2Body, H2Pool};
use crate::h2_wire::PREFACE;
use crate::http1_codec::{MAX_HEAD_BYTES, XFCC, connection_options, decimal};
use crate::http1_pool::{Destination, Http1Pool, PoolError, Upstream};
use crate::identity::Identity;
use crate::metrics::{Metrics, PeerMetrics};
use crate::pipe::pipe;
use crate::resilience::{Bucket, ClusterHealth, HealthCheckPolicy, HostRequest, RateLimit, RequestMap};
use crate::state::{Config, ConfigSink, State};
use crate::telemetry::Upstreams;
use crate::{h2_server, http1_server, spare_fields};

type MeshClient = Client<MeshConnector, Body>;

/// Longest a request waits for the routes of its listener to arrive.
const ROUTES_WARMING: Duration = Duration::from_secs(5);
/// Largest request body buffered so that a retry can send it again; larger ones are
/// streamed and not retried.
const MAX_REPLAY_BODY: u64 = 64 * 1024;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Other endpoints of its cluster a request is offered to when one took nothing of it (its
/// connection refused, or its stream turned away unprocessed), as Istio's default retries and
/// Linkerd's balancer do: safe whatever the method, since no application saw it. An endpoint
/// that is leaving — its agent draining, stopped, restarting — then costs no request.
const OTHER_ENDPOINTS_OFFERED: usize = 2;
/// Most mesh endpoints whose agreement to HTTP/2 is kept (past it, they are asked again).
const MAX_ENDPOINTS_ASKED: usize = 4096;
/// Longest a client may take over a TLS handshake, or over a request's headers: a slow
/// client is cut off instead of holding a connection (and its task) forever.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream connection may sit idle in a pool. Shorter than `HEADER_TIMEOUT`,
/// after which a peer agent closes an idle HTTP/1.1 connection (its server's header timer also
/// runs between requests): a request sent on a connection the peer is closing then would fail.
const UPSTREAM_IDLE: Duration = Duration::from_secs(5);

/// The one configuration of hyper's server, for connections whose HTTP version was not told
/// before they were served (the agent's own servers take the others) and the admin ports, with
/// the bounds above (a request head past `MAX_HEAD_BYTES` is answered 431 in HTTP/1.1, its
/// stream refused in HTTP/2). HTTP/1.1 or HTTP/2 by the client's preface; anything malformed
/// closes the connection.
pub(crate) fn http_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    b.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    b
}

/// The one upstream pool configuration: HTTP/2 only for h2 clusters, idle connections
/// dropped after `UPSTREAM_IDLE`.
fn pooled_client(h2: bool) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2).pool_timer(hyper_util::rt::TokioTimer::new()).pool_idle_timeout(UPSTREAM_IDLE);
    b
}

/// Which of the configured listeners the agent binds.
pub enum Binding {
    /// Explicit mode: every inbound listener, and the outbound ones of the services named;
    /// `http_proxy`: the HTTP proxy takes requests for every service, bound or not.
    Explicit { outbound: Outbound, http_proxy: bool },
    /// Transparent mode: none; the capture listeners take their
    /// connections and hand each to the listener it was meant for.
    Transparent,
}

impl Binding {
    /// Whether the agent binds `l`'s address.
    fn binds(&self, l: &Listener) -> bool {
        let Binding::Explicit { outbound, .. } = self else { return false };
        match &l.side {
            Side::Inbound { .. } => true,
            Side::Outbound { service } => service.as_deref().is_some_and(|s| outbound.binds(s)),
        }
    }
}

/// The agent's data path.
pub struct Proxy {
    me: Weak<Proxy>,
    state: Arc<State>,
    identity: Arc<Identity>,
    binding: Binding,
    metrics: Metrics,
    /// Where the last accepted configuration is kept.
    cert_dir: std::path::PathBuf,
    server_tls: ArcSwap<rustls::ServerConfig>,
    bundle: ArcSwap<TrustBundle>,
    /// Bumped whenever the SVID or the bundle changes: pooled upstream clients are rebuilt.
    generation: AtomicU64,
    bound: Mutex<HashMap<String, (SocketAddr, JoinHandle<()>)>>,
    /// Circuit-breaker counts and outlier state, by cluster name.
    health: Mutex<RequestMap<String, Arc<ClusterHealth>>>,
    /// Local rate limits, by inbound listener.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Active health checkers, by cluster, with the policy they run.
    checkers: Mutex<HashMap<String, (HealthCheckPolicy, JoinHandle<()>)>>,
    /// Set on SIGTERM: HTTP connections finish what they carry and close.
    draining: tokio::sync::watch::Sender<bool>,
    /// Connections open; the count falls to zero when a drain is done.
    open: tokio::sync::watch::Sender<usize>,
    /// HTTP/1.1 upstream, to the application and to mesh endpoints.
    http1: Http1Pool,
    /// HTTP/2 upstreams, one connection per endpoint.
    h2: H2Pool,
    /// By peer identity and what they offer in ALPN: the generation they were built in, and
    /// the TLS client (rustls keeps the sessions it resumes in it).
    tls_connectors: Mutex<HashMap<(SpiffeId, Alpn), (u64, tokio_rustls::TlsConnector)>>,
    /// By address, the identity of each mesh endpoint asked (`Alpn::Either`) and whether it
    /// agreed to carry HTTP/1.1 clusters' requests over HTTP/2; kept across renewals, so
    /// that only a first contact asks.
    agreed_h2: Mutex<RequestMap<SocketAddr, (SpiffeId, bool)>>,
    /// By peer identity and HTTP/2: the generation they were built in, and the client the
    /// health checks use.
    mesh_clients: Mutex<HashMap<(SpiffeId, bool), (u64, MeshClient)>>,
    /// Upstream requests per cluster, for the control plane's golden metrics.
    upstreams: Arc<Upstreams>,
    access_log: AccessLog,
}

impl Proxy {
    pub fn new(
        state: Arc<State>,
        identity: Arc<Identity>,
        binding: Binding,
        metrics: Metrics,
        upstreams: Arc<Upstreams>,
        access_log: AccessLog,
        cert_dir: std::path::PathBuf,
    ) -> anyhow::Result<Arc<Proxy>> {
        let svid = identity.current();
        let bundle = Arc::new(svid.bundle()?);
        let server = server_config(&identity, &bundle)?;
        Ok(Arc::new_cyclic(|me| Proxy {
            me: me.clone(),
            state,
            identity,
            binding,
            metrics,
            cert_dir,
            server_tls: ArcSwap::from(server),
            bundle: ArcSwap::from(bundle),
            generation: AtomicU64::new(0),
            bound: Mutex::default(),
            health: Mutex::default(),
            buckets: Mutex::default(),
            checkers: Mutex::default(),
            draining: tokio::sync::watch::channel(false).0,
            open: tokio::sync::watch::channel(0).0,
            http1: Http1Pool::new(UPSTREAM_IDLE),
            h2: H2Pool::new(UPSTREAM_IDLE),
            tls_connectors: Mutex::default(),
            agreed_h2: Mutex::default(),
            mesh_clients: Mutex::default(),
            upstreams,
            access_log,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Why the agent is not ready to carry traffic yet, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if self.identity.current().not_after <= std::time::SystemTime::now() {
            return Some("the SVID has expired; renewing".into());
        }
        let cfg = self.state.config();
        for t in [PbListener::type_url(), envoy_types::pb::envoy::config::cluster::v3::Cluster::type_url()] {
            if !cfg.applied.contains(&t) {
                return Some(format!("waiting for {t} from the control plane"));
            }
        }
        let bound = self.bound.lock().expect("not poisoned");
        let missing: Vec<&str> = cfg
            .listeners
            .values()
            .filter(|l| self.binding.binds(l) && !bound.contains_key(&l.name))
            .map(|l| l.name.as_str())
            .collect();
        (!missing.is_empty()).then(|| format!("listeners not bound: {}", missing.join(", ")))
    }

    /// What the agent applies, for `/config`.
    pub fn dump(&self) -> serde_json::Value {
        let cfg = self.state.config();
        let svid = self.identity.current();
        let bound = self.bound.lock().expect("not poisoned");
        let listeners: Vec<_> = cfg
            .listeners
            .values()
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "address": l.addr.to_string(), "side": format!("{:?}", l.side),
                    "bound": bound.contains_key(&l.name),
                })
            })
            .collect();
        let clusters: Vec<_> = cfg
            .clusters
            .values()
            .map(|c| serde_json::json!({"name": c.name, "target": format!("{:?}", c.target), "http2": c.h2}))
            .collect();
        let endpoints: serde_json::Map<String, serde_json::Value> = cfg
            .endpoints
            .iter()
            .map(|(n, e)| (n.clone(), e.iter().map(ToString::to_string).collect::<Vec<_>>().into()))
            .collect();
        let bundle = self.bundle.load();
        serde_json::json!({
            "identity": {
                "spiffeId": svid.id.as_str(),
                "notAfter": svid.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            },
            // The roots peers are verified with; the first signs now (the contract's order).
            "trustBundle": {
                "roots": bundle.roots().len(),
                "fingerprints": bundle.roots().iter().map(|r| r.fingerprint()).collect::<Vec<_>>(),
            },
            "listeners": listeners,
            "clusters": clusters,
            "endpoints": endpoints,
            "routes": cfg.routes.keys().collect::<Vec<_>>(),
            "versions": cfg.versions,
        })
    }

    /// Rebuilds the TLS material from the current SVID and bundle. Open connections keep
    /// theirs; new ones get the new.
    pub fn refresh_tls(&self) -> anyhow::Result<()> {
        let bundle = match self.state.config().bundle.clone() {
            Some(b) => b,
            None => Arc::new(self.identity.current().bundle()?),
        };
        self.server_tls.store(server_config(&self.identity, &bundle)?);
        self.bundle.store(bundle);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The applied configuration.
    pub(crate) fn config(&self) -> Arc<crate::state::Config> {
        self.state.config()
    }

    /// Accepts on `listener` until the drain begins, handing each connection to `handle`;
    /// a connection counts as open until its handler returns.
    pub(crate) async fn accept_until_drained<F, Fut>(self: Arc<Self>, listener: TcpListener, handle: F)
    where
        F: Fn(Arc<Proxy>, TcpStream) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut draining = self.draining.subscribe();
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { drop(draining.wait_for(|d| *d).await) } => return,
            };
            let _ = tcp.set_nodelay(true);
            self.open.send_modify(|n| *n += 1);
            let open = OpenConnection(self.open.clone());
            let handled = handle(self.clone(), tcp);
            tokio::spawn(async move {
                let _open = open;
                handled.await;
            });
        }
    }

    /// Binds what `listeners` adds or moves, stops what it drops. A listener that cannot
    /// bind fails the update (and so is NACKed).
    fn bind(&self, listeners: &std::collections::BTreeMap<String, Arc<Listener>>) -> Result<(), String> {
        let mut bound = self.bound.lock().expect("not poisoned");
        bound.retain(|name, (addr, task)| {
            let keep = listeners.get(name).is_some_and(|l| l.addr == *addr && self.binding.binds(l));
            if !keep {
                task.abort();
                tracing::info!(listener = %name, %addr, "listener stopped");
            }
            keep
        });
        for (name, l) in listeners {
            if bound.contains_key(name) || !self.binding.binds(l) {
                continue;
            }
            let std = std::net::TcpListener::bind(l.addr)
                .map_err(|e| format!("listener {name:?}: cannot bind {}: {e}", l.addr))?;
            std.set_nonblocking(true).map_err(|e| format!("listener {name:?}: {e}"))?;
            let tokio = TcpListener::from_std(std).map_err(|e| format!("listener {name:?}: {e}"))?;
            let me = self.me.upgrade().expect("alive while applying");
            tracing::info!(listener = %name, addr = %l.addr, "listening {name} on {}", l.addr);
            bound.insert(name.clone(), (l.addr, tokio::spawn(me.accept(name.clone(), tokio))));
        }
        Ok(())
    }

    /// Stops accepting, lets open HTTP connections finish their requests and close, and
    /// waits for every connection to end, at most `within`. Returns how many were still open.
    pub async fn drain(&self, within: Duration) -> usize {
        for (name, (_, task)) in self.bound.lock().expect("not poisoned").drain() {
            task.abort();
            tracing::debug!(listener = %name, "stopped accepting");
        }
        self.draining.send_replace(true);
        let mut open = self.open.subscribe();
        let _ = tokio::time::timeout(within, open.wait_for(|n| *n == 0)).await;
        *open.borrow()
    }

    /// Explicit mode without name resolution: an HTTP proxy on loopback. A request for
    /// `http://<service>.<mesh>:<port>/…` (or with that `Host`) is handled as the outbound
    /// listener of that service port would, bound or not.
    pub async fn serve_http_proxy(self: Arc<Self>, listener: TcpListener) {
        self.accept_until_drained(listener, |me, tcp| async move {
            let Ok(first) = first_bytes(&tcp, HEADER_TIMEOUT).await else { return };
            let answer = {
                let me = me.clone();
                move |req: Request<Body>| {
                    let me = me.clone();
                    async move { me.proxied(req).await }
                }
            };
            let _ = me.serve_plaintext(tcp, Speaks::of_first_bytes(&first), answer).await;
        })
        .await
    }

    async fn proxied(&self, req: Request<Body>) -> Response<Body> {
        let authority = authority(&req);
        let target = authority.and_then(|a| {
            let (host, port) = a.rsplit_once(':').unwrap_or((a, "80"));
            let (service, mesh) = host.split_once('.')?;
            Some(trellis_xds::sidecar_outbound_name(service, mesh, port.parse().ok()?))
        });
        let listener = target.as_ref().and_then(|name| self.state.config().listeners.get(name).cloned());
        match listener {
            Some(l) if matches!(l.handler, Handler::Http { .. }) => {
                self.request(&l, None, &self.peer_metrics(&l, None), req).await
            }
            _ => local_reply(
                false,
                StatusCode::BAD_GATEWAY,
                14,
                &format!(
                    "{} is no HTTP service port of this mesh (<service>.<mesh>:<port>)",
                    authority.unwrap_or_default()
                ),
            ),
        }
    }

    async fn accept(self: Arc<Self>, name: String, listener: TcpListener) {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (me, name) = (self.clone(), name.clone());
            self.open.send_modify(|n| *n += 1);
            let open = OpenConnection(self.open.clone());
            tokio::spawn(async move {
                let _open = open;
                if let Err(e) = me.connection(&name, tcp).await {
                    tracing::debug!(listener = %name, %remote, error = %format!("{e:#}"), "connection ended");
                }
            });
        }
    }

    /// Serves one connection as the listener `name` does (the listener need not be bound).
    pub(crate) async fn connection(self: Arc<Self>, name: &str, tcp: TcpStream) -> anyhow::Result<()> {
        let Some(l) = self.state.config().listeners.get(name).cloned() else { return Ok(()) };
        match l.side {
            Side::Inbound { plaintext } => {
                let first = first_bytes(&tcp, HEADER_TIMEOUT).await?;
                // A TLS record starts with 0x16 (handshake); PERMISSIVE takes anything else as plaintext.
                let tls = first.first() == Some(&0x16);
                if !tls && !plaintext {
                    let denial = Denial { filter: "mtls".into(), policy: None };
                    let note = Note {
                        denial: Some(denial),
                        detail: Some("plaintext caller: the mesh requires mTLS".into()),
                        ..Default::default()
                    };
                    self.log_call(
                        &l,
                        None,
                        None,
                        tcp.peer_addr().ok(),
                        std::time::SystemTime::now(),
                        Duration::ZERO,
                        note,
                    );
                    return Err(anyhow!("plaintext refused: the mesh requires mTLS"));
                }
                if !tls {
                    return self.serve(l, tcp, None, Speaks::of_first_bytes(&first)).await;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(self.server_tls.load_full());
                let stream = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(coalesced(tcp)))
                    .await
                    .map_err(|_| anyhow!("TLS handshake not done in {HEADER_TIMEOUT:?}"))?
                    .context("TLS handshake refused")?;
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| claimed_leaf(c).ok())
                    .map(|c| c.id);
                let speaks = Speaks::of_alpn(stream.get_ref().1.alpn_protocol());
                self.serve(l, stream, peer, speaks).await
            }
            Side::Outbound { .. } => {
                let speaks = match &l.handler {
                    Handler::Http { .. } => Speaks::of_first_bytes(&first_bytes(&tcp, HEADER_TIMEOUT).await?),
                    Handler::Tcp { .. } => None,
                };
                self.serve(l, tcp, None, speaks).await
            }
        }
    }

    /// Serves a connection the listener `l` took; `speaks` is its HTTP version when that is
    /// already known.
    async fn serve<IO>(
        self: Arc<Self>,
        l: Arc<Listener>,
        io: IO,
        peer: Option<SpiffeId>,
        speaks: Option<Speaks>,
    ) -> anyhow::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        match &l.handler {
            Handler::Http { .. } => {
                let metrics = self.peer_metrics(&l, peer.as_ref());
                let downstream = Arc::new(Downstream { proxy: self.clone(), metrics, listener: l, peer });
                if speaks == Some(Speaks::Http1) {
                    let answer = |req| downstream.clone().answer(req);
                    return http1_server::serve(io, answer, HEADER_TIMEOUT, self.draining()).await;
                }
                if speaks == Some(Speaks::Http2) {
                    let answer = |req| downstream.clone().answer(req);
                    return h2_server::serve(io, answer, HEADER_TIMEOUT, self.draining()).await;
                }
                let svc = service_fn(move |req| downstream.clone().answer_hyper(req));
                self.until_drained(http_server().serve_connection(TokioIo::new(io), svc)).await
            }
            Handler::Tcp { access, backends } => {
                let (inbound, service) = peer_service(&l, peer.as_ref());
                self.metrics.connection(inbound, service);
                if matches!(l.side, Side::Inbound { .. }) {
                    let v = evaluate(access, peer.as_ref(), None);
                    if let Some(why) = v.denied {
                        tracing::warn!(direction = "inbound", listener = %l.name, peer = ?peer.as_ref().map(SpiffeId::as_str), rule = %why, "connection denied");
                        let note = Note {
                            denial: Some(why),
                            audited: v.audited.into_iter().next(),
                            ..Default::default()
                        };
                        self.log_call(
                            &l,
                            peer.as_ref(),
                            None,
                            None,
                            std::time::SystemTime::now(),
                            Duration::ZERO,
                            note,
                        );
                        return Ok(());
                    }
                }
                let total: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut roll = rand::rng().random_range(0..total.max(1));
                let cluster = backends
                    .iter()
                    .find(|(_, w)| {
                        let hit = roll < u64::from(*w);
                        roll = roll.saturating_sub(u64::from(*w));
                        hit
                    })
                    .map(|(c, _)| c.clone())
                    .unwrap_or_default();
                self.tcp_forward(&cluster, io).await
            }
        }
    }

    /// Serves `conn` until it ends or the agent drains; draining, it finishes the requests it
    /// has begun and closes.
    async fn until_drained<C>(&self, conn: C) -> anyhow::Result<()>
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        tokio::pin!(conn);
        let mut draining = self.draining.subscribe();
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { drop(draining.wait_for(|d| *d).await) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        result.map_err(|e| anyhow!("{e}"))
    }

    /// Forwards a connection to an endpoint of `cluster`; an endpoint that refuses it (nothing
    /// of the client's bytes has been read) is passed over for up to `OTHER_ENDPOINTS_OFFERED`
    /// others, as a request is.
    async fn tcp_forward<IO>(&self, cluster: &str, mut down: IO) -> anyhow::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut tried = Vec::new();
        let (mut up, _in_flight) = loop {
            let pick = self.endpoint(cluster, &tried).map_err(|(_, why)| anyhow!(why))?;
            let in_flight = pick
                .health
                .admit(pick.cluster.limit)
                .ok_or_else(|| anyhow!("circuit breaker open: {cluster}"))?;
            let connected: std::io::Result<Box<dyn Upstream>> = match &pick.cluster.target {
                Target::Local(_) => connect_tcp(pick.addr).await.map(|io| Box::new(io) as _),
                Target::Mesh { peer, .. } => {
                    let tls = self.tls_connector(peer, Alpn::Http1)?;
                    connect_mtls(tls, pick.addr).await.map(|io| Box::new(io) as _)
                }
            };
            match connected {
                Ok(up) => break (up, in_flight),
                Err(e) if pick.another_after(&tried) => {
                    tracing::debug!(cluster, host = %pick.addr, error = %e, "the endpoint took nothing; offered to another");
                    tried.push(pick.addr);
                }
                Err(e) => return Err(e.into()),
            }
        };
        pipe(&mut down, &mut up).await?;
        Ok(())
    }

    /// A cluster and one of its endpoints (random among those not ejected), none of `tried`,
    /// or a status and reason.
    fn endpoint(&self, cluster: &str, tried: &[SocketAddr]) -> Result<Pick, (StatusCode, String)> {
        let cfg = self.state.config();
        let c = cfg
            .clusters
            .get(cluster)
            .ok_or_else(|| (StatusCode::SERVICE_UNAVAILABLE, format!("no cluster {cluster:?}")))?;
        let health = self.cluster_health(cluster);
        let (addr, hosts) = match &c.target {
            Target::Local(a) => (*a, 1),
            Target::Mesh { eds, .. } => {
                let eps = cfg.endpoints.get(eds).map(|e| e.as_slice()).unwrap_or_default();
                let mut usable = health.usable(eps, std::time::Instant::now());
                if !tried.is_empty() {
                    let untried = |hosts: &[SocketAddr]| -> Vec<SocketAddr> {
                        hosts.iter().filter(|h| !tried.contains(h)).copied().collect()
                    };
                    let fresh = untried(&usable);
                    usable = Cow::Owned(if fresh.is_empty() { untried(eps) } else { fresh });
                }
                if usable.is_empty() {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no healthy upstream in {cluster:?}"),
                    ));
                }
                (health.choose(c.lb, &usable), eps.len())
            }
        };
        Ok(Pick { cluster: c.clone(), addr, hosts, health })
    }

    fn client_config(&self, peer: &SpiffeId, alpn: Alpn) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let svid = self.identity.current();
        let verifier = SvidServerVerifier::new((*self.bundle.load_full()).clone(), peer.clone());
        let mut c = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(svid.chain(), svid.key())?;
        c.alpn_protocols = alpn.protocols();
        Ok(Arc::new(c))
    }

    /// The metrics of the requests `l` takes from `peer`.
    pub(crate) fn peer_metrics(&self, l: &Listener, peer: Option<&SpiffeId>) -> PeerMetrics {
        let (inbound, service) = peer_service(l, peer);
        self.metrics.peer(inbound, service)
    }

    /// Handles one request, counts it in `metrics`, and logs it when the access log keeps it.
    pub(crate) async fn request(
        &self,
        l: &Listener,
        peer: Option<&SpiffeId>,
        metrics: &PeerMetrics,
        req: Request<Body>,
    ) -> Response<Body> {
        let (time, started) = (std::time::SystemTime::now(), std::time::Instant::now());
        // The head goes down by reference from here: a request is moved whole no further.
        let (mut head, body) = req.into_parts();
        let (method, uri, host) =
            (head.method.clone(), head.uri.clone(), head.headers.get(http::header::HOST).cloned());
        let (resp, note) = self.handle(l, peer, &mut head, body).await;
        spare_fields::give_back(head.headers);
        let took = started.elapsed();
        metrics.request(resp.status(), took);
        let call = CallHead { method, uri, host, status: resp.status() };
        self.log_call(l, peer, Some(call), None, time, took, note);
        resp
    }

    /// Logs a request (`call`) or a connection when the access log keeps it: every denial
    /// and failure, a sample of the rest.
    #[allow(clippy::too_many_arguments)]
    fn log_call(
        &self,
        l: &Listener,
        peer: Option<&SpiffeId>,
        call: Option<CallHead>,
        remote: Option<SocketAddr>,
        time: std::time::SystemTime,
        duration: Duration,
        note: Note,
    ) {
        let failed = note.timed_out
            || note.fault_injected
            || call.as_ref().is_some_and(|c| c.status.is_server_error());
        let Some(outcome) = self.access_log.keeps(note.denial.is_some(), failed, note.audited.is_some())
        else {
            return;
        };
        let (peer, destination_service) = match &l.side {
            Side::Inbound { .. } => (peer.cloned(), None),
            Side::Outbound { service } => {
                let cfg = self.state.config();
                let target = note.cluster.as_ref().and_then(|c| cfg.clusters.get(c)).map(|c| &c.target);
                let peer = match target {
                    Some(Target::Mesh { peer, .. }) => Some(SpiffeId::clone(peer)),
                    _ => None,
                };
                (peer, service.clone())
            }
        };
        let inbound = matches!(l.side, Side::Inbound { .. });
        self.access_log.log(Entry {
            time,
            outcome,
            inbound,
            http: call.map(CallHead::into_call),
            peer,
            destination_service,
            remote,
            duration,
            note,
        });
    }

    async fn handle(
        &self,
        l: &Listener,
        peer: Option<&SpiffeId>,
        head: &mut http::request::Parts,
        body: Body,
    ) -> (Response<Body>, Note) {
        let grpc = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let Handler::Http { access, .. } = &l.handler else {
            let r = local_reply(grpc, StatusCode::INTERNAL_SERVER_ERROR, 13, "not an HTTP listener");
            return (r, Note::default());
        };
        let inbound = matches!(l.side, Side::Inbound { .. });
        let mut audited = None;
        if inbound {
            let view = RequestView::of(head);
            let verdict = evaluate(access, peer, Some(&view));
            for rule in &verdict.audited {
                tracing::info!(direction = "inbound", listener = %l.name, peer = ?peer.map(SpiffeId::as_str), path = %view.path, rule = %rule, "audit: an audit rule matched");
            }
            audited = verdict.audited.into_iter().next();
            if let Some(rule) = verdict.denied {
                tracing::warn!(direction = "inbound", listener = %l.name, peer = ?peer.map(SpiffeId::as_str), method = %view.method, path = %view.path, rule = %rule, "request denied");
                let r = local_reply(grpc, StatusCode::FORBIDDEN, 7, "RBAC: access denied");
                return (r, Note { denial: Some(rule), audited, ..Default::default() });
            }
        }
        let (resp, note) = self.route(l, peer, head, body, grpc, inbound).await;
        (resp, Note { audited, ..note })
    }

    /// The RDS route table `name`. A listener can arrive before its routes (a restart, a
    /// new listener): a request then waits up to `ROUTES_WARMING` for them, as Envoy keeps
    /// such a listener warming instead of failing its first requests.
    async fn route_table(&self, name: &str) -> Option<Arc<RouteTable>> {
        if let Some(table) = self.state.config().routes.get(name) {
            return Some(table.clone());
        }
        let mut changed = self.state.changed.subscribe();
        let warming = tokio::time::sleep(ROUTES_WARMING);
        tokio::pin!(warming);
        loop {
            if let Some(table) = self.state.config().routes.get(name) {
                return Some(table.clone());
            }
            tokio::select! {
                more = changed.changed() => more.ok()?,
                () = &mut warming => return None,
            }
        }
    }

    /// Past access control: the rate limit, the route, and the upstream tries.
    async fn route(
        &self,
        l: &Listener,
        peer: Option<&SpiffeId>,
        head: &mut http::request::Parts,
        body: Body,
        grpc: bool,
        inbound: bool,
    ) -> (Response<Body>, Note) {
        let plain = |r| (r, Note::default());
        let Handler::Http { rate_limit, routes, forward_client_cert, fault, .. } = &l.handler else {
            return plain(local_reply(grpc, StatusCode::INTERNAL_SERVER_ERROR, 13, "not an HTTP listener"));
        };
        let view = RequestView::of(head);
        if rate_limit.is_some_and(|limit| !self.take_token(&l.name, limit)) {
            tracing::info!(listener = %l.name, "rate limited");
            return plain(local_reply(grpc, StatusCode::TOO_MANY_REQUESTS, 14, "local rate limit"));
        }
        let table = match routes {
            RouteSource::Inline(t) => Some(t.clone()),
            RouteSource::Rds(name) => self.route_table(name).await,
        };
        let Some(table) = table else {
            return plain(local_reply(
                grpc,
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                "no route configuration yet",
            ));
        };
        let Some(route) = table.find(&view) else {
            return plain(local_reply(grpc, StatusCode::NOT_FOUND, 12, "no route matches"));
        };
        // Faults, as Envoy's fault filter injects them before the router: the route's own
        // config overrides the filter's, and there are none without the filter.
        let injected = fault.as_ref().map_or_else(Injected::default, |filter| {
            let mut rng = rand::rng();
            let (delay_roll, abort_roll) = (rng.random_range(0..Share::PER), rng.random_range(0..Share::PER));
            route.fault.as_ref().unwrap_or(filter).decide(delay_roll, abort_roll)
        });
        if let Some(d) = injected.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(abort) = injected.abort {
            let (status, code) = match abort {
                Abort::Http(s) => (s, grpc_code_of(s)),
                Abort::Grpc(c) => (StatusCode::OK, c),
            };
            let r = local_reply(grpc || matches!(abort, Abort::Grpc(_)), status, code, "fault filter abort");
            // The cluster the route chose names the destination, as in Envoy's log of an abort.
            let roll = rand::rng().random_range(0..route.total_weight().max(1));
            let note = Note {
                cluster: (!inbound).then(|| route.pick(roll).to_owned()),
                detail: Some("fault filter abort".into()),
                fault_injected: true,
                delay_injected: injected.delay.is_some(),
                ..Default::default()
            };
            return (r, note);
        }
        let delay_injected = injected.delay.is_some();
        let headers = &mut head.headers;
        strip_hop_by_hop(headers);
        for name in &route.remove_headers {
            headers.remove(name);
        }
        for (name, value, overwrite) in &route.set_headers {
            if *overwrite {
                headers.insert(name.clone(), value.clone());
            } else {
                headers.append(name.clone(), value.clone());
            }
        }
        if inbound && *forward_client_cert {
            headers.remove(&XFCC);
            if let Some(p) = peer.and_then(|p| HeaderValue::try_from(format!("URI={p}")).ok()) {
                headers.insert(XFCC, p);
            }
        }
        let replay = match &route.retry {
            Some(_) if body.size_hint().upper().is_some_and(|u| u <= MAX_REPLAY_BODY) => {
                match http_body_util::Limited::new(body, MAX_REPLAY_BODY as usize).collect().await {
                    Ok(b) => Ok(b.to_bytes()),
                    Err(_) => {
                        return plain(local_reply(
                            grpc,
                            StatusCode::BAD_REQUEST,
                            3,
                            "request body unreadable",
                        ));
                    }
                }
            }
            _ => Err(body),
        };
        let mut tried = None;
        let outcome = {
            // Pinned where it is made: a large future, not moved again to be awaited.
            let attempts = std::pin::pin!(self.attempts(route, head, replay, &mut tried));
            match route.timeout {
                Some(t) => tokio::time::timeout(t, attempts).await.unwrap_or_else(|_| {
                    Err((StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".into()))
                }),
                None => attempts.await,
            }
        };
        // Outbound, the cluster names the destination in the access log.
        let cluster = (!inbound).then(|| tried.map(str::to_owned)).flatten();
        match outcome {
            Ok(resp) => (resp, Note { cluster, delay_injected, ..Default::default() }),
            Err((status, why)) => {
                tracing::warn!(direction = if inbound { "inbound" } else { "outbound" }, listener = %l.name, route = %route.name, %status, error = %why, "request failed");
                let timed_out = status == StatusCode::GATEWAY_TIMEOUT;
                let code = if timed_out { 4 } else { 14 };
                let r = local_reply(grpc, status, code, &why);
                (r, Note { cluster, detail: Some(why), timed_out, delay_injected, ..Default::default() })
            }
        }
    }

    /// What the agent sees now of each mesh cluster's endpoints, by cluster name (reported
    /// to the control plane as Envoy's cluster gauges).
    pub fn memberships(&self) -> Vec<(String, Membership)> {
        let cfg = self.state.config();
        let now = std::time::Instant::now();
        cfg.clusters
            .iter()
            .filter_map(|(name, c)| match &c.target {
                Target::Mesh { eds, .. } => {
                    let eps = cfg.endpoints.get(eds).map(|e| e.as_slice()).unwrap_or_default();
                    Some((name.clone(), self.cluster_health(name).membership(eps, now)))
                }
                Target::Local(_) => None,
            })
            .collect()
    }

    fn cluster_health(&self, cluster: &str) -> Arc<ClusterHealth> {
        let mut health = self.health.lock().expect("not poisoned");
        match health.get(cluster) {
            Some(h) => h.clone(),
            None => health.entry(cluster.to_owned()).or_default().clone(),
        }
    }

    /// Runs one health checker per cluster that asks for one and that the agent may send
    /// traffic to, and no other: an agent does not check the services it never calls.
    fn reconcile_checkers(&self) {
        let cfg = self.state.config();
        let sent_to = clusters_sent_to(&self.binding, &cfg);
        let checked = |name: &str| {
            let policy = cfg.clusters.get(name)?.health_check.as_ref()?;
            sent_to.as_ref().is_none_or(|s| s.contains(name)).then_some(policy)
        };
        let mut checkers = self.checkers.lock().expect("not poisoned");
        checkers.retain(|name, (policy, task)| {
            let keep = checked(name) == Some(policy);
            if !keep {
                task.abort();
            }
            keep
        });
        for name in cfg.clusters.keys() {
            let Some(policy) = checked(name) else { continue };
            if checkers.contains_key(name) {
                continue;
            }
            let me = self.me.upgrade().expect("alive while applying");
            let task = tokio::spawn(me.check_forever(name.clone(), policy.clone()));
            checkers.insert(name.clone(), (policy.clone(), task));
        }
    }

    async fn check_forever(self: Arc<Self>, cluster: String, policy: HealthCheckPolicy) {
        let mut tick = tokio::time::interval(policy.interval);
        loop {
            tick.tick().await;
            let cfg = self.state.config();
            let Some(c) = cfg.clusters.get(&cluster).cloned() else { return };
            let Target::Mesh { eds, peer } = &c.target else { return };
            let hosts = cfg.endpoints.get(eds).cloned().unwrap_or_default();
            let health = self.cluster_health(&cluster);
            for host in hosts.iter().copied() {
                let ok = tokio::time::timeout(policy.timeout, self.check(&c, peer, host, &policy))
                    .await
                    .unwrap_or(false);
                if let Some(failing) = health.checked(&policy, host, ok) {
                    tracing::warn!(%cluster, %host, healthy = !failing, "health check verdict changed");
                }
            }
        }
    }

    /// One check of `host`: `GET <path>` over the cluster's mTLS, or a TCP connect.
    async fn check(
        &self,
        c: &crate::config::Cluster,
        peer: &SpiffeId,
        host: SocketAddr,
        policy: &HealthCheckPolicy,
    ) -> bool {
        let Some(path) = &policy.http_path else {
            return TcpStream::connect(host).await.is_ok();
        };
        let Ok(client) = self.mesh_client(peer, c.h2) else { return false };
        let Ok(uri) = Uri::try_from(format!("http://{host}{path}")) else { return false };
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = uri;
        *req.version_mut() = if c.h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        client.request(req).await.is_ok_and(|r| policy.accepts(r.status().as_u16()))
    }

    /// Takes a token from the listener's bucket (a new one when its limit changed).
    fn take_token(&self, listener: &str, limit: RateLimit) -> bool {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let bucket = buckets.entry(listener.to_owned()).or_insert_with(|| Bucket::new(limit, now));
        if bucket.limit() != limit {
            *bucket = Bucket::new(limit, now);
        }
        bucket.take(now)
    }

    /// Sends the request, trying again as the route's retry policy says when the body can
    /// be sent again.
    async fn attempts<'r>(
        &self,
        route: &'r crate::config::Route,
        head: &mut http::request::Parts,
        body: Result<Bytes, Body>,
        tried: &mut Option<&'r str>,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let total = route.total_weight();
        let (bytes, mut streaming) = match body {
            Ok(b) => (Some(b), None),
            Err(s) => (None, Some(s)),
        };
        let retry = route.retry.as_ref().filter(|_| bytes.is_some());
        let tries = retry.map_or(1, |r| r.retries + 1);
        let mut copy = None;
        let mut attempt = 0;
        loop {
            let cluster = route.pick(rand::rng().random_range(0..total.max(1)));
            *tried = Some(cluster);
            let body: Body = match (&bytes, streaming.take()) {
                (Some(b), _) => Body::whole(b.clone()),
                (None, Some(s)) => s,
                (None, None) => unreachable!("a streamed body is tried once"),
            };
            // The last try sends the head; one before it a copy (a try fits the head to its
            // endpoint).
            let sent_head = if attempt + 1 < tries { copy.insert(head.clone()) } else { &mut *head };
            let sent = std::pin::pin!(self.send(cluster, sent_head, body));
            let result = match retry.and_then(|r| r.per_try) {
                Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| Err(Failure::Timeout)),
                None => sent.await,
            };
            let again = retry.is_some_and(|r| should_retry(r, &result)) && attempt + 1 < tries;
            if !again {
                return result.map_err(Failure::into_status);
            }
            let r = retry.expect("checked");
            let backoff = r.base.saturating_mul(1 << attempt.min(10)).min(r.max);
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::time::sleep(jittered).await;
            attempt += 1;
        }
    }

    /// Sends the request (`parts`, `body`) to an endpoint of `cluster`, and a request an endpoint
    /// took nothing of to up to `OTHER_ENDPOINTS_OFFERED` others: one held whole, or one whose
    /// body that endpoint's try read none of.
    async fn send(
        &self,
        cluster: &str,
        parts: &mut http::request::Parts,
        mut body: Body,
    ) -> Result<Response<Body>, Failure> {
        let (mut tried, mut failed) = (Vec::new(), None);
        loop {
            let pick = match (self.endpoint(cluster, &tried), failed) {
                (Ok(pick), _) => pick,
                (Err(_), Some(failure)) => return Err(failure),
                (Err(local), None) => return Err(Failure::Local(local)),
            };
            // Kept only where there is another endpoint to offer it to.
            let again =
                pick.another_after(&tried).then(|| body.keep_again().map(|a| (parts.clone(), a))).flatten();
            let addr = pick.addr;
            let failure = match self.send_to(cluster, pick, parts, body).await {
                Err(failure) if failure.nothing_sent() => failure,
                result => return result,
            };
            let Some((head, Some(body_again))) = again.map(|(head, again)| (head, again.take())) else {
                return Err(failure);
            };
            tracing::debug!(cluster, host = %addr, "the endpoint took nothing; offered to another");
            tried.push(addr);
            failed = Some(failure);
            (*parts, body) = (head, body_again);
        }
    }

    /// Sends the request to the endpoint picked, and records how it went.
    async fn send_to(
        &self,
        cluster: &str,
        pick: Pick,
        head: &mut http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let addr = pick.addr;
        let _in_flight = pick.health.admit(pick.cluster.limit).ok_or_else(|| {
            Failure::Local((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("circuit breaker open: {cluster} is at its limit"),
            ))
        })?;
        let host = pick.health.started(addr);
        // A mesh endpoint is reached over mTLS, as the peer identity its cluster names.
        let peer = match &pick.cluster.target {
            Target::Local(_) => None,
            Target::Mesh { peer, .. } => Some(peer),
        };
        // Mesh requests are timed for the control plane's golden metrics.
        let started = peer.is_some().then(std::time::Instant::now);
        let result = self.exchange(addr, peer, pick.cluster.h2, head, body).await.map(|r| holding(r, host));
        // What failed before anything was sent says nothing of the endpoint.
        if matches!(result, Err(Failure::Local(_))) {
            return result;
        }
        if let Some(started) = started {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            self.upstreams.record(cluster, status, started.elapsed());
        }
        if let Some(policy) = &pick.cluster.outlier {
            let failed = match &result {
                Ok(resp) => resp.status().is_server_error(),
                Err(_) => true,
            };
            if pick.health.record(policy, addr, failed, pick.hosts, std::time::Instant::now()) {
                tracing::warn!(cluster, host = %addr, "outlier ejected after consecutive failures");
            }
        }
        result
    }

    /// The request to `addr` — the application, or an endpoint of `peer` over mTLS — in HTTP/2 when
    /// the cluster speaks it (`h2`), else in HTTP/1.1, carried over HTTP/2 to a mesh endpoint
    /// that agrees (`Alpn::Either`). A protocol switch goes to a mesh endpoint in HTTP/1.1
    /// whatever the cluster speaks, and to an application that speaks HTTP/2 as an extended
    /// CONNECT.
    async fn exchange(
        &self,
        addr: SocketAddr,
        peer: Option<&Arc<SpiffeId>>,
        h2: bool,
        head: &mut http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let to =
            Destination { addr, mtls: peer.map(|p| (p.clone(), self.generation.load(Ordering::SeqCst))) };
        let switch = crate::upgrade::requested(&head.extensions);
        let (alpn, mut opened) = match peer {
            None => (None, None),
            Some(_) if switch.is_some() => (Some(Alpn::Http1), None),
            Some(_) if h2 => (Some(Alpn::H2), None),
            Some(peer) => match self.agreed_h2(addr, peer) {
                Some(true) => (Some(Alpn::Either), None),
                Some(false) => (Some(Alpn::Http1), None),
                // Not asked yet: the connection that asks carries the request.
                None => {
                    let io = self.connect_mesh(peer, addr, Alpn::Either).await.map_err(Failure::of_pool)?;
                    let alpn = if speaks_h2(&io) { Alpn::Either } else { Alpn::Http1 };
                    (Some(alpn), Some(Box::new(io) as Box<dyn Upstream>))
                }
            },
        };
        let h2 = alpn.map_or(h2, |a| a != Alpn::Http1);
        head.version = if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        // HTTP/1.1 goes in origin form with a Host; HTTP/2 in absolute form, which gives the
        // stream its :scheme and :authority.
        if h2 {
            for_http2(head, addr).map_err(|e| Failure::Local((StatusCode::BAD_REQUEST, e.to_string())))?;
        } else {
            with_host(head, addr);
        }
        let connect = || {
            let opened = opened.take();
            async move {
                let (peer, alpn) = match (opened, peer.zip(alpn)) {
                    (Some(io), _) => return Ok(io),
                    (None, None) => return plain_upstream(addr).await,
                    (None, Some(mesh)) => mesh,
                };
                let io = self.connect_mesh(peer, addr, alpn).await?;
                if alpn == Alpn::Either && !speaks_h2(&io) {
                    return Err(PoolError::Connect(format!("{addr} no longer agrees to HTTP/2")));
                }
                Ok(Box::new(io) as Box<dyn Upstream>)
            }
        };
        let sent = if h2 {
            let send =
                async |head: &_, body| self.h2.send(to, connect, head, body).await.map(|r| r.map(Body::from));
            match switch {
                // The stream carries the switched protocol's bytes, not the request's body.
                Some(protocol) => {
                    drop(body);
                    crate::upgrade::over_http2(head, protocol, send).await
                }
                None => send(head, body).await,
            }
        } else {
            self.http1.send(to, connect, head, body).await
        };
        sent.map_err(Failure::of_pool)
    }

    /// `req` to `dst`, an address outside the mesh, as it came, over the pooled HTTP/1.1
    /// client (transparent mode's passthrough).
    pub(crate) async fn pass_on_http1(
        &self,
        dst: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let (mut head, body) = req.into_parts();
        strip_hop_by_hop(&mut head.headers);
        with_host(&mut head, dst);
        self.http1.send(Destination { addr: dst, mtls: None }, || plain_upstream(dst), &head, body).await
    }

    /// Serves a plaintext HTTP connection with `answer`: on the agent's own server for the
    /// version `speaks` tells, else on hyper's.
    pub(crate) async fn serve_plaintext<F, Fut>(
        &self,
        tcp: TcpStream,
        speaks: Option<Speaks>,
        answer: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(Request<Body>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        match speaks {
            Some(Speaks::Http1) => {
                return http1_server::serve(tcp, answer, HEADER_TIMEOUT, self.draining()).await;
            }
            Some(Speaks::Http2) => {
                return h2_server::serve(tcp, answer, HEADER_TIMEOUT, self.draining()).await;
            }
            None => {}
        }
        let svc = service_fn(move |req: Request<Incoming>| {
            let answered = answer(req.map(Body::streaming));
            async move { Ok::<_, Infallible>(answered.await) }
        });
        http_server().serve_connection(TokioIo::new(tcp), svc).await.map_err(|e| anyhow!("{e}"))
    }

    /// A wait for the agent to begin draining.
    pub(crate) fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// `req` to `dst`, an address outside the mesh, as it came, over the HTTP/2 client
    /// (transparent mode's passthrough).
    pub(crate) async fn pass_on_http2(
        &self,
        dst: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let (mut head, body) = req.into_parts();
        strip_hop_by_hop(&mut head.headers);
        for_http2(&mut head, dst).map_err(|e| PoolError::Http(e.to_string()))?;
        let to = Destination { addr: dst, mtls: None };
        let send = async |head: &_, body| {
            self.h2.send(to, || plain_upstream(dst), head, body).await.map(|r| r.map(Body::from))
        };
        match crate::upgrade::requested(&head.extensions) {
            Some(protocol) => {
                drop(body);
                crate::upgrade::over_http2(&mut head, protocol, send).await
            }
            None => send(&head, body).await,
        }
    }

    fn mesh_client(&self, peer: &SpiffeId, h2: bool) -> anyhow::Result<MeshClient> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut clients = self.mesh_clients.lock().expect("not poisoned");
        if let Some((_, c)) = clients.get(&(peer.clone(), h2)).filter(|(g, _)| *g == generation) {
            return Ok(c.clone());
        }
        let alpn = if h2 { Alpn::H2 } else { Alpn::Http1 };
        let client = pooled_client(h2).build(MeshConnector { tls: self.tls_connector(peer, alpn)? });
        clients.insert((peer.clone(), h2), (generation, client.clone()));
        Ok(client)
    }

    /// The TLS client for endpoints of `peer`, built once per generation of the SVID and
    /// bundle.
    fn tls_connector(&self, peer: &SpiffeId, alpn: Alpn) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut connectors = self.tls_connectors.lock().expect("not poisoned");
        if let Some((_, c)) = connectors.get(&(peer.clone(), alpn)).filter(|(g, _)| *g == generation) {
            return Ok(c.clone());
        }
        let connector = tokio_rustls::TlsConnector::from(self.client_config(peer, alpn)?);
        connectors.insert((peer.clone(), alpn), (generation, connector.clone()));
        Ok(connector)
    }

    /// An mTLS connection to `addr`, an endpoint of `peer`, offering `alpn`; offered either,
    /// what it agreed to is kept for the next requests.
    async fn connect_mesh(
        &self,
        peer: &SpiffeId,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> Result<MeshStream, PoolError> {
        let tls = self.tls_connector(peer, alpn).map_err(|e| PoolError::Connect(format!("{e:#}")))?;
        let io = connect_mtls(tls, addr).await.map_err(|e| PoolError::Connect(e.to_string()))?;
        if alpn == Alpn::Either {
            let mut agreed = self.agreed_h2.lock().expect("not poisoned");
            // Bounded: past the limit, every endpoint is asked again.
            if agreed.len() >= MAX_ENDPOINTS_ASKED {
                agreed.clear();
            }
            agreed.insert(addr, (peer.clone(), speaks_h2(&io)));
        }
        Ok(io)
    }

    /// Whether the endpoint of `peer` at `addr` agreed to HTTP/2 when last asked, if it was.
    fn agreed_h2(&self, addr: SocketAddr, peer: &SpiffeId) -> Option<bool> {
        let agreed = self.agreed_h2.lock().expect("not poisoned");
        agreed.get(&addr).filter(|(asked, _)| asked == peer).map(|(_, h2)| *h2)
    }
}

/// What the access log needs of a request, kept as it came; written out as strings only for
/// the entries the log keeps, not for every request.
struct CallHead {
    method: http::Method,
    uri: Uri,
    host: Option<HeaderValue>,
    status: StatusCode,
}

impl CallHead {
    fn into_call(self) -> HttpCall {
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| self.host.and_then(|h| h.to_str().ok().map(str::to_owned)));
        HttpCall {
            method: self.method.to_string(),
            path: self.uri.path().to_owned(),
            authority,
            status: self.status.as_u16(),
        }
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(tokio::sync::watch::Sender<usize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Whether `l` is inbound, and the service on the other side: the caller's (from its
/// SPIFFE ID, `…/sa/<service>`) or the destination's.
fn peer_service<'a>(l: &'a Listener, peer: Option<&'a SpiffeId>) -> (bool, &'a str) {
    match &l.side {
        Side::Inbound { .. } => (true, peer.and_then(|p| p.path().rsplit('/').next()).unwrap_or("unknown")),
        Side::Outbound { service } => (false, service.as_deref().unwrap_or("unknown")),
    }
}

/// The clusters the agent may send traffic to, as `binding` binds the listeners of `cfg`:
/// those the routes of its bound outbound listeners name, or every one (`None`) when it takes
/// traffic for any service (transparent mode, the HTTP proxy).
fn clusters_sent_to<'c>(binding: &Binding, cfg: &'c Config) -> Option<BTreeSet<&'c str>> {
    if !matches!(binding, Binding::Explicit { http_proxy: false, .. }) {
        return None;
    }
    let mut sent_to = BTreeSet::new();
    for l in cfg.listeners.values() {
        if !matches!(l.side, Side::Outbound { .. }) || !binding.binds(l) {
            continue;
        }
        let named = |backends: &'c [(String, u32)]| backends.iter().map(|(cluster, _)| cluster.as_str());
        match &l.handler {
            Handler::Tcp { backends, .. } => sent_to.extend(named(backends)),
            Handler::Http { routes, .. } => {
                let table = match routes {
                    RouteSource::Rds(name) => cfg.routes.get(name),
                    RouteSource::Inline(table) => Some(table),
                };
                let routes = table.into_iter().flat_map(|t| &t.hosts).flat_map(|h| &h.routes);
                sent_to.extend(routes.flat_map(|r| named(&r.backends)));
            }
        }
    }
    Some(sent_to)
}

fn server_config(identity: &Identity, bundle: &TrustBundle) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let svid = identity.current();
    let verifier = SvidClientVerifier::new(bundle.clone());
    let mut c = rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(svid.chain(), svid.key())?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// What every request of one HTTP connection shares.
struct Downstream {
    proxy: Arc<Proxy>,
    metrics: PeerMetrics,
    listener: Arc<Listener>,
    peer: Option<SpiffeId>,
}

impl Downstream {
    async fn answer(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        self.proxy.request(&self.listener, self.peer.as_ref(), &self.metrics, req).await
    }

    /// `answer` as hyper's servers call it.
    async fn answer_hyper(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        Ok(self.answer(req.map(Body::streaming)).await)
    }
}

/// The HTTP version of a connection, told before it is served.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Speaks {
    Http1,
    Http2,
}

impl Speaks {
    /// From the protocol TLS negotiated (ALPN), if any.
    fn of_alpn(alpn: Option<&[u8]>) -> Option<Speaks> {
        match alpn? {
            b"h2" => Some(Speaks::Http2),
            b"http/1.1" => Some(Speaks::Http1),
            _ => None,
        }
    }

    /// From the first bytes of a plaintext connection: HTTP/2's preface, whole (RFC 9113
    /// §3.4), or anything else, HTTP/1.1. A part of the preface is too few bytes to tell: `None`.
    pub(crate) fn of_first_bytes(first: &[u8]) -> Option<Speaks> {
        if first.starts_with(PREFACE) {
            Some(Speaks::Http2)
        } else if PREFACE.starts_with(first) {
            None
        } else {
            Some(Speaks::Http1)
        }
    }
}

/// The first bytes the peer sent, left unread, as many as `Speaks::of_first_bytes` needs:
/// what has arrived once the first has, and more while that is a part of HTTP/2's preface
/// (which one segment nearly always carries whole), within `within`.
pub(crate) async fn first_bytes(tcp: &TcpStream, within: Duration) -> anyhow::Result<Vec<u8>> {
    let told = async {
        let mut first = [0u8; PREFACE.len()];
        let mut pause = Duration::from_millis(1);
        loop {
            let n = tcp.peek(&mut first).await?;
            if n == 0 || n == first.len() || !PREFACE.starts_with(&first[..n]) {
                return Ok::<_, std::io::Error>(first[..n].to_vec());
            }
            // Peeking again at once would find the same bytes: looked at again after a pause
            // that doubles, so that a client sending a byte and no more costs little.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    };
    Ok(tokio::time::timeout(within, told).await.map_err(|_| anyhow!("nothing told in {within:?}"))??)
}

/// What the agent offers in ALPN when it opens mTLS to a mesh endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Alpn {
    /// HTTP/2 alone: the cluster speaks it.
    H2,
    /// HTTP/1.1 alone: raw TCP, a protocol switch (which HTTP/2 carries only as extended
    /// CONNECT), or an endpoint that did not agree to HTTP/2.
    Http1,
    /// HTTP/2 first, then HTTP/1.1: an HTTP/1.1 cluster's requests, multiplexed over HTTP/2
    /// to an endpoint that agrees (every agent does; Envoy's inbound listeners offer no ALPN and
    /// keep HTTP/1.1). The callee's agent passes them on to its application as its own
    /// cluster says, in HTTP/1.1.
    Either,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Either => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Where one request or connection goes.
struct Pick {
    cluster: Arc<crate::config::Cluster>,
    addr: SocketAddr,
    /// Hosts of the cluster, ejected ones included.
    hosts: usize,
    health: Arc<ClusterHealth>,
}

impl Pick {
    /// Whether what this endpoint takes nothing of may be offered to another, the endpoints
    /// `tried` before it passed over already.
    fn another_after(&self, tried: &[SocketAddr]) -> bool {
        tried.len() < OTHER_ENDPOINTS_OFFERED && self.hosts > tried.len() + 1
    }
}

/// Why one try failed.
enum Failure {
    Connect(String),
    /// The upstream turned the request away before acting on it.
    Refused(String),
    Reset(String),
    Timeout,
    Local((StatusCode, String)),
}

impl Failure {
    fn of_pool(e: PoolError) -> Failure {
        match e {
            PoolError::Connect(why) => Failure::Connect(why),
            PoolError::Unprocessed(why) => Failure::Refused(why),
            PoolError::Http(why) => Failure::Reset(why),
            // Not the upstream's doing: neither counted against it nor a gateway's error.
            PoolError::Request(why) => Failure::Local((StatusCode::BAD_REQUEST, why)),
        }
    }

    /// Nothing of the request reached the upstream's application.
    fn nothing_sent(&self) -> bool {
        matches!(self, Failure::Connect(_) | Failure::Refused(_))
    }

    fn into_status(self) -> (StatusCode, String) {
        match self {
            Failure::Connect(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error: {why}"))
            }
            Failure::Refused(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("upstream refused: {why}")),
            Failure::Reset(why) => (StatusCode::BAD_GATEWAY, format!("upstream reset: {why}")),
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream per-try timeout".into()),
            Failure::Local(s) => s,
        }
    }
}

/// An upstream response passed on: its host counts the request as in flight until the body
/// has been read (a body read whole already is over).
fn holding<B: Into<Body>>(resp: Response<B>, host: HostRequest) -> Response<Body> {
    resp.map(|body| match body.into() {
        Body::Streaming(body) => Body::streaming(body.map_frame(move |f| {
            let _in_flight = &host;
            f
        })),
        whole => whole,
    })
}

impl From<H2Body> for Body {
    fn from(body: H2Body) -> Self {
        Body::streaming(body)
    }
}

fn should_retry(r: &Retry, result: &Result<Response<Body>, Failure>) -> bool {
    r.on.iter().any(|on| match (on, result) {
        (RetryOn::ConnectFailure, Err(Failure::Connect(_))) => true,
        (
            RetryOn::Reset | RetryOn::FiveXx | RetryOn::GatewayError,
            Err(Failure::Reset(_) | Failure::Refused(_) | Failure::Timeout),
        ) => true,
        (RetryOn::RefusedStream, Err(Failure::Refused(_))) => true,
        (RetryOn::FiveXx, Err(Failure::Connect(_))) => true,
        (RetryOn::FiveXx, Ok(resp)) => resp.status().is_server_error(),
        (RetryOn::GatewayError, Ok(resp)) => matches!(resp.status().as_u16(), 502..=504),
        (RetryOn::Retriable4xx, Ok(resp)) => resp.status() == StatusCode::CONFLICT,
        (RetryOn::Grpc(code), Ok(resp)) => {
            resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()) == Some(code.to_string().as_str())
        }
        _ => false,
    })
}

/// A request's `head` as HTTP/2 sends it: an absolute URI (`:scheme` and `:authority`) whose authority is
/// the one the request named — its target's, else its `Host`, which HTTP/2 does not carry
/// beside it (RFC 9113 §8.3.1) — else the address it goes to.
fn for_http2(head: &mut http::request::Parts, addr: SocketAddr) -> Result<(), http::Error> {
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    let host = head.headers.remove(http::header::HOST);
    if parts.authority.is_none() {
        let named = host.and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
        parts.authority = Some(named.map_or_else(|| authority_of(addr), Ok)?);
    }
    parts.scheme = Some(http::uri::Scheme::HTTP);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    head.uri = Uri::from_parts(parts)?;
    Ok(())
}

/// A request's `head` with a `Host`, as HTTP/1.1 needs one: the authority its target names (HTTP/2's
/// `:authority`, or an absolute-form target, which a `Host` that came with it does not
/// override: RFC 9112 §3.2.2, RFC 9113 §8.3.1), else the `Host` it came with, else the address
/// it goes to. (The client writes the target in origin form, the path and query alone.)
fn with_host(head: &mut http::request::Parts, addr: SocketAddr) {
    let authority = match head.uri.authority() {
        Some(a) => a.clone(),
        None if head.headers.contains_key(http::header::HOST) => return,
        None => match authority_of(addr) {
            Ok(a) => a,
            Err(_) => return,
        },
    };
    // Without the userinfo, which a Host never carries.
    let host = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, host)| host);
    if let Ok(host) = HeaderValue::from_str(host) {
        head.headers.insert(http::header::HOST, host);
    }
}

/// `addr` as a URI authority. An IPv4 address is written out by hand: it is done for every HTTP/2
/// request, and `Display`'s formatting machinery costs more than the rest of the URI.
fn authority_of(addr: SocketAddr) -> Result<http::uri::Authority, http::Error> {
    let SocketAddr::V4(v4) = addr else { return Ok(addr.to_string().parse()?) };
    let mut out = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        decimal(&mut out, u64::from(octet));
    }
    out.push(b':');
    decimal(&mut out, u64::from(v4.port()));
    Ok(http::uri::Authority::from_maybe_shared(Bytes::from(out))?)
}

/// Headers of one connection, never passed on (RFC 9110 §7.6.1), `te` apart.
const HOP_BY_HOP: [HeaderName; 5] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Removes the fields of one connection from a message passed on: `HOP_BY_HOP` and any that
/// `Connection` names. (The agent's HTTP/1.1 server and client have removed them already;
/// hyper's leave them in.)
pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Looked for before any is removed: most requests have none, and a look through a few
    // fields costs less than a hashed removal of each name.
    if headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        let named: Vec<HeaderName> =
            headers.get_all(http::header::CONNECTION).iter().flat_map(connection_options).collect();
        for h in named.iter().chain(&HOP_BY_HOP) {
            headers.remove(h);
        }
    }
    // `te: trailers` is how a gRPC client says it takes trailers; it is passed on.
    if headers.get(http::header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(http::header::TE);
    }
}

impl ConfigSink for Proxy {
    fn held(&self, type_url: &str) -> HashMap<String, String> {
        self.state
            .config()
            .versions
            .get(type_url)
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default()
    }

    fn apply(&self, type_url: &str, updated: &[Resource], removed: &[String]) -> Result<(), String> {
        let next = self.state.next(type_url, updated, removed)?;
        if type_url == PbListener::type_url() {
            self.bind(&next.listeners)?;
        }
        self.state.store(next);
        // Which clusters are checked follows the clusters, and the listeners and routes that
        // send traffic to them.
        if [
            envoy_types::pb::envoy::config::cluster::v3::Cluster::type_url(),
            PbListener::type_url(),
            RouteConfiguration::type_url(),
        ]
        .iter()
        .any(|t| t == type_url)
        {
            self.reconcile_checkers();
        }
        if type_url == Secret::type_url() {
            self.refresh_tls().map_err(|e| format!("{e:#}"))?;
        }
        if let Err(e) = crate::persist::save(&self.cert_dir, &self.state.config()) {
            tracing::warn!(error = %format!("{e:#}"), "cannot keep the accepted configuration on disk");
        }
        Ok(())
    }
}

/// Opens mTLS connections to mesh endpoints for the pooled HTTP client.
#[derive(Clone)]
struct MeshConnector {
    tls: tokio_rustls::TlsConnector,
}

impl tower::Service<Uri> for MeshConnector {
    type Response = MeshConn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = std::io::Result<MeshConn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "endpoint is not ip:port");
            let host = uri.host().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().map_err(|_| bad())?;
            let addr = SocketAddr::new(ip, uri.port_u16().ok_or_else(bad)?);
            Ok(MeshConn(TokioIo::new(connect_mtls(tls, addr).await?)))
        })
    }
}

/// An mTLS connection to a mesh endpoint, as hyper's client wants it.
struct MeshConn(TokioIo<tokio_rustls::client::TlsStream<Coalesced>>);

impl Connection for MeshConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2") { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for MeshConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A TCP connection to `addr`, opened within `CONNECT_TIMEOUT`, without Nagle's delay.
async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let timed_out =
        || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"));
    let tcp =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| timed_out())??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A plaintext connection to `addr` outside the mesh, as the pools take it.
async fn plain_upstream(addr: SocketAddr) -> Result<Box<dyn Upstream>, PoolError> {
    let tcp = connect_tcp(addr).await.map_err(|e| PoolError::Connect(e.to_string()))?;
    Ok(Box::new(tcp))
}

/// An mTLS connection to a mesh endpoint.
type MeshStream = tokio_rustls::client::TlsStream<Coalesced>;

/// Whether the endpoint of `io` agreed to HTTP/2 in the TLS handshake.
fn speaks_h2(io: &MeshStream) -> bool {
    io.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// An mTLS connection to the mesh endpoint `addr`, whose identity `tls` verifies.
async fn connect_mtls(tls: tokio_rustls::TlsConnector, addr: SocketAddr) -> std::io::Result<MeshStream> {
    let tcp = connect_tcp(addr).await?;
    tls.connect(ServerName::from(addr.ip()), coalesced(tcp)).await
}

/// A socket under TLS whose records are written out on flush, together.
type Coalesced = tokio::io::BufWriter<TcpStream>;

/// `tcp` for TLS to write through. rustls sends each write it is given as a record at once,
/// and HTTP/2 writes a response frame by frame: one system call, and one wake-up of the peer,
/// per frame. Buffered, the records of what HTTP/1.1 or HTTP/2 flushes leave in one write; a
/// write larger than the buffer (bulk TCP) still goes straight to the socket.
fn coalesced(tcp: TcpStream) -> Coalesced {
    tokio::io::BufWriter::with_capacity(16 * 1024, tcp)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `http_server()` answering 200 on a loopback port.
    async fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(local_reply(false, StatusCode::OK, 0, "ok"))
                    });
                    let _ = http_server().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        addr
    }

    async fn answer(addr: SocketAddr, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_request_naming_no_authority_is_sent_to_the_endpoint_with_its_path_and_query() {
        let to = |uri: &str, addr: &str| {
            let mut head = head_for(uri, None);
            for_http2(&mut head, addr.parse().unwrap()).unwrap();
            head.uri
        };
        assert_eq!(to("/a/b?c=1", "10.0.255.9:8080").to_string(), "http://10.0.255.9:8080/a/b?c=1");
        assert_eq!(to("/", "[::1]:443").to_string(), "http://[::1]:443/");
        assert_eq!(to("/", "0.0.0.0:65535").authority().unwrap().port_u16(), Some(65535));
    }

    /// The head of a request for `uri`, with `host` as its `Host` if given.
    fn head_for(uri: &str, host: Option<&str>) -> http::request::Parts {
        let (mut head, ()) = Request::new(()).into_parts();
        head.uri = uri.parse().unwrap();
        if let Some(h) = host {
            head.headers.insert(http::header::HOST, HeaderValue::from_str(h).unwrap());
        }
        head
    }

    #[test]
    fn http_2_upstream_gets_the_authority_the_request_named() {
        let target = |uri: &str, host: Option<&str>| {
            let mut head = head_for(uri, host);
            for_http2(&mut head, "10.0.0.7:9090".parse().unwrap()).unwrap();
            assert!(!head.headers.contains_key(http::header::HOST), "the authority is :authority alone");
            head.uri.to_string()
        };
        assert_eq!(target("http://ratings.shop:9090/r.R/Get", None), "http://ratings.shop:9090/r.R/Get");
        assert_eq!(target("http://ratings.shop:9090/x", Some("other")), "http://ratings.shop:9090/x");
        assert_eq!(target("/r.R/Get", Some("ratings.shop:9090")), "http://ratings.shop:9090/r.R/Get");
        assert_eq!(target("/r.R/Get", None), "http://10.0.0.7:9090/r.R/Get");
        assert_eq!(target("/x", Some("not a host")), "http://10.0.0.7:9090/x");
    }

    #[test]
    fn http_1_1_upstream_gets_the_origin_form_and_a_host() {
        let head = |uri: &str, host: Option<&str>| {
            let mut head = head_for(uri, host);
            with_host(&mut head, "10.0.0.7:9080".parse().unwrap());
            let mut wire = Vec::new();
            crate::http1_codec::encode_request(
                &mut wire,
                &head,
                crate::http1_codec::Framing::Length(0),
                None,
            );
            String::from_utf8(wire).unwrap()
        };
        // From HTTP/2: the `:authority` becomes the `Host`.
        assert_eq!(
            head("http://reviews.shop:9080/r?x=1", None),
            "GET /r?x=1 HTTP/1.1\r\nhost: reviews.shop:9080\r\n\r\n"
        );
        // From HTTP/1.1: its `Host` stays, unless the target names the authority itself.
        assert_eq!(head("/r", Some("reviews.shop")), "GET /r HTTP/1.1\r\nhost: reviews.shop\r\n\r\n");
        assert_eq!(
            head("http://user@reviews.shop:9080/r", Some("elsewhere")),
            "GET /r HTTP/1.1\r\nhost: reviews.shop:9080\r\n\r\n"
        );
        // Neither: the address it goes to.
        assert_eq!(head("/", None), "GET / HTTP/1.1\r\nhost: 10.0.0.7:9080\r\n\r\n");
    }

    #[test]
    fn the_fields_of_one_connection_and_those_connection_names_are_not_passed_on() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Trace"),
            ("connection", "x-other"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-kept", "3"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"], "`te: trailers` is how gRPC asks for trailers");
    }

    #[test]
    fn a_connection_s_http_version_is_told_by_alpn_or_by_its_first_bytes() {
        assert_eq!(Speaks::of_alpn(Some(b"h2")), Some(Speaks::Http2));
        assert_eq!(Speaks::of_alpn(Some(b"http/1.1")), Some(Speaks::Http1));
        assert_eq!(Speaks::of_alpn(Some(b"spdy/3")), None);
        assert_eq!(Speaks::of_alpn(None), None);
        assert_eq!(Speaks::of_first_bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Some(Speaks::Http2));
        for http1 in
            [&b"POS"[..], b"PUT", b"PATCH", b"GET", b"G", b"PO", b"PRIX / HTTP/1.1", b"PRI * HTTP/1.1"]
        {
            assert_eq!(Speaks::of_first_bytes(http1), Some(Speaks::Http1), "{http1:?}");
        }
        // The preface may still be on its way.
        for undecided in [&b""[..], b"P", b"PR", b"PRI", b"PRI * HTTP/2.0\r\n"] {
            assert_eq!(Speaks::of_first_bytes(undecided), None, "{undecided:?}");
        }
    }

    #[tokio::test]
    async fn a_first_segment_too_short_to_tell_is_waited_on_until_it_tells() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (pieces, speaks) in [
            (&[&b"PRI * HTTP/2.0\r\n"[..], b"\r\nSM\r\n\r\n"][..], Some(Speaks::Http2)),
            (&[&b"P"[..], b"OST / HTTP/1.1\r\n"], Some(Speaks::Http1)),
            (&[&b"PRIX / HTTP/1.1\r\n"[..]], Some(Speaks::Http1)),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let told = tokio::spawn(async move { first_bytes(&server, HEADER_TIMEOUT).await.unwrap() });
            for piece in pieces {
                tokio::io::AsyncWriteExt::write_all(&mut client, piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            assert_eq!(Speaks::of_first_bytes(&told.await.unwrap()), speaks, "{pieces:?}");
        }
    }

    #[tokio::test]
    async fn a_head_past_the_bound_is_answered_431() {
        let addr = serve().await;
        let small = answer(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(small.starts_with("HTTP/1.1 200"), "{small}");
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "x".repeat(100 * 1024));
        let refused = answer(addr, big.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    }

    #[test]
    fn an_agent_checks_the_clusters_its_bound_listeners_send_to_and_no_other() {
        use std::collections::BTreeMap;

        use crate::config::{PathMatch, Route, VirtualHost};

        let outbound = |service: &str, handler: Handler| {
            let name = format!("outbound:{service}.shop:9080");
            let side = Side::Outbound { service: Some(service.to_owned()) };
            let addr = "127.1.2.3:9080".parse().unwrap();
            (name.clone(), Arc::new(Listener { name, addr, side, handler }))
        };
        let http = |rds: &str| Handler::Http {
            access: vec![],
            rate_limit: None,
            routes: RouteSource::Rds(rds.to_owned()),
            forward_client_cert: false,
            fault: None,
        };
        let route = |backends: &[&str]| Route {
            name: "split".into(),
            path: PathMatch::Prefix("/".into()),
            headers: vec![],
            query: vec![],
            backends: backends.iter().map(|b| (b.to_string(), 50)).collect(),
            timeout: None,
            retry: None,
            set_headers: vec![],
            remove_headers: vec![],
            fault: None,
        };
        let reviews = RouteTable {
            hosts: vec![VirtualHost {
                domains: vec!["*".into()],
                routes: vec![
                    route(&["reviews.shop:9080~version=v2"]),
                    route(&["reviews.shop:9080~version=v1", "reviews.shop:9080~version=v2"]),
                ],
            }],
        };
        let cfg = Config {
            listeners: BTreeMap::from([
                outbound("reviews", http("outbound:reviews.shop:9080")),
                // Its routes have not come yet: nothing is sent through it.
                outbound("ratings", http("outbound:ratings.shop:9080")),
                outbound("db", Handler::Tcp { access: vec![], backends: vec![("db.shop:5432".into(), 1)] }),
            ]),
            routes: BTreeMap::from([("outbound:reviews.shop:9080".to_owned(), Arc::new(reviews))]),
            ..Config::default()
        };
        let explicit = |outbound: Outbound, http_proxy| Binding::Explicit { outbound, http_proxy };
        let only = |services: &[&str]| Outbound::Only(services.iter().map(|s| s.to_string()).collect());
        let sent_to = |binding| clusters_sent_to(&binding, &cfg).map(|s| s.into_iter().collect::<Vec<_>>());
        let everything = ["db.shop:5432", "reviews.shop:9080~version=v1", "reviews.shop:9080~version=v2"];
        assert_eq!(sent_to(explicit(Outbound::All, false)), Some(everything.to_vec()));
        assert_eq!(sent_to(explicit(only(&["db", "ratings"]), false)), Some(vec!["db.shop:5432"]));
        assert_eq!(
            sent_to(explicit(only(&[]), false)),
            Some(vec![]),
            "a server that calls nothing checks nothing"
        );
        assert_eq!(sent_to(explicit(only(&[]), true)), None, "the HTTP proxy takes any service");
        assert_eq!(sent_to(Binding::Transparent), None, "so does transparent mode");
    }
}
