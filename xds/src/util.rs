//! Small builders for protobuf values.

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

/// `{ads: {}, resource_api_version: V3}`.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn duration(d: trellis_model::config::Duration) -> PbDuration {
    let ms = d.as_millis();
    PbDuration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub fn u32v(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

pub fn exact(s: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(MatchPattern::Exact(s.to_owned())), ..Default::default() }
}

pub fn regex(s: &str) -> RegexMatcher {
    RegexMatcher { regex: s.to_owned(), ..Default::default() }
}

pub fn safe_regex(s: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(MatchPattern::SafeRegex(regex(s))), ..Default::default() }
}

/// A percentage out of a hundred.
pub fn percent(p: u32) -> FractionalPercent {
    FractionalPercent { numerator: p, denominator: 0 }
}

/// A socket address `ip:port`.
pub fn socket_address(ip: &str, port: u32) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// The TLS transport socket with this context (Downstream- or UpstreamTlsContext).
pub fn tls_socket<M: prost::Message + prost::Name>(
    ctx: M,
) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(ctx))),
    }
}
