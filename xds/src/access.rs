//! Server Listeners for xDS-enabled gRPC servers, with access policies as RBAC.
//!
//! Evaluation order (the same for every client): deny rules first — a match is refused;
//! then, when the mesh's default access is `deny`, a request must match an allow rule.
//! Audit rules never refuse; gRPC has no shadow rules, so for gRPC servers they are left
//! out (Envoy sidecars will carry them as `shadow_rules`).

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

use crate::CERT_PROVIDER;
use crate::names::{grpc_server_listener_name, spiffe_id};
use crate::routes::router_filter;
use crate::util::{exact, regex, safe_regex};
use crate::view::MeshView;

/// Name of the deny-rules RBAC filter instance.
pub const RBAC_DENY: &str = "trellis.rbac.deny";
/// Name of the allow-rules RBAC filter instance.
pub const RBAC_ALLOW: &str = "trellis.rbac.allow";

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
fn policy(view: &MeshView, rule: &AccessRule) -> Policy {
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
        None => vec![any_permission()],
        Some(to) => {
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
    };
    Policy { permissions, principals, ..Default::default() }
}

/// The RBAC filter config, encoded by hand so that its policy map is written in name order:
/// prost writes `HashMap`s in iteration order, which differs between runs, and equal
/// content must encode to equal bytes for content-hash versions (XDS.md §0).
fn rbac_any(action: RbacAction, policies: &BTreeMap<String, Policy>) -> Any {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut rbac = Rbac { action: action as i32, ..Default::default() }.encode_to_vec();
    for (name, policy) in policies {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, name, &mut entry);
        prost::encoding::message::encode(2, policy, &mut entry);
        encode_key(2, WireType::LengthDelimited, &mut rbac);
        encode_varint(entry.len() as u64, &mut rbac);
        rbac.extend_from_slice(&entry);
    }
    // RBAC filter { rules (1) = rbac }: every other field stays at its default.
    let mut filter = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut filter);
    encode_varint(rbac.len() as u64, &mut filter);
    filter.extend_from_slice(&rbac);
    Any { type_url: RbacFilter::type_url(), value: filter }
}

fn rbac_filter(name: &str, action: RbacAction, policies: BTreeMap<String, Policy>) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(rbac_any(action, &policies))),
        ..Default::default()
    }
}

/// The RBAC filters for a service, deny before allow, router last.
pub(crate) fn http_filters(view: &MeshView, service: &str) -> Vec<HttpFilter> {
    let mut deny = BTreeMap::new();
    let mut allow = BTreeMap::new();
    for (name, p) in view.access_policies.iter().filter(|(_, p)| p.target_ref.service == service) {
        for (i, rule) in p.rules.iter().enumerate() {
            let id = format!("{name}/{i}");
            match rule.action {
                AccessAction::Deny => {
                    deny.insert(id, policy(view, rule));
                }
                AccessAction::Allow => {
                    allow.insert(id, policy(view, rule));
                }
                AccessAction::Audit => {}
            }
        }
    }
    let mut filters = Vec::new();
    if !deny.is_empty() {
        filters.push(rbac_filter(RBAC_DENY, RbacAction::Deny, deny));
    }
    if view.default_access == DefaultAccess::Deny {
        // With no allow rule this denies every request: default deny means exactly that.
        filters.push(rbac_filter(RBAC_ALLOW, RbacAction::Allow, allow));
    }
    filters.push(router_filter());
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
