//! Access policies: who may call a service, and which requests.

use serde::{Deserialize, Serialize};

use super::common::{Checker, ServiceReference, TargetRef};
use super::matching::{MAX_VALUE_MATCHES, PathMatch, ValueMatch, check_method};
use crate::{IdError, SpiffeId, TrustDomain};

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AccessAction {
    Allow,
    Deny,
    /// Counted and logged as it would be denied, never enforced.
    Audit,
}

/// A caller: a service of the same mesh, or any SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Which requests a rule covers (HTTP services only); all when omitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

/// One rule: sources, an optional request match, and an action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    pub action: AccessAction,
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RequestMatch>,
}

/// An access policy's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicySpec {
    pub target_ref: TargetRef,
    pub rules: Vec<AccessRule>,
}

/// Bounds.
pub const MAX_RULES: usize = 64;
pub const MAX_SOURCES: usize = 64;

impl AccessPolicySpec {
    pub(crate) fn check(&self, c: &mut Checker, refs: &mut Vec<ServiceReference>) {
        self.target_ref.check(c, refs);
        c.bounded("rules", &self.rules, 1, MAX_RULES);
        c.field("rules", |c| {
            for (i, rule) in self.rules.iter().enumerate() {
                c.index(i, |c| {
                    c.bounded("from", &rule.from, 1, MAX_SOURCES);
                    c.field("from", |c| {
                        for (j, s) in rule.from.iter().enumerate() {
                            c.index(j, |c| match (&s.service, &s.identity) {
                                (Some(svc), None) => {
                                    c.label("service", svc);
                                    refs.push(ServiceReference {
                                        field: format!("{}.service", c.here()),
                                        service: svc.clone(),
                                        port: None,
                                    });
                                }
                                (None, Some(id)) => {
                                    if let Err(e) = check_identity(id) {
                                        c.error_at("identity", e.to_string());
                                    }
                                }
                                _ => c.error("must name exactly one of service or identity"),
                            });
                        }
                    });
                    if let Some(to) = &rule.to {
                        c.field("to", |c| {
                            c.bounded("methods", &to.methods, 0, 9);
                            c.field("methods", |c| {
                                for (j, m) in to.methods.iter().enumerate() {
                                    c.index(j, |c| check_method(c, m));
                                }
                            });
                            c.bounded("paths", &to.paths, 0, 32);
                            c.field("paths", |c| {
                                for (j, p) in to.paths.iter().enumerate() {
                                    c.index(j, |c| p.check(c));
                                }
                            });
                            c.bounded("headers", &to.headers, 0, MAX_VALUE_MATCHES);
                            c.field("headers", |c| {
                                for (j, h) in to.headers.iter().enumerate() {
                                    c.index(j, |c| h.check(c, true));
                                }
                            });
                        });
                    }
                });
            }
        });
    }
}

/// A caller's identity: a workload SPIFFE ID, or, as before, a trust domain's own ID
/// (`spiffe://<trust domain>`); both parsed by the one SPIFFE rule in [`crate::SpiffeId`].
fn check_identity(id: &str) -> Result<(), IdError> {
    match id.strip_prefix("spiffe://") {
        Some(td) if !td.contains('/') => TrustDomain::parse(td).map(drop),
        _ => SpiffeId::parse(id).map(drop),
    }
}
