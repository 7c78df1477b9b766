//! Circuit breakers (connection limits and outlier detection), active health checks and
//! local rate limits.

use serde::{Deserialize, Serialize};

use super::common::{Checker, Duration, ServiceReference, TargetRef};

/// Limits on concurrent use of a service's instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Ejects instances that keep failing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// A circuit breaker's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Largest connection or request limit.
pub const MAX_LIMIT: u32 = 1_000_000;

impl CircuitBreakerSpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        if self.thresholds.is_none() && self.outlier_detection.is_none() {
            c.error("must set thresholds, outlierDetection, or both");
        }
        if let Some(t) = &self.thresholds {
            c.field("thresholds", |c| {
                for (name, v) in [
                    ("maxConnections", t.max_connections),
                    ("maxPendingRequests", t.max_pending_requests),
                    ("maxRequests", t.max_requests),
                    ("maxRetries", t.max_retries),
                ] {
                    if let Some(v) = v {
                        c.range(name, v, 1, MAX_LIMIT);
                    }
                }
            });
        }
        if let Some(o) = &self.outlier_detection {
            c.field("outlierDetection", |c| {
                for (name, v) in [
                    ("consecutive5xx", o.consecutive5xx),
                    ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
                ] {
                    if let Some(v) = v {
                        c.range(name, v, 1, 1000);
                    }
                }
                if let Some(p) = o.max_ejection_percent {
                    c.range("maxEjectionPercent", p, 0, 100);
                }
            });
        }
    }
}

/// An HTTP health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// Statuses that count as healthy; 200 when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u32>,
}

/// A TCP health check: the connection opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// An active health check's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    pub target_ref: TargetRef,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
}

impl HealthCheckSpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        if self.interval.as_millis() < 1000 {
            c.error_at("interval", "must be at least 1s");
        }
        if self.timeout > self.interval {
            c.error_at("timeout", "must not be longer than interval");
        }
        c.range("unhealthyThreshold", self.unhealthy_threshold, 1, 100);
        c.range("healthyThreshold", self.healthy_threshold, 1, 100);
        match (&self.http, &self.tcp) {
            (Some(h), None) => c.field("http", |c| {
                if !h.path.starts_with('/') || h.path.len() > 1024 || h.path.chars().any(char::is_whitespace)
                {
                    c.error_at(
                        "path",
                        "must be a path starting with '/', at most 1024 bytes, without whitespace",
                    );
                }
                c.bounded("expectedStatuses", &h.expected_statuses, 0, 16);
                c.field("expectedStatuses", |c| {
                    for (i, s) in h.expected_statuses.iter().enumerate() {
                        c.index(i, |c| {
                            if !(100..=599).contains(s) {
                                c.error(format!("must be an HTTP status between 100 and 599, got {s}"));
                            }
                        });
                    }
                });
            }),
            (None, Some(_)) => {}
            _ => c.error("must have exactly one of http or tcp"),
        }
    }
}

/// A token bucket: `requests` tokens refilled every `interval`, at most `burst` stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    pub requests: u32,
    pub interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A local rate limit's specification, enforced by each destination instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    pub target_ref: TargetRef,
    pub local: TokenBucket,
}

impl RateLimitSpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        c.field("local", |c| {
            c.range("requests", self.local.requests, 1, MAX_LIMIT);
            if self.local.interval.as_millis() < 50 {
                c.error_at("interval", "must be at least 50ms");
            }
            if let Some(b) = self.local.burst {
                c.range("burst", b, self.local.requests.max(1), MAX_LIMIT);
            }
        });
    }
}
