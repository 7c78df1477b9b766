//! Transparent mode: the connections that `trellis-agent init`'s rules ([`crate::iptables`])
//! redirect, taken on the two capture ports, IPv4 and IPv6. Each connection's original
//! destination (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`) says what it was for:
//!
//! - inbound, the service port: the connection is served by that port's inbound listener,
//!   exactly as in explicit mode (mTLS, access control, the application on
//!   `127.0.0.1:<port>`, where in a pod it listens); a port that is no service port is closed;
//! - outbound, the mesh service port whose endpoint or loopback service address it is,
//!   served by that port's outbound listener (routes, weights, retries, mTLS to the
//!   destination's SPIFFE ID); for HTTP to another address (a cluster IP, a name the
//!   application resolved elsewhere) the `Host` names the service, request by request;
//! - anything else passes through to the original destination as it was sent (Istio's
//!   PassthroughCluster): plain TCP, or plain HTTP for a request whose `Host` names no service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use trellis_ca::SpiffeId;
use trellis_xds::{parse_cluster_name, sidecar_inbound_name, sidecar_outbound_name};

use crate::cli::Capture;
use crate::config::{Handler, Side, Target, authority};
use crate::proxy::{Body, CONNECT_TIMEOUT, Proxy, Speaks, local_reply};
use crate::state::Config;

/// How long the application may take to send its first bytes before a connection to a port
/// that some mesh service serves HTTP on is taken for something else (a protocol in which
/// the server speaks first sends nothing).
const SNIFF_TIMEOUT: Duration = Duration::from_millis(200);

/// The capture listeners of each family: inbound on every address (a redirected connection
/// keeps the address it was sent to), outbound on the loopback address (where OUTPUT's
/// REDIRECT delivers: 127.0.0.1, ::1).
pub struct Listeners {
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
}

/// Binds the capture listeners: IPv4's, and IPv6's unless this host has no IPv6 (then it
/// has no IPv6 traffic to capture either).
pub fn bind(capture: &Capture) -> anyhow::Result<Listeners> {
    let mut l = Listeners { inbound: Vec::new(), outbound: Vec::new() };
    for (any, lo) in [
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ] {
        let inbound = SocketAddr::new(any, capture.inbound_capture_port);
        let outbound = SocketAddr::new(lo, capture.outbound_capture_port);
        let pair = listen(inbound)
            .map_err(|e| (e, "--inbound-capture-port", inbound))
            .and_then(|i| Ok((i, listen(outbound).map_err(|e| (e, "--outbound-capture-port", outbound))?)));
        match pair {
            Ok((i, o)) => {
                l.inbound.push(i);
                l.outbound.push(o);
            }
            Err((e, _, addr)) if addr.is_ipv6() && no_ipv6(&e) => {
                tracing::warn!(%addr, error = %e, "no IPv6 on this host: capturing IPv4 only");
            }
            Err((e, flag, addr)) => {
                return Err(anyhow!("{flag} {}: cannot listen on {addr}: {e}", addr.port()));
            }
        }
    }
    Ok(l)
}

/// A listener on `addr`; on an IPv6 address, for IPv6 only (IPv4 has its own).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if addr.is_ipv6() {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Whether binding failed because the host has no IPv6: none in the kernel, or no `::1`
/// (IPv6 disabled in this network namespace).
fn no_ipv6(e: &std::io::Error) -> bool {
    /// Linux's "address family not supported by protocol".
    const EAFNOSUPPORT: i32 = 97;
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Serves the capture listeners until the drain begins.
pub fn serve(proxy: Arc<Proxy>, listeners: Listeners, id: &SpiffeId) {
    let mesh: Arc<str> = mesh_of(id).unwrap_or_default().into();
    let addrs = |l: &[TcpListener]| {
        l.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>().join(" ")
    };
    tracing::info!(
        inbound = %addrs(&listeners.inbound),
        outbound = %addrs(&listeners.outbound),
        "transparent mode: taking redirected connections"
    );
    for inbound in listeners.inbound {
        tokio::spawn(proxy.clone().accept_until_drained(inbound, |proxy, tcp| async move {
            if let Err(e) = take_inbound(proxy, tcp).await {
                tracing::debug!(direction = "inbound", error = %format!("{e:#}"), "connection ended");
            }
        }));
    }
    for outbound in listeners.outbound {
        let mesh = mesh.clone();
        tokio::spawn(proxy.clone().accept_until_drained(outbound, move |proxy, tcp| {
            let mesh = mesh.clone();
            async move {
                if let Err(e) = take_outbound(proxy, tcp, mesh).await {
                    tracing::debug!(direction = "outbound", error = %format!("{e:#}"), "connection ended");
                }
            }
        }));
    }
}

/// Refuses to start unless the agent runs as the UID `init`'s rules spare: any other UID
/// would see its own connections captured again, in a loop.
pub fn check_uid(capture: &Capture) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = effective_uid(&status).ok_or_else(|| anyhow!("/proc/self/status names no UID"))?;
    if uid != capture.proxy_uid {
        return Err(anyhow!(
            "--transparent: the agent runs as UID {uid}, but the capture rules spare only UID {} \
             (--proxy-uid); run it as that user (e.g. runAsUser: {0}, or setpriv --reuid={0})",
            capture.proxy_uid
        ));
    }
    Ok(())
}

fn effective_uid(proc_status: &str) -> Option<u32> {
    let uids = proc_status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// The mesh of a workload identity `…/ns/<mesh>/sa/<service>`.
fn mesh_of(id: &SpiffeId) -> Option<&str> {
    id.path().strip_prefix("/ns/")?.split('/').next()
}

/// Where the connection was sent before the rules redirected it (asked of the table of the
/// connection's family); an error when it was not redirected (sent to the capture port
/// itself: serving it would loop).
fn original_dst(tcp: &TcpStream) -> anyhow::Result<SocketAddr> {
    let local = tcp.local_addr()?;
    let socket = socket2::SockRef::from(tcp);
    let dst = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    }
    .context("no original destination (not redirected by the capture rules)")?
    .as_socket()
    .ok_or_else(|| anyhow!("the original destination is not an IP address"))?;
    if dst == local {
        return Err(anyhow!("{dst}: sent to the capture port itself, not redirected"));
    }
    Ok(dst)
}

async fn take_inbound(proxy: Arc<Proxy>, tcp: TcpStream) -> anyhow::Result<()> {
    let dst = original_dst(&tcp)?;
    let name = sidecar_inbound_name(u32::from(dst.port()));
    if !proxy.config().listeners.contains_key(&name) {
        return Err(anyhow!("{dst}: port {} is no service port of this workload; closed", dst.port()));
    }
    proxy.connection(&name, tcp).await
}

async fn take_outbound(proxy: Arc<Proxy>, tcp: TcpStream, mesh: Arc<str>) -> anyhow::Result<()> {
    let dst = original_dst(&tcp)?;
    let cfg = proxy.config();
    if let Some(name) = mesh_listener(&cfg, dst) {
        tracing::debug!(%dst, listener = %name, "outbound to a mesh service");
        return proxy.connection(&name, tcp).await;
    }
    if serves_http_on(&cfg, dst.port())
        && let Some(speaks) = sniff_http(&tcp).await
    {
        return by_host(proxy, tcp, dst, mesh, speaks).await;
    }
    tracing::debug!(%dst, "passthrough");
    passthrough(tcp, dst).await
}

/// The outbound listener of the mesh service port that `dst` is an address of: the
/// service's loopback address (where explicit mode binds that listener), or one of its
/// endpoints.
pub fn mesh_listener(cfg: &Config, dst: SocketAddr) -> Option<String> {
    let by_address =
        cfg.listeners.values().find(|l| matches!(l.side, Side::Outbound { .. }) && l.addr == dst);
    if let Some(l) = by_address {
        return Some(l.name.clone());
    }
    cfg.clusters.values().find_map(|c| {
        let Target::Mesh { eds, .. } = &c.target else { return None };
        if !cfg.endpoints.get(eds)?.contains(&dst) {
            return None;
        }
        let (service, mesh, port) = parse_cluster_name(&c.name)?;
        let name = sidecar_outbound_name(service, mesh, port);
        cfg.listeners.contains_key(&name).then_some(name)
    })
}

/// Whether some mesh service serves HTTP on `port`: only then is a connection's `Host`
/// worth waiting for.
fn serves_http_on(cfg: &Config, port: u16) -> bool {
    cfg.listeners.values().any(|l| {
        matches!(l.side, Side::Outbound { .. })
            && matches!(l.handler, Handler::Http { .. })
            && l.addr.port() == port
    })
}

/// The service a request's `Host` (or `:authority`) names in `mesh`: `<svc>`,
/// `<svc>.<mesh>` or `<svc>.<namespace>.svc.cluster.local`, with or without a port.
pub fn service_of_host(authority: &str, mesh: &str) -> Option<String> {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let service = match labels.as_slice() {
        [svc] => *svc,
        [svc, m] if m.eq_ignore_ascii_case(mesh) => *svc,
        [svc, _namespace, "svc", "cluster", "local"] => *svc,
        _ => return None,
    };
    let label = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !s.starts_with('-')
    };
    label(service).then(|| service.to_owned())
}

/// Whether the first bytes are an HTTP/1 request line's method or the HTTP/2 preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
    first.starts_with(b"PRI * HTTP/2") || METHODS.iter().any(|m| first.starts_with(m))
}

/// The HTTP version a connection's first bytes begin, or `None` for no HTTP (or nothing sent
/// within `SNIFF_TIMEOUT`).
async fn sniff_http(tcp: &TcpStream) -> Option<Speaks> {
    let first = crate::proxy::first_bytes(tcp, SNIFF_TIMEOUT).await.ok()?;
    if looks_like_http(&first) { Speaks::of_first_bytes(&first) } else { None }
}

/// HTTP to an address that is no mesh endpoint: each request goes to the service its
/// `Host` names on the original port, or on to the original destination. HTTP/1.1 on the
/// agent's own server and client (a protocol switch, WebSocket's, goes through either way),
/// HTTP/2 on its own HTTP/2 server and client.
async fn by_host(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    dst: SocketAddr,
    mesh: Arc<str>,
    speaks: Speaks,
) -> anyhow::Result<()> {
    let answer = {
        let proxy = proxy.clone();
        move |req: Request<Body>| by_host_request(proxy.clone(), dst, mesh.clone(), req)
    };
    proxy.serve_plaintext(tcp, Some(speaks), answer).await
}

async fn by_host_request(
    proxy: Arc<Proxy>,
    dst: SocketAddr,
    mesh: Arc<str>,
    req: Request<Body>,
) -> Response<Body> {
    let name = authority(&req)
        .and_then(|a| service_of_host(a, &mesh))
        .map(|s| sidecar_outbound_name(&s, &mesh, u32::from(dst.port())));
    let listener = name.and_then(|n| proxy.config().listeners.get(&n).cloned());
    match listener {
        Some(l) if matches!(l.handler, Handler::Http { .. }) => {
            proxy.request(&l, None, &proxy.peer_metrics(&l, None), req).await
        }
        _ => passthrough_request(&proxy, dst, req).await,
    }
}

/// A request to an address outside the mesh, sent on as it came (its connection's own
/// fields apart).
async fn passthrough_request(proxy: &Proxy, dst: SocketAddr, req: Request<Body>) -> Response<Body> {
    let sent = match req.version() {
        http::Version::HTTP_2 => proxy.pass_on_http2(dst, req).await,
        _ => proxy.pass_on_http1(dst, req).await,
    };
    sent.unwrap_or_else(|why| {
        local_reply(false, StatusCode::BAD_GATEWAY, 14, &format!("passthrough to {dst}: {why}"))
    })
}

async fn passthrough(mut down: TcpStream, dst: SocketAddr) -> anyhow::Result<()> {
    let mut up = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .map_err(|_| anyhow!("connecting to {dst} timed out"))?
        .with_context(|| format!("connecting to {dst}"))?;
    up.set_nodelay(true)?;
    crate::pipe::pipe(&mut down, &mut up).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Cluster, Listener, RouteSource};

    fn listener(name: &str, addr: &str, http: bool) -> (String, Arc<Listener>) {
        let handler = if http {
            Handler::Http {
                access: vec![],
                rate_limit: None,
                routes: RouteSource::Rds(name.to_owned()),
                forward_client_cert: false,
                fault: None,
            }
        } else {
            Handler::Tcp { access: vec![], backends: vec![] }
        };
        let side = Side::Outbound { service: name.strip_prefix("outbound:").map(|n| n.to_owned()) };
        (
            name.to_owned(),
            Arc::new(Listener { name: name.to_owned(), addr: addr.parse().unwrap(), side, handler }),
        )
    }

    type Named<T> = (String, Arc<T>);

    fn cluster(name: &str, endpoints: &[&str]) -> (Named<Cluster>, Named<Vec<SocketAddr>>) {
        let peer = SpiffeId::parse("spiffe://shop.acme.trellis.internal/ns/shop/sa/api").unwrap();
        let c = Cluster {
            name: name.to_owned(),
            target: Target::Mesh { eds: name.to_owned(), peer: Arc::new(peer) },
            h2: false,
            limit: None,
            outlier: None,
            health_check: None,
            lb: crate::resilience::LbPolicy::RoundRobin,
        };
        let eps = endpoints.iter().map(|e| e.parse().unwrap()).collect();
        ((name.to_owned(), Arc::new(c)), (name.to_owned(), Arc::new(eps)))
    }

    fn config() -> Config {
        let (api, api_eps) = cluster("api.shop:9080", &["10.0.0.3:9080", "10.0.0.4:9080"]);
        let (v2, v2_eps) = cluster("api.shop:9080~version=v2", &["10.0.0.4:9080"]);
        let (db, db_eps) = cluster("db.shop:5432", &["10.0.0.5:5432"]);
        let (ratings, ratings_eps) = cluster("ratings.shop:9080", &["[fd00::4]:9080"]);
        Config {
            listeners: BTreeMap::from([
                listener("outbound:api.shop:9080", "127.1.2.3:9080", true),
                listener("outbound:db.shop:5432", "127.4.5.6:5432", false),
                listener("outbound:ratings.shop:9080", "127.7.8.9:9080", true),
                (
                    "inbound:8080".into(),
                    Arc::new(Listener {
                        name: "inbound:8080".into(),
                        addr: "10.0.0.2:8080".parse().unwrap(),
                        side: Side::Inbound { plaintext: false },
                        handler: Handler::Tcp { access: vec![], backends: vec![] },
                    }),
                ),
            ]),
            clusters: BTreeMap::from([api, v2, db, ratings]),
            endpoints: BTreeMap::from([api_eps, v2_eps, db_eps, ratings_eps]),
            ..Config::default()
        }
    }

    #[test]
    fn a_destination_is_the_service_port_it_is_an_endpoint_or_loopback_address_of() {
        let cfg = config();
        let at = |dst: &str| mesh_listener(&cfg, dst.parse().unwrap());
        assert_eq!(at("10.0.0.3:9080").as_deref(), Some("outbound:api.shop:9080"));
        assert_eq!(at("10.0.0.4:9080").as_deref(), Some("outbound:api.shop:9080"), "a subset's endpoint too");
        assert_eq!(at("127.1.2.3:9080").as_deref(), Some("outbound:api.shop:9080"));
        assert_eq!(at("10.0.0.5:5432").as_deref(), Some("outbound:db.shop:5432"));
        assert_eq!(at("127.4.5.6:5432").as_deref(), Some("outbound:db.shop:5432"));
        assert_eq!(at("[fd00::4]:9080").as_deref(), Some("outbound:ratings.shop:9080"), "an IPv6 endpoint");
        for elsewhere in [
            "10.0.0.3:9081",
            "10.0.0.9:9080",
            "93.184.216.34:443",
            "10.0.0.2:8080",
            "[fd00::4]:9081",
            "[fd00::5]:9080",
        ] {
            assert_eq!(at(elsewhere), None, "{elsewhere} passes through");
        }
        assert!(serves_http_on(&cfg, 9080));
        assert!(!serves_http_on(&cfg, 5432), "TCP services are matched by address only");
        assert!(!serves_http_on(&cfg, 8080), "inbound listeners do not count");
    }

    #[test]
    fn a_host_names_a_service_in_the_usual_forms() {
        for (host, expected) in [
            ("api", Some("api")),
            ("api:9080", Some("api")),
            ("API.shop", Some("api")),
            ("api.shop:9080", Some("api")),
            ("api.default.svc.cluster.local", Some("api")),
            ("api.default.svc.cluster.local.:9080", Some("api")),
            ("api.other", None),
            ("10.0.0.3:9080", None),
            ("[::1]:9080", None),
            ("example.com", None),
            ("", None),
            ("-x", None),
        ] {
            assert_eq!(service_of_host(host, "shop").as_deref(), expected, "{host:?}");
        }
    }

    #[test]
    fn http_is_recognised_by_its_first_bytes() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST /x HTTP/1.1"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n\r\nSM"));
        for other in [&b"\x16\x03\x01\x02\x00"[..], b"GETX", b"SSH-2.0-OpenSSH", b""] {
            assert!(!looks_like_http(other), "{other:?}");
        }
    }

    #[test]
    fn the_mesh_and_uid_are_read_from_where_they_live() {
        let id = SpiffeId::parse("spiffe://shop.acme.trellis.internal/ns/shop/sa/web").unwrap();
        assert_eq!(mesh_of(&id), Some("shop"));
        let status = "Name:\ttrellis-agent\nUid:\t0\t1337\t1337\t1337\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(1337));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }
}
