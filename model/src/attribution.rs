//! "Why was this call denied?": what decided a logged call, from what the proxy logged (the
//! RBAC policy a denial named, the audit rule that matched, whether the caller presented an
//! identity). Envoy and the agent log alike (`contract::rbac`), so one rule reads both.

use std::fmt;

use crate::contract::rbac;

/// What kind of decision let a logged call through or refused it (a stable name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum AttributionKind {
    DenyRule,
    DefaultDeny,
    NoMtlsIdentity,
    Policy,
    AuditRule,
    Allowed,
}

/// What decided one logged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// A deny rule of an AccessPolicy refused it.
    DeniedByRule { policy: String, rule: usize },
    /// The mesh denies by default and no allow rule matched the caller's identity.
    DefaultDeny,
    /// The caller presented no mTLS identity (plaintext), so no rule could allow it.
    NoMtlsIdentity,
    /// Refused by a policy that is not an AccessPolicy rule (Trellis's own), by name.
    DeniedByPolicy(String),
    /// Let through, but an audit rule matched: enforced, it would have refused the call.
    Audited { policy: String, rule: usize },
    /// Let through, no audit rule matched.
    Allowed,
}

impl Attribution {
    /// Reads a logged call: whether it was denied, the policy the denial named, the audit
    /// policy that matched, and whether the caller had an mTLS identity.
    pub fn of(
        denied: bool,
        denying_policy: Option<&str>,
        audit_policy: Option<&str>,
        identified: bool,
    ) -> Self {
        if denied {
            return match denying_policy.filter(|p| *p != rbac::NO_POLICY) {
                Some(p) => match rbac::parse_policy_name(p) {
                    Some((policy, rule)) => Attribution::DeniedByRule { policy: policy.to_owned(), rule },
                    None => Attribution::DeniedByPolicy(p.to_owned()),
                },
                None if identified => Attribution::DefaultDeny,
                None => Attribution::NoMtlsIdentity,
            };
        }
        match audit_policy.and_then(rbac::parse_policy_name) {
            Some((policy, rule)) => Attribution::Audited { policy: policy.to_owned(), rule },
            None => Attribution::Allowed,
        }
    }

    /// The kind of decision (for APIs and filters).
    pub fn kind(&self) -> AttributionKind {
        match self {
            Attribution::DeniedByRule { .. } => AttributionKind::DenyRule,
            Attribution::DefaultDeny => AttributionKind::DefaultDeny,
            Attribution::NoMtlsIdentity => AttributionKind::NoMtlsIdentity,
            Attribution::DeniedByPolicy(_) => AttributionKind::Policy,
            Attribution::Audited { .. } => AttributionKind::AuditRule,
            Attribution::Allowed => AttributionKind::Allowed,
        }
    }

    /// The AccessPolicy resource and rule index that decided, if one did.
    pub fn rule(&self) -> Option<(&str, usize)> {
        match self {
            Attribution::DeniedByRule { policy, rule } | Attribution::Audited { policy, rule } => {
                Some((policy, *rule))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribution::DeniedByRule { policy, rule } => {
                write!(f, "denied by rule {rule} of AccessPolicy {policy}")
            }
            Attribution::DefaultDeny => f.write_str("default deny: no allow rule matched the caller"),
            Attribution::NoMtlsIdentity => f.write_str("no mTLS identity: the caller sent plaintext"),
            Attribution::DeniedByPolicy(p) => write!(f, "denied by policy {p}"),
            Attribution::Audited { policy, rule } => {
                write!(f, "allowed; audit rule {rule} of AccessPolicy {policy} matched")
            }
            Attribution::Allowed => f.write_str("allowed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_decision_is_told_apart() {
        let name = rbac::policy_name("reviews-callers", 2);
        assert_eq!(name, "reviews-callers/rules/2");
        assert_eq!(rbac::policy_of_details(&rbac::denied_details(Some(&name))), Some(name.as_str()));
        assert_eq!(rbac::policy_of_details(&rbac::denied_details(None)), None);
        assert!(rbac::is_denial(&rbac::denied_details(None)));
        let cases = [
            (
                Attribution::of(true, Some(&name), None, true),
                Attribution::DeniedByRule { policy: "reviews-callers".into(), rule: 2 },
            ),
            (Attribution::of(true, None, None, true), Attribution::DefaultDeny),
            (Attribution::of(true, Some("none"), None, true), Attribution::DefaultDeny),
            (Attribution::of(true, None, None, false), Attribution::NoMtlsIdentity),
            (
                Attribution::of(true, Some("trellis-health-check"), None, true),
                Attribution::DeniedByPolicy("trellis-health-check".into()),
            ),
            (
                Attribution::of(false, None, Some("watch/rules/0"), true),
                Attribution::Audited { policy: "watch".into(), rule: 0 },
            ),
            (Attribution::of(false, None, None, false), Attribution::Allowed),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn only_names_trellis_writes_read_back_as_rules() {
        for bad in ["a/rules/", "/rules/1", "a/rules/x", "a/b/rules/1", "a/rules/+1", "a/1"] {
            assert_eq!(rbac::parse_policy_name(bad), None, "{bad}");
        }
    }
}
