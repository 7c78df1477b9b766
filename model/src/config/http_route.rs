//! HTTP routes, with the semantics of the Gateway API HTTPRoute as used for meshes:
//! matches, weighted backends that select subsets by tags, timeouts, retries, header
//! changes, mirroring and fault injection.

use serde::{Deserialize, Serialize};

use super::common::{Checker, Duration, PortReference, ServiceReference, TargetRef};
use super::matching::{MAX_VALUE_MATCHES, PathMatch, ValueMatch, check_method};
use crate::Tags;

/// One way a request can match a rule; all given conditions must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A destination: a service, optionally a subset of its instances by tags, and a weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    pub service: String,
    /// Instance tags the subset must carry, e.g. `{"version": "v2"}`.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Relative share of traffic (0 to 1,000,000); 1 when omitted.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

fn one() -> u32 {
    1
}

/// Timeouts of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// One attempt at a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
}

/// When to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    Retriable4xx,
    RefusedStream,
    Cancelled,
    DeadlineExceeded,
    Unavailable,
    ResourceExhausted,
}

/// Exponential backoff between retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    pub base_interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// A retry policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first attempt, 0 to 10.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// A header to set or add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

/// Changes to request headers before forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Copies a share of requests to another backend, ignoring its responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub service: String,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Percentage of requests mirrored, 0 to 100; 100 when omitted.
    #[serde(default = "hundred")]
    pub percent: u32,
}

fn hundred() -> u32 {
    100
}

/// Delays a share of requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    pub percent: u32,
}

/// Fails a share of requests with a status: an HTTP status (a gRPC caller gets the gRPC
/// status it maps to), or a gRPC status (`grpc-status`, with HTTP 200), one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// 200 to 599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// A gRPC status code, 1 (CANCELLED) to 16 (UNAUTHENTICATED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub percent: u32,
}

/// Fault injection, for testing resilience.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// One rule of a route: the first rule whose match holds decides the backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Any one match selects the rule; every request when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// An HTTP route's specification: how calls to `targetRef` are routed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    pub target_ref: TargetRef,
    pub rules: Vec<HttpRouteRule>,
}

/// Bounds.
pub const MAX_RULES: usize = 64;
pub const MAX_MATCHES: usize = 16;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_WEIGHT: u32 = 1_000_000;
pub const MAX_HEADER_CHANGES: usize = 16;

pub(crate) fn check_backends(c: &mut Checker, backends: &[BackendRef], refs: &mut Vec<ServiceReference>) {
    c.bounded("backendRefs", backends, 1, MAX_BACKENDS);
    c.field("backendRefs", |c| {
        for (i, b) in backends.iter().enumerate() {
            c.index(i, |c| {
                c.label("service", &b.service);
                refs.push(ServiceReference {
                    field: format!("{}.service", c.here()),
                    service: b.service.clone(),
                    port: b.port.map(|port| PortReference { field: format!("{}.port", c.here()), port }),
                });
                c.range("weight", b.weight, 0, MAX_WEIGHT);
                if let Some(p) = b.port {
                    c.range("port", p, 1, 65535);
                }
            });
        }
    });
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        c.error_at(
            "backendRefs",
            "weights sum to 0: no request could be routed; give at least one backend a weight",
        );
    }
}

fn check_header_name(c: &mut Checker, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(':')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        c.error("must be a header name of 1-256 token characters, not a pseudo-header");
    }
}

impl HttpRouteSpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        c.bounded("rules", &self.rules, 1, MAX_RULES);
        c.field("rules", |c| {
            for (i, rule) in self.rules.iter().enumerate() {
                c.index(i, |c| rule.check(c, refs));
            }
            // Rules are tried in order, so nothing after a rule that takes every request is
            // ever used: a mistake in the order, refused rather than silently ignored.
            if let Some(all) = self.rules.iter().position(HttpRouteRule::matches_every_request) {
                for i in all + 1..self.rules.len() {
                    c.index(i, |c| {
                        c.error(format!(
                            "unreachable: rules[{all}] matches every request (no match condition), and \
                             rules are tried in order; move this rule before it"
                        ))
                    });
                }
            }
        });
    }
}

impl HttpRouteMatch {
    /// True when no condition narrows the match (no path but `/` as a prefix, no header,
    /// query parameter or method).
    pub fn matches_every_request(&self) -> bool {
        let any_path = match &self.path {
            None => true,
            Some(p) => p.kind == super::matching::PathMatchType::PathPrefix && p.value == "/",
        };
        any_path && self.headers.is_empty() && self.query_params.is_empty() && self.method.is_none()
    }
}

impl HttpRouteRule {
    /// True when the rule takes every request: no matches, or one without conditions.
    pub fn matches_every_request(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().any(HttpRouteMatch::matches_every_request)
    }

    fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        c.bounded("matches", &self.matches, 0, MAX_MATCHES);
        c.field("matches", |c| {
            for (i, m) in self.matches.iter().enumerate() {
                c.index(i, |c| {
                    if let Some(p) = &m.path {
                        c.field("path", |c| p.check(c));
                    }
                    c.bounded("headers", &m.headers, 0, MAX_VALUE_MATCHES);
                    c.field("headers", |c| {
                        for (j, h) in m.headers.iter().enumerate() {
                            c.index(j, |c| h.check(c, true));
                        }
                    });
                    c.bounded("queryParams", &m.query_params, 0, MAX_VALUE_MATCHES);
                    c.field("queryParams", |c| {
                        for (j, q) in m.query_params.iter().enumerate() {
                            c.index(j, |c| q.check(c, false));
                        }
                    });
                    if let Some(method) = &m.method {
                        c.field("method", |c| check_method(c, method));
                    }
                });
            }
        });
        check_backends(c, &self.backend_refs, refs);
        if let Some(t) = &self.timeouts
            && let (Some(req), Some(backend)) = (t.request, t.backend_request)
            && backend > req
        {
            c.error_at("timeouts", "backendRequest must not be longer than request");
        }
        if let Some(r) = &self.retry {
            c.field("retry", |c| {
                c.range("attempts", r.attempts, 0, 10);
                c.bounded("retryOn", &r.retry_on, 0, 10);
                if let Some(b) = &r.backoff
                    && let Some(max) = b.max_interval
                    && max < b.base_interval
                {
                    c.error_at("backoff", "maxInterval must not be shorter than baseInterval");
                }
            });
        }
        if let Some(h) = &self.request_header_modifier {
            c.field("requestHeaderModifier", |c| {
                for (field, list) in [("set", &h.set), ("add", &h.add)] {
                    c.bounded(field, list, 0, MAX_HEADER_CHANGES);
                    c.field(field, |c| {
                        for (i, hv) in list.iter().enumerate() {
                            c.index(i, |c| {
                                c.field("name", |c| check_header_name(c, &hv.name));
                                if hv.value.len() > 4096
                                    || hv.value.chars().any(|ch| ch == '\r' || ch == '\n' || ch == '\0')
                                {
                                    c.error_at("value", "must be at most 4096 bytes without CR, LF or NUL");
                                }
                            });
                        }
                    });
                }
                c.bounded("remove", &h.remove, 0, MAX_HEADER_CHANGES);
                c.field("remove", |c| {
                    for (i, n) in h.remove.iter().enumerate() {
                        c.index(i, |c| check_header_name(c, n));
                    }
                });
            });
        }
        if let Some(m) = &self.mirror {
            c.field("mirror", |c| {
                c.label("service", &m.service);
                refs.push(ServiceReference {
                    field: format!("{}.service", c.here()),
                    service: m.service.clone(),
                    port: None,
                });
                c.range("percent", m.percent, 0, 100);
            });
        }
        if let Some(f) = &self.fault {
            c.field("fault", |c| {
                if f.delay.is_none() && f.abort.is_none() {
                    c.error("must have a delay, an abort, or both");
                }
                if let Some(d) = &f.delay {
                    c.field("delay", |c| c.range("percent", d.percent, 0, 100));
                }
                if let Some(a) = &f.abort {
                    c.field("abort", |c| {
                        match (a.http_status, a.grpc_status) {
                            (Some(s), None) => c.range("httpStatus", s, 200, 599),
                            // 0 is OK: not a failure.
                            (None, Some(s)) => c.range("grpcStatus", s, 1, 16),
                            (Some(_), Some(_)) => c.error("must have httpStatus or grpcStatus, not both"),
                            (None, None) => c.error("must have httpStatus or grpcStatus"),
                        }
                        c.range("percent", a.percent, 0, 100);
                    });
                }
            });
        }
    }
}
