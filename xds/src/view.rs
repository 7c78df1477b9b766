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
    RateLimitSpec, ServiceSpec, Tags, TcpRouteSpec,
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
