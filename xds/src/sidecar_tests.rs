//! Envoy sidecar translation: one small mesh per policy kind, each checked against a snapshot
//! of the readable form of its resources (`UPDATE_EXPECT=1 cargo test -p trellis-xds` rewrites
//! the snapshots; review the diff) and by assertions on the facts that matter.
//!
//! envoy-types messages do not implement serde, so the readable form is prost's `Debug` with
//! every `Any` decoded in place, and RBAC policy maps (the only multi-entry `HashMap`s the
//! translation builds) printed in name order.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::Policy;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use expect_test::{ExpectFile, expect_file};
use prost::{Message, Name};
use trellis_model::config::Tags;

use crate::readable::readable;
use crate::sotw::{Snapshot, type_order};
use crate::tests::{tags, unpack, view_from_yaml};
use crate::{Endpoint, MeshView, Resources, envoy_sidecar, outbound_addresses, sds_secrets};

/// The readable form of some resources, by type in ADS order and then by name.
fn render(r: &Resources) -> String {
    fn section<M: std::fmt::Debug>(out: &mut String, kind: &str, items: &BTreeMap<String, M>) {
        for (name, m) in items {
            out.push_str(&format!("==== {kind} {name}\n"));
            out.push_str(&readable(m));
        }
    }
    for c in r.clusters.values() {
        assert!(c.typed_extension_protocol_options.len() <= 1, "a HashMap with entries in random order");
    }
    for route in r.routes.values().flat_map(|rc| &rc.virtual_hosts).flat_map(|v| &v.routes) {
        assert!(route.typed_per_filter_config.len() <= 1, "a HashMap with entries in random order");
    }
    let mut out = String::new();
    section(&mut out, "Cluster", &r.clusters);
    section(&mut out, "ClusterLoadAssignment", &r.endpoints);
    section(&mut out, "Listener", &r.listeners);
    section(&mut out, "RouteConfiguration", &r.routes);
    section(&mut out, "Secret", &r.secrets);
    out
}

/// Only the named resources of `r` (any type).
fn only(r: &Resources, names: &[&str]) -> Resources {
    fn keep<M: Clone>(m: &BTreeMap<String, M>, names: &[&str]) -> BTreeMap<String, M> {
        m.iter().filter(|(n, _)| names.contains(&n.as_str())).map(|(n, v)| (n.clone(), v.clone())).collect()
    }
    let picked = Resources {
        listeners: keep(&r.listeners, names),
        routes: keep(&r.routes, names),
        clusters: keep(&r.clusters, names),
        endpoints: keep(&r.endpoints, names),
        secrets: keep(&r.secrets, names),
    };
    let found = picked.listeners.len()
        + picked.routes.len()
        + picked.clusters.len()
        + picked.endpoints.len()
        + picked.secrets.len();
    assert!(found >= names.len(), "some of {names:?} are missing");
    picked
}

fn check(r: &Resources, snapshot: ExpectFile) {
    let text = render(r);
    assert!(!text.contains(crate::readable::UNRENDERED), "a message type without a renderer:\n{text}");
    snapshot.assert_eq(&text);
}

// ---- the meshes ----------------------------------------------------------------------------

const SERVICES: &str = "\
apiVersion: trellis.dev/v1
kind: Mesh
metadata: {name: shop}
spec: {mtls: {mode: STRICT}, defaultAccess: deny}
---
kind: Service
metadata: {name: web}
spec: {ports: [{port: 8080, protocol: http}]}
---
kind: Service
metadata: {name: api}
spec: {ports: [{port: 9090, protocol: grpc}]}
---
kind: Service
metadata: {name: db}
spec: {ports: [{port: 5432, protocol: tcp}]}";

/// web, api (grpc, v1 in z1 and v2 in z2) and db (tcp, primary and replica), plus `extra`
/// documents.
fn mesh(extra: &str) -> MeshView {
    let text = if extra.is_empty() { SERVICES.to_owned() } else { format!("{SERVICES}\n---\n{extra}") };
    let mut view = view_from_yaml(&text);
    let ep = |service: &str, ip: &str, port: u32, t: Tags, zone: &str| Endpoint {
        service: service.into(),
        address: ip.parse().unwrap(),
        port,
        tags: t,
        zone: zone.into(),
        healthy: true,
    };
    view.endpoints = vec![
        ep("web", "10.0.0.1", 8080, Tags::new(), "z1"),
        ep("api", "10.0.1.1", 9090, tags(&[("version", "v1")]), "z1"),
        ep("api", "10.0.1.2", 9090, tags(&[("version", "v2")]), "z2"),
        ep("db", "10.0.2.1", 5432, tags(&[("role", "primary")]), "z1"),
        ep("db", "10.0.2.2", 5432, tags(&[("role", "replica")]), "z2"),
    ];
    view
}

const API_ID: &str = "spiffe://shop.acme.trellis.internal/ns/shop/sa/api";
const WEB_ID: &str = "spiffe://shop.acme.trellis.internal/ns/shop/sa/web";

// ---- helpers to look inside ----------------------------------------------------------------

fn chain_filters(l: &Listener, chain: usize) -> &[Filter] {
    &l.filter_chains[chain].filters
}

fn hcm(l: &Listener) -> HttpConnectionManager {
    let f = &chain_filters(l, 0)[0];
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    let Some(FilterConfig::TypedConfig(any)) = &f.config_type else { panic!() };
    unpack(any)
}

fn http_filter_names(h: &HttpConnectionManager) -> Vec<&str> {
    h.http_filters.iter().map(|f| f.name.as_str()).collect()
}

fn http_filter<T: Message + Name + Default>(h: &HttpConnectionManager, name: &str) -> T {
    let f = h.http_filters.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no filter {name}"));
    let Some(ConfigType::TypedConfig(any)) = &f.config_type else { panic!() };
    unpack(any)
}

fn network_filter<T: Message + Name + Default>(l: &Listener, name: &str) -> T {
    let f = chain_filters(l, 0).iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no filter {name}"));
    let Some(FilterConfig::TypedConfig(any)) = &f.config_type else { panic!() };
    unpack(any)
}

fn port_of(l: &Listener) -> (String, u32) {
    let Some(AddressKind::SocketAddress(a)) = &l.address.as_ref().unwrap().address else { panic!() };
    let Some(PortSpecifier::PortValue(p)) = a.port_specifier else { panic!() };
    (a.address.clone(), p)
}

fn upstream_tls(c: &Cluster) -> UpstreamTlsContext {
    let Some(SocketConfig::TypedConfig(any)) = &c.transport_socket.as_ref().unwrap().config_type else {
        panic!()
    };
    unpack(any)
}

fn principals(p: &Policy) -> Vec<String> {
    p.principals.iter().map(|x| format!("{x:?}")).collect()
}

// ---- Service: the shape of a sidecar's resources -------------------------------------------

#[test]
fn service_inbound_mtls_outbound_per_service_port_and_subset_clusters() {
    let view = mesh("");
    let r = envoy_sidecar(&view, "api", &[9090]);
    check(&r, expect_file!["snapshots/sidecar_service.txt"]);

    // Inbound: mTLS required, with both secrets from SDS over ADS.
    let inbound = &r.listeners["inbound:9090"];
    assert_eq!(port_of(inbound), ("0.0.0.0".into(), 9090));
    assert_eq!(inbound.filter_chains.len(), 1, "STRICT: no plaintext chain");
    let ts = inbound.filter_chains[0].transport_socket.as_ref().unwrap();
    let Some(SocketConfig::TypedConfig(any)) = &ts.config_type else { panic!() };
    let tls: DownstreamTlsContext = unpack(any);
    assert!(tls.require_client_certificate.unwrap().value);
    let ctx = tls.common_tls_context.unwrap();
    assert_eq!(ctx.tls_certificate_sds_secret_configs[0].name, "workload");
    let Some(ValidationContextType::ValidationContextSdsSecretConfig(v)) = ctx.validation_context_type else {
        panic!()
    };
    assert_eq!(v.name, "trust-bundle");
    // The router sends to the application.
    let RouteSpecifier::RouteConfig(rc) = hcm(inbound).route_specifier.unwrap() else { panic!() };
    let Some(Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(a.cluster_specifier, Some(ClusterSpecifier::Cluster("inbound:9090".into())));
    assert!(format!("{:?}", r.clusters["inbound:9090"]).contains("\"127.0.0.1\""));

    // Outbound: every port of every service, each service on its own loopback address.
    let names: Vec<&str> = r.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["inbound:9090", "outbound:api.shop:9090", "outbound:db.shop:5432", "outbound:web.shop:8080"]
    );
    let addrs = outbound_addresses(&view);
    for (svc, port) in [("api", 9090), ("db", 5432), ("web", 8080)] {
        let l = &r.listeners[&format!("outbound:{svc}.shop:{port}")];
        assert_eq!(port_of(l), (addrs[svc].to_string(), port));
        assert!(addrs[svc].is_loopback() && addrs[svc].octets()[1] != 0, "{svc}: {}", addrs[svc]);
    }
    assert_eq!(r.routes.keys().collect::<Vec<_>>(), ["outbound:api.shop:9090", "outbound:web.shop:8080"]);
    assert_eq!(r.routes["outbound:web.shop:8080"].virtual_hosts[0].domains, ["*"]);

    // Clusters: one per service port (subsets only when a route names them), EDS over ADS, zones.
    let clusters: Vec<&str> = r.clusters.keys().map(String::as_str).collect();
    assert_eq!(clusters, ["api.shop:9090", "db.shop:5432", "inbound:9090", "web.shop:8080"]);
    let zones: Vec<_> =
        r.endpoints["api.shop:9090"].endpoints.iter().map(|l| l.locality.clone().unwrap().zone).collect();
    assert_eq!(zones, ["z1", "z2"]);
    // api speaks gRPC: Envoy must use HTTP/2 upstream; web speaks HTTP/1.
    assert!(
        r.clusters["api.shop:9090"]
            .typed_extension_protocol_options
            .contains_key(&HttpProtocolOptions::full_name())
    );
    assert!(r.clusters["web.shop:8080"].typed_extension_protocol_options.is_empty());
}

#[test]
fn outbound_addresses_are_stable_and_distinct() {
    let small = mesh("");
    let mut big = mesh("");
    for i in 0..200 {
        big.services.insert(format!("s{i}"), big.services["web"].clone());
    }
    let (a, b) = (outbound_addresses(&small), outbound_addresses(&big));
    for svc in ["api", "db", "web"] {
        assert_eq!(a[svc], b[svc], "adding services must not move {svc}");
    }
    let distinct: std::collections::BTreeSet<_> = b.values().collect();
    assert_eq!(distinct.len(), b.len());
}

// ---- AccessPolicy --------------------------------------------------------------------------

const ACCESS: &str = "\
kind: AccessPolicy
metadata: {name: api-callers}
spec:
  targetRef: {service: api}
  rules:
    - action: Allow
      from: [{service: web}]
      to: {methods: [POST], paths: [{type: PathPrefix, value: /shop.Api/}]}
    - action: Deny
      from: [{identity: spiffe://other.example/ns/x/sa/bad}]
    - action: Audit
      from: [{service: db}]
---
kind: AccessPolicy
metadata: {name: db-callers}
spec:
  targetRef: {service: db}
  rules:
    - action: Allow
      from: [{service: api}]
    - action: Allow
      from: [{service: web}]
      to: {methods: [GET]}
    - action: Deny
      from: [{service: web}]
      to: {paths: [{type: Exact, value: /admin}]}";

#[test]
fn access_policies_become_rbac_with_audit_as_shadow_rules() {
    let view = mesh(ACCESS);
    let r = envoy_sidecar(&view, "api", &[9090]);
    check(&only(&r, &["inbound:9090"]), expect_file!["snapshots/sidecar_access_http.txt"]);
    let h = hcm(&r.listeners["inbound:9090"]);
    assert_eq!(
        http_filter_names(&h),
        ["trellis.rbac.audit", "trellis.rbac.deny", "trellis.rbac.allow", "envoy.filters.http.router"]
    );
    // Audit: shadow rules only, so it never refuses; its matches count as shadow denials.
    let audit: HttpRbac = http_filter(&h, "trellis.rbac.audit");
    assert!(audit.rules.is_none(), "an audit filter must not enforce");
    let shadow = audit.shadow_rules.unwrap();
    assert_eq!(shadow.action, RbacAction::Deny as i32);
    assert_eq!(audit.shadow_rules_stat_prefix, "trellis_audit_");
    assert!(principals(&shadow.policies["api-callers/rules/2"])[0].contains("/sa/db\""));
    // Allow: the caller's SPIFFE ID, exactly, and the request conditions.
    let allow: HttpRbac = http_filter(&h, "trellis.rbac.allow");
    let rules = allow.rules.unwrap();
    assert_eq!(rules.action, RbacAction::Allow as i32);
    assert_eq!(rules.policies.keys().collect::<Vec<_>>(), ["api-callers/rules/0"]);
    let p = &rules.policies["api-callers/rules/0"];
    let want = format!("Exact(\"{WEB_ID}\")");
    assert!(principals(p)[0].contains(&want), "{:?}", principals(p));
    assert!(format!("{:?}", p.permissions).contains("Prefix(\"/shop.Api/\")"));
    let deny: HttpRbac = http_filter(&h, "trellis.rbac.deny");
    assert!(
        principals(&deny.rules.unwrap().policies["api-callers/rules/1"])[0]
            .contains("spiffe://other.example/")
    );
}

#[test]
fn default_deny_refuses_a_service_without_policies_and_default_allow_drops_the_allow_filter() {
    let view = mesh(ACCESS);
    // web has no policy: under default deny, an allow filter with no policy refuses everything.
    let r = envoy_sidecar(&view, "web", &[8080]);
    let h = hcm(&r.listeners["inbound:8080"]);
    assert_eq!(http_filter_names(&h), ["trellis.rbac.allow", "envoy.filters.http.router"]);
    let allow: HttpRbac = http_filter(&h, "trellis.rbac.allow");
    let rules = allow.rules.unwrap();
    assert_eq!(rules.action, RbacAction::Allow as i32);
    assert!(rules.policies.is_empty());
    // Default allow: deny and audit still apply, no allow filter.
    let mut open = view.clone();
    open.default_access = trellis_model::config::DefaultAccess::Allow;
    let h = hcm(&envoy_sidecar(&open, "api", &[9090]).listeners["inbound:9090"]);
    assert_eq!(
        http_filter_names(&h),
        ["trellis.rbac.audit", "trellis.rbac.deny", "envoy.filters.http.router"]
    );
    let h = hcm(&envoy_sidecar(&open, "web", &[8080]).listeners["inbound:8080"]);
    assert_eq!(http_filter_names(&h), ["envoy.filters.http.router"]);
}

#[test]
fn tcp_ports_get_network_rbac_that_fails_closed_on_request_conditions() {
    let view = mesh(ACCESS);
    let r = envoy_sidecar(&view, "db", &[5432]);
    check(&only(&r, &["inbound:5432"]), expect_file!["snapshots/sidecar_access_tcp.txt"]);
    let l = &r.listeners["inbound:5432"];
    let names: Vec<&str> = chain_filters(l, 0).iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["trellis.rbac.deny", "trellis.rbac.allow", "envoy.filters.network.tcp_proxy"]);
    // The Allow rule with a method condition cannot be checked on TCP: it allows nothing.
    let allow: NetworkRbac = network_filter(l, "trellis.rbac.allow");
    assert_eq!(allow.stat_prefix, "inbound_5432");
    assert_eq!(allow.rules.unwrap().policies.keys().collect::<Vec<_>>(), ["db-callers/rules/0"]);
    // The Deny rule with a path condition refuses the caller's whole connection.
    let deny: NetworkRbac = network_filter(l, "trellis.rbac.deny");
    let p = &deny.rules.unwrap().policies["db-callers/rules/2"];
    assert_eq!(format!("{:?}", p.permissions), "[Permission { rule: Some(Any(true)) }]");
}

// ---- HTTPRoute -----------------------------------------------------------------------------

const HTTP_ROUTE: &str = "\
kind: HTTPRoute
metadata: {name: api}
spec:
  targetRef: {service: api}
  rules:
    - matches:
        - path: {type: PathPrefix, value: /shop.Api/Beta}
          headers: [{name: X-Beta, value: 'true'}]
          queryParams: [{type: RegularExpression, name: q, value: '^a+$'}]
          method: POST
      backendRefs: [{service: api, tags: {version: v2}}]
      fault:
        delay: {fixedDelay: 100ms, percent: 10}
        abort: {httpStatus: 503, percent: 5}
      requestHeaderModifier:
        set: [{name: X-Route, value: beta}]
        add: [{name: X-Trace, value: '1'}]
        remove: [X-Debug]
    - backendRefs:
        - {service: api, tags: {version: v1}, weight: 80}
        - {service: api, tags: {version: v2}, weight: 20}
      timeouts: {request: 3s, backendRequest: 1s}
      retry:
        attempts: 3
        retryOn: [unavailable, reset]
        backoff: {baseInterval: 25ms, maxInterval: 250ms}
      mirror: {service: api, tags: {version: v2}, percent: 10}";

#[test]
fn http_routes_become_the_outbound_route_configuration() {
    let view = mesh(HTTP_ROUTE);
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(&only(&r, &["outbound:api.shop:9090"]), expect_file!["snapshots/sidecar_http_route.txt"]);
    let l = &r.listeners["outbound:api.shop:9090"];
    let RouteSpecifier::Rds(rds) = hcm(l).route_specifier.unwrap() else { panic!() };
    assert_eq!(rds.route_config_name, "outbound:api.shop:9090");
    assert_eq!(http_filter_names(&hcm(l)), ["envoy.filters.http.fault", "envoy.filters.http.router"]);
    let routes = &r.routes["outbound:api.shop:9090"].virtual_hosts[0].routes;
    assert_eq!(routes.len(), 3, "two rules and the catch-all");
    let Some(Action::Route(split)) = &routes[1].action else { panic!() };
    let Some(ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else { panic!() };
    let weights: Vec<_> = w.clusters.iter().map(|c| (c.name.as_str(), c.weight.unwrap().value)).collect();
    assert_eq!(weights, [("api.shop:9090~version=v1", 80), ("api.shop:9090~version=v2", 20)]);
    assert_eq!(split.timeout.unwrap().seconds, 3);
    assert_eq!(split.request_mirror_policies[0].cluster, "api.shop:9090~version=v2");
    // Without a request timeout, no timeout (Envoy's default 15 s would cut streams).
    let Some(Action::Route(last)) = &routes[2].action else { panic!() };
    assert_eq!(last.timeout.unwrap(), Default::default());
    // Every cluster a route names exists, with its endpoints.
    for c in ["api.shop:9090~version=v1", "api.shop:9090~version=v2", "api.shop:9090"] {
        assert!(r.clusters.contains_key(c) && r.endpoints.contains_key(c), "{c}");
    }
    assert!(format!("{:?}", r.endpoints["api.shop:9090~version=v2"]).contains("10.0.1.2"));
    assert!(!format!("{:?}", r.endpoints["api.shop:9090~version=v2"]).contains("10.0.1.1"));
}

#[test]
fn an_abort_with_a_grpc_status_becomes_envoys_grpc_status_abort() {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    let abort = |yaml: &str| {
        let view = mesh(&HTTP_ROUTE.replace("abort: {httpStatus: 503, percent: 5}", yaml));
        let r = envoy_sidecar(&view, "web", &[8080]);
        let route = &r.routes["outbound:api.shop:9090"].virtual_hosts[0].routes[0];
        let any = &route.typed_per_filter_config["envoy.filters.http.fault"];
        HttpFault::decode(any.value.as_slice()).unwrap().abort.unwrap().error_type.unwrap()
    };
    assert_eq!(abort("abort: {grpcStatus: 8, percent: 5}"), ErrorType::GrpcStatus(8));
    assert_eq!(abort("abort: {httpStatus: 503, percent: 5}"), ErrorType::HttpStatus(503));
}

/// Issue #12: a service with two ports had one cluster, whose EDS mixed both ports, so half
/// of each port's requests landed on the other. Clusters (and EDS) are per port and subset,
/// for sidecars and gRPC clients alike.
#[test]
fn services_with_several_ports_get_clusters_and_endpoints_per_port() {
    let mut view = mesh(HTTP_ROUTE);
    view.services.get_mut("api").unwrap().ports.push(trellis_model::config::ServicePort {
        name: None,
        port: 8081,
        protocol: trellis_model::config::Protocol::Http,
        app_port: None,
    });
    let second: Vec<Endpoint> = view
        .endpoints
        .iter()
        .filter(|e| e.service == "api")
        .map(|e| Endpoint { port: 8081, ..e.clone() })
        .collect();
    view.endpoints.extend(second);
    for (r, route) in [
        (envoy_sidecar(&view, "web", &[8080]), "outbound:api.shop:8081"),
        (crate::grpc_client(&view), "api.shop:8081"),
    ] {
        for (name, cla) in r.endpoints.iter().filter(|(n, _)| n.starts_with("api.shop:")) {
            let port: u32 = name["api.shop:".len()..].split('~').next().unwrap().parse().unwrap();
            let ports: Vec<u32> = cla
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .map(|e| {
                    let text = format!("{e:?}");
                    if text.contains("PortValue(8081)") { 8081 } else { 9090 }
                })
                .collect();
            assert!(!ports.is_empty() && ports.iter().all(|p| *p == port), "{name}: {ports:?}");
        }
        assert_eq!(r.endpoints["api.shop:8081"].endpoints.len(), 2, "both zones, port 8081 only");
        // The route of port 8081 splits between the subsets of port 8081.
        let routes = &r.routes[route].virtual_hosts[0].routes;
        let Some(Action::Route(split)) = &routes[1].action else { panic!() };
        let Some(ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else { panic!() };
        let names: Vec<_> = w.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["api.shop:8081~version=v1", "api.shop:8081~version=v2"]);
        for c in names {
            assert!(r.clusters.contains_key(c), "{c}");
        }
    }
}

// ---- TCPRoute ------------------------------------------------------------------------------

const TCP_ROUTE: &str = "\
kind: TCPRoute
metadata: {name: db}
spec:
  targetRef: {service: db}
  backendRefs:
    - {service: db, tags: {role: primary}, weight: 90}
    - {service: db, tags: {role: replica}, weight: 10}";

#[test]
fn tcp_routes_become_weighted_tcp_proxies() {
    let view = mesh(TCP_ROUTE);
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(
        &only(&r, &["outbound:db.shop:5432", "db.shop:5432~role=primary", "db.shop:5432~role=replica"]),
        expect_file!["snapshots/sidecar_tcp_route.txt"],
    );
    let proxy: TcpProxy =
        network_filter(&r.listeners["outbound:db.shop:5432"], "envoy.filters.network.tcp_proxy");
    let Some(TcpClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else { panic!() };
    let weights: Vec<_> = w.clusters.iter().map(|c| (c.name.as_str(), c.weight)).collect();
    assert_eq!(weights, [("db.shop:5432~role=primary", 90), ("db.shop:5432~role=replica", 10)]);
    // Without a TCP route, all instances.
    let r = envoy_sidecar(&mesh(""), "web", &[8080]);
    let proxy: TcpProxy =
        network_filter(&r.listeners["outbound:db.shop:5432"], "envoy.filters.network.tcp_proxy");
    assert_eq!(proxy.cluster_specifier, Some(TcpClusterSpecifier::Cluster("db.shop:5432".into())));
}

// ---- CircuitBreaker ------------------------------------------------------------------------

const CIRCUIT_BREAKER: &str = "\
kind: CircuitBreaker
metadata: {name: api}
spec:
  targetRef: {service: api}
  thresholds: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 20, maxRetries: 2}
  outlierDetection:
    consecutive5xx: 3
    consecutiveGatewayErrors: 2
    interval: 5s
    baseEjectionTime: 30s
    maxEjectionPercent: 50";

#[test]
fn circuit_breakers_set_thresholds_and_outlier_detection_on_pinned_clusters() {
    let view = mesh(CIRCUIT_BREAKER);
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(&only(&r, &["api.shop:9090"]), expect_file!["snapshots/sidecar_circuit_breaker.txt"]);
    let c = &r.clusters["api.shop:9090"];
    let th = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (
            th.max_connections.unwrap().value,
            th.max_pending_requests.unwrap().value,
            th.max_requests.unwrap().value
        ),
        (10, 5, 20)
    );
    assert_eq!(th.max_retries.unwrap().value, 2);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 3);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 30);
    // The peer is pinned to the service's SPIFFE ID, on top of the SDS trust bundle.
    let ctx = upstream_tls(c).common_tls_context.unwrap();
    assert_eq!(ctx.tls_certificate_sds_secret_configs[0].name, "workload");
    let Some(ValidationContextType::CombinedValidationContext(v)) = ctx.validation_context_type else {
        panic!()
    };
    assert_eq!(v.validation_context_sds_secret_config.unwrap().name, "trust-bundle");
    let san = &v.default_validation_context.unwrap().match_typed_subject_alt_names[0];
    assert_eq!(san.san_type, 3, "URI SAN");
    assert_eq!(san.matcher.as_ref().unwrap().match_pattern, Some(MatchPattern::Exact(API_ID.into())));
    assert!(r.clusters["web.shop:8080"].circuit_breakers.is_none());
}

// ---- HealthCheck ---------------------------------------------------------------------------

const HEALTH_CHECK: &str = "\
kind: HealthCheck
metadata: {name: api}
spec:
  targetRef: {service: api}
  interval: 10s
  timeout: 2s
  unhealthyThreshold: 3
  healthyThreshold: 2
  http: {path: /healthz, expectedStatuses: [200, 204]}
---
kind: HealthCheck
metadata: {name: db}
spec:
  targetRef: {service: db}
  interval: 5s
  timeout: 1s
  unhealthyThreshold: 2
  healthyThreshold: 1
  tcp: {}";

#[test]
fn health_checks_become_active_http_and_tcp_checks() {
    let view = mesh(HEALTH_CHECK);
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(&only(&r, &["api.shop:9090", "db.shop:5432"]), expect_file!["snapshots/sidecar_health_check.txt"]);
    let hc = &r.clusters["api.shop:9090"].health_checks[0];
    let Some(HealthChecker::HttpHealthCheck(h)) = &hc.health_checker else { panic!() };
    assert_eq!(h.path, "/healthz");
    assert_eq!(
        h.expected_statuses.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
        [(200, 201), (204, 205)]
    );
    assert_eq!(hc.interval.unwrap().seconds, 10);
    let hc = &r.clusters["db.shop:5432"].health_checks[0];
    assert!(matches!(hc.health_checker, Some(HealthChecker::TcpHealthCheck(_))));
    assert!(r.clusters["web.shop:8080"].health_checks.is_empty());
}

// ---- RateLimit -----------------------------------------------------------------------------

const RATE_LIMIT: &str = "\
kind: RateLimit
metadata: {name: web}
spec:
  targetRef: {service: web}
  local: {requests: 50, interval: 1s, burst: 80}";

#[test]
fn rate_limits_become_a_local_rate_limit_filter_before_the_router() {
    let view = mesh(RATE_LIMIT);
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(&only(&r, &["inbound:8080"]), expect_file!["snapshots/sidecar_rate_limit.txt"]);
    let h = hcm(&r.listeners["inbound:8080"]);
    assert_eq!(
        http_filter_names(&h),
        ["trellis.rbac.allow", "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]
    );
    let rl: LocalRateLimit = http_filter(&h, "envoy.filters.http.local_ratelimit");
    let tb = rl.token_bucket.unwrap();
    assert_eq!(
        (tb.max_tokens, tb.tokens_per_fill.unwrap().value, tb.fill_interval.unwrap().seconds),
        (80, 50, 1)
    );
    for enabled in [rl.filter_enabled.unwrap(), rl.filter_enforced.unwrap()] {
        assert_eq!(enabled.default_value.unwrap().numerator, 100, "a filter at 0 % does nothing");
    }
    // Only the targeted service is limited; the caller side never is.
    let h = hcm(&envoy_sidecar(&view, "api", &[9090]).listeners["inbound:9090"]);
    assert!(!http_filter_names(&h).contains(&"envoy.filters.http.local_ratelimit"));
}

// ---- Mesh mTLS mode ------------------------------------------------------------------------

#[test]
fn permissive_mtls_adds_a_plaintext_chain_with_the_same_filters() {
    let mut view = mesh("");
    view.mtls = trellis_model::config::MtlsMode::Permissive;
    let r = envoy_sidecar(&view, "web", &[8080]);
    check(&only(&r, &["inbound:8080"]), expect_file!["snapshots/sidecar_permissive.txt"]);
    let l = &r.listeners["inbound:8080"];
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    let chains: Vec<_> = l
        .filter_chains
        .iter()
        .map(|c| {
            (c.filter_chain_match.as_ref().unwrap().transport_protocol.as_str(), c.transport_socket.is_some())
        })
        .collect();
    assert_eq!(chains, [("tls", true), ("raw_buffer", false)]);
    assert_eq!(l.filter_chains[0].filters, l.filter_chains[1].filters);
    // An undeclared port is served as TCP, with the same mTLS.
    let r = envoy_sidecar(&mesh(""), "web", &[8080, 9999]);
    let names: Vec<&str> =
        chain_filters(&r.listeners["inbound:9999"], 0).iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["trellis.rbac.allow", "envoy.filters.network.tcp_proxy"]);
}

// ---- SDS -----------------------------------------------------------------------------------

#[test]
fn sds_secrets_inline_the_bundle_and_point_at_the_agents_files() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let secrets = sds_secrets(pem, "/var/run/trellis/");
    let r = Resources { secrets: secrets.clone(), ..Default::default() };
    check(&r, expect_file!["snapshots/sidecar_secrets.txt"]);
    let Some(SecretType::ValidationContext(v)) = &secrets["trust-bundle"].r#type else { panic!() };
    assert_eq!(v.trusted_ca.as_ref().unwrap().specifier, Some(Specifier::InlineString(pem.into())));
    let Some(SecretType::TlsCertificate(c)) = &secrets["workload"].r#type else { panic!() };
    assert_eq!(
        c.certificate_chain.as_ref().unwrap().specifier,
        Some(Specifier::Filename("/var/run/trellis/cert.pem".into()))
    );
    assert_eq!(
        c.private_key.as_ref().unwrap().specifier,
        Some(Specifier::Filename("/var/run/trellis/key.pem".into()))
    );
    assert_eq!(c.watched_directory.as_ref().unwrap().path, "/var/run/trellis");
    // A new root changes the bundle's version, so the rotation is pushed.
    let rotated =
        sds_secrets("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n", "/var/run/trellis");
    assert_ne!(crate::version(&secrets["trust-bundle"]), crate::version(&rotated["trust-bundle"]));
    assert_eq!(crate::version(&secrets["workload"]), crate::version(&rotated["workload"]));
}

#[test]
fn snapshots_carry_secrets_and_send_them_last() {
    let mut r = envoy_sidecar(&mesh(ACCESS), "api", &[9090]);
    r.secrets = sds_secrets("pem", "/certs");
    let snap = Snapshot::from_resources(&r);
    let secret_url = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::type_url();
    assert_eq!(type_order().last(), Some(&secret_url));
    let names: Vec<&str> = snap.types[&secret_url].keys().map(String::as_str).collect();
    assert_eq!(names, ["trust-bundle", "workload"]);
    // Every RDS name an LDS resource uses exists, and every EDS name a cluster uses.
    for l in r.listeners.values() {
        for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
            if let Some(FilterConfig::TypedConfig(any)) = &f.config_type
                && any.type_url == HttpConnectionManager::type_url()
                && let Some(RouteSpecifier::Rds(rds)) = unpack::<HttpConnectionManager>(any).route_specifier
            {
                assert!(r.routes.contains_key(&rds.route_config_name), "{}", rds.route_config_name);
            }
        }
    }
    for c in r.clusters.values() {
        if let Some(eds) = &c.eds_cluster_config {
            assert!(r.endpoints.contains_key(&eds.service_name), "{}", eds.service_name);
        }
    }
}

#[test]
fn sidecar_versions_are_stable_with_many_rbac_policies() {
    let mut view = mesh(ACCESS);
    let base = view.access_policies["api-callers"].clone();
    for i in 0..8 {
        view.access_policies.insert(format!("p{i}"), base.clone());
    }
    let version = |v: &MeshView| crate::version(&envoy_sidecar(v, "api", &[9090]).listeners["inbound:9090"]);
    let first = version(&view);
    for _ in 0..20 {
        assert_eq!(version(&view), first);
    }
    let h = hcm(&envoy_sidecar(&view, "api", &[9090]).listeners["inbound:9090"]);
    let audit: HttpRbac = http_filter(&h, "trellis.rbac.audit");
    assert_eq!(audit.shadow_rules.unwrap().policies.len(), 9, "the hand encoding decodes back");
    let mut changed = view.clone();
    changed.access_policies.get_mut("p3").unwrap().rules[2].action =
        trellis_model::config::AccessAction::Deny;
    assert_ne!(version(&changed), first);
}

#[test]
fn local_clusters_speak_each_ports_protocol() {
    let mut view = mesh("");
    let api = view.services.get_mut("api").unwrap();
    api.ports.push(trellis_model::config::ServicePort {
        name: None,
        port: 8081,
        protocol: trellis_model::config::Protocol::Http,
        app_port: None,
    });
    let r = envoy_sidecar(&view, "api", &[9090, 8081]);
    let h2 = |c: &str| {
        r.clusters[c].typed_extension_protocol_options.contains_key(&HttpProtocolOptions::full_name())
    };
    assert!(h2("inbound:9090"), "the gRPC port's application speaks HTTP/2");
    assert!(!h2("inbound:8081"), "the HTTP/1 port's application must not get HTTP/2");
    assert!(h2("api.shop:9090"), "between sidecars, HTTP/2 to the gRPC port");
    assert!(!h2("api.shop:8081"), "and HTTP/1 to the HTTP/1 port");
    assert!(
        r.listeners.contains_key("outbound:api.shop:8081") && r.routes.contains_key("outbound:api.shop:8081")
    );
}

/// Issue #12: the inbound listener took `0.0.0.0:<port>`, the port the application listens
/// on, so one of the two failed to bind. The application is on `127.0.0.1:<appPort>`.
#[test]
fn the_inbound_listener_and_the_application_never_share_a_port() {
    let mut view = mesh("");
    view.services.get_mut("api").unwrap().ports[0].app_port = Some(19090);
    let r = envoy_sidecar(&view, "api", &[9090]);
    assert_eq!(port_of(&r.listeners["inbound:9090"]), ("0.0.0.0".into(), 9090));
    let local = &r.clusters["inbound:9090"];
    let endpoint = format!("{:?}", local.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0]);
    assert!(endpoint.contains("\"127.0.0.1\"") && endpoint.contains("PortValue(19090)"), "{endpoint}");
    // Callers still dial the service port, and reach instances on it.
    let caller = envoy_sidecar(&view, "web", &[8080]);
    assert_eq!(port_of(&caller.listeners["outbound:api.shop:9090"]).1, 9090);
    assert!(format!("{:?}", caller.endpoints["api.shop:9090"]).contains("PortValue(9090)"));
}

/// Issue #12: a caller's sidecar checks `GET /healthz` with its own identity, which the
/// destination's access policies need not allow: under default deny every instance failed its
/// check. The check's request is allowed from any identity of the mesh, and nothing else is.
#[test]
fn active_health_checks_pass_the_destinations_default_deny() {
    use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
    use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
    let view = mesh(&format!("{ACCESS}\n---\n{HEALTH_CHECK}"));
    let r = envoy_sidecar(&view, "api", &[9090]);
    let allow: HttpRbac = http_filter(&hcm(&r.listeners["inbound:9090"]), crate::RBAC_ALLOW);
    let policies = allow.rules.unwrap().policies;
    let mut names: Vec<&String> = policies.keys().collect();
    names.sort();
    assert_eq!(names, ["api-callers/rules/0", crate::access::HEALTH_CHECK_POLICY]);
    let p = &policies[crate::access::HEALTH_CHECK_POLICY];
    // Any mesh identity (db, which no policy lets call api, included) …
    let [principal] = p.principals.as_slice() else { panic!("{p:?}") };
    let Some(Identifier::Authenticated(a)) = &principal.identifier else { panic!("{principal:?}") };
    let Some(MatchPattern::Prefix(prefix)) = &a.principal_name.as_ref().unwrap().match_pattern else {
        panic!()
    };
    assert_eq!(prefix, "spiffe://shop.acme.trellis.internal/");
    assert!("spiffe://shop.acme.trellis.internal/ns/shop/sa/db".starts_with(prefix.as_str()));
    assert!(!"spiffe://other.example/ns/x/sa/bad".starts_with(prefix.as_str()));
    // … for exactly GET /healthz.
    let [permission] = p.permissions.as_slice() else { panic!("{p:?}") };
    let Some(Rule::AndRules(and)) = &permission.rule else { panic!("{permission:?}") };
    let [path, method] = and.rules.as_slice() else { panic!("{and:?}") };
    let Some(Rule::UrlPath(u)) = &path.rule else { panic!("{path:?}") };
    let Some(PathRule::Path(m)) = &u.rule else { panic!() };
    assert_eq!(m.match_pattern, Some(MatchPattern::Exact("/healthz".into())));
    let Some(Rule::Header(h)) = &method.rule else { panic!("{method:?}") };
    assert_eq!(h.name, ":method");
    let Some(HeaderMatchSpecifier::StringMatch(m)) = &h.header_match_specifier else { panic!() };
    assert_eq!(m.match_pattern, Some(MatchPattern::Exact("GET".into())));
    // Without a health check, nothing is opened.
    let plain = envoy_sidecar(&mesh(ACCESS), "api", &[9090]);
    let allow: HttpRbac = http_filter(&hcm(&plain.listeners["inbound:9090"]), crate::RBAC_ALLOW);
    assert!(!allow.rules.unwrap().policies.contains_key(crate::access::HEALTH_CHECK_POLICY));
}

// ---- Access logs: every listener reports to the control plane -------------------------------

#[test]
fn every_listener_logs_to_the_control_plane_named_by_its_side() {
    use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as LogConfig;
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
        CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
    };

    fn common(log: &AccessLog) -> CommonGrpcAccessLogConfig {
        let Some(LogConfig::TypedConfig(any)) = &log.config_type else { panic!() };
        match log.name.as_str() {
            "envoy.access_loggers.http_grpc" => unpack::<HttpGrpcAccessLogConfig>(any).common_config.unwrap(),
            "envoy.access_loggers.tcp_grpc" => unpack::<TcpGrpcAccessLogConfig>(any).common_config.unwrap(),
            other => panic!("unexpected logger {other}"),
        }
    }
    let view = mesh("");
    let mut seen = (0, 0);
    for (service, port) in [("api", 9090), ("db", 5432)] {
        let r = envoy_sidecar(&view, service, &[port]);
        for (name, l) in &r.listeners {
            let f = &chain_filters(l, 0)[chain_filters(l, 0).len() - 1];
            let Some(FilterConfig::TypedConfig(any)) = &f.config_type else { panic!() };
            let logs = if f.name == "envoy.filters.network.http_connection_manager" {
                seen.0 += 1;
                unpack::<HttpConnectionManager>(any).access_log
            } else {
                seen.1 += 1;
                unpack::<envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy>(any)
                    .access_log
            };
            assert_eq!(logs.len(), 1, "{name}");
            let c = common(&logs[0]);
            let side = if name.starts_with("inbound:") { "trellis-inbound" } else { "trellis-outbound" };
            assert_eq!(c.log_name, side, "{name}");
            let Some(TargetSpecifier::EnvoyGrpc(g)) = c.grpc_service.unwrap().target_specifier else {
                panic!()
            };
            assert_eq!(g.cluster_name, crate::contract::XDS_CLUSTER, "{name}");
            // HTTP logs only what matters (errors, flags, a sample); TCP every connection.
            assert_eq!(logs[0].filter.is_some(), f.name == "envoy.filters.network.http_connection_manager");
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "both HTTP and TCP listeners were checked: {seen:?}");
}
