//! The sidecar's access loggers: every entry worth keeping goes over gRPC to the control
//! plane (`AccessLogService`, through the bootstrap's xDS cluster), which stores it under the
//! proxy's verified identity. HTTP: every error (status ≥ 400, denials included), every
//! response with a flag and every call an audit rule matched, and a sample of the rest; TCP: every connection (network RBAC
//! denials carry no status to select by, and connections are few).

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::comparison_filter::Op;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ComparisonFilter, MetadataFilter, OrFilter, ResponseFlagFilter,
    RuntimeFilter, StatusCodeFilter,
};
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, RuntimeUInt32};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::{PathSegment, path_segment::Segment};
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{MetadataMatcher, ValueMatcher};
use envoy_types::util::pack_any;

use crate::contract::{XDS_CLUSTER, access_log_name, rbac};
use crate::util::{exact, percent};

/// The runtime key of the share (in percent) of successful HTTP calls logged; 1 unless set.
pub const SAMPLE_RUNTIME_KEY: &str = "trellis.access_log.sample_percent";
const SAMPLE_PERCENT: u32 = 1;

/// Which side of the sidecar a logger sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inbound,
    Outbound,
}

fn common(side: Side) -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: match side {
            Side::Inbound => access_log_name::INBOUND,
            Side::Outbound => access_log_name::OUTBOUND,
        }
        .into(),
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: XDS_CLUSTER.into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        transport_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn filter(f: FilterSpecifier) -> AccessLogFilter {
    AccessLogFilter { filter_specifier: Some(f) }
}

/// The access logger of an HTTP connection manager.
pub fn http_access_log(side: Side) -> AccessLog {
    let errors = filter(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
        comparison: Some(ComparisonFilter {
            op: Op::Ge as i32,
            value: Some(RuntimeUInt32 {
                default_value: 400,
                runtime_key: "trellis.access_log.min_status".into(),
            }),
        }),
    }));
    // No flags listed: any flag (a reset, a timeout, no healthy upstream …).
    let flagged = filter(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter::default()));
    // An audit rule that matched: its shadow engine said `denied`.
    let audited = filter(FilterSpecifier::MetadataFilter(MetadataFilter {
        matcher: Some(MetadataMatcher {
            filter: rbac::METADATA_NAMESPACES[0].into(),
            path: vec![PathSegment {
                segment: Some(Segment::Key(format!(
                    "{}{}",
                    rbac::AUDIT_STAT_PREFIX,
                    rbac::SHADOW_RESULT_KEY
                ))),
            }],
            value: Some(ValueMatcher { match_pattern: Some(ValuePattern::StringMatch(exact("denied"))) }),
            invert: false,
        }),
        match_if_key_not_found: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
    }));
    let sample = filter(FilterSpecifier::RuntimeFilter(RuntimeFilter {
        runtime_key: SAMPLE_RUNTIME_KEY.into(),
        percent_sampled: Some(percent(SAMPLE_PERCENT)),
        ..Default::default()
    }));
    AccessLog {
        name: "envoy.access_loggers.http_grpc".into(),
        filter: Some(filter(FilterSpecifier::OrFilter(OrFilter {
            filters: vec![errors, flagged, audited, sample],
        }))),
        config_type: Some(ConfigType::TypedConfig(pack_any(HttpGrpcAccessLogConfig {
            common_config: Some(common(side)),
            ..Default::default()
        }))),
    }
}

/// The access logger of a TCP proxy.
pub fn tcp_access_log(side: Side) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.tcp_grpc".into(),
        filter: None,
        config_type: Some(ConfigType::TypedConfig(pack_any(TcpGrpcAccessLogConfig {
            common_config: Some(common(side)),
        }))),
    }
}
