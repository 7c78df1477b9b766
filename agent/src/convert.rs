//! xDS resources → the agent's configuration ([`crate::config`]). Pure: no I/O. Every field
//! the agent would have to act on and cannot is refused with its path, so that the xDS client
//! NACKs the response with a reason the propagation ledger shows, instead of ignoring it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission as PbPermission, Principal as PbPrincipal, Rbac};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, Secret, UpstreamTlsContext};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use http::{HeaderName, HeaderValue};
use prost::{Message, Name};
use trellis_ca::{SpiffeId, TrustBundle};
use trellis_xds::FAULT_FILTER;

use crate::config::*;

/// What the agent knows of itself that the resources do not say.
#[derive(Debug, Clone)]
pub struct Local {
    /// Inbound listeners bind this address instead of the wildcard the resources name.
    pub address: IpAddr,
    /// Service port → the application's port on 127.0.0.1, overriding the local clusters'.
    pub app_ports: BTreeMap<u16, u16>,
    /// The agent's identity: the trust domain a bundle belongs to.
    pub id: SpiffeId,
}

/// One resource, converted.
#[derive(Debug, Clone)]
pub enum Converted {
    Listener(Arc<Listener>),
    Routes(Arc<RouteTable>),
    Cluster(Arc<Cluster>),
    Endpoints(Arc<Vec<SocketAddr>>),
    /// The mesh's roots (`Some`) or the workload certificate (`None`: the agent holds it).
    Secret(Option<Arc<TrustBundle>>),
}

/// Longest regex program accepted (bytes of compiled size), as a bound on peer input.
const REGEX_SIZE: usize = 1 << 20;

type R<T> = Result<T, String>;

fn unsupported(what: &str) -> String {
    format!("{what} is not supported by trellis-agent")
}

fn decode<M: Message + Name + Default>(any: &Any, at: &str) -> R<M> {
    if any.type_url != M::type_url() {
        return Err(format!("{at}: expected {}, got {}", M::type_url(), any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{at}: {e}"))
}

/// Converts one resource of `type_url`.
pub fn convert(type_url: &str, any: &Any, local: &Local) -> R<Converted> {
    if any.type_url != type_url {
        return Err(format!("resource of type {} in a {type_url} response", any.type_url));
    }
    if type_url == PbListener::type_url() {
        listener(&decode(any, "listener")?, local).map(|l| Converted::Listener(Arc::new(l)))
    } else if type_url == RouteConfiguration::type_url() {
        let rc: RouteConfiguration = decode(any, "route configuration")?;
        let table = route_table(&rc, "").map_err(|e| format!("route configuration {:?}: {e}", rc.name))?;
        Ok(Converted::Routes(Arc::new(table)))
    } else if type_url == PbCluster::type_url() {
        cluster(&decode(any, "cluster")?, local).map(|c| Converted::Cluster(Arc::new(c)))
    } else if type_url == ClusterLoadAssignment::type_url() {
        endpoints(&decode(any, "endpoints")?).map(|e| Converted::Endpoints(Arc::new(e)))
    } else if type_url == Secret::type_url() {
        secret(&decode(any, "secret")?, local).map(Converted::Secret)
    } else {
        Err(unsupported(&format!("type {type_url}")))
    }
}

fn socket_addr(a: Option<&Address>, at: &str) -> R<SocketAddr> {
    match a.and_then(|a| a.address.as_ref()) {
        Some(AddressKind::SocketAddress(s)) => {
            let ip: IpAddr =
                s.address.parse().map_err(|_| format!("{at}: {:?} is not an IP address", s.address))?;
            let port = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("{at}: port {p}"))?
                }
                _ => return Err(format!("{at}: {}", unsupported("a named port"))),
            };
            Ok(SocketAddr::new(ip, port))
        }
        Some(_) => Err(format!("{at}: {}", unsupported("a non-socket address"))),
        None => Err(format!("{at}: missing")),
    }
}

fn listener(l: &PbListener, local: &Local) -> R<Listener> {
    let at = |f: &str| format!("listener {:?}: {f}", l.name);
    if l.api_listener.is_some() {
        return Err(at(&unsupported("api_listener (a proxyless gRPC listener)")));
    }
    for (i, f) in l.listener_filters.iter().enumerate() {
        match &f.config_type {
            Some(ListenerFilterConfig::TypedConfig(a)) if a.type_url == TlsInspector::type_url() => {}
            _ => {
                return Err(at(&format!(
                    "listener_filters[{i}] {:?}: {}",
                    f.name,
                    unsupported("this listener filter")
                )));
            }
        }
    }
    if l.default_filter_chain.is_some() {
        return Err(at(&unsupported("default_filter_chain")));
    }
    let mut addr = socket_addr(l.address.as_ref(), &at("address"))?;
    let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
    let (mut tls, mut plaintext, mut handler) = (false, false, None);
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let at_chain = |f: &str| at(&format!("filter_chains[{i}].{f}"));
        let transport =
            chain.filter_chain_match.as_ref().map(|m| m.transport_protocol.as_str()).unwrap_or("");
        if let Some(m) = &chain.filter_chain_match {
            let only_transport = envoy_types::pb::envoy::config::listener::v3::FilterChainMatch {
                transport_protocol: m.transport_protocol.clone(),
                ..Default::default()
            };
            if *m != only_transport {
                return Err(at_chain(&unsupported("filter_chain_match on anything but transport_protocol")));
            }
        }
        match (&chain.transport_socket, transport) {
            (Some(ts), "" | "tls") => {
                downstream_tls(ts).map_err(|e| at_chain(&format!("transport_socket: {e}")))?;
                tls = true;
            }
            (None, "" | "raw_buffer") => plaintext = true,
            _ => {
                return Err(at_chain(&format!(
                    "transport protocol {transport:?} with this transport socket: {}",
                    unsupported("it")
                )));
            }
        }
        // PERMISSIVE chains repeat the same filters; the first chain's are the listener's.
        if handler.is_none() {
            handler = Some(filters(&chain.filters, inbound).map_err(|e| at_chain(&e))?);
        }
    }
    let handler = handler.ok_or_else(|| at("no filter chain"))?;
    let side = if inbound {
        if !tls {
            return Err(at(&unsupported("an inbound listener without mTLS")));
        }
        addr.set_ip(local.address);
        Side::Inbound { plaintext }
    } else {
        if tls {
            return Err(at(&unsupported("TLS on an outbound listener")));
        }
        let service = l.name.strip_prefix("outbound:").and_then(|n| n.split('.').next()).map(str::to_owned);
        Side::Outbound { service }
    };
    Ok(Listener { name: l.name.clone(), addr, side, handler })
}

/// The inbound mTLS context: client certificates required. The certificates themselves are
/// the agent's own SVID and the mesh bundle, whatever secret names the context gives.
fn downstream_tls(ts: &TransportSocket) -> R<()> {
    let Some(SocketConfig::TypedConfig(any)) = &ts.config_type else {
        return Err("missing typed_config".into());
    };
    let ctx: DownstreamTlsContext = decode(any, "typed_config")?;
    if !ctx.require_client_certificate.is_some_and(|b| b.value) {
        return Err(unsupported("TLS without client certificates"));
    }
    Ok(())
}

fn filters(filters: &[envoy_types::pb::envoy::config::listener::v3::Filter], inbound: bool) -> R<Handler> {
    let mut access = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let at = |e: String| format!("filters[{i}] {:?}: {e}", f.name);
        let Some(FilterConfig::TypedConfig(any)) = &f.config_type else {
            return Err(at("missing typed_config".into()));
        };
        let last = i + 1 == filters.len();
        if any.type_url == NetworkRbac::type_url() {
            let r: NetworkRbac = decode(any, "rbac").map_err(at)?;
            access.extend(rbac_filters(&f.name, r.rules.as_ref(), r.shadow_rules.as_ref()).map_err(at)?);
        } else if any.type_url == HttpConnectionManager::type_url() && last {
            if !access.is_empty() {
                return Err(at(unsupported("network RBAC before an HTTP connection manager")));
            }
            return hcm(&decode(any, "hcm").map_err(at)?, inbound).map_err(at);
        } else if any.type_url == TcpProxy::type_url() && last {
            let t: TcpProxy = decode(any, "tcp_proxy").map_err(at)?;
            let backends = match t.cluster_specifier {
                Some(TcpClusterSpecifier::Cluster(c)) => vec![(c, 1)],
                Some(TcpClusterSpecifier::WeightedClusters(w)) => {
                    w.clusters.into_iter().filter(|c| c.weight > 0).map(|c| (c.name, c.weight)).collect()
                }
                _ => return Err(at(unsupported("this tcp_proxy cluster specifier"))),
            };
            if backends.is_empty() {
                return Err(at("no cluster with a positive weight".into()));
            }
            return Ok(Handler::Tcp { access, backends });
        } else {
            return Err(at(unsupported(&format!("network filter {} here", any.type_url))));
        }
    }
    Err("no terminal filter (HTTP connection manager or TCP proxy)".into())
}

fn hcm(h: &HttpConnectionManager, inbound: bool) -> R<Handler> {
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(route_table(rc, "route_config.")?))
        }
        _ => return Err(unsupported("this route specifier")),
    };
    let mut access = Vec::new();
    let (mut rate_limit, mut fault) = (None, None);
    for (i, f) in h.http_filters.iter().enumerate() {
        let at = |e: String| format!("http_filters[{i}] {:?}: {e}", f.name);
        let Some(HttpFilterConfig::TypedConfig(any)) = &f.config_type else {
            return Err(at("missing typed_config".into()));
        };
        if any.type_url == HttpRbac::type_url() {
            let r: HttpRbac = decode(any, "rbac").map_err(at)?;
            access.extend(rbac_filters(&f.name, r.rules.as_ref(), r.shadow_rules.as_ref()).map_err(at)?);
        } else if any.type_url == LocalRateLimit::type_url() && inbound {
            rate_limit = Some(local_rate_limit(&decode(any, "local_ratelimit").map_err(at)?).map_err(at)?);
        } else if any.type_url == HttpFault::type_url() && f.name == FAULT_FILTER {
            // Every outbound HCM carries it, empty: routes that inject faults override it.
            fault = Some(fault_config(&decode(any, "fault").map_err(at)?).map_err(at)?);
        } else if !(f.is_optional || (any.type_url == Router::type_url() && i + 1 == h.http_filters.len())) {
            return Err(at(unsupported(&format!("HTTP filter {}", any.type_url))));
        }
    }
    if !inbound && !access.is_empty() {
        return Err(unsupported("access filters on an outbound listener"));
    }
    let forward_client_cert = h.forward_client_cert_details == ForwardClientCertDetails::SanitizeSet as i32;
    Ok(Handler::Http { access, rate_limit, routes, forward_client_cert, fault })
}

/// Fault injection's config (a route's, or the filter's): a fixed delay and an abort with
/// an HTTP or gRPC status, each for a share of requests; anything the agent cannot honour
/// (faults chosen by headers, for some callers or clusters only, rate-limited responses, a
/// cap on active faults) is refused.
fn fault_config(f: &HttpFault) -> R<Fault> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    if !f.upstream_cluster.is_empty() || !f.headers.is_empty() || !f.downstream_nodes.is_empty() {
        return Err(unsupported("faults for some clusters, headers or callers only"));
    }
    if f.max_active_faults.is_some() || f.response_rate_limit.is_some() {
        return Err(unsupported("max_active_faults and response_rate_limit"));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(t)) => {
                let t = duration(t);
                if t > MAX_FAULT_DELAY {
                    return Err(format!("delay.fixed_delay: at most {MAX_FAULT_DELAY:?}"));
                }
                Some((t, share(d.percentage.as_ref()).map_err(|e| format!("delay.percentage: {e}"))?))
            }
            _ => return Err(format!("delay: {}", unsupported("a delay chosen by a header"))),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let kind = match a.error_type {
                Some(ErrorType::HttpStatus(s)) => Abort::Http(
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .and_then(|s| http::StatusCode::from_u16(s).ok())
                        .ok_or(format!("abort.http_status {s}: from 200 to 599"))?,
                ),
                Some(ErrorType::GrpcStatus(c)) => Abort::Grpc(
                    u8::try_from(c).ok().filter(|c| *c <= 16).ok_or(format!("abort.grpc_status {c}"))?,
                ),
                _ => return Err(format!("abort: {}", unsupported("an abort chosen by a header"))),
            };
            if !a.response_body.is_empty() {
                return Err(format!("abort: {}", unsupported("a response_body")));
            }
            Some((kind, share(a.percentage.as_ref()).map_err(|e| format!("abort.percentage: {e}"))?))
        }
    };
    Ok(Fault { delay, abort })
}

/// Longest injected delay, a bound on how long a config can hold a request: the longest
/// duration the API accepts.
const MAX_FAULT_DELAY: Duration = Duration::from_millis(trellis_model::config::Duration::MAX_MILLIS);

/// A `FractionalPercent` in parts per million (none when absent, as Envoy reads it; a
/// numerator above its denominator is all).
fn share(p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> R<Share> {
    let Some(p) = p else { return Ok(Share(0)) };
    let per = match p.denominator {
        0 => 100,
        1 => 10_000,
        2 => 1_000_000,
        other => return Err(format!("denominator {other}")),
    };
    Ok(Share(p.numerator.min(per) * (Share::PER / per)))
}

/// A local rate limit enforced for every request (429 past it); anything subtler is refused.
fn local_rate_limit(l: &LocalRateLimit) -> R<crate::resilience::RateLimit> {
    let everyone = |p: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
        p.as_ref()
            .and_then(|p| p.default_value.as_ref())
            .is_some_and(|v| v.numerator == 100 && v.denominator == 0)
    };
    if !everyone(&l.filter_enabled) || !everyone(&l.filter_enforced) {
        return Err(unsupported("a rate limit enabled or enforced for only part of the requests"));
    }
    if !l.descriptors.is_empty() || l.status.is_some() || !l.response_headers_to_add.is_empty() {
        return Err(unsupported("rate-limit descriptors, statuses and headers"));
    }
    let b = l.token_bucket.as_ref().ok_or("no token_bucket")?;
    let interval = b
        .fill_interval
        .as_ref()
        .map(duration)
        .filter(|d| !d.is_zero())
        .ok_or("fill_interval must be positive")?;
    let per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if b.max_tokens == 0 || per_fill == 0 {
        return Err("max_tokens and tokens_per_fill must be positive".into());
    }
    Ok(crate::resilience::RateLimit { max: b.max_tokens, per_fill, interval })
}

fn rbac_filters(name: &str, rules: Option<&Rbac>, shadow: Option<&Rbac>) -> R<Vec<RbacFilter>> {
    let mut out = Vec::new();
    for (r, is_shadow) in [(rules, false), (shadow, true)] {
        let Some(r) = r else { continue };
        let mode = match (RbacAction::try_from(r.action), is_shadow) {
            // A shadow deny rule is an audit rule: it logs, never refuses.
            (Ok(RbacAction::Deny), true) => RbacMode::Audit,
            (Ok(RbacAction::Allow), false) => RbacMode::Allow,
            (Ok(RbacAction::Deny), false) => RbacMode::Deny,
            (a, _) => {
                return Err(unsupported(&format!(
                    "RBAC action {a:?}{}",
                    if is_shadow { " in shadow rules" } else { "" }
                )));
            }
        };
        let mut policies: Vec<(String, Policy)> = Vec::new();
        for (pname, p) in &r.policies {
            let at = |e: String| format!("policies[{pname:?}]: {e}");
            if p.condition.is_some() || p.checked_condition.is_some() {
                return Err(at(unsupported("a policy condition")));
            }
            let principals = p.principals.iter().map(principal).collect::<R<Vec<_>>>().map_err(at)?;
            let permissions = p.permissions.iter().map(permission).collect::<R<Vec<_>>>().map_err(at)?;
            policies.push((pname.clone(), Policy { principals, permissions }));
        }
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(RbacFilter { name: name.to_owned(), mode, policies });
    }
    Ok(out)
}

fn principal(p: &PbPrincipal) -> R<Principal> {
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Authenticated(a)) => {
            Principal::Authenticated(a.principal_name.as_ref().map(string_matcher).transpose()?)
        }
        Some(Identifier::AndIds(s)) => Principal::And(s.ids.iter().map(principal).collect::<R<_>>()?),
        Some(Identifier::OrIds(s)) => Principal::Or(s.ids.iter().map(principal).collect::<R<_>>()?),
        Some(Identifier::NotId(p)) => Principal::Not(Box::new(principal(p)?)),
        other => return Err(unsupported(&format!("RBAC principal {other:?}"))),
    })
}

fn permission(p: &PbPermission) -> R<Permission> {
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::AndRules(s)) => Permission::And(s.rules.iter().map(permission).collect::<R<_>>()?),
        Some(Rule::OrRules(s)) => Permission::Or(s.rules.iter().map(permission).collect::<R<_>>()?),
        Some(Rule::NotRule(p)) => Permission::Not(Box::new(permission(p)?)),
        Some(Rule::Header(h)) => Permission::Header(header_matcher(h)?),
        Some(Rule::UrlPath(m)) => match &m.rule {
            Some(PathRule::Path(s)) => Permission::Path(string_matcher(s)?),
            None => return Err("url_path without a rule".into()),
        },
        other => return Err(unsupported(&format!("RBAC permission {other:?}"))),
    })
}

fn regex(pattern: &str) -> R<regex::Regex> {
    // Envoy's safe_regex matches the whole value.
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE)
        .build()
        .map_err(|e| format!("regex {pattern:?}: {e}"))
}

fn string_matcher(m: &StringMatcher) -> R<StrMatch> {
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StrMatch::Exact(s.clone(), ic),
        Some(MatchPattern::Prefix(s)) => StrMatch::Prefix(s.clone(), ic),
        Some(MatchPattern::Suffix(s)) => StrMatch::Suffix(s.clone(), ic),
        Some(MatchPattern::Contains(s)) => StrMatch::Contains(s.clone(), ic),
        Some(MatchPattern::SafeRegex(r)) if !ic => StrMatch::Regex(regex(&r.regex)?),
        other => return Err(unsupported(&format!("string matcher {other:?}"))),
    })
}

fn header_matcher(h: &HeaderMatcher) -> R<HeaderMatch> {
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => Some(string_matcher(m)?),
        Some(HeaderMatchSpecifier::PresentMatch(true)) => None,
        other => return Err(format!("header {:?}: {}", h.name, unsupported(&format!("matcher {other:?}")))),
    };
    if h.treat_missing_header_as_empty {
        return Err(unsupported("treat_missing_header_as_empty"));
    }
    Ok(HeaderMatch { name: h.name.to_ascii_lowercase(), value, invert: h.invert_match })
}

fn duration(d: &PbDuration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.clamp(0, 999_999_999) as u32)
}

fn route_table(rc: &RouteConfiguration, at: &str) -> R<RouteTable> {
    let mut hosts = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::new();
        for (j, r) in vh.routes.iter().enumerate() {
            let at = |e: String| format!("{at}virtual_hosts[{i}].routes[{j}] {:?}: {e}", r.name);
            routes.push(route(r).map_err(at)?);
        }
        for d in &vh.domains {
            if d != "*" && d.contains('*') && !d.starts_with("*.") {
                return Err(format!(
                    "{at}virtual_hosts[{i}]: domain {d:?}: {}",
                    unsupported("this wildcard")
                ));
            }
        }
        hosts.push(VirtualHost { domains: vh.domains.clone(), routes });
    }
    Ok(RouteTable { hosts })
}

fn route(r: &envoy_types::pb::envoy::config::route::v3::Route) -> R<Route> {
    let mut fault = None;
    for (name, any) in &r.typed_per_filter_config {
        let at = |e: String| format!("typed_per_filter_config[{name:?}]: {e}");
        if name != FAULT_FILTER || any.type_url != HttpFault::type_url() {
            return Err(at(unsupported("a per-route config of a filter other than fault injection")));
        }
        fault = Some(fault_config(&decode(any, "fault").map_err(at)?).map_err(at)?);
    }
    let m = r.r#match.as_ref().ok_or("no match")?;
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => PathMatch::Regex(regex(&re.regex)?),
        other => return Err(unsupported(&format!("path match {other:?}"))),
    };
    if m.case_sensitive.as_ref().is_some_and(|b| !b.value) || m.runtime_fraction.is_some() || m.grpc.is_some()
    {
        return Err(unsupported("case-insensitive, fractional or gRPC-only route matches"));
    }
    let headers = m.headers.iter().map(header_matcher).collect::<R<Vec<_>>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => Ok((q.name.clone(), string_matcher(s)?)),
            other => Err(unsupported(&format!("query parameter match {other:?}"))),
        })
        .collect::<R<Vec<_>>>()?;
    let Some(Action::Route(a)) = &r.action else {
        return Err(unsupported("a route action other than forwarding to clusters"));
    };
    if !a.request_mirror_policies.is_empty() {
        return Err(unsupported("request mirroring"));
    }
    if !a.hash_policy.is_empty() || a.prefix_rewrite.len() + a.host_rewrite_specifier.iter().count() > 0 {
        return Err(unsupported("hash policies and rewrites"));
    }
    let backends: Vec<(String, u32)> = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .filter(|(_, w)| *w > 0)
            .collect(),
        other => return Err(unsupported(&format!("cluster specifier {other:?}"))),
    };
    if backends.is_empty() {
        return Err("no cluster with a positive weight".into());
    }
    let timeout = a.timeout.as_ref().map(duration).filter(|d| !d.is_zero());
    let retry = a.retry_policy.as_ref().map(retry).transpose()?;
    let mut set_headers = Vec::new();
    for h in &r.request_headers_to_add {
        let hv = h.header.as_ref().ok_or("request_headers_to_add: no header")?;
        let name = HeaderName::try_from(hv.key.as_str()).map_err(|_| format!("header name {:?}", hv.key))?;
        let value =
            HeaderValue::try_from(hv.value.as_str()).map_err(|_| format!("header value for {:?}", hv.key))?;
        // 0 = APPEND_IF_EXISTS_OR_ADD, 2 = OVERWRITE_IF_EXISTS_OR_ADD.
        let overwrite = match h.append_action {
            0 => false,
            2 => true,
            other => return Err(unsupported(&format!("header append action {other}"))),
        };
        set_headers.push((name, value, overwrite));
    }
    let remove_headers = r
        .request_headers_to_remove
        .iter()
        .map(|n| HeaderName::try_from(n.as_str()).map_err(|_| format!("header name {n:?}")))
        .collect::<R<Vec<_>>>()?;
    Ok(Route {
        name: r.name.clone(),
        path,
        headers,
        query,
        backends,
        timeout,
        retry,
        set_headers,
        remove_headers,
        fault,
    })
}

/// Most tries of one request, bounding what a route can make the agent send.
const MAX_RETRIES: u32 = 10;

fn retry(p: &envoy_types::pb::envoy::config::route::v3::RetryPolicy) -> R<Retry> {
    let mut on = Vec::new();
    for cond in p.retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        on.push(match cond {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "refused-stream" => RetryOn::RefusedStream,
            "cancelled" => RetryOn::Grpc(1),
            "deadline-exceeded" => RetryOn::Grpc(4),
            "resource-exhausted" => RetryOn::Grpc(8),
            "unavailable" => RetryOn::Grpc(14),
            other => return Err(format!("retry_on {other:?}: {}", unsupported("this condition"))),
        });
    }
    let retries = p.num_retries.as_ref().map_or(1, |n| n.value);
    if retries > MAX_RETRIES {
        return Err(format!("num_retries {retries}: at most {MAX_RETRIES}"));
    }
    let backoff = p.retry_back_off.as_ref();
    let base = backoff.and_then(|b| b.base_interval.as_ref()).map_or(Duration::from_millis(25), duration);
    let max = backoff.and_then(|b| b.max_interval.as_ref()).map_or(base * 10, duration);
    Ok(Retry { on, retries, per_try: p.per_try_timeout.as_ref().map(duration), base, max })
}

fn cluster(c: &PbCluster, local: &Local) -> R<Cluster> {
    let at = |f: &str| format!("cluster {:?}: {f}", c.name);
    let limit = match &c.circuit_breakers {
        None => None,
        Some(cb) => circuit_breaker(cb).map_err(|e| at(&format!("circuit_breakers: {e}")))?,
    };
    let outlier = c
        .outlier_detection
        .as_ref()
        .map(outlier)
        .transpose()
        .map_err(|e| at(&format!("outlier_detection: {e}")))?;
    let health_check = match c.health_checks.as_slice() {
        [] => None,
        [one] => Some(health_check(one).map_err(|e| at(&format!("health_checks[0]: {e}")))?),
        _ => return Err(at(&unsupported("several health_checks"))),
    };
    let lb = lb_policy(c).map_err(|e| at(&e))?;
    let mut h2 = false;
    for (name, any) in &c.typed_extension_protocol_options {
        let opts: HttpProtocolOptions = decode(any, name).map_err(|e| at(&e))?;
        match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => h2 = true,
                Some(ProtocolConfig::HttpProtocolOptions(_)) => {}
                _ => return Err(at(&unsupported("this upstream protocol"))),
            },
            _ => return Err(at(&unsupported("these upstream protocol options"))),
        }
    }
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(t).map_err(|_| at(&format!("type {t}")))?
        }
        _ => return Err(at(&unsupported("a cluster type extension"))),
    };
    let target = match kind {
        DiscoveryType::Static => {
            if c.transport_socket.is_some() {
                return Err(at(&unsupported("TLS to a static cluster")));
            }
            let cla =
                c.load_assignment.as_ref().ok_or_else(|| at("static cluster without load_assignment"))?;
            let eps = endpoints(cla).map_err(|e| at(&e))?;
            let [addr] = eps.as_slice() else {
                return Err(at(&unsupported("a static cluster with other than one endpoint")));
            };
            let mut addr = *addr;
            // The application of an inbound port: moved when the flags say it listens elsewhere.
            let port = c.name.strip_prefix("inbound:").and_then(|p| p.parse::<u16>().ok());
            if let Some(app) = port.and_then(|p| local.app_ports.get(&p)) {
                addr.set_port(*app);
            }
            Target::Local(addr)
        }
        DiscoveryType::Eds => {
            let eds = c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).filter(|n| !n.is_empty());
            let peer = upstream_peer(c.transport_socket.as_ref())
                .map_err(|e| at(&format!("transport_socket: {e}")))?;
            Target::Mesh { eds: eds.unwrap_or_else(|| c.name.clone()), peer: Arc::new(peer) }
        }
        other => return Err(at(&unsupported(&format!("cluster type {other:?}")))),
    };
    if health_check.is_some() && !matches!(target, Target::Mesh { .. }) {
        return Err(at(&unsupported("health checks of a static cluster")));
    }
    Ok(Cluster { name: c.name.clone(), target, h2, limit, outlier, health_check, lb })
}

/// Most endpoints least request draws for one pick, a bound on a config's per-request work.
const MAX_CHOICES: u32 = 100;

fn lb_policy(c: &PbCluster) -> R<crate::resilience::LbPolicy> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    if c.load_balancing_policy.is_some() {
        return Err(unsupported("load_balancing_policy"));
    }
    match (LbPolicy::try_from(c.lb_policy), &c.lb_config) {
        (Ok(LbPolicy::RoundRobin), None) => Ok(crate::resilience::LbPolicy::RoundRobin),
        (Ok(LbPolicy::LeastRequest), None) => Ok(crate::resilience::LbPolicy::LeastRequest { choices: 2 }),
        (Ok(LbPolicy::LeastRequest), Some(LbConfig::LeastRequestLbConfig(l))) => {
            if l.active_request_bias.is_some() || l.slow_start_config.is_some() {
                return Err(unsupported("active_request_bias and slow_start_config"));
            }
            let choices = l.choice_count.as_ref().map_or(2, |v| v.value);
            if !(2..=MAX_CHOICES).contains(&choices) {
                return Err(format!("choice_count {choices}: from 2 to {MAX_CHOICES}"));
            }
            Ok(crate::resilience::LbPolicy::LeastRequest { choices })
        }
        (Ok(LbPolicy::RoundRobin | LbPolicy::LeastRequest), Some(_)) => Err(unsupported("this lb_config")),
        _ => Err(unsupported(&format!("lb_policy {}", c.lb_policy))),
    }
}

/// Shortest interval between checks, a bound on what a route can make the agent send.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn health_check(
    h: &envoy_types::pb::envoy::config::core::v3::HealthCheck,
) -> R<crate::resilience::HealthCheckPolicy> {
    use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
    let (http_path, expected) = match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => {
            if !http.host.is_empty() || !http.request_headers_to_add.is_empty() || http.send.is_some() {
                return Err(unsupported("health-check hosts, headers and payloads"));
            }
            let expected = http
                .expected_statuses
                .iter()
                .map(|r| {
                    Ok((
                        u16::try_from(r.start).map_err(|_| "status")?,
                        u16::try_from(r.end).map_err(|_| "status")?,
                    ))
                })
                .collect::<Result<Vec<_>, &str>>()
                .map_err(|e| format!("expected_statuses: bad {e}"))?;
            (Some(http.path.clone()), expected)
        }
        Some(HealthChecker::TcpHealthCheck(tcp)) if tcp.send.is_none() && tcp.receive.is_empty() => {
            (None, vec![])
        }
        other => return Err(unsupported(&format!("health checker {other:?}"))),
    };
    let need = |d: &Option<PbDuration>, f: &str| {
        d.as_ref().map(duration).filter(|d| !d.is_zero()).ok_or(format!("{f} must be positive"))
    };
    Ok(crate::resilience::HealthCheckPolicy {
        interval: need(&h.interval, "interval")?.max(MIN_CHECK_INTERVAL),
        timeout: need(&h.timeout, "timeout")?,
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map_or(1, |v| v.value).max(1),
        healthy_threshold: h.healthy_threshold.as_ref().map_or(1, |v| v.value).max(1),
        http_path,
        expected,
    })
}

/// The one limit the agent keeps: requests (or TCP connections) in flight, the smaller of
/// `max_requests` and `max_connections`. Nothing queues, so `max_pending_requests` is met
/// by failing at once.
fn circuit_breaker(cb: &envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers) -> R<Option<u32>> {
    let mut limit: Option<u32> = None;
    for (i, t) in cb.thresholds.iter().enumerate() {
        if t.priority != 0 {
            return Err(format!("thresholds[{i}]: {}", unsupported("a non-default priority")));
        }
        if t.max_retries.is_some() || t.retry_budget.is_some() || t.max_connection_pools.is_some() {
            return Err(format!(
                "thresholds[{i}]: {}",
                unsupported("max_retries, retry budgets and pool limits")
            ));
        }
        for v in [&t.max_connections, &t.max_requests].into_iter().flatten() {
            limit = Some(limit.map_or(v.value, |l| l.min(v.value)));
        }
    }
    if !cb.per_host_thresholds.is_empty() {
        return Err(unsupported("per_host_thresholds"));
    }
    Ok(limit)
}

fn outlier(
    o: &envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
) -> R<crate::resilience::OutlierPolicy> {
    if o.consecutive_gateway_failure.is_some() || o.consecutive_local_origin_failure.is_some() {
        return Err(unsupported("gateway and local-origin failure counts"));
    }
    if o.enforcing_success_rate.is_some() || o.failure_percentage_threshold.is_some() {
        return Err(unsupported("success-rate and failure-percentage ejection"));
    }
    let base = o.base_ejection_time.as_ref().map_or(Duration::from_secs(30), duration);
    if base.is_zero() {
        return Err("base_ejection_time must be positive".into());
    }
    Ok(crate::resilience::OutlierPolicy {
        consecutive_5xx: o.consecutive_5xx.as_ref().map_or(5, |v| v.value).max(1),
        base_ejection: base.min(Duration::from_secs(3600)),
        max_ejection_percent: o.max_ejection_percent.as_ref().map_or(10, |v| v.value).min(100),
    })
}

/// The one SPIFFE ID an upstream must present (a URI SAN matched exactly).
fn upstream_peer(ts: Option<&TransportSocket>) -> R<SpiffeId> {
    let Some(SocketConfig::TypedConfig(any)) = ts.and_then(|t| t.config_type.as_ref()) else {
        return Err(unsupported("plaintext to a mesh service"));
    };
    let ctx: UpstreamTlsContext = decode(any, "typed_config")?;
    let common = ctx.common_tls_context.ok_or("no common_tls_context")?;
    let validation = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(c)) => c.default_validation_context,
        Some(ValidationContextType::ValidationContext(v)) => Some(v),
        _ => None,
    }
    .ok_or("no validation context")?;
    let ids: Vec<&str> = validation
        .match_typed_subject_alt_names
        .iter()
        .filter(|m| m.san_type == 3)
        .filter_map(|m| match m.matcher.as_ref()?.match_pattern.as_ref()? {
            MatchPattern::Exact(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| format!("subject alt name {one:?}: {e}")),
        _ => Err(unsupported("upstream TLS that does not pin exactly one URI SAN")),
    }
}

fn endpoints(cla: &ClusterLoadAssignment) -> R<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for (i, loc) in cla.endpoints.iter().enumerate() {
        for (j, e) in loc.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}].lb_endpoints[{j}]");
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err(format!("{at}: {}", unsupported("a named endpoint")));
            };
            let addr = socket_addr(ep.address.as_ref(), &at)?;
            let usable = [HealthStatus::Unknown, HealthStatus::Healthy, HealthStatus::Degraded]
                .iter()
                .any(|s| *s as i32 == e.health_status);
            if usable {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

fn secret(s: &Secret, local: &Local) -> R<Option<Arc<TrustBundle>>> {
    match &s.r#type {
        // The agent is the one that writes these files; it serves from the SVID it holds.
        Some(SecretType::TlsCertificate(_)) => Ok(None),
        Some(SecretType::ValidationContext(v)) => {
            let pem = match v.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
                Some(Specifier::InlineString(s)) => s.clone(),
                Some(Specifier::InlineBytes(b)) => {
                    String::from_utf8(b.clone()).map_err(|_| "trusted_ca is not UTF-8")?
                }
                _ => {
                    return Err(format!(
                        "secret {:?}: {}",
                        s.name,
                        unsupported("a trusted_ca that is not inline")
                    ));
                }
            };
            crate::svid::bundle_from_pem(&local.id, &pem)
                .map(|b| Some(Arc::new(b)))
                .map_err(|e| format!("secret {:?}: {e:#}", s.name))
        }
        _ => Err(format!("secret {:?}: {}", s.name, unsupported("this secret type"))),
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
