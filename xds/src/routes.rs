//! Client-side Listeners (an HTTP connection manager in an `api_listener`) and route
//! configurations from HTTP routes.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, MaxStreamDuration, RequestMirrorPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use trellis_model::config::{
    BackendRef, HttpRouteMatch, HttpRouteRule, PathMatchType, RetryOn, Tags, ValueMatch, ValueMatchType,
};

use crate::clusters::backend_port;
use crate::names::cluster_name;
use crate::util::{ads, duration, exact, percent, regex, safe_regex, u32v};
use crate::view::MeshView;

/// Name of the fault filter instance (per-route configs are keyed by it).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Name of the router filter instance.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

pub(crate) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    }
}

/// The fault filter, empty: routes that inject faults override it by its name.
pub(crate) fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: FAULT_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(HttpFault::default()))),
        ..Default::default()
    }
}

/// A client Listener: HCM in an `api_listener`, routes over ADS under the same name. The
/// fault filter is always present (empty unless a route overrides it), router last.
pub(crate) fn api_listener(name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.into(),
        })),
        http_filters: vec![fault_filter(), router_filter()],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener { api_listener: Some(pack_any(hcm)) }),
        ..Default::default()
    }
}

/// The route configuration of one dial target: the rules of every HTTPRoute that targets
/// `service` (routes by name, rules in order, each match its own Route), then a catch-all to
/// all of the service's instances.
/// `domains` are the virtual host's: the dial target for gRPC, `*` for a sidecar's listener
/// that carries one service only.
pub(crate) fn route_config(
    view: &MeshView,
    service: &str,
    port: u32,
    name: &str,
    domains: Vec<String>,
) -> RouteConfiguration {
    let mut routes = Vec::new();
    for (route_name, spec) in view.http_routes.iter().filter(|(_, r)| r.target_ref.service == service) {
        for (i, rule) in spec.rules.iter().enumerate() {
            let matches: Vec<Option<&HttpRouteMatch>> =
                if rule.matches.is_empty() { vec![None] } else { rule.matches.iter().map(Some).collect() };
            for (j, m) in matches.into_iter().enumerate() {
                routes.push(route(view, port, format!("{route_name}/{i}/{j}"), m, rule));
            }
        }
    }
    routes.push(Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
                service,
                &view.mesh,
                port,
                &Default::default(),
            ))),
            timeout: Some(no_timeout()),
            ..Default::default()
        })),
        ..Default::default()
    });
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost { name: service.into(), domains, routes, ..Default::default() }],
        ..Default::default()
    }
}

/// A route without a request timeout has none: Envoy's default of 15 s would cut long
/// streams, and the model promises no limit. gRPC ignores `RouteAction.timeout`.
pub(crate) fn no_timeout() -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 0 }
}

fn header_matcher(name: &str, m: &ValueMatch) -> HeaderMatcher {
    let matcher = match m.kind {
        ValueMatchType::Exact => exact(&m.value),
        ValueMatchType::RegularExpression => safe_regex(&m.value),
    };
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(matcher)),
        ..Default::default()
    }
}

fn route_match(m: Option<&HttpRouteMatch>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        };
    };
    let path = match &m.path {
        None => PathSpecifier::Prefix(String::new()),
        Some(p) => match p.kind {
            PathMatchType::Exact => PathSpecifier::Path(p.value.clone()),
            PathMatchType::PathPrefix => PathSpecifier::Prefix(p.value.clone()),
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(regex(&p.value)),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().map(|h| header_matcher(&h.name, h)).collect();
    if let Some(method) = &m.method {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(method))),
            ..Default::default()
        });
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(match q.kind {
                ValueMatchType::Exact => exact(&q.value),
                ValueMatchType::RegularExpression => safe_regex(&q.value),
            })),
        })
        .collect();
    RouteMatch { path_specifier: Some(path), headers, query_parameters, ..Default::default() }
}

/// The cluster a backend reference reaches from a listener on `from_port` (the API checks
/// that the service exists, so the fallback is never used).
fn backend_cluster(view: &MeshView, from_port: u32, service: &str, port: Option<u32>, tags: &Tags) -> String {
    let port = backend_port(view, service, port, from_port).unwrap_or(from_port);
    cluster_name(service, &view.mesh, port, tags)
}

fn retry_on(r: RetryOn) -> &'static str {
    match r {
        RetryOn::FiveXx => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::Reset => "reset",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Retriable4xx => "retriable-4xx",
        RetryOn::RefusedStream => "refused-stream",
        RetryOn::Cancelled => "cancelled",
        RetryOn::DeadlineExceeded => "deadline-exceeded",
        RetryOn::Unavailable => "unavailable",
        RetryOn::ResourceExhausted => "resource-exhausted",
    }
}

fn route(
    view: &MeshView,
    port: u32,
    name: String,
    m: Option<&HttpRouteMatch>,
    rule: &HttpRouteRule,
) -> Route {
    let backend = |b: &BackendRef| backend_cluster(view, port, &b.service, b.port, &b.tags);
    // Weight-0 backends carry no traffic; gRPC drops them too, and validation guarantees
    // that at least one weight is positive.
    let live: Vec<&BackendRef> = rule.backend_refs.iter().filter(|b| b.weight > 0).collect();
    let cluster_specifier = if live.len() == 1 {
        ClusterSpecifier::Cluster(backend(live[0]))
    } else {
        let clusters: Vec<ClusterWeight> = live
            .iter()
            .map(|b| ClusterWeight { name: backend(b), weight: Some(u32v(b.weight)), ..Default::default() })
            .collect();
        ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() })
    };
    let mut action = RouteAction { cluster_specifier: Some(cluster_specifier), ..Default::default() };
    if let Some(req) = rule.timeouts.as_ref().and_then(|t| t.request) {
        // Envoy reads `timeout`; gRPC reads `max_stream_duration`.
        action.timeout = Some(duration(req));
        action.max_stream_duration =
            Some(MaxStreamDuration { max_stream_duration: Some(duration(req)), ..Default::default() });
    } else {
        action.timeout = Some(no_timeout());
    }
    if let Some(r) = &rule.retry {
        let mut on: Vec<&str> = r.retry_on.iter().map(|x| retry_on(*x)).collect();
        if on.is_empty() {
            on = vec!["5xx", "connect-failure", "unavailable"];
        }
        let per_try = r.per_try_timeout.or(rule.timeouts.as_ref().and_then(|t| t.backend_request));
        action.retry_policy = Some(RetryPolicy {
            retry_on: on.join(","),
            num_retries: Some(u32v(r.attempts)),
            per_try_timeout: per_try.map(duration),
            retry_back_off: r.backoff.as_ref().map(|b| RetryBackOff {
                base_interval: Some(duration(b.base_interval)),
                max_interval: b.max_interval.map(duration),
            }),
            ..Default::default()
        });
    }
    if let Some(m) = &rule.mirror {
        action.request_mirror_policies = vec![RequestMirrorPolicy {
            cluster: backend_cluster(view, port, &m.service, None, &m.tags),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(percent(m.percent)),
                ..Default::default()
            }),
            ..Default::default()
        }];
    }
    let mut typed_per_filter_config: HashMap<String, Any> = HashMap::new();
    if let Some(f) = &rule.fault {
        let fault = HttpFault {
            delay: f.delay.as_ref().map(|d| FaultDelay {
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.fixed_delay))),
                percentage: Some(percent(d.percent)),
            }),
            abort: f.abort.as_ref().map(|a| FaultAbort {
                error_type: match (a.http_status, a.grpc_status) {
                    (_, Some(grpc)) => Some(ErrorType::GrpcStatus(grpc)),
                    (http, None) => http.map(ErrorType::HttpStatus),
                },
                percentage: Some(percent(a.percent)),
                ..Default::default()
            }),
            ..Default::default()
        };
        typed_per_filter_config.insert(FAULT_FILTER.into(), pack_any(fault));
    }
    let (mut to_add, mut to_remove) = (Vec::new(), Vec::new());
    if let Some(h) = &rule.request_header_modifier {
        for (list, append) in [(&h.set, 2), (&h.add, 0)] {
            for hv in list {
                to_add.push(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: hv.name.to_ascii_lowercase(),
                        value: hv.value.clone(),
                        ..Default::default()
                    }),
                    // 0 = APPEND_IF_EXISTS_OR_ADD, 2 = OVERWRITE_IF_EXISTS_OR_ADD.
                    append_action: append,
                    ..Default::default()
                });
            }
        }
        to_remove = h.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
    }
    Route {
        name,
        r#match: Some(route_match(m)),
        action: Some(Action::Route(action)),
        typed_per_filter_config,
        request_headers_to_add: to_add,
        request_headers_to_remove: to_remove,
        ..Default::default()
    }
}
