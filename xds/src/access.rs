//! Access policies as RBAC: server Listeners for xDS-enabled gRPC servers, and the RBAC
//! filters of Envoy sidecars' inbound listeners.
//!
//! Evaluation order (the same for every client): deny rules first — a match is refused;
//! then, when the mesh's default access is `deny`, a request must match an allow rule.
//! Audit rules never refuse; gRPC has no shadow rules, so for gRPC servers they are left
//! out, and Envoy sidecars carry them as `shadow_rules` of their own filter.

use std::collections::BTreeMap;

use prost::{Message, Name};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule, Set as PermissionSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, NonForwardingAction, Route, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use envoy_types::util::pack_any;
use trellis_model::config::{AccessAction, AccessRule, DefaultAccess, MtlsMode, PathMatchType, ValueMatchType};

use crate::contract::{CERT_PROVIDER, rbac};
use crate::names::{grpc_server_listener_name, spiffe_id};
use crate::routes::router_filter;
use crate::util::{exact, regex, safe_regex};
use crate::view::MeshView;

/// Name of the deny-rules RBAC filter instance.
pub const RBAC_DENY: &str = "trellis.rbac.deny";
/// Name of the allow-rules RBAC filter instance.
pub const RBAC_ALLOW: &str = "trellis.rbac.allow";
/// Name of the audit-rules (shadow) RBAC filter instance, sidecars only.
pub const RBAC_AUDIT: &str = "trellis.rbac.audit";

fn any_permission() -> Permission {
    Permission { rule: Some(Rule::Any(true)) }
}

fn or(rules: Vec<Permission>) -> Permission {
    Permission { rule: Some(Rule::OrRules(PermissionSet { rules })) }
}

fn header_permission(name: &str, m: StringMatcher) -> Permission {
    Permission {
        rule: Some(Rule::Header(HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(m)),
            ..Default::default()
        })),
    }
}

/// One rule as an RBAC policy: any of the sources, and every given request condition.
/// `l4` (a TCP port) drops the request conditions: the policy covers whole connections.
fn policy(view: &MeshView, rule: &AccessRule, l4: bool) -> Policy {
    let principals = rule
        .from
        .iter()
        .map(|s| {
            let id = match (&s.service, &s.identity) {
                (Some(svc), _) => spiffe_id(&view.trust_domain, &view.mesh, svc),
                (None, Some(id)) => id.clone(),
                (None, None) => unreachable!("validation requires one of service or identity"),
            };
            Principal {
                identifier: Some(Identifier::Authenticated(Authenticated {
                    principal_name: Some(exact(&id)),
                })),
            }
        })
        .collect();
    let permissions = match &rule.to {
        Some(to) if !l4 => {
            let mut all = Vec::new();
            if !to.methods.is_empty() {
                all.push(or(to.methods.iter().map(|m| header_permission(":method", exact(m))).collect()));
            }
            if !to.paths.is_empty() {
                all.push(or(to
                    .paths
                    .iter()
                    .map(|p| {
                        let m = match p.kind {
                            PathMatchType::Exact => exact(&p.value),
                            PathMatchType::PathPrefix => StringMatcher {
                                match_pattern: Some(MatchPattern::Prefix(p.value.clone())),
                                ..Default::default()
                            },
                            PathMatchType::RegularExpression => StringMatcher {
                                match_pattern: Some(MatchPattern::SafeRegex(regex(&p.value))),
                                ..Default::default()
                            },
                        };
                        Permission {
                            rule: Some(Rule::UrlPath(PathMatcher { rule: Some(PathRule::Path(m)) })),
                        }
                    })
                    .collect()));
            }
            for h in &to.headers {
                let m = match h.kind {
                    ValueMatchType::Exact => exact(&h.value),
                    ValueMatchType::RegularExpression => safe_regex(&h.value),
                };
                all.push(header_permission(&h.name.to_ascii_lowercase(), m));
            }
            if all.is_empty() {
                vec![any_permission()]
            } else {
                vec![Permission { rule: Some(Rule::AndRules(PermissionSet { rules: all })) }]
            }
        }
        _ => vec![any_permission()],
    };
    Policy { permissions, principals, ..Default::default() }
}

/// The access rules that target one service as RBAC policies named `<policy>/rules/<index>`
/// (`contract::rbac`, so that a denial names the rule that decided it),
/// by action.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub deny: BTreeMap<String, Policy>,
    pub allow: BTreeMap<String, Policy>,
    pub audit: BTreeMap<String, Policy>,
}

impl Rules {
    /// For a TCP port (`l4`) request conditions cannot be checked, and the rules fail closed:
    /// a Deny or Audit rule with conditions covers the whole connection, and an Allow rule
    /// with conditions allows nothing.
    pub(crate) fn of(view: &MeshView, service: &str, l4: bool) -> Rules {
        let mut out = Rules::default();
        for (name, p) in view.access_policies.iter().filter(|(_, p)| p.target_ref.service == service) {
            for (i, rule) in p.rules.iter().enumerate() {
                let id = rbac::policy_name(name, i);
                let set = match rule.action {
                    AccessAction::Deny => &mut out.deny,
                    AccessAction::Allow if l4 && rule.to.is_some() => continue,
                    AccessAction::Allow => &mut out.allow,
                    AccessAction::Audit => &mut out.audit,
                };
                set.insert(id, policy(view, rule, l4));
            }
        }
        out
    }
}

/// `config.rbac.v3.RBAC`, encoded by hand so that its policy map is written in name order:
/// prost writes `HashMap`s in iteration order, which differs between runs, and equal
/// content must encode to equal bytes for content-hash versions (XDS.md §0).
fn rbac_bytes(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Vec<u8> {
    let mut rbac = Rbac { action: action as i32, ..Default::default() }.encode_to_vec();
    for (name, policy) in policies {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, name, &mut entry);
        prost::encoding::message::encode(2, policy, &mut entry);
        put_field(&mut rbac, 2, &entry);
    }
    rbac
}

fn put_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// An RBAC filter config (HTTP or network: both keep `rules` in field 1 and `shadow_rules`
/// in field 2): `rest` as prost encodes it (no maps), then the rules in canonical form.
/// Protobuf accepts fields in any order.
fn rbac_any<M: Message + Name>(
    rest: M,
    rules: Option<(RbacAction, &BTreeMap<String, Policy>)>,
    shadow_rules: Option<(RbacAction, &BTreeMap<String, Policy>)>,
) -> Any {
    let mut value = rest.encode_to_vec();
    for (tag, r) in [(1, rules), (2, shadow_rules)] {
        if let Some((action, policies)) = r {
            put_field(&mut value, tag, &rbac_bytes(action, policies));
        }
    }
    Any { type_url: M::type_url(), value }
}

fn http_rbac_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter { name: name.into(), config_type: Some(ConfigType::TypedConfig(config)), ..Default::default() }
}

/// The RBAC filters of gRPC servers: deny before allow, router last. gRPC has no shadow
/// rules, so Audit rules are left out.
pub(crate) fn http_filters(view: &MeshView, service: &str) -> Vec<HttpFilter> {
    let rules = Rules::of(view, service, false);
    let mut filters = Vec::new();
    if !rules.deny.is_empty() {
        let config = rbac_any(RbacFilter::default(), Some((RbacAction::Deny, &rules.deny)), None);
        filters.push(http_rbac_filter(RBAC_DENY, config));
    }
    if view.default_access == DefaultAccess::Deny {
        // With no allow rule this denies every request: default deny means exactly that.
        let config = rbac_any(RbacFilter::default(), Some((RbacAction::Allow, &rules.allow)), None);
        filters.push(http_rbac_filter(RBAC_ALLOW, config));
    }
    filters.push(router_filter());
    filters
}

/// Prefix of the counters of Audit rules (`<prefix>shadow_denied` counts would-be denials).
pub const AUDIT_STAT_PREFIX: &str = rbac::AUDIT_STAT_PREFIX;

/// The RBAC HTTP filters of an Envoy sidecar's inbound port, in order: audit (shadow rules
/// only, so it sees every request and refuses none), deny, then allow under default deny.
pub(crate) fn sidecar_http_filters(view: &MeshView, service: &str) -> Vec<HttpFilter> {
    let rules = Rules::of(view, service, false);
    let mut filters = Vec::new();
    if !rules.audit.is_empty() {
        let rest = RbacFilter { shadow_rules_stat_prefix: AUDIT_STAT_PREFIX.into(), ..Default::default() };
        // An Audit rule is a Deny rule on trial: its matches count as `shadow_denied`.
        filters
            .push(http_rbac_filter(RBAC_AUDIT, rbac_any(rest, None, Some((RbacAction::Deny, &rules.audit)))));
    }
    if !rules.deny.is_empty() {
        let config = rbac_any(RbacFilter::default(), Some((RbacAction::Deny, &rules.deny)), None);
        filters.push(http_rbac_filter(RBAC_DENY, config));
    }
    if view.default_access == DefaultAccess::Deny {
        let mut allow = rules.allow;
        if let Some((name, policy)) = health_check_policy(view, service) {
            allow.insert(name, policy);
        }
        let config = rbac_any(RbacFilter::default(), Some((RbacAction::Allow, &allow)), None);
        filters.push(http_rbac_filter(RBAC_ALLOW, config));
    }
    filters
}

/// Name of the allow policy that lets active health checks through; rule policies are
/// `<policy>/rules/<index>`, so a name without `/` never meets one.
pub const HEALTH_CHECK_POLICY: &str = "trellis-health-check";

/// Under default deny, the active health checks of the service's callers: their sidecars
/// check with their own identity, which the service's access policies need not allow, and a
/// refused check marks every instance unhealthy (Envoy then routes in panic mode). The
/// check's request, `GET <path>` and nothing else, is allowed from every identity of the
/// mesh (an mTLS peer verified against the mesh's roots, whose SPIFFE ID is in the mesh's
/// trust domain). Deny rules still apply: a caller denied the service is denied its check,
/// and it sends no traffic there anyway.
fn health_check_policy(view: &MeshView, service: &str) -> Option<(String, Policy)> {
    let path = &view.health_check(service)?.http.as_ref()?.path;
    let check = Permission {
        rule: Some(Rule::AndRules(PermissionSet {
            rules: vec![
                Permission {
                    rule: Some(Rule::UrlPath(PathMatcher { rule: Some(PathRule::Path(exact(path))) })),
                },
                header_permission(":method", exact("GET")),
            ],
        })),
    };
    let mesh_identity = Principal {
        identifier: Some(Identifier::Authenticated(Authenticated {
            principal_name: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{}/", view.trust_domain))),
                ..Default::default()
            }),
        })),
    };
    Some((
        HEALTH_CHECK_POLICY.to_owned(),
        Policy { permissions: vec![check], principals: vec![mesh_identity], ..Default::default() },
    ))
}

/// The network RBAC filters of a sidecar's inbound TCP port (checked once per connection),
/// in the same order as for HTTP; `stat_prefix` names the port's counters.
pub(crate) fn sidecar_network_filters(view: &MeshView, service: &str, stat_prefix: &str) -> Vec<Filter> {
    let rules = Rules::of(view, service, true);
    let filter = |name: &str, config: Any| Filter {
        name: name.into(),
        config_type: Some(FilterConfig::TypedConfig(config)),
    };
    let rest = |shadow: &str| NetworkRbac {
        stat_prefix: stat_prefix.into(),
        shadow_rules_stat_prefix: shadow.into(),
        ..Default::default()
    };
    let mut filters = Vec::new();
    if !rules.audit.is_empty() {
        let config = rbac_any(rest(AUDIT_STAT_PREFIX), None, Some((RbacAction::Deny, &rules.audit)));
        filters.push(filter(RBAC_AUDIT, config));
    }
    if !rules.deny.is_empty() {
        filters.push(filter(RBAC_DENY, rbac_any(rest(""), Some((RbacAction::Deny, &rules.deny)), None)));
    }
    if view.default_access == DefaultAccess::Deny {
        filters.push(filter(RBAC_ALLOW, rbac_any(rest(""), Some((RbacAction::Allow, &rules.allow)), None)));
    }
    filters
}

fn provider() -> CertificateProviderPluginInstance {
    CertificateProviderPluginInstance { instance_name: CERT_PROVIDER.into(), certificate_name: String::new() }
}

pub(crate) fn server_listener(view: &MeshView, service: &str, addr: std::net::SocketAddr) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("inbound_{service}"),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: format!("inbound_{service}"),
            virtual_hosts: vec![VirtualHost {
                name: "inbound".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    }),
                    action: Some(Action::NonForwardingAction(NonForwardingAction {})),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: http_filters(view, service),
        ..Default::default()
    };
    let tls = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: view.mtls == MtlsMode::Strict }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_provider_instance: Some(provider()),
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    ca_certificate_provider_instance: Some(provider()),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    Listener {
        name: grpc_server_listener_name(addr),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
                ..Default::default()
            })),
        }),
        default_filter_chain: Some(FilterChain {
            name: "inbound".into(),
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(FilterConfig::TypedConfig(pack_any(hcm))),
            }],
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfig::TypedConfig(pack_any(tls))),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
