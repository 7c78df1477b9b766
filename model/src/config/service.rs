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
///
/// `port` is the service's port in the mesh: callers dial `<service>.<mesh>:<port>`, and each
/// instance serves it, a sidecar with its inbound listener on `0.0.0.0:<port>`. Behind a
/// sidecar the application listens on `127.0.0.1:<appPort>`, a different port, so that the
/// two never compete for one (Kuma's `port` and `servicePort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Optional name, unique within the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u32,
    pub protocol: Protocol,
    /// Where the application behind a sidecar listens, on 127.0.0.1; required for a
    /// sidecar's bootstrap. Not used by proxyless gRPC servers, which serve `port` themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u32>,
}

impl ServicePort {
    /// The port of the application behind a sidecar: `appPort`, or `port` when it is not
    /// declared (then the application must not listen on `port` on all addresses).
    pub fn application_port(&self) -> u32 {
        self.app_port.unwrap_or(self.port)
    }
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
                    if let Some(app) = p.app_port {
                        c.range("appPort", app, 1, 65535);
                        if self.ports.iter().any(|q| q.port == app) {
                            c.error_at(
                                "appPort",
                                format!("{app} is a port of the service, where its sidecar listens; the application needs another"),
                            );
                        } else if self.ports[..i].iter().any(|q| q.app_port == Some(app)) {
                            c.error_at("appPort", format!("appPort {app} is listed twice"));
                        }
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
