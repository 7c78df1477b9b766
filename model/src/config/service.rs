//! Services: named sets of workloads with ports and protocols.

use serde::{Deserialize, Serialize};

use super::common::Checker;

/// The application protocol on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// HTTP-aware protocols get HTTP routing, retries and HTTP access rules.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Optional name, unique within the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u32,
    pub protocol: Protocol,
}

/// A service's specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
}

/// Most ports on one service.
pub const MAX_PORTS: usize = 32;

impl ServiceSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.bounded("ports", &self.ports, 1, MAX_PORTS);
        c.field("ports", |c| {
            for (i, p) in self.ports.iter().enumerate() {
                c.index(i, |c| {
                    c.range("port", p.port, 1, 65535);
                    if let Some(n) = &p.name {
                        c.label("name", n);
                    }
                    if self.ports[..i].iter().any(|q| q.port == p.port) {
                        c.error_at("port", format!("port {} is listed twice", p.port));
                    }
                    if let Some(n) = &p.name
                        && self.ports[..i].iter().any(|q| q.name.as_ref() == Some(n))
                    {
                        c.error_at("name", format!("port name {n:?} is used twice"));
                    }
                });
            }
        });
    }
}
