//! What the translation reads and what it returns.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use trellis_model::config::{
    AccessPolicySpec, CircuitBreakerSpec, DefaultAccess, HealthCheckSpec, HttpRouteSpec, MtlsMode,
    RateLimitSpec, ServiceSpec, Spec, Tags, TcpRouteSpec,
};

/// One mesh, parsed: its settings, every resource by name, and the registered endpoints.
#[derive(Debug, Clone)]
pub struct MeshView {
    pub mesh: String,
    pub trust_domain: trellis_ca::TrustDomain,
    pub mtls: MtlsMode,
    pub default_access: DefaultAccess,
    pub services: BTreeMap<String, ServiceSpec>,
    pub http_routes: BTreeMap<String, HttpRouteSpec>,
    pub tcp_routes: BTreeMap<String, TcpRouteSpec>,
    pub access_policies: BTreeMap<String, AccessPolicySpec>,
    pub circuit_breakers: BTreeMap<String, CircuitBreakerSpec>,
    pub health_checks: BTreeMap<String, HealthCheckSpec>,
    pub rate_limits: BTreeMap<String, RateLimitSpec>,
    pub endpoints: Vec<Endpoint>,
}

impl MeshView {
    /// A mesh with no resources and no endpoints yet.
    pub fn new(
        mesh: &str,
        trust_domain: trellis_ca::TrustDomain,
        mtls: MtlsMode,
        default_access: DefaultAccess,
    ) -> Self {
        Self {
            mesh: mesh.to_owned(),
            trust_domain,
            mtls,
            default_access,
            services: BTreeMap::new(),
            http_routes: BTreeMap::new(),
            tcp_routes: BTreeMap::new(),
            access_policies: BTreeMap::new(),
            circuit_breakers: BTreeMap::new(),
            health_checks: BTreeMap::new(),
            rate_limits: BTreeMap::new(),
            endpoints: Vec::new(),
        }
    }

    /// Adds (or replaces) the resource `name` of the spec's kind.
    pub fn add(&mut self, name: String, spec: Spec) {
        match spec {
            Spec::Service(s) => drop(self.services.insert(name, s)),
            Spec::HttpRoute(s) => drop(self.http_routes.insert(name, s)),
            Spec::TcpRoute(s) => drop(self.tcp_routes.insert(name, s)),
            Spec::AccessPolicy(s) => drop(self.access_policies.insert(name, s)),
            Spec::CircuitBreaker(s) => drop(self.circuit_breakers.insert(name, s)),
            Spec::HealthCheck(s) => drop(self.health_checks.insert(name, s)),
            Spec::RateLimit(s) => drop(self.rate_limits.insert(name, s)),
        }
    }
}

impl MeshView {
    /// The health check of a service: the first by name that targets it.
    pub fn health_check(&self, service: &str) -> Option<&HealthCheckSpec> {
        self.health_checks.values().find(|h| h.target_ref.service == service)
    }
}

/// A registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub service: String,
    pub address: IpAddr,
    pub port: u32,
    pub tags: Tags,
    pub zone: String,
    pub healthy: bool,
}

/// Resources by name, per type, in name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    /// SDS secrets (Envoy sidecars only).
    pub secrets: BTreeMap<String, Secret>,
}
