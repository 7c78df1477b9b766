//! Mesh configuration: the spec of every resource kind, parsed from JSON with field-path
//! errors, bounded, and checked for the references the API must resolve.

mod access;
mod common;
mod http_route;
mod matching;
mod mesh;
mod re2_size;
mod resilience;
mod service;
mod tcp_route;
mod verdict;

pub use crate::tags::{Tags, valid_label_key, valid_label_part};
pub use access::{AccessAction, AccessPolicySpec, AccessRule, RequestMatch, Source};
pub(crate) use access::{MAX_RULES as MAX_ACCESS_RULES, MAX_SOURCES as MAX_ACCESS_SOURCES};
pub use common::{Checker, Duration, FieldError, Labels, PortReference, ServiceReference, TargetRef};
pub use http_route::{
    BackendRef, Backoff, Fault, FaultAbort, FaultDelay, HeaderModifier, HeaderValue, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, Mirror, Retry, RetryOn, Timeouts,
};
pub use matching::{MAX_RE2_PROGRAM, PathMatch, PathMatchType, ValueMatch, ValueMatchType};
pub use mesh::{
    DefaultAccess, MeshSpec, Mtls, MtlsMode, PLATFORM_TRUST_DOMAIN, check_trust_domain_owner,
    default_trust_domain,
};
pub use re2_size::re2_program_size;
pub use resilience::{
    CircuitBreakerSpec, HealthCheckSpec, HttpHealthCheck, OutlierDetection, RateLimitSpec, TcpHealthCheck,
    Thresholds, TokenBucket,
};
pub use service::{Protocol, ServicePort, ServiceSpec};
pub use verdict::{
    AccessConfig, DEFAULT_DENY, Decision, EdgeCalls, EdgeImpact, ImpactTotals, ServiceIdentity, Verdict,
    decide, impact,
};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every kind of mesh-scoped resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    AccessPolicy,
    HttpRoute,
    TcpRoute,
    CircuitBreaker,
    HealthCheck,
    RateLimit,
}

impl Kind {
    /// Every kind, in the order policies are listed for a service.
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::AccessPolicy,
        Kind::HttpRoute,
        Kind::TcpRoute,
        Kind::CircuitBreaker,
        Kind::HealthCheck,
        Kind::RateLimit,
    ];

    /// The kind as written in documents (`kind: HTTPRoute`) and stored.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::AccessPolicy => "AccessPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::CircuitBreaker => "CircuitBreaker",
            Kind::HealthCheck => "HealthCheck",
            Kind::RateLimit => "RateLimit",
        }
    }

    /// The collection's URL segment (`/meshes/{mesh}/http-routes`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::AccessPolicy => "access-policies",
            Kind::HttpRoute => "http-routes",
            Kind::TcpRoute => "tcp-routes",
            Kind::CircuitBreaker => "circuit-breakers",
            Kind::HealthCheck => "health-checks",
            Kind::RateLimit => "rate-limits",
        }
    }

    /// Which proxies a resource of this kind configures, relative to its target service: the
    /// translation puts routes, circuit breakers and health checks into what callers of the
    /// service get (listeners, routes, clusters), access policies and rate limits into the
    /// service's own inbound side, and a service into both.
    pub fn reach(self) -> Reach {
        match self {
            Kind::Service => Reach { callers: true, instances: true },
            Kind::AccessPolicy | Kind::RateLimit => Reach { callers: false, instances: true },
            Kind::HttpRoute | Kind::TcpRoute | Kind::CircuitBreaker | Kind::HealthCheck => {
                Reach { callers: true, instances: false }
            }
        }
    }

    /// Finds a kind by document name, URL segment or a CLI spelling (`httproute`, `svc`).
    pub fn lookup(s: &str) -> Option<Kind> {
        let norm = |s: &str| -> String {
            s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect()
        };
        let want = norm(s);
        Kind::ALL.into_iter().find(|k| {
            let name = norm(k.name());
            want == name
                || want == norm(k.plural())
                || want == format!("{name}s")
                || (*k == Kind::Service && want == "svc")
        })
    }
}

/// The proxies a kind configures: those that call its target service, those that run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub callers: bool,
    pub instances: bool,
}

/// A parsed spec of one of the kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    Service(ServiceSpec),
    AccessPolicy(AccessPolicySpec),
    HttpRoute(HttpRouteSpec),
    TcpRoute(TcpRouteSpec),
    CircuitBreaker(CircuitBreakerSpec),
    HealthCheck(HealthCheckSpec),
    RateLimit(RateLimitSpec),
}

pub use tcp_route::TcpRouteSpec;

/// A spec that passed every check, and the services it references (to be resolved).
#[derive(Clone, Debug)]
pub struct Parsed<T> {
    pub spec: T,
    pub references: Vec<ServiceReference>,
}

fn deserialize<T: DeserializeOwned>(root: &str, value: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { root.to_owned() } else { format!("{root}.{path}") };
        vec![FieldError { field, message: e.into_inner().to_string() }]
    })
}

impl Spec {
    /// Parses and checks a spec of `kind` found at `root` (usually `spec`).
    pub fn parse(kind: Kind, root: &str, value: Value) -> Result<Parsed<Spec>, Vec<FieldError>> {
        let mut c = Checker::new(root);
        let mut refs = Vec::new();
        let spec = match kind {
            Kind::Service => {
                let s: ServiceSpec = deserialize(root, value)?;
                s.check(&mut c);
                Spec::Service(s)
            }
            Kind::AccessPolicy => {
                let s: AccessPolicySpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::AccessPolicy(s)
            }
            Kind::HttpRoute => {
                let s: HttpRouteSpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::HttpRoute(s)
            }
            Kind::TcpRoute => {
                let s: TcpRouteSpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::TcpRoute(s)
            }
            Kind::CircuitBreaker => {
                let s: CircuitBreakerSpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::CircuitBreaker(s)
            }
            Kind::HealthCheck => {
                let s: HealthCheckSpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::HealthCheck(s)
            }
            Kind::RateLimit => {
                let s: RateLimitSpec = deserialize(root, value)?;
                s.check(&mut c, &mut refs);
                Spec::RateLimit(s)
            }
        };
        if c.errors.is_empty() { Ok(Parsed { spec, references: refs }) } else { Err(c.errors) }
    }

    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Service(_) => Kind::Service,
            Spec::AccessPolicy(_) => Kind::AccessPolicy,
            Spec::HttpRoute(_) => Kind::HttpRoute,
            Spec::TcpRoute(_) => Kind::TcpRoute,
            Spec::CircuitBreaker(_) => Kind::CircuitBreaker,
            Spec::HealthCheck(_) => Kind::HealthCheck,
            Spec::RateLimit(_) => Kind::RateLimit,
        }
    }

    /// The canonical JSON form, as stored and returned.
    pub fn to_json(&self) -> Value {
        fn j<T: Serialize>(t: &T) -> Value {
            serde_json::to_value(t).expect("specs serialize")
        }
        match self {
            Spec::Service(s) => j(s),
            Spec::AccessPolicy(s) => j(s),
            Spec::HttpRoute(s) => j(s),
            Spec::TcpRoute(s) => j(s),
            Spec::CircuitBreaker(s) => j(s),
            Spec::HealthCheck(s) => j(s),
            Spec::RateLimit(s) => j(s),
        }
    }

    /// The service a policy applies to (a service applies to itself).
    pub fn target_service<'a>(&'a self, own_name: &'a str) -> &'a str {
        match self {
            Spec::Service(_) => own_name,
            Spec::AccessPolicy(s) => &s.target_ref.service,
            Spec::HttpRoute(s) => &s.target_ref.service,
            Spec::TcpRoute(s) => &s.target_ref.service,
            Spec::CircuitBreaker(s) => &s.target_ref.service,
            Spec::HealthCheck(s) => &s.target_ref.service,
            Spec::RateLimit(s) => &s.target_ref.service,
        }
    }
}

/// Parses and checks a mesh's spec.
pub fn parse_mesh_spec(root: &str, value: Value) -> Result<MeshSpec, Vec<FieldError>> {
    let spec: MeshSpec = deserialize(root, value)?;
    let mut c = Checker::new(root);
    spec.check(&mut c);
    if c.errors.is_empty() { Ok(spec) } else { Err(c.errors) }
}

/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;

/// Checks resource labels (Kubernetes label syntax, bounded).
pub fn check_labels(root: &str, labels: &Labels) -> Result<(), Vec<FieldError>> {
    let mut c = Checker::new(root);
    if labels.len() > MAX_LABELS {
        c.error(format!("must have at most {MAX_LABELS} labels, got {}", labels.len()));
    }
    for (k, v) in labels {
        c.field(k, |c| {
            if !valid_label_key(k) {
                c.error("label keys are an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric");
            } else if !v.is_empty() && !valid_label_part(v, 63) {
                c.error("label values are at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric");
            }
        });
    }
    if c.errors.is_empty() { Ok(()) } else { Err(c.errors) }
}

/// One policy that applies to a service, in the order it takes effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EffectiveEntry {
    pub kind: &'static str,
    pub name: String,
    /// Why it sits where it does, for a person reading "why was this request denied?".
    pub note: String,
}

/// Every resource that applies to `service`, ordered as the data plane evaluates them:
/// the service itself; access policies (deny rules first, then allow, with audit rules
/// shadowing); routes; then the resilience policies. Within a kind, by name.
pub fn effective<'a>(
    service: &str,
    resources: impl IntoIterator<Item = (&'a str, &'a Spec)>,
) -> Vec<EffectiveEntry> {
    let mut out: Vec<(Kind, u8, String, String)> = Vec::new();
    for (name, spec) in resources {
        if spec.target_service(name) != service {
            continue;
        }
        let (rank, note) = match spec {
            Spec::Service(_) => (0, "the service's ports and protocols".to_owned()),
            Spec::AccessPolicy(p) => {
                let has = |a: AccessAction| p.rules.iter().any(|r| r.action == a);
                if has(AccessAction::Deny) {
                    (0, "has deny rules: evaluated before any allow rule; a match is refused".to_owned())
                } else if has(AccessAction::Allow) {
                    (
                        1,
                        "allow rules: a request must match one unless the mesh's default access is allow"
                            .to_owned(),
                    )
                } else {
                    (
                        2,
                        "audit rules only: would-deny requests are counted and logged, never refused"
                            .to_owned(),
                    )
                }
            }
            Spec::HttpRoute(r) => {
                (0, format!("{} rule(s): the first rule that matches picks the backends", r.rules.len()))
            }
            Spec::TcpRoute(_) => (0, "splits connections by weight".to_owned()),
            Spec::CircuitBreaker(_) => (0, "limits connections and ejects failing instances".to_owned()),
            Spec::HealthCheck(_) => {
                (0, "actively checks instances; unhealthy ones get no traffic".to_owned())
            }
            Spec::RateLimit(_) => {
                (0, "each instance refuses requests beyond its token bucket with 429".to_owned())
            }
        };
        out.push((spec.kind(), rank, name.to_owned(), note));
    }
    out.sort();
    out.into_iter().map(|(k, _, name, note)| EffectiveEntry { kind: k.name(), name, note }).collect()
}
