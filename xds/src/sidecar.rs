//! Envoy sidecar resources: what one workload's Envoy needs to serve its service and to call
//! every service of the mesh (XDS.md §6).
//!
//! **Inbound.** One Listener `inbound:<port>` on `0.0.0.0:<port>` per inbound port. Its TLS
//! filter chain terminates mTLS with the SDS secrets ([`crate::secrets`]). HTTP-family ports
//! (`http`, `http2`, `grpc`) run an HCM with the RBAC filters of the service's access
//! policies, the local rate limit, and the router to the STATIC cluster `inbound:<port>`
//! (`127.0.0.1:<appPort>`, the application: the service port's `appPort`, so that the
//! listener and the application never share a port). TCP ports, and ports the service does not declare,
//! run network RBAC and a TCP proxy to the same cluster. In a PERMISSIVE mesh the listener
//! also has a plaintext filter chain (chosen by the TLS inspector, `raw_buffer`) with the same
//! filters. A plaintext caller has no principal, so no rule matches it (every rule names its
//! sources): under default deny it is refused, under default allow it is let in. PERMISSIVE
//! therefore helps migrations only under default allow.
//!
//! **Outbound.** One Listener `outbound:<service>.<mesh>:<port>` per port of every service of
//! the mesh, the caller's own included. Services share port numbers (every HTTP service on
//! 8080), so each service gets its own loopback address ([`outbound_addresses`]) and
//! the listener binds `<that address>:<port>`; the agent resolves `<service>.<mesh>` to it
//! (hosts file or DNS). HTTP-family ports: HCM with RDS under the listener's name, the
//! same route translation as gRPC clients (domains `*`: the listener carries one service).
//! TCP ports: a TCP proxy, weighted per the service's TCP route (first by name).
//!
//! **Access logs.** Every HCM and TCP proxy logs over gRPC to the control plane
//! ([`crate::access_log`]), named by side (`trellis-inbound`, `trellis-outbound`).
//!
//! **Clusters.** The gRPC clusters per service port and subset, with SDS instead of certificate
//! providers ([`crate::clusters::Client::Envoy`]), and their endpoint assignments.
//!
//! Ports: the inbound listener takes `0.0.0.0:<port>`, the application `127.0.0.1:<appPort>`
//! (Kuma's `port` and `servicePort`), and the served Envoy bootstrap refuses a port without
//! `appPort`. A node whose own metadata names a port without one gets `127.0.0.1:<port>`,
//! which works only where traffic is redirected to the listener instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{RuntimeFractionalPercent, TrafficDirection};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier as TcpClusterSpecifier, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::v3::TokenBucket;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use trellis_model::config::{Protocol, Tags};

use crate::access::{sidecar_http_filters, sidecar_network_filters};
use crate::access_log::{Side, http_access_log, tcp_access_log};
use crate::clusters::{self, Client, backend_port, http2_options};
use crate::names::{cluster_name, sidecar_inbound_name, sidecar_outbound_name};
use crate::routes::{fault_filter, no_timeout, route_config, router_filter};
use crate::secrets::downstream_tls;
use crate::util::{ads, duration, percent, socket_address, u32v};
use crate::view::{MeshView, Resources};
use trellis_model::config::MtlsMode;

/// Name of the local rate limit filter instance.
pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// Everything the Envoy sidecar of one instance of `service` needs, for the ports it
/// serves (`inbound_ports`). SDS secrets are not included: add [`crate::sds_secrets`].
pub fn envoy_sidecar(view: &MeshView, service: &str, inbound_ports: &[u32]) -> Resources {
    let mut out = Resources::default();
    let declared = view.services.get(service).map(|s| s.ports.as_slice()).unwrap_or_default();
    for port in inbound_ports.iter().copied().collect::<BTreeSet<u32>>() {
        let decl = declared.iter().find(|p| p.port == port);
        let protocol = decl.map_or(Protocol::Tcp, |p| p.protocol);
        let app_port = decl.map_or(port, |p| p.application_port());
        let name = sidecar_inbound_name(port);
        out.listeners.insert(name.clone(), inbound_listener(view, service, port, protocol));
        out.clusters.insert(name.clone(), local_cluster(port, app_port, protocol));
    }
    let addresses = outbound_addresses(view);
    for (upstream, spec) in &view.services {
        let ip = addresses[upstream].to_string();
        for p in &spec.ports {
            let name = sidecar_outbound_name(upstream, &view.mesh, p.port);
            let stat_prefix = format!("outbound_{upstream}_{}", p.port);
            let filter = if p.protocol.is_http() {
                out.routes
                    .insert(name.clone(), route_config(view, upstream, p.port, &name, vec!["*".into()]));
                let hcm = HttpConnectionManager {
                    stat_prefix,
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ads()),
                        route_config_name: name.clone(),
                    })),
                    http_filters: vec![fault_filter(), router_filter()],
                    access_log: vec![http_access_log(Side::Outbound)],
                    ..Default::default()
                };
                network_filter(HCM, pack_any(hcm))
            } else {
                network_filter(TCP_PROXY, pack_any(outbound_tcp_proxy(view, upstream, p.port, stat_prefix)))
            };
            let listener = Listener {
                name: name.clone(),
                address: Some(socket_address(&ip, p.port)),
                filter_chains: vec![FilterChain { filters: vec![filter], ..Default::default() }],
                traffic_direction: TrafficDirection::Outbound as i32,
                ..Default::default()
            };
            out.listeners.insert(name, listener);
        }
    }
    for cluster in clusters::clusters(view, Client::Envoy) {
        let cla = clusters::load_assignment(view, &cluster.name);
        out.endpoints.insert(cluster.name.clone(), cla);
        out.clusters.insert(cluster.name.clone(), cluster);
    }
    out
}

/// The loopback address of each service's outbound listeners, by service name: in
/// `127.1.0.0`–`127.255.255.254` (never `127.0.x.x`, where the application and Envoy's admin
/// live), picked by a hash of `<service>.<mesh>`, so a service keeps its address while
/// others come and go. On a collision the service later in name order takes the next free
/// address. Linux routes all of `127.0.0.0/8` to the loopback interface, so no setup is needed.
pub fn outbound_addresses(view: &MeshView) -> BTreeMap<String, Ipv4Addr> {
    const FIRST: u32 = 0x7f01_0000;
    const SLOTS: u32 = 0x7fff_ffff - FIRST;
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for service in view.services.keys() {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, format!("{service}.{}", view.mesh).as_bytes());
        let d = digest.as_ref();
        let mut slot = u32::from_be_bytes([0, d[0], d[1], d[2]]) % SLOTS;
        while !taken.insert(slot) {
            slot = (slot + 1) % SLOTS;
        }
        out.insert(service.clone(), Ipv4Addr::from(FIRST + slot));
    }
    out
}

fn network_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter { name: name.into(), config_type: Some(FilterConfig::TypedConfig(config)) }
}

/// TCP to a service port: split by weight per its TCP route (the first by name), else to
/// all of its instances on that port.
fn outbound_tcp_proxy(view: &MeshView, upstream: &str, port: u32, stat_prefix: String) -> TcpProxy {
    let route = view.tcp_routes.values().find(|r| r.target_ref.service == upstream);
    let live: Vec<_> =
        route.map(|r| r.backend_refs.iter().filter(|b| b.weight > 0).collect()).unwrap_or_default();
    let cluster = |service: &str, named: Option<u32>, tags: &Tags| {
        let to = backend_port(view, service, named, port).unwrap_or(port);
        cluster_name(service, &view.mesh, to, tags)
    };
    let specifier = match live.as_slice() {
        [] => TcpClusterSpecifier::Cluster(cluster(upstream, None, &Tags::new())),
        [one] => TcpClusterSpecifier::Cluster(cluster(&one.service, one.port, &one.tags)),
        many => TcpClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|b| ClusterWeight {
                    name: cluster(&b.service, b.port, &b.tags),
                    weight: b.weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    TcpProxy {
        stat_prefix,
        cluster_specifier: Some(specifier),
        access_log: vec![tcp_access_log(Side::Outbound)],
        ..Default::default()
    }
}

/// The application behind an inbound port, on `127.0.0.1:<app_port>`, spoken to in the
/// port's protocol.
fn local_cluster(port: u32, app_port: u32, protocol: Protocol) -> Cluster {
    let name = sidecar_inbound_name(port);
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(PbDuration { seconds: 5, nanos: 0 }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address("127.0.0.1", app_port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: match protocol {
            Protocol::Http2 | Protocol::Grpc => http2_options(),
            Protocol::Http | Protocol::Tcp => HashMap::new(),
        },
        ..Default::default()
    }
}

fn inbound_listener(view: &MeshView, service: &str, port: u32, protocol: Protocol) -> Listener {
    let name = sidecar_inbound_name(port);
    let stat_prefix = format!("inbound_{port}");
    let filters = if protocol.is_http() {
        vec![network_filter(HCM, pack_any(inbound_hcm(view, service, port, &stat_prefix)))]
    } else {
        let mut f = sidecar_network_filters(view, service, &stat_prefix);
        let proxy = TcpProxy {
            stat_prefix: stat_prefix.clone(),
            cluster_specifier: Some(TcpClusterSpecifier::Cluster(name.clone())),
            access_log: vec![tcp_access_log(Side::Inbound)],
            ..Default::default()
        };
        f.push(network_filter(TCP_PROXY, pack_any(proxy)));
        f
    };
    let permissive = view.mtls == MtlsMode::Permissive;
    let chain_match = |transport: &str| {
        permissive.then(|| FilterChainMatch { transport_protocol: transport.into(), ..Default::default() })
    };
    let mut filter_chains = vec![FilterChain {
        name: "mtls".into(),
        filter_chain_match: chain_match("tls"),
        filters: filters.clone(),
        transport_socket: Some(downstream_tls()),
        ..Default::default()
    }];
    let mut listener_filters = Vec::new();
    if permissive {
        filter_chains.push(FilterChain {
            name: "plaintext".into(),
            filter_chain_match: chain_match("raw_buffer"),
            filters,
            ..Default::default()
        });
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(pack_any(TlsInspector::default()))),
            ..Default::default()
        });
    }
    Listener {
        name,
        address: Some(socket_address("0.0.0.0", port)),
        filter_chains,
        listener_filters,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

fn inbound_hcm(view: &MeshView, service: &str, port: u32, stat_prefix: &str) -> HttpConnectionManager {
    let cluster = sidecar_inbound_name(port);
    let mut http_filters = sidecar_http_filters(view, service);
    if let Some(f) = rate_limit_filter(view, service) {
        http_filters.push(f);
    }
    http_filters.push(router_filter());
    HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        access_log: vec![http_access_log(Side::Inbound)],
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: cluster.clone(),
            virtual_hosts: vec![VirtualHost {
                name: "inbound".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: "local".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    }),
                    // The caller's sidecar enforces the route's timeouts; none here.
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                        timeout: Some(no_timeout()),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters,
        // The application learns its caller's SPIFFE ID from x-forwarded-client-cert, and
        // a caller cannot forge it.
        forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The service's local rate limit (the first by name): each instance refuses requests beyond
/// its token bucket with 429.
fn rate_limit_filter(view: &MeshView, service: &str) -> Option<HttpFilter> {
    let rl = view.rate_limits.values().find(|r| r.target_ref.service == service)?;
    let everyone =
        |key: &str| RuntimeFractionalPercent { default_value: Some(percent(100)), runtime_key: key.into() };
    let config = LocalRateLimit {
        stat_prefix: "local_rate_limit".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: rl.local.burst.unwrap_or(rl.local.requests),
            tokens_per_fill: Some(u32v(rl.local.requests)),
            fill_interval: Some(duration(rl.local.interval)),
        }),
        // Without these two the filter neither counts nor refuses anything.
        filter_enabled: Some(everyone("trellis.rate_limit.enabled")),
        filter_enforced: Some(everyone("trellis.rate_limit.enforced")),
        ..Default::default()
    };
    Some(HttpFilter {
        name: RATE_LIMIT_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    })
}
