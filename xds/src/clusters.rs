//! Clusters per service port and subset (EDS, mTLS pinned to the service's SPIFFE ID, circuit
//! breakers, outlier detection, health checks) and their endpoint assignments.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthCheck, HealthStatus, Locality, RoutingPriority, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::util::pack_any;
use prost::Name;
use trellis_model::config::{Protocol, Tags};

use crate::contract::CERT_PROVIDER;
use crate::names::{cluster_name, spiffe_id};
use crate::secrets;
use crate::util::{ads, duration, exact, u32v};
use crate::view::MeshView;

/// What a cluster holds: the instances of one service that serve `port` and carry `tags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subset {
    pub service: String,
    pub port: u32,
    pub tags: Tags,
}

/// The port of `service` that a backend reference reaches from a listener on `from_port`:
/// the port it names, else the same port when the service has it, else its first port.
/// `None` when the service does not exist.
pub(crate) fn backend_port(
    view: &MeshView,
    service: &str,
    named: Option<u32>,
    from_port: u32,
) -> Option<u32> {
    let spec = view.services.get(service)?;
    named
        .or_else(|| spec.ports.iter().find(|p| p.port == from_port).map(|p| p.port))
        .or_else(|| spec.ports.first().map(|p| p.port))
}

/// Every cluster of the mesh: one per service port, plus one per port and subset of tags
/// that a route, TCP route or mirror names. Name → subset.
pub(crate) fn subsets(view: &MeshView) -> BTreeMap<String, Subset> {
    let mut out: BTreeMap<String, Subset> = BTreeMap::new();
    let mut add = |service: &str, named: Option<u32>, from_port: u32, tags: &Tags| {
        if let Some(port) = backend_port(view, service, named, from_port) {
            let subset = Subset { service: service.to_owned(), port, tags: tags.clone() };
            out.insert(cluster_name(service, &view.mesh, port, tags), subset);
        }
    };
    for (s, spec) in &view.services {
        for p in &spec.ports {
            add(s, Some(p.port), p.port, &Tags::new());
        }
    }
    let target_ports = |service: &str, http: bool| -> Vec<u32> {
        let ports = view.services.get(service).map(|s| s.ports.as_slice()).unwrap_or_default();
        ports.iter().filter(|p| p.protocol.is_http() == http).map(|p| p.port).collect()
    };
    for r in view.http_routes.values() {
        for from in target_ports(&r.target_ref.service, true) {
            for rule in &r.rules {
                for b in &rule.backend_refs {
                    add(&b.service, b.port, from, &b.tags);
                }
                if let Some(m) = &rule.mirror {
                    add(&m.service, None, from, &m.tags);
                }
            }
        }
    }
    for r in view.tcp_routes.values() {
        for from in target_ports(&r.target_ref.service, false) {
            for b in &r.backend_refs {
                add(&b.service, b.port, from, &b.tags);
            }
        }
    }
    out
}

fn provider() -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance { instance_name: CERT_PROVIDER.into(), certificate_name: String::new() }
}

/// mTLS to a service: our workload certificate, the mesh's roots, and the peer pinned to the
/// service's SPIFFE ID (both the field gRPC reads and the one Envoy prefers, SAN type 3 = URI).
fn upstream_tls(view: &MeshView, service: &str) -> TransportSocket {
    let id = spiffe_id(&view.trust_domain, &view.mesh, service);
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(provider()),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    ca_certificate_provider_instance: Some(provider()),
                    #[allow(deprecated)]
                    match_subject_alt_names: vec![exact(&id)],
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: 3,
                        matcher: Some(exact(&id)),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(pack_any(ctx))),
    }
}

/// Which client the clusters are for: they differ only in where TLS material comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// Proxyless gRPC: certificate-provider instances from the bootstrap.
    Grpc,
    /// Envoy sidecar: SDS secrets over ADS, and HTTP/2 upstreams where the service speaks it.
    Envoy,
}

pub(crate) fn clusters(view: &MeshView, client: Client) -> Vec<Cluster> {
    subsets(view).into_iter().map(|(name, subset)| cluster(view, name, &subset, client)).collect()
}

/// Envoy's upstream protocol options for HTTP/2, which Envoy would not otherwise speak
/// upstream. The map holds one entry, so its encoding is canonical.
pub(crate) fn http2_options() -> HashMap<String, Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
        })),
        ..Default::default()
    };
    HashMap::from([(HttpProtocolOptions::full_name(), pack_any(options))])
}

/// Sidecars send each request to the less busy of two instances drawn at random (least
/// request, Envoy's default two choices), which keeps slow instances from piling up
/// requests; proxyless gRPC keeps round robin, the one policy every gRPC xDS client has.
fn lb_policy(client: Client) -> LbPolicy {
    match client {
        Client::Envoy => LbPolicy::LeastRequest,
        Client::Grpc => LbPolicy::RoundRobin,
    }
}

fn cluster(view: &MeshView, name: String, subset: &Subset, client: Client) -> Cluster {
    let service = subset.service.as_str();
    let transport_socket = match client {
        Client::Grpc => upstream_tls(view, service),
        Client::Envoy => secrets::upstream_tls(&spiffe_id(&view.trust_domain, &view.mesh, service)),
    };
    let protocol = view
        .services
        .get(service)
        .and_then(|s| s.ports.iter().find(|p| p.port == subset.port))
        .map_or(Protocol::Tcp, |p| p.protocol);
    // HTTP/2 between sidecars where the port speaks it (`http2`, `grpc`); the peer's inbound
    // HCM detects the codec either way.
    let h2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
    let typed_extension_protocol_options =
        if client == Client::Envoy && h2 { http2_options() } else { HashMap::new() };
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: name }),
        lb_policy: lb_policy(client) as i32,
        connect_timeout: Some(PbDuration { seconds: 5, nanos: 0 }),
        transport_socket: Some(transport_socket),
        typed_extension_protocol_options,
        ..Default::default()
    };
    // Several circuit breakers for one service: the one first by name applies.
    if let Some(cb) = view.circuit_breakers.values().find(|cb| cb.target_ref.service == service) {
        if let Some(t) = &cb.thresholds {
            c.circuit_breakers = Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    priority: RoutingPriority::Default as i32,
                    max_connections: t.max_connections.map(u32v),
                    max_pending_requests: t.max_pending_requests.map(u32v),
                    max_requests: t.max_requests.map(u32v),
                    max_retries: t.max_retries.map(u32v),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if let Some(o) = &cb.outlier_detection {
            c.outlier_detection = Some(OutlierDetection {
                consecutive_5xx: o.consecutive5xx.map(u32v),
                consecutive_gateway_failure: o.consecutive_gateway_errors.map(u32v),
                enforcing_consecutive_gateway_failure: o.consecutive_gateway_errors.map(|_| u32v(100)),
                interval: o.interval.map(duration),
                base_ejection_time: o.base_ejection_time.map(duration),
                max_ejection_percent: o.max_ejection_percent.map(u32v),
                ..Default::default()
            });
        }
    }
    if let Some(hc) = view.health_check(service) {
        // An HTTP check on a TCP port would fail on every instance: TCP ports are checked
        // by connecting.
        let checker = match hc.http.as_ref().filter(|_| protocol.is_http()) {
            Some(h) => HealthChecker::HttpHealthCheck(HttpHealthCheck {
                path: h.path.clone(),
                expected_statuses: h
                    .expected_statuses
                    .iter()
                    .map(|s| Int64Range { start: i64::from(*s), end: i64::from(*s) + 1 })
                    .collect(),
                ..Default::default()
            }),
            None => HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
        };
        c.health_checks = vec![HealthCheck {
            timeout: Some(duration(hc.timeout)),
            interval: Some(duration(hc.interval)),
            unhealthy_threshold: Some(u32v(hc.unhealthy_threshold)),
            healthy_threshold: Some(u32v(hc.healthy_threshold)),
            health_checker: Some(checker),
            ..Default::default()
        }];
    }
    c
}

/// The endpoints of a cluster: the service's instances on the cluster's port that carry
/// every tag of the subset, grouped by zone. Each locality gets weight 1 (gRPC drops a locality without a weight).
pub(crate) fn load_assignment(view: &MeshView, cluster: &str) -> ClusterLoadAssignment {
    let subsets = subsets(view);
    let mut by_zone: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    if let Some(Subset { service, port, tags }) = subsets.get(cluster) {
        let declared: Vec<u32> =
            view.services.get(service).map(|s| s.ports.iter().map(|p| p.port).collect()).unwrap_or_default();
        // An instance serves a port it registered. An xDS-enabled gRPC server registers the
        // port it listens on, which may be none the service declares: it counts for the
        // service's port when there is only one, and for none otherwise (never for two).
        let serves = |e: &&crate::view::Endpoint| {
            e.port == *port || (declared.len() == 1 && !declared.contains(&e.port))
        };
        let mut seen = std::collections::BTreeSet::new();
        for e in view.endpoints.iter().filter(|e| &e.service == service).filter(serves) {
            if !e.tags.selected_by(tags) || !seen.insert((e.address, e.port)) {
                continue;
            }
            by_zone.entry(e.zone.as_str()).or_default().push(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: e.address.to_string(),
                            port_specifier: Some(PortSpecifier::PortValue(e.port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                health_status: if e.healthy { HealthStatus::Healthy } else { HealthStatus::Unhealthy } as i32,
                ..Default::default()
            });
        }
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality { zone: zone.to_owned(), ..Default::default() }),
                lb_endpoints,
                load_balancing_weight: Some(u32v(1)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
