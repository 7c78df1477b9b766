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
