//! What a mesh's access policies decide for the calls of one caller to one service, and
//! what a proposed policy would change about the calls a mesh has seen: the pure core of
//! the impact preview.
//!
//! The order is the data plane's (`xds/src/access.rs` translates the same rules into RBAC):
//! deny rules first — a match is refused; then, when the mesh's default access is `deny`,
//! an allow rule must match; audit rules never refuse. Callers match by exact SPIFFE ID, a
//! `service` source being that service's ID in the mesh. An edge knows its caller but not
//! each request's method, path or headers, so a rule with request conditions decides only
//! some of an edge's calls.

use serde::Serialize;

use super::access::{AccessAction, AccessPolicySpec, AccessRule};
use super::mesh::DefaultAccess;
use crate::contract::rbac;

/// What the rules do to every call of an edge; `dependsOnRequest`: rules with request
/// conditions (methods, paths, headers) decide call by call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    Allowed,
    /// Rules with request conditions (methods, paths, headers) decide call by call.
    DependsOnRequest,
    Denied,
}

/// A verdict and the rule behind it: `<policy>/rules/<index>` (the name the data plane's
/// RBAC policies carry, `contract::rbac`), or `default-deny` when no allow rule matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding rule, `<policy>/rules/<index>`, or `default-deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub rule: Option<String>,
}

/// The name of a denial that no rule made.
pub const DEFAULT_DENY: &str = "default-deny";

/// Who a rule's `service` sources are: the SPIFFE ID of a service of the mesh.
pub trait ServiceIdentity {
    fn identity_of(&self, service: &str) -> String;
}

impl<F: Fn(&str) -> String> ServiceIdentity for F {
    fn identity_of(&self, service: &str) -> String {
        self(service)
    }
}

fn names_caller(rule: &AccessRule, caller: &str, ids: &impl ServiceIdentity) -> bool {
    rule.from.iter().any(|s| match (&s.service, &s.identity) {
        (Some(svc), _) => ids.identity_of(svc) == caller,
        (None, Some(id)) => id == caller,
        (None, None) => false,
    })
}

/// What `policies` (each with its name, all targeting one service) decide for every call
/// of the `caller` SPIFFE ID. `l4`: the calls are TCP connections, where request
/// conditions cannot be checked and rules fail closed, as in the data plane: a deny with
/// conditions covers the connection, an allow with conditions allows nothing.
pub fn decide(
    policies: &[(&str, &AccessPolicySpec)],
    default_access: DefaultAccess,
    caller: &str,
    ids: &impl ServiceIdentity,
    l4: bool,
) -> Decision {
    let matching = |action: AccessAction| {
        policies.iter().flat_map(move |(name, p)| {
            p.rules
                .iter()
                .enumerate()
                .filter(move |(_, r)| r.action == action && names_caller(r, caller, ids))
                .map(move |(i, r)| (rbac::policy_name(name, i), r))
        })
    };
    let decision = |verdict, rule: Option<String>| Decision { verdict, rule };

    // A deny with request conditions refuses some calls; one without, all of them.
    let mut some_denied: Option<String> = None;
    for (id, r) in matching(AccessAction::Deny) {
        if r.to.is_none() || l4 {
            return decision(Verdict::Denied, Some(id));
        }
        some_denied.get_or_insert(id);
    }
    if default_access == DefaultAccess::Allow {
        return match some_denied {
            Some(id) => decision(Verdict::DependsOnRequest, Some(id)),
            None => decision(Verdict::Allowed, None),
        };
    }
    // Default deny: an allow with request conditions lets some calls through; one
    // without, all of them (less what a conditional deny refuses).
    let mut some_allowed: Option<String> = None;
    for (id, r) in matching(AccessAction::Allow) {
        match (&r.to, l4) {
            (None, _) => {
                return match some_denied {
                    Some(deny) => decision(Verdict::DependsOnRequest, Some(deny)),
                    None => decision(Verdict::Allowed, Some(id)),
                };
            }
            (Some(_), false) => {
                some_allowed.get_or_insert(id);
            }
            (Some(_), true) => {}
        }
    }
    match some_allowed {
        Some(id) => decision(Verdict::DependsOnRequest, some_denied.or(Some(id))),
        None => decision(Verdict::Denied, Some(DEFAULT_DENY.to_owned())),
    }
}

/// The calls one edge carried in the window.
#[derive(Clone, Debug)]
pub struct EdgeCalls {
    pub source: String,
    pub destination: String,
    /// HTTP requests and TCP connections.
    pub calls: u64,
    /// Only TCP connections, no HTTP requests: the rules apply at L4.
    pub l4: bool,
}

/// An edge whose verdict a proposed policy changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EdgeImpact {
    pub source: String,
    pub destination: String,
    pub calls: u64,
    pub before: Decision,
    pub after: Decision,
}

/// The access policies of a mesh, by name, and its default access.
pub struct AccessConfig<'a> {
    pub policies: Vec<(&'a str, &'a AccessPolicySpec)>,
    pub default_access: DefaultAccess,
}

impl<'a> AccessConfig<'a> {
    /// This configuration with `name` created or replaced by `proposed`.
    pub fn with(&self, name: &'a str, proposed: &'a AccessPolicySpec) -> AccessConfig<'a> {
        let mut policies: Vec<_> = self.policies.iter().copied().filter(|(n, _)| *n != name).collect();
        policies.push((name, proposed));
        policies.sort_by_key(|(n, _)| *n);
        AccessConfig { policies, default_access: self.default_access }
    }

    /// What this configuration decides for an edge's calls.
    pub fn decide(&self, edge: &EdgeCalls, ids: &impl ServiceIdentity) -> Decision {
        let targeting: Vec<_> =
            self.policies.iter().copied().filter(|(_, p)| p.target_ref.service == edge.destination).collect();
        decide(&targeting, self.default_access, &ids.identity_of(&edge.source), ids, edge.l4)
    }
}

/// Every edge whose verdict differs between `before` and `after`, most calls first.
pub fn impact(
    before: &AccessConfig<'_>,
    after: &AccessConfig<'_>,
    edges: &[EdgeCalls],
    ids: &impl ServiceIdentity,
) -> Vec<EdgeImpact> {
    let mut changed: Vec<EdgeImpact> = edges
        .iter()
        .filter_map(|e| {
            let (b, a) = (before.decide(e, ids), after.decide(e, ids));
            (b.verdict != a.verdict).then(|| EdgeImpact {
                source: e.source.clone(),
                destination: e.destination.clone(),
                calls: e.calls,
                before: b,
                after: a,
            })
        })
        .collect();
    changed.sort_by(|x, y| {
        y.calls.cmp(&x.calls).then_with(|| (&x.source, &x.destination).cmp(&(&y.source, &y.destination)))
    });
    changed
}

/// The calls of the changed edges, by what the change does to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ImpactTotals {
    pub newly_denied: u64,
    pub newly_allowed: u64,
    pub depends_on_request: u64,
}

impl ImpactTotals {
    pub fn of(edges: &[EdgeImpact]) -> Self {
        let mut t = ImpactTotals::default();
        for e in edges {
            match e.after.verdict {
                Verdict::Denied => t.newly_denied += e.calls,
                Verdict::Allowed => t.newly_allowed += e.calls,
                Verdict::DependsOnRequest => t.depends_on_request += e.calls,
            }
        }
        t
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
