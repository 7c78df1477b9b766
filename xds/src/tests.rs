//! The translation checked against the shapes gRPC's xDS client accepts (XDS.md §3, §4),
//! on the repository's example mesh.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use trellis_model::config::{DefaultAccess, Kind, MtlsMode, Spec, Tags};

use crate::{Endpoint, MeshView, grpc_client, grpc_server};

pub(crate) fn unpack<T: Message + Name + Default>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url());
    T::decode(any.value.as_slice()).expect("decodes")
}

pub(crate) fn tags(pairs: &[(&str, &str)]) -> Tags {
    Tags::parse(pairs.iter().copied()).expect("test tags parse")
}

/// A mesh from YAML documents: the `Mesh` document's settings (STRICT, default deny when
/// absent) and every policy, with no endpoints.
pub(crate) fn view_from_yaml(text: &str) -> MeshView {
    let mut view = MeshView::new(
        "shop",
        trellis_ca::TrustDomain::parse("shop.acme.trellis.internal").unwrap(),
        MtlsMode::Strict,
        DefaultAccess::Deny,
    );
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        if v["kind"] == "Mesh" {
            let spec = trellis_model::config::parse_mesh_spec("spec", v["spec"].clone()).unwrap();
            (view.mesh, view.mtls, view.default_access) = (name, spec.mtls.mode, spec.default_access);
            continue;
        }
        let Some(kind) = Kind::lookup(v["kind"].as_str().unwrap()) else { continue };
        view.add(name, Spec::parse(kind, "spec", v["spec"].clone()).unwrap().spec);
    }
    view
}

/// The example mesh of `examples/reviews.yaml`, with reviews v1 ×2, v2 ×1 and productpage.
fn example() -> MeshView {
    let mut view = view_from_yaml(include_str!("../../examples/reviews.yaml"));
    let ep = |service: &str, ip: &str, t: Tags| Endpoint {
        service: service.into(),
        address: ip.parse().unwrap(),
        port: 9080,
        tags: t,
        zone: "z1".into(),
        healthy: true,
    };
    view.endpoints = vec![
        ep("reviews", "10.0.0.1", tags(&[("version", "v1")])),
        ep("reviews", "10.0.0.2", tags(&[("version", "v1")])),
        ep("reviews", "10.0.0.3", tags(&[("version", "v2")])),
        ep("productpage", "10.0.1.1", Tags::new()),
    ];
    view
}

fn route_action(r: &Route) -> &RouteAction {
    match r.action.as_ref().unwrap() {
        Action::Route(a) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn clusters_of(a: &RouteAction) -> Vec<(String, u32)> {
    match a.cluster_specifier.as_ref().unwrap() {
        ClusterSpecifier::Cluster(c) => vec![(c.clone(), 1)],
        ClusterSpecifier::WeightedClusters(w) => {
            w.clusters.iter().map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value)).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_listeners_are_named_after_the_dial_target_and_follow_grpcs_rules() {
    let r = grpc_client(&example());
    assert_eq!(r.listeners.keys().collect::<Vec<_>>(), ["productpage.shop:9080", "reviews.shop:9080"]);
    for (name, l) in &r.listeners {
        assert_eq!(&l.name, name);
        let hcm: HttpConnectionManager =
            unpack(l.api_listener.as_ref().unwrap().api_listener.as_ref().unwrap());
        match hcm.route_specifier.as_ref().unwrap() {
            RouteSpecifier::Rds(rds) => {
                assert_eq!(&rds.route_config_name, name);
                assert!(r.routes.contains_key(&rds.route_config_name), "RDS {name} missing");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hcm.xff_num_trusted_hops, 0);
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"envoy.filters.http.router"), "router must be last");
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for f in &hcm.http_filters {
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else { panic!("{f:?}") };
            assert!(any.type_url.starts_with("type.googleapis.com/envoy.extensions.filters.http."));
        }
    }
}

#[test]
fn the_canary_and_the_beta_channel_become_routes() {
    let r = grpc_client(&example());
    let rc = &r.routes["reviews.shop:9080"];
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["reviews.shop:9080"]);
    // Beta channel first: x-beta: true → v2 only.
    let beta = &vh.routes[0];
    let m = beta.r#match.as_ref().unwrap();
    assert_eq!(m.headers[0].name, "x-beta");
    assert!(format!("{:?}", m.headers[0].header_match_specifier).contains("Exact(\"true\")"));
    assert_eq!(clusters_of(route_action(beta)), [("reviews.shop:9080~version=v2".to_owned(), 1)]);
    // Then the 75/25 canary, with the rule's retry and timeout.
    let canary = route_action(&vh.routes[1]);
    assert_eq!(
        clusters_of(canary),
        [("reviews.shop:9080~version=v1".to_owned(), 75), ("reviews.shop:9080~version=v2".to_owned(), 25)]
    );
    let retry = canary.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "5xx,connect-failure");
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
    assert_eq!(canary.timeout.as_ref().unwrap().seconds, 10);
    assert_eq!(
        canary.max_stream_duration.as_ref().unwrap().max_stream_duration.as_ref().unwrap().seconds,
        10
    );
    // Last, everything else goes to every instance.
    let last = vh.routes.last().unwrap();
    assert_eq!(clusters_of(route_action(last)), [("reviews.shop:9080".to_owned(), 1)]);
    // A service without routes has only the catch-all.
    assert_eq!(r.routes["productpage.shop:9080"].virtual_hosts[0].routes.len(), 1);
}

#[test]
fn every_referenced_cluster_exists_with_endpoints_of_its_subset() {
    let r = grpc_client(&example());
    for rc in r.routes.values() {
        for route in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
            for (c, _) in clusters_of(route_action(route)) {
                assert!(r.clusters.contains_key(&c), "route {} names missing cluster {c}", route.name);
            }
        }
    }
    assert!(r.clusters.contains_key("db.shop:5432~role=primary"), "TCP route subsets get clusters too");
    for (name, c) in &r.clusters {
        let eds = c.eds_cluster_config.as_ref().unwrap();
        assert_eq!(&eds.service_name, name);
        assert!(r.endpoints.contains_key(name), "no CLA for {name}");
    }
    let addrs = |cluster: &str| -> Vec<String> {
        r.endpoints[cluster]
            .endpoints
            .iter()
            .inspect(|l| {
                assert_eq!(l.load_balancing_weight.as_ref().map(|w| w.value), Some(1), "locality weight")
            })
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| format!("{e:?}"))
            .collect()
    };
    let v1 = addrs("reviews.shop:9080~version=v1");
    assert_eq!(v1.len(), 2);
    assert!(v1.iter().all(|e| e.contains("10.0.0.1") || e.contains("10.0.0.2")));
    let v2 = addrs("reviews.shop:9080~version=v2");
    assert_eq!(v2.len(), 1);
    assert!(v2[0].contains("10.0.0.3"));
    assert_eq!(addrs("reviews.shop:9080").len(), 3);
    assert!(addrs("db.shop:5432~role=primary").is_empty(), "no db instance registered");
}

fn upstream_tls(c: &Cluster) -> UpstreamTlsContext {
    let ts = c.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(SocketConfig::TypedConfig(any)) = &ts.config_type else { panic!() };
    unpack(any)
}

#[test]
fn clusters_pin_the_service_identity_and_carry_resilience_settings() {
    let r = grpc_client(&example());
    let c = &r.clusters["reviews.shop:9080~version=v2"];
    let tls = upstream_tls(c);
    let ctx = tls.common_tls_context.unwrap();
    assert_eq!(ctx.tls_certificate_provider_instance.unwrap().instance_name, "trellis");
    let Some(ValidationContextType::ValidationContext(v)) = ctx.validation_context_type else { panic!() };
    assert_eq!(v.ca_certificate_provider_instance.unwrap().instance_name, "trellis");
    let want = "spiffe://shop.acme.trellis.internal/ns/shop/sa/reviews";
    #[allow(deprecated)]
    let sans: Vec<_> = v.match_subject_alt_names.iter().map(|m| m.match_pattern.clone()).collect();
    assert_eq!(sans, [Some(MatchPattern::Exact(want.into()))]);
    assert_eq!(v.match_typed_subject_alt_names[0].san_type, 3);
    let th = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(th.max_requests.as_ref().unwrap().value, 200);
    assert_eq!(th.max_connections.as_ref().unwrap().value, 100);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.as_ref().unwrap().value, 5);
    assert_eq!(od.max_ejection_percent.as_ref().unwrap().value, 50);
    assert_eq!(c.health_checks.len(), 1);
    // productpage has no circuit breaker.
    assert!(r.clusters["productpage.shop:9080"].circuit_breakers.is_none());
}

fn server_filters(l: &Listener) -> (HttpConnectionManager, DownstreamTlsContext) {
    let chain = l.default_filter_chain.as_ref().unwrap();
    assert_eq!(chain.filters.len(), 1, "gRPC servers accept exactly one network filter, the HCM");
    let Some(FilterConfig::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
    let hcm: HttpConnectionManager = unpack(any);
    let Some(SocketConfig::TypedConfig(ts)) = &chain.transport_socket.as_ref().unwrap().config_type else {
        panic!()
    };
    (hcm, unpack(ts))
}

#[test]
fn grpc_servers_get_rbac_from_access_policies() {
    let view = example();
    let addr: SocketAddr = "0.0.0.0:9080".parse().unwrap();
    let l = grpc_server(&view, "reviews", addr);
    assert_eq!(l.name, "grpc/server?xds.resource.listening_address=0.0.0.0:9080");
    assert!(l.api_listener.is_none());
    let (hcm, tls) = server_filters(&l);
    assert!(tls.require_client_certificate.unwrap().value, "STRICT mesh requires client certificates");
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["trellis.rbac.allow", "envoy.filters.http.router"]);
    let Some(ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type else { panic!() };
    let rbac: RbacFilter = unpack(any);
    assert!(rbac.shadow_rules.is_none(), "gRPC does not support shadow rules");
    let rules = rbac.rules.unwrap();
    assert_eq!(rules.action, RbacAction::Allow as i32);
    let p = &rules.policies["reviews-callers/rules/0"];
    let dbg = format!("{:?}", p.principals);
    assert!(dbg.contains("spiffe://shop.acme.trellis.internal/ns/shop/sa/productpage"), "{dbg}");
    let perms = format!("{:?}", p.permissions);
    assert!(
        perms.contains(":method") && perms.contains("\"GET\"") && perms.contains("Prefix(\"/reviews\")"),
        "{perms}"
    );
    let RouteSpecifier::RouteConfig(rc) = hcm.route_specifier.unwrap() else { panic!() };
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    assert!(matches!(rc.virtual_hosts[0].routes[0].action, Some(Action::NonForwardingAction(_))));

    // A service nobody may call under default deny: an allow filter with no policy.
    let (hcm, _) = server_filters(&grpc_server(&view, "productpage", addr));
    let Some(ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type else { panic!() };
    let rbac: RbacFilter = unpack(any);
    assert!(rbac.rules.unwrap().policies.is_empty());

    // Default allow: no allow filter; deny rules still apply first.
    let mut open = view.clone();
    open.default_access = DefaultAccess::Allow;
    let mut p = open.access_policies["reviews-callers"].clone();
    p.rules[0].action = trellis_model::config::AccessAction::Deny;
    open.access_policies.insert("reviews-callers".into(), p);
    let (hcm, _) = server_filters(&grpc_server(&open, "reviews", addr));
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["trellis.rbac.deny", "envoy.filters.http.router"]);
}

#[test]
fn translation_is_deterministic() {
    let a = grpc_client(&example());
    let b = grpc_client(&example());
    assert_eq!(a, b);
    for (name, l) in &a.listeners {
        assert_eq!(l.encode_to_vec(), b.listeners[name].encode_to_vec());
    }
}

#[test]
fn versions_are_content_hashes_stable_across_runs() {
    // Several policies on one service: the RBAC map has many entries.
    let mut view = example();
    let base = view.access_policies["reviews-callers"].clone();
    for i in 0..8 {
        view.access_policies.insert(format!("p{i}"), base.clone());
    }
    let addr: SocketAddr = "10.0.0.1:9080".parse().unwrap();
    let first = crate::version(&grpc_server(&view, "reviews", addr));
    for _ in 0..20 {
        assert_eq!(crate::version(&grpc_server(&view, "reviews", addr)), first);
    }
    let (hcm, _) = server_filters(&grpc_server(&view, "reviews", addr));
    let Some(ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type else { panic!() };
    let rbac: RbacFilter = unpack(any);
    assert_eq!(rbac.rules.unwrap().policies.len(), 9, "the hand encoding decodes back");
    // A change of content changes the version; an unrelated service's resources do not.
    let before = grpc_client(&view);
    let mut changed = view.clone();
    changed.http_routes.get_mut("reviews").unwrap().rules[1].backend_refs[0].weight = 50;
    let after = grpc_client(&changed);
    let v = |r: &crate::Resources, n: &str| crate::version(&r.routes[n]);
    assert_ne!(v(&before, "reviews.shop:9080"), v(&after, "reviews.shop:9080"));
    assert_eq!(v(&before, "productpage.shop:9080"), v(&after, "productpage.shop:9080"));
}
