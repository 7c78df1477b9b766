//! The agent's own configuration: what it applies, typed, with every decision it makes on a
//! request (route match, backend choice, access verdict) as a pure function. The conversion
//! builds these values from xDS resources; the proxy only ever sees them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use trellis_ca::SpiffeId;

/// A listener the agent binds.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub side: Side,
    pub handler: Handler,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// Terminates mTLS (and, when `plaintext`, also accepts plaintext: PERMISSIVE).
    Inbound { plaintext: bool },
    /// Plaintext from the local application, for one service (`None`: not read from the name).
    Outbound { service: Option<String> },
}

#[derive(Debug, Clone)]
pub enum Handler {
    Http {
        access: Vec<RbacFilter>,
        /// The listener's local rate limit, checked after access.
        rate_limit: Option<crate::resilience::RateLimit>,
        routes: RouteSource,
        forward_client_cert: bool,
        /// The fault filter's own faults (`Some`, empty, when the filter is there and
        /// injects nothing): a route's own override them. `None`: no fault filter, so
        /// routes' faults are not applied either.
        fault: Option<Fault>,
    },
    Tcp {
        access: Vec<RbacFilter>,
        backends: Vec<(String, u32)>,
    },
}

#[derive(Debug, Clone)]
pub enum RouteSource {
    Rds(String),
    Inline(Arc<RouteTable>),
}

/// Where a cluster's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The local application, plaintext.
    Local(SocketAddr),
    /// Instances of a mesh service from EDS, over mTLS that accepts only `peer` (shared: every
    /// request to the cluster names it as its destination).
    Mesh { eds: String, peer: Arc<SpiffeId> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub target: Target,
    /// Speak HTTP/2 upstream.
    pub h2: bool,
    /// Most requests (or TCP connections) in flight: the circuit breaker.
    pub limit: Option<u32>,
    pub outlier: Option<crate::resilience::OutlierPolicy>,
    pub health_check: Option<crate::resilience::HealthCheckPolicy>,
    pub lb: crate::resilience::LbPolicy,
}

/// An HTTP route table: virtual hosts in order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// `*`, an exact host, or `*.suffix`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<(String, StrMatch)>,
    /// Cluster names and weights (at least one, weights > 0).
    pub backends: Vec<(String, u32)>,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub set_headers: Vec<(HeaderName, HeaderValue, bool)>,
    pub remove_headers: Vec<HeaderName>,
    /// Faults injected into the route's requests, overriding the listener's.
    pub fault: Option<Fault>,
}

/// A share of requests, in parts per million (Envoy's `FractionalPercent`, whatever its
/// denominator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share(pub u32);

impl Share {
    pub const PER: u32 = 1_000_000;

    /// Whether a roll in `0..Share::PER` falls in the share.
    pub fn hits(self, roll: u32) -> bool {
        roll < self.0
    }
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(http::StatusCode),
    /// A gRPC status code, in a trailers-only response.
    Grpc(u8),
}

/// Fault injection (Envoy's HTTP fault filter): a share of requests waits, a share fails
/// without reaching an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Share)>,
    pub abort: Option<(Abort, Share)>,
}

/// What the fault filter does to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Fault {
    /// The faults for one request, from two independent rolls in `0..Share::PER`.
    pub fn decide(&self, delay_roll: u32, abort_roll: u32) -> Injected {
        Injected {
            delay: self.delay.filter(|(_, s)| s.hits(delay_roll)).map(|(d, _)| d),
            abort: self.abort.filter(|(_, s)| s.hits(abort_roll)).map(|(a, _)| a),
        }
    }
}

/// The gRPC status a gRPC caller gets for an HTTP status the agent answers with (the
/// mapping of gRPC's HTTP-to-gRPC status table).
pub fn grpc_code_of(status: http::StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: String,
    /// `None`: the header must be present.
    pub value: Option<StrMatch>,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

/// When and how often a request is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub on: Vec<RetryOn>,
    pub retries: u32,
    pub per_try: Option<Duration>,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    ConnectFailure,
    Reset,
    Retriable4xx,
    RefusedStream,
    /// gRPC statuses, by code.
    Grpc(u8),
}

impl StrMatch {
    pub fn matches(&self, v: &str) -> bool {
        let fold = |s: &str, ic: bool| if ic { s.to_ascii_lowercase() } else { s.to_owned() };
        match self {
            StrMatch::Exact(s, ic) => fold(v, *ic) == fold(s, *ic),
            StrMatch::Prefix(s, ic) => fold(v, *ic).starts_with(&fold(s, *ic)),
            StrMatch::Suffix(s, ic) => fold(v, *ic).ends_with(&fold(s, *ic)),
            StrMatch::Contains(s, ic) => fold(v, *ic).contains(&fold(s, *ic)),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// What a route or an access rule can see of a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The authority the URI has (HTTP/2, absolute form); without one, `Host` is looked up
    /// when a rule asks (most routes match any host, and most policies ignore it).
    pub(crate) uri_authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// What rules see of a request whose head is `head`.
    pub fn of(head: &'a http::request::Parts) -> Self {
        Self::of_fields(&head.method, &head.uri, &head.headers)
    }

    fn of_fields(method: &'a Method, uri: &'a http::Uri, headers: &'a HeaderMap) -> Self {
        RequestView {
            method,
            path: uri.path(),
            query: uri.query(),
            uri_authority: uri.authority().map(http::uri::Authority::as_str),
            headers,
        }
    }

    /// The request's authority: the URI's, else its `Host`.
    pub fn authority(&self) -> Option<&'a str> {
        self.uri_authority.or_else(|| self.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
    }
}

/// A request's authority: the URI's (HTTP/2, absolute form), else its `Host`.
pub fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    RequestView::of_fields(req.method(), req.uri(), req.headers()).authority()
}

impl RequestView<'_> {
    /// A header's value, the pseudo-headers `:method`, `:path` and `:authority` included;
    /// several values are joined with `,` as Envoy does.
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => Some(self.method.as_str().to_owned()),
            ":path" => Some(match self.query {
                Some(q) => format!("{}?{q}", self.path),
                None => self.path.to_owned(),
            }),
            ":authority" | "host" => self.authority().map(str::to_owned),
            _ => {
                let values: Vec<&str> =
                    self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        }
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

impl HeaderMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let hit = match (req.header(&self.name), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(&v),
        };
        hit != self.invert
    }
}

impl Route {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path = match &self.path {
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path && self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|(name, m)| req.query_param(name).is_some_and(|v| m.matches(v)))
    }

    /// The backend for a roll in `0..total weight`.
    pub fn pick(&self, roll: u64) -> &str {
        let mut left = roll;
        for (name, w) in &self.backends {
            if left < u64::from(*w) {
                return name;
            }
            left -= u64::from(*w);
        }
        &self.backends.last().expect("a route has a backend").0
    }

    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|(_, w)| u64::from(*w)).sum()
    }
}

impl RouteTable {
    /// The first route that matches, in the first virtual host whose domains match.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        let vhost = self.hosts.iter().find(|v| {
            v.domains.iter().any(|d| d == "*" || req.authority().is_some_and(|a| domain_matches(d, a)))
        })?;
        vhost.routes.iter().find(|r| r.matches(req))
    }
}

/// Whether a virtual host's domain (`*.example.com` a suffix) names `authority`, with or
/// without its port.
fn domain_matches(domain: &str, authority: &str) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    domain.eq_ignore_ascii_case(host)
        || domain.eq_ignore_ascii_case(authority)
        || domain
            .strip_prefix('*')
            .is_some_and(|s| host.to_ascii_lowercase().ends_with(&s.to_ascii_lowercase()))
}

/// An RBAC filter: its rules, checked in filter order.
#[derive(Debug, Clone)]
pub struct RbacFilter {
    pub name: String,
    pub mode: RbacMode,
    /// Policies by name, in name order.
    pub policies: Vec<(String, Policy)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacMode {
    /// A request must match a policy.
    Allow,
    /// A request that matches a policy is refused.
    Deny,
    /// A request that matches a policy is logged, never refused (shadow rules).
    Audit,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub principals: Vec<Principal>,
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone)]
pub enum Principal {
    Any,
    /// An mTLS peer whose SPIFFE ID matches (any peer when `None`).
    Authenticated(Option<StrMatch>),
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
}

#[derive(Debug, Clone)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    Path(StrMatch),
}

impl Principal {
    fn matches(&self, peer: Option<&SpiffeId>) -> bool {
        match self {
            Principal::Any => true,
            Principal::Authenticated(m) => {
                peer.is_some_and(|p| m.as_ref().is_none_or(|m| m.matches(p.as_str())))
            }
            Principal::And(all) => all.iter().all(|x| x.matches(peer)),
            Principal::Or(any) => any.iter().any(|x| x.matches(peer)),
            Principal::Not(x) => !x.matches(peer),
        }
    }
}

impl Permission {
    /// `req` is `None` for a TCP connection: request conditions never match it.
    fn matches(&self, req: Option<&RequestView<'_>>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|x| x.matches(req)),
            Permission::Or(any) => any.iter().any(|x| x.matches(req)),
            Permission::Not(x) => !x.matches(req),
            Permission::Header(h) => req.is_some_and(|r| h.matches(r)),
            Permission::Path(m) => req.is_some_and(|r| m.matches(r.path)),
        }
    }
}

impl Policy {
    fn matches(&self, peer: Option<&SpiffeId>, req: Option<&RequestView<'_>>) -> bool {
        self.principals.iter().any(|p| p.matches(peer)) && self.permissions.iter().any(|p| p.matches(req))
    }
}

/// Why the access filters refused a request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The RBAC filter that refused.
    pub filter: String,
    /// The policy that matched a deny filter; None when an allow filter matched none.
    pub policy: Option<String>,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "{}: {p}", self.filter),
            None => write!(f, "{}: no policy allows it", self.filter),
        }
    }
}

/// The outcome of the access filters for one request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: allowed; else which filter refused it, and by which policy.
    pub denied: Option<Denial>,
    /// Audit policies that matched.
    pub audited: Vec<String>,
}

/// Runs the filters in order: the first refusal wins, audits are collected along the way.
pub fn evaluate(filters: &[RbacFilter], peer: Option<&SpiffeId>, req: Option<&RequestView<'_>>) -> Verdict {
    let mut audited = Vec::new();
    for f in filters {
        let hit = f.policies.iter().find(|(_, p)| p.matches(peer, req)).map(|(n, _)| n.clone());
        let denied =
            |policy| Verdict { denied: Some(Denial { filter: f.name.clone(), policy }), audited: Vec::new() };
        match (f.mode, hit) {
            (RbacMode::Audit, Some(name)) => audited.push(name),
            (RbacMode::Deny, Some(name)) => return Verdict { audited, ..denied(Some(name)) },
            (RbacMode::Allow, None) => return Verdict { audited, ..denied(None) },
            _ => {}
        }
    }
    Verdict { denied: None, audited }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_host_s_domain_names_the_host_with_or_without_its_port() {
        for (domain, authority, matches) in [
            ("reviews.shop", "reviews.shop:9080", true),
            ("reviews.shop:9080", "reviews.shop:9080", true),
            ("Reviews.Shop", "reviews.shop", true),
            ("reviews.shop:9090", "reviews.shop:9080", false),
            ("*.shop", "reviews.SHOP:9080", true),
            ("*.shop", "reviews.store", false),
            ("ratings.shop", "reviews.shop", false),
        ] {
            assert_eq!(domain_matches(domain, authority), matches, "{domain} for {authority}");
        }
    }

    #[test]
    fn a_request_s_authority_is_its_uri_s_else_its_host() {
        let mut req = http::Request::new(());
        *req.uri_mut() = "/reviews/1".parse().unwrap();
        assert_eq!(authority(&req), None);
        req.headers_mut().insert(http::header::HOST, "reviews.shop:9080".parse().unwrap());
        assert_eq!(authority(&req), Some("reviews.shop:9080"));
        *req.uri_mut() = "http://ratings.shop:9080/ratings/1".parse().unwrap();
        assert_eq!(authority(&req), Some("ratings.shop:9080"));
    }
}
